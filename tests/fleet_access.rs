//! Replicas agree on who may be served a cached object through the bucket's sealed access
//! records (`<prefix>access/…`), and believe no record the fleet did not seal. In process:
//! replicas on one moto bucket in front of the fake registry `fake` (anonymous, the default)
//! and `private` (reached with credentials). Runs with `ARCHWAY_E2E=1` (or `CI=true`), like
//! `tests/fleet_fetch.rs`.

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

use archway::config::{Config, Credentials, Secret};
use archway::server::Archway;
use e2e::fleet_kit::{
    fleet_value, list_keys, moto, plant, plant_sealed, record_key, replica_config, skip,
};
use e2e::s3::Moto;
use http::Method;
use std::time::{Duration, Instant};
use support::images::{self, Image};
use support::{upstream_for, FakeRegistry, Kind, TestClient};

const USER: &str = "archway-bot";
const PASS: &str = "s3cret-upstream-pw";

/// A replica in front of `fake` (default, anonymous) and `private` (with credentials).
fn config(
    fake: &FakeRegistry,
    private: &FakeRegistry,
    dir: &std::path::Path,
    moto: &Moto,
) -> Config {
    let (mut c, _) = replica_config(fake, dir, &moto.url(), Duration::from_secs(5));
    let mut p = upstream_for("private", private);
    p.credentials = Some(Credentials {
        username: USER.into(),
        password: Secret::new(PASS),
    });
    c.upstreams.push(p);
    c
}

fn objects(img: &Image) -> Vec<(&'static str, String)> {
    let mut v = vec![("manifests", img.digest.to_string())];
    v.push(("blobs", img.config.to_string()));
    for (_, d, _) in &img.layers {
        v.push(("blobs", d.to_string()));
    }
    v
}

async fn get(a: &Archway, method: Method, path: &str) -> support::Reply {
    let url = format!("http://{}{path}", a.local_addr());
    TestClient::new().request(method, &url, &[]).await
}

/// Blob and manifest HEADs that carried a token (the fake records the 401 challenge too).
fn authorized_heads(fake: &FakeRegistry) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == Method::HEAD && matches!(r.kind, Kind::Blob | Kind::Manifest))
        .filter(|r| r.headers.contains_key("authorization"))
        .count()
}

