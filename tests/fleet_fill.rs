//! One fill per fleet (`[fleet]`), in process: archway replicas (each its own data_dir) on one
//! bucket, the fake registry upstream.
//!
//! - The peer endpoint's guards run everywhere (the bucket may be down for them).
//! - The replica tests need a real S3-protocol server with conditional writes: `moto_server`
//!   (see `tests/e2e/s3.rs`), started by the test. They run with `ARCHWAY_E2E=1` (or
//!   `CI=true`), where a missing moto_server fails them; otherwise they are skipped, said so.

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

use archway::config::Config;
use archway::server::Archway;
use http::StatusCode;
use std::time::{Duration, Instant};
use support::fake_registry::pseudo_random_bytes;
use support::{FakeRegistry, Fault, Kind, Reply, TestClient};

use archway::clock::Clock;
use archway::fleet::PeerSigner;
use e2e::fleet_kit::{
    broken_before_right, fake_owner, fleet_value, free_port, lease_json, list_keys, moto, plant,
    plant_sealed, replica_config, skip, BUCKET, SECRET,
};

fn rejected(a: &Archway, kind: &str, reason: &str) -> f64 {
    fleet_value(
        a,
        "archway_storage_records_rejected_total",
        &[("kind", kind), ("reason", reason)],
    )
}

/// A peer request for `digest` signed as a replica of the test fleet would.
fn signed(digest: &archway::digest::Digest) -> String {
    PeerSigner::new(SECRET.as_bytes(), Clock::system()).authorization("GET", digest)
}

fn fills(replicas: &[&Archway], outcome: &str) -> f64 {
    replicas
        .iter()
        .map(|a| fleet_value(a, "archway_fleet_fills_total", &[("outcome", outcome)]))
        .sum()
}

