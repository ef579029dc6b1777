//! The server around the pipeline: several listeners, graceful shutdown that lets an in-flight
//! download finish, and a closed port afterwards.

mod support;

use http::StatusCode;
use std::time::{Duration, Instant};
use support::{FakeRegistry, Harness, Kind, TestClient};

#[tokio::test]
async fn every_listener_serves() {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.listen = vec![
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        ];
    })
    .await;
    let img = h.fake.sample_image("lib/app", "v1", 1);
    let archway = h.archway.as_ref().unwrap();
    let addrs = archway.local_addrs();
    assert_eq!(addrs.len(), 2);
    assert_ne!(addrs[0], addrs[1]);
    assert_eq!(archway.local_addr(), addrs[0]);
    for a in addrs {
        assert_ne!(a.port(), 0);
        let r = h
            .client
            .get(&format!("http://{a}/v2/lib/app/manifests/v1"))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{a}");
        assert_eq!(r.body, img.manifest_bytes, "{a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_download_finish_then_closes_the_port() {
    let mut h = Harness::start().await;
    let img = h
        .fake
        .sample_image_sized("lib/app", Some("v1"), 2, &[100_000]);
    h.fake
        .set_delay(Some(Kind::Blob), Duration::from_millis(600));
    let addr = h.addr();
    let url = h.url(&format!("/v2/lib/app/blobs/{}", img.layers[0]));
    let in_flight = tokio::spawn(async move { TestClient::new().get(&url).await });
    // Let the request reach archway (and upstream) before shutting down.
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.fake.count("GET", Kind::Blob) == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let archway = h.archway.take().unwrap();
    let started = Instant::now();
    archway.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drained promptly"
    );

    let r = in_flight.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.complete(), "{:?}", r.body_error);
    assert_eq!(r.sha256(), img.layers[0].to_string());

    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "the port is closed after shutdown");

    // A new archway on the same data dir starts and has the blob.
    h.restart().await;
    h.fake.reset_counts();
    let again = h.get(&format!("/v2/lib/app/blobs/{}", img.layers[0])).await;
    assert_eq!(again.body, img.layer_bytes[0]);
    assert_eq!(h.fake.total(), 0);
}
