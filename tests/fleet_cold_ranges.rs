//! Cold ranges in a fleet (`cache.cold_ranges = "relay"` with `[fleet]`), in process: two
//! replicas on one bucket, the fake registry upstream sending blob bodies slowly. A replica
//! that joins another's fill through the peer endpoint answers a Range that fill has already
//! got from that replica (its peer endpoint answers one range of a fill in flight with the bytes
//! it has, `416` at once if it has not got them all); a Range it has not got yet from upstream.
//! Several ranges in one request: each relayed part likewise, the owner first.
//! Upstream still sends the blob whole once, for the fleet, and both replicas keep it.
//!
//! Needs `moto_server`, as `tests/fleet_fill.rs` does: run with `ARCHWAY_E2E=1` (or
//! `CI=true`), where a missing one fails; otherwise skipped, said so.

mod support;

#[allow(dead_code)]
mod e2e {
    pub mod fixtures;
    pub mod fleet_kit;
    pub mod http;
    pub mod layout;
    pub mod procs;
    pub mod s3;
    pub mod tools;
}

use archway::clock::Clock;
use archway::config::ColdRanges;
use archway::fleet::PeerSigner;
use archway::server::Archway;
use e2e::fleet_kit::{fleet_value, moto, replica_config, skip, SECRET};
use http::StatusCode;
use std::time::{Duration, Instant};
use support::fake_registry::pseudo_random_bytes;
use support::multipart::parts;
use support::{FakeRegistry, Fault, Kind, Reply, TestClient};

/// 8 MiB, sent 64 KiB every 30 ms: about 4 s for the whole blob.
const SIZE: usize = 8 << 20;
const SLOW: Fault = Fault::SlowBody {
    chunk: 64 << 10,
    every: Duration::from_millis(30),
};

fn cold_range_bytes(a: &Archway, source: &str) -> f64 {
    fleet_value(a, "archway_cold_range_bytes_total", &[("source", source)])
}

/// Bytes the replica's fill of the blob has received (0 when it has none in flight).
fn received(a: &Archway) -> u64 {
    let store = a.proxy().blob_store();
    store.fills_in_progress(1).first().map_or(0, |f| f.received)
}

async fn committed(a: &Archway) {
    let store = a.proxy().blob_store().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.stats().in_flight > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.finish_commits(Duration::from_secs(10)).await;
    assert_eq!(store.stats().in_flight, 0, "the fill finished");
}

/// The `Range` header of each GET of the blob upstream saw (`None`: a whole GET).
fn upstream_blob_gets(fake: &FakeRegistry, digest: &str) -> Vec<Option<String>> {
    let mut gets: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.kind == Kind::Blob && r.path.ends_with(digest))
        .map(|r| {
            r.headers
                .get("range")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect();
    gets.sort();
    gets
}

fn assert_range(r: &Reply, data: &[u8], (a, b): (usize, usize), what: &str) {
    assert_eq!(
        r.status,
        StatusCode::PARTIAL_CONTENT,
        "{what}: {}",
        r.text()
    );
    assert!(r.complete(), "{what}: body broke off: {:?}", r.body_error);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes {a}-{b}/{}", data.len()).as_str()),
        "{what}"
    );
    assert!(r.body.as_ref() == &data[a..=b], "{what}: other bytes");
}

/// Two replicas on one bucket, both `cold_ranges = "relay"`, in front of a fake registry that
/// holds one blob of `SIZE` pseudo-random bytes (`seed`) and sends blob bodies slowly.
struct Pair {
    _moto: e2e::s3::Moto,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    fake: FakeRegistry,
    data: bytes::Bytes,
    digest: archway::digest::Digest,
    a: Archway,
    b: Archway,
    client: TestClient,
    url_a: String,
    url_b: String,
    /// A whole GET at A, running: A owns the blob's fill.
    whole_a: tokio::task::JoinHandle<Reply>,
}

