//! Manifest and tag caching: hits without upstream traffic, revalidation after the TTL,
//! stale-if-error and its limit, verification of manifests by digest, and restart.

mod support;

use http::StatusCode;
use std::time::Duration;
use support::{FakeRegistry, Fault, Harness, Kind, STALE_WARNING};

/// archway with the given tag TTL and stale-if-error window.
async fn harness(tag_ttl: Duration, stale_if_error: Duration) -> Harness {
    Harness::with(FakeRegistry::start().await, move |c| {
        c.cache.tag_ttl = tag_ttl;
        c.cache.stale_if_error = stale_if_error;
    })
    .await
}

#[tokio::test]
async fn manifest_by_tag_within_ttl_makes_zero_upstream_requests() {
    let h = harness(Duration::from_secs(300), Duration::from_secs(3600)).await;
    let img = h.fake.sample_image("lib/app", "v1", 1);
    let first = h.get("/v2/lib/app/manifests/v1").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, img.manifest_bytes);
    assert_eq!(h.fake.count("GET", Kind::Manifest), 1);

    h.fake.reset_counts();
    for _ in 0..3 {
        let r = h.get("/v2/lib/app/manifests/v1").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, img.manifest_bytes);
        assert!(r.header("warning").is_none());
    }
    let head = h.head("/v2/lib/app/manifests/v1").await;
    assert_eq!(head.status, StatusCode::OK);
    // The manifest fetched by tag is also cached by its digest.
    let by_digest = h
        .get(&format!("/v2/lib/app/manifests/{}", img.manifest))
        .await;
    assert_eq!(by_digest.body, img.manifest_bytes);
    assert_eq!(h.fake.total(), 0, "{:?}", h.fake.requests());
    assert_eq!(h.fake.connections(), 0);
}

#[tokio::test]
async fn manifest_by_digest_is_immutable() {
    // A tiny tag TTL: digests must not be subject to it.
    let h = harness(Duration::from_millis(50), Duration::from_secs(3600)).await;
    let img = h.fake.sample_image("lib/app", "v1", 2);
    let path = format!("/v2/lib/app/manifests/{}", img.manifest);
    assert_eq!(h.get(&path).await.body, img.manifest_bytes);
    assert_eq!(h.fake.count("GET", Kind::Manifest), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.fake.reset_counts();
    // Even with upstream down, a digest is served, fresh (no Warning).
    h.fake.stop().await;
    for _ in 0..2 {
        let r = h.get(&path).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, img.manifest_bytes);
        assert!(r.header("warning").is_none());
    }
    assert_eq!(h.fake.total(), 0);
}

#[tokio::test]
async fn tag_is_revalidated_by_head_after_ttl() {
    let h = harness(Duration::from_secs(1), Duration::from_secs(3600)).await;
    let v1 = h.fake.sample_image("lib/app", "latest", 3);
    assert_eq!(
        h.get("/v2/lib/app/manifests/latest").await.body,
        v1.manifest_bytes
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    h.fake.reset_counts();
    let r = h.get("/v2/lib/app/manifests/latest").await;
    assert_eq!(r.body, v1.manifest_bytes);
    assert_eq!(
        h.fake.count("HEAD", Kind::Manifest),
        1,
        "revalidated by HEAD"
    );
    assert_eq!(h.fake.count("GET", Kind::Manifest), 0, "unchanged: no GET");
    // Revalidated: fresh again for another TTL.
    h.fake.reset_counts();
    h.get("/v2/lib/app/manifests/latest").await;
    assert_eq!(h.fake.total(), 0);

    // The tag moves upstream; after the TTL archway follows it.
    let v2 = h.fake.sample_image("lib/app", "latest", 4);
    let stale_view = h.get("/v2/lib/app/manifests/latest").await;
    assert_eq!(
        stale_view.body, v1.manifest_bytes,
        "within TTL: the cached answer"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    h.fake.reset_counts();
    let r = h.get("/v2/lib/app/manifests/latest").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, v2.manifest_bytes);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(v2.manifest.to_string().as_str())
    );
    assert_eq!(h.fake.count("HEAD", Kind::Manifest), 1);
    assert_eq!(
        h.fake.count("GET", Kind::Manifest),
        1,
        "one GET for the new manifest: {:?}",
        h.fake.requests()
    );
    // The old manifest stays reachable by digest without upstream.
    h.fake.reset_counts();
    let old = h
        .get(&format!("/v2/lib/app/manifests/{}", v1.manifest))
        .await;
    assert_eq!(old.body, v1.manifest_bytes);
    assert_eq!(h.fake.total(), 0);
}

/// Ways to break upstream.
enum Breakage {
    Fault(Fault),
    Stop,
}

