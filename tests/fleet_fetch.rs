//! One upstream fetch per fleet for manifests by digest and for tag revalidations (`[fleet]`),
//! in process: replicas (each its own data_dir) on one moto bucket, the fake registry upstream
//! counting requests. Runs with `ARCHWAY_E2E=1` (or `CI=true`), like `tests/fleet_fill.rs`.

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

use archway::server::Archway;
use e2e::fleet_kit::{
    fleet_value, lease_json, list_keys, moto, plant, plant_sealed, replica_config, skip,
};
use e2e::s3::Moto;
use http::StatusCode;
use std::time::{Duration, Instant};
use support::fake_registry::{DOCKER_MANIFEST, OCI_MANIFEST};
use support::{FakeRegistry, Fault, Kind, Reply, TestClient};

const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json";

/// A manifest of about 6 KB (padded with an annotation), so that a slow upstream body keeps
/// its GET in flight while the other replicas ask.
fn manifest(seed: &str) -> Vec<u8> {
    let pad = seed.repeat(6000 / seed.len().max(1));
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}},"layers":[],"annotations":{{"pad":"{pad}"}}}}"#
    )
    .into_bytes()
}

fn rejected(replicas: &[Archway], kind: &str, reason: &str) -> f64 {
    replicas
        .iter()
        .map(|a| {
            fleet_value(
                a,
                "archway_storage_records_rejected_total",
                &[("kind", kind), ("reason", reason)],
            )
        })
        .sum()
}

const TEN_YEARS_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

fn tag_record(digest: &archway::digest::Digest, size: usize, confirmed_at_ms: u64) -> String {
    format!(
        r#"{{"digest":"{digest}","media_type":"{DOCKER_MANIFEST}","size":{size},"confirmed_at_ms":{confirmed_at_ms}}}"#
    )
}

fn fetches(replicas: &[Archway], what: &str, outcome: &str) -> f64 {
    replicas
        .iter()
        .map(|a| {
            fleet_value(
                a,
                "archway_fleet_fetches_total",
                &[("what", what), ("outcome", outcome)],
            )
        })
        .sum()
}

/// Each replica asked twice at the same moment for `path`.
async fn ask_all(replicas: &[Archway], path: &str) -> Vec<Reply> {
    let client = TestClient::new();
    let gets = replicas.iter().chain(replicas.iter()).map(|a| {
        let url = format!("http://{}{path}", a.local_addr());
        let client = client.clone();
        async move { client.get_with(&url, &[("accept", ACCEPT)]).await }
    });
    futures_util::future::join_all(gets).await
}

fn assert_all(replies: &[Reply], bytes: &[u8], what: &str) {
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.status, StatusCode::OK, "{what} #{i}: {}", r.text());
        assert!(r.body.as_ref() == bytes, "{what} #{i}: other bytes");
    }
}

