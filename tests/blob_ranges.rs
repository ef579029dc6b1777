//! Multi-range blob requests (`Range: bytes=a-b,c-d,…`): `multipart/byteranges` answers from the
//! cache, checked byte for byte; merged overlaps; the cap; unsatisfiable sets; suffix and open
//! ranges; HEAD; cold blobs; and the request shape of containers/storage's partial pulls.

mod support;

use archway::config::ColdRanges;
use bytes::Bytes;
use http::StatusCode;
use std::time::Duration;
use support::{logs, FakeRegistry, Harness, Kind, Reply};

/// One part of a `multipart/byteranges` body: its `Content-Range` and bytes.
#[derive(Debug)]
struct Part {
    content_type: String,
    range: (u64, u64),
    total: u64,
    bytes: Bytes,
}

/// Parses a multipart/byteranges body strictly (RFC 9110 §14.6, RFC 2046 framing), taking each
/// part's length from its `Content-Range`.
fn parts(r: &Reply) -> Vec<Part> {
    let ct = r.header("content-type").expect("content-type");
    let boundary = ct
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("not multipart/byteranges: {ct}"));
    assert_eq!(
        r.header("content-length")
            .map(|v| v.parse::<usize>().unwrap()),
        Some(r.body.len()),
        "Content-Length is exact"
    );
    let body = &r.body[..];
    let delim = format!("--{boundary}");
    let mut pos = 0;
    let mut out = Vec::new();
    let take = |pos: &mut usize, s: &str| {
        assert!(
            body[*pos..].starts_with(s.as_bytes()),
            "expected {s:?} at {pos}: {:?}",
            String::from_utf8_lossy(&body[*pos..(*pos + 80).min(body.len())])
        );
        *pos += s.len();
    };
    take(&mut pos, &delim);
    loop {
        if body[pos..].starts_with(b"--") {
            take(&mut pos, "--\r\n");
            assert_eq!(pos, body.len(), "nothing after the close delimiter");
            return out;
        }
        take(&mut pos, "\r\n");
        let end = pos
            + body[pos..]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("end of part headers");
        let headers = std::str::from_utf8(&body[pos..end]).unwrap();
        pos = end + 4;
        let mut content_type = String::new();
        let mut range = None;
        for line in headers.split("\r\n") {
            let (name, value) = line.split_once(": ").unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-type" => content_type = value.to_owned(),
                "content-range" => {
                    let (span, total) = value
                        .strip_prefix("bytes ")
                        .unwrap()
                        .split_once('/')
                        .unwrap();
                    let (a, b) = span.split_once('-').unwrap();
                    range = Some((
                        (a.parse().unwrap(), b.parse().unwrap()),
                        total.parse().unwrap(),
                    ));
                }
                other => panic!("unexpected part header {other}"),
            }
        }
        let ((a, b), total): ((u64, u64), u64) = range.expect("Content-Range in each part");
        let len = (b - a + 1) as usize;
        out.push(Part {
            content_type,
            range: (a, b),
            total,
            bytes: r.body.slice(pos..pos + len),
        });
        pos += len;
        take(&mut pos, &format!("\r\n{delim}"));
    }
}

/// Checks every part against the blob and returns the ranges in the order sent.
fn check_parts(r: &Reply, blob: &Bytes) -> Vec<(u64, u64)> {
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{}", r.text());
    assert!(r.complete(), "{:?}", r.body_error);
    assert!(r.header("content-range").is_none(), "only in the parts");
    let parts = parts(r);
    for p in &parts {
        assert_eq!(p.content_type, "application/octet-stream");
        assert_eq!(p.total, blob.len() as u64);
        let (a, b) = (p.range.0 as usize, p.range.1 as usize);
        assert!(p.bytes == blob.slice(a..=b), "part {a}-{b} byte for byte");
    }
    parts.iter().map(|p| p.range).collect()
}

/// A blob of `size` bytes cached (committed) in archway; its path and bytes.
async fn cached(h: &Harness, seed: u64, size: usize) -> (String, Bytes) {
    let img = h
        .fake
        .sample_image_sized("lib/app", Some("v1"), seed, &[size]);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[0]);
    let whole = h.get(&path).await;
    assert_eq!(whole.status, StatusCode::OK);
    let store = h.archway.as_ref().unwrap().proxy().blob_store().clone();
    store.finish_commits(Duration::from_secs(10)).await;
    (path, img.layer_bytes[0].clone())
}

#[tokio::test]
async fn two_ranges_are_answered_multipart_byte_for_byte() {
    // The first subscriber of this binary wins: every test installs the same one.
    logs::capture_json();
    let h = Harness::start().await;
    // One from a file, one small enough to be served from memory.
    for (seed, size) in [(1, 300_000), (2, 20_000)] {
        let (path, blob) = cached(&h, seed, size).await;
        h.fake.reset_counts();
        let r = h
            .get_with(&path, &[("range", "bytes=0-99,10000-10499")])
            .await;
        assert_eq!(check_parts(&r, &blob), vec![(0, 99), (10000, 10499)]);
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
        assert!(r.header("docker-content-digest").is_some());
        assert_eq!(h.fake.total(), 0, "served from the cache");
    }
}

