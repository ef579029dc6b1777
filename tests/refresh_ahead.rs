//! Refresh-ahead (`cache.refresh_ahead`): a tag asked for within its TTL is revalidated in the
//! background before it expires, so no client waits for the HEAD; a tag nobody asks for is
//! left alone; the concurrency bound skips (and counts) rather than queues.
//!
//! Upstream HEADs are stalled (longer than a cache hit could take even on a loaded machine):
//! that every upstream HEAD was a background one is read from the counters (HEADs seen
//! upstream = refreshes counted), and the "< the stall" latency bound only confirms it.

mod support;

use http::StatusCode;
use std::time::{Duration, Instant};
use support::metrics::Scrape;
use support::{FakeRegistry, Harness, Kind};

const TAG: &str = "/v2/lib/app/manifests/hot";

async fn harness(
    tag_ttl: Duration,
    head_stall: Duration,
    tweak: impl FnOnce(&mut archway::config::Config),
) -> Harness {
    let fake = FakeRegistry::start().await;
    fake.set_head_delay(Some(Kind::Manifest), head_stall);
    Harness::with(fake, |c| {
        c.cache.tag_ttl = tag_ttl;
        tweak(c);
    })
    .await
}

fn scrape(h: &Harness) -> Scrape {
    Scrape::parse(h.archway.as_ref().unwrap().proxy().metrics().encode())
}

fn ahead(s: &Scrape, outcome: &str) -> f64 {
    s.value("archway_refresh_ahead_total", &[("outcome", outcome)])
}

