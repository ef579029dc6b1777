use super::*;
use crate::media_type::{DOCKER_LAYER_GZIP, OCI_LAYER_GZIP, OCI_LAYER_ZSTD};
use crate::route_policy::layers::DOCKER_LAYER_ZSTD;

fn d(n: u8) -> Digest {
    Digest::sha256_of(&[n])
}

/// An OCI manifest as podman writes a zstd:chunked image: a gzip base, a chunked zstd layer
/// with its annotations (and one of the image's own), and a plain zstd layer.
fn oci_manifest() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d(0).to_string(), "size": 1469},
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": d(1).to_string(), "size": 3_000_000},
            {"mediaType": OCI_LAYER_ZSTD, "digest": d(2).to_string(), "size": 2_000_000,
             "annotations": {
                "io.github.containers.zstd-chunked.manifest-checksum": "sha256:aa",
                "io.github.containers.zstd-chunked.manifest-position": "1:2:3:1",
                "io.github.containers.zstd-chunked.tarsplit-position": "4:5:6",
                "org.example.keep": "yes"}},
            {"mediaType": OCI_LAYER_ZSTD, "digest": d(3).to_string(), "size": 1_000_000,
             "annotations": {"io.github.containers.zstd-chunked.manifest-checksum": "sha256:bb"}}
        ],
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}
    }))
    .unwrap()
}

fn config(ids: &[Digest]) -> Vec<u8> {
    let ids: Vec<String> = ids.iter().map(Digest::to_string).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ids}
    }))
    .unwrap()
}

#[test]
fn which_layers_a_client_gets_converted() {
    let m = oci_manifest();
    assert_eq!(zstd_layers(&m, ZstdReads::Both).unwrap(), None);
    assert_eq!(zstd_layers(&m, ZstdReads::OciType).unwrap(), None);
    let plan = zstd_layers(&m, ZstdReads::Neither).unwrap().unwrap();
    assert_eq!(plan.config, d(0));
    assert_eq!(plan.config_size, 1469);
    assert_eq!(plan.layer_count, 3);
    let got: Vec<(usize, Digest, u64)> = plan
        .layers
        .iter()
        .map(|l| (l.position, l.digest.clone(), l.size))
        .collect();
    assert_eq!(got, [(2, d(2), 2_000_000), (3, d(3), 1_000_000)]);

    // Docker's flavour: read by containerd 1.5–1.7 only as the OCI type is.
    let docker = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": d(0).to_string(), "size": 10},
        "layers": [
            {"mediaType": DOCKER_LAYER_GZIP, "digest": d(1).to_string(), "size": 5},
            {"mediaType": DOCKER_LAYER_ZSTD, "digest": d(2).to_string(), "size": 6}
        ]
    }))
    .unwrap();
    let plan = zstd_layers(&docker, ZstdReads::OciType).unwrap().unwrap();
    assert_eq!(plan.layers.len(), 1);
    assert_eq!(plan.layers[0].position, 2);

    // An index or a manifest without layers has nothing to convert.
    let index = br#"{"schemaVersion":2,"manifests":[]}"#;
    assert_eq!(zstd_layers(index, ZstdReads::Neither).unwrap(), None);
}

#[test]
fn diff_ids_come_from_the_config_and_must_match_the_layers() {
    let m = oci_manifest();
    let plan = zstd_layers(&m, ZstdReads::Neither).unwrap().unwrap();
    let ok = with_diff_ids(plan.clone(), &config(&[d(11), d(12), d(13)])).unwrap();
    let ids: Vec<_> = ok
        .layers
        .iter()
        .map(|l| l.diff_id.clone().unwrap())
        .collect();
    assert_eq!(ids, [d(12), d(13)]);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "two diff_ids for three layers",
            config(&[d(11), d(12)]),
            "lists 2 diff_ids for 3 layers",
        ),
        (
            "no rootfs",
            br#"{"os":"linux"}"#.to_vec(),
            "no rootfs.diff_ids",
        ),
        (
            "not JSON",
            b"\x28\xb5\x2f\xfd".to_vec(),
            "not a JSON object",
        ),
        (
            "a diff_id that is no digest",
            br#"{"rootfs":{"diff_ids":["sha256:1","sha256:2","sha256:3"]}}"#.to_vec(),
            "diff_id \"sha256:2\"",
        ),
    ];
    for (what, config, want) in cases {
        let e = with_diff_ids(plan.clone(), &config)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{what}: {e}");
        assert!(
            e.contains(&d(0).to_string()),
            "{what}: names the config: {e}"
        );
    }
}

