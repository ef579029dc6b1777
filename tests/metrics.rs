//! Metrics and health endpoints on the admin listener: scripted traffic through archway, then
//! the exact values (and labels) of what `/metrics` reports.

mod support;

use archway::config::RouteConfig;
use archway::route_policy::{OciForLegacy, RewriteMode, RouteMatch};
use http::StatusCode;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::fake_registry::pseudo_random_bytes;
use support::metrics::{parse_sample, Scrape};
use support::{upstream_for, FakeRegistry, Fault, Harness, Kind, Reply, TestClient};

const DOCKER_1706_AMD64: &str = "docker/17.06.2-ee-19 go/go1.8.7 git-commit/6b5fb4d kernel/3.10.0-1062.el7.x86_64 os/linux arch/amd64 UpstreamClient(Docker-Client/17.06.2-ee-19 \\(linux\\))";
const DOCKER_1706_ACCEPT: [&str; 4] = [
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn admin_addr(h: &Harness) -> SocketAddr {
    h.archway
        .as_ref()
        .unwrap()
        .admin_addr()
        .expect("admin listener configured")
}

async fn admin_get(h: &Harness, path: &str) -> Reply {
    TestClient::new()
        .get(&format!("http://{}{path}", admin_addr(h)))
        .await
}

async fn scrape(h: &Harness) -> Scrape {
    let r = admin_get(h, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some(OPENMETRICS));
    assert!(r.text().ends_with("# EOF\n"), "{}", r.text());
    Scrape::parse(r.text())
}

/// Requests are counted when their response body is dropped, a moment after the client has
/// read it: scrape until `ready` holds (or give up after 5 s and return the last scrape).
async fn scrape_until(h: &Harness, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = scrape(h).await;
        if ready(&s) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn with_admin(c: &mut archway::config::Config) {
    c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
}

/// Bytes received per source, as the test expects archway to count them.
#[derive(Default)]
struct Bytes {
    cache: usize,
    upstream: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_traffic_is_counted_with_exact_labels() {
    let fake = FakeRegistry::start().await;
    let flaky = FakeRegistry::start().await;
    let h = Harness::with(fake, |c| {
        with_admin(c);
        // Tag requests to `flaky` always revalidate, so a failing upstream means a stale answer.
        let mut u = upstream_for("flaky", &flaky);
        u.tag_ttl = Some(Duration::ZERO);
        c.upstreams.push(u);
        c.routes = vec![
            RouteConfig {
                matcher: RouteMatch {
                    repository: Some("strict/*".into()),
                    ..Default::default()
                },
                oci_for_legacy: OciForLegacy::Reject,
                ..Default::default()
            },
            RouteConfig {
                matcher: RouteMatch {
                    repository: Some("pinned/*".into()),
                    ..Default::default()
                },
                platform: Some("linux/arm64".into()),
                rewrite: RewriteMode::Always,
                ..Default::default()
            },
        ];
    })
    .await;
    let img = h.fake.sample_image("app", "v1", 1);
    let platforms = ["linux/amd64", "linux/arm64/v8"];
    h.fake.sample_index("multi", "v1", 2, &platforms);
    h.fake.sample_index("strict/app", "v1", 3, &platforms);
    h.fake.sample_index("pinned/app", "v1", 4, &platforms);
    flaky.sample_image("app", "v1", 5);
    let mut bytes = Bytes::default();
    let ok = |r: &Reply, what: &str| {
        assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());
        assert!(r.complete(), "{what}");
    };

    // Ping, answered by archway itself.
    ok(&h.get("/v2/").await, "ping");
    // Manifest: miss, then hit.
    let r = h.get("/v2/app/manifests/v1").await;
    ok(&r, "manifest miss");
    bytes.upstream += r.body.len();
    let r = h.get("/v2/app/manifests/v1").await;
    ok(&r, "manifest hit");
    bytes.cache += r.body.len();
    // Blob: miss, hit, and a HEAD hit.
    let layer0 = format!("/v2/app/blobs/{}", img.layers[0]);
    let r = h.get(&layer0).await;
    ok(&r, "blob miss");
    bytes.upstream += r.body.len();
    let r = h.get(&layer0).await;
    ok(&r, "blob hit");
    bytes.cache += r.body.len();
    ok(&h.head(&layer0).await, "blob HEAD");

    // Three concurrent requests for a cold blob: one download, two coalesced onto it.
    h.fake
        .set_delay(Some(Kind::Blob), Duration::from_millis(1500));
    let url = h.url(&format!("/v2/app/blobs/{}", img.layers[1]));
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { TestClient::new().get(&url).await })
        })
        .collect();
    let during = scrape_until(&h, |s| {
        s.get("archway_blob_downloads_in_flight", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(during.value("archway_blob_downloads_in_flight", &[]), 1.0);
    let mut coalesced_len = 0;
    for t in tasks {
        let r = t.await.unwrap();
        ok(&r, "coalesced blob");
        bytes.upstream += r.body.len();
        coalesced_len = r.body.len();
    }
    h.fake.set_delay(Some(Kind::Blob), Duration::ZERO);

    // An unknown tag: upstream's 404.
    let r = h.get("/v2/app/manifests/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Not an API path at all.
    assert_eq!(h.get("/nothere").await.status, StatusCode::NOT_FOUND);

    // Docker 17.06 gets the amd64 image of an OCI index, converted to schema2.
    let legacy: Vec<(&str, &str)> = std::iter::once(("user-agent", DOCKER_1706_AMD64))
        .chain(DOCKER_1706_ACCEPT.iter().map(|a| ("accept", *a)))
        .collect();
    let r = h.get_with("/v2/multi/manifests/v1", &legacy).await;
    ok(&r, "converted");
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.docker.distribution.manifest.v2+json")
    );
    bytes.upstream += r.body.len();
    // A client that takes OCI manifests but not indexes: the amd64 image as it is.
    let oci_no_index = [
        ("user-agent", DOCKER_1706_AMD64),
        ("accept", "application/vnd.oci.image.manifest.v1+json"),
        (
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        ),
    ];
    let r = h.get_with("/v2/multi/manifests/v1", &oci_no_index).await;
    ok(&r, "legacy");
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    bytes.cache += r.body.len();
    // A platform the index does not have.
    let mut s390x = legacy.clone();
    s390x.push(("x-meta-platform", "linux/s390x"));
    let r = h.get_with("/v2/multi/manifests/v1", &s390x).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    // oci_for_legacy = reject.
    let r = h.get_with("/v2/strict/app/manifests/v1", &legacy).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    // rewrite = always, for a client that takes everything.
    let modern = [
        ("accept", "application/vnd.oci.image.index.v1+json"),
        ("accept", "application/vnd.oci.image.manifest.v1+json"),
    ];
    let r = h.get_with("/v2/pinned/app/manifests/v1", &modern).await;
    ok(&r, "always");
    bytes.upstream += r.body.len();

    // Tags pass through; referrers are kept (a miss here).
    let r = h.get("/v2/app/tags/list").await;
    ok(&r, "tags");
    bytes.upstream += r.body.len();
    let r = h.get(&format!("/v2/app/referrers/{}", img.manifest)).await;
    ok(&r, "referrers");
    bytes.upstream += r.body.len();

    // A stale answer: `flaky` answers once, then fails.
    let r = h.get("/v2/flaky/app/manifests/v1").await;
    ok(&r, "flaky miss");
    bytes.upstream += r.body.len();
    flaky.fault(None, Fault::status(503));
    let r = h.get("/v2/flaky/app/manifests/v1").await;
    ok(&r, "stale");
    assert!(r.header("warning").is_some());
    bytes.cache += r.body.len();

    let total_requests = 20.0;
    // Blob commits follow the clients' last byte; the store gauges below are read after them.
    let store = h.archway.as_ref().unwrap().proxy().blob_store().clone();
    store.finish_commits(Duration::from_secs(10)).await;
    let s = scrape_until(&h, |s| s.sum("archway_requests_total") >= total_requests).await;

    // Requests by kind, method, status: all of them, and nothing else.
    let requests = [
        (("ping", "GET", "200"), 1.0),
        (("manifest", "GET", "200"), 7.0),
        (("manifest", "GET", "404"), 3.0),
        (("blob", "GET", "200"), 5.0),
        (("blob", "HEAD", "200"), 1.0),
        (("tags", "GET", "200"), 1.0),
        (("referrers", "GET", "200"), 1.0),
        (("other", "GET", "404"), 1.0),
    ];
    for ((kind, method, status), n) in requests {
        let labels = [("kind", kind), ("method", method), ("status", status)];
        assert_eq!(s.value("archway_requests_total", &labels), n, "{labels:?}");
    }
    assert_eq!(s.series("archway_requests_total").len(), requests.len());
    assert_eq!(s.sum("archway_requests_total"), total_requests);
    for ((kind, method), n) in [
        (("manifest", "GET"), 10.0),
        (("blob", "GET"), 5.0),
        (("blob", "HEAD"), 1.0),
        (("ping", "GET"), 1.0),
    ] {
        let labels = [("kind", kind), ("method", method)];
        assert_eq!(
            s.value("archway_request_duration_seconds_count", &labels),
            n,
            "{labels:?}"
        );
        // Every request falls in the +Inf bucket.
        let mut inf = labels.to_vec();
        inf.push(("le", "+Inf"));
        assert_eq!(s.value("archway_request_duration_seconds_bucket", &inf), n);
    }

    // Cache results.
    for ((kind, result), n) in [
        (("manifest", "miss"), 5.0),
        (("manifest", "hit"), 3.0),
        (("manifest", "stale"), 1.0),
        (("blob", "miss"), 2.0),
        (("blob", "hit"), 2.0),
        (("blob", "coalesced"), 2.0),
        (("referrers", "miss"), 1.0),
    ] {
        let labels = [("kind", kind), ("result", result)];
        assert_eq!(
            s.value("archway_cache_results_total", &labels),
            n,
            "{labels:?}"
        );
    }
    assert_eq!(s.counted("archway_cache_results_total").len(), 7);

    // Bytes by source, exactly what the clients received.
    assert_eq!(
        s.value("archway_served_bytes_total", &[("source", "cache")]),
        bytes.cache as f64
    );
    assert_eq!(
        s.value("archway_served_bytes_total", &[("source", "upstream")]),
        bytes.upstream as f64
    );
    assert!(bytes.cache >= 3_000 && bytes.upstream >= 3 * 40_000 + 3_000);
    // Bodies read from upstream: both blobs whole, the coalesced one once for its three
    // clients (so well under what was served from upstream); flaky's manifest and its 503.
    let received = s.value(
        "archway_upstream_received_bytes_total",
        &[("upstream", "fake")],
    );
    assert!(
        received >= (3_000 + coalesced_len) as f64
            && received < (bytes.upstream - coalesced_len) as f64,
        "received {received}, served from upstream {}",
        bytes.upstream
    );
    assert!(
        s.value(
            "archway_upstream_received_bytes_total",
            &[("upstream", "flaky")]
        ) > 0.0
    );

    // Rewrites by platform and reason.
    for ((platform, reason), n) in [
        (("linux/amd64", "converted"), 1.0),
        (("linux/amd64", "legacy"), 1.0),
        (("linux/amd64", "rejected"), 1.0),
        (("linux/s390x", "no-match"), 1.0),
        (("linux/arm64", "always"), 1.0),
    ] {
        let labels = [("platform", platform), ("reason", reason)];
        assert_eq!(s.value("archway_rewrites_total", &labels), n, "{labels:?}");
    }
    assert_eq!(s.series("archway_rewrites_total").len(), 5);

    // Upstream exchanges by upstream and status, matching what the fakes saw.
    assert_eq!(h.fake.total(), 12);
    let upstream = [
        (("fake", "200"), 11.0),
        (("fake", "404"), 1.0),
        (("flaky", "200"), 1.0),
        (("flaky", "503"), 1.0),
    ];
    for ((name, status), n) in upstream {
        let labels = [("upstream", name), ("status", status)];
        assert_eq!(
            s.value("archway_upstream_requests_total", &labels),
            n,
            "{labels:?}"
        );
    }
    assert_eq!(s.series("archway_upstream_requests_total").len(), 4);
    assert_eq!(
        s.value(
            "archway_upstream_request_duration_seconds_count",
            &[("upstream", "fake")]
        ),
        12.0
    );
    assert_eq!(
        s.value(
            "archway_upstream_request_duration_seconds_count",
            &[("upstream", "flaky")]
        ),
        2.0
    );
    // No auth anywhere: the token counters exist, at 0. No rate limit header was sent.
    for name in ["fake", "flaky"] {
        assert_eq!(
            s.value(
                "archway_upstream_token_fetches_total",
                &[("upstream", name)]
            ),
            0.0
        );
    }
    assert!(s.series("archway_upstream_ratelimit_remaining").is_empty());

    // The blob store: two layers of 3000 and 40000 bytes, nothing downloading any more.
    let stats = h.archway.as_ref().unwrap().proxy().blob_store().stats();
    assert_eq!((stats.bytes, stats.entries), (43_000, 2));
    assert_eq!(s.value("archway_blob_store_bytes", &[]), stats.bytes as f64);
    assert_eq!(
        s.value("archway_blob_store_entries", &[]),
        stats.entries as f64
    );
    assert_eq!(s.value("archway_blob_store_evictions_total", &[]), 0.0);
    assert_eq!(s.value("archway_blob_downloads_in_flight", &[]), 0.0);
    assert_eq!(
        s.value("archway_blob_store_max_bytes", &[]),
        h.config.cache.max_size as f64
    );

    // Scrapes and probes are not registry requests.
    admin_get(&h, "/healthz").await;
    let again = scrape(&h).await;
    assert_eq!(again.sum("archway_requests_total"), total_requests);
}

#[tokio::test]
async fn token_fetches_and_rate_limit_per_upstream() {
    let fake = FakeRegistry::builder().auth(true).start().await;
    fake.set_response_header("ratelimit-remaining", "76;w=21600");
    let h = Harness::with(fake, with_admin).await;
    let img = h.fake.sample_image("app", "v1", 9);

    // Anonymous try (401), token, retry with the token.
    let r = h.get("/v2/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let s = scrape_until(&h, |s| s.sum("archway_requests_total") >= 1.0).await;
    assert_eq!(h.fake.token_count(), 1);
    assert_eq!(
        s.value(
            "archway_upstream_token_fetches_total",
            &[("upstream", "fake")]
        ),
        1.0
    );
    assert_eq!(
        s.value(
            "archway_upstream_ratelimit_remaining",
            &[("upstream", "fake")]
        ),
        76.0
    );
    for (status, n) in [("401", 1.0), ("200", 2.0)] {
        let labels = [("upstream", "fake"), ("status", status)];
        assert_eq!(
            s.value("archway_upstream_requests_total", &labels),
            n,
            "{status}"
        );
    }

    // The cached token goes along up front: no new fetch, and the gauge follows the header.
    h.fake
        .set_response_header("ratelimit-remaining", "75;w=21600");
    let r = h.get(&format!("/v2/app/blobs/{}", img.layers[0])).await;
    assert_eq!(r.status, StatusCode::OK);
    let s = scrape_until(&h, |s| s.sum("archway_requests_total") >= 2.0).await;
    assert_eq!(h.fake.token_count(), 1);
    assert_eq!(
        s.value(
            "archway_upstream_token_fetches_total",
            &[("upstream", "fake")]
        ),
        1.0
    );
    assert_eq!(
        s.value(
            "archway_upstream_ratelimit_remaining",
            &[("upstream", "fake")]
        ),
        75.0
    );
    assert_eq!(
        s.value(
            "archway_upstream_requests_total",
            &[("upstream", "fake"), ("status", "200")]
        ),
        3.0
    );
}

#[tokio::test]
async fn upstream_failures_are_counted_as_error() {
    let fake = FakeRegistry::start().await;
    let h = Harness::with(fake, with_admin).await;
    h.fake.sample_image("app", "v1", 1);
    h.fake.stop().await;
    let r = h.get("/v2/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    let s = scrape_until(&h, |s| s.sum("archway_requests_total") >= 1.0).await;
    assert_eq!(
        s.value(
            "archway_upstream_requests_total",
            &[("upstream", "fake"), ("status", "error")]
        ),
        1.0
    );
    assert_eq!(
        s.value(
            "archway_requests_total",
            &[("kind", "manifest"), ("method", "GET"), ("status", "502")]
        ),
        1.0
    );
    // No cache result for a request that found neither the cache nor upstream.
    assert!(
        s.counted("archway_cache_results_total").is_empty(),
        "{}",
        s.text
    );
}

#[tokio::test]
async fn blob_store_gauges_follow_evictions() {
    let fake = FakeRegistry::start().await;
    let h = Harness::with(fake, |c| {
        with_admin(c);
        c.cache.max_size = 50_000;
    })
    .await;
    let a = h.fake.add_blob("app", pseudo_random_bytes(1, 30_000));
    let b = h.fake.add_blob("app", pseudo_random_bytes(2, 30_000));
    for d in [&a, &b] {
        let r = h.get(&format!("/v2/app/blobs/{d}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.len(), 30_000);
    }
    // Clients get the last byte once the digest checks out; the commit (and eviction) follows.
    let store = h.archway.as_ref().unwrap().proxy().blob_store().clone();
    store.finish_commits(Duration::from_secs(10)).await;
    let s = scrape_until(&h, |s| s.sum("archway_requests_total") >= 2.0).await;
    let stats = h.archway.as_ref().unwrap().proxy().blob_store().stats();
    // Two 30 kB blobs do not fit 50 kB: one was evicted.
    assert_eq!(
        (stats.bytes, stats.entries, stats.evictions),
        (30_000, 1, 1)
    );
    assert_eq!(s.value("archway_blob_store_bytes", &[]), 30_000.0);
    assert_eq!(s.value("archway_blob_store_entries", &[]), 1.0);
    assert_eq!(s.value("archway_blob_store_evictions_total", &[]), 1.0);
    assert_eq!(s.value("archway_blob_store_max_bytes", &[]), 50_000.0);
}

#[tokio::test]
async fn health_and_readiness() {
    // No admin listener unless configured.
    let plain = Harness::start().await;
    assert_eq!(plain.archway.as_ref().unwrap().admin_addr(), None);

    let h = Harness::with(FakeRegistry::start().await, with_admin).await;
    assert_ne!(admin_addr(&h), h.addr(), "its own port");
    let r = admin_get(&h, "/healthz").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok\n"));
    let r = admin_get(&h, "/readyz").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ready\n"));
    assert_eq!(admin_get(&h, "/v2/").await.status, StatusCode::NOT_FOUND);
    let r = TestClient::new()
        .request(
            http::Method::POST,
            &format!("http://{}/metrics", admin_addr(&h)),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = TestClient::new()
        .head(&format!("http://{}/metrics", admin_addr(&h)))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    // None of that was a registry request; the registry port has no admin endpoints.
    assert!(scrape(&h).await.series("archway_requests_total").is_empty());
    assert_eq!(h.get("/metrics").await.status, StatusCode::NOT_FOUND);

    // The data directory disappears (a lost volume): not ready, and it says why.
    std::fs::remove_dir_all(h.data_dir()).unwrap();
    let r = admin_get(&h, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    let text = r.text();
    assert!(text.starts_with("not ready: data directory "), "{text}");
    assert!(text.contains(&h.data_dir().display().to_string()), "{text}");
    // Still alive, though.
    assert_eq!(admin_get(&h, "/healthz").await.status, StatusCode::OK);

    // A file where the directory was is no better; a directory again is.
    std::fs::write(h.data_dir(), b"not a directory").unwrap();
    assert_eq!(
        admin_get(&h, "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    std::fs::remove_file(h.data_dir()).unwrap();
    std::fs::create_dir(h.data_dir()).unwrap();
    assert_eq!(admin_get(&h, "/readyz").await.status, StatusCode::OK);
}

#[test]
fn sample_parser_reads_labels_and_values() {
    let (n, l, v) = parse_sample(
        r#"archway_rewrites_total{platform="windows(10.0.17763)/amd64",reason="no-match"} 3"#,
    )
    .unwrap();
    assert_eq!(n, "archway_rewrites_total");
    assert_eq!(l["platform"], "windows(10.0.17763)/amd64");
    assert_eq!(l["reason"], "no-match");
    assert_eq!(v, 3.0);
    let (n, l, v) = parse_sample("archway_blob_store_bytes 43000").unwrap();
    assert_eq!(
        (n.as_str(), l.len(), v),
        ("archway_blob_store_bytes", 0, 43000.0)
    );
    let (_, l, _) = parse_sample(r#"x{a="q\"uote,}",b="2"} 1.5"#).unwrap();
    assert_eq!(l["a"], "q\"uote,}");
    assert_eq!(l["b"], "2");
}

/// `[storage]` whose S3 endpoint refuses every connection: a blob, a manifest and a tag come
/// from upstream with 200s, and the bucket's part is counted exactly. Without `[fleet]` tag
/// records are not shared (issue 18: no key to seal them), so the tag touches no bucket; the
/// tag reads and writes a fleet makes with the bucket down are counted in
/// `tests/e2e_storage.rs::s3_down_l1_hits_are_served_and_misses_come_from_upstream_counted` and
/// `tests/storage_tier.rs::storage_down_blobs_come_from_upstream_uncopied_and_counted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_down_is_counted_and_never_an_error() {
    let fake = FakeRegistry::start().await;
    let img = fake.sample_image("app", "v1", 7);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = Harness::with(fake, |c| {
        with_admin(c);
        let mut storage = archway::config::StorageConfig::new("archway");
        storage.s3_endpoint = Some(format!("http://127.0.0.1:{closed}"));
        storage.s3_path_style = true;
        storage.s3_timeout = Duration::from_secs(2);
        storage.credentials = Some(archway::config::S3Keys {
            access_key_id: archway::config::Secret::new("test"),
            secret_access_key: archway::config::Secret::new("test"),
        });
        c.storage = Some(storage);
    })
    .await;
    let ok = |r: &Reply, what: &str| assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());
    ok(&h.get("/v2/app/manifests/v1").await, "tag");
    let layer0 = format!("/v2/app/blobs/{}", img.layers[0]);
    ok(&h.get(&layer0).await, "blob miss");
    ok(&h.get(&layer0).await, "blob hit");
    let s = scrape_until(&h, |s| {
        s.get(
            "archway_storage_bypassed_total",
            &[("what", "manifest_write")],
        ) == Some(1.0)
    })
    .await;
    assert_eq!(
        s.value("archway_blob_fills_total", &[("source", "upstream")]),
        1.0
    );
    assert_eq!(
        s.get("archway_blob_fills_total", &[("source", "bucket")]),
        None
    );
    for (what, n) in [("blob_read", 1.0), ("manifest_write", 1.0)] {
        assert_eq!(
            s.value("archway_storage_bypassed_total", &[("what", what)]),
            n,
            "{what}"
        );
    }
    for what in ["tag_read", "tag_write"] {
        assert_eq!(
            s.get("archway_storage_bypassed_total", &[("what", what)]),
            None,
            "no tag record without [fleet]: {what}"
        );
    }
    // The blob: one GET, failed; the manifest's copy: one PUT, failed. The tag and the L1 hit
    // asked nothing.
    assert_eq!(
        s.value(
            "archway_storage_operations_total",
            &[("op", "GetObject"), ("status", "error")]
        ),
        1.0
    );
    assert_eq!(
        s.value(
            "archway_storage_operations_total",
            &[("op", "PutObject"), ("status", "error")]
        ),
        1.0
    );
    assert_eq!(
        s.value(
            "archway_storage_operation_duration_seconds_count",
            &[("op", "GetObject")]
        ),
        1.0
    );
    assert_eq!(
        s.value(
            "archway_cache_results_total",
            &[("kind", "blob"), ("result", "hit")]
        ),
        1.0
    );
}