#[tokio::test]
async fn head_with_ranges_answers_as_get_without_a_body() {
    // The first subscriber of this binary wins: every test installs the same one.
    logs::capture_json();
    let h = Harness::start().await;
    let (path, _) = cached(&h, 3, 300_000).await;
    let range = [("range", "bytes=0-99,200-299,-10")];
    let get = h.get_with(&path, &range).await;
    let head = h
        .client
        .request(http::Method::HEAD, &h.url(&path), &range)
        .await;
    assert_eq!(head.status, StatusCode::PARTIAL_CONTENT);
    assert!(head.body.is_empty());
    for name in ["content-type", "content-length"] {
        assert_eq!(head.header(name), get.header(name), "{name}");
    }
}

#[tokio::test]
async fn overlapping_ranges_are_merged() {
    // The first subscriber of this binary wins: every test installs the same one.
    logs::capture_json();
    let h = Harness::start().await;
    let (path, blob) = cached(&h, 4, 300_000).await;
    let r = h
        .get_with(&path, &[("range", "bytes=5000-5999,0-99,50-149,5500-6500")])
        .await;
    assert_eq!(check_parts(&r, &blob), vec![(0, 149), (5000, 6500)]);
    // Merged into one: a plain 206, not multipart.
    let r = h.get_with(&path, &[("range", "bytes=0-99,50-149")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("content-range"), Some("bytes 0-149/300000"));
    assert_eq!(r.body, blob.slice(0..150));
    // Touching ranges stay separate parts, in the order asked.
    let r = h.get_with(&path, &[("range", "bytes=100-199,0-99")]).await;
    assert_eq!(check_parts(&r, &blob), vec![(100, 199), (0, 99)]);
}

#[tokio::test]
async fn past_max_ranges_the_whole_blob_is_sent() {
    // The first subscriber of this binary wins: every test installs the same one.
    logs::capture_json();
    let fake = FakeRegistry::start().await;
    let h = Harness::with(fake, |c| c.limits.max_ranges = 4).await;
    let (path, blob) = cached(&h, 5, 300_000).await;
    let four = "bytes=0-9,20-29,40-49,60-69";
    let r = h.get_with(&path, &[("range", four)]).await;
    assert_eq!(check_parts(&r, &blob).len(), 4);
    let r = h
        .get_with(&path, &[("range", &format!("{four},80-89"))])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.body, blob);
}

#[tokio::test]
async fn an_unsatisfiable_set_is_416() {
    logs::capture_json();
    let h = Harness::start().await;
    let (path, blob) = cached(&h, 6, 300_000).await;
    for range in ["bytes=300000-,400000-500000", "bytes=-0,300000-300001"] {
        let r = h.get_with(&path, &[("range", range)]).await;
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(r.header("content-range"), Some("bytes */300000"));
        assert_eq!(r.error_code(), "RANGE_INVALID");
    }
    // One satisfiable spec among them: served, the others dropped.
    let r = h
        .get_with(&path, &[("range", "bytes=400000-,0-9,299990-")])
        .await;
    assert_eq!(check_parts(&r, &blob), vec![(0, 9), (299_990, 299_999)]);
}

#[tokio::test]
async fn suffix_and_open_ranges_mix_with_closed_ones() {
    // The first subscriber of this binary wins: every test installs the same one.
    logs::capture_json();
    let h = Harness::start().await;
    let (path, blob) = cached(&h, 7, 300_000).await;
    let r = h
        .get_with(&path, &[("range", "bytes=0-99,-500,1000-1999")])
        .await;
    assert_eq!(
        check_parts(&r, &blob),
        vec![(0, 99), (299_500, 299_999), (1000, 1999)]
    );
    let r = h
        .get_with(&path, &[("range", "bytes=100-199,290000-,-1")])
        .await;
    // `-1` lies inside `290000-`: merged.
    assert_eq!(check_parts(&r, &blob), vec![(100, 199), (290_000, 299_999)]);
    // A suffix longer than the blob is the whole blob.
    let r = h.get_with(&path, &[("range", "bytes=-500000,0-9")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header("content-range"), Some("bytes 0-299999/300000"));
    assert_eq!(r.body, blob);
}

/// Under `cache.cold_ranges = "wait"` (the default) a cold blob with several ranges is sent
/// whole (200) from its download; once cached, the same ranges are answered in parts.
#[tokio::test]
async fn a_cold_blob_with_ranges_is_sent_whole_then_answered_in_parts() {
    // The first subscriber of this binary wins: every test installs the same one.
    logs::capture_json();
    let h = Harness::start().await;
    let img = h
        .fake
        .sample_image_sized("lib/app", Some("v1"), 8, &[300_000]);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[0]);
    let blob = img.layer_bytes[0].clone();
    let r = h.get_with(&path, &[("range", "bytes=0-9,100-109")]).await;
    assert_eq!(r.status, StatusCode::OK, "cold: the whole blob, as before");
    assert_eq!(r.body, blob);
    assert_eq!(h.fake.count("GET", Kind::Blob), 1);
    let store = h.archway.as_ref().unwrap().proxy().blob_store().clone();
    store.finish_commits(Duration::from_secs(10)).await;
    let r = h.get_with(&path, &[("range", "bytes=0-9,100-109")]).await;
    assert_eq!(check_parts(&r, &blob), vec![(0, 9), (100, 109)]);
    assert_eq!(h.fake.count("GET", Kind::Blob), 1);
}

