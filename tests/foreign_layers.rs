//! Foreign (non-distributable) layers: upstream 404s them, archway fetches them from the url
//! the manifest named (only from a host on `foreign_layer_hosts`, only a url a served manifest
//! named), verifies digest and size, caches them, and serves them with everything down.

mod support;

use archway::foreign::HostPattern;
use archway::media_type;
use http::StatusCode;
use std::time::Duration;
use support::foreign_host::ForeignHost;
use support::metrics::Scrape;
use support::{sha256_digest, FakeRegistry, Harness};

const DOCKER_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json";

struct WindowsImage {
    manifest: String,
    foreign: Vec<u8>,
    foreign_digest: String,
    layer_digest: String,
}

/// A Windows-style image in `fake`: a config and a normal layer in the registry, and a foreign
/// base layer that only `urls` have (the registry answers 404 for it).
fn windows_image(fake: &FakeRegistry, repo: &str, tag: &str, urls: &[String]) -> WindowsImage {
    let config = br#"{"architecture":"amd64","os":"windows","os.version":"10.0.17763.1234","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = fake.add_blob(repo, config.to_vec());
    let layer = support::fake_registry::pseudo_random_bytes(7, 3000);
    let layer_digest = fake.add_blob(repo, layer.clone());
    let foreign = support::fake_registry::pseudo_random_bytes(8, 20_000);
    let foreign_digest = sha256_digest(&foreign);
    let urls = serde_json::to_string(urls).unwrap();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{m}","config":{{"mediaType":"{c}","size":{cs},"digest":"{config_digest}"}},"layers":[{{"mediaType":"{f}","size":{fs},"digest":"{foreign_digest}","urls":{urls}}},{{"mediaType":"{l}","size":{ls},"digest":"{layer_digest}"}}]}}"#,
        m = media_type::DOCKER_MANIFEST,
        c = media_type::DOCKER_CONFIG,
        cs = config.len(),
        f = media_type::DOCKER_FOREIGN_LAYER_GZIP,
        fs = foreign.len(),
        l = media_type::DOCKER_LAYER_GZIP,
        ls = layer.len(),
    );
    fake.add_manifest(
        repo,
        Some(tag),
        media_type::DOCKER_MANIFEST,
        manifest.clone(),
    );
    WindowsImage {
        manifest,
        foreign,
        foreign_digest: foreign_digest.to_string(),
        layer_digest: layer_digest.to_string(),
    }
}

async fn harness(fake: FakeRegistry, hosts: &[String]) -> Harness {
    let hosts: Vec<HostPattern> = hosts
        .iter()
        .map(|h| HostPattern::parse(h).unwrap())
        .collect();
    Harness::with(fake, move |c| {
        c.upstreams[0].foreign_layer_hosts = hosts;
        // A failed download is remembered for at most this long (2 s by default).
        c.cache.negative_ttl = Duration::from_millis(100);
    })
    .await
}

fn foreign_fetches(h: &Harness, outcome: &str) -> f64 {
    let s = Scrape::parse(h.archway.as_ref().unwrap().proxy().metrics().encode());
    s.get(
        "archway_foreign_layer_fetches_total",
        &[("upstream", "fake"), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_foreign_layer_upstream_lacks_comes_from_its_url_verified_cached_and_served_offline() {
    let host = ForeignHost::start().await;
    let fake = FakeRegistry::start().await;
    let path = "/v2/windows/servercore/blobs/base";
    let url = format!("{}{path}", host.origin());
    let img = windows_image(&fake, "win/app", "ltsc2019", &[url]);
    host.put(path, &img.foreign);
    let h = harness(fake, &[host.origin()]).await;

    let m = h
        .get_with(
            "/v2/win/app/manifests/ltsc2019",
            &[("accept", DOCKER_ACCEPT)],
        )
        .await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.body.as_ref(), img.manifest.as_bytes(), "never changed");
    let blob_path = format!("/v2/win/app/blobs/{}", img.foreign_digest);
    let r = h.get(&blob_path).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body.as_ref(), img.foreign.as_slice());
    assert_eq!(r.sha256(), img.foreign_digest);
    assert_eq!(host.requests(), 1);
    assert_eq!(host.paths(), vec![path.to_owned()]);
    assert_eq!(foreign_fetches(&h, "fetched"), 1.0);

    // Upstream and the foreign host gone: the cache serves it, and the rest of the image.
    let normal = h
        .get(&format!("/v2/win/app/blobs/{}", img.layer_digest))
        .await;
    assert_eq!(normal.status, StatusCode::OK);
    h.fake.stop().await;
    host.stop();
    for _ in 0..2 {
        let r = h.get(&blob_path).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.sha256(), img.foreign_digest);
    }
    assert_eq!(host.requests(), 1);
}