/// The metrics once no refresh is running (at most 5 s).
async fn settled(h: &Harness) -> Scrape {
    let start = Instant::now();
    loop {
        let s = scrape(h);
        if s.value("archway_refresh_ahead_in_flight", &[]) == 0.0 {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{}", s.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GETs `path` every `every` for `run`; the latency of each GET after the first.
async fn hammer(h: &Harness, path: &str, run: Duration, every: Duration) -> Vec<Duration> {
    let start = Instant::now();
    let mut took = Vec::new();
    let mut first = true;
    while start.elapsed() < run {
        let t = Instant::now();
        let r = h.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        if !first {
            took.push(t.elapsed());
        }
        first = false;
        tokio::time::sleep(every).await;
    }
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_tag_is_revalidated_before_it_expires_and_no_client_waits() {
    let ttl = Duration::from_secs(4);
    let stall = Duration::from_millis(1500);
    // Due 2 s into the TTL, done 1.5 s later: fresh again before the old answer expires.
    let h = harness(ttl, stall, |c| {
        c.cache.refresh_ahead_window = Some(Duration::from_secs(2))
    })
    .await;
    let img = h.fake.sample_image("lib/app", "hot", 1);
    let run = Duration::from_secs(13);
    let took = hammer(&h, TAG, run, Duration::from_millis(100)).await;

    // A refresh still running at the end: let it finish (nothing schedules another).
    let s = settled(&h).await;
    let heads = h.fake.count("HEAD", Kind::Manifest);
    let background = ahead(&s, "unchanged") + ahead(&s, "refreshed");
    // Three TTL boundaries crossed; a revalidation every 3.5 s (2 s + the stall).
    assert!(
        (2..=4).contains(&heads),
        "{heads} upstream HEADs in {run:?}"
    );
    // Each HEAD upstream saw is a background one: no client's request made one.
    assert_eq!(heads as f64, background, "{}", s.text);
    assert_eq!(ahead(&s, "failed"), 0.0);
    assert_eq!(ahead(&s, "skipped_busy"), 0.0);
    let slowest = took.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < stall,
        "a client waited {slowest:?} (the HEAD stalls {stall:?})"
    );
    assert_eq!(
        h.fake.count("GET", Kind::Manifest),
        1,
        "only the first request's GET: {:?}",
        h.fake.requests()
    );
    let last = h.get(TAG).await;
    assert_eq!(last.body, img.manifest_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_refresh_ahead_a_client_waits_for_the_revalidation() {
    let ttl = Duration::from_secs(4);
    let stall = Duration::from_millis(1500);
    let h = harness(ttl, stall, |c| c.cache.refresh_ahead = false).await;
    h.fake.sample_image("lib/app", "hot", 1);
    let took = hammer(&h, TAG, Duration::from_secs(9), Duration::from_millis(100)).await;

    let heads = h.fake.count("HEAD", Kind::Manifest);
    assert!((1..=3).contains(&heads), "{heads} upstream HEADs");
    let waited = took.iter().filter(|t| **t >= stall).count();
    assert!(
        waited >= 1,
        "some client waits out the stalled HEAD at each expiry: {took:?}"
    );
    let s = scrape(&h);
    for outcome in support_outcomes() {
        assert_eq!(ahead(&s, outcome), 0.0, "{outcome}");
    }
}

fn support_outcomes() -> [&'static str; 5] {
    [
        "refreshed",
        "unchanged",
        "not_needed",
        "failed",
        "skipped_busy",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_nobody_asks_for_is_not_refreshed() {
    // The smallest TTL refreshed ahead: due 1 s in.
    let ttl = Duration::from_secs(2);
    let h = harness(ttl, Duration::ZERO, |_| {}).await;
    h.fake.sample_image("lib/app", "hot", 1);
    assert_eq!(h.get(TAG).await.status, StatusCode::OK);
    let asked = Instant::now();
    // Asked for once: revalidated once, before that TTL ran out...
    while h.fake.count("HEAD", Kind::Manifest) < 1
        && asked.elapsed() < ttl - Duration::from_millis(100)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.fake.count("HEAD", Kind::Manifest), 1, "refreshed ahead");
    // ...then nobody asks for three TTLs: nothing more upstream.
    tokio::time::sleep(3 * ttl).await;
    assert_eq!(
        h.fake.count("HEAD", Kind::Manifest),
        1,
        "{:?}",
        h.fake.requests()
    );
    assert_eq!(h.fake.count("GET", Kind::Manifest), 1);
    let s = scrape(&h);
    assert_eq!(ahead(&s, "unchanged"), 1.0, "{}", s.text);
    assert_eq!(s.value("archway_refresh_ahead_in_flight", &[]), 0.0);
    // Asked for again after expiry: the client revalidates as without refresh-ahead.
    assert_eq!(h.get(TAG).await.status, StatusCode::OK);
    assert_eq!(h.fake.count("HEAD", Kind::Manifest), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_concurrency_bound_refreshes_are_skipped_and_counted() {
    let ttl = Duration::from_secs(3);
    let stall = Duration::from_millis(1000);
    let h = harness(ttl, stall, |c| c.cache.refresh_ahead_concurrency = 1).await;
    let tags: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    let mut images = Vec::new();
    for (i, t) in tags.iter().enumerate() {
        images.push(h.fake.sample_image("lib/app", t, 10 + i as u64));
    }
    let paths: Vec<String> = tags
        .iter()
        .map(|t| format!("/v2/lib/app/manifests/{t}"))
        .collect();
    // All six hot together: their refreshes come due together, one permit.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        let replies = futures_util::future::join_all(paths.iter().map(|p| h.get(p))).await;
        for (r, img) in replies.iter().zip(&images) {
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.body, img.manifest_bytes);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Refreshes scheduled by the last requests come due up to 2 s later: let them end.
    let mut s = scrape(&h);
    let waiting = Instant::now();
    while s.value("archway_refresh_ahead_in_flight", &[]) > 0.0
        || waiting.elapsed() < ttl - Duration::from_secs(1)
    {
        assert!(waiting.elapsed() < Duration::from_secs(10), "{}", s.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
        s = scrape(&h);
    }
    assert!(ahead(&s, "skipped_busy") >= 1.0, "{}", s.text);
    assert!(ahead(&s, "unchanged") >= 1.0, "{}", s.text);
    assert_eq!(ahead(&s, "failed"), 0.0, "{}", s.text);
    assert_eq!(s.value("archway_refresh_ahead_in_flight", &[]), 0.0);
    assert_eq!(
        h.fake.count("GET", Kind::Manifest),
        6,
        "one GET per tag, then HEADs only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_leaves_the_tag_to_stale_if_error() {
    let ttl = Duration::from_secs(2);
    let h = harness(ttl, Duration::ZERO, |c| {
        c.cache.stale_if_error = Duration::from_secs(3600)
    })
    .await;
    let img = h.fake.sample_image("lib/app", "hot", 1);
    assert_eq!(h.get(TAG).await.status, StatusCode::OK);
    h.fake.stop().await;
    // The refresh (1 s in) fails; within the TTL the answer is still fresh...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = h.get(TAG).await;
    assert_eq!(r.body, img.manifest_bytes);
    assert!(r.header("warning").is_none());
    let s = scrape(&h);
    assert_eq!(ahead(&s, "failed"), 1.0, "{}", s.text);
    // ...and past it, served stale with the Warning, as without refresh-ahead.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = h.get(TAG).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, img.manifest_bytes);
    assert_eq!(r.header("warning"), Some(support::STALE_WARNING));
}