async fn wait_no_leases(moto: &Moto) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = list_keys(moto, "fleet/fills/");
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "leases left: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manifest_and_a_tag_revalidation_reach_upstream_once_per_fleet() {
    if skip("a_manifest_and_a_tag_revalidation_reach_upstream_once_per_fleet") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let tagged = manifest("t");
    let tagged_digest = fake.add_manifest("lib/app", Some("v1"), DOCKER_MANIFEST, tagged.clone());
    let by_digest = manifest("d");
    let by_digest_digest = fake.add_manifest("lib/app", None, DOCKER_MANIFEST, by_digest.clone());
    // Manifest bodies take about 1.2 s: every replica asks while the first GET runs.
    fake.fault(
        Some(Kind::Manifest),
        Fault::SlowBody {
            chunk: 256,
            every: Duration::from_millis(50),
        },
    );
    let tag_ttl = Duration::from_secs(3);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for d in &dirs {
        let (mut cfg, _) = replica_config(&fake, d.path(), &moto.url(), Duration::from_secs(5));
        cfg.cache.tag_ttl = tag_ttl;
        replicas.push(Archway::start(cfg).await.unwrap());
    }

    // A cold tag: one GET by tag across the fleet, no HEAD.
    let replies = ask_all(&replicas, "/v2/lib/app/manifests/v1").await;
    assert_all(&replies, &tagged, "tag");
    let confirmed = Instant::now();
    assert_eq!(fake.count_path("GET", "/v2/lib/app/manifests/v1"), 1);
    assert_eq!(fake.count("HEAD", Kind::Manifest), 0);
    assert_eq!(fetches(&replicas, "tag", "owned"), 1.0);
    assert_eq!(fetches(&replicas, "tag", "lease_error"), 0.0);

    // A manifest by digest: one GET across the fleet.
    let path = format!("/v2/lib/app/manifests/{by_digest_digest}");
    let replies = ask_all(&replicas, &path).await;
    assert_all(&replies, &by_digest, "digest");
    assert_eq!(fake.count_path("GET", &path), 1, "one GET by digest");
    assert_eq!(fetches(&replicas, "manifest", "owned"), 1.0);
    assert_eq!(fetches(&replicas, "manifest", "lease_error"), 0.0);
    assert_eq!(
        fake.count_path("GET", &format!("/v2/lib/app/manifests/{tagged_digest}")),
        0
    );

    // Past the tag's TTL: one revalidating HEAD across the fleet, no GET.
    let wait = (confirmed + tag_ttl + Duration::from_millis(300))
        .saturating_duration_since(Instant::now());
    tokio::time::sleep(wait).await;
    let replies = ask_all(&replicas, "/v2/lib/app/manifests/v1").await;
    assert_all(&replies, &tagged, "revalidated tag");
    // (The manifests by digest may each see a HEAD per replica: the access check.)
    assert_eq!(
        fake.count_path("HEAD", "/v2/lib/app/manifests/v1"),
        1,
        "one HEAD per tag per TTL"
    );
    assert_eq!(fake.count_path("GET", "/v2/lib/app/manifests/v1"), 1);
    assert_eq!(fetches(&replicas, "tag", "owned"), 2.0);
    wait_no_leases(&moto).await;
    for a in replicas {
        a.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_replicas_manifest_lease_is_taken_over() {
    if skip("a_dead_replicas_manifest_lease_is_taken_over") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let bytes = manifest("x");
    let digest = fake.add_manifest("lib/app", None, OCI_MANIFEST, bytes.clone());
    // A lease left by a replica that died 10 s ago (a 5 s TTL, never renewed).
    let key = format!("fleet/fills/manifests/sha256/{}", digest.hex());
    let expired_at = archway::cache::bucket::now_ms() - 10_000;
    let body = format!(r#"{{"owner":"http://127.0.0.1:9","expires_at_ms":{expired_at}}}"#);
    let put = moto.request(
        "PUT",
        &format!("{}/{key}", e2e::fleet_kit::BUCKET),
        &[
            "-H",
            "content-type: application/json",
            "--data-binary",
            &body,
        ],
    );
    assert_eq!(put, 200, "lease planted");
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = replica_config(&fake, dir.path(), &moto.url(), Duration::from_secs(5));
    let archway = Archway::start(cfg).await.unwrap();
    let client = TestClient::new();
    let url = format!(
        "http://{}/v2/lib/app/manifests/{digest}",
        archway.local_addr()
    );
    let started = Instant::now();
    let r = client.get_with(&url, &[("accept", ACCEPT)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.body.as_ref() == bytes.as_slice());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no wait on a dead owner"
    );
    let replicas = [archway];
    assert_eq!(fetches(&replicas, "manifest", "taken_over"), 1.0);
    assert_eq!(
        fleet_value(&replicas[0], "archway_fleet_lease_takeovers_total", &[]),
        1.0
    );
    assert_eq!(
        fake.count_path("GET", &format!("/v2/lib/app/manifests/{digest}")),
        1
    );
    // Released after the manifest reached the bucket.
    wait_no_leases(&moto).await;
    assert!(list_keys(&moto, "fleet/manifests/")
        .contains(&format!("fleet/manifests/sha256/{}", digest.hex())));
    let [archway] = replicas;
    archway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_replica_sweeps_the_leases_dead_replicas_left() {
    if skip("one_replica_sweeps_the_leases_dead_replicas_left") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let bucket = e2e::fleet_kit::BUCKET;
    let now = archway::cache::bucket::now_ms();
    let plant = |key: &str, expires_at_ms: u64| {
        let body = format!(r#"{{"owner":"http://127.0.0.1:9","expires_at_ms":{expires_at_ms}}}"#);
        let put = moto.request(
            "PUT",
            &format!("{bucket}/{key}"),
            &[
                "-H",
                "content-type: application/json",
                "--data-binary",
                &body,
            ],
        );
        assert_eq!(put, 200, "{key} planted");
    };
    // Left by dead replicas: a blob's, a manifest's and a tag's lease, long expired.
    let dead = [
        format!("fleet/fills/sha256/{}", "a".repeat(64)),
        format!("fleet/fills/manifests/sha256/{}", "b".repeat(64)),
        "fleet/fills/tags/fake/lib/app/v1".to_owned(),
    ];
    for key in &dead {
        plant(key, now - 60_000);
    }
    assert_eq!(list_keys(&moto, "fleet/fills/").len(), 3, "planted");
    // A lease still good for 25 s (believable: the replicas allow 30 s of clock skew here)
    // stays. It is sealed like a replica's: an unsealed one is not a lease of the fleet's.
    let live = format!("fleet/fills/sha256/{}", "c".repeat(64));
    e2e::fleet_kit::plant_sealed(
        &moto,
        &live,
        &lease_json("http://127.0.0.1:9", now + 25_000),
    );
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for d in &dirs {
        let (mut cfg, _) = replica_config(&fake, d.path(), &moto.url(), Duration::from_secs(1));
        if let Some(f) = cfg.fleet.as_mut() {
            f.sweep_interval = Duration::from_secs(1);
            f.max_clock_skew = Duration::from_secs(30);
        }
        replicas.push(Archway::start(cfg).await.unwrap());
    }
    // Unwritten for 3 TTLs (3 s) and expired: swept within a few rounds.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = list_keys(&moto, "fleet/fills/");
        if left == vec![live.clone()] {
            break;
        }
        assert!(Instant::now() < deadline, "leases left: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let swept: f64 = replicas
        .iter()
        .map(|a| fleet_value(a, "archway_fleet_leases_swept_total", &[]))
        .sum();
    assert_eq!(swept, 3.0, "each stale lease deleted once");
    // The sweep's own lease is released after each round.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(list_keys(&moto, "fleet/fills/").contains(&live));
    for a in replicas {
        a.shutdown().await;
    }
}

/// No moto needed: the bucket is down (nothing listens at its endpoint), so every lease fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_bucket_down_a_tag_goes_to_upstream_once_and_the_lease_error_is_counted() {
    support::init_tracing();
    let fake = FakeRegistry::start().await;
    let bytes = manifest("e");
    let digest = fake.add_manifest("lib/app", Some("v1"), DOCKER_MANIFEST, bytes.clone());
    let blob = support::fake_registry::pseudo_random_bytes(3, 100 << 10);
    let blob_digest = fake.add_blob("lib/app", blob.clone());
    let dir = tempfile::tempdir().unwrap();
    let down = format!("http://127.0.0.1:{}", e2e::fleet_kit::free_port());
    let (mut cfg, _) = replica_config(&fake, dir.path(), &down, Duration::from_secs(5));
    if let Some(s) = cfg.storage.as_mut() {
        s.s3_timeout = Duration::from_secs(1);
    }
    let archway = Archway::start(cfg).await.unwrap();
    let base = format!("http://{}", archway.local_addr());
    let client = TestClient::new();
    let r = client
        .get_with(
            &format!("{base}/v2/lib/app/manifests/v1"),
            &[("accept", ACCEPT)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.body.as_ref() == bytes.as_slice());
    let r = client
        .get(&format!("{base}/v2/lib/app/blobs/{blob_digest}"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.complete() && r.body.as_ref() == blob.as_slice());
    let replicas = [archway];
    assert_eq!(fetches(&replicas, "tag", "lease_error"), 1.0);
    assert_eq!(fetches(&replicas, "tag", "owned"), 0.0);
    // A blob whose bucket read failed goes to upstream without trying its lease: counted as
    // a bypass of the bucket.
    assert_eq!(fake.count("GET", Kind::Blob), 1);
    assert!(
        fleet_value(
            &replicas[0],
            "archway_storage_bypassed_total",
            &[("what", "blob_read")]
        ) >= 1.0
    );
    assert_eq!(fake.count_path("GET", "/v2/lib/app/manifests/v1"), 1);
    assert_eq!(
        fake.count_path("GET", &format!("/v2/lib/app/manifests/{digest}")),
        0
    );
    let [archway] = replicas;
    archway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweep_aborts_multipart_uploads_a_dead_replica_left() {
    if skip("the_sweep_aborts_multipart_uploads_a_dead_replica_left") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let bucket = e2e::fleet_kit::BUCKET;
    // A copy cut short by a kill -9: its upload begun, never completed nor aborted. And one
    // outside blobs/ that is none of archway's business.
    let orphan = format!("fleet/blobs/sha256/{}", "d".repeat(64));
    let other = "elsewhere/big-file".to_owned();
    for key in [&orphan, &other] {
        let started = moto.request("POST", &format!("{bucket}/{key}?uploads"), &[]);
        assert_eq!(started, 200, "upload of {key} begun");
    }
    let open = e2e::fleet_kit::open_uploads(&moto, "");
    assert!(open.contains(&orphan) && open.contains(&other), "{open:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut cfg, _) = replica_config(&fake, dir.path(), &moto.url(), Duration::from_secs(5));
    if let Some(f) = cfg.fleet.as_mut() {
        f.sweep_interval = Duration::from_secs(1);
        f.orphaned_upload_age = Duration::from_secs(1);
    }
    let archway = Archway::start(cfg).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let open = e2e::fleet_kit::open_uploads(&moto, "");
        if !open.contains(&orphan) {
            assert!(open.contains(&other), "only blobs/ is swept: {open:?}");
            break;
        }
        assert!(Instant::now() < deadline, "still open: {open:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        fleet_value(
            &archway,
            "archway_fleet_orphaned_uploads_aborted_total",
            &[]
        ),
        1.0
    );
    assert!(
        list_keys(&moto, "fleet/blobs/").is_empty(),
        "an aborted upload leaves no object"
    );
    archway.shutdown().await;
}

/// Issue 18: a tag record a bucket writer put there (no seal), repointing a tag to another
/// image's manifest and dated ten years ahead, is not believed by any replica, a new one
/// included: each asks upstream and serves the tag's real manifest. A record sealed by the
/// fleet but dated ahead of the clock skew is not believed either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_tag_record_is_not_believed() {
    if skip("a_forged_tag_record_is_not_believed") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let real = manifest("r");
    fake.add_manifest("lib/app", Some("v1"), DOCKER_MANIFEST, real.clone());
    fake.add_manifest("lib/app", Some("v2"), DOCKER_MANIFEST, real.clone());
    let other = manifest("o");
    let other_digest = fake.add_manifest("lib/other", None, DOCKER_MANIFEST, other.clone());
    let future = archway::cache::bucket::now_ms() + TEN_YEARS_MS;
    let forged = tag_record(&other_digest, other.len(), future);
    plant(&moto, "fleet/tags/fake/lib/app/v1", forged.as_bytes());
    plant_sealed(&moto, "fleet/tags/fake/lib/app/v2", &forged);
    // The manifest it points to is in the bucket too (content-addressed, verifiable).
    plant(
        &moto,
        &format!("fleet/manifests/sha256/{}", other_digest.hex()),
        &other,
    );
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for d in &dirs {
        let (cfg, _) = replica_config(&fake, d.path(), &moto.url(), Duration::from_secs(5));
        replicas.push(Archway::start(cfg).await.unwrap());
    }
    let client = TestClient::new();
    for (i, a) in replicas.iter().enumerate() {
        for tag in ["v1", "v2"] {
            let url = format!("http://{}/v2/lib/app/manifests/{tag}", a.local_addr());
            let r = client.get_with(&url, &[("accept", ACCEPT)]).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert!(
                r.body.as_ref() == real.as_slice(),
                "replica {i}, {tag}: the forged record's manifest was served"
            );
        }
    }
    assert!(rejected(&replicas, "tag", "unsealed") >= 1.0);
    assert!(rejected(&replicas, "tag", "future") >= 1.0);
    // Upstream was asked for each tag (the first replica's answer may serve the second).
    assert!(fake.count_path("GET", "/v2/lib/app/manifests/v1") >= 1);
    assert!(fake.count_path("GET", "/v2/lib/app/manifests/v2") >= 1);
    for a in replicas {
        a.shutdown().await;
    }
}

/// Issue 18: a tag lease that claims to hold for ten years delays no revalidation (it is
/// taken over at once, counted) and the sweep removes one nobody wants.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_never_expiring_tag_lease_delays_nothing_and_is_swept() {
    if skip("a_never_expiring_tag_lease_delays_nothing_and_is_swept") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let bytes = manifest("n");
    fake.add_manifest("lib/app", Some("v1"), DOCKER_MANIFEST, bytes.clone());
    let forever = archway::cache::bucket::now_ms() + TEN_YEARS_MS;
    let wanted = "fleet/fills/tags/fake/lib/app/v1";
    let unwanted = "fleet/fills/tags/fake/lib/app/nobody-asks";
    for key in [wanted, unwanted] {
        plant_sealed(&moto, key, &lease_json("http://127.0.0.1:9", forever));
    }
    let ttl = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let (mut cfg, _) = replica_config(&fake, dir.path(), &moto.url(), ttl);
    if let Some(f) = cfg.fleet.as_mut() {
        f.sweep_interval = Duration::from_secs(1);
    }
    let archway = Archway::start(cfg).await.unwrap();
    let url = format!("http://{}/v2/lib/app/manifests/v1", archway.local_addr());
    let started = Instant::now();
    let r = TestClient::new()
        .get_with(&url, &[("accept", ACCEPT)])
        .await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.body.as_ref() == bytes.as_slice());
    assert!(
        took < ttl,
        "the revalidation waited {took:?} on a never-expiring lease"
    );
    let replicas = [archway];
    assert_eq!(fetches(&replicas, "tag", "taken_over"), 1.0);
    assert!(rejected(&replicas, "lease", "future") >= 1.0);
    // Unwritten for 3 TTLs (6 s): the sweep deletes it.
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let left = list_keys(&moto, "fleet/fills/");
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "leases left: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(fleet_value(&replicas[0], "archway_fleet_leases_swept_total", &[]) >= 1.0);
    let [archway] = replicas;
    archway.shutdown().await;
}

/// Issue 18: a replica whose clock runs an hour ahead dates its tag records (and leases) an
/// hour ahead; another replica does not take them as confirmed in its future: it asks
/// upstream itself, and its own record is dated by its own clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_whose_clock_runs_ahead_does_not_date_the_fleets_tags() {
    if skip("a_replica_whose_clock_runs_ahead_does_not_date_the_fleets_tags") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let bytes = manifest("c");
    fake.add_manifest("lib/app", Some("v1"), DOCKER_MANIFEST, bytes.clone());
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let (mut cfg, _) = replica_config(&fake, d.path(), &moto.url(), Duration::from_secs(5));
        cfg.cache.tag_ttl = Duration::from_secs(300);
        if let (0, Some(f)) = (i, cfg.fleet.as_mut()) {
            f.clock = archway::clock::Clock::offset_by_ms(3_600_000);
        }
        replicas.push(Archway::start(cfg).await.unwrap());
    }
    let client = TestClient::new();
    let ask = |a: &Archway| {
        let url = format!("http://{}/v2/lib/app/manifests/v1", a.local_addr());
        let client = client.clone();
        let bytes = bytes.clone();
        async move {
            let r = client.get_with(&url, &[("accept", ACCEPT)]).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert!(r.body.as_ref() == bytes.as_slice());
        }
    };
    ask(&replicas[0]).await;
    let upstream = |fake: &FakeRegistry| {
        fake.count_path("GET", "/v2/lib/app/manifests/v1") + fake.count("HEAD", Kind::Manifest)
    };
    assert_eq!(upstream(&fake), 1);
    // The record the fast replica wrote is dated an hour ahead.
    let deadline = Instant::now() + Duration::from_secs(10);
    while list_keys(&moto, "fleet/tags/").is_empty() {
        assert!(Instant::now() < deadline, "no tag record written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ask(&replicas[1]).await;
    assert_eq!(
        upstream(&fake),
        2,
        "the other replica took a record dated an hour ahead as fresh"
    );
    assert!(rejected(&replicas[1..], "tag", "future") >= 1.0);
    // Its own answer stands, dated by its own clock: a fresh hit now.
    ask(&replicas[1]).await;
    assert_eq!(upstream(&fake), 2);
    for a in replicas {
        a.shutdown().await;
    }
}

/// Refresh-ahead in a fleet: two replicas serving one hot tag across TTL boundaries revalidate
/// it in the background under the tag's lease, so upstream sees one HEAD per refresh
/// fleet-wide (not one per replica), every HEAD a background one, and no client waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_tag_is_refreshed_ahead_once_per_fleet() {
    if skip("a_hot_tag_is_refreshed_ahead_once_per_fleet") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let bytes = manifest("h");
    let digest = fake.add_manifest("lib/app", None, DOCKER_MANIFEST, bytes.clone());
    fake.set_tag("lib/app", "hot", &digest);
    let stall = Duration::from_millis(500);
    fake.set_head_delay(Some(Kind::Manifest), stall);
    // Due 2.5 s into a 4 s TTL; the HEAD takes 0.5 s: a refresh about every 3 s.
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for d in &dirs {
        let (mut cfg, _) = replica_config(&fake, d.path(), &moto.url(), Duration::from_secs(5));
        cfg.cache.tag_ttl = Duration::from_secs(4);
        cfg.cache.refresh_ahead_window = Some(Duration::from_millis(1500));
        replicas.push(Archway::start(cfg).await.unwrap());
    }
    let path = "/v2/lib/app/manifests/hot";
    let first = ask_all(&replicas, path).await;
    assert_all(&first, &bytes, "cold tag");

    // Both replicas serve the tag every 100 ms for 13 s: four refreshes are due.
    let client = TestClient::new();
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(13) {
        for a in &replicas {
            let t = Instant::now();
            let r = client
                .get_with(
                    &format!("http://{}{path}", a.local_addr()),
                    &[("accept", ACCEPT)],
                )
                .await;
            slowest = slowest.max(t.elapsed());
            assert_eq!(r.status, StatusCode::OK);
            assert!(r.body.as_ref() == bytes.as_slice());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ahead = |outcome: &str| -> f64 {
        replicas
            .iter()
            .map(|a| fleet_value(a, "archway_refresh_ahead_total", &[("outcome", outcome)]))
            .sum()
    };
    // A refresh still running at the end: let it finish (nothing schedules another).
    let waiting = Instant::now();
    while replicas
        .iter()
        .any(|a| fleet_value(a, "archway_refresh_ahead_in_flight", &[]) > 0.0)
    {
        assert!(
            waiting.elapsed() < Duration::from_secs(5),
            "a refresh never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let heads = fake.count_path("HEAD", path);
    // One replica per refresh would be 8 or so: the lease makes it one per TTL fleet-wide.
    assert!((3..=5).contains(&heads), "{heads} HEADs upstream");
    // Every upstream HEAD was a replica's background refresh (none a client's)...
    assert_eq!(
        heads as f64,
        ahead("unchanged") + ahead("refreshed"),
        "HEADs upstream against background refreshes"
    );
    // ...and the other replica's turn found the answer in the bucket.
    assert!(ahead("not_needed") >= 2.0, "{}", ahead("not_needed"));
    assert_eq!(ahead("failed"), 0.0);
    assert_eq!(
        fake.count_path("GET", path),
        1,
        "one GET by tag, then HEADs"
    );
    assert!(slowest < stall, "a client waited {slowest:?}");
    for a in replicas {
        a.shutdown().await;
    }
}
