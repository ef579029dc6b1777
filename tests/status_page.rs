//! The status page on the admin listener (`GET /`, `/status`), in process: after scripted
//! pulls, a failing upstream covered by stale answers and a download in flight, every figure
//! the page shows is checked against `/metrics` (or the fake upstream), and nothing secret is
//! on it. The same page in a real browser: `tests/e2e_status_page.rs`.

mod support;

#[allow(dead_code)]
mod e2e {
    pub mod browser;
    pub mod http;
    pub mod procs;
    pub mod tools;
}

use archway::config::{Credentials, Secret};
use archway::status::page::{bytes, percent};
use e2e::browser::text_of;
use http::StatusCode;
use std::time::{Duration, Instant};
use support::metrics::Scrape;
use support::{upstream_for, FakeRegistry, Fault, Harness, Kind, Reply, TestClient};

const PASSWORD: &str = "hunter2-never-on-the-page";

async fn admin_get(h: &Harness, path: &str) -> Reply {
    let admin = h.archway.as_ref().unwrap().admin_addr().unwrap();
    TestClient::new()
        .get(&format!("http://{admin}{path}"))
        .await
}

async fn scrape(h: &Harness) -> Scrape {
    let r = admin_get(h, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    Scrape::parse(r.text())
}

/// Requests are counted when their bodies are dropped: waits until two scrapes in a row agree.
async fn settled(h: &Harness) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = scrape(h).await;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = scrape(h).await;
        let same = ["archway_requests_total", "archway_served_bytes_total"]
            .iter()
            .all(|f| now.sum(f) == last.sum(f));
        if same || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_what_the_metrics_say_and_nothing_secret() {
    let fake = FakeRegistry::start().await;
    let flaky = FakeRegistry::start().await;
    let locked = FakeRegistry::start().await;
    fake.set_response_header("ratelimit-remaining", "87;w=21600");
    let h = Harness::with(fake, |c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        let mut u = upstream_for("flaky", &flaky);
        u.tag_ttl = Some(Duration::ZERO);
        c.upstreams.push(u);
        let mut private = upstream_for("private", &locked);
        private.credentials = Some(Credentials {
            username: "robot".into(),
            password: Secret::new(PASSWORD),
        });
        c.upstreams.push(private);
    })
    .await;
    let img = h.fake.sample_image("app", "v1", 1);
    flaky.sample_image("app", "v1", 2);
    let ok = |r: &Reply, what: &str| assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());

    // Two pulls of app:v1 (the second from the cache), one of app:v2 that fails.
    for _ in 0..2 {
        ok(&h.get("/v2/app/manifests/v1").await, "manifest");
        for layer in &img.layers {
            ok(&h.get(&format!("/v2/app/blobs/{layer}")).await, "layer");
        }
    }
    assert_eq!(
        h.get("/v2/app/manifests/v2").await.status,
        StatusCode::NOT_FOUND
    );
    // flaky answers once, then fails: its tag is answered stale.
    ok(&h.get("/v2/flaky/app/manifests/v1").await, "flaky");
    flaky.fault(None, Fault::status(503));
    let r = h.get("/v2/flaky/app/manifests/v1").await;
    ok(&r, "stale");
    assert!(r.header("warning").is_some());

    let store = h.archway.as_ref().unwrap().proxy().blob_store().clone();
    store.finish_commits(Duration::from_secs(10)).await;
    let before = settled(&h).await;
    let r = admin_get(&h, "/").await;
    let after = settled(&h).await;
    ok(&r, "status page");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r
        .header("content-security-policy")
        .is_some_and(|c| c.starts_with("default-src 'none'")));
    let html = r.text();
    let alias = admin_get(&h, "/status").await;
    ok(&alias, "/status");
    assert!(alias.text().starts_with("<!DOCTYPE html>"));
    let head = h
        .client
        .request(
            http::Method::HEAD,
            &format!(
                "http://{}/status",
                h.archway.as_ref().unwrap().admin_addr().unwrap()
            ),
            &[],
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());

    // Scraping the page changed no figure it shows.
    for f in [
        "archway_served_bytes_total",
        "archway_upstream_bytes_saved_total",
    ] {
        assert_eq!(
            before.sum(f),
            after.sum(f),
            "{f} moved while the page was read"
        );
    }
    let text = text_of(&html);
    let has = |want: &str| assert!(text.contains(want), "the page lacks `{want}`:\n{text}");

    has(&format!("archway {}", env!("CARGO_PKG_VERSION")));
    has("Up ");
    // Upstreams: fake up, with its rate limit; flaky failing with upstream's words, stale
    // answers covering for it; private never asked.
    has("fake up ");
    has(" 87 ");
    has("flaky failing ");
    has("HTTP 503 Service Unavailable");
    has("yes, now");
    has("private not used yet never none not sent no");
    assert_eq!(
        after.value(
            "archway_upstream_ratelimit_remaining",
            &[("upstream", "fake")]
        ),
        87.0
    );

    // Cache figures, as the metrics count them.
    let served = after.sum("archway_served_bytes_total");
    let from_cache = after.value("archway_served_bytes_total", &[("source", "cache")]);
    let saved = after.value("archway_upstream_bytes_saved_total", &[]);
    assert!(from_cache > 0.0 && saved > 0.0 && served > from_cache);
    let ratio = percent(Some(from_cache / served));
    has(&format!(
        "Byte hit ratio (served from this disk) {ratio} {ratio}"
    ));
    let served = bytes(served as u64);
    has(&format!("Bytes served {served} {served}"));
    let saved = bytes(saved as u64);
    has(&format!("Upstream bytes saved {saved} {saved}"));
    let used =
        after.value("archway_blob_store_bytes", &[]) + after.value("archway_cache_file_bytes", &[]);
    let max = after.value("archway_blob_store_max_bytes", &[]);
    has(&format!(
        "Size: {} of {}",
        bytes(used as u64),
        bytes(max as u64)
    ));
    has(&format!(
        "Blobs cached {}",
        after.value("archway_blob_store_entries", &[])
    ));
    has(&format!(
        "Evictions {}",
        after.value("archway_blob_store_evictions_total", &[])
    ));
    has("Damaged blobs found 0");
    has("Fills in flight none");
    // Most pulled: app:v1 twice, flaky's twice; the failed tag is no pull.
    has("fake/app:v1 2");
    has("flaky/app:v1 2");
    assert!(!text.contains("app:v2"), "{text}");

    // Nothing secret: not the upstream's password, nor a URL with a query.
    assert!(!html.contains(PASSWORD), "{html}");
    assert!(!html.contains("X-Amz-"), "{html}");
    assert!(!html.contains('?'), "a query string on the page: {html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_in_flight_is_listed_with_its_bytes_done() {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let img = h.fake.sample_image_sized("big", Some("v1"), 3, &[4 << 20]);
    h.fake.fault(
        Some(Kind::Blob),
        Fault::SlowBody {
            chunk: 256 << 10,
            every: Duration::from_millis(200),
        },
    );
    let url = h.url(&format!("/v2/big/blobs/{}", img.layers[0]));
    let pull = tokio::spawn(async move { TestClient::new().get(&url).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = text_of(&admin_get(&h, "/").await.text());
        // Some bytes done (the cache's own size reads "0 B of 50.0 GiB" meanwhile).
        if text.contains(&img.layers[0].to_string()) && text.contains("iB of 4.0 MiB") {
            break text;
        }
        assert!(Instant::now() < deadline, "no fill listed:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.contains("Downloads in flight 1"), "{text}");
    assert!(
        text.contains(&format!("{} upstream ", img.layers[0])),
        "{text}"
    );
    assert!(
        text.contains(" of 4.0 MiB 1"),
        "bytes done of its size, one request: {text}"
    );
    let r = pull.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
}
