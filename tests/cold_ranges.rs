//! Cold ranges (`cache.cold_ranges`): a Range of a blob whose download has not reached it is
//! relayed from an upstream Range request of its own (`relay`, set explicitly: the default is
//! `wait`) instead of waiting for the download's verified bytes (`wait`); several ranges are
//! answered multipart, a request per far part; the blob is still downloaded whole, once,
//! verified and kept. Upstream here sends every blob body slowly, so that the download is still
//! running when the range is answered. In its own test binary: it reads the captured log lines.

mod support;

use archway::config::ColdRanges;
use bytes::Bytes;
use http::StatusCode;
use std::time::{Duration, Instant};
use support::multipart::parts;
use support::{logs, FakeRegistry, Fault, Harness, Kind};

/// 4 MiB, sent 64 KiB every 30 ms: about 2 s for the whole blob, 30 ms for one 64 KiB range.
const SIZE: usize = 4 << 20;
const SLOW: Fault = Fault::SlowBody {
    chunk: 64 << 10,
    every: Duration::from_millis(30),
};

/// archway (with `cold_ranges`) in front of a fake that sends blob bodies slowly, and one
/// 4 MiB layer of it: `(harness, path, bytes)`.
async fn slow_blob(cold_ranges: ColdRanges, seed: u64) -> (Harness, String, Bytes) {
    slow_blob_with(seed, |c| c.cache.cold_ranges = cold_ranges).await
}

/// `slow_blob` with archway's configuration tweaked.
async fn slow_blob_with(
    seed: u64,
    tweak: impl FnOnce(&mut archway::config::Config),
) -> (Harness, String, Bytes) {
    // The first subscriber of this binary wins: every test installs the same one.
    logs::capture_json();
    let h = Harness::with(FakeRegistry::start().await, tweak).await;
    let img = h
        .fake
        .sample_image_sized("lib/lazy", Some("v1"), seed, &[SIZE]);
    h.fake.fault(Some(Kind::Blob), SLOW);
    let path = format!("/v2/lib/lazy/blobs/{}", img.layers[0]);
    (h, path, img.layer_bytes[0].clone())
}

fn in_flight(h: &Harness) -> u64 {
    h.archway
        .as_ref()
        .unwrap()
        .proxy()
        .blob_store()
        .stats()
        .in_flight
}

/// Bytes the one download in flight has received: less than the blob while it runs.
fn received(h: &Harness) -> Option<u64> {
    let store = h.archway.as_ref().unwrap().proxy().blob_store().clone();
    store.fills_in_progress(1).first().map(|f| f.received)
}

async fn committed(h: &Harness) {
    let store = h.archway.as_ref().unwrap().proxy().blob_store().clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while in_flight(h) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.finish_commits(Duration::from_secs(10)).await;
    assert_eq!(in_flight(h), 0, "the download finished");
}

/// The `Range` header of each blob GET upstream saw, in order (`None`: a whole GET).
fn upstream_blob_gets(h: &Harness, digest_path: &str) -> Vec<Option<String>> {
    h.fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.kind == Kind::Blob && r.path.ends_with(digest_path))
        .map(|r| {
            r.headers
                .get("range")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect()
}

fn cold_range_bytes(h: &Harness, source: &str) -> f64 {
    let text = h.archway.as_ref().unwrap().proxy().metrics().encode();
    support::metrics::Scrape::parse(text)
        .get("archway_cold_range_bytes_total", &[("source", source)])
        .unwrap_or(0.0)
}

/// The `(cache, source, origin)` of the access lines of `path` with this `range`.
async fn access_lines(logs: &logs::Logs, path: &str, n: usize) -> Vec<(String, String, String)> {
    let lines = || -> Vec<(String, String, String)> {
        logs.json_lines()
            .into_iter()
            .filter(|l| l["target"] == "archway::access" && l["fields"]["path"] == path)
            .map(|l| {
                let f = &l["fields"];
                let s = |k: &str| f[k].as_str().unwrap_or("").to_owned();
                (s("cache"), s("source"), s("origin"))
            })
            .collect()
    };
    for _ in 0..250 {
        if lines().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lines()
}

/// A 64 KiB range at the end of a never-seen blob is relayed from upstream while the download
/// (started by that very request) goes on; upstream sees one whole GET and the range GET; the
/// download is verified and kept, and a later range is a hit that asks upstream nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_range_past_the_download_is_relayed_from_upstream() {
    let logs = logs::capture_json();
    let (h, path, blob) = slow_blob(ColdRanges::Relay, 31).await;
    let (a, b) = (SIZE - (64 << 10), SIZE - 1);
    let range = format!("bytes={a}-{b}");
    let r = h.get_with(&path, &[("range", &range)]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{}", r.text());
    assert!(r.complete());
    assert_eq!(r.body, blob.slice(a..=b));
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes {a}-{b}/{SIZE}").as_str())
    );
    assert_eq!(
        r.header("content-length"),
        Some((b - a + 1).to_string().as_str())
    );
    let got = received(&h).expect("the download still runs");
    assert!(
        got < SIZE as u64,
        "answered before the download had it all: {got}"
    );

    committed(&h).await;
    let digest = path.rsplit('/').next().unwrap();
    // Asked together (the range alongside the download's start): in either order.
    let mut gets = upstream_blob_gets(&h, digest);
    gets.sort();
    assert_eq!(
        gets,
        [None, Some(range.clone())],
        "one whole GET, one Range GET"
    );
    assert_eq!(cold_range_bytes(&h, "upstream"), (b - a + 1) as f64);

    // Kept and verified: the same range and another are answered from the cache.
    let r = h.get_with(&path, &[("range", &range)]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, blob.slice(a..=b));
    let r = h.get_with(&path, &[("range", "bytes=1000-1999")]).await;
    assert_eq!(r.body, blob.slice(1000..2000));
    assert_eq!(
        upstream_blob_gets(&h, digest).len(),
        2,
        "nothing more asked"
    );
    let whole = h.get(&path).await;
    assert_eq!(whole.body, blob);

    let lines = access_lines(&logs, &path, 4).await;
    let word = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        lines,
        [
            word("miss", "upstream", "relayed"),
            word("hit", "cache", "hit"),
            word("hit", "cache", "hit"),
            word("hit", "cache", "hit"),
        ]
    );
}

