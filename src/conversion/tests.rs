use super::*;
use crate::media_type::{OCI_EMPTY, OCI_LAYER_ZSTD, OCI_NONDISTRIBUTABLE_LAYER_ZSTD};

const BUILDX: &str = include_str!("../../tests/data/manifest/buildx-oci-manifest.json");
const BUILDX_SCHEMA2: &str =
    include_str!("../../tests/data/manifest/buildx-oci-manifest.schema2.json");
const WINDOWS: &str = include_str!("../../tests/data/manifest/windows-nondistributable-oci.json");

const D1: &str = "sha256:2673ad2c95a433e3deac8fe8a858af3f4f8c83a15ad492570b9af8bd69bc9695";
const D2: &str = "sha256:7bd6a37f2e3d23bc91a7baa506a6ad522f4baee17d4e97804367f3edddbaab58";
const CONFIG: &str = "sha256:c934dbb2dd7a6febe1f01801d203fb0466b3c24c37a24b82390c947245318a08";

fn manifest(config_type: &str, layer_types: &[&str]) -> String {
    let layers: Vec<serde_json::Value> = layer_types
        .iter()
        .map(|t| serde_json::json!({"mediaType": t, "digest": D1, "size": 42}))
        .collect();
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": CONFIG, "size": 7},
        "layers": layers,
    })
    .to_string()
}

fn parse_back(bytes: &[u8]) -> Schema2Manifest {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn golden_buildx_manifest() {
    let out = convert_oci_to_docker(BUILDX.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(out.clone()).unwrap(), BUILDX_SCHEMA2);
    // annotations, subject and descriptor annotations are gone.
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(v.get("annotations").is_none() && v.get("subject").is_none());
    assert!(v["layers"][1].get("annotations").is_none());
    assert_eq!(
        Digest::sha256_of(&out),
        Digest::sha256_of(BUILDX_SCHEMA2.as_bytes())
    );
}

#[test]
fn deterministic_whatever_the_input_layout() {
    let a = convert_oci_to_docker(BUILDX.as_bytes()).unwrap();
    let b = convert_oci_to_docker(BUILDX.as_bytes()).unwrap();
    assert_eq!(a, b);
    // The same manifest compacted and with its keys in another order converts to the same bytes.
    let v: serde_json::Value = serde_json::from_str(BUILDX).unwrap();
    let compact = serde_json::to_vec(&v).unwrap();
    assert_ne!(compact, BUILDX.as_bytes());
    assert_eq!(convert_oci_to_docker(&compact).unwrap(), a);
    let reordered = format!(
        r#"{{"layers": [{{"size": 3408729, "digest": "{D1}", "mediaType": "{OCI_LAYER_GZIP}"}},
              {{"size": 93, "mediaType": "{OCI_LAYER_GZIP}", "digest": "{D2}"}}],
            "config": {{"size": 1472, "digest": "{CONFIG}", "mediaType": "{OCI_CONFIG}"}},
            "schemaVersion": 2}}"#
    );
    assert_eq!(convert_oci_to_docker(reordered.as_bytes()).unwrap(), a);
}

