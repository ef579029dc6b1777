//! Building responses: registry headers, digests, `If-None-Match`, `Range`, error bodies. Pure:
//! given what to answer, it makes the `Response`.

use super::client::ClientRequest;
use super::multipart;
use crate::access_log::RequestNotes;
use crate::body::{self, ResponseBody};
use crate::byte_ranges::{self, Multipart, RangeAnswer};
use crate::cache::blob::Blob;
use crate::digest::Digest;
use crate::error::{ErrorCode, ProxyError};
use crate::manifest::Manifest;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

pub(crate) const API_VERSION: HeaderName =
    HeaderName::from_static("docker-distribution-api-version");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
/// What a rewritten (or rewritable) answer depends on.
pub(crate) const HINT_VARY: &str = "Accept, User-Agent, X-Meta-Platform, X-Meta-Layers";
const STALE_WARNING: &str = "110 - \"Response is Stale\"";

/// `Docker-Content-Digest` and `ETag` for a digest. Built from one formatted string, handed to
/// `HeaderValue` without another copy: these are on every cached answer's path.
pub(crate) fn insert_digest_headers(h: &mut HeaderMap, digest: &Digest) {
    let plain = digest.to_string();
    let quoted = format!("\"{plain}\"");
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(plain)) {
        h.insert(CONTENT_DIGEST, v);
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(quoted)) {
        h.insert(header::ETAG, v);
    }
}

/// `If-None-Match` naming this digest, quoted or not, alone or in a list.
pub(crate) fn not_modified(headers: &HeaderMap, digest: &Digest) -> bool {
    let names = |t: &str| {
        t == "*"
            || t.strip_prefix(digest.algorithm().as_str())
                .and_then(|rest| rest.strip_prefix(':'))
                == Some(digest.hex())
    };
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/").trim_matches('"'))
        .any(names)
}

pub(crate) fn ping() -> Response<ResponseBody> {
    let mut r = Response::new(body::full(Bytes::from_static(b"{}")));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
    r
}

pub(crate) fn manifest_response(
    client: &ClientRequest,
    m: &Manifest,
    stale: bool,
    vary: bool,
) -> Response<ResponseBody> {
    let mut r = if not_modified(&client.headers, &m.digest) {
        let mut r = Response::new(body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(if client.method == Method::HEAD {
            body::empty()
        } else {
            body::full(m.bytes.clone())
        });
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(m.bytes.len() as u64),
        );
        if let Ok(v) = HeaderValue::from_str(&m.media_type) {
            h.insert(header::CONTENT_TYPE, v);
        }
        r
    };
    let h = r.headers_mut();
    insert_digest_headers(h, &m.digest);
    if stale {
        h.insert(header::WARNING, HeaderValue::from_static(STALE_WARNING));
    }
    if vary {
        h.insert(header::VARY, HeaderValue::from_static(HINT_VARY));
    }
    r
}

pub(crate) fn blob_headers(h: &mut HeaderMap, digest: &Digest) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    insert_digest_headers(h, digest);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Blobs are immutable: let any HTTP cache in front keep them.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=31536000, immutable"),
    );
}

/// A blob answer: headers, `If-None-Match`, `Range`. A list of ranges is answered
/// `multipart/byteranges` for a blob held here whole and verified; one still downloading gets it
/// whole (200) here (under `cache.cold_ranges = "relay"`, `Blobs::serve` answers it in parts
/// before this is reached). Past `max_ranges` range-specs the whole blob is sent too.
pub(crate) fn blob_response(
    client: &ClientRequest,
    digest: &Digest,
    blob: &Blob,
    max_ranges: usize,
    notes: &mut RequestNotes,
) -> Response<ResponseBody> {
    let mut r = Response::new(body::empty());
    blob_headers(r.headers_mut(), digest);
    if not_modified(&client.headers, digest) {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        return r;
    }
    let head = client.method == Method::HEAD;
    let Some(size) = blob.size() else {
        // Upstream sent no length: stream it whole, ranges can't be answered yet.
        if !head {
            *r.body_mut() = blob.body(None);
        }
        return r;
    };
    let range = client
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    let (status, span) = match byte_ranges::parse(range, size, max_ranges) {
        RangeAnswer::Whole => (StatusCode::OK, None),
        RangeAnswer::Single(a, b) => (StatusCode::PARTIAL_CONTENT, Some((a, b))),
        RangeAnswer::Multi(ranges) if blob.is_local() => {
            let blob = blob.clone();
            return multipart(r, digest, ranges, size, head, notes, move |range, i| {
                blob.part_body(range, i)
            });
        }
        // Still downloading (`cold_ranges = "wait"`): the whole blob, as before.
        RangeAnswer::Multi(_) => (StatusCode::OK, None),
        RangeAnswer::Unsatisfiable => {
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            let e =
                ProxyError::downstream(ErrorCode::RangeInvalid, "requested range not satisfiable");
            *r.body_mut() = if head {
                body::empty()
            } else {
                body::full(e.body())
            };
            return r;
        }
    };
    *r.status_mut() = status;
    let len = match span {
        Some((a, b)) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            b - a + 1
        }
        None => size,
    };
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if !head {
        *r.body_mut() = blob.body_sent_by(span, client.lane.clone());
    }
    r
}

/// 206 with the bytes `start..=end` of a blob of `size` bytes in `body` (exactly that many).
pub(crate) fn range_response(
    digest: &Digest,
    (start, end): (u64, u64),
    size: u64,
    body: ResponseBody,
) -> Response<ResponseBody> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::PARTIAL_CONTENT;
    let h = r.headers_mut();
    blob_headers(h, digest);
    if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
        h.insert(header::CONTENT_RANGE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
    r
}

/// 206 `multipart/byteranges` with the exact `Content-Length`; a HEAD gets the same headers.
/// `part(range, index)` makes each part's body when the body reaches it.
pub(crate) fn multipart<F>(
    mut r: Response<ResponseBody>,
    digest: &Digest,
    ranges: Vec<(u64, u64)>,
    size: u64,
    head: bool,
    notes: &mut RequestNotes,
    part: F,
) -> Response<ResponseBody>
where
    F: Fn((u64, u64), usize) -> ResponseBody + Send + 'static,
{
    let layout = Multipart::new(byte_ranges::boundary_for(digest.hex()), &ranges, size);
    notes.ranges = Some(ranges.len());
    *r.status_mut() = StatusCode::PARTIAL_CONTENT;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&layout.content_type()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(layout.content_length),
    );
    if !head {
        *r.body_mut() = multipart::body(layout, ranges, part);
    }
    r
}

pub fn error_response(e: &ProxyError, head: bool) -> Response<ResponseBody> {
    let bytes = e.body();
    let len = bytes.len() as u64;
    let mut r = Response::new(if head {
        body::empty()
    } else {
        body::full(bytes)
    });
    *r.status_mut() = e.status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(ra) = &e.retry_after {
        h.insert(header::RETRY_AFTER, ra.clone());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_forms() {
        let d = Digest::sha256_of(b"x");
        for v in [
            format!("\"{d}\""),
            d.to_string(),
            format!("W/\"{d}\""),
            format!("\"a\", \"{d}\""),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&v).unwrap());
            assert!(not_modified(&h, &d), "{v}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"sha256:other\""),
        );
        assert!(!not_modified(&h, &d));
        assert!(!not_modified(&HeaderMap::new(), &d));
    }
}
