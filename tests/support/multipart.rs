//! `multipart/byteranges` answers, parsed strictly (`tests/cold_ranges.rs`,
//! `tests/fleet_cold_ranges.rs`).

use bytes::Bytes;
use http::StatusCode;

/// One part of a `multipart/byteranges` body: its `Content-Range` `(a, b, total)` and bytes.
pub type Part = ((u64, u64, u64), Bytes);

/// Parses a multipart/byteranges answer strictly (the framing archway sends for a cached blob:
/// boundary `archway-<digest hex, 60 digits>`, each part `Content-Type` then `Content-Range`), checking
/// the exact `Content-Length`.
pub fn parts(r: &super::Reply, digest: &str) -> Vec<Part> {
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{}", r.text());
    assert!(r.complete(), "{:?}", r.body_error);
    assert!(r.header("content-range").is_none(), "only in the parts");
    let hex = digest.strip_prefix("sha256:").unwrap();
    // The start of the digest's hex (a boundary is at most 70 characters).
    let boundary = format!("archway-{}", &hex[..60]);
    assert_eq!(
        r.header("content-type"),
        Some(format!("multipart/byteranges; boundary={boundary}").as_str())
    );
    assert_eq!(
        r.header("content-length")
            .map(|v| v.parse::<usize>().unwrap()),
        Some(r.body.len()),
        "Content-Length is exact"
    );
    let body = &r.body;
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        let lead = if out.is_empty() { "" } else { "\r\n" };
        let close = format!("{lead}--{boundary}--\r\n");
        if body[pos..] == *close.as_bytes() {
            return out;
        }
        let head_start = format!(
            "{lead}--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes "
        );
        assert!(
            body[pos..].starts_with(head_start.as_bytes()),
            "a part's head at {pos}: {:?}",
            String::from_utf8_lossy(&body[pos..(pos + 200).min(body.len())])
        );
        pos += head_start.len();
        let end = pos
            + body[pos..]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap();
        let value = std::str::from_utf8(&body[pos..end]).unwrap();
        let (span, total) = value.split_once('/').unwrap();
        let (a, b) = span.split_once('-').unwrap();
        let (a, b, total): (u64, u64, u64) = (
            a.parse().unwrap(),
            b.parse().unwrap(),
            total.parse().unwrap(),
        );
        pos = end + 4;
        let len = (b - a + 1) as usize;
        out.push(((a, b, total), body.slice(pos..pos + len)));
        pos += len;
    }
}
