//! End to end: the status page of live archways in a real browser (headless Chromium), after
//! real pulls. Two cluster replicas on one moto bucket (`[storage]` + `[fleet]`) in front of
//! Distribution (behind a counting proxy that slows the big layer), a node archway whose
//! parents are the replicas; skopeo pulls through replica 1, then replica 2 while the big
//! layer is still arriving (it joins replica 1's fill), then through the node. Chromium loads
//! each admin page; its text is checked against the same archway's `/metrics`, and a
//! screenshot (taken while the fill is in flight) is saved.
//!
//! Same gate as the other e2e tests: `ARCHWAY_E2E=1` (or `CI=true`); chromium missing is a
//! failure then.

#[allow(dead_code)]
mod e2e {
    pub mod browser;
    pub mod counting_proxy;
    pub mod fixtures;
    pub mod fleet;
    pub mod fleet_pulls;
    pub mod http;
    pub mod layout;
    pub mod procs;
    pub mod s3;
    pub mod tools;
}

use archway::status::page::{bytes, percent};
use e2e::browser::{dump_dom, screenshot, text_of};
use e2e::fleet::{
    self, metric, secret_file, upstream_with_big_index, Node, Replica, BUCKET, REPO, TAG,
};
use e2e::fleet_pulls::skopeo_copy;
use e2e::tools::{e2e_enabled, temp_dir};
use std::time::{Duration, Instant};

