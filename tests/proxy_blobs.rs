//! Blobs through archway: cache hits, coalesced cold fills, verification (wrong, truncated and
//! stalled bodies are never cached), redirects, and the disk budget.

mod support;

use http::StatusCode;
use std::time::{Duration, Instant};
use support::{dir_size, FakeRegistry, Fault, Harness, Kind, Reply};

/// A failed fill must reach the client as an error: a 5xx, or a body broken off. Never a clean
/// 200 carrying the whole, right blob, and never a clean 200 with other bytes.
fn assert_failed(r: &Reply, right: &[u8], what: &str) {
    let clean = r.status == StatusCode::OK && r.complete();
    assert!(
        !clean,
        "{what}: a clean {} with {} bytes (right bytes: {})",
        r.status,
        r.body.len(),
        r.body.as_ref() == right
    );
    assert!(
        r.status.is_server_error() || r.body_error.is_some(),
        "{what}: status {}, body_error {:?}",
        r.status,
        r.body_error
    );
}

#[tokio::test]
async fn cached_blob_makes_zero_upstream_requests() {
    let h = Harness::start().await;
    let img = h.fake.sample_image("lib/app", "v1", 1);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[1]);
    let first = h.get(&path).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, img.layer_bytes[1]);
    assert_eq!(first.sha256(), img.layers[1].to_string());
    assert_eq!(h.fake.count("GET", Kind::Blob), 1);

    h.fake.reset_counts();
    for _ in 0..3 {
        let r = h.get(&path).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.complete());
        assert_eq!(r.body, img.layer_bytes[1]);
    }
    let head = h.head(&path).await;
    assert_eq!(head.header("content-length"), Some("40000"));
    let part = h.get_with(&path, &[("range", "bytes=5-9")]).await;
    assert_eq!(part.body, img.layer_bytes[1].slice(5..10));
    assert_eq!(h.fake.total(), 0, "{:?}", h.fake.requests());
    assert_eq!(h.fake.connections(), 0);
    // The same blob under another repository of the same upstream is the same content.
    // (Not asserted: whether archway shares it across repositories is a design choice.)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_make_one_upstream_fetch() {
    let h = Harness::start().await;
    let img = h
        .fake
        .sample_image_sized("lib/app", Some("v1"), 2, &[300_000]);
    let digest = img.layers[0].to_string();
    // Hold upstream's answer so that all 32 requests arrive while the fill is in flight.
    h.fake
        .set_delay(Some(Kind::Blob), Duration::from_millis(500));
    let url = h.url(&format!("/v2/lib/app/blobs/{digest}"));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let c = support::TestClient::new();
        let url = url.clone();
        tasks.push(tokio::spawn(async move { c.get(&url).await }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        bodies.push(t.await.unwrap());
    }
    assert_eq!(
        h.fake.count("GET", Kind::Blob),
        1,
        "exactly one upstream blob GET for 32 concurrent cold requests"
    );
    for (i, r) in bodies.iter().enumerate() {
        assert_eq!(r.status, StatusCode::OK, "#{i}");
        assert!(r.complete(), "#{i}: {:?}", r.body_error);
        assert_eq!(r.body.len(), 300_000, "#{i}");
        assert_eq!(r.sha256(), digest, "#{i}");
        assert_eq!(r.body, bodies[0].body, "#{i}");
        assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    }
    // They really overlapped the one fill: none of them was a plain cache hit.
    let proxy = h.archway.as_ref().unwrap().proxy();
    let (hits, misses, coalesced) = support::metrics::cache_results(proxy, "blob", 32.0).await;
    assert_eq!(hits, 0);
    assert_eq!(misses, 1);
    assert_eq!(coalesced, 31);
}