#[test]
fn layer_type_table() {
    #[rustfmt::skip]
    let cases: &[(&str, Option<&str>)] = &[
        (OCI_LAYER_GZIP, Some(DOCKER_LAYER_GZIP)),
        (OCI_LAYER, Some(DOCKER_LAYER)),
        (OCI_NONDISTRIBUTABLE_LAYER_GZIP, Some(DOCKER_FOREIGN_LAYER_GZIP)),
        (OCI_NONDISTRIBUTABLE_LAYER, Some(DOCKER_FOREIGN_LAYER)),
        (DOCKER_LAYER_GZIP, Some(DOCKER_LAYER_GZIP)),
        (DOCKER_LAYER, Some(DOCKER_LAYER)),
        (DOCKER_FOREIGN_LAYER_GZIP, Some(DOCKER_FOREIGN_LAYER_GZIP)),
        (DOCKER_FOREIGN_LAYER, Some(DOCKER_FOREIGN_LAYER)),
        (OCI_LAYER_ZSTD, None),
        (OCI_NONDISTRIBUTABLE_LAYER_ZSTD, None),
        ("application/vnd.docker.image.rootfs.diff.tar.zstd", None),
        (OCI_EMPTY, None),
        ("application/vnd.in-toto+json", None),
        ("application/octet-stream", None),
        ("", None),
    ];
    for &(input, want) in cases {
        assert_eq!(docker_layer_type(input), want, "{input}");
        let doc = manifest(OCI_CONFIG, &[OCI_LAYER_GZIP, input]);
        match (convert_oci_to_docker(doc.as_bytes()), want) {
            (Ok(out), Some(t)) => {
                let m = parse_back(&out);
                assert_eq!(m.layers[0].media_type, DOCKER_LAYER_GZIP);
                assert_eq!(m.layers[1].media_type, t);
            }
            (Err(e), None) => {
                assert_eq!(
                    e,
                    ConversionError::UnsupportedLayer {
                        position: 2,
                        media_type: input.to_owned()
                    }
                );
                assert!(e.to_string().contains(input), "{e}");
            }
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn windows_foreign_layer_keeps_urls() {
    let out = convert_oci_to_docker(WINDOWS.as_bytes()).unwrap();
    let m = parse_back(&out);
    assert_eq!(m.layers[0].media_type, DOCKER_FOREIGN_LAYER_GZIP);
    assert_eq!(m.layers[0].size, 1_718_332_879);
    assert_eq!(m.layers[0].urls.len(), 1);
    assert!(m.layers[0].urls[0]
        .starts_with("https://mcr.microsoft.com/v2/windows/servercore/blobs/sha256:"));
    assert_eq!(m.layers[1].media_type, DOCKER_LAYER_GZIP);
    assert!(m.layers[1].urls.is_empty());
    // An empty urls list is not written at all.
    assert!(!String::from_utf8(out).unwrap().contains("\"urls\": []"));
}

#[test]
fn config_types() {
    let ok = |config: &str| {
        let out = convert_oci_to_docker(manifest(config, &[OCI_LAYER_GZIP]).as_bytes()).unwrap();
        parse_back(&out).config.media_type
    };
    assert_eq!(ok(OCI_CONFIG), DOCKER_CONFIG);
    assert_eq!(ok(DOCKER_CONFIG), DOCKER_CONFIG);
    for config in [
        OCI_EMPTY,
        "application/vnd.in-toto+json",
        "application/vnd.cncf.helm.config.v1+json",
        "application/vnd.docker.plugin.v1+json",
        "",
    ] {
        assert_eq!(
            convert_oci_to_docker(manifest(config, &[OCI_LAYER_GZIP]).as_bytes()),
            Err(ConversionError::UnsupportedConfig(config.to_owned())),
            "{config}"
        );
    }
}

#[test]
fn artifacts_are_refused() {
    let doc = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom.v1",
        "config": {"mediaType": OCI_EMPTY, "digest": CONFIG, "size": 2},
        "layers": [{"mediaType": "application/spdx+json", "digest": D1, "size": 10}],
    })
    .to_string();
    assert_eq!(
        convert_oci_to_docker(doc.as_bytes()),
        Err(ConversionError::Artifact(
            "application/vnd.example.sbom.v1".into()
        ))
    );
    // A buildx attestation manifest: in-toto layers on an ordinary-looking config is still not an
    // image.
    let attestation = manifest(OCI_CONFIG, &["application/vnd.in-toto+json"]);
    assert!(matches!(
        convert_oci_to_docker(attestation.as_bytes()),
        Err(ConversionError::UnsupportedLayer { position: 1, .. })
    ));
}

#[test]
fn only_oci_image_manifests() {
    for t in [
        media_type::DOCKER_MANIFEST,
        media_type::OCI_INDEX,
        media_type::DOCKER_MANIFEST_LIST,
    ] {
        let doc = manifest(OCI_CONFIG, &[]).replace(media_type::OCI_MANIFEST, t);
        assert_eq!(
            convert_oci_to_docker(doc.as_bytes()),
            Err(ConversionError::NotAnOciManifest(t.to_owned()))
        );
    }
    // The OCI media type field is optional.
    let mut v: serde_json::Value = serde_json::from_str(BUILDX).unwrap();
    v.as_object_mut().unwrap().remove("mediaType");
    let out = convert_oci_to_docker(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!(out, BUILDX_SCHEMA2.as_bytes());
    // The converted output is schema2, so it does not convert again.
    assert_eq!(
        convert_oci_to_docker(&out),
        Err(ConversionError::NotAnOciManifest(
            media_type::DOCKER_MANIFEST.into()
        ))
    );
}

#[test]
fn malformed_input() {
    for bad in [
        "".to_owned(),
        "{".to_owned(),
        "[]".to_owned(),
        "null".to_owned(),
        r#"{"schemaVersion": 2}"#.to_owned(),
        r#"{"schemaVersion": 2, "config": {}, "layers": []}"#.to_owned(),
        manifest(OCI_CONFIG, &[OCI_LAYER_GZIP]).replace(D1, "sha256:abc"),
        manifest(OCI_CONFIG, &[OCI_LAYER_GZIP]).replace(CONFIG, "not-a-digest"),
        manifest(OCI_CONFIG, &[OCI_LAYER_GZIP]).replace("\"size\":42", "\"size\":-1"),
        manifest(OCI_CONFIG, &[OCI_LAYER_GZIP])
            .replace("\"schemaVersion\":2", "\"schemaVersion\":1"),
        manifest(OCI_CONFIG, &[OCI_LAYER_GZIP])
            .replace("\"layers\":[", "\"layers\":[[\"a\",\"b\",1],"),
    ] {
        assert!(
            matches!(
                convert_oci_to_docker(bad.as_bytes()),
                Err(ConversionError::Malformed(_))
            ),
            "{bad}: {:?}",
            convert_oci_to_docker(bad.as_bytes())
        );
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn digest() -> impl Strategy<Value = String> {
        prop::collection::vec(any::<u8>(), 32).prop_map(|b| format!("sha256:{}", hex::encode(b)))
    }

    fn layer() -> impl Strategy<Value = (String, String, u64, Vec<String>)> {
        (
            prop::sample::select(vec![
                OCI_LAYER_GZIP,
                OCI_LAYER,
                OCI_NONDISTRIBUTABLE_LAYER_GZIP,
                OCI_NONDISTRIBUTABLE_LAYER,
                DOCKER_LAYER_GZIP,
                DOCKER_FOREIGN_LAYER_GZIP,
            ]),
            digest(),
            any::<u64>(),
            prop::collection::vec("https://[a-z]{1,8}\\.example/[a-z0-9]{0,8}", 0..3),
        )
            .prop_map(|(t, d, s, u)| (t.to_owned(), d, s, u))
    }

    proptest! {
        /// Any convertible manifest comes out as a schema2 manifest naming the same blobs (digest,
        /// size, urls, order) with mapped media types, and converting is a function of the input.
        #[test]
        fn converted_output_parses_back(
            config_type in prop::sample::select(vec![OCI_CONFIG, DOCKER_CONFIG]),
            config_digest in digest(),
            config_size in any::<u64>(),
            layers in prop::collection::vec(layer(), 0..8),
            annotate in any::<bool>(),
        ) {
            let mut doc = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": media_type::OCI_MANIFEST,
                "config": {"mediaType": config_type, "digest": config_digest, "size": config_size},
                "layers": layers.iter().map(|(t, d, s, u)| {
                    let mut l = serde_json::json!({"mediaType": t, "digest": d, "size": s});
                    if !u.is_empty() { l["urls"] = serde_json::json!(u); }
                    l
                }).collect::<Vec<_>>(),
            });
            if annotate {
                doc["annotations"] = serde_json::json!({"org.opencontainers.image.title": "x"});
            }
            let input = serde_json::to_vec(&doc).unwrap();
            let out = convert_oci_to_docker(&input).unwrap();
            prop_assert_eq!(&convert_oci_to_docker(&input).unwrap(), &out);
            let m: Schema2Manifest = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(m.schema_version, 2);
            prop_assert_eq!(m.media_type.as_str(), media_type::DOCKER_MANIFEST);
            prop_assert_eq!(m.config.media_type.as_str(), DOCKER_CONFIG);
            prop_assert_eq!(&m.config.digest, &config_digest);
            prop_assert_eq!(m.config.size, config_size);
            prop_assert_eq!(m.layers.len(), layers.len());
            for (got, (t, d, s, u)) in m.layers.iter().zip(&layers) {
                prop_assert_eq!(Some(got.media_type.as_str()), docker_layer_type(t));
                prop_assert_eq!(&got.digest, d);
                prop_assert_eq!(got.size, *s);
                prop_assert_eq!(&got.urls, u);
            }
        }

        /// Arbitrary bytes never panic the converter.
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = convert_oci_to_docker(&bytes);
        }
    }
}