fn sum_of(metrics: &str, family: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn page(admin: u16) -> String {
    let r = e2e::http::get(&format!("http://127.0.0.1:{admin}/"), &[]).expect("status page");
    assert_eq!(r.status, 200);
    text_of(&r.text())
}

/// The cache figures the page must show, computed from `/metrics` as the page words them.
fn assert_cache_figures(text: &str, m: &str, who: &str) {
    let has = |want: &str| assert!(text.contains(want), "{who}'s page lacks `{want}`:\n{text}");
    let served = sum_of(m, "archway_served_bytes_total");
    let from_cache = metric(m, "archway_served_bytes_total{source=\"cache\"}");
    let saved = metric(m, "archway_upstream_bytes_saved_total");
    assert!(served > 0.0, "{who} served nothing");
    let ratio = percent(Some(from_cache / served));
    has(&format!(
        "Byte hit ratio (served from this disk) {ratio} {ratio}"
    ));
    let served = bytes(served as u64);
    has(&format!("Bytes served {served} {served}"));
    let saved = bytes(saved as u64);
    has(&format!("Upstream bytes saved {saved} {saved}"));
    let used = metric(m, "archway_blob_store_bytes") + metric(m, "archway_cache_file_bytes");
    let max = metric(m, "archway_blob_store_max_bytes");
    has(&format!(
        "Size: {} of {}",
        bytes(used as u64),
        bytes(max as u64)
    ));
    has(&format!(
        "Evictions {}",
        metric(m, "archway_blob_store_evictions_total")
    ));
    has("Damaged blobs found 0");
    has(&format!("archway {}", env!("CARGO_PKG_VERSION")));
}

/// Reads `admin`'s page in Chromium and its metrics, until two metrics reads around the page
/// agree (requests are counted as their bodies end).
fn settled_page(admin: u16, profile: &std::path::Path) -> (String, String) {
    let metrics = |admin| {
        let r = e2e::http::get(&format!("http://127.0.0.1:{admin}/metrics"), &[]).expect("metrics");
        r.text()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = metrics(admin);
        let text = text_of(&dump_dom(&format!("http://127.0.0.1:{admin}/"), profile));
        let after = metrics(admin);
        let figures = |m: &str| {
            (
                sum_of(m, "archway_served_bytes_total"),
                sum_of(m, "archway_upstream_bytes_saved_total"),
                sum_of(m, "archway_blob_store_bytes"),
            )
        };
        if figures(&before) == figures(&after) || Instant::now() > deadline {
            return (text, after);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn the_status_page_in_chromium_after_real_pulls_matches_the_metrics() {
    if !e2e_enabled("the_status_page_in_chromium_after_real_pulls_matches_the_metrics") {
        return;
    }
    let moto = fleet::moto();
    let (_registry, big, proxy) = upstream_with_big_index();
    let tmp = temp_dir("status");
    let profile = tmp.path().join("chromium");
    let secret = secret_file(tmp.path());
    let r1 = Replica::start(&proxy.url(), &moto, &secret, "10s");
    let r2 = Replica::start(&proxy.url(), &moto, &secret, "10s");
    let node = Node::start(&[&r1, &r2], "");
    let layer = big.big_layer().digest.clone();

    // ~50 MB at 8 MB/s: replica 1's fill of the big layer lasts about six seconds.
    proxy.throttle(&layer, 8 << 20, 1);
    let src1 = format!("{}/{REPO}:{TAG}", r1.archway.host());
    let src2 = format!("{}/{REPO}:{TAG}", r2.archway.host());
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::thread::scope(|s| {
        let first = s.spawn(|| skopeo_copy(tmp.path(), &src1, "r1", &big));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !page(r1.admin).contains(&format!("{layer} upstream")) {
            assert!(
                Instant::now() < deadline,
                "replica 1 never listed its fill:\n{}",
                page(r1.admin)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let second = s.spawn(|| skopeo_copy(tmp.path(), &src2, "r2", &big));
        // The page while the fill runs, in the browser: listed with its bytes done.
        let (w, h) = screenshot(
            &format!("http://127.0.0.1:{}/", r1.admin),
            &profile,
            &shot,
            1100,
            1000,
        );
        assert_eq!((w, h), (1100, 1000));
        let during = text_of(&dump_dom(
            &format!("http://127.0.0.1:{}/", r1.admin),
            &profile,
        ));
        assert!(
            during.contains(&format!("{layer} upstream")) && during.contains(" of 50.0 MiB"),
            "the fill in flight, with its size:\n{during}"
        );
        first.join().expect("skopeo through replica 1");
        second.join().expect("skopeo through replica 2");
    });
    eprintln!(
        "status page screenshot (fill in flight): {}",
        shot.display()
    );
    skopeo_copy(
        tmp.path(),
        &format!("{}/{REPO}:{TAG}", node.archway.host()),
        "node",
        &big,
    );
    node.assert_went_through_parents();

    // Replica 2 joined replica 1's lease for the big layer: it has seen replica 1.
    let (text2, m2) = settled_page(r2.admin, &profile);
    assert!(
        metric(&m2, "archway_fleet_fills_total{outcome=\"joined_peer\"}") >= 1.0,
        "replica 2 did not join replica 1's fill:\n{m2}"
    );
    assert_cache_figures(&text2, &m2, "replica 2");
    let has2 = |want: &str| {
        assert!(
            text2.contains(want),
            "replica 2's page lacks `{want}`:\n{text2}"
        )
    };
    // Whether replica 2 asked upstream itself depends on who won each lease; the page says
    // what its metrics say.
    if sum_of(&m2, "archway_upstream_requests_total") > 0.0 {
        has2("docker.io up ");
    } else {
        has2("docker.io not used yet never none");
    }
    has2(&format!("Bucket {BUCKET} State reachable"));
    has2(&format!(
        "This replica: {} · leases held: {} · other replicas seen (from leases, last 15 min): 1",
        r2.url(),
        metric(&m2, "archway_fleet_leases_held")
    ));
    has2(&r1.url());
    has2(&format!("docker.io/{REPO}:{TAG}"));

    let (text1, m1) = settled_page(r1.admin, &profile);
    assert_cache_figures(&text1, &m1, "replica 1");
    assert!(
        text1.contains(&format!("{} (this one)", r1.url())),
        "{text1}"
    );
    assert!(text1.contains("Fills in flight none"), "{text1}");
    assert!(text1.contains("docker.io up "), "{text1}");
    assert!(sum_of(&m1, "archway_upstream_requests_total") > 0.0);

    // The node: its parents up, its own upstream never asked.
    let (textn, mn) = settled_page(node.admin, &profile);
    assert_cache_figures(&textn, &mn, "the node");
    for r in [&r1, &r2] {
        assert!(
            textn.contains(&format!("{} up ", r.url())),
            "parent {}:\n{textn}",
            r.url()
        );
    }
    assert!(textn.contains("docker.io not used yet"), "{textn}");
    assert!(!textn.contains("Shared storage"), "{textn}");

    // Nothing secret on any page: not the fleet secret, not the bucket's keys, no URL query.
    for (who, admin) in [
        ("replica 1", r1.admin),
        ("replica 2", r2.admin),
        ("node", node.admin),
    ] {
        let html = e2e::http::get(&format!("http://127.0.0.1:{admin}/"), &[])
            .unwrap()
            .text();
        for secret in [
            fleet::SECRET,
            e2e::s3::SECRET_KEY,
            e2e::s3::ACCESS_KEY,
            "X-Amz-",
        ] {
            assert!(!html.contains(secret), "{who}'s page shows `{secret}`");
        }
        assert!(!html.contains('?'), "{who}'s page has a URL query:\n{html}");
    }
}
