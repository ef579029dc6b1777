//! Cached blob bodies sent by the kernel (`cache.sendfile`, issue 23 requirement 1): on plain
//! HTTP/1.1 the bytes go from the blob file to the socket with `sendfile`, and everything a
//! client sees is as before — whole bodies, ranges, keep-alive and pipelined requests mixing blob
//! and other answers, a file that ends early breaking the answer off. TLS, h2, `verify_reads`
//! whole reads and `cache.sendfile = false` read and write as before.
//! `archway_sendfile_bytes_total` shows which way the bytes went.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::Duration;
use support::fake_registry::pseudo_random_bytes;
use support::{FakeRegistry, Harness};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A blob of several sendfile segments (1 MiB each) and an odd tail.
const SIZE: usize = 3 * 1024 * 1024 + 12_345;

fn sendfile_bytes(h: &Harness) -> f64 {
    let text = h.archway.as_ref().unwrap().proxy().metrics().encode();
    support::metrics::Scrape::parse(text).value("archway_sendfile_bytes_total", &[])
}

/// Caches a blob of `SIZE` bytes in `h`; returns its path and bytes.
async fn cached_blob(h: &Harness, repo: &str, seed: u64) -> (String, Vec<u8>) {
    let bytes = pseudo_random_bytes(seed, SIZE);
    let digest = h.fake.add_blob(repo, bytes.clone());
    let path = format!("/v2/{repo}/blobs/{digest}");
    assert!(h.get(&path).await.complete());
    let store = h.archway.as_ref().unwrap().proxy().blob_store().clone();
    store.finish_commits(Duration::from_secs(10)).await;
    (path, bytes)
}

/// One HTTP/1.1 response read off a raw connection: status, headers, body (by Content-Length).
async fn read_response(
    r: &mut BufReader<TcpStream>,
    head_request: bool,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; if head_request { 0 } else { len }];
    r.read_exact(&mut body).await.unwrap();
    (status, headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_blobs_go_by_sendfile_and_pipelined_answers_stay_in_order() {
    let h = Harness::start().await;
    let (path, bytes) = cached_blob(&h, "lib/sent", 1).await;
    let img = h.fake.sample_image("lib/sent", "v1", 2);
    let manifest = format!("/v2/lib/sent/manifests/{}", img.manifest);
    let before = sendfile_bytes(&h);

    // Six requests written at once on one connection: blob, range, HEAD, manifest, a range
    // across segment boundaries, the blob again.
    let host = h.addr().to_string();
    let get = |p: &str, extra: &str| format!("GET {p} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n");
    let requests = [
        get(&path, ""),
        get(&path, "Range: bytes=100-199\r\n"),
        format!("HEAD {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        get(&manifest, &format!("Accept: {}\r\n", img.media_type)),
        get(&path, "Range: bytes=1048000-2200000\r\n"),
        get(&path, ""),
    ]
    .concat();
    let mut conn = TcpStream::connect(h.addr()).await.unwrap();
    conn.write_all(requests.as_bytes()).await.unwrap();
    let mut r = BufReader::new(conn);

    let (status, _, body) = read_response(&mut r, false).await;
    assert_eq!(status, 200);
    assert!(body == bytes, "the whole blob, byte for byte");
    let (status, headers, body) = read_response(&mut r, false).await;
    assert_eq!(status, 206);
    assert!(headers.contains(&("content-range".into(), format!("bytes 100-199/{SIZE}"))));
    assert_eq!(body, &bytes[100..200]);
    let (status, headers, body) = read_response(&mut r, true).await;
    assert_eq!(status, 200);
    assert!(headers.contains(&("content-length".into(), SIZE.to_string())));
    assert!(body.is_empty());
    let (status, _, body) = read_response(&mut r, false).await;
    assert_eq!(status, 200);
    assert!(body == img.manifest_bytes);
    let (status, _, body) = read_response(&mut r, false).await;
    assert_eq!(status, 206);
    assert!(body == bytes[1048000..=2200000], "a range across segments");
    let (status, _, body) = read_response(&mut r, false).await;
    assert_eq!(status, 200);
    assert!(body == bytes, "the blob again on the same connection");

    let sent = sendfile_bytes(&h) - before;
    let expected = (2 * SIZE + 100 + (2200000 - 1048000 + 1)) as f64;
    assert_eq!(sent, expected, "every blob byte went by sendfile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_file_that_ends_early_breaks_the_answer_off() {
    let h = Harness::start().await;
    let (path, _) = cached_blob(&h, "lib/short", 3).await;
    let file = support::files_under(&h.data_dir())
        .into_iter()
        .find(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) == SIZE as u64)
        .expect("the cached blob's file");
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len((SIZE / 2) as u64).unwrap();
    let reply = h.get(&path).await;
    assert!(
        !reply.complete() || reply.status != http::StatusCode::OK,
        "a short file never makes a complete 200"
    );
    assert!(reply.body.len() < SIZE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendfile_off_and_verified_whole_reads_go_through_archway() {
    for (tweak, what) in [
        (
            (|c: &mut archway::config::Config| c.cache.sendfile = false) as fn(&mut _),
            "cache.sendfile = false",
        ),
        (|c| c.cache.verify_reads = true, "cache.verify_reads"),
    ] {
        let h = Harness::with(FakeRegistry::start().await, tweak).await;
        let (path, bytes) = cached_blob(&h, "lib/read", 4).await;
        let before = sendfile_bytes(&h);
        let reply = h.get(&path).await;
        assert!(
            reply.complete() && reply.body == bytes,
            "{what}: whole and right"
        );
        assert_eq!(sendfile_bytes(&h) - before, 0.0, "{what}: read and written");
    }
}

/// h2 frames every byte itself: a cached blob over h2c is read and written, and whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_answers_are_not_sent_by_sendfile() {
    let h = Harness::start().await;
    let (path, bytes) = cached_blob(&h, "lib/h2", 5).await;
    let before = sendfile_bytes(&h);
    let io = TokioIo::new(TcpStream::connect(h.addr()).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(h.url(&path)).body(Empty::new()).unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body == bytes);
    assert_eq!(sendfile_bytes(&h) - before, 0.0);
}
