//! Issue 18's clock, lease and bad-owner cases on a real S3 protocol server (moto) and a real
//! Distribution that wants htpasswd credentials: in-process replicas (so one's clock can be set
//! ahead), the upstream behind a counting proxy. Runs with `ARCHWAY_E2E=1` (or `CI=true`).

mod support;

#[allow(dead_code)]
mod e2e {
    pub mod counting_proxy;
    pub mod fixtures;
    pub mod fleet_kit;
    pub mod http;
    pub mod layout;
    pub mod procs;
    pub mod s3;
    pub mod tools;
}

use archway::config::{Config, Credentials, Secret, UpstreamConfig};
use archway::server::Archway;
use e2e::counting_proxy::CountingProxy;
use e2e::fixtures::{self, FixtureSet};
use e2e::fleet_kit::{
    broken_before_right, fleet_value, lease_json, list_keys, moto, plant_sealed, replica_config,
    skip,
};
use e2e::procs::run_ok;
use e2e::s3::Moto;
use e2e::tools::{skopeo, temp_dir, Registry};
use http::StatusCode;
use std::time::{Duration, Instant};
use support::{FakeRegistry, TestClient};

const USER: &str = "archway-bot";
const PASSWORD: &str = "upstream-pw-1818";
const REPO: &str = "team/app";
const ACCEPT: &str =
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";

/// Distribution wanting `USER` (htpasswd) holding the fixtures' `:oci` index under `REPO`,
/// behind a counting proxy; moto with the fleet's bucket.
struct World {
    _registry: Registry,
    _staging: Registry,
    proxy: CountingProxy,
    moto: Moto,
    fx: FixtureSet,
    _tmp: tempfile::TempDir,
}

fn world() -> World {
    let tmp = temp_dir("fleetdist");
    let htpasswd = tmp.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("{USER}:{}\n", bcrypt::hash(PASSWORD, 5).unwrap()),
    )
    .unwrap();
    let registry = Registry::start_with(&format!(
        "auth:\n  htpasswd:\n    realm: private\n    path: {}\n",
        htpasswd.display()
    ));
    let staging = Registry::start();
    let fx = FixtureSet::build(fixtures::fresh_seed(), false);
    fx.push(&staging.url(), &[REPO]);
    let host = |u: String| u.trim_start_matches("http://").to_owned();
    run_ok(
        &mut skopeo(
            tmp.path(),
            &[
                "copy",
                "--all",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                "--dest-creds",
                &format!("{USER}:{PASSWORD}"),
                &format!("docker://{}/{REPO}:oci", host(staging.url())),
                &format!("docker://{}/{REPO}:oci", host(registry.url())),
            ],
        ),
        Duration::from_secs(300),
    );
    let proxy = CountingProxy::start(&registry.url());
    World {
        _registry: registry,
        _staging: staging,
        proxy,
        moto: moto(),
        fx,
        _tmp: tmp,
    }
}

/// A replica whose only upstream, `private` (the default), is the counting proxy in front of
/// Distribution, with its credentials.
fn config(w: &World, dir: &std::path::Path, lease_ttl: Duration, dummy: &FakeRegistry) -> Config {
    let (mut c, _) = replica_config(dummy, dir, &w.moto.url(), lease_ttl);
    let mut u = UpstreamConfig::from_url(Some("private"), &w.proxy.url()).unwrap();
    u.default = true;
    u.connect_timeout = Duration::from_secs(2);
    u.read_timeout = Duration::from_secs(5);
    u.credentials = Some(Credentials {
        username: USER.into(),
        password: Secret::new(PASSWORD),
    });
    c.upstreams = vec![u];
    c
}

/// The tag's requests upstream (GET and HEAD, challenges included).
fn tag_requests(w: &World) -> usize {
    let path = format!("/v2/{REPO}/manifests/oci");
    w.proxy.count("GET", &path) + w.proxy.count("HEAD", &path)
}

async fn ask(a: &Archway, w: &World) {
    let url = format!("http://{}/v2/{REPO}/manifests/oci", a.local_addr());
    let r = TestClient::new()
        .get_with(&url, &[("accept", ACCEPT)])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.body.as_ref() == w.fx.tag("oci").data.as_ref(),
        "the tag's index"
    );
}

/// The proxy's own runtime may only be dropped outside the test's.
async fn finish(w: World) {
    tokio::task::spawn_blocking(move || drop(w)).await.unwrap();
}