/// With `cache.cold_ranges = "relay"` (not the default) a cold blob with several ranges is
/// answered in parts from its one download as it arrives (ranges this near the start are never
/// asked of upstream on their own; see tests/cold_ranges.rs), and again from the cache.
#[tokio::test]
async fn with_relay_a_cold_blob_with_ranges_is_answered_in_parts_from_its_download() {
    // The first subscriber of this binary wins: every test installs the same one.
    logs::capture_json();
    let fake = FakeRegistry::start().await;
    let h = Harness::with(fake, |c| c.cache.cold_ranges = ColdRanges::Relay).await;
    let img = h
        .fake
        .sample_image_sized("lib/app", Some("v1"), 8, &[300_000]);
    let path = format!("/v2/lib/app/blobs/{}", img.layers[0]);
    let blob = img.layer_bytes[0].clone();
    let r = h.get_with(&path, &[("range", "bytes=0-9,100-109")]).await;
    assert_eq!(check_parts(&r, &blob), vec![(0, 9), (100, 109)]);
    assert_eq!(h.fake.count("GET", Kind::Blob), 1);
    let store = h.archway.as_ref().unwrap().proxy().blob_store().clone();
    store.finish_commits(Duration::from_secs(10)).await;
    let r = h.get_with(&path, &[("range", "bytes=0-9,100-109")]).await;
    assert_eq!(check_parts(&r, &blob), vec![(0, 9), (100, 109)]);
    assert_eq!(h.fake.count("GET", Kind::Blob), 1);
}

#[tokio::test]
async fn verify_reads_checks_a_multipart_answer() {
    // The first subscriber of this binary wins: every test installs the same one.
    logs::capture_json();
    let fake = FakeRegistry::start().await;
    let h = Harness::with(fake, |c| c.cache.verify_reads = true).await;
    let (path, blob) = cached(&h, 9, 300_000).await;
    let r = h
        .get_with(&path, &[("range", "bytes=0-9,1000-1999,-5")])
        .await;
    assert_eq!(check_parts(&r, &blob).len(), 3);
}

/// The request containers/storage (pkg/chunked, through containers/image's `GetBlobAt`) makes
/// for a zstd:chunked partial pull: `bytes=a-b,c-d,…` with no spaces, sorted, never overlapping,
/// adjacent chunks of different files not merged, up to 1024 ranges. It reads the parts in
/// order, one per chunk, so the answer must have exactly one part per range, in order. The
/// access log notes the parts.
#[tokio::test]
async fn the_partial_pull_request_of_containers_storage() {
    let logs = logs::capture_json();
    let h = Harness::start().await;
    let (path, blob) = cached(&h, 10, 1_000_000).await;
    let mut chunks = Vec::new();
    let mut offset = 0u64;
    let mut i = 0u64;
    while chunks.len() < 300 {
        let len = 100 + (i * 37) % 900;
        // Every third chunk follows the one before it directly (gap 0).
        let gap = if i.is_multiple_of(3) {
            0
        } else {
            1024 + (i * 53) % 2000
        };
        offset += gap;
        if offset + len > blob.len() as u64 {
            break;
        }
        chunks.push((offset, offset + len - 1));
        offset += len;
        i += 1;
    }
    let value = chunks
        .iter()
        .map(|(a, b)| format!("{a}-{b}"))
        .collect::<Vec<_>>()
        .join(",");
    let r = h
        .get_with(&path, &[("range", &format!("bytes={value}"))])
        .await;
    assert_eq!(check_parts(&r, &blob), chunks);

    let digest = path.rsplit('/').next().unwrap().to_owned();
    let mut line = None;
    for _ in 0..200 {
        line = logs.json_lines().into_iter().find(|l| {
            l["target"] == "archway::access"
                && l["fields"]["path"]
                    .as_str()
                    .is_some_and(|p| p.contains(&digest))
                && l["fields"]["status"] == 206
        });
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = line.expect("an access line for the 206");
    assert_eq!(line["fields"]["ranges"], chunks.len() as u64, "{line}");
    assert_eq!(line["fields"]["cache"], "hit");
}
