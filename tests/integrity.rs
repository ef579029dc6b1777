//! No client ever gets a response it cannot tell from a complete, verified one, and no download
//! outgrows its bounds: HTTP/1.0 clients and unknown lengths, damaged cached blobs (found on
//! load, by the scrub, or by `verify_reads`), declared and endless sizes, a cache that cannot
//! write, and a bad blob asked for again and again.

mod support;

use http::StatusCode;
use std::path::Path;
use std::time::{Duration, Instant};
use support::metrics::Scrape;
use support::{wait_for, FakeRegistry, Fault, Harness, Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP/1.0 request, read to the end: (status, headers, body, whether it ended cleanly).
async fn http10(addr: std::net::SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    (status, head.to_ascii_lowercase(), raw[split + 4..].to_vec())
}

fn blob_file(dir: &Path, digest: &archway::digest::Digest) -> std::path::PathBuf {
    dir.join("blobs/sha256")
        .join(&digest.hex()[..2])
        .join(digest.hex())
}

async fn committed(h: &Harness) {
    let store = h.archway.as_ref().unwrap().proxy().blob_store().clone();
    store.finish_commits(Duration::from_secs(10)).await;
}

fn stats(h: &Harness) -> archway::cache::blob::BlobStoreStats {
    h.archway.as_ref().unwrap().proxy().blob_store().stats()
}

/// HTTP/1.0 (nginx's `proxy_pass` default) has no chunked framing: a cold blob whose upstream
/// sends no Content-Length would reach it close-delimited, and wrong bytes would look whole.
/// archway answers it only once the download verified, with a length.
#[tokio::test]
async fn http10_gets_a_cold_blob_only_verified_and_with_a_length() {
    let h = Harness::start().await;
    let img = h
        .fake
        .sample_image_sized("lib/app", Some("v1"), 3, &[200_000, 150_000]);
    // Wrong bytes, no length: an error, never a 200.
    h.fake
        .fault_times(Some(Kind::Blob), Fault::NoLengthWrongBytes, 1);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[0]);
    let (status, _, _) = http10(h.addr(), &path).await;
    assert_eq!(status, 502);
    // Right bytes, no length: a 200 with the verified length.
    h.fake.fault_times(Some(Kind::Blob), Fault::NoLength, 1);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[1]);
    let (status, head, body) = http10(h.addr(), &path).await;
    assert_eq!(status, 200);
    assert!(
        head.contains(&format!("content-length: {}", img.layer_bytes[1].len())),
        "{head}"
    );
    assert_eq!(body, img.layer_bytes[1]);
}

/// A small cached blob whose file no longer matches its digest is dropped when loaded and
/// downloaded again: never served.
#[tokio::test]
async fn a_damaged_small_blob_is_dropped_and_fetched_again() {
    let h = Harness::start().await;
    let img = h.fake.sample_image("lib/app", "v1", 4);
    let path = format!("/v2/lib/app/blobs/{}", img.config);
    assert_eq!(h.get(&path).await.body, img.config_bytes);
    committed(&h).await;
    let file = blob_file(&h.data_dir(), &img.config);
    std::fs::write(&file, vec![b'x'; img.config_bytes.len()]).unwrap();
    let r = h.get(&path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.complete());
    assert_eq!(r.body, img.config_bytes, "the damaged file is never served");
    assert_eq!(h.fake.count("GET", Kind::Blob), 2, "fetched again");
    assert_eq!(stats(&h).damaged_on_read, 1);
    committed(&h).await;
    assert_eq!(std::fs::read(&file).unwrap(), img.config_bytes.to_vec());
}