/// With `cache.cold_ranges = "wait"` the same range waits for the download's verified bytes,
/// as before: no Range request upstream, nothing counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_a_cold_range_waits_for_the_download() {
    let (h, path, blob) = slow_blob(ColdRanges::Wait, 32).await;
    let (a, b) = (SIZE - (64 << 10), SIZE - 1);
    let started = Instant::now();
    let r = h
        .get_with(&path, &[("range", &format!("bytes={a}-{b}"))])
        .await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, blob.slice(a..=b));
    // 64 chunks 30 ms apart: the range's last byte came with the digest check at the end.
    assert!(took >= Duration::from_millis(63 * 30), "{took:?}");
    committed(&h).await;
    let digest = path.rsplit('/').next().unwrap();
    assert_eq!(upstream_blob_gets(&h, digest), [None]);
    assert_eq!(cold_range_bytes(&h, "upstream"), 0.0);
}

/// A range the download has reached (or nearly) is answered from it as the bytes arrive, not
/// held for the digest check and not asked of upstream again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_the_download_reaches_is_answered_from_it() {
    let (h, path, blob) = slow_blob(ColdRanges::Relay, 33).await;
    let r = h.get_with(&path, &[("range", "bytes=100-4195")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert!(r.complete());
    assert_eq!(r.body, blob.slice(100..4196));
    let got = received(&h).expect("the download still runs");
    assert!(
        got < SIZE as u64,
        "answered before the download had it all: {got}"
    );
    committed(&h).await;
    let digest = path.rsplit('/').next().unwrap();
    assert_eq!(upstream_blob_gets(&h, digest), [None], "no Range upstream");
    assert_eq!(cold_range_bytes(&h, "upstream"), 0.0);
}

/// An upstream that ignores `Range` (a 200 with the whole blob) is not relayed as a 206: the
/// range is answered from the download when it gets there; the refused answer's body is not
/// read, and the blob is still kept once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_ignoring_the_range_is_not_relayed() {
    let (h, path, blob) = slow_blob(ColdRanges::Relay, 34).await;
    h.fake.set_ignore_ranges(true);
    let (a, b) = (SIZE / 2, SIZE / 2 + 9999);
    let r = h
        .get_with(&path, &[("range", &format!("bytes={a}-{b}"))])
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert!(r.complete());
    assert_eq!(r.body, blob.slice(a..=b));
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes {a}-{b}/{SIZE}").as_str())
    );
    committed(&h).await;
    let digest = path.rsplit('/').next().unwrap();
    assert_eq!(
        upstream_blob_gets(&h, digest).len(),
        2,
        "the refused one too"
    );
    assert_eq!(cold_range_bytes(&h, "upstream"), 0.0, "nothing relayed");
    let whole = h.get(&path).await;
    assert_eq!(whole.body, blob, "kept whole and right");
    assert_eq!(upstream_blob_gets(&h, digest).len(), 2);
}