fn rejected(a: &Archway, kind: &str, reason: &str) -> f64 {
    fleet_value(
        a,
        "archway_storage_records_rejected_total",
        &[("kind", kind), ("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_whose_clock_runs_ahead_does_not_date_the_fleets_tags_on_distribution() {
    if skip("a_replica_whose_clock_runs_ahead_does_not_date_the_fleets_tags_on_distribution") {
        return;
    }
    support::init_tracing();
    let w = tokio::task::spawn_blocking(world).await.unwrap();
    let dummy = FakeRegistry::start().await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let mut cfg = config(&w, d.path(), Duration::from_secs(5), &dummy);
        cfg.cache.tag_ttl = Duration::from_secs(300);
        if let (0, Some(f)) = (i, cfg.fleet.as_mut()) {
            f.clock = archway::clock::Clock::offset_by_ms(3_600_000);
        }
        replicas.push(Archway::start(cfg).await.unwrap());
    }
    ask(&replicas[0], &w).await;
    let after_first = tag_requests(&w);
    assert!(after_first >= 1, "the fast replica asked upstream");
    let deadline = Instant::now() + Duration::from_secs(10);
    while list_keys(&w.moto, "fleet/tags/").is_empty() {
        assert!(Instant::now() < deadline, "no tag record written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ask(&replicas[1], &w).await;
    let after_second = tag_requests(&w);
    assert!(
        after_second > after_first,
        "the other replica took a record dated an hour ahead as fresh"
    );
    assert!(rejected(&replicas[1], "tag", "future") >= 1.0);
    // Its own answer stands, dated by its own clock: a fresh hit now.
    ask(&replicas[1], &w).await;
    assert_eq!(tag_requests(&w), after_second);
    for a in replicas {
        a.shutdown().await;
    }
    finish(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_never_expiring_tag_lease_delays_nothing_and_is_swept_on_distribution() {
    if skip("a_never_expiring_tag_lease_delays_nothing_and_is_swept_on_distribution") {
        return;
    }
    support::init_tracing();
    let w = tokio::task::spawn_blocking(world).await.unwrap();
    let dummy = FakeRegistry::start().await;
    let forever = archway::cache::bucket::now_ms() + 10 * 365 * 24 * 3600 * 1000;
    let wanted = format!("fleet/fills/tags/private/{REPO}/oci");
    let unwanted = format!("fleet/fills/tags/private/{REPO}/nobody-asks");
    for key in [&wanted, &unwanted] {
        plant_sealed(&w.moto, key, &lease_json("http://127.0.0.1:9", forever));
    }
    let ttl = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&w, dir.path(), ttl, &dummy);
    if let Some(f) = cfg.fleet.as_mut() {
        f.sweep_interval = Duration::from_secs(1);
    }
    let archway = Archway::start(cfg).await.unwrap();
    let started = Instant::now();
    ask(&archway, &w).await;
    let took = started.elapsed();
    assert!(
        took < ttl,
        "the revalidation waited {took:?} on a never-expiring lease"
    );
    assert_eq!(
        fleet_value(
            &archway,
            "archway_fleet_fetches_total",
            &[("what", "tag"), ("outcome", "taken_over")]
        ),
        1.0
    );
    assert!(rejected(&archway, "lease", "future") >= 1.0);
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let left = list_keys(&w.moto, "fleet/fills/");
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "leases left: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(fleet_value(&archway, "archway_fleet_leases_swept_total", &[]) >= 1.0);
    archway.shutdown().await;
    finish(w).await;
}

/// Issue 18 on Distribution: a lease owner that serves wrong bytes (a listener standing in for
/// a replica, named by a lease sealed with the fleet's key) breaks off one client body; the
/// next request takes the lease over and fills from Distribution, right, without asking the
/// owner again, and the bucket gets the right bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_serving_wrong_bytes_is_taken_over_on_distribution() {
    if skip("an_owner_serving_wrong_bytes_is_taken_over_on_distribution") {
        return;
    }
    support::init_tracing();
    let w = tokio::task::spawn_blocking(world).await.unwrap();
    let dummy = FakeRegistry::start().await;
    // The largest blob of the `:oci` index's images: the only tag Distribution was given.
    let objects = w.fx.tag_objects("oci");
    let blob =
        w.fx.blobs()
            .into_iter()
            .filter(|b| objects.contains(&("blobs", b.digest.clone())))
            .max_by_key(|b| b.data.len())
            .expect("a blob of the :oci images")
            .clone();
    let wrong: Vec<u8> = blob.data.iter().map(|b| b ^ 0x5a).collect();
    let (port, seen) = e2e::fleet_kit::fake_owner(Some(wrong)).await;
    // Live for the whole test (the TTL is 10 s): only giving up on the owner gets past it.
    let ttl = Duration::from_secs(10);
    let now = archway::cache::bucket::now_ms();
    plant_sealed(
        &w.moto,
        &format!("fleet/fills/sha256/{}", blob.hex()),
        &lease_json(&format!("http://127.0.0.1:{port}"), now + 10_000),
    );
    let dir = tempfile::tempdir().unwrap();
    let archway = Archway::start(config(&w, dir.path(), ttl, &dummy))
        .await
        .unwrap();
    let client = TestClient::new();
    let url = format!(
        "http://{}/v2/{REPO}/blobs/{}",
        archway.local_addr(),
        blob.digest
    );
    let started = Instant::now();
    let broken = broken_before_right(&client, &url, &blob.data).await;
    assert_eq!(broken, 1, "broken-off bodies before a right one");
    assert!(started.elapsed() < ttl, "{:?}", started.elapsed());
    assert_eq!(seen.accepted(), 1, "the bad owner was asked once");
    let outcome = |o: &str| fleet_value(&archway, "archway_fleet_fills_total", &[("outcome", o)]);
    assert_eq!(outcome("joined_peer"), 1.0);
    assert_eq!(outcome("taken_over"), 1.0);
    let path = format!("/v2/{REPO}/blobs/{}", blob.digest);
    assert_eq!(
        w.proxy.count("GET", &path),
        1,
        "Distribution served it once:\n{}",
        w.proxy.show()
    );
    // The fill's copy in the bucket is the right one.
    let key = format!("fleet/blobs/sha256/{}", blob.hex());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !list_keys(&w.moto, "fleet/blobs/").contains(&key) {
        assert!(Instant::now() < deadline, "{key} never reached the bucket");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let bucket = e2e::fleet_kit::BUCKET;
    let stored = w.moto.get_object(bucket, &key).expect("the bucket's copy");
    assert!(
        stored == blob.data.as_ref(),
        "the bucket holds the right bytes"
    );
    let r = client.get(&url).await;
    assert!(r.status == StatusCode::OK && r.complete() && r.body == blob.data);
    archway.shutdown().await;
    finish(w).await;
}
