//! Referrers and signatures while upstream is down: `GET /v2/<name>/referrers/<digest>` cached
//! per subject and `artifactType` filter (tag TTL, stale-if-error), the 404 of a registry
//! without the referrers API remembered so clients still fall back to the tag schema, and the
//! request sequence of `cosign verify` (replayed, not the real binary) served from the cache.

mod support;

use archway::digest::Digest;
use http::StatusCode;
use std::time::Duration;
use support::fake_registry::{OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};
use support::{FakeRegistry, Harness, Kind, Reply, STALE_WARNING};

const SIG_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const SBOM_TYPE: &str = "application/spdx+json";

async fn harness(tag_ttl: Duration, stale_if_error: Duration, negative_ttl: Duration) -> Harness {
    Harness::with(FakeRegistry::start().await, move |c| {
        c.cache.tag_ttl = tag_ttl;
        c.cache.stale_if_error = stale_if_error;
        c.cache.negative_ttl = negative_ttl;
    })
    .await
}

fn digests(r: &Reply) -> Vec<String> {
    let mut v: Vec<String> = r.json()["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn filtered(path: &str, artifact_type: &str) -> String {
    format!(
        "{path}?artifactType={}",
        artifact_type.replace('/', "%2F").replace('+', "%2B")
    )
}

#[tokio::test]
async fn referrers_are_cached_per_filter_within_the_tag_ttl() {
    let h = harness(
        Duration::from_secs(300),
        Duration::from_secs(3600),
        Duration::from_secs(30),
    )
    .await;
    let img = h.fake.sample_image("lib/app", "v1", 1);
    let sig = h.fake.add_referrer("lib/app", &img.manifest, SIG_TYPE, 1);
    let sbom = h.fake.add_referrer("lib/app", &img.manifest, SBOM_TYPE, 2);
    let path = format!("/v2/lib/app/referrers/{}", img.manifest);
    let only_sbom = filtered(&path, SBOM_TYPE);

    let all = h.get(&path).await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.header("content-type"), Some(OCI_INDEX));
    assert_eq!(
        digests(&all),
        sorted(vec![sig.to_string(), sbom.to_string()])
    );
    let one = h.get(&only_sbom).await;
    assert_eq!(digests(&one), vec![sbom.to_string()]);
    assert_eq!(one.header("oci-filters-applied"), Some("artifactType"));
    // Upstream's bytes, as it sent them.
    let direct = h.client.get(&format!("{}{only_sbom}", h.fake.url())).await;
    assert_eq!(one.body, direct.body);
    assert_eq!(h.fake.count("GET", Kind::Referrers), 3);

    h.fake.reset_counts();
    for _ in 0..3 {
        let a = h.get(&path).await;
        assert_eq!(a.body, all.body);
        assert_eq!(a.header("content-type"), Some(OCI_INDEX));
        assert!(a.header("oci-filters-applied").is_none());
        assert!(a.header("warning").is_none());
        let b = h.get(&only_sbom).await;
        assert_eq!(b.body, one.body);
        assert_eq!(b.header("oci-filters-applied"), Some("artifactType"));
        assert_eq!(
            b.header("content-length"),
            Some(one.body.len().to_string().as_str())
        );
    }
    let head = h.head(&path).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-type"), Some(OCI_INDEX));
    assert!(head.body.is_empty());
    assert_eq!(h.fake.total(), 0, "{:?}", h.fake.requests());
    // Another filter is another answer: asked for once.
    let sigs = h.get(&filtered(&path, SIG_TYPE)).await;
    assert_eq!(digests(&sigs), vec![sig.to_string()]);
    assert_eq!(h.fake.count("GET", Kind::Referrers), 1);
}