#[tokio::test]
async fn wrong_bytes_or_size_from_the_foreign_host_are_never_cached() {
    let host = ForeignHost::start().await;
    let fake = FakeRegistry::start().await;
    let path = "/base";
    let img = windows_image(
        &fake,
        "win/app",
        "v1",
        &[format!("{}{path}", host.origin())],
    );
    let h = harness(fake, &[host.origin()]).await;
    h.get("/v2/win/app/manifests/v1").await;
    let blob_path = format!("/v2/win/app/blobs/{}", img.foreign_digest);
    let digest = img.foreign_digest.parse().unwrap();
    let store = h.archway.as_ref().unwrap().proxy().blob_store().clone();

    // Same length, other bytes: the digest check fails.
    let mut wrong = img.foreign.clone();
    wrong[100] ^= 1;
    host.put(path, &wrong);
    let r = h.get(&blob_path).await;
    assert!(
        !(r.status == StatusCode::OK && r.complete() && r.body.as_ref() == wrong.as_slice()),
        "wrong bytes served as whole"
    );
    assert!(
        r.status.is_server_error() || r.body_error.is_some(),
        "{}",
        r.status
    );
    assert!(store.lookup(&digest).await.is_none());

    // The right bytes and more: refused by the announced length before any is kept.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut longer = img.foreign.clone();
    longer.extend_from_slice(b"extra");
    host.put(path, &longer);
    let r = h.get(&blob_path).await;
    assert!(
        r.status.is_server_error() || r.body_error.is_some(),
        "{}",
        r.status
    );
    assert!(store.lookup(&digest).await.is_none());
    assert_eq!(host.requests(), 2);
    assert_eq!(foreign_fetches(&h, "error"), 1.0, "the length was refused");
}

#[tokio::test]
async fn a_url_off_the_allowlist_is_never_fetched() {
    let host = ForeignHost::start().await;
    let fake = FakeRegistry::start().await;
    let path = "/base";
    let img = windows_image(
        &fake,
        "win/app",
        "v1",
        &[format!("{}{path}", host.origin())],
    );
    host.put(path, &img.foreign);
    // The default allowlist: Microsoft's hosts only.
    let h = Harness::with(fake, |_| {}).await;
    let m = h.get("/v2/win/app/manifests/v1").await;
    assert_eq!(m.status, StatusCode::OK);
    let r = h
        .get(&format!("/v2/win/app/blobs/{}", img.foreign_digest))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "upstream's answer stands");
    assert_eq!(host.requests(), 0);
    assert_eq!(foreign_fetches(&h, "not_allowed"), 1.0);

    // Allowed host, but plain http is only allowed by an entry that says so.
    let port = host.origin().rsplit(':').next().unwrap().to_owned();
    let https_only = format!("https://127.0.0.1:{port}");
    let fake = FakeRegistry::start().await;
    let img = windows_image(
        &fake,
        "win/app",
        "v1",
        &[format!("{}{path}", host.origin())],
    );
    let h = harness(fake, &[https_only]).await;
    h.get("/v2/win/app/manifests/v1").await;
    let r = h
        .get(&format!("/v2/win/app/blobs/{}", img.foreign_digest))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(host.requests(), 0);
}

#[tokio::test]
async fn a_url_no_served_manifest_named_is_never_fetched() {
    let host = ForeignHost::start().await;
    let fake = FakeRegistry::start().await;
    let path = "/base";
    let img = windows_image(
        &fake,
        "win/app",
        "v1",
        &[format!("{}{path}", host.origin())],
    );
    host.put(path, &img.foreign);
    let h = harness(fake, &[host.origin()]).await;
    // The manifest was never asked for through archway: its urls are unknown here.
    let r = h
        .get(&format!("/v2/win/app/blobs/{}", img.foreign_digest))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(host.requests(), 0);

    // Served by digest, it counts (once upstream's 404 is no longer remembered).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let digest = sha256_digest(img.manifest.as_bytes());
    let m = h.get(&format!("/v2/win/app/manifests/{digest}")).await;
    assert_eq!(m.status, StatusCode::OK);
    let r = h
        .get(&format!("/v2/win/app/blobs/{}", img.foreign_digest))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.sha256(), img.foreign_digest);
    assert_eq!(host.requests(), 1);
}