/// Warm a tag, let it expire, break upstream, and expect the stale answer.
async fn stale_served_when(breakage: Breakage, what: &str) {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.cache.tag_ttl = Duration::from_millis(100);
        c.cache.stale_if_error = Duration::from_secs(3600);
        c.upstreams[0].read_timeout = Duration::from_millis(500);
        c.upstreams[0].connect_timeout = Duration::from_millis(500);
    })
    .await;
    let img = h.fake.sample_image("lib/app", "v1", 5);
    assert_eq!(
        h.get("/v2/lib/app/manifests/v1").await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    match breakage {
        Breakage::Fault(f) => h.fake.fault(None, f),
        Breakage::Stop => h.fake.stop().await,
    }
    for method in [http::Method::GET, http::Method::HEAD] {
        let r = h.request(method.clone(), "/v2/lib/app/manifests/v1").await;
        assert_eq!(r.status, StatusCode::OK, "{what} {method}: {}", r.text());
        assert_eq!(r.header("warning"), Some(STALE_WARNING), "{what} {method}");
        assert_eq!(
            r.header("docker-content-digest"),
            Some(img.manifest.to_string().as_str()),
            "{what}"
        );
        if method == http::Method::GET {
            assert_eq!(r.body, img.manifest_bytes, "{what}");
        }
    }
}

#[tokio::test]
async fn stale_tag_served_on_upstream_500() {
    stale_served_when(Breakage::Fault(Fault::status(500)), "500").await;
}

#[tokio::test]
async fn stale_tag_served_on_upstream_503() {
    stale_served_when(Breakage::Fault(Fault::status(503)), "503").await;
}

#[tokio::test]
async fn stale_tag_served_on_upstream_429() {
    stale_served_when(Breakage::Fault(Fault::too_many_requests("30")), "429").await;
}

#[tokio::test]
async fn stale_tag_served_when_upstream_refuses_connections() {
    stale_served_when(Breakage::Stop, "stopped").await;
}

#[tokio::test]
async fn stale_tag_served_when_upstream_times_out() {
    stale_served_when(Breakage::Fault(Fault::StallHeaders), "stalled").await;
}

/// Warm a tag, wait past stale-if-error, break upstream: the client gets the error.
async fn error_beyond_stale_window(breakage: Breakage) -> support::Reply {
    let h = harness(Duration::from_millis(100), Duration::from_millis(600)).await;
    h.fake.sample_image("lib/app", "v1", 6);
    assert_eq!(
        h.get("/v2/lib/app/manifests/v1").await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    match breakage {
        Breakage::Fault(f) => h.fake.fault(None, f),
        Breakage::Stop => h.fake.stop().await,
    }
    let r = h.get("/v2/lib/app/manifests/v1").await;
    assert!(r.header("warning").is_none());
    assert!(r.json()["errors"][0]["code"].is_string(), "{}", r.text());
    r
}

#[tokio::test]
async fn beyond_stale_if_error_500_is_502() {
    let r = error_beyond_stale_window(Breakage::Fault(Fault::status(500))).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
}

#[tokio::test]
async fn beyond_stale_if_error_429_is_429() {
    let r = error_beyond_stale_window(Breakage::Fault(Fault::too_many_requests("9"))).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(r.error_code(), "TOOMANYREQUESTS");
    assert_eq!(r.header("retry-after"), Some("9"));
}

#[tokio::test]
async fn beyond_stale_if_error_refused_is_502() {
    let r = error_beyond_stale_window(Breakage::Stop).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
}

/// One failed upstream answer for a cold tag must not make the next request fail too.
#[tokio::test]
async fn one_upstream_blip_does_not_fail_the_next_request() {
    let h = Harness::start().await;
    let img = h.fake.sample_image("lib/app", "v1", 16);
    h.fake.fault_times(None, Fault::status(503), 1);
    let r = h.get("/v2/lib/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let r = h.get("/v2/lib/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK, "upstream is back: {}", r.text());
    assert_eq!(r.body, img.manifest_bytes);
    assert_eq!(h.fake.count("GET", Kind::Manifest), 2);
}

#[tokio::test]
async fn stale_answer_does_not_outlive_a_recovered_upstream() {
    let h = harness(Duration::from_millis(100), Duration::from_secs(3600)).await;
    let v1 = h.fake.sample_image("lib/app", "v1", 7);
    h.get("/v2/lib/app/manifests/v1").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.fake.fault_times(None, Fault::status(503), 1);
    let stale = h.get("/v2/lib/app/manifests/v1").await;
    assert_eq!(stale.header("warning"), Some(STALE_WARNING));
    assert_eq!(stale.body, v1.manifest_bytes);
    // Upstream is back and the tag moved: the next request revalidates and is fresh.
    let v2 = h.fake.sample_image("lib/app", "v1", 8);
    let fresh = h.get("/v2/lib/app/manifests/v1").await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert!(fresh.header("warning").is_none());
    assert_eq!(fresh.body, v2.manifest_bytes);
}

#[tokio::test]
async fn manifest_with_wrong_bytes_by_digest_is_refused_and_not_cached() {
    let h = Harness::start().await;
    let img = h.fake.sample_image("lib/app", "v1", 9);
    let path = format!("/v2/lib/app/manifests/{}", img.manifest);
    h.fake
        .fault_times(Some(Kind::Manifest), Fault::WrongBytes, 1);
    let r = h.get(&path).await;
    assert_ne!(
        r.status,
        StatusCode::OK,
        "a manifest that fails its digest is never served"
    );
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(h.fake.count("GET", Kind::Manifest), 1);

    let r = h.get(&path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, img.manifest_bytes);
    assert_eq!(
        h.fake.count("GET", Kind::Manifest),
        2,
        "went upstream again"
    );
    h.get(&path).await;
    assert_eq!(h.fake.count("GET", Kind::Manifest), 2, "now cached");
}

#[tokio::test]
async fn truncated_manifest_is_not_cached() {
    let h = Harness::start().await;
    let img = h.fake.sample_image("lib/app", "v1", 10);
    h.fake
        .fault_times(Some(Kind::Manifest), Fault::Truncate { sent: 100 }, 1);
    let r = h.get("/v2/lib/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    let r = h.get("/v2/lib/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, img.manifest_bytes);
    assert_eq!(h.fake.count("GET", Kind::Manifest), 2);
}

#[tokio::test]
async fn unknown_tag_is_remembered_only_briefly() {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.cache.negative_ttl = Duration::from_millis(300);
    })
    .await;
    h.fake.sample_image("lib/app", "v1", 11);
    let r = h.get("/v2/lib/app/manifests/v2").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "MANIFEST_UNKNOWN");
    let img = h.fake.sample_image("lib/app", "v2", 12);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = h.get("/v2/lib/app/manifests/v2").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, img.manifest_bytes);
}