#[tokio::test]
async fn referrers_are_served_stale_while_upstream_is_down_within_stale_if_error() {
    let h = harness(
        Duration::from_millis(200),
        Duration::from_secs(2),
        Duration::from_secs(30),
    )
    .await;
    let img = h.fake.sample_image("lib/app", "v1", 2);
    h.fake.add_referrer("lib/app", &img.manifest, SIG_TYPE, 3);
    h.fake.add_referrer("lib/app", &img.manifest, SBOM_TYPE, 4);
    let path = format!("/v2/lib/app/referrers/{}", img.manifest);
    let only_sig = filtered(&path, SIG_TYPE);
    let all = h.get(&path).await;
    let one = h.get(&only_sig).await;
    assert_eq!(digests(&one).len(), 1);

    tokio::time::sleep(Duration::from_millis(300)).await;
    h.fake.stop().await;
    for (p, want) in [(&path, &all), (&only_sig, &one)] {
        let r = h.get(p).await;
        assert_eq!(r.status, StatusCode::OK, "{p}: {}", r.text());
        assert_eq!(r.body, want.body);
        assert_eq!(r.header("content-type"), Some(OCI_INDEX));
        assert_eq!(r.header("warning"), Some(STALE_WARNING));
        assert_eq!(
            r.header("oci-filters-applied"),
            want.header("oci-filters-applied")
        );
    }
    // A filter never asked for was never cached.
    let cold = h.get(&filtered(&path, SBOM_TYPE)).await;
    assert_eq!(cold.status, StatusCode::BAD_GATEWAY, "{}", cold.text());

    // Past stale_if_error, an error again.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let late = h.get(&path).await;
    assert_eq!(late.status, StatusCode::BAD_GATEWAY, "{}", late.text());
}

#[tokio::test]
async fn a_new_referrer_shows_after_the_tag_ttl() {
    let h = harness(
        Duration::from_millis(500),
        Duration::from_secs(3600),
        Duration::from_secs(30),
    )
    .await;
    let img = h.fake.sample_image("lib/app", "v1", 3);
    let first = h.fake.add_referrer("lib/app", &img.manifest, SIG_TYPE, 5);
    let path = format!("/v2/lib/app/referrers/{}", img.manifest);
    assert_eq!(digests(&h.get(&path).await), vec![first.to_string()]);
    let second = h.fake.add_referrer("lib/app", &img.manifest, SIG_TYPE, 6);
    assert_eq!(
        digests(&h.get(&path).await),
        vec![first.to_string()],
        "within the TTL: the cached list"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    h.fake.reset_counts();
    assert_eq!(
        digests(&h.get(&path).await),
        sorted(vec![first.to_string(), second.to_string()])
    );
    assert_eq!(h.fake.count("GET", Kind::Referrers), 1);
}

#[tokio::test]
async fn pages_are_passed_through_never_cached() {
    let h = harness(
        Duration::from_secs(300),
        Duration::from_secs(3600),
        Duration::from_secs(30),
    )
    .await;
    let img = h.fake.sample_image("lib/app", "v1", 4);
    h.fake.add_referrer("lib/app", &img.manifest, SIG_TYPE, 7);
    h.fake.add_referrer("lib/app", &img.manifest, SBOM_TYPE, 8);
    let path = format!("/v2/lib/app/referrers/{}", img.manifest);
    let page = h.get(&format!("{path}?n=1")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(digests(&page).len(), 1);
    let link = page.header("link").expect("a next link").to_owned();
    assert!(link.starts_with(&format!("<{path}?")), "{link}");
    let next = link[1..link.find('>').unwrap()].to_owned();
    let rest = h.get(&next).await;
    assert_eq!(digests(&rest).len(), 1);
    assert_ne!(digests(&rest), digests(&page));
    h.fake.reset_counts();
    h.get(&format!("{path}?n=1")).await;
    assert_eq!(
        h.fake.count("GET", Kind::Referrers),
        1,
        "pages are not kept"
    );
    h.fake.stop().await;
    let down = h.get(&format!("{path}?n=1")).await;
    assert_eq!(down.status, StatusCode::BAD_GATEWAY);
}

/// Distribution 2.x has no referrers API: its 404 must stay a 404 while upstream is down (oras,
/// notation and go-containerregistry fall back to the `sha256-<hex>` tag only on a 404), and so
/// must the 404 for a referrers tag that does not exist.
#[tokio::test]
async fn without_a_referrers_api_the_404s_stay_404_offline() {
    let h = harness(
        Duration::from_millis(100),
        Duration::from_secs(3600),
        Duration::from_millis(100),
    )
    .await;
    h.fake.set_referrers_api(false);
    let img = h.fake.sample_image("lib/app", "v1", 5);
    let other = h.fake.sample_image("lib/app", "v2", 6);
    // oras on a registry without the API keeps the list in an index tagged `sha256-<hex>`.
    let listed = h.fake.add_referrer("lib/app", &img.manifest, SIG_TYPE, 9);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": listed.to_string(), "size": 1, "artifactType": SIG_TYPE}],
    }))
    .unwrap();
    let tag = format!("sha256-{}", img.manifest.hex());
    h.fake
        .add_manifest("lib/app", Some(&tag), OCI_INDEX, index.clone());

    let referrers = |d: &Digest| format!("/v2/lib/app/referrers/{d}");
    let api = h.get(&referrers(&img.manifest)).await;
    assert_eq!(api.status, StatusCode::NOT_FOUND, "{}", api.text());
    // As oras and go-containerregistry ask for it (without an Accept for the index, archway
    // would answer a legacy client's way).
    let as_index = [("accept", OCI_INDEX)];
    let fallback = h
        .get_with(&format!("/v2/lib/app/manifests/{tag}"), &as_index)
        .await;
    assert_eq!(fallback.status, StatusCode::OK, "{}", fallback.text());
    assert_eq!(fallback.body, index);
    let none_tag = format!("/v2/lib/app/manifests/sha256-{}", other.manifest.hex());
    assert_eq!(
        h.get_with(&none_tag, &as_index).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.get(&referrers(&other.manifest)).await.status,
        StatusCode::NOT_FOUND
    );

    // Past both TTLs, upstream down: the same answers.
    tokio::time::sleep(Duration::from_millis(250)).await;
    h.fake.stop().await;
    for d in [&img.manifest, &other.manifest] {
        let r = h.get(&referrers(d)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
        assert_eq!(r.error_code(), "MANIFEST_UNKNOWN");
    }
    let r = h
        .get_with(&format!("/v2/lib/app/manifests/{tag}"), &as_index)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.body, index);
    assert_eq!(r.header("warning"), Some(STALE_WARNING));
    let r = h.get_with(&none_tag, &as_index).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(r.error_code(), "MANIFEST_UNKNOWN");
    // A tag never asked for is still an error: archway cannot know.
    let unknown = h
        .get_with(
            &format!("/v2/lib/app/manifests/sha256-{}.att", img.manifest.hex()),
            &as_index,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_GATEWAY);
}