/// A range relay that upstream fails (a 503 for the Range GET while the download runs) falls
/// back to the download: the range is answered when the download reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_relay_falls_back_to_the_download() {
    let (h, path, blob) = slow_blob(ColdRanges::Relay, 35).await;
    // The download, started by a whole GET that follows it to the end.
    let whole = {
        let url = h.url(&path);
        let client = h.client.clone();
        tokio::spawn(async move { client.get(&url).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.fake.count("GET", Kind::Blob) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.fake.fault_times(Some(Kind::Blob), Fault::status(503), 1);
    let (a, b) = (SIZE - 5000, SIZE - 1);
    let r = h
        .get_with(&path, &[("range", &format!("bytes={a}-{b}"))])
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{}", r.text());
    assert!(r.complete());
    assert_eq!(r.body, blob.slice(a..=b));
    let whole = whole.await.unwrap();
    assert!(whole.complete());
    assert_eq!(whole.body, blob);
    committed(&h).await;
    let digest = path.rsplit('/').next().unwrap();
    assert_eq!(
        upstream_blob_gets(&h, digest),
        [None, Some(format!("bytes={a}-{b}"))]
    );
    assert_eq!(cold_range_bytes(&h, "upstream"), 0.0);
}

/// Checks each part's range, total and bytes against the blob.
fn check_parts(r: &support::Reply, digest: &str, blob: &Bytes, want: &[(usize, usize)]) {
    let got = parts(r, digest);
    let ranges: Vec<(u64, u64, u64)> = got.iter().map(|p| p.0).collect();
    let wanted: Vec<(u64, u64, u64)> = want
        .iter()
        .map(|&(a, b)| (a as u64, b as u64, blob.len() as u64))
        .collect();
    assert_eq!(ranges, wanted, "the parts, in the order asked for");
    for ((a, b, _), bytes) in &got {
        assert!(
            *bytes == blob.slice(*a as usize..=*b as usize),
            "part {a}-{b} byte for byte"
        );
    }
}

/// The `ranges` field of the access lines of `path` (waiting for `n` of them).
async fn access_ranges(logs: &logs::Logs, path: &str, n: usize) -> Vec<Option<u64>> {
    let lines = || -> Vec<Option<u64>> {
        logs.json_lines()
            .into_iter()
            .filter(|l| l["target"] == "archway::access" && l["fields"]["path"] == path)
            .map(|l| l["fields"]["ranges"].as_u64())
            .collect()
    };
    for _ in 0..250 {
        if lines().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lines()
}

/// `bytes=a-b,c-d,…` for inclusive ranges.
fn range_header(ranges: &[(usize, usize)]) -> String {
    let specs: Vec<String> = ranges.iter().map(|(a, b)| format!("{a}-{b}")).collect();
    format!("bytes={}", specs.join(","))
}

/// Starts the download with a whole GET that follows it to the end; returns once upstream has
/// been asked for it (and has begun its slow answer).
async fn start_download(h: &Harness, path: &str) -> tokio::task::JoinHandle<support::Reply> {
    let whole = {
        let url = h.url(path);
        let client = h.client.clone();
        tokio::spawn(async move { client.get(&url).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while received(h).is_none_or(|n| n == 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(received(h).is_some(), "the download runs");
    whole
}

/// Several ranges of a never-seen blob (what podman's zstd:chunked partial pull sends) are
/// answered `206 multipart/byteranges` while the download runs, as for a cached blob: the part
/// the download has from it, each far part from an upstream Range request of its own. Upstream
/// sees one whole GET and one Range GET per far part; the blob is kept, and the same request
/// again is a hit that asks upstream nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_cold_ranges_are_relayed_as_multipart() {
    let logs = logs::capture_json();
    let (h, path, blob) = slow_blob(ColdRanges::Relay, 36).await;
    let digest = path.rsplit('/').next().unwrap().to_owned();
    let want = [
        (0, 9),
        (2_000_000, 2_009_999),
        (SIZE - (64 << 10), SIZE - 1),
    ];
    let range = range_header(&want);
    let r = h.get_with(&path, &[("range", &range)]).await;
    check_parts(&r, &digest, &blob, &want);
    let got = received(&h).expect("the download still runs");
    assert!(
        got < SIZE as u64,
        "answered before the download had it all: {got}"
    );

    committed(&h).await;
    let mut gets = upstream_blob_gets(&h, &digest);
    gets.sort();
    assert_eq!(
        gets,
        [
            None,
            Some("bytes=2000000-2009999".to_owned()),
            Some(format!("bytes={}-{}", SIZE - (64 << 10), SIZE - 1)),
        ],
        "one whole GET, one Range GET per far part"
    );
    assert_eq!(
        cold_range_bytes(&h, "upstream"),
        (10_000 + (64 << 10)) as f64
    );

    // Kept and verified: the same ranges from the cache, nothing more asked.
    let r = h.get_with(&path, &[("range", &range)]).await;
    check_parts(&r, &digest, &blob, &want);
    assert_eq!(upstream_blob_gets(&h, &digest).len(), 3);
    assert_eq!(h.get(&path).await.body, blob);

    let lines = access_lines(&logs, &path, 3).await;
    let word = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        lines,
        [
            word("miss", "upstream", "relayed"),
            word("hit", "cache", "hit"),
            word("hit", "cache", "hit"),
        ]
    );
    assert_eq!(
        access_ranges(&logs, &path, 3).await,
        [Some(3), Some(3), None]
    );
}

/// Several ranges the download has reached (or nearly) are answered multipart from it as its
/// bytes arrive: no Range request upstream, nothing counted, origin as for the download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_ranges_the_download_reaches_are_answered_from_it() {
    let logs = logs::capture_json();
    let (h, path, blob) = slow_blob(ColdRanges::Relay, 37).await;
    let digest = path.rsplit('/').next().unwrap().to_owned();
    let want = [(100, 4195), (0, 9), (10_000, 20_000)];
    let r = h.get_with(&path, &[("range", &range_header(&want))]).await;
    check_parts(&r, &digest, &blob, &want);
    assert!(received(&h).expect("the download still runs") < SIZE as u64);
    committed(&h).await;
    assert_eq!(upstream_blob_gets(&h, &digest), [None], "no Range upstream");
    assert_eq!(cold_range_bytes(&h, "upstream"), 0.0);
    let lines = access_lines(&logs, &path, 1).await;
    assert_eq!(
        lines,
        [(
            "miss".to_owned(),
            "upstream".to_owned(),
            "upstream".to_owned()
        )]
    );
}

/// With `cache.cold_ranges = "wait"` several ranges of a cold blob are answered as before: the
/// whole blob (200) from the download, no Range request upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_several_cold_ranges_get_the_whole_blob() {
    let (h, path, blob) = slow_blob(ColdRanges::Wait, 38).await;
    let r = h
        .get_with(&path, &[("range", "bytes=0-9,4000000-4000009")])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, blob);
    committed(&h).await;
    let digest = path.rsplit('/').next().unwrap();
    assert_eq!(upstream_blob_gets(&h, digest), [None]);
    assert_eq!(cold_range_bytes(&h, "upstream"), 0.0);
}

/// A far part whose Range request upstream fails (503) is answered from the download when it
/// gets there; the next far part is still relayed; the multipart answer is whole and right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_part_falls_back_to_the_download() {
    let (h, path, blob) = slow_blob(ColdRanges::Relay, 39).await;
    let digest = path.rsplit('/').next().unwrap().to_owned();
    let whole = start_download(&h, &path).await;
    h.fake.fault_times(Some(Kind::Blob), Fault::status(503), 1);
    let want = [(1_000_000, 1_000_999), (SIZE - 5000, SIZE - 1)];
    let r = h.get_with(&path, &[("range", &range_header(&want))]).await;
    check_parts(&r, &digest, &blob, &want);
    let whole = whole.await.unwrap();
    assert_eq!(whole.body, blob);
    committed(&h).await;
    assert_eq!(
        upstream_blob_gets(&h, &digest),
        [
            None,
            Some("bytes=1000000-1000999".to_owned()),
            Some(format!("bytes={}-{}", SIZE - 5000, SIZE - 1)),
        ],
        "each far part asked once, in order"
    );
    assert_eq!(cold_range_bytes(&h, "upstream"), 5000.0, "the second part");
}

/// A relayed part that breaks off mid-body is finished from the download: the client gets a
/// whole, right multipart answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_that_breaks_off_is_finished_from_the_download() {
    let (h, path, blob) = slow_blob(ColdRanges::Relay, 40).await;
    let digest = path.rsplit('/').next().unwrap().to_owned();
    let whole = start_download(&h, &path).await;
    // The download's own body is slow already; the next blob body (the part's) breaks off
    // after 1000 bytes, and later ones are slow again.
    h.fake.clear_faults();
    h.fake
        .fault_times(Some(Kind::Blob), Fault::Truncate { sent: 1000 }, 1);
    h.fake.fault(Some(Kind::Blob), SLOW);
    let want = [(0, 9), (SIZE - 30_000, SIZE - 1)];
    let r = h.get_with(&path, &[("range", &range_header(&want))]).await;
    check_parts(&r, &digest, &blob, &want);
    assert_eq!(whole.await.unwrap().body, blob);
    committed(&h).await;
    assert_eq!(
        upstream_blob_gets(&h, &digest),
        [None, Some(format!("bytes={}-{}", SIZE - 30_000, SIZE - 1))]
    );
    assert_eq!(
        cold_range_bytes(&h, "upstream"),
        1000.0,
        "what upstream sent"
    );
}

