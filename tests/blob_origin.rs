//! A blob answer's `cache`, `source` and `origin` — in the access line and the metric labels —
//! come from the one outcome the blob store hands back (`BlobOrigin`). In its own test binary:
//! it reads the captured log lines, which other tests' archways would add to.

mod support;

use std::time::Duration;
use support::{logs, Harness};

/// A blob answer's access line and metric labels come from the one outcome the store handed
/// back: a fill from upstream, a hit, and (with a disk too full to keep anything) an uncached
/// pass-through, each with its `cache`, `source` and `origin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_access_lines_and_metrics_name_where_the_bytes_came_from() {
    let logs = logs::capture_json();
    let h = Harness::start().await;
    let img = h.fake.sample_image("lib/origin", "v1", 21);
    let kept = format!("/v2/lib/origin/blobs/{}", img.layers[0]);
    let miss = h.get(&kept).await;
    assert!(miss.complete());
    let store = h.archway.as_ref().unwrap().proxy().blob_store().clone();
    store.finish_commits(Duration::from_secs(10)).await;
    let hit = h.get(&kept).await;
    assert!(hit.complete());

    let full = Harness::with(support::FakeRegistry::start().await, |c| {
        // More than any disk has free: nothing can be kept.
        c.cache.min_free_space = u64::MAX / 4;
    })
    .await;
    let img = full.fake.sample_image("lib/full", "v1", 22);
    let uncached = format!("/v2/lib/full/blobs/{}", img.layers[0]);
    let passed = full.get(&uncached).await;
    assert!(passed.complete());

    let access = |path: &str| -> Vec<serde_json::Value> {
        logs.json_lines()
            .into_iter()
            .filter(|l| l["target"] == "archway::access" && l["fields"]["path"] == path)
            .collect()
    };
    for _ in 0..200 {
        if access(&kept).len() >= 2 && !access(&uncached).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fields = |l: &serde_json::Value| {
        let f = &l["fields"];
        (
            f["cache"].as_str().unwrap_or("").to_owned(),
            f["source"].as_str().unwrap_or("").to_owned(),
            f["origin"].as_str().unwrap_or("").to_owned(),
        )
    };
    let kept_lines: Vec<_> = access(&kept).iter().map(fields).collect();
    let word = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        kept_lines,
        [
            word("miss", "upstream", "upstream"),
            word("hit", "cache", "hit")
        ]
    );
    let passed_lines: Vec<_> = access(&uncached).iter().map(fields).collect();
    assert_eq!(passed_lines, [word("miss", "upstream", "uncached")]);

    // The metrics say the same: the hit's bytes are cache's, and upstream did not send them.
    let scrape = |h: &Harness| {
        support::metrics::Scrape::parse(h.archway.as_ref().unwrap().proxy().metrics().encode())
    };
    let s = scrape(&h);
    let served = |s: &support::metrics::Scrape, source| {
        s.value("archway_served_bytes_total", &[("source", source)])
    };
    assert_eq!(served(&s, "cache"), hit.body.len() as f64);
    assert_eq!(served(&s, "upstream"), miss.body.len() as f64);
    assert_eq!(
        s.value("archway_upstream_bytes_saved_total", &[]),
        hit.body.len() as f64
    );
    for result in ["hit", "miss"] {
        let labels = [("kind", "blob"), ("result", result)];
        assert_eq!(s.value("archway_cache_results_total", &labels), 1.0);
    }
    let s = scrape(&full);
    assert_eq!(served(&s, "upstream"), passed.body.len() as f64);
    assert_eq!(s.value("archway_upstream_bytes_saved_total", &[]), 0.0);
    let labels = [("kind", "blob"), ("result", "miss")];
    assert_eq!(s.value("archway_cache_results_total", &labels), 1.0);
}
