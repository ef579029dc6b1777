//! Issue 21, requirement 4: pinned images are never evicted. Their manifests, blobs and tag
//! records stay on disk through eviction pressure many times the budget, count against it, and
//! are served with upstream down; a pinned tag that moves is followed and the old digest is
//! released to the LRU.

mod support;

use archway::config::PinConfig;
use archway::image_ref::ImageRef;
use http::StatusCode;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{FakeRegistry, Harness};

const KIB: u64 = 1 << 10;
const MAX_SIZE: u64 = 1536 * KIB;
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

fn pin(image: &str, platforms: &[&str]) -> PinConfig {
    PinConfig {
        image: image.into(),
        parsed: ImageRef::parse(image).unwrap(),
        platforms: platforms.iter().map(|p| p.parse().unwrap()).collect(),
    }
}

fn blob_file(dir: &Path, digest: &impl ToString) -> PathBuf {
    let d = digest.to_string();
    let hex = d.trim_start_matches("sha256:");
    dir.join("blobs/sha256").join(&hex[..2]).join(hex)
}

fn manifest_file(dir: &Path, digest: &impl ToString) -> PathBuf {
    let d = digest.to_string();
    let hex = d.trim_start_matches("sha256:");
    dir.join("manifests/sha256").join(&hex[..2]).join(hex)
}

async fn pull_blob(h: &Harness, repo: &str, digest: &impl ToString) {
    let r = h
        .get(&format!("/v2/{repo}/blobs/{}", digest.to_string()))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{repo} {}", digest.to_string());
}