/// `limits.max_ranges` bounds the parts, hence the upstream Range requests of one client
/// request: at the cap each far part is relayed; past it the whole blob is sent (200) from the
/// download, as for a cached blob, and no Range request goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ranges_bounds_the_relayed_parts() {
    let (h, path, blob) = slow_blob_with(41, |c| {
        c.cache.cold_ranges = ColdRanges::Relay;
        c.limits.max_ranges = 2;
    })
    .await;
    let digest = path.rsplit('/').next().unwrap().to_owned();
    let three = [
        (1_000_000, 1_000_009),
        (2_000_000, 2_000_009),
        (3_000_000, 3_000_009),
    ];
    let r = h.get_with(&path, &[("range", &range_header(&three))]).await;
    assert_eq!(r.status, StatusCode::OK, "past the cap: whole");
    assert_eq!(r.body, blob);
    committed(&h).await;
    assert_eq!(upstream_blob_gets(&h, &digest), [None]);

    // Another blob, at the cap: two far parts, two Range requests.
    let img = h
        .fake
        .sample_image_sized("lib/lazy", Some("v2"), 42, &[SIZE]);
    let path = format!("/v2/lib/lazy/blobs/{}", img.layers[0]);
    let blob = img.layer_bytes[0].clone();
    let digest = img.layers[0].to_string();
    let two = [(1_000_000, 1_000_009), (3_000_000, 3_000_009)];
    let r = h.get_with(&path, &[("range", &range_header(&two))]).await;
    check_parts(&r, &digest, &blob, &two);
    committed(&h).await;
    assert_eq!(upstream_blob_gets(&h, &digest).len(), 3);
    assert_eq!(cold_range_bytes(&h, "upstream"), 20.0);
}