impl Pair {
    /// Started, with A's fill `ahead` bytes in.
    async fn start(seed: u64, ahead: u64) -> Pair {
        support::init_tracing();
        let moto = tokio::task::spawn_blocking(moto).await.unwrap();
        let fake = FakeRegistry::start().await;
        let data = pseudo_random_bytes(seed, SIZE);
        let digest = fake.add_blob("lib/lazy", data.clone());
        fake.fault(Some(Kind::Blob), SLOW);
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ttl = Duration::from_secs(10);
        let (mut cfg_a, _) = replica_config(&fake, dirs.0.path(), &moto.url(), ttl);
        let (mut cfg_b, _) = replica_config(&fake, dirs.1.path(), &moto.url(), ttl);
        cfg_a.cache.cold_ranges = ColdRanges::Relay;
        cfg_b.cache.cold_ranges = ColdRanges::Relay;
        let a = Archway::start(cfg_a).await.unwrap();
        let b = Archway::start(cfg_b).await.unwrap();
        let client = TestClient::new();
        let path = format!("/v2/lib/lazy/blobs/{digest}");
        let (url_a, url_b) = (
            format!("http://{}{path}", a.local_addr()),
            format!("http://{}{path}", b.local_addr()),
        );
        let whole_a = tokio::spawn({
            let client = client.clone();
            let url = url_a.clone();
            async move { client.get(&url).await }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while received(&a) < ahead {
            assert!(
                Instant::now() < deadline,
                "A's fill never got {ahead} bytes"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Pair {
            _moto: moto,
            _dirs: dirs,
            fake,
            data: data.into(),
            digest,
            a,
            b,
            client,
            url_a,
            url_b,
            whole_a,
        }
    }
}

/// Replica A owns a slow fill; replica B, cold, is asked for a range A's fill has already got:
/// B joins A's fill and answers the range from A (a Range request to A's peer endpoint), not
/// upstream. Then a range far past A's fill: A's peer endpoint says at once that it has not got
/// it, and B relays it from upstream. Upstream sees one whole GET and that one Range GET; both
/// replicas keep the blob, and later requests are hits that ask nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_joining_a_fill_relays_a_cold_range_from_the_owner_when_it_has_it() {
    if skip("a_replica_joining_a_fill_relays_a_cold_range_from_the_owner_when_it_has_it") {
        return;
    }
    let Pair {
        _moto,
        _dirs,
        fake,
        data,
        digest,
        a,
        b,
        client,
        url_a,
        url_b,
        whole_a,
    } = Pair::start(41, 3 << 20).await;
    for r in [&a, &b] {
        assert_eq!(cold_range_bytes(r, "peer"), 0.0, "registered at start");
        assert!(r
            .proxy()
            .metrics()
            .encode()
            .contains("archway_cold_range_bytes_total{source=\"peer\"} 0"));
    }
    // A owns the fill: a whole GET there, running in the background.
    let owned = [("outcome", "owned")];
    assert_eq!(fleet_value(&a, "archway_fleet_fills_total", &owned), 1.0);

    // (a) A range A's fill has, asked at B (cold there): from A.
    let near = (2 << 20, (2 << 20) + (256 << 10) - 1);
    let range = format!("bytes={}-{}", near.0, near.1);
    let r = client.get_with(&url_b, &[("range", &range)]).await;
    assert_range(&r, &data, near, "a range the owner has, at B");
    let joined = [("outcome", "joined_peer")];
    assert_eq!(fleet_value(&b, "archway_fleet_fills_total", &joined), 1.0);
    assert_eq!(
        cold_range_bytes(&b, "peer"),
        (near.1 - near.0 + 1) as f64,
        "relayed from the owner's fill"
    );
    assert_eq!(cold_range_bytes(&b, "upstream"), 0.0);
    let digest_str = digest.to_string();
    assert_eq!(
        upstream_blob_gets(&fake, &digest_str),
        [None],
        "upstream asked for no range of it"
    );

    // A's peer endpoint, asked directly (signed as a replica would) for a range its fill has
    // not got yet: 416 at once, not the range once the fill gets there.
    let far = (SIZE - (64 << 10), SIZE - 1);
    assert!(
        received(&a) < far.0 as u64,
        "A's fill still far from the end"
    );
    let peer = format!("http://{}/_archway/fleet/blobs/{digest}", a.local_addr());
    let far_range = format!("bytes={}-{}", far.0, far.1);
    let auth = PeerSigner::new(SECRET.as_bytes(), Clock::system()).authorization("GET", &digest);
    let started = Instant::now();
    let r = client
        .get_with(&peer, &[("authorization", &auth), ("range", &far_range)])
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered at once"
    );
    assert!(received(&a) < SIZE as u64, "…while A's fill still runs");

    // (b) A range far past A's fill, asked at B: from upstream, one Range request.
    let r = client.get_with(&url_b, &[("range", &far_range)]).await;
    assert_range(&r, &data, far, "a range the owner has not got, at B");
    assert_eq!(cold_range_bytes(&b, "upstream"), (far.1 - far.0 + 1) as f64);
    assert_eq!(cold_range_bytes(&b, "peer"), (near.1 - near.0 + 1) as f64);
    assert!(
        received(&a) < SIZE as u64,
        "answered while A's fill still runs"
    );

    // (c) The whole blob, from upstream once for the fleet; both replicas keep it.
    let r = whole_a.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.complete() && r.body.as_ref() == &data[..],
        "A's whole GET"
    );
    committed(&a).await;
    committed(&b).await;
    assert_eq!(
        upstream_blob_gets(&fake, &digest_str),
        [None, Some(far_range.clone())],
        "one whole GET and the far range's GET"
    );
    assert_eq!(cold_range_bytes(&a, "peer"), 0.0);
    assert_eq!(cold_range_bytes(&a, "upstream"), 0.0);

    // Later: hits on both replicas, upstream asked nothing more.
    let hits = [("kind", "blob"), ("result", "hit")];
    for (name, replica, url) in [("A", &a, &url_a), ("B", &b, &url_b)] {
        assert!(
            replica.proxy().blob_store().get(&digest).is_some(),
            "{name} keeps it"
        );
        let before = fleet_value(replica, "archway_cache_results_total", &hits);
        let r = client.get_with(url, &[("range", &range)]).await;
        assert_range(&r, &data, near, &format!("{name}, later"));
        let r = client.get(url).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            r.body.as_ref() == &data[..],
            "{name}, later: the whole blob"
        );
        // Counted as each answer ends: waited for.
        let hit_count = || fleet_value(replica, "archway_cache_results_total", &hits) - before;
        let deadline = Instant::now() + Duration::from_secs(5);
        while hit_count() < 2.0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(hit_count(), 2.0, "{name}: two hits");
    }
    assert_eq!(upstream_blob_gets(&fake, &digest_str).len(), 2);
    a.shutdown().await;
    b.shutdown().await;
}

