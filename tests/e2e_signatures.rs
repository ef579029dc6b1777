//! End-to-end: the request sequence of `cosign verify` (replayed over HTTP — no cosign binary
//! installs here; see `tests/proxy_referrers.rs` for the sequence and where it comes from)
//! through archway in front of a real Distribution 2.8 (`docker-registry`), which has no
//! referrers API. Then the same sequence with the registry stopped, past the tag TTL and
//! `negative_ttl`: every answer must be the same — the 404s included, since cosign and
//! go-containerregistry take a 404 as "nothing there" and fall back, but fail on a 5xx.
//! Same gate and helpers as `tests/e2e.rs`.

#[allow(dead_code)]
mod e2e {
    pub mod fixtures;
    pub mod http;
    pub mod procs;
    pub mod tools;
}

use bytes::Bytes;
use e2e::fixtures::{push_blob, push_manifest, Blob};
use e2e::http;
use e2e::tools::{e2e_enabled, port_open, Archway, Registry};
use serde_json::json;
use std::time::Duration;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json,application/vnd.docker.distribution.manifest.list.v2+json";

/// An image and its cosign signature (`sha256-<hex>.sig`) pushed to `repo`; returns the
/// image's digest and the signature payload blob.
fn push_signed(base: &str, repo: &str) -> (String, Blob) {
    let config = Blob::new(
        "application/vnd.oci.image.config.v1+json",
        serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})).unwrap(),
    );
    let layer = Blob::new(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        Bytes::from(format!("layer {}", e2e::fixtures::fresh_seed())),
    );
    let image = Blob::new(
        OCI_MANIFEST,
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": config.descriptor(), "layers": [layer.descriptor()],
        }))
        .unwrap(),
    );
    let payload = Blob::new(
        "application/vnd.dev.cosign.simplesigning.v1+json",
        serde_json::to_vec(&json!({
            "critical": {
                "identity": {"docker-reference": format!("127.0.0.1/{repo}")},
                "image": {"docker-manifest-digest": image.digest},
                "type": "cosign container image signature",
            },
            "optional": null,
        }))
        .unwrap(),
    );
    let sig_config = Blob::new(
        "application/vnd.oci.image.config.v1+json",
        &br#"{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#[..],
    );
    let mut layer_desc = payload.descriptor();
    layer_desc["annotations"] = json!({"dev.cosignproject.cosign/signature": "MEUCIQDfake="});
    let sig = Blob::new(
        OCI_MANIFEST,
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": sig_config.descriptor(), "layers": [layer_desc],
        }))
        .unwrap(),
    );
    for b in [&config, &layer, &payload, &sig_config] {
        push_blob(base, repo, b, None).unwrap();
    }
    push_manifest(base, repo, "v1", &image).unwrap();
    push_manifest(base, repo, &format!("sha256-{}.sig", image.hex()), &sig).unwrap();
    (image.digest.clone(), payload)
}

/// (step, status, Content-Type, Docker-Content-Digest, body — an error's code only)
type Step = (String, u16, Option<String>, Option<String>, Bytes);

/// cosign v3 `verify --key …` as a client sees it: ping, HEAD the tag, the referrers API (and on
/// a 404 the `sha256-<hex>` referrers tag), HEAD the tag again, the `.sig` tag, its layers.
fn cosign_verify(base: &str, repo: &str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut call = |step: &str, method: &str, path: &str, accept: &str| {
        let r = http::send(
            method,
            &format!("{base}{path}"),
            &[("accept", accept)],
            Bytes::new(),
        )
        .unwrap_or_else(|e| panic!("{step}: {e}"));
        let body = if (200..300).contains(&r.status) {
            r.body.clone()
        } else {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            Bytes::from(v["errors"][0]["code"].as_str().unwrap_or("").to_owned())
        };
        let h = |n: &str| r.header(n).map(str::to_owned);
        out.push((
            step.to_owned(),
            r.status,
            h("content-type"),
            h("docker-content-digest"),
            body,
        ));
        r
    };
    call("ping", "GET", "/v2/", "*/*");
    let head = call(
        "head tag",
        "HEAD",
        &format!("/v2/{repo}/manifests/v1"),
        ACCEPT,
    );
    let digest = head
        .header("docker-content-digest")
        .expect("digest")
        .to_owned();
    let hex = digest.trim_start_matches("sha256:").to_owned();
    let referrers = call(
        "referrers",
        "GET",
        &format!("/v2/{repo}/referrers/{digest}"),
        OCI_INDEX,
    );
    if referrers.status == 404 || referrers.header("content-type") != Some(OCI_INDEX) {
        call(
            "referrers tag",
            "GET",
            &format!("/v2/{repo}/manifests/sha256-{hex}"),
            OCI_INDEX,
        );
    }
    call(
        "head tag again",
        "HEAD",
        &format!("/v2/{repo}/manifests/v1"),
        ACCEPT,
    );
    let sig = call(
        "sig tag",
        "GET",
        &format!("/v2/{repo}/manifests/sha256-{hex}.sig"),
        ACCEPT,
    );
    if sig.status == 200 {
        let m: serde_json::Value = serde_json::from_slice(&sig.body).unwrap();
        for l in m["layers"].as_array().unwrap() {
            let d = l["digest"].as_str().unwrap();
            call(
                &format!("layer {d}"),
                "GET",
                &format!("/v2/{repo}/blobs/{d}"),
                "*/*",
            );
        }
    }
    out
}

#[test]
fn cosign_verify_sequence_against_distribution_is_served_offline() {
    if !e2e_enabled("cosign_verify_sequence_against_distribution_is_served_offline") {
        return;
    }
    let mut registry = Registry::start();
    let (digest, payload) = push_signed(&registry.url(), "signed/app");
    let archway = Archway::start(&registry.url(), "1s");
    let base = archway.url();

    let online = cosign_verify(&base, "signed/app");
    let steps: Vec<(&str, u16)> = online.iter().map(|s| (s.0.as_str(), s.1)).collect();
    eprintln!("online: {steps:?}");
    // Distribution 2.8 has no referrers API: the 404 clients fall back on, then no
    // `sha256-<hex>` tag (404: no referrers), then the classic signature.
    assert_eq!(
        steps,
        vec![
            ("ping", 200),
            ("head tag", 200),
            ("referrers", 404),
            ("referrers tag", 404),
            ("head tag again", 200),
            ("sig tag", 200),
            (format!("layer {}", payload.digest).as_str(), 200),
        ]
    );
    assert_eq!(online[1].3.as_deref(), Some(digest.as_str()));
    // What verification needs: the payload, hashing to the listed digest, naming the image.
    let last = online.last().unwrap();
    assert_eq!(last.4, payload.data);
    assert!(String::from_utf8_lossy(&last.4).contains(&digest));

    let port = registry.port;
    registry.stop();
    assert!(!port_open(port));
    // Past the tag TTL (1 s) and negative_ttl (30 s by default): stale-if-error throughout.
    std::thread::sleep(Duration::from_secs(32));
    let before = archway.access_log().len();
    let offline = cosign_verify(&base, "signed/app");
    assert_eq!(offline, online);
    let log = archway.access_log();
    for a in &log[before..] {
        assert!(a.status < 500, "{a:?}");
        assert_ne!(a.cache.as_deref(), Some("miss"), "{a:?}");
    }
}