/// `cache.cold_ranges_relay_max` bounds the bytes one request's parts relay: a far part that
/// does not fit what is left comes from the download; a later, smaller one that fits is still
/// relayed; the answer is whole and right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_ranges_relay_max_bounds_the_relayed_bytes() {
    let (h, path, blob) = slow_blob_with(43, |c| {
        c.cache.cold_ranges = ColdRanges::Relay;
        c.cache.cold_ranges_relay_max = 15_000;
    })
    .await;
    let digest = path.rsplit('/').next().unwrap().to_owned();
    let want = [
        (1_000_000, 1_009_999),
        (2_000_000, 2_009_999),
        (3_000_000, 3_003_999),
    ];
    let r = h.get_with(&path, &[("range", &range_header(&want))]).await;
    check_parts(&r, &digest, &blob, &want);
    committed(&h).await;
    assert_eq!(
        upstream_blob_gets(&h, &digest),
        [
            None,
            Some("bytes=1000000-1009999".to_owned()),
            Some("bytes=3000000-3003999".to_owned()),
        ],
        "the second part past the budget: from the download"
    );
    assert_eq!(cold_range_bytes(&h, "upstream"), 14_000.0);
}

// === A stargz snapshotter's lazy pull, replayed ===
//
// What containerd/stargz-snapshotter asks a registry for a layer it has never seen, read from
// its source (github.com/containerd/stargz-snapshotter at 7cf47cb, 2026-08):
//
// - fs/remote/resolver.go: `redirect` first GETs the blob with `Range: bytes=0-1` (to follow a
//   redirect; the body is dropped), then `getSize` asks `HEAD` for its size (falling back to
//   another `bytes=0-1` GET where HEAD fails). Every later read is `httpFetcher.fetch`: one GET
//   with `Range: bytes=a-b,c-d,…` (no spaces; adjacent regions merged by `regionSet`) and
//   `Accept-Encoding: identity`, whose answer may be a single 206, a `multipart/` 206 or a 200
//   with the whole blob (taken as one part covering it all).
// - fs/remote/blob.go: `ReadAt` rounds every read out to `chunk_size` (`defaultChunkSize`,
//   50000 bytes, in resolver.go), asks only the chunks it does not hold yet, and keeps what it
//   got; so a read over chunks already held asks several ranges in one GET.
// - estargz/estargz.go `Open`: reads the footer, the last 51 bytes (estargz/types.go
//   `FooterSize`, the largest footer of its decompressors), whose gzip Extra field holds
//   `%016xSTARGZ`, the offset of the TOC (estargz/gzip.go `gzipFooterBytes`, `ParseFooter`);
//   then `parseTOC` reads from that offset up to the footer: a gzip stream of a tar holding
//   `stargz.index.json`.
// - fs/layer/layer.go, fs/fs.go: then the files a container opens are read on demand, while
//   `Prefetch` and `BackgroundFetch` read the rest of the layer in the background (paused while
//   on-demand reads run: `DoPrioritizedTask`).

/// fs/remote/resolver.go `defaultChunkSize`.
const ESGZ_CHUNK: u64 = 50_000;
/// estargz/types.go `FooterSize`.
const ESGZ_FOOTER: usize = 51;
/// The replayed layer's files: `ESGZ_FILES` of them, `ESGZ_FILE` bytes apart from offset 0.
const ESGZ_FILE: u64 = 100_000;
const ESGZ_FILES: u64 = 42;
/// Where the replayed layer's TOC ends (the footer's chunk starts): about 4.2 MB in, so that
/// the footer, the TOC and the files' chunks are far past a download's first bytes.
const ESGZ_TOC_END: u64 = 84 * ESGZ_CHUNK;

/// eStargz's footer for a TOC at `toc_offset` (estargz/gzip.go `gzipFooterBytes`): an empty
/// gzip stream whose Extra field is `SG`, 22, `%016xSTARGZ`.
fn estargz_footer(toc_offset: u64) -> Vec<u8> {
    let subfield = format!("{toc_offset:016x}STARGZ");
    let mut extra = b"SG".to_vec();
    extra.extend_from_slice(&(subfield.len() as u16).to_le_bytes());
    extra.extend_from_slice(subfield.as_bytes());
    let mut out = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255];
    out.extend_from_slice(&(extra.len() as u16).to_le_bytes());
    out.extend_from_slice(&extra);
    out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    out.extend_from_slice(&[0; 8]);
    assert_eq!(out.len(), ESGZ_FOOTER);
    out
}

