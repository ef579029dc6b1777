//! `archway warm` in a fleet, in process, on a real S3-protocol server (moto): warming the same
//! image through two replicas at once fetches each blob from upstream once (the fill leases);
//! then a new replica with an empty L1, the upstream down, serves every warmed platform from the
//! bucket. Runs with `ARCHWAY_E2E=1` (or `CI=true`); otherwise skipped, said so.

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
use archway::warm::{warm, Via, WarmOptions};
use e2e::fleet_kit::{list_keys, moto, replica_config, skip};
use http::StatusCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{FakeRegistry, Fault, Kind, TestClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warming_through_two_replicas_fills_the_bucket_once_and_a_new_replica_serves_it() {
    if skip("warming_through_two_replicas_fills_the_bucket_once_and_a_new_replica_serves_it") {
        return;
    }
    support::init_tracing();
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let fake = FakeRegistry::start().await;
    let idx = fake.sample_index_sized(
        "lib/app",
        "v1",
        41,
        &["linux/amd64", "linux/arm64"],
        &[600 << 10, 900 << 10],
    );
    // Slow bodies, so both replicas ask while the first fills run.
    fake.fault(
        Some(Kind::Blob),
        Fault::SlowBody {
            chunk: 64 << 10,
            every: Duration::from_millis(30),
        },
    );
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for d in &dirs[..2] {
        let (cfg, _) = replica_config(&fake, d.path(), &moto.url(), Duration::from_secs(5));
        replicas.push(Archway::start(cfg).await.unwrap());
    }
    let opts = WarmOptions {
        jobs: 4,
        ..WarmOptions::default()
    };
    let images = vec!["lib/app:v1".to_owned()];
    let runs = replicas.iter().map(|a| {
        let via = Via::remote(&format!("http://{}", a.local_addr()), None, None).unwrap();
        let (opts, images) = (opts.clone(), images.clone());
        async move { warm(Arc::new(via), &opts, &images, Arc::new(|_| {})).await }
    });
    let outcomes = futures_util::future::join_all(runs).await;
    for (i, o) in outcomes.iter().enumerate() {
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].error, None, "replica {i}: {:?}", o[0]);
        assert_eq!(o[0].platforms.len(), 2, "replica {i}: {:?}", o[0]);
    }
    // Upstream saw each blob once, fleet-wide.
    let mut blobs = Vec::new();
    for (_, img) in &idx.images {
        blobs.push(img.config.clone());
        blobs.extend(img.layers.iter().cloned());
    }
    for d in &blobs {
        assert_eq!(
            fake.count_path("GET", &format!("/v2/lib/app/blobs/{d}")),
            1,
            "{d}: one upstream GET per fleet"
        );
    }
    // Every blob reaches the bucket.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let keys = list_keys(&moto, "fleet/blobs/");
        let missing: Vec<_> = blobs
            .iter()
            .filter(|d| !keys.iter().any(|k| k.ends_with(d.hex())))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "not in the bucket: {missing:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for a in replicas {
        a.shutdown().await;
    }

    // A new replica, empty L1, upstream down: every warmed platform from the bucket alone.
    fake.clear_faults();
    fake.fault(None, Fault::status(503));
    let before = fake.requests_seen();
    let (cfg, _) = replica_config(&fake, dirs[2].path(), &moto.url(), Duration::from_secs(5));
    let fresh = Archway::start(cfg).await.unwrap();
    let base = format!("http://{}", fresh.local_addr());
    let client = TestClient::new();
    let oci = [(
        "accept",
        "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
    )];
    let r = client
        .get_with(&format!("{base}/v2/lib/app/manifests/v1"), &oci)
        .await;
    assert_eq!(r.status, StatusCode::OK, "tag: {}", r.text());
    assert!(r.body == idx.bytes, "the index as upstream wrote it");
    for (platform, img) in &idx.images {
        let r = client
            .get_with(
                &format!("{base}/v2/lib/app/manifests/{}", img.manifest),
                &oci,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{platform}: {}", r.text());
        let config = client
            .get(&format!("{base}/v2/lib/app/blobs/{}", img.config))
            .await;
        assert_eq!(config.status, StatusCode::OK, "{platform} config");
        assert!(config.body == img.config_bytes);
        for (d, bytes) in img.layers.iter().zip(&img.layer_bytes) {
            let r = client.get(&format!("{base}/v2/lib/app/blobs/{d}")).await;
            assert_eq!(r.status, StatusCode::OK, "{platform} {d}");
            assert!(r.body == *bytes, "{platform} {d}: other bytes");
        }
    }
    // Whatever it asked upstream was refused; it served from the bucket.
    let asked = fake.requests_seen() - before;
    eprintln!("the fresh replica asked upstream {asked} times (all refused)");
    fresh.shutdown().await;
}