#[tokio::test]
async fn restart_keeps_manifests_tags_and_blobs() {
    let mut h = harness(Duration::from_secs(300), Duration::from_secs(3600)).await;
    let img = h.fake.sample_image("lib/app", "v1", 13);
    let idx = h
        .fake
        .sample_index("lib/multi", "latest", 14, &["linux/amd64", "linux/arm64"]);
    let mut paths = vec![
        "/v2/lib/app/manifests/v1".to_owned(),
        format!("/v2/lib/app/manifests/{}", img.manifest),
        format!("/v2/lib/app/blobs/{}", img.config),
        "/v2/lib/multi/manifests/latest".to_owned(),
        format!("/v2/lib/multi/manifests/{}", idx.images[1].1.manifest),
    ];
    for l in &img.layers {
        paths.push(format!("/v2/lib/app/blobs/{l}"));
    }
    // A client that takes every manifest type, so the index is served as it is.
    let accept = [(
        "accept",
        "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
         application/vnd.docker.distribution.manifest.v2+json, \
         application/vnd.docker.distribution.manifest.list.v2+json",
    )];
    let mut before = Vec::new();
    for p in &paths {
        let r = h.get_with(p, &accept).await;
        assert_eq!(r.status, StatusCode::OK, "{p}");
        assert!(r.complete());
        before.push(r);
    }

    h.fake.stop().await;
    h.restart().await;
    h.fake.reset_counts();
    for (p, old) in paths.iter().zip(&before) {
        let r = h.get_with(p, &accept).await;
        assert_eq!(r.status, StatusCode::OK, "{p} after restart: {}", r.text());
        assert_eq!(r.body, old.body, "{p}");
        assert!(r.complete(), "{p}");
        assert!(r.header("warning").is_none(), "{p}: the tag is still fresh");
        for name in ["content-type", "docker-content-digest", "content-length"] {
            assert_eq!(r.header(name), old.header(name), "{p} {name}");
        }
    }
    assert_eq!(before[0].body, img.manifest_bytes);
    assert_eq!(before[3].body, idx.bytes);
    assert_eq!(before[5].sha256(), img.layers[0].to_string());
    assert_eq!(h.fake.total(), 0);
}

#[tokio::test]
async fn restart_after_expiry_serves_stale_from_disk() {
    let mut h = harness(Duration::from_millis(100), Duration::from_secs(3600)).await;
    let img = h.fake.sample_image("lib/app", "v1", 15);
    h.get("/v2/lib/app/manifests/v1").await;
    h.fake.stop().await;
    h.restart().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = h.get("/v2/lib/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.body, img.manifest_bytes);
    assert_eq!(r.header("warning"), Some(STALE_WARNING));
}

/// Issue 17: tags in memory have a byte budget (`cache.tag_memory`). Tags past it leave memory
/// but not the disk: each is still answered, and with upstream down still served stale.
#[tokio::test]
async fn tags_beyond_the_memory_budget_are_served_stale_from_disk() {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.cache.tag_ttl = Duration::from_millis(100);
        c.cache.stale_if_error = Duration::from_secs(3600);
        // Room for two tags.
        c.cache.tag_memory = 1500;
    })
    .await;
    let images: Vec<_> = (0..20)
        .map(|n| h.fake.sample_image("lib/app", &format!("v{n}"), 100 + n))
        .collect();
    for n in 0..20 {
        let r = h.get(&format!("/v2/lib/app/manifests/v{n}")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.fake.stop().await;
    for (n, img) in images.iter().enumerate() {
        let r = h.get(&format!("/v2/lib/app/manifests/v{n}")).await;
        assert_eq!(r.status, StatusCode::OK, "v{n}: {}", r.text());
        assert_eq!(r.header("warning"), Some(STALE_WARNING), "v{n}");
        assert_eq!(r.body, img.manifest_bytes, "v{n}");
    }
}