/// An eStargz-shaped layer: the files' (pseudo-random, standing for compressed) bytes, the TOC
/// (gzip of a tar holding `stargz.index.json`, listing each file's offset) and the footer.
/// The TOC straddles a chunk boundary, so that reading it is a request of its own after the
/// footer's. Returns the layer and the TOC's offset.
fn estargz_layer(seed: u64) -> (Bytes, u64) {
    use std::io::Write;
    let entries: Vec<serde_json::Value> = (0..ESGZ_FILES)
        .map(|i| {
            serde_json::json!({
                "name": format!("usr/lib/f{i:02}"),
                "type": "reg",
                "size": ESGZ_FILE * 3,
                "offset": i * ESGZ_FILE,
            })
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({"version": 1, "entries": entries})).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(index.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "stargz.index.json", &index[..])
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    let toc = gz.finish().unwrap();
    let toc_offset = ESGZ_TOC_END - (toc.len() as u64).div_ceil(2);
    assert!(toc_offset > (ESGZ_FILES - 1) * ESGZ_FILE);
    let mut layer = support::fake_registry::pseudo_random_bytes(seed, toc_offset as usize);
    layer.extend_from_slice(&toc);
    layer.extend_from_slice(&estargz_footer(toc_offset));
    assert_eq!(
        (layer.len() - ESGZ_FOOTER) as u64 / ESGZ_CHUNK,
        ESGZ_TOC_END / ESGZ_CHUNK,
        "the footer's chunk starts where the TOC's last byte is"
    );
    (Bytes::from(layer), toc_offset)
}

/// The snapshotter's side of a lazy pull through archway: its chunk cache (fs/remote/blob.go)
/// and every range it asked. Each answer is checked against the layer's bytes.
struct Snapshotter<'a> {
    h: &'a Harness,
    path: &'a str,
    digest: String,
    blob: &'a Bytes,
    /// Chunks held, by index.
    held: std::collections::BTreeMap<u64, Bytes>,
    /// Every region asked, in order.
    asked: Vec<(u64, u64)>,
    /// GETs made.
    requests: usize,
    /// `relay`: every answer must be a 206 (a 200 with the whole blob is what a registry may
    /// send for a list of ranges, and what archway sends a cold list under `wait`).
    parts_only: bool,
}

impl Snapshotter<'_> {
    fn size(&self) -> u64 {
        self.blob.len() as u64
    }

    /// `blob.ReadAt` of `first..=last`: the chunks not held yet, adjacent ones merged, asked in
    /// one GET (if any), then the bytes from the chunks held.
    async fn read(&mut self, first: u64, last: u64) -> Bytes {
        let size = self.size();
        let mut regions: Vec<(u64, u64)> = Vec::new();
        for c in first / ESGZ_CHUNK..=last / ESGZ_CHUNK {
            if self.held.contains_key(&c) {
                continue;
            }
            let (a, b) = (c * ESGZ_CHUNK, ((c + 1) * ESGZ_CHUNK).min(size) - 1);
            match regions.last_mut() {
                Some(r) if r.1 + 1 == a => r.1 = b,
                _ => regions.push((a, b)),
            }
        }
        if !regions.is_empty() {
            self.fetch(&regions).await;
        }
        let mut out = Vec::with_capacity((last - first + 1) as usize);
        for c in first / ESGZ_CHUNK..=last / ESGZ_CHUNK {
            let chunk = &self.held[&c];
            let start = c * ESGZ_CHUNK;
            let a = first.max(start) - start;
            let b = last.min(start + chunk.len() as u64 - 1) - start;
            out.extend_from_slice(&chunk[a as usize..=b as usize]);
        }
        Bytes::from(out)
    }

    /// `httpFetcher.fetch`: one GET for `regions`; the answer checked byte for byte.
    async fn fetch(&mut self, regions: &[(u64, u64)]) {
        let specs: Vec<String> = regions.iter().map(|(a, b)| format!("{a}-{b}")).collect();
        let range = format!("bytes={}", specs.join(","));
        let r = self
            .h
            .get_with(
                self.path,
                &[("range", &range), ("accept-encoding", "identity")],
            )
            .await;
        let size = self.size();
        let got: Vec<((u64, u64), Bytes)> = match r.status {
            StatusCode::OK if !self.parts_only => {
                assert!(r.complete(), "{range}: {:?}", r.body_error);
                assert!(r.body == *self.blob, "{range}: a 200 is the whole blob");
                vec![((0, size - 1), r.body.clone())]
            }
            StatusCode::PARTIAL_CONTENT if regions.len() == 1 => {
                assert!(r.complete(), "{range}: {:?}", r.body_error);
                let (a, b) = regions[0];
                assert_eq!(
                    r.header("content-range"),
                    Some(format!("bytes {a}-{b}/{size}").as_str()),
                    "{range}"
                );
                vec![((a, b), r.body.clone())]
            }
            StatusCode::PARTIAL_CONTENT => parts(&r, &self.digest)
                .into_iter()
                .map(|((a, b, total), bytes)| {
                    assert_eq!(total, size, "{range}");
                    ((a, b), bytes)
                })
                .collect(),
            status => panic!("{range}: {status} {}", r.text()),
        };
        if r.status == StatusCode::PARTIAL_CONTENT {
            let spans: Vec<(u64, u64)> = got.iter().map(|p| p.0).collect();
            assert_eq!(spans, regions, "the parts asked, in order");
        }
        for ((a, b), bytes) in got {
            assert!(
                bytes == self.blob.slice(a as usize..=b as usize),
                "{range}: bytes {a}-{b} differ from the layer's"
            );
            for c in a / ESGZ_CHUNK..=b / ESGZ_CHUNK {
                let start = c * ESGZ_CHUNK;
                let end = ((c + 1) * ESGZ_CHUNK).min(size);
                self.held
                    .insert(c, bytes.slice((start - a) as usize..(end - a) as usize));
            }
        }
        self.asked.extend_from_slice(regions);
        self.requests += 1;
    }
}