fn assert_verified(r: &Reply, data: &[u8], what: &str) {
    assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());
    assert!(r.complete(), "{what}: body broke off: {:?}", r.body_error);
    assert!(r.body.as_ref() == data, "{what}: other bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_peer_endpoint_wants_the_secret_and_a_digest() {
    support::init_tracing();
    let fake = FakeRegistry::start().await;
    let data = pseudo_random_bytes(7, 300 << 10);
    let digest = fake.add_blob("lib/app", data.clone());
    let dir = tempfile::tempdir().unwrap();
    // Storage down (nobody listens there): the blob comes from upstream into L1, which the
    // peer endpoint serves from.
    let down = format!("http://127.0.0.1:{}", free_port());
    let (mut cfg, _) = replica_config(&fake, dir.path(), &down, Duration::from_secs(5));
    if let Some(s) = cfg.storage.as_mut() {
        s.s3_timeout = Duration::from_secs(1);
    }
    let archway = Archway::start(cfg).await.unwrap();
    let base = format!("http://{}", archway.local_addr());
    let client = TestClient::new();
    let peer = format!("{base}/_archway/fleet/blobs/{digest}");

    // Nothing here yet: 404 even signed (a peer never makes this replica fetch).
    let r = client
        .get_with(&peer, &[("authorization", &signed(&digest))])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(
        fake.count("GET", Kind::Blob),
        0,
        "no fetch on a peer's behalf"
    );

    let r = client
        .get(&format!("{base}/v2/lib/app/blobs/{digest}"))
        .await;
    assert_verified(&r, &data, "client GET");

    let r = client.get(&peer).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "not signed");
    assert!(!r.text().contains(SECRET));
    // Issue 18: the secret itself opens nothing (it never travels; a listener that got it
    // once could use it for every blob).
    for auth in [
        format!("Bearer {SECRET}"),
        "Bearer not-the-secret".to_owned(),
        format!("Basic {SECRET}"),
        PeerSigner::new(b"another fleet", Clock::system()).authorization("GET", &digest),
        PeerSigner::new(SECRET.as_bytes(), Clock::offset_by_ms(-120_000))
            .authorization("GET", &digest),
    ] {
        let r = client.get_with(&peer, &[("authorization", &auth)]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth}");
    }
    // A signature for another digest does not open this one.
    let other = archway::digest::Digest::sha256_of(b"other");
    let r = client
        .get_with(&peer, &[("authorization", &signed(&other))])
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "signed for another digest"
    );
    for path in ["latest", "lib/app/manifests/latest", "sha256:abc", ""] {
        let r = client
            .get_with(
                &format!("{base}/_archway/fleet/blobs/{path}"),
                &[("authorization", &signed(&digest))],
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path:?}: {}", r.text());
    }
    let auth = signed(&digest);
    let r = client.get_with(&peer, &[("authorization", &auth)]).await;
    assert_verified(&r, &data, "signed peer GET");
    // The same signature again: a replay, refused.
    let r = client.get_with(&peer, &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "a replayed signature");
    assert_eq!(rejected(&archway, "peer", "replay"), 1.0);
    assert_eq!(fake.count("GET", Kind::Blob), 1);
    archway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_fill_a_cold_blob_from_upstream_once() {
    if skip("three_replicas_fill_a_cold_blob_from_upstream_once") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let data = pseudo_random_bytes(11, 2 << 20);
    let digest = fake.add_blob("lib/app", data.clone());
    // Slow enough (about 1.6 s) that every replica asks while the first fill runs.
    fake.fault(
        Some(Kind::Blob),
        Fault::SlowBody {
            chunk: 64 << 10,
            every: Duration::from_millis(50),
        },
    );
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for d in &dirs {
        let (cfg, _) = replica_config(&fake, d.path(), &moto.url(), Duration::from_secs(5));
        replicas.push(Archway::start(cfg).await.unwrap());
    }
    let client = TestClient::new();
    // Two clients on the first replica: the second joins that replica's own fill.
    let gets = replicas.iter().chain(replicas.first()).map(|a| {
        let url = format!("http://{}/v2/lib/app/blobs/{digest}", a.local_addr());
        let client = client.clone();
        async move { client.get(&url).await }
    });
    let replies = futures_util::future::join_all(gets).await;
    for (i, r) in replies.iter().enumerate() {
        assert_verified(r, &data, &format!("replica {i}"));
    }
    assert_eq!(
        fake.count("GET", Kind::Blob),
        1,
        "one upstream GET per fleet"
    );
    let all: Vec<&Archway> = replicas.iter().collect();
    assert_eq!(fills(&all, "owned"), 1.0);
    assert_eq!(fills(&all, "joined_peer"), 2.0);
    assert_eq!(fills(&all, "joined_local"), 1.0);
    assert_eq!(fills(&all, "taken_over") + fills(&all, "lease_error"), 0.0);
    let peer_bytes: f64 = all
        .iter()
        .map(|a| fleet_value(a, "archway_fleet_peer_bytes_total", &[]))
        .sum();
    assert_eq!(
        peer_bytes,
        2.0 * data.len() as f64,
        "both joiners streamed it from the owner"
    );
    // What the clients were told, by source: the owner's fill is upstream's, each replica that
    // joined it is the peer's, and the second client on the first replica joined that
    // replica's own fill (upstream's or the peer's, whichever that replica's was). Counted as
    // each body ends, just after the client read it: waited for.
    let len = data.len() as f64;
    let served = |source| -> f64 {
        let labels = [("source", source)];
        all.iter()
            .map(|a| fleet_value(a, "archway_served_bytes_total", &labels))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while served("peer") + served("upstream") < 4.0 * len && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served("peer") + served("upstream"), 4.0 * len);
    assert!(served("peer") >= 2.0 * len, "{} peer bytes", served("peer"));
    assert_eq!(served("cache") + served("bucket"), 0.0);
    let saved: f64 = all
        .iter()
        .map(|a| fleet_value(a, "archway_upstream_bytes_saved_total", &[]))
        .sum();
    assert_eq!(saved, 3.0 * len, "two peer fills and one join");

    // The owner copies it to the bucket, then releases the lease.
    let blob_key = format!("fleet/blobs/sha256/{}", digest.hex());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = objects_and_leases(&moto);
        if listed == vec![blob_key.clone()] {
            break;
        }
        assert!(Instant::now() < deadline, "bucket holds {listed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A fourth replica, its disk empty, fills from the bucket and says so.
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = replica_config(&fake, dir.path(), &moto.url(), Duration::from_secs(5));
    let late = Archway::start(cfg).await.unwrap();
    let url = format!("http://{}/v2/lib/app/blobs/{digest}", late.local_addr());
    assert_verified(&client.get(&url).await, &data, "the late replica");
    let from_bucket =
        |a: &Archway| fleet_value(a, "archway_served_bytes_total", &[("source", "bucket")]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while from_bucket(&late) < len && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(from_bucket(&late), len);
    assert_eq!(
        fleet_value(&late, "archway_upstream_bytes_saved_total", &[]),
        len
    );
    let miss = [("kind", "blob"), ("result", "miss")];
    assert_eq!(
        fleet_value(&late, "archway_cache_results_total", &miss),
        1.0
    );
    assert_eq!(fake.count("GET", Kind::Blob), 1, "still one upstream GET");
    late.shutdown().await;
    for a in replicas {
        a.shutdown().await;
    }
}

/// An archway on a runtime of its own, so that the test can kill it mid-fill as a crash would:
/// every task of it (its fills, its lease renewal, its connections) stops at once.
fn start_killable(cfg: Config) -> (tokio::runtime::Runtime, Archway) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let archway = rt.block_on(Archway::start(cfg)).unwrap();
        (rt, archway)
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_owners_lease_is_taken_over_and_its_joiners_break_off() {
    if skip("a_dead_owners_lease_is_taken_over_and_its_joiners_break_off") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let data = pseudo_random_bytes(13, 2 << 20);
    let digest = fake.add_blob("lib/app", data.clone());
    let hex = digest.hex().to_owned();
    // The first fill is slow (about 3 s); the takeover's is not.
    fake.fault_times(
        Some(Kind::Blob),
        Fault::SlowBody {
            chunk: 64 << 10,
            every: Duration::from_millis(100),
        },
        1,
    );
    let ttl = Duration::from_secs(2);
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let (cfg_a, _) = replica_config(&fake, dir_a.path(), &moto.url(), ttl);
    let (cfg_b, _) = replica_config(&fake, dir_b.path(), &moto.url(), ttl);
    let (rt_a, owner) = start_killable(cfg_a);
    let joiner = Archway::start(cfg_b).await.unwrap();
    let client = TestClient::new();
    let path = format!("/v2/lib/app/blobs/{digest}");

    let url_a = format!("http://{}{path}", owner.local_addr());
    let to_owner = tokio::spawn({
        let client = client.clone();
        async move { client.get(&url_a).await }
    });
    // The owner holds the lease once it is in the bucket.
    let lease_key = format!("fleet/fills/sha256/{hex}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !list_keys(&moto, "fleet/fills/").contains(&lease_key) {
        assert!(Instant::now() < deadline, "the owner never took the lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url_b = format!("http://{}{path}", joiner.local_addr());
    let through_joiner = tokio::spawn({
        let client = client.clone();
        async move { client.get(&url_b).await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet_value(&joiner, "archway_fleet_peer_bytes_total", &[]) == 0.0 {
        assert!(
            Instant::now() < deadline,
            "the joiner never streamed from the owner"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fleet_value(
            &joiner,
            "archway_fleet_fills_total",
            &[("outcome", "joined_peer")]
        ),
        1.0
    );
    // kill -9, as far as a process can do it to a part of itself.
    rt_a.shutdown_background();
    std::mem::forget(owner);

    let broken = through_joiner.await.unwrap();
    let clean = broken.status == StatusCode::OK && broken.complete();
    assert!(
        !clean,
        "a client streaming from the dead owner got a clean {} ({} bytes)",
        broken.status,
        broken.body.len()
    );
    let _ = to_owner.await;
    // Nothing whole came of the dead fill.
    assert!(!list_keys(&moto, "fleet/blobs/").contains(&format!("fleet/blobs/sha256/{hex}")));

    // Once the lease expired, the retry takes it over and fills from upstream.
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    let retry = client
        .get(&format!("http://{}{path}", joiner.local_addr()))
        .await;
    assert_verified(&retry, &data, "retry after the takeover");
    assert_eq!(
        fleet_value(
            &joiner,
            "archway_fleet_fills_total",
            &[("outcome", "taken_over")]
        ),
        1.0
    );
    assert_eq!(
        fleet_value(&joiner, "archway_fleet_lease_takeovers_total", &[]),
        1.0
    );
    assert_eq!(
        fake.count("GET", Kind::Blob),
        2,
        "the dead owner's and the takeover's"
    );

    // The bucket ends with the whole blob and no lease: nothing partial is left.
    let blob_key = format!("fleet/blobs/sha256/{hex}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = objects_and_leases(&moto);
        if listed == vec![blob_key.clone()] {
            break;
        }
        assert!(Instant::now() < deadline, "bucket holds {listed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let size = moto.request("HEAD", &format!("{BUCKET}/{blob_key}"), &["-I"]);
    assert_eq!(size, 200);
    joiner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_body_that_is_not_a_lease_is_taken_over_not_joined() {
    if skip("a_lease_body_that_is_not_a_lease_is_taken_over_not_joined") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let data = pseudo_random_bytes(17, 200 << 10);
    let digest = fake.add_blob("lib/app", data.clone());
    // Something at the lease key that no replica wrote: nobody to join (the fleet secret would
    // go wherever it pointed), so it is taken over with If-Match.
    let key = format!("{BUCKET}/fleet/fills/sha256/{}", digest.hex());
    let junk =
        r#"{"owner":"http://user@elsewhere.example/x","expires_at_ms":18446744073709551615}"#;
    let put = moto.request(
        "PUT",
        &key,
        &[
            "-H",
            "content-type: application/json",
            "--data-binary",
            junk,
        ],
    );
    assert_eq!(put, 200);
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = replica_config(&fake, dir.path(), &moto.url(), Duration::from_secs(5));
    let archway = Archway::start(cfg).await.unwrap();
    let url = format!("http://{}/v2/lib/app/blobs/{digest}", archway.local_addr());
    let r = TestClient::new().get(&url).await;
    assert_verified(&r, &data, "filled from upstream after the takeover");
    assert_eq!(fake.count("GET", Kind::Blob), 1);
    let all = [&archway];
    let text = archway.proxy().metrics().encode();
    assert_eq!(fills(&all, "taken_over"), 1.0, "{text}");
    assert_eq!(
        fills(&all, "joined_peer") + fills(&all, "lease_error"),
        0.0,
        "{text}"
    );
    assert_eq!(
        fleet_value(&archway, "archway_fleet_peer_bytes_total", &[]),
        0.0
    );
    // Released after the copy: the bucket ends with the blob alone.
    let blob_key = format!("fleet/blobs/sha256/{}", digest.hex());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = objects_and_leases(&moto);
        if listed == vec![blob_key.clone()] {
            break;
        }
        assert!(Instant::now() < deadline, "bucket holds {listed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    archway.shutdown().await;
}

/// Issue 18: a lease a bucket writer planted (no seal) naming a listener of theirs is never
/// joined: the listener sees no request at all, the lease is taken over and the blob filled from
/// upstream. A lease sealed by the fleet naming that listener is joined with a signed request:
/// the listener sees neither the secret nor a bearer token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_lease_gets_no_request_and_no_peer_request_carries_the_secret() {
    if skip("a_forged_lease_gets_no_request_and_no_peer_request_carries_the_secret") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let data = pseudo_random_bytes(19, 200 << 10);
    let digest = fake.add_blob("lib/app", data.clone());
    // The listener closes every connection unanswered.
    let (port, seen) = fake_owner(None).await;
    let owner = format!("http://127.0.0.1:{port}");
    let now = archway::cache::bucket::now_ms();
    let key = format!("fleet/fills/sha256/{}", digest.hex());
    plant(&moto, &key, lease_json(&owner, now + 600_000).as_bytes());
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = replica_config(&fake, dir.path(), &moto.url(), Duration::from_secs(5));
    let archway = Archway::start(cfg).await.unwrap();
    let client = TestClient::new();
    let url = format!("http://{}/v2/lib/app/blobs/{digest}", archway.local_addr());
    let r = client.get(&url).await;
    assert_verified(
        &r,
        &data,
        "filled from upstream after taking the forged lease over",
    );
    assert_eq!(
        seen.accepted(),
        0,
        "the forged lease's owner was contacted: {:?}",
        seen.heads()
    );
    assert_eq!(rejected(&archway, "lease", "unsealed"), 1.0);
    assert_eq!(fills(&[&archway], "taken_over"), 1.0);
    assert_eq!(fills(&[&archway], "joined_peer"), 0.0);

    // Sealed by the fleet (a replica of it names that listener): joined, signed.
    let data2 = pseudo_random_bytes(23, 200 << 10);
    let digest2 = fake.add_blob("lib/app", data2.clone());
    let key2 = format!("fleet/fills/sha256/{}", digest2.hex());
    let now = archway::cache::bucket::now_ms();
    plant_sealed(&moto, &key2, &lease_json(&owner, now + 5_000));
    let url2 = format!("http://{}/v2/lib/app/blobs/{digest2}", archway.local_addr());
    let started = Instant::now();
    let r = client.get(&url2).await;
    assert_verified(
        &r,
        &data2,
        "the owner closed on it: taken over, from upstream",
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let heads = seen.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    for head in &heads {
        let lower = head.to_ascii_lowercase();
        assert!(
            !head.contains(SECRET),
            "the secret left the process: {head}"
        );
        assert!(!lower.contains("bearer"), "{head}");
        assert!(
            lower.contains("authorization: archwaypeer t="),
            "a signed peer request: {head}"
        );
    }
    archway.shutdown().await;
}

/// Issue 18: a lease sealed by the fleet but naming the cloud metadata service, or one of
/// archway's own listeners, fails the egress policy: taken over at once (counted), nothing
/// sent there, no wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_naming_metadata_or_archways_own_listener_is_taken_over() {
    if skip("a_lease_naming_metadata_or_archways_own_listener_is_taken_over") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut cfg, port) = replica_config(&fake, dir.path(), &moto.url(), Duration::from_secs(5));
    let admin = free_port();
    cfg.admin_listen = Some(format!("127.0.0.1:{admin}").parse().unwrap());
    let archway = Archway::start(cfg).await.unwrap();
    let client = TestClient::new();
    let owners = [
        "http://169.254.169.254".to_owned(),
        format!("http://127.0.0.1:{admin}"),
        format!("http://localhost:{port}"),
    ];
    for (i, owner) in owners.iter().enumerate() {
        let data = pseudo_random_bytes(30 + i as u64, 100 << 10);
        let digest = fake.add_blob("lib/app", data.clone());
        let key = format!("fleet/fills/sha256/{}", digest.hex());
        let now = archway::cache::bucket::now_ms();
        plant_sealed(&moto, &key, &lease_json(owner, now + 5_000));
        let started = Instant::now();
        let r = client
            .get(&format!(
                "http://{}/v2/lib/app/blobs/{digest}",
                archway.local_addr()
            ))
            .await;
        assert_verified(&r, &data, owner);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{owner}: {:?}",
            started.elapsed()
        );
        assert_eq!(
            rejected(&archway, "lease", "owner"),
            (i + 1) as f64,
            "{owner}"
        );
    }
    assert_eq!(fills(&[&archway], "taken_over"), 3.0);
    assert_eq!(fills(&[&archway], "joined_peer"), 0.0);
    assert_eq!(
        fleet_value(&archway, "archway_fleet_peer_bytes_total", &[]),
        0.0
    );
    archway.shutdown().await;
}

/// Issue 18: a lease owner that serves wrong bytes breaks off one client body; the next
/// attempt takes its lease over and fills from upstream, right, without asking it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_serving_wrong_bytes_breaks_one_body_then_its_lease_is_taken_over() {
    if skip("an_owner_serving_wrong_bytes_breaks_one_body_then_its_lease_is_taken_over") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let data = pseudo_random_bytes(41, 300 << 10);
    let digest = fake.add_blob("lib/app", data.clone());
    let wrong = pseudo_random_bytes(42, data.len());
    let (port, seen) = fake_owner(Some(wrong)).await;
    let key = format!("fleet/fills/sha256/{}", digest.hex());
    let now = archway::cache::bucket::now_ms();
    // Live for the whole test (the TTL is 10 s): only giving up on the owner gets past it.
    let ttl = Duration::from_secs(10);
    plant_sealed(
        &moto,
        &key,
        &lease_json(&format!("http://127.0.0.1:{port}"), now + 10_000),
    );
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = replica_config(&fake, dir.path(), &moto.url(), ttl);
    let archway = Archway::start(cfg).await.unwrap();
    let client = TestClient::new();
    let url = format!("http://{}/v2/lib/app/blobs/{digest}", archway.local_addr());
    let started = Instant::now();
    let broken = broken_before_right(&client, &url, &data).await;
    assert_eq!(broken, 1, "broken-off bodies before a right one");
    assert!(started.elapsed() < ttl, "{:?}", started.elapsed());
    let r = client.get(&url).await;
    assert_verified(&r, &data, "and from L1 afterwards");
    assert_eq!(seen.accepted(), 1, "the bad owner was asked once");
    assert_eq!(fills(&[&archway], "joined_peer"), 1.0);
    assert_eq!(fills(&[&archway], "taken_over"), 1.0);
    assert_eq!(fake.count("GET", Kind::Blob), 1);
    archway.shutdown().await;
}

/// The bucket's keys but the access records (who may be served each object, beside it): the
/// blobs and the leases these tests watch.
fn objects_and_leases(moto: &e2e::s3::Moto) -> Vec<String> {
    list_keys(moto, "fleet/")
        .into_iter()
        .filter(|k| !k.starts_with("fleet/access/"))
        .collect()
}

/// zstd layers for an old client, asked of two replicas at once: the zstd layer comes from
/// upstream once, its tar is made once in the fleet (the other replica joins that conversion
/// under the tar's fill lease, or finds it in the bucket), both answer the same converted
/// manifest, and the bucket holds the tar.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_convert_a_zstd_layer_once() {
    if skip("two_replicas_convert_a_zstd_layer_once") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let tar = pseudo_random_bytes(21, 2 << 20);
    let zstd = zstd::encode_all(&tar[..], 3).unwrap();
    let diff_id = support::sha256_digest(&tar);
    let layer = fake.add_blob("lib/app", zstd.clone());
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]}
    }))
    .unwrap();
    let config_digest = fake.add_blob("lib/app", config.clone());
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": oci,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": layer.to_string(), "size": zstd.len()}],
    });
    fake.add_manifest("lib/app", Some("v1"), oci, serde_json::to_vec(&m).unwrap());
    // Slow enough that both replicas ask while the first fill runs.
    fake.fault(
        Some(Kind::Blob),
        Fault::SlowBody {
            chunk: 64 << 10,
            every: Duration::from_millis(30),
        },
    );
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for d in &dirs {
        let (cfg, _) = replica_config(&fake, d.path(), &moto.url(), Duration::from_secs(5));
        replicas.push(Archway::start(cfg).await.unwrap());
    }
    let client = TestClient::new();
    let docker = [
        ("user-agent", "docker/20.10.24+dfsg1 go/go1.19.8 git-commit/5d6db84 kernel/6.1.0 os/linux arch/amd64 UpstreamClient(Docker-Client/20.10.24+dfsg1 \\(linux\\))"),
        ("accept", oci),
    ];
    let gets = replicas.iter().map(|a| {
        let url = format!("http://{}/v2/lib/app/manifests/v1", a.local_addr());
        let client = client.clone();
        async move { client.get_with(&url, &docker).await }
    });
    let replies = futures_util::future::join_all(gets).await;
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.status, StatusCode::OK, "replica {i}: {}", r.text());
        assert_eq!(
            r.body, replies[0].body,
            "replica {i}: the same converted manifest"
        );
        assert_eq!(r.json()["layers"][0]["digest"], diff_id.to_string());
    }
    let path = format!("/v2/lib/app/blobs/{layer}");
    assert_eq!(
        fake.count_path("GET", &path),
        1,
        "the zstd layer from upstream once"
    );
    let all: Vec<&Archway> = replicas.iter().collect();
    let converted: f64 = all
        .iter()
        .map(|a| {
            fleet_value(
                a,
                "archway_layer_conversions_total",
                &[("outcome", "converted")],
            )
        })
        .sum();
    assert_eq!(converted, 1.0, "one conversion in the fleet");
    for a in &replicas {
        let r = client
            .get_with(
                &format!("http://{}/v2/lib/app/blobs/{diff_id}", a.local_addr()),
                &docker,
            )
            .await;
        assert_verified(&r, &tar, "the tar from each replica");
    }
    // The tar is in the bucket, for every replica to come.
    let tar_key = format!("fleet/blobs/sha256/{}", diff_id.hex());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !objects_and_leases(&moto).contains(&tar_key) {
        assert!(
            Instant::now() < deadline,
            "bucket holds {:?}",
            objects_and_leases(&moto)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // So is the converted manifest.
    let converted_digest = support::sha256_digest(&replies[0].body);
    let manifest_key = format!("fleet/manifests/sha256/{}", converted_digest.hex());
    while !objects_and_leases(&moto).contains(&manifest_key) {
        assert!(
            Instant::now() < deadline,
            "bucket holds {:?}",
            objects_and_leases(&moto)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A third replica, which never answered the tag, serves both by digest from the bucket:
    // nothing converted again, nothing asked of upstream.
    fake.clear_faults();
    let third_dir = tempfile::tempdir().unwrap();
    let (cfg, _) = replica_config(&fake, third_dir.path(), &moto.url(), Duration::from_secs(5));
    let third = Archway::start(cfg).await.unwrap();
    let before = fake.total();
    let r = client
        .get_with(
            &format!(
                "http://{}/v2/lib/app/manifests/{converted_digest}",
                third.local_addr()
            ),
            &docker,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "third replica: {}", r.text());
    assert_eq!(
        r.body, replies[0].body,
        "third replica: the converted manifest"
    );
    let r = client
        .get_with(
            &format!("http://{}/v2/lib/app/blobs/{diff_id}", third.local_addr()),
            &docker,
        )
        .await;
    assert_verified(&r, &tar, "the tar from the third replica");
    assert_eq!(
        fleet_value(
            &third,
            "archway_layer_conversions_total",
            &[("outcome", "converted")]
        ),
        0.0,
        "the third replica converted nothing"
    );
    assert_eq!(
        fake.count_path("GET", &path),
        1,
        "the zstd layer still once"
    );
    let asked: Vec<_> = fake
        .requests()
        .into_iter()
        .skip(before)
        .filter(|r| {
            r.path.contains(&converted_digest.hex().to_string()) || r.path.contains(diff_id.hex())
        })
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(asked.is_empty(), "upstream asked {asked:?}");
    third.shutdown().await;
    for a in replicas {
        a.shutdown().await;
    }
}
