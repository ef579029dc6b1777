//! What a hostile or broken client can send, and what archway answers: memory that does not grow
//! with request headers, the Host rules of HTTP/1.1, unsatisfiable ranges, malformed tags.

mod support;

use http::StatusCode;
use std::time::Duration;
use support::{raw_request, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Every tag request with a new User-Agent adds to the tag-answer memo. The memo keeps a hash of
/// the headers, never the request's buffers, and is budgeted in bytes: 2,000 requests with
/// 100 KB User-Agents (200 MB of headers) must not leave the process holding them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_distinct_user_agents_do_not_grow_memory() {
    let h = Harness::start().await;
    h.fake.sample_image("lib/app", "v1", 3);
    let path = "/v2/lib/app/manifests/v1";
    assert_eq!(h.get(path).await.status, StatusCode::OK);
    let filler = "x".repeat(100_000);
    // Warm up allocators and connections before measuring.
    for i in 0..50 {
        let ua = format!("client/{i} {filler}");
        let r = h.get_with(path, &[("user-agent", ua.as_str())]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let before = rss_bytes();
    for i in 50..2_050 {
        let ua = format!("client/{i} {filler}");
        let r = h.get_with(path, &[("user-agent", ua.as_str())]).await;
        assert_eq!(r.status, StatusCode::OK, "#{i}");
    }
    let grown = rss_bytes().saturating_sub(before);
    eprintln!("RSS grew by {} MB", grown >> 20);
    assert!(
        grown < 64 << 20,
        "RSS grew by {} MB over 2,000 requests with 100 KB User-Agents",
        grown >> 20
    );
}

async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host header; two, or none, is a 400.
#[tokio::test]
async fn http11_needs_exactly_one_host_header() {
    let h = Harness::start().await;
    let addr = h.addr();
    let two = raw(
        addr,
        "GET /v2/ HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    assert!(two.contains("Host"), "{two}");
    let none = raw(addr, "GET /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(none.starts_with("HTTP/1.1 400"), "{none}");
    // HTTP/1.0 may leave Host out.
    let old = raw(addr, "GET /v2/ HTTP/1.0\r\n\r\n").await;
    assert!(
        old.starts_with("HTTP/1.0 200") || old.starts_with("HTTP/1.1 200"),
        "{old}"
    );
    let one = raw(
        addr,
        "GET /v2/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(one.starts_with("HTTP/1.1 200"), "{one}");
}

/// `bytes=-0` asks for the last zero bytes: nothing can satisfy it (RFC 9110 §14.1.1).
#[tokio::test]
async fn suffix_range_of_zero_bytes_is_416() {
    let h = Harness::start().await;
    let img = h.fake.sample_image("lib/app", "v1", 5);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[0]);
    assert_eq!(h.get(&path).await.status, StatusCode::OK);
    for _ in 0..2 {
        // Cold (first) and cached.
        let r = h.get_with(&path, &[("range", "bytes=-0")]).await;
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{}", r.text());
        let size = img.layer_bytes[0].len();
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{size}").as_str())
        );
    }
}

/// A tag no registry could hold (`.INVALID_MANIFEST_NAME`) is unknown, as Distribution says:
/// 404 MANIFEST_UNKNOWN on GET and HEAD, and nothing is asked upstream.
#[tokio::test]
async fn malformed_tag_is_manifest_unknown() {
    let h = Harness::start().await;
    h.fake.sample_image("lib/app", "v1", 6);
    let path = "/v2/lib/app/manifests/.INVALID_MANIFEST_NAME";
    let r = h.get(path).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["errors"][0]["code"], "MANIFEST_UNKNOWN");
    assert_eq!(h.head(path).await.status, StatusCode::NOT_FOUND);
    let (status, _, _) = raw_request(h.addr(), "GET", "/v2/lib/app/manifests/-dash").await;
    assert_eq!(status, 404);
    assert_eq!(h.fake.total(), 0, "{:?}", h.fake.requests());
}