/// Several ranges asked at a replica that joins another's fill: each part past the joining
/// replica's download is asked of the owner first, as a single range is. Replica A owns a slow
/// fill; B, cold, is asked for two ranges: one A's fill has already got (from A, not upstream)
/// and one far past it (A's peer endpoint says at once it has not got it: from upstream, one
/// Range request). The answer is one right `multipart/byteranges`; upstream still sends the
/// blob whole once for the fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_ranges_at_a_joining_replica_ask_the_owner_first_for_each_part() {
    if skip("several_ranges_at_a_joining_replica_ask_the_owner_first_for_each_part") {
        return;
    }
    let Pair {
        _moto,
        _dirs,
        fake,
        data,
        digest,
        a,
        b,
        client,
        url_b,
        whole_a,
        ..
    } = Pair::start(43, 6 << 20).await;
    // A well ahead: B's own copy of A's fill, starting with the request, must not reach the
    // near part before the answer does.

    let near = (11 << 19, (11 << 19) + (128 << 10) - 1);
    let far = (SIZE - (64 << 10), SIZE - 1);
    let ranges = format!("bytes={}-{},{}-{}", near.0, near.1, far.0, far.1);
    let r = client.get_with(&url_b, &[("range", &ranges)]).await;
    let digest_str = digest.to_string();
    let got = parts(&r, &digest_str);
    let want: Vec<_> = [near, far]
        .iter()
        .map(|&(x, y)| ((x as u64, y as u64, SIZE as u64), &data[x..=y]))
        .collect();
    assert_eq!(got.len(), 2, "two parts");
    for (((span, bytes), (want_span, want_bytes)), what) in
        got.iter().zip(&want).zip(["near", "far"])
    {
        assert_eq!(span, want_span, "{what} part's Content-Range");
        assert!(bytes.as_ref() == *want_bytes, "{what} part: other bytes");
    }
    let joined = [("outcome", "joined_peer")];
    assert_eq!(fleet_value(&b, "archway_fleet_fills_total", &joined), 1.0);
    assert_eq!(
        cold_range_bytes(&b, "peer"),
        (near.1 - near.0 + 1) as f64,
        "the part the owner had, from the owner's fill"
    );
    assert_eq!(
        cold_range_bytes(&b, "upstream"),
        (far.1 - far.0 + 1) as f64,
        "the part it had not, from upstream"
    );
    assert!(
        received(&a) < SIZE as u64,
        "answered while A's fill still runs"
    );

    let r = whole_a.await.unwrap();
    assert!(
        r.complete() && r.body.as_ref() == &data[..],
        "A's whole GET"
    );
    committed(&a).await;
    committed(&b).await;
    assert_eq!(
        upstream_blob_gets(&fake, &digest_str),
        [None, Some(format!("bytes={}-{}", far.0, far.1))],
        "one whole GET for the fleet and the far part's GET"
    );
    for (name, replica) in [("A", &a), ("B", &b)] {
        assert!(
            replica.proxy().blob_store().get(&digest).is_some(),
            "{name} keeps it"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}