#[test]
fn the_rewritten_manifest_names_the_tars_and_drops_chunked_annotations() {
    let m = oci_manifest();
    let converted = [
        ConvertedLayer {
            position: 2,
            digest: d(12),
            size: 6_000_000,
        },
        ConvertedLayer {
            position: 3,
            digest: d(13),
            size: 3_000_000,
        },
    ];
    let out = rewrite(&m, &converted).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    let layers = v["layers"].as_array().unwrap();
    // The gzip layer is untouched.
    assert_eq!(layers[0]["mediaType"], OCI_LAYER_GZIP);
    assert_eq!(layers[0]["digest"], d(1).to_string());
    assert_eq!(layers[1]["mediaType"], OCI_LAYER);
    assert_eq!(layers[1]["digest"], d(12).to_string());
    assert_eq!(layers[1]["size"], 6_000_000);
    assert_eq!(
        layers[1]["annotations"],
        serde_json::json!({"org.example.keep": "yes"})
    );
    assert!(layers[2].get("annotations").is_none(), "{}", layers[2]);
    // Everything else is kept: config, the manifest's annotations.
    assert_eq!(v["config"]["digest"], d(0).to_string());
    assert_eq!(
        v["annotations"]["org.opencontainers.image.created"],
        "2026-01-01T00:00:00Z"
    );
    assert!(!String::from_utf8_lossy(&out).contains("zstd"));
    // Deterministic: the same input gives the same bytes.
    assert_eq!(rewrite(&m, &converted).unwrap(), out);

    // Docker's flavour gets Docker's tar type, and composes with OCI → schema2 after.
    let docker = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": d(0).to_string(), "size": 10},
        "layers": [{"mediaType": DOCKER_LAYER_ZSTD, "digest": d(2).to_string(), "size": 6}]
    }))
    .unwrap();
    let out = rewrite(
        &docker,
        &[ConvertedLayer {
            position: 1,
            digest: d(12),
            size: 7,
        }],
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["layers"][0]["mediaType"], DOCKER_LAYER);
    let oci = rewrite(&m, &converted).unwrap();
    let schema2 = crate::conversion::convert_oci_to_docker(&oci).unwrap();
    let v: Value = serde_json::from_slice(&schema2).unwrap();
    assert_eq!(v["layers"][1]["mediaType"], DOCKER_LAYER);
    assert_eq!(v["layers"][1]["digest"], d(12).to_string());
}

#[test]
fn foreign_and_malformed_manifests_are_errors() {
    let foreign = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d(0).to_string(), "size": 1},
        "layers": [{"mediaType": OCI_NONDISTRIBUTABLE_LAYER_ZSTD, "digest": d(2).to_string(), "size": 6, "urls": ["https://example.com/x"]}]
    }))
    .unwrap();
    let e = zstd_layers(&foreign, ZstdReads::Neither).unwrap_err();
    assert!(
        matches!(e, LayerPlanError::Foreign { position: 1, .. }),
        "{e}"
    );
    for bad in [
        &b"[]"[..],
        br#"{"layers":[{"digest":"sha256:x"}]}"#,
        br#"{"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"nope","size":1}]}"#,
        br#"{"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}]}"#,
    ] {
        assert!(
            matches!(zstd_layers(bad, ZstdReads::Neither), Err(LayerPlanError::Malformed(_))),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}