/// Large cached blobs are re-checked by the scrub; a damaged one is dropped and counted.
#[tokio::test]
async fn the_scrub_finds_a_damaged_large_blob() {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.cache.scrub_interval = Duration::from_millis(300);
        c.cache.scrub_rate = 64 << 20;
        c.admin_listen = None;
    })
    .await;
    let img = h
        .fake
        .sample_image_sized("lib/app", Some("v1"), 5, &[400_000]);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[0]);
    assert_eq!(h.get(&path).await.body, img.layer_bytes[0]);
    committed(&h).await;
    let file = blob_file(&h.data_dir(), &img.layers[0]);
    let mut damaged = std::fs::read(&file).unwrap();
    damaged[123_456] ^= 1;
    std::fs::write(&file, &damaged).unwrap();
    wait_for(|| stats(&h).damaged_by_scrub == 1, "the scrub found it").await;
    assert!(stats(&h).scrub_checked >= 1);
    assert!(!file.exists(), "dropped");
    let s = Scrape::parse(h.archway.as_ref().unwrap().proxy().metrics().encode());
    assert_eq!(
        s.value("archway_blob_damaged_total", &[("found_by", "scrub")]),
        1.0
    );
    assert!(s.value("archway_blob_scrub_checked_total", &[]) >= 1.0);
    let r = h.get(&path).await;
    assert_eq!(r.body, img.layer_bytes[0]);
    assert_eq!(h.fake.count("GET", Kind::Blob), 2, "fetched again");
}

/// With `cache.verify_reads`, every read is checked: a damaged file's response is broken off
/// before its last byte, and the blob is dropped.
#[tokio::test]
async fn verify_reads_breaks_off_a_damaged_read() {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.cache.verify_reads = true;
    })
    .await;
    let img = h
        .fake
        .sample_image_sized("lib/app", Some("v1"), 6, &[700_000]);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[0]);
    assert_eq!(h.get(&path).await.body, img.layer_bytes[0]);
    committed(&h).await;
    // A good read passes.
    let r = h.get(&path).await;
    assert!(r.complete());
    assert_eq!(r.body, img.layer_bytes[0]);
    let file = blob_file(&h.data_dir(), &img.layers[0]);
    let mut damaged = std::fs::read(&file).unwrap();
    damaged[10] ^= 1;
    std::fs::write(&file, &damaged).unwrap();
    let r = h.get(&path).await;
    assert!(!r.complete(), "a damaged read must not end cleanly");
    assert!(
        r.body.len() < img.layer_bytes[0].len(),
        "broken off before its last byte"
    );
    // A range read is checked too (the whole file first).
    let r = h.get_with(&path, &[("range", "bytes=0-99")]).await;
    assert!(
        !(r.status == StatusCode::PARTIAL_CONTENT && r.complete() && r.body == damaged[..100]),
        "a damaged range is never served whole"
    );
    // The damaged copy is dropped. The range request may already have downloaded a good one
    // to the same path (a miss once the damaged copy is gone), so "no file" is a race, not the
    // point: the point is that the damaged bytes are gone.
    wait_for(
        || std::fs::read(&file).map_or(true, |b| b != damaged),
        "dropped",
    )
    .await;
    let r = h.get(&path).await;
    assert!(r.complete());
    assert_eq!(r.body, img.layer_bytes[0]);
    assert!(stats(&h).damaged_on_read >= 1);
}