/// A cosign (tag-schema) signature of `subject`: an OCI manifest tagged `sha256-<hex>.sig`
/// whose layer is the simple-signing payload, the signature in an annotation (as `cosign sign`
/// writes it). Returns the payload's digest and bytes.
fn cosign_sign(fake: &FakeRegistry, repo: &str, subject: &Digest) -> (Digest, Vec<u8>) {
    let payload = serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": {"docker-reference": format!("127.0.0.1/{repo}")},
            "image": {"docker-manifest-digest": subject.to_string()},
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .unwrap();
    let layer = fake.add_blob(repo, payload.clone());
    let config = br#"{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#;
    let config_digest = fake.add_blob(repo, &config[..]);
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": config.len(), "digest": config_digest.to_string()},
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "size": payload.len(),
            "digest": layer.to_string(),
            "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQDfakefakefake="},
        }],
    });
    let tag = format!("sha256-{}.sig", subject.hex());
    fake.add_manifest(
        repo,
        Some(&tag),
        OCI_MANIFEST,
        serde_json::to_vec(&m).unwrap(),
    );
    (layer, payload)
}

/// One answer as the replay compares it: a success byte for byte, an error by status and code
/// (its message may say where the answer came from).
#[derive(Debug, PartialEq)]
struct Seen {
    step: String,
    status: StatusCode,
    content_type: Option<String>,
    digest: Option<String>,
    body: Vec<u8>,
}

fn seen(step: String, r: &Reply) -> Seen {
    Seen {
        step,
        status: r.status,
        content_type: r.header("content-type").map(str::to_owned),
        digest: r.header("docker-content-digest").map(str::to_owned),
        body: if r.status.is_success() {
            r.body.to_vec()
        } else {
            r.error_code().into_bytes()
        },
    }
}