/// Waits (at most 10 s) until the bucket holds an access record for each of `img`'s objects.
async fn wait_for_records(moto: &Moto, img: &Image) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = list_keys(moto, "fleet/access/");
        let missing: Vec<_> = objects(img)
            .into_iter()
            .filter(|(kind, d)| {
                let hex = d.trim_start_matches("sha256:");
                !keys
                    .iter()
                    .any(|k| k.ends_with(&format!("{kind}/sha256/{hex}")))
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no access records for {missing:?}: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rejected(a: &Archway, reason: &str) -> f64 {
    fleet_value(
        a,
        "archway_storage_records_rejected_total",
        &[("kind", "access"), ("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_agree_through_the_buckets_sealed_access_records() {
    if skip("replicas_agree_through_the_buckets_sealed_access_records") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let private = FakeRegistry::builder()
        .credentials(USER, PASS)
        .start()
        .await;
    let img = images::docker_image(&private, "team/app", 31, "linux/amd64");
    private.set_tag("team/app", "v1", &img.digest);
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Archway::start(config(&fake, &private, a_dir.path(), &moto))
        .await
        .unwrap();
    // Replica A pulls it with credentials, under team/app of `private`.
    let r = get(&a, Method::GET, "/v2/team/app/manifests/v1?ns=private").await;
    assert_eq!(r.status, 200, "{}", r.text());
    for (kind, d) in objects(&img) {
        let r = get(
            &a,
            Method::GET,
            &format!("/v2/team/app/{kind}/{d}?ns=private"),
        )
        .await;
        assert_eq!(r.status, 200, "A: {kind} {d}");
    }
    wait_for_records(&moto, &img).await;

    // Replica B, started on the same bucket with an empty disk, knows what A recorded.
    let b = Archway::start(config(&fake, &private, b_dir.path(), &moto))
        .await
        .unwrap();
    for (kind, d) in objects(&img) {
        for path in [
            format!("/v2/library/x/{kind}/{d}"),
            format!("/v2/team/app/{kind}/{d}?ns=fake"),
            format!("/v2/team/other/{kind}/{d}?ns=private"),
        ] {
            for method in [Method::GET, Method::HEAD] {
                let r = get(&b, method.clone(), &path).await;
                assert_eq!(r.status, 404, "B, {method} {path}: {}", r.text());
            }
        }
    }
    // Under its own route B serves it from the bucket, and the sealed record is enough: no
    // authorized HEAD asks `private` whether team/app may have it.
    let heads = authorized_heads(&private);
    let gets = private.count("GET", Kind::Blob);
    for (kind, d) in objects(&img) {
        let r = get(
            &b,
            Method::GET,
            &format!("/v2/team/app/{kind}/{d}?ns=private"),
        )
        .await;
        assert_eq!(r.status, 200, "B, own route: {kind} {d}");
    }
    assert_eq!(
        authorized_heads(&private),
        heads,
        "the record said so, no HEAD"
    );
    assert_eq!(
        private.count("GET", Kind::Blob),
        gets,
        "bytes from the bucket"
    );
    assert_eq!(rejected(&b, "unsealed") + rejected(&b, "bad_seal"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planted_or_wrongly_sealed_public_access_record_is_not_believed() {
    if skip("a_planted_or_wrongly_sealed_public_access_record_is_not_believed") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let private = FakeRegistry::builder()
        .credentials(USER, PASS)
        .start()
        .await;
    let img = images::docker_image(&private, "team/app", 32, "linux/amd64");
    private.set_tag("team/app", "v1", &img.digest);
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Archway::start(config(&fake, &private, a_dir.path(), &moto))
        .await
        .unwrap();
    let r = get(&a, Method::GET, "/v2/team/app/manifests/v1?ns=private").await;
    assert_eq!(r.status, 200, "{}", r.text());
    for (kind, d) in objects(&img) {
        let r = get(
            &a,
            Method::GET,
            &format!("/v2/team/app/{kind}/{d}?ns=private"),
        )
        .await;
        assert_eq!(r.status, 200, "A: {kind} {d}");
    }
    wait_for_records(&moto, &img).await;
    // A bucket writer says the config and the first layer are public: one record unsealed,
    // the other a genuine sealed `public` record copied from another object's key.
    let key = |d: &archway::digest::Digest| format!("fleet/access/blobs/sha256/{}", d.hex());
    let (_, layer, _) = img.layers[0].clone();
    plant(&moto, &key(&img.config), b"public");
    let sealed_elsewhere = record_key().seal(
        &key(&archway::digest::Digest::sha256_of(b"some public layer")),
        b"public",
    );
    plant(&moto, &key(&layer), &sealed_elsewhere);
    let b = Archway::start(config(&fake, &private, b_dir.path(), &moto))
        .await
        .unwrap();
    for d in [&img.config, &layer] {
        for method in [Method::GET, Method::HEAD] {
            let path = format!("/v2/library/x/blobs/{d}");
            let r = get(&b, method.clone(), &path).await;
            assert_eq!(r.status, 404, "B, {method} {path}: {}", r.text());
        }
    }
    assert!(
        rejected(&b, "unsealed") >= 1.0,
        "the unsealed record was counted"
    );
    assert!(
        rejected(&b, "bad_seal") >= 1.0,
        "the copied record was counted"
    );
    // Its own route still gets it (the record is no record: confirmed with `private`).
    let heads = authorized_heads(&private);
    let r = get(
        &b,
        Method::GET,
        &format!("/v2/team/app/blobs/{layer}?ns=private"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        authorized_heads(&private),
        heads + 1,
        "confirmed with one HEAD"
    );
    // The control: a `public` record the fleet sealed for the config's own key is believed by
    // a new replica, which then serves it anonymously without asking the public upstream.
    plant_sealed(&moto, &key(&img.config), "public");
    let c_dir = tempfile::tempdir().unwrap();
    let c = Archway::start(config(&fake, &private, c_dir.path(), &moto))
        .await
        .unwrap();
    let asked = fake.requests().len();
    let r = get(
        &c,
        Method::GET,
        &format!("/v2/library/x/blobs/{}", img.config),
    )
    .await;
    assert_eq!(r.status, 200, "a record the fleet sealed is believed");
    assert_eq!(r.body, img.config_bytes);
    assert_eq!(fake.requests().len(), asked, "public: nothing to confirm");
}