/// Mean time of `n` one-byte Range reads of `path`, each checked.
async fn one_byte_ranges(h: &Harness, path: &str, expect: u8, n: u32) -> Duration {
    let started = Instant::now();
    for _ in 0..n {
        let r = h.get_with(path, &[("range", "bytes=1000-1000")]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{}", r.text());
        assert!(r.complete());
        assert_eq!(r.body.as_ref(), &[expect]);
    }
    started.elapsed() / n
}

/// With `cache.verify_reads`, a 1-byte Range of a large cached blob no longer re-hashes the whole
/// blob every time: a whole-blob check (the download's own, a verified whole read, the scrub)
/// vouches for its range reads for a while. Damage is still found by a whole read.
#[tokio::test]
async fn verify_reads_range_reads_do_not_rehash_a_recently_verified_blob() {
    const SIZE: usize = 50_000_000;
    let mut h = Harness::with(FakeRegistry::start().await, |c| {
        c.cache.verify_reads = true;
    })
    .await;
    let img = h
        .fake
        .sample_image_sized("lib/app", Some("v1"), 11, &[SIZE]);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[0]);
    let byte = img.layer_bytes[0][1000];
    // The download verified every byte before its commit.
    assert_eq!(h.get(&path).await.body.len(), SIZE);
    committed(&h).await;
    let before = stats(&h).read_check_bytes;
    let took = one_byte_ranges(&h, &path, byte, 20).await;
    let hashed = stats(&h).read_check_bytes - before;
    println!(
        "verify_reads, 1-byte Range of a {SIZE}-byte cached blob: {} µs each, {hashed} bytes hashed for 20",
        took.as_micros()
    );
    assert_eq!(
        hashed, 0,
        "a range read of a blob just verified hashes nothing"
    );

    // verify_reads_ttl = 0s: every range read hashes the whole blob (what it always did).
    h.restart_with(|c| c.cache.verify_reads_ttl = Duration::ZERO)
        .await;
    let before = stats(&h).read_check_bytes;
    let took_ttl0 = one_byte_ranges(&h, &path, byte, 20).await;
    let hashed = stats(&h).read_check_bytes - before;
    println!(
        "verify_reads_ttl = 0s: {} µs each, {hashed} bytes hashed for 20",
        took_ttl0.as_micros()
    );
    assert_eq!(hashed, 20 * SIZE as u64);

    // Nothing is vouched for after a restart until checked once: the first range read hashes the
    // blob, the ones after it do not.
    h.restart_with(|c| c.cache.verify_reads_ttl = Duration::from_secs(3600))
        .await;
    let before = stats(&h).read_check_bytes;
    one_byte_ranges(&h, &path, byte, 1).await;
    assert_eq!(stats(&h).read_check_bytes - before, SIZE as u64);
    one_byte_ranges(&h, &path, byte, 5).await;
    assert_eq!(stats(&h).read_check_bytes - before, SIZE as u64);
    // A verified whole read vouches too…
    h.restart().await;
    let before = stats(&h).read_check_bytes;
    assert_eq!(h.get(&path).await.body.len(), SIZE);
    one_byte_ranges(&h, &path, byte, 5).await;
    assert_eq!(stats(&h).read_check_bytes - before, SIZE as u64);
    // …and so does the scrub.
    h.restart_with(|c| {
        c.cache.scrub_interval = Duration::from_millis(100);
        c.cache.scrub_rate = 1 << 30;
    })
    .await;
    wait_for(|| stats(&h).scrub_checked >= 1, "the scrub checked it").await;
    let before = stats(&h).read_check_bytes;
    one_byte_ranges(&h, &path, byte, 5).await;
    assert_eq!(stats(&h).read_check_bytes - before, 0);
    h.restart_with(|c| c.cache.scrub_interval = Duration::ZERO)
        .await;

    // A whole read still hashes what it sends, and finds damage.
    let file = blob_file(&h.data_dir(), &img.layers[0]);
    let mut damaged = std::fs::read(&file).unwrap();
    damaged[SIZE - 10] ^= 1;
    std::fs::write(&file, &damaged).unwrap();
    drop(damaged);
    let r = h.get(&path).await;
    assert!(!r.complete(), "a damaged whole read must not end cleanly");
    wait_for(|| !file.exists(), "dropped").await;
    assert!(stats(&h).damaged_on_read >= 1);
}

/// An upstream that declares a 10 TiB blob is refused before a byte is kept, not passed on.
#[tokio::test]
async fn a_declared_10_tib_blob_is_refused() {
    let h = Harness::start().await;
    let img = h
        .fake
        .sample_image_sized("lib/app", Some("v1"), 7, &[100_000]);
    h.fake
        .fault_times(Some(Kind::Blob), Fault::ClaimLength(10 << 40), 1);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[0]);
    let started = Instant::now();
    let r = h.get(&path).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(r.text().contains("max_blob_size"), "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(support::files_under(&h.data_dir().join("tmp")).len(), 0);
}

/// By default the largest blob downloaded is the cache's budget: a larger one is refused.
#[tokio::test]
async fn a_blob_over_max_blob_size_is_refused() {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.cache.max_size = 50_000;
    })
    .await;
    let img = h
        .fake
        .sample_image_sized("lib/app", Some("v1"), 11, &[120_000]);
    let r = h.get(&format!("/v2/lib/app/blobs/{}", img.layers[0])).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(r.text().contains("max_blob_size"), "{}", r.text());
}