/// What the replay saw: the regions asked on demand (before the background fetch), and the
/// download's received bytes after each on-demand answer (`None`: no download running).
struct Replayed {
    on_demand: Vec<(u64, u64)>,
    received_after: Vec<Option<u64>>,
    asked: Vec<(u64, u64)>,
    /// Requests made of archway for the layer.
    requests: usize,
}

/// Replays a stargz snapshotter's lazy pull of the layer at `path` (see above): the size probes,
/// the footer, the TOC (parsed from archway's answers), the files a container opens (the last
/// read spans chunks already held: several ranges in one GET), then the background fetch of
/// the whole layer in reads of four chunks.
async fn replay_stargz(
    h: &Harness,
    path: &str,
    blob: &Bytes,
    toc_offset: u64,
    parts_only: bool,
) -> Replayed {
    use std::io::Read;
    let size = blob.len() as u64;
    let mut received_after = Vec::new();
    // resolver.go `redirect`: `bytes=0-1`, a 2xx wanted; `getSize`: HEAD.
    let r = h.get_with(path, &[("range", "bytes=0-1")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{}", r.text());
    assert_eq!(r.body, blob.slice(0..2));
    received_after.push(received(h));
    let r = h.head(path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), Some(size.to_string().as_str()));
    received_after.push(received(h));

    let mut s = Snapshotter {
        h,
        path,
        digest: path.rsplit('/').next().unwrap().to_owned(),
        blob,
        held: Default::default(),
        asked: Vec::new(),
        requests: 0,
        parts_only,
    };
    // estargz.Open: the footer, then the TOC it points at.
    let footer = s.read(size - ESGZ_FOOTER as u64, size - 1).await;
    received_after.push(received(h));
    let mut gz = flate2::read::GzDecoder::new(&footer[..]);
    std::io::copy(&mut gz, &mut std::io::sink()).unwrap();
    let extra = gz
        .header()
        .and_then(|g| g.extra())
        .expect("the footer's Extra field");
    assert_eq!(&extra[..4], b"SG\x16\x00");
    assert_eq!(&extra[20..], b"STARGZ");
    let toc_at = u64::from_str_radix(std::str::from_utf8(&extra[4..20]).unwrap(), 16).unwrap();
    assert_eq!(toc_at, toc_offset);
    let toc = s.read(toc_at, size - ESGZ_FOOTER as u64 - 1).await;
    received_after.push(received(h));
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&toc[..]));
    let mut entry = tar.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(entry.path().unwrap().to_str(), Some("stargz.index.json"));
    let mut index = String::new();
    entry.read_to_string(&mut index).unwrap();
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    // Each file's bytes run from its offset to the next one's (the last: to the TOC).
    let offsets: Vec<u64> = index["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .chain([toc_at])
        .collect();
    let file = |i: usize| (offsets[i], offsets[i + 1] - 1);

    // On demand: three files, then a read over files 24-28, two of which are held already.
    for (a, b) in [file(20), file(25), file(27), (file(24).0, file(28).1)] {
        s.read(a, b).await;
        received_after.push(received(h));
    }
    let on_demand = s.asked.clone();
    // The background fetch: the whole layer, four chunks a read, the chunks held skipped.
    let mut at = 0;
    while at < size {
        let last = (at + 4 * ESGZ_CHUNK).min(size) - 1;
        s.read(at, last).await;
        at = last + 1;
    }
    assert_eq!(s.held.len() as u64, size.div_ceil(ESGZ_CHUNK));
    Replayed {
        on_demand,
        received_after,
        asked: s.asked,
        requests: 2 + s.requests,
    }
}