/// Coalesced waiters of a fill that fails verification all see the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_waiters_of_a_bad_fill_all_fail() {
    // A failed download is remembered for `negative_ttl` (see `integrity::a_bad_blob_is_remembered`).
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.cache.negative_ttl = Duration::from_millis(100);
    })
    .await;
    let img = h
        .fake
        .sample_image_sized("lib/app", Some("v1"), 3, &[200_000]);
    let right = img.layer_bytes[0].clone();
    h.fake
        .set_delay(Some(Kind::Blob), Duration::from_millis(400));
    h.fake.fault_times(Some(Kind::Blob), Fault::WrongBytes, 1);
    let url = h.url(&format!("/v2/lib/app/blobs/{}", img.layers[0]));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = support::TestClient::new();
        let url = url.clone();
        tasks.push(tokio::spawn(async move { c.get(&url).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_failed(&r, &right, &format!("waiter #{i}"));
    }
    assert_eq!(h.fake.count("GET", Kind::Blob), 1);
    h.fake.set_delay(Some(Kind::Blob), Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = h.client.get(&url).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, right);
    assert_eq!(
        h.fake.count("GET", Kind::Blob),
        2,
        "the bad fill was not cached"
    );
}

/// One bad upstream answer, then good ones: the client sees an error, the next request (once
/// the failure is no longer remembered) goes upstream again and gets the right bytes, and the
/// one after is a cache hit.
async fn bad_body_not_cached(fault: Fault, read_timeout: Duration, what: &str) {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.upstreams[0].read_timeout = read_timeout;
        c.cache.negative_ttl = Duration::from_millis(100);
    })
    .await;
    let img = h.fake.sample_image("lib/app", "v1", 4);
    let right = img.layer_bytes[1].clone();
    let path = format!("/v2/lib/app/blobs/{}", img.layers[1]);
    h.fake.fault_times(Some(Kind::Blob), fault, 1);

    let bad = h.get(&path).await;
    assert_failed(&bad, &right, what);
    assert_eq!(h.fake.count("GET", Kind::Blob), 1);

    tokio::time::sleep(Duration::from_millis(150)).await;
    let good = h.get(&path).await;
    assert_eq!(good.status, StatusCode::OK, "{what}: {}", good.text());
    assert!(good.complete(), "{what}");
    assert_eq!(good.body, right, "{what}");
    assert_eq!(good.sha256(), img.layers[1].to_string());
    assert_eq!(
        h.fake.count("GET", Kind::Blob),
        2,
        "{what}: went upstream again"
    );

    let hit = h.get(&path).await;
    assert_eq!(hit.body, right);
    assert_eq!(
        h.fake.count("GET", Kind::Blob),
        2,
        "{what}: cached after the good fill"
    );
    // Nothing but the one right blob on disk. The client has every (verified) byte before the
    // commit's fsync and rename finish, so the file may land a moment after the response.
    let blobs = h.data_dir().join("blobs");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while support::files_under(&blobs).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let on_disk = support::files_under(&blobs);
    assert_eq!(on_disk.len(), 1, "{what}: {on_disk:?}");
    assert_eq!(std::fs::read(&on_disk[0]).unwrap(), right.to_vec());
}

#[tokio::test]
async fn wrong_bytes_are_never_cached() {
    bad_body_not_cached(Fault::WrongBytes, Duration::from_secs(3), "wrong bytes").await;
}

#[tokio::test]
async fn truncated_body_is_never_cached() {
    bad_body_not_cached(
        Fault::Truncate { sent: 10_000 },
        Duration::from_secs(3),
        "truncated",
    )
    .await;
}