/// A body that never ends is bounded by `cache.max_blob_size`, and stops as soon as nobody
/// follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_stops_at_a_bound() {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.cache.max_blob_size = Some(4 << 20);
    })
    .await;
    let img = h
        .fake
        .sample_image_sized("lib/app", Some("v1"), 8, &[100_000, 100_001]);
    // A client that reads on: the download fails at the bound, the client's body breaks off.
    h.fake.fault_times(Some(Kind::Blob), Fault::Endless, 1);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[0]);
    let r = h.get(&path).await;
    assert!(!r.complete(), "an endless body never ends cleanly");
    assert!(r.body.len() <= 4 << 20);
    // A client that leaves: the download stops with it.
    h.fake.fault_times(Some(Kind::Blob), Fault::Endless, 1);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[1]);
    let mut s = TcpStream::connect(h.addr()).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    // Read a while, but never spin on a closed connection (read returns 0 from then on).
    while got < 256 << 10 {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the body keeps coming")
            .unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    drop(s);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = h.fake.endless_bytes_sent();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        h.fake.endless_bytes_sent() - sent < 2 << 20,
        "upstream kept sending after the only client left"
    );
    // Each of the two downloads takes at most max_blob_size (4 MiB); what the fake counts as
    // sent also includes what sat in the loopback socket buffers (up to ~10 MiB a connection
    // when the kernel autotunes them under load).
    assert!(h.fake.endless_bytes_sent() < 32 << 20);
    wait_for(
        || support::files_under(&h.data_dir().join("tmp")).is_empty(),
        "temp files removed",
    )
    .await;
}

/// When the cache cannot write (here: its temp directory is not a directory), cold blobs are
/// served uncached — verified on the way — instead of failing.
#[tokio::test]
async fn a_cache_that_cannot_write_serves_blobs_uncached() {
    let h = Harness::start().await;
    let img = h
        .fake
        .sample_image_sized("lib/app", Some("v1"), 9, &[300_000]);
    let tmp = h.data_dir().join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let path = format!("/v2/lib/app/blobs/{}", img.layers[0]);
    for _ in 0..2 {
        let r = h.get(&path).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(r.complete());
        assert_eq!(r.body, img.layer_bytes[0]);
    }
    // Wrong bytes uncached: broken off, never a clean 200.
    h.fake.fault_times(Some(Kind::Blob), Fault::WrongBytes, 1);
    let r = h.get(&path).await;
    assert!(!(r.status == StatusCode::OK && r.complete()));
    assert_eq!(h.fake.count("GET", Kind::Blob), 3, "nothing kept");
}

/// A disk short of `cache.min_free_space` keeps nothing more: blobs are still served, verified,
/// straight from upstream.
#[tokio::test]
async fn a_disk_short_of_min_free_space_serves_blobs_uncached() {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        // More than any disk has free: every download finds the disk "too full".
        c.cache.min_free_space = u64::MAX / 4;
    })
    .await;
    let img = h
        .fake
        .sample_image_sized("lib/app", Some("v1"), 12, &[200_000]);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[0]);
    for _ in 0..2 {
        let r = h.get(&path).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(r.complete());
        assert_eq!(r.body, img.layer_bytes[0]);
    }
    committed(&h).await;
    assert!(
        !blob_file(&h.data_dir(), &img.layers[0]).exists(),
        "nothing kept"
    );
    assert_eq!(
        h.fake.count("GET", Kind::Blob),
        2,
        "each served from upstream"
    );
}

/// A blob upstream serves wrong is remembered: a burst of requests for it makes one upstream
/// request, not one each (for `cache.negative_ttl`).
#[tokio::test]
async fn a_bad_blob_is_remembered() {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.cache.negative_ttl = Duration::from_secs(2);
    })
    .await;
    let img = h
        .fake
        .sample_image_sized("lib/app", Some("v1"), 10, &[50_000]);
    h.fake
        .fault_times(Some(Kind::Blob), Fault::WrongBytes, 1000);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[0]);
    for i in 0..20 {
        let r = h.get(&path).await;
        assert!(!(r.status == StatusCode::OK && r.complete()), "#{i}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        h.fake.count("GET", Kind::Blob),
        1,
        "one upstream GET for 20 requests"
    );
    // Once the memory expires, upstream is asked again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    h.fake.clear_faults();
    let r = h.get(&path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, img.layer_bytes[0]);
    assert_eq!(h.fake.count("GET", Kind::Blob), 2);
}