/// The requests `cosign verify --key k.pub <image>:<tag>` (cosign v3, sigstore/cosign
/// pkg/cosign/verify.go) makes, in order:
/// 1. `GET /v2/` (go-containerregistry's ping);
/// 2. `HEAD` the tag (`ociremote.ResolveDigest`);
/// 3. `GET referrers/<digest>` (`GetBundles`, new bundle format, on by default); on a 404
///    (or a Content-Type other than the OCI index) go-containerregistry falls back to
///    `GET manifests/sha256-<hex>`, where a 404 means no referrers;
/// 4. no bundles: the tag schema — `HEAD` the tag again, `GET manifests/sha256-<hex>.sig`;
/// 5. `GET` each signature layer blob (`sigLayer.Payload`); the config blob is not read.
async fn cosign_verify(h: &Harness, repo: &str, tag: &str) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut record = |step: String, r: &Reply| out.push(seen(step, r));
    let accept = [(
        "accept",
        "application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json,application/vnd.docker.distribution.manifest.list.v2+json",
    )];
    let ping = h.get("/v2/").await;
    record("ping".into(), &ping);
    let head = h
        .client
        .request(
            http::Method::HEAD,
            &h.url(&format!("/v2/{repo}/manifests/{tag}")),
            &accept,
        )
        .await;
    record("head tag".into(), &head);
    let digest = head
        .header("docker-content-digest")
        .expect("the tag's digest")
        .to_owned();
    let hex = digest.trim_start_matches("sha256:").to_owned();
    let index_accept = [("accept", OCI_INDEX)];
    let referrers = h
        .get_with(&format!("/v2/{repo}/referrers/{digest}"), &index_accept)
        .await;
    record("referrers".into(), &referrers);
    if referrers.status == StatusCode::NOT_FOUND
        || referrers.header("content-type") != Some(OCI_INDEX)
    {
        let fallback = h
            .get_with(&format!("/v2/{repo}/manifests/sha256-{hex}"), &index_accept)
            .await;
        record("referrers tag".into(), &fallback);
    }
    let again = h
        .client
        .request(
            http::Method::HEAD,
            &h.url(&format!("/v2/{repo}/manifests/{tag}")),
            &accept,
        )
        .await;
    record("head tag again".into(), &again);
    let sig = h
        .get_with(&format!("/v2/{repo}/manifests/sha256-{hex}.sig"), &accept)
        .await;
    record("sig tag".into(), &sig);
    if sig.status == StatusCode::OK {
        for layer in sig.json()["layers"].as_array().unwrap() {
            let d = layer["digest"].as_str().unwrap();
            let blob = h.get(&format!("/v2/{repo}/blobs/{d}")).await;
            record(format!("layer {d}"), &blob);
        }
    }
    out
}

async fn cosign_sequence_offline(referrers_api: bool) {
    let h = harness(
        Duration::from_millis(100),
        Duration::from_secs(3600),
        Duration::from_millis(100),
    )
    .await;
    h.fake.set_referrers_api(referrers_api);
    let img = h.fake.sample_image("lib/signed", "v1", 7);
    let (layer, payload) = cosign_sign(&h.fake, "lib/signed", &img.manifest);

    let online = cosign_verify(&h, "lib/signed", "v1").await;
    // What verification needs: the payload names the image's digest, and hashes to the layer
    // digest the signature manifest lists.
    let last = online.last().unwrap();
    assert_eq!(last.step, format!("layer {layer}"));
    assert_eq!(last.status, StatusCode::OK);
    assert_eq!(last.body, payload);
    assert_eq!(
        support::sha256_digest(&last.body).to_string(),
        layer.to_string()
    );
    let steps: Vec<&str> = online.iter().map(|s| s.step.as_str()).collect();
    if referrers_api {
        assert!(!steps.contains(&"referrers tag"), "{steps:?}");
        assert_eq!(online[2].status, StatusCode::OK);
    } else {
        assert_eq!(online[2].status, StatusCode::NOT_FOUND);
        assert_eq!(online[3].step, "referrers tag");
        assert_eq!(online[3].status, StatusCode::NOT_FOUND);
    }

    // Past every TTL, upstream gone: the same answers, byte for byte.
    tokio::time::sleep(Duration::from_millis(250)).await;
    h.fake.stop().await;
    let offline = cosign_verify(&h, "lib/signed", "v1").await;
    assert_eq!(offline.len(), online.len());
    for (a, b) in online.iter().zip(&offline) {
        assert_eq!(a, b, "step {}", a.step);
    }
}

#[tokio::test]
async fn cosign_verify_sequence_is_served_offline_with_a_referrers_api() {
    cosign_sequence_offline(true).await;
}

#[tokio::test]
async fn cosign_verify_sequence_is_served_offline_from_a_registry_without_one() {
    cosign_sequence_offline(false).await;
}