/// Pulls `n` unpinned images of about 400 KiB each (so `n` = 12 is three times the budget).
async fn pressure(h: &Harness, seed: u64, n: u64) -> Vec<support::SampleImage> {
    let mut out = Vec::new();
    for i in 0..n {
        let tag = format!("t{seed}-{i}");
        let img = h.fake.sample_image_sized(
            "lib/other",
            Some(&tag),
            seed * 1000 + i,
            &[200_000, 200_000],
        );
        let r = h
            .get_with(
                &format!("/v2/lib/other/manifests/{tag}"),
                &[("accept", ACCEPT_ALL)],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        pull_blob(h, "lib/other", &img.config).await;
        for l in &img.layers {
            pull_blob(h, "lib/other", l).await;
        }
        out.push(img);
    }
    out
}

#[tokio::test]
async fn pins_survive_eviction_pressure() {
    let fake = FakeRegistry::start().await;
    let idx = fake.sample_index_sized(
        "lib/pinned",
        "1",
        7,
        &["linux/amd64", "linux/arm64"],
        &[150_000, 250_000],
    );
    let mut h = Harness::with(fake, |c| {
        c.cache.max_size = MAX_SIZE;
        // Manifests and small blobs are not served from memory: what is asked for is on disk.
        c.cache.memory_size = 64 * KIB;
        // Every tag request revalidates: offline, only stale-if-error answers.
        c.cache.tag_ttl = Duration::from_millis(1);
        c.pins = vec![pin("lib/pinned:1", &["linux/amd64"])];
    })
    .await;
    let dir = h.data_dir();
    let amd = idx.images[0].1.clone();
    let arm = idx.images[1].1.clone();

    // Pull the pinned image (the amd64 child) as a client would.
    let r = h
        .get_with("/v2/lib/pinned/manifests/1", &[("accept", ACCEPT_ALL)])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some(INDEX));
    let child = h
        .get_with(
            &format!("/v2/lib/pinned/manifests/{}", amd.manifest),
            &[("accept", ACCEPT_ALL)],
        )
        .await;
    assert_eq!(child.status, StatusCode::OK);
    pull_blob(&h, "lib/pinned", &amd.config).await;
    for l in &amd.layers {
        pull_blob(&h, "lib/pinned", l).await;
    }
    // The arm64 child too, though it is not pinned.
    let r = h
        .get_with(
            &format!("/v2/lib/pinned/manifests/{}", arm.manifest),
            &[("accept", ACCEPT_ALL)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    pull_blob(&h, "lib/pinned", &arm.layers[1]).await;

    // Three times the budget, twice over.
    let first = pressure(&h, 1, 12).await;
    pressure(&h, 2, 12).await;

    let proxy = h.archway.as_ref().unwrap().proxy().clone();
    let stats = proxy.blob_store().stats();
    assert!(stats.evictions > 20, "evicted {} times", stats.evictions);
    let pinned_blob_bytes: u64 =
        amd.layer_bytes.iter().map(|b| b.len() as u64).sum::<u64>() + amd.config_bytes.len() as u64;
    assert!(
        stats.pinned_bytes >= pinned_blob_bytes,
        "pinned bytes {} count the pinned blobs ({pinned_blob_bytes})",
        stats.pinned_bytes
    );
    assert!(
        stats.bytes + stats.file_bytes <= MAX_SIZE,
        "pinned bytes count against the budget: {} + {}",
        stats.bytes,
        stats.file_bytes
    );
    // On disk: the pinned image whole; the arm64 child and the first unpinned images gone.
    for f in [
        manifest_file(&dir, &idx.digest),
        manifest_file(&dir, &amd.manifest),
        blob_file(&dir, &amd.config),
        blob_file(&dir, &amd.layers[0]),
        blob_file(&dir, &amd.layers[1]),
    ] {
        assert!(f.exists(), "pinned {} was evicted", f.display());
    }
    assert!(
        !blob_file(&dir, &arm.layers[1]).exists(),
        "unpinned platform kept"
    );
    assert!(
        !manifest_file(&dir, &arm.manifest).exists(),
        "unpinned platform kept"
    );
    for img in &first[..4] {
        assert!(
            !blob_file(&dir, &img.layers[0]).exists(),
            "unpinned blob kept"
        );
    }
    let listed = proxy.pins().list();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].digest.as_deref(),
        Some(idx.digest.to_string().as_str())
    );
    assert_eq!(
        listed[0].manifests.len(),
        2,
        "the index and the amd64 child"
    );
    assert_eq!(listed[0].blobs.len(), 3, "config and two layers");

    // Upstream down: the pinned image is served whole from the cache; unpinned ones are not.
    h.fake.stop().await;
    let r = h
        .get_with("/v2/lib/pinned/manifests/1", &[("accept", ACCEPT_ALL)])
        .await;
    assert_eq!(r.status, StatusCode::OK, "pinned tag offline");
    assert!(r.body == idx.bytes);
    let r = h
        .get_with(
            &format!("/v2/lib/pinned/manifests/{}", amd.manifest),
            &[("accept", ACCEPT_ALL)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for (d, bytes) in amd.layers.iter().zip(&amd.layer_bytes) {
        let r = h.get(&format!("/v2/lib/pinned/blobs/{d}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body == *bytes, "pinned layer bytes");
    }
    let r = h
        .get(&format!("/v2/lib/other/blobs/{}", first[0].layers[0]))
        .await;
    assert_ne!(r.status, StatusCode::OK, "an evicted unpinned blob offline");

    // A restart with a budget below what is cached: the eviction at open spares the pins,
    // before any tag is asked for again.
    h.fake.resume().await;
    h.restart_with(|c| c.cache.max_size = 700 * KIB).await;
    for f in [
        manifest_file(&dir, &idx.digest),
        manifest_file(&dir, &amd.manifest),
        blob_file(&dir, &amd.layers[0]),
        blob_file(&dir, &amd.layers[1]),
    ] {
        assert!(f.exists(), "pinned {} evicted at open", f.display());
    }
    let stats = h.archway.as_ref().unwrap().proxy().blob_store().stats();
    assert!(stats.bytes + stats.file_bytes <= 700 * KIB, "{stats:?}");
    h.restart_with(|c| c.cache.max_size = MAX_SIZE).await;
    let proxy = h.archway.as_ref().unwrap().proxy().clone();
    assert!(proxy.blob_store().stats().pinned_bytes >= pinned_blob_bytes);
    pressure(&h, 3, 12).await;
    assert!(
        blob_file(&dir, &amd.layers[1]).exists(),
        "pinned blob evicted after restart"
    );
}

#[tokio::test]
async fn a_pin_follows_its_moving_tag_and_releases_the_old_digest() {
    let fake = FakeRegistry::start().await;
    let v1 = fake.sample_image_sized("lib/moving", Some("1"), 11, &[300_000]);
    let h = Harness::with(fake, |c| {
        c.cache.max_size = MAX_SIZE;
        c.cache.memory_size = 64 * KIB;
        c.cache.tag_ttl = Duration::from_millis(1);
        c.pins = vec![pin("lib/moving:1", &[])];
    })
    .await;
    let dir = h.data_dir();
    let r = h
        .get_with("/v2/lib/moving/manifests/1", &[("accept", ACCEPT_ALL)])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    pull_blob(&h, "lib/moving", &v1.config).await;
    pull_blob(&h, "lib/moving", &v1.layers[0]).await;
    pressure(&h, 1, 8).await;
    assert!(
        blob_file(&dir, &v1.layers[0]).exists(),
        "v1 held while pinned"
    );

    // The tag moves upstream; the next revalidation follows it.
    let v2 = h
        .fake
        .sample_image_sized("lib/moving", Some("1"), 12, &[300_000]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = h
        .get_with("/v2/lib/moving/manifests/1", &[("accept", ACCEPT_ALL)])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body == v2.manifest_bytes, "the new digest");
    let proxy = h.archway.as_ref().unwrap().proxy().clone();
    let listed = proxy.pins().list();
    assert_eq!(
        listed[0].digest.as_deref(),
        Some(v2.manifest.to_string().as_str())
    );
    assert!(listed[0].blobs.contains(&v2.layers[0].to_string()));
    assert!(!listed[0].blobs.contains(&v1.layers[0].to_string()));
    pull_blob(&h, "lib/moving", &v2.config).await;
    pull_blob(&h, "lib/moving", &v2.layers[0]).await;

    // The old digest is ordinary LRU content now: pressure evicts it, not the new one.
    pressure(&h, 2, 8).await;
    assert!(
        !blob_file(&dir, &v1.layers[0]).exists(),
        "old digest still held"
    );
    assert!(
        !manifest_file(&dir, &v1.manifest).exists(),
        "old manifest still held"
    );
    assert!(
        blob_file(&dir, &v2.layers[0]).exists(),
        "new digest evicted"
    );
    assert!(
        manifest_file(&dir, &v2.manifest).exists(),
        "new manifest evicted"
    );
}

/// The admin API: `POST /pins` pins an image already cached (held at once), `GET /pins` and
/// `archway pins` list it with its digests and bytes, runtime pins persist across a restart,
/// `DELETE` releases them; a config pin cannot be deleted there, and `admin_pins = false`
/// refuses changes.
#[tokio::test]
async fn the_admin_api_adds_lists_and_removes_pins() {
    use archway::pins_client;
    let fake = FakeRegistry::start().await;
    let app = fake.sample_image_sized("lib/app", Some("1"), 21, &[100_000]);
    fake.sample_image_sized("lib/base", Some("2"), 22, &[1_000]);
    let mut h = Harness::with(fake, |c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        c.pins = vec![pin("lib/base:2", &[])];
    })
    .await;
    let admin = |h: &Harness| {
        format!(
            "http://{}",
            h.archway.as_ref().unwrap().admin_addr().unwrap()
        )
    };
    let r = h
        .get_with("/v2/lib/app/manifests/1", &[("accept", ACCEPT_ALL)])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    pull_blob(&h, "lib/app", &app.config).await;
    pull_blob(&h, "lib/app", &app.layers[0]).await;

    assert!(pins_client::add(&admin(&h), "lib/app:1", &[])
        .await
        .unwrap());
    assert!(
        !pins_client::add(&admin(&h), "lib/app:1", &[])
            .await
            .unwrap(),
        "pinned already"
    );
    let listed = pins_client::list(&admin(&h)).await.unwrap();
    assert_eq!(listed.len(), 2);
    let p = listed.iter().find(|p| p.image == "lib/app:1").unwrap();
    assert_eq!(p.origin, "runtime");
    assert_eq!(p.repository, "lib/app");
    assert_eq!(
        p.digest.as_deref(),
        Some(app.manifest.to_string().as_str()),
        "held at once from the cache"
    );
    assert_eq!(p.blobs.len(), 2);
    assert!(p.bytes >= 100_000);
    assert!(pins_client::table(&listed).contains("lib/app:1"));
    let stats = h.archway.as_ref().unwrap().proxy().blob_store().stats();
    assert!(stats.pinned_bytes >= 100_000, "{stats:?}");
    let metrics = h.client.get(&format!("{}/metrics", admin(&h))).await.text();
    assert!(metrics.contains("archway_pins 2"), "{metrics}");
    assert!(metrics.contains("archway_pinned_bytes "), "{metrics}");

    // Bad requests name what is wrong.
    let e = pins_client::add(&admin(&h), "quay.io/x/y:1", &[])
        .await
        .unwrap_err();
    assert!(e.contains("400") && e.contains("quay.io"), "{e}");
    let e = pins_client::add(&admin(&h), "lib/app:1", &["not a platform".into()])
        .await
        .unwrap_err();
    assert!(e.contains("400"), "{e}");
    let e = pins_client::remove(&admin(&h), "lib/base:2")
        .await
        .unwrap_err();
    assert!(e.contains("409"), "{e}");

    // Runtime pins persist.
    h.restart().await;
    let listed = pins_client::list(&admin(&h)).await.unwrap();
    assert!(listed
        .iter()
        .any(|p| p.image == "lib/app:1" && p.blobs.len() == 2));
    assert!(pins_client::remove(&admin(&h), "lib/app:1").await.unwrap());
    assert!(!pins_client::remove(&admin(&h), "lib/app:1").await.unwrap());
    assert_eq!(pins_client::list(&admin(&h)).await.unwrap().len(), 1);

    h.restart_with(|c| c.admin_pins = false).await;
    let e = pins_client::add(&admin(&h), "lib/app:1", &[])
        .await
        .unwrap_err();
    assert!(e.contains("403"), "{e}");
    assert_eq!(
        pins_client::list(&admin(&h)).await.unwrap().len(),
        1,
        "listing still works"
    );
}

/// `archway pins --admin URL` prints the table (`--json`: the API's list); an admin URL that
/// does not answer is exit 1 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archway_pins_lists_them_from_the_admin_api() {
    let fake = FakeRegistry::start().await;
    let img = fake.sample_image_sized("lib/cli", Some("1"), 41, &[1_000]);
    let h = Harness::with(fake, |c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        c.pins = vec![pin("lib/cli:1", &[])];
    })
    .await;
    let r = h
        .get_with("/v2/lib/cli/manifests/1", &[("accept", ACCEPT_ALL)])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let admin = format!(
        "http://{}",
        h.archway.as_ref().unwrap().admin_addr().unwrap()
    );
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_archway"))
                .args(args)
                .env("NO_PROXY", "127.0.0.1")
                .output()
                .unwrap()
        })
    };
    let out = run(vec!["pins".into(), "--admin".into(), admin.clone()])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("IMAGE"), "{text}");
    let line = text.lines().find(|l| l.starts_with("lib/cli:1")).unwrap();
    assert!(line.contains("config"), "{line}");
    assert!(line.contains(&img.manifest.to_string()[..19]), "{line}");
    let out = run(vec![
        "pins".into(),
        "--admin".into(),
        admin,
        "--json".into(),
    ])
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["image"], "lib/cli:1");
    assert_eq!(json[0]["digest"], img.manifest.to_string());
    assert_eq!(json[0]["blobs"].as_array().unwrap().len(), 2);
    let out = run(vec![
        "pins".into(),
        "--admin".into(),
        "http://127.0.0.1:9".into(),
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:9"),
        "{out:?}"
    );
}