#[tokio::test]
async fn stalled_body_times_out_and_is_never_cached() {
    let started = Instant::now();
    bad_body_not_cached(
        Fault::StallBody { sent: 10_000 },
        Duration::from_millis(500),
        "stalled",
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn stalled_blob_headers_time_out_as_504_or_502() {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.upstreams[0].read_timeout = Duration::from_millis(500);
    })
    .await;
    let img = h.fake.sample_image("lib/app", "v1", 5);
    h.fake.fault(Some(Kind::Blob), Fault::StallHeaders);
    let started = Instant::now();
    let r = h.get(&format!("/v2/lib/app/blobs/{}", img.layers[0])).await;
    assert!(
        r.status == StatusCode::GATEWAY_TIMEOUT || r.status == StatusCode::BAD_GATEWAY,
        "{}",
        r.status
    );
    assert!(r.json()["errors"][0]["code"].is_string());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn cold_head_does_not_download() {
    let h = Harness::start().await;
    let img = h.fake.sample_image("lib/app", "v1", 6);
    let r = h
        .head(&format!("/v2/lib/app/blobs/{}", img.layers[1]))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), Some("40000"));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(img.layers[1].to_string().as_str())
    );
    assert_eq!(h.fake.count("HEAD", Kind::Blob), 1);
    assert_eq!(h.fake.count("GET", Kind::Blob), 0);
    assert_eq!(dir_size(&h.data_dir().join("blobs")), 0);
}

#[tokio::test]
async fn redirected_blob_is_fetched_from_the_cdn_and_cached() {
    let h = Harness::with(
        FakeRegistry::builder().redirect_blobs(true).start().await,
        |_| {},
    )
    .await;
    let img = h.fake.sample_image("lib/app", "v1", 7);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[1]);
    let r = h.get(&path).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.body, img.layer_bytes[1]);
    assert_eq!(h.fake.count("GET", Kind::Blob), 1);
    assert_eq!(h.fake.count("GET", Kind::Cdn), 1);
    assert_eq!(h.fake.cdn_authorizations(), vec![None]);
    h.fake.reset_counts();
    assert_eq!(h.get(&path).await.body, img.layer_bytes[1]);
    assert_eq!(h.fake.total(), 0);
}