/// A stargz snapshotter's lazy pull of a never-seen eStargz layer (replayed as its source does
/// it; see above) under `cache.cold_ranges = "relay"`: every range, lists of ranges included,
/// is answered 206 with the layer's bytes, the on-demand ones while the one whole download is
/// still running (upstream sends the blob slowly: about 2 s); upstream is asked for the blob
/// whole exactly once, and otherwise only for ranges the snapshotter asked; the layer is kept,
/// and a later whole GET is a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stargz_lazy_pull_is_answered_in_ranges_while_the_layer_downloads() {
    let logs = logs::capture_json();
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.cache.cold_ranges = ColdRanges::Relay;
    })
    .await;
    let (blob, toc_offset) = estargz_layer(44);
    let size = blob.len() as u64;
    let digest = h.fake.add_blob("lib/esgz", blob.clone());
    h.fake.fault(Some(Kind::Blob), SLOW);
    let path = format!("/v2/lib/esgz/blobs/{digest}");

    let replayed = replay_stargz(&h, &path, &blob, toc_offset, true).await;
    for (i, got) in replayed.received_after.iter().enumerate() {
        let got = got.unwrap_or_else(|| panic!("on-demand answer {i}: the download has ended"));
        assert!(got < size, "on-demand answer {i}: the download had it all");
    }
    let footer_chunk = (size - ESGZ_FOOTER as u64) / ESGZ_CHUNK * ESGZ_CHUNK;
    let toc_chunk = toc_offset / ESGZ_CHUNK * ESGZ_CHUNK;
    let on_demand: Vec<(u64, u64)> = [
        (footer_chunk, size - 1),
        (toc_chunk, footer_chunk - 1),
        (2_000_000, 2_099_999),
        (2_500_000, 2_599_999),
        (2_700_000, 2_799_999),
        (2_400_000, 2_499_999),
        (2_600_000, 2_699_999),
        (2_800_000, 2_899_999),
    ]
    .into();
    assert_eq!(replayed.on_demand, on_demand, "what the snapshotter asked");

    committed(&h).await;
    let digest = digest.to_string();
    let gets = upstream_blob_gets(&h, &digest);
    assert_eq!(
        gets.iter().filter(|g| g.is_none()).count(),
        1,
        "the blob fetched whole once: {gets:?}"
    );
    // Each on-demand region was far past the download when asked: relayed, a request each.
    let ranges: Vec<(u64, u64)> = gets
        .iter()
        .flatten()
        .map(|spec| {
            let (a, b) = spec
                .strip_prefix("bytes=")
                .unwrap()
                .split_once('-')
                .unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    for r in &on_demand {
        assert!(ranges.contains(r), "{r:?} relayed: {gets:?}");
    }
    // Anything else upstream was asked is a range the snapshotter asked (its background fetch).
    for &(a, b) in &ranges {
        assert!(
            replayed.asked.iter().any(|&(x, y)| x <= a && b <= y),
            "upstream asked for {a}-{b}, which no client asked: {gets:?}"
        );
    }
    // The cost: the snapshotter asks each chunk once, so at most the layer once more. (Its
    // background fetch, once it has jumped past the chunks it holds ahead of the download, is
    // relayed read after read: about half the layer in runs here.)
    let relayed: u64 = ranges.iter().map(|(a, b)| b - a + 1).sum();
    assert!(relayed < size, "{relayed} bytes relayed");
    assert_eq!(cold_range_bytes(&h, "upstream"), relayed as f64);

    // Kept and verified: the whole layer is a hit, nothing more asked.
    let r = h.get(&path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body == blob);
    assert_eq!(upstream_blob_gets(&h, &digest), gets);
    let lines = access_lines(&logs, &path, replayed.requests + 1).await;
    assert_eq!(lines.len(), replayed.requests + 1);
    assert_eq!(
        lines
            .last()
            .map(|(c, s, o)| (c.as_str(), s.as_str(), o.as_str())),
        Some(("hit", "cache", "hit"))
    );
}

/// The same lazy pull under the default `cache.cold_ranges = "wait"`: every answer is right too
/// (a cold list of ranges may be answered 200 with the whole layer, which the snapshotter takes
/// as one part covering it); upstream is asked for the blob whole once and for nothing else; the
/// layer is kept, and a later whole GET is a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_a_stargz_lazy_pull_gets_right_answers() {
    logs::capture_json();
    let h = Harness::start().await;
    let (blob, toc_offset) = estargz_layer(45);
    let digest = h.fake.add_blob("lib/esgz", blob.clone());
    h.fake.fault(Some(Kind::Blob), SLOW);
    let path = format!("/v2/lib/esgz/blobs/{digest}");
    replay_stargz(&h, &path, &blob, toc_offset, false).await;
    committed(&h).await;
    let digest = digest.to_string();
    assert_eq!(upstream_blob_gets(&h, &digest), [None]);
    assert_eq!(cold_range_bytes(&h, "upstream"), 0.0);
    let r = h.get(&path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body == blob);
    assert_eq!(upstream_blob_gets(&h, &digest), [None]);
}
