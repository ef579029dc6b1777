//! Pins in a fleet, on moto (`ARCHWAY_E2E=1`; skipped, said so, otherwise). moto runs no
//! lifecycle rules, so what is tested is what the documented rules rely on: a pinned image's
//! objects are copied under `<prefix>pins/`, a prefix no rule of docs/fleet.md covers, read
//! straight from the bucket; the expiry of `blobs/` and `manifests/` is played by deleting
//! them. The runtime pins are one sealed record every replica adopts; an unsealed one is not
//! believed.

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
use e2e::fleet_kit::{list_keys, moto, plant, plant_sealed, replica_config, skip, BUCKET};
use http::StatusCode;
use std::time::{Duration, Instant};
use support::{FakeRegistry, TestClient};

const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// The prefixes of docs/fleet.md's lifecycle rules (`s3_prefix = "fleet/"` here), which expire
/// by age: a pinned copy must be under none of them.
const EXPIRED_PREFIXES: [&str; 4] = [
    "fleet/blobs/",
    "fleet/manifests/",
    "fleet/tags/",
    "fleet/access/",
];

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: not within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn has(keys: &[String], hex: &str) -> bool {
    keys.iter().any(|k| k.ends_with(hex))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pinned_objects_live_under_pins_and_the_fleet_shares_the_pins() {
    if skip("pinned_objects_live_under_pins_and_the_fleet_shares_the_pins") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let img = fake.sample_image_sized("lib/app", Some("1"), 31, &[200_000]);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ca, pa) = replica_config(&fake, da.path(), &moto.url(), Duration::from_secs(5));
    let (cb, pb) = replica_config(&fake, db.path(), &moto.url(), Duration::from_secs(5));
    let a = Archway::start(ca).await.unwrap();
    let b = Archway::start(cb).await.unwrap();
    let client = TestClient::new();
    let get = |port: u16, path: String| {
        let client = &client;
        async move {
            client
                .get_with(
                    &format!("http://127.0.0.1:{port}{path}"),
                    &[("accept", ACCEPT_ALL)],
                )
                .await
        }
    };

    // Replica A pulls the image; its copies reach blobs/ and manifests/.
    assert_eq!(
        get(pa, "/v2/lib/app/manifests/1".into()).await.status,
        StatusCode::OK
    );
    for d in [&img.config, &img.layers[0]] {
        assert_eq!(
            get(pa, format!("/v2/lib/app/blobs/{d}")).await.status,
            StatusCode::OK
        );
    }
    let layer = img.layers[0].hex().to_owned();
    let config = img.config.hex().to_owned();
    let manifest = img.manifest.hex().to_owned();
    wait_for("blobs copied to the bucket", || {
        let keys = list_keys(&moto, "fleet/blobs/");
        has(&keys, &layer) && has(&keys, &config)
    })
    .await;

    // Pinned on A (what POST /pins calls): copied under pins/ at once, the list shared.
    assert!(a.proxy().add_pin("lib/app:1", &[]).await.unwrap());
    let pinned_blobs = list_keys(&moto, "fleet/pins/blobs/");
    let pinned_manifests = list_keys(&moto, "fleet/pins/manifests/");
    assert!(
        has(&pinned_blobs, &layer) && has(&pinned_blobs, &config),
        "{pinned_blobs:?}"
    );
    assert!(has(&pinned_manifests, &manifest), "{pinned_manifests:?}");
    for key in pinned_blobs.iter().chain(&pinned_manifests) {
        assert!(
            EXPIRED_PREFIXES.iter().all(|p| !key.starts_with(p)),
            "{key} is under a prefix the lifecycle rules expire"
        );
    }
    let copy = moto
        .get_object(BUCKET, &format!("fleet/pins/blobs/sha256/{layer}"))
        .unwrap();
    assert!(
        copy == img.layer_bytes[0],
        "the pinned copy holds the blob's bytes"
    );
    assert_eq!(
        list_keys(&moto, "fleet/pins/list").len(),
        1,
        "the shared list"
    );

    // The lifecycle rule expires blobs/ and manifests/ by age: played by deleting them.
    for key in [
        format!("fleet/blobs/sha256/{layer}"),
        format!("fleet/blobs/sha256/{config}"),
        format!("fleet/manifests/sha256/{manifest}"),
    ] {
        assert_eq!(
            moto.request("DELETE", &format!("{BUCKET}/{key}"), &[]),
            204,
            "{key}"
        );
    }
    // Upstream gone: replica B (nothing in its L1) serves the pinned image from pins/, and
    // adopts the pin at its next sync.
    fake.stop().await;
    let r = get(pb, format!("/v2/lib/app/manifests/{}", img.manifest)).await;
    assert_eq!(r.status, StatusCode::OK, "manifest from pins/");
    assert!(r.body == img.manifest_bytes);
    let r = get(pb, format!("/v2/lib/app/blobs/{}", img.layers[0])).await;
    assert_eq!(r.status, StatusCode::OK, "layer from pins/");
    assert!(r.body == img.layer_bytes[0]);
    b.proxy().pins().sync_bucket().await;
    let on_b = b.proxy().pins().list();
    assert_eq!(on_b.len(), 1, "B adopted the fleet's pin");
    assert_eq!(on_b[0].image, "lib/app:1");
    assert_eq!(on_b[0].origin, "runtime");

    // A list no replica sealed is not believed: B keeps the pins it has.
    plant(
        &moto,
        "fleet/pins/list",
        br#"{"pins":[{"image":"x","upstream":"fake","repository":"lib/evil","reference":"1","platforms":[]}],"at_ms":0}"#,
    );
    b.proxy().pins().sync_bucket().await;
    assert_eq!(b.proxy().pins().list().len(), 1);
    assert!(b
        .proxy()
        .pins()
        .list()
        .iter()
        .all(|p| p.repository != "lib/evil"));
    // Nor one sealed but dated ahead of the clock skew.
    let ahead = archway::cache::tag_store::now_ms() + 3_600_000;
    plant_sealed(
        &moto,
        "fleet/pins/list",
        &format!(r#"{{"pins":[],"at_ms":{ahead}}}"#),
    );
    b.proxy().pins().sync_bucket().await;
    assert_eq!(
        b.proxy().pins().list().len(),
        1,
        "a future list is not believed"
    );

    // Unpinned on A: its copies under pins/ are deleted, the fleet's list loses it.
    fake.resume().await;
    plant_sealed(
        &moto,
        "fleet/pins/list",
        &format!(
            r#"{{"pins":[{{"image":"lib/app:1","upstream":"fake","repository":"lib/app","reference":"1","platforms":[]}}],"at_ms":{}}}"#,
            archway::cache::tag_store::now_ms()
        ),
    );
    assert!(a.proxy().remove_pin("lib/app:1").await.unwrap().is_some());
    assert!(
        list_keys(&moto, "fleet/pins/blobs/").is_empty(),
        "released copies deleted"
    );
    assert!(list_keys(&moto, "fleet/pins/manifests/").is_empty());
    b.proxy().pins().sync_bucket().await;
    assert!(
        b.proxy().pins().list().is_empty(),
        "B dropped the fleet's removed pin"
    );
    a.shutdown().await;
    b.shutdown().await;
}