#[tokio::test]
async fn eviction_keeps_the_store_under_budget() {
    const BUDGET: u64 = 100_000;
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.cache.max_size = BUDGET;
    })
    .await;
    let blobs_dir = h.data_dir().join("blobs");
    let mut digests = Vec::new();
    for seed in 0..6u64 {
        let d = h.fake.add_blob(
            "lib/app",
            support::fake_registry::pseudo_random_bytes(seed, 30_000),
        );
        let r = h.get(&format!("/v2/lib/app/blobs/{d}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.sha256(), d.to_string());
        digests.push(d);
        // Eviction may finish just after the response: allow it a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let size = dir_size(&blobs_dir);
            if size <= BUDGET {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after blob #{seed}: {size} bytes under blobs/, budget {BUDGET}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(dir_size(&blobs_dir) > 0, "something is kept");
    // The most recent blob is kept: served without upstream.
    h.fake.reset_counts();
    let last = digests.last().unwrap();
    let r = h.get(&format!("/v2/lib/app/blobs/{last}")).await;
    assert_eq!(r.sha256(), last.to_string());
    assert_eq!(h.fake.count("GET", Kind::Blob), 0);
    // An evicted one is fetched again, whole and right.
    let first = &digests[0];
    let r = h.get(&format!("/v2/lib/app/blobs/{first}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.sha256(), first.to_string());
    assert_eq!(h.fake.count("GET", Kind::Blob), 1);
    // Its commit (and the eviction that makes room) may still be running.
    let store = h.archway.as_ref().unwrap().proxy().blob_store().clone();
    store.finish_commits(Duration::from_secs(10)).await;
    assert!(dir_size(&blobs_dir) <= BUDGET);
}

#[tokio::test]
async fn blob_larger_than_the_budget_is_served_but_not_kept() {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.cache.max_size = 50_000;
        // By default no blob larger than the budget is downloaded at all
        // (`integrity::a_blob_over_max_blob_size_is_refused`); an operator may allow them.
        c.cache.max_blob_size = Some(200_000);
    })
    .await;
    let img = h
        .fake
        .sample_image_sized("lib/app", Some("v1"), 8, &[120_000]);
    let r = h.get(&format!("/v2/lib/app/blobs/{}", img.layers[0])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.complete());
    assert_eq!(r.body, img.layer_bytes[0]);
    let deadline = Instant::now() + Duration::from_secs(2);
    while dir_size(&h.data_dir().join("blobs")) > 50_000 {
        assert!(Instant::now() < deadline, "over budget");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A HEAD for a blob that is being downloaded is answered from the download (its size is known
/// from upstream's response head): no HEAD goes upstream, and no second download starts.
#[tokio::test]
async fn head_during_a_download_is_answered_from_it() {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.upstreams[0].read_timeout = Duration::from_secs(3);
    })
    .await;
    let img = h.fake.sample_image("lib/app", "v1", 11);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[1]);
    let size = img.layer_bytes[1].len();
    // The download stalls after 10 000 bytes, so it is in flight while the HEAD comes.
    h.fake
        .fault_times(Some(Kind::Blob), Fault::StallBody { sent: 10_000 }, 1);
    let url = h.url(&path);
    let client = h.client.clone();
    let stalled = tokio::spawn(async move { client.get(&url).await });
    let store = h.archway.as_ref().unwrap().proxy().blob_store().clone();
    let deadline = Instant::now() + Duration::from_secs(2);
    while store.head(&img.layers[1]).is_none() {
        assert!(Instant::now() < deadline, "the download never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let head = h.head(&path).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        head.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(
        head.header("docker-content-digest"),
        Some(img.layers[1].to_string().as_str())
    );
    assert!(head.body.is_empty());
    assert_eq!(h.fake.count("HEAD", Kind::Blob), 0, "no HEAD upstream");
    assert_eq!(h.fake.count("GET", Kind::Blob), 1, "no second download");
    assert_failed(&stalled.await.unwrap(), &img.layer_bytes[1], "stalled");
}

/// A small cached blob (an image config) is kept in memory after its first read: later GETs,
/// whole or ranged, do not read its file again.
#[tokio::test]
async fn small_cached_blob_is_served_from_memory() {
    let h = Harness::start().await;
    let img = h.fake.sample_image("lib/app", "v1", 12);
    let path = format!("/v2/lib/app/blobs/{}", img.config);
    let first = h.get(&path).await; // fills the cache
    assert_eq!(first.body, img.config_bytes);
    // The commit (fsync, rename) may finish just after the response.
    let hex = img.config.hex();
    let file = h.data_dir().join("blobs/sha256").join(&hex[..2]).join(hex);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !file.exists() {
        assert!(Instant::now() < deadline, "never committed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = h.get(&path).await; // a hit: read from the file, kept in memory
    assert_eq!(second.body, img.config_bytes);

    // From now on the file is not read: damage it (same length) and the right bytes still come.
    std::fs::write(&file, vec![b'x'; img.config_bytes.len()]).unwrap();
    let third = h.get(&path).await;
    assert_eq!(third.status, StatusCode::OK);
    assert_eq!(third.body, img.config_bytes);
    let ranged = h.get_with(&path, &[("range", "bytes=1-4")]).await;
    assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.body, img.config_bytes.slice(1..5));
    assert_eq!(h.fake.count("GET", Kind::Blob), 1);
}

/// A cold blob's last byte goes out as soon as its digest checked out, before the commit's
/// fsync and rename. A client that asks again at once (as a pull's verify-then-reuse does) must
/// still be answered locally — a hit, nothing asked upstream — and a shutdown right after the
/// pull must keep the blob. Repeated over many blobs to give the race room to show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_right_after_a_pull_is_a_hit_and_a_restart_keeps_it() {
    let mut h = Harness::start().await;
    let sizes = [1_500_000; 12];
    let img = h.fake.sample_image_sized("lib/app", Some("v1"), 41, &sizes);
    // (hits, misses, coalesced) once `total` blob requests were counted.
    let stats = |h: &Harness, total: u64| {
        let proxy = h.archway.as_ref().unwrap().proxy().clone();
        async move { support::metrics::cache_results(&proxy, "blob", total as f64).await }
    };
    for (i, layer) in img.layers.iter().enumerate() {
        let path = format!("/v2/lib/app/blobs/{layer}");
        let first = h.get(&path).await;
        assert_eq!(first.status, StatusCode::OK);
        assert!(first.complete());
        assert_eq!(first.body, img.layer_bytes[i]);
        let head = h.head(&path).await;
        assert_eq!(head.status, StatusCode::OK);
        let again = h.get(&path).await;
        assert_eq!(again.status, StatusCode::OK);
        assert!(again.complete());
        assert_eq!(again.body, img.layer_bytes[i]);
    }
    let n = img.layers.len() as u64;
    assert_eq!(h.fake.count("GET", Kind::Blob), n as usize);
    assert_eq!(h.fake.count("HEAD", Kind::Blob), 0);
    // Every first GET a miss; every HEAD and second GET a hit, none coalesced onto a download.
    assert_eq!(stats(&h, 3 * n).await, (2 * n, n, 0));

    // Pull, then shut down at once: the blob is on disk after the restart.
    let fresh = h
        .fake
        .sample_image_sized("lib/fresh", Some("v1"), 42, &[4_000_000]);
    let path = format!("/v2/lib/fresh/blobs/{}", fresh.layers[0]);
    let r = h.get(&path).await;
    assert!(r.complete());
    h.restart().await;
    h.fake.reset_counts();
    let r = h.get(&path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, fresh.layer_bytes[0]);
    assert_eq!(h.fake.total(), 0, "{:?}", h.fake.requests());
    assert_eq!(stats(&h, 1).await, (1, 0, 0));
}

/// Each download's writer thread runs at a lower CPU priority (nice 10) than the rest of
/// archway, so that on a busy machine the transfer to clients goes first and the disk catches
/// up; its hashing thread (the last byte waits for the digest) keeps the normal priority.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn blob_writer_thread_runs_at_lower_priority() {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.upstreams[0].read_timeout = Duration::from_secs(3);
    })
    .await;
    let img = h.fake.sample_image("lib/app", "v1", 12);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[1]);
    h.fake
        .fault_times(Some(Kind::Blob), Fault::StallBody { sent: 10_000 }, 1);
    let url = h.url(&path);
    let client = h.client.clone();
    let stalled = tokio::spawn(async move { client.get(&url).await });

    // (thread name, nice) of this process's download threads; comm is cut to 15 bytes.
    let threads = || -> Vec<(String, i64)> {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let comm = comm.trim().to_owned();
            if !comm.starts_with("archway-blob") {
                continue;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // Fields after the parenthesised name; nice is field 19 overall.
            let Some(rest) = stat.rsplit_once(") ").map(|(_, rest)| rest.to_owned()) else {
                continue;
            };
            let nice = rest.split_whitespace().nth(16).unwrap().parse().unwrap();
            found.push((comm, nice));
        }
        found
    };
    // The stalled download's two threads stay while it stalls. (Other tests of this binary run
    // downloads too: a hasher ends with its body, a writer may be between its start and its
    // setpriority call, so the check is that the stalled pair shows up as it should and that
    // no hasher is ever lowered.)
    // The test process may itself run under `nice`: threads start at its niceness.
    let base: i64 = {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split_whitespace().nth(16).unwrap().parse().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = threads();
        for (name, nice) in &found {
            match name.as_str() {
                "archway-blob-wr" => assert!(*nice == 10 || *nice == base, "{found:?}"),
                "archway-blob-ha" => assert_eq!(*nice, base, "{found:?}"),
                other => panic!("unexpected thread {other}"),
            }
        }
        let writer = found
            .iter()
            .any(|(n, nice)| n == "archway-blob-wr" && *nice == 10);
        let hasher = found.iter().any(|(n, _)| n == "archway-blob-ha");
        if writer && hasher {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no nice-10 writer and hasher: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_failed(&stalled.await.unwrap(), &img.layer_bytes[1], "stalled");
}
