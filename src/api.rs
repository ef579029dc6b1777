//! The registry pull API surface: `/v2/...` path + method → [`Endpoint`]. Pure.

use crate::digest::Digest;
use crate::error::{ErrorCode, ProxyError};
use crate::reference::{Reference, ReferenceError};
use http::Method;

/// What a request asks for. The repository part is kept raw here: which prefix of it names an
/// upstream is decided by routing, which knows the configured upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`: the API version check.
    Ping,
    /// Something of one repository.
    Repository { name: String, resource: Resource },
}

/// What of a repository a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Manifest(Reference),
    Blob(Digest),
    TagsList,
    Referrers(Digest),
}

impl Endpoint {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Endpoint::Ping => "ping",
            Endpoint::Repository { resource, .. } => match resource {
                Resource::Manifest(_) => "manifest",
                Resource::Blob(_) => "blob",
                Resource::TagsList => "tags",
                Resource::Referrers(_) => "referrers",
            },
        }
    }

    pub fn name(&self) -> Option<&str> {
        match self {
            Endpoint::Ping => None,
            Endpoint::Repository { name, .. } => Some(name),
        }
    }
}

fn reference_error(e: ReferenceError) -> ProxyError {
    match e {
        ReferenceError::Name => {
            ProxyError::downstream(ErrorCode::NameInvalid, "invalid repository name")
        }
        ReferenceError::Tag => ProxyError::downstream(ErrorCode::TagInvalid, "invalid tag"),
        ReferenceError::Digest(d) => {
            ProxyError::downstream(ErrorCode::DigestInvalid, format!("invalid digest: {d}"))
        }
    }
}

fn parse_digest(s: &str) -> Result<Digest, ProxyError> {
    s.parse()
        .map_err(|e| reference_error(ReferenceError::Digest(e)))
}

fn unsupported(message: &str) -> ProxyError {
    ProxyError::downstream(ErrorCode::Unsupported, message.to_owned())
}

/// Parses the request line. `path` is the raw (still percent-encoded) path: a `%` can never be
/// part of a valid name, tag or digest, so encoded traversal attempts fail validation here.
pub fn parse(method: &Method, path: &str) -> Result<Endpoint, ProxyError> {
    let rest = match path {
        "/v2" | "/v2/" => {
            return if *method == Method::GET || *method == Method::HEAD {
                Ok(Endpoint::Ping)
            } else {
                Err(unsupported("archway is a read-only mirror"))
            };
        }
        p => match p.strip_prefix("/v2/") {
            Some(r) => r,
            None => {
                return Err(ProxyError::downstream(
                    ErrorCode::NameUnknown,
                    "not a registry API path",
                ))
            }
        },
    };
    let segments: Vec<&str> = rest.split('/').collect();
    // The last three segments, from the end: `…/<a>/<b>/<c>`.
    let mut tail = segments.iter().rev().copied();
    let (c, b, a) = (tail.next(), tail.next(), tail.next());
    // Push endpoints are refused whatever the method, before anything else is looked at.
    let n = segments.len();
    if n >= 3 && b == Some("blobs") && c == Some("uploads")
        || n >= 4 && a == Some("blobs") && b == Some("uploads")
    {
        return Err(unsupported(
            "archway is a read-only mirror: pushing is not supported",
        ));
    }
    if *method != Method::GET && *method != Method::HEAD {
        return Err(unsupported(
            "archway is a read-only mirror: only GET and HEAD are supported",
        ));
    }
    if n < 3 {
        return Err(ProxyError::downstream(
            ErrorCode::NameInvalid,
            "invalid repository name",
        ));
    }
    let name = |upto: usize| -> Result<String, ProxyError> {
        let name = segments.get(..upto).unwrap_or_default().join("/");
        if name.is_empty() {
            return Err(ProxyError::downstream(
                ErrorCode::NameInvalid,
                "invalid repository name",
            ));
        }
        Ok(name)
    };
    let (Some(b), Some(c)) = (b, c) else {
        return Err(ProxyError::downstream(
            ErrorCode::NameInvalid,
            "invalid repository name",
        ));
    };
    let name = name(n - 2)?;
    let resource = match (b, c) {
        // Distribution's router has no route for a reference that is neither a tag nor a
        // digest: such a manifest is unknown (404), which is what clients and the OCI
        // conformance suite expect.
        ("manifests", r) => Resource::Manifest(Reference::parse(r).map_err(|_| {
            ProxyError::downstream(
                ErrorCode::ManifestUnknown,
                "manifest unknown: the reference is neither a tag nor a digest",
            )
        })?),
        ("blobs", d) => Resource::Blob(parse_digest(d)?),
        ("tags", "list") => Resource::TagsList,
        ("referrers", d) => Resource::Referrers(parse_digest(d)?),
        _ => {
            return Err(ProxyError::downstream(
                ErrorCode::NameUnknown,
                "unknown registry API path",
            ))
        }
    };
    Ok(Endpoint::Repository { name, resource })
}

/// The `ns` query parameter containerd adds for mirrors.
pub fn ns_param(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("ns="))
        .filter(|v| !v.is_empty())
}

/// The query to pass upstream for tags/list and referrers: only the parameters the API defines,
/// so nothing else a client sends is forwarded.
pub fn passthrough_query(query: Option<&str>, allowed: &[&str]) -> String {
    let kept: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|kv| {
            let key = kv.split('=').next().unwrap_or("");
            allowed.contains(&key) && !kv.contains('#')
        })
        .collect();
    if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    }
}

/// A single byte range from `Range: bytes=…`, resolved against the blob size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// No Range header, or one we serve whole (multi-range: clients accept 200).
    Whole,
    /// Inclusive `start..=end`.
    Part(u64, u64),
    Unsatisfiable,
}

/// Reads `Range` with `http-range-header` (RFC 9110 §14.1.2), against a blob of `size` bytes.
/// A header that does not parse (another unit, `bytes=5-1`, garbage) is ignored, as RFC 9110
/// allows, and so is a list of several ranges: the whole blob is served.
pub fn parse_range(header: Option<&str>, size: u64) -> ByteRange {
    let Some(h) = header.map(str::trim) else {
        return ByteRange::Whole;
    };
    // Several ranges (or a list with an empty element): clients accept a 200 with everything.
    if h.contains(',') {
        return ByteRange::Whole;
    }
    let Ok(ranges) = http_range_header::parse_range_header(h) else {
        return ByteRange::Whole;
    };
    match ranges.validate(size).as_deref() {
        Ok([r]) => ByteRange::Part(*r.start(), *r.end()),
        // A suffix range of an empty blob: there is no byte to send.
        Ok(_) => ByteRange::Unsatisfiable,
        Err(http_range_header::RangeUnsatisfiableError::Unsatisfiable) => ByteRange::Unsatisfiable,
        Err(_) => ByteRange::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn get(p: &str) -> Result<Endpoint, ProxyError> {
        parse(&Method::GET, p)
    }

    #[test]
    fn endpoints() {
        assert_eq!(get("/v2/").unwrap(), Endpoint::Ping);
        assert_eq!(get("/v2").unwrap(), Endpoint::Ping);
        assert_eq!(
            get("/v2/library/alpine/manifests/latest").unwrap().kind(),
            "manifest"
        );
        assert_eq!(
            get(&format!("/v2/a/b/c/blobs/{D}")).unwrap(),
            Endpoint::Repository {
                name: "a/b/c".into(),
                resource: Resource::Blob(D.parse().unwrap())
            }
        );
        assert_eq!(
            get("/v2/x/tags/list").unwrap(),
            Endpoint::Repository {
                name: "x".into(),
                resource: Resource::TagsList
            }
        );
        assert_eq!(
            get(&format!("/v2/x/referrers/{D}")).unwrap().kind(),
            "referrers"
        );
        // A repository may itself contain a `manifests` component.
        assert_eq!(
            get("/v2/foo/manifests/bar/manifests/latest")
                .unwrap()
                .name(),
            Some("foo/manifests/bar")
        );
        assert_eq!(
            get(&format!("/v2/x/manifests/{D}")).unwrap().kind(),
            "manifest"
        );
        // Names with a registry prefix stay raw here; routing splits them.
        assert_eq!(
            get("/v2/127.0.0.1:5000/x/manifests/v1").unwrap().name(),
            Some("127.0.0.1:5000/x")
        );
    }

    #[test]
    fn rejects() {
        let cases: &[(&Method, &str, ErrorCode)] = &[
            // A manifest reference that is neither tag nor digest is unknown, as Distribution
            // answers (its router has no route for it).
            (
                &Method::GET,
                "/v2/x/manifests/-bad",
                ErrorCode::ManifestUnknown,
            ),
            (
                &Method::GET,
                "/v2/x/manifests/.INVALID_MANIFEST_NAME",
                ErrorCode::ManifestUnknown,
            ),
            (
                &Method::HEAD,
                "/v2/x/manifests/a:b",
                ErrorCode::ManifestUnknown,
            ),
            (
                &Method::GET,
                "/v2/x/blobs/sha256:abc",
                ErrorCode::DigestInvalid,
            ),
            (&Method::GET, "/v2/x/blobs/latest", ErrorCode::DigestInvalid),
            (
                &Method::GET,
                "/v2/x/blobs/sha256:../../../etc/passwd",
                ErrorCode::NameUnknown,
            ),
            (
                &Method::GET,
                "/v2/x/blobs/sha256:..%2f..%2fetc",
                ErrorCode::DigestInvalid,
            ),
            (&Method::GET, "/v2/manifests/latest", ErrorCode::NameInvalid),
            (
                &Method::GET,
                "/v2//manifests/latest",
                ErrorCode::NameInvalid,
            ),
            (&Method::GET, "/v2/x/unknown/thing", ErrorCode::NameUnknown),
            (&Method::GET, "/etc/passwd", ErrorCode::NameUnknown),
            (
                &Method::PUT,
                "/v2/x/manifests/latest",
                ErrorCode::Unsupported,
            ),
            (
                &Method::DELETE,
                &format!("/v2/x/blobs/{D}"),
                ErrorCode::Unsupported,
            ),
            (
                &Method::POST,
                "/v2/x/blobs/uploads/",
                ErrorCode::Unsupported,
            ),
            (
                &Method::GET,
                "/v2/x/blobs/uploads/1234",
                ErrorCode::Unsupported,
            ),
            (
                &Method::PATCH,
                "/v2/x/blobs/uploads/1234",
                ErrorCode::Unsupported,
            ),
            (&Method::POST, "/v2/", ErrorCode::Unsupported),
        ];
        for (m, p, code) in cases {
            let e = parse(m, p).unwrap_err();
            assert_eq!(e.code, *code, "{m} {p}");
        }
    }

    #[test]
    fn ns_and_query() {
        assert_eq!(ns_param(Some("ns=docker.io")), Some("docker.io"));
        assert_eq!(ns_param(Some("a=b&ns=ghcr.io")), Some("ghcr.io"));
        assert_eq!(ns_param(Some("ns=")), None);
        assert_eq!(ns_param(None), None);
        assert_eq!(
            passthrough_query(Some("n=10&last=abc&ns=docker.io&evil=1"), &["n", "last"]),
            "?n=10&last=abc"
        );
        assert_eq!(passthrough_query(None, &["n"]), "");
    }

    #[test]
    fn ranges() {
        use ByteRange::*;
        let cases: &[(Option<&str>, u64, ByteRange)] = &[
            (None, 100, Whole),
            (Some("bytes=0-"), 100, Part(0, 99)),
            (Some("bytes=10-"), 100, Part(10, 99)),
            (Some("bytes=10-19"), 100, Part(10, 19)),
            (Some("bytes=90-200"), 100, Part(90, 99)),
            (Some("bytes=-10"), 100, Part(90, 99)),
            (Some("bytes=100-"), 100, Unsatisfiable),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("bytes=0-1,5-6"), 100, Whole),
            (Some("items=0-1"), 100, Whole),
            (Some("bytes=5-1"), 100, Whole),
            (Some("bytes=0-0"), 1, Part(0, 0)),
            (Some("bytes=99-"), 100, Part(99, 99)),
            (Some("bytes=-200"), 100, Part(0, 99)),
            (Some("bytes=150-200"), 100, Unsatisfiable),
            (Some("bytes=-10"), 0, Unsatisfiable),
            (Some(" bytes=10-19 "), 100, Part(10, 19)),
            (Some("bytes= 10-19"), 100, Part(10, 19)),
            (Some("bytes=0-1,"), 100, Whole),
            (Some("bytes=0-1, 5-6"), 100, Whole),
            (Some("bytes="), 100, Whole),
            (Some("bytes=-"), 100, Whole),
            (Some("bytes=abc"), 100, Whole),
            (Some("bytes=10"), 100, Whole),
            (Some(""), 100, Whole),
            // RFC 9110 §14.1.1: a suffix of length 0 is unsatisfiable (was 200 before
            // http-range-header), as is a first byte past the end however many digits it has.
            (Some("bytes=-0"), 100, Unsatisfiable),
            (Some("bytes=99999999999999999999999-"), 100, Unsatisfiable),
            // Positions past u64 are clamped like any other (were ignored before).
            (Some("bytes=0-99999999999999999999999"), 100, Part(0, 99)),
            (Some("bytes=-99999999999999999999999"), 100, Part(0, 99)),
            // The unit is case-insensitive (RFC 9110 §14.1).
            (Some("Bytes=10-19"), 100, Part(10, 19)),
            // Not the RFC's grammar: ignored, whole blob.
            (Some("bytes=10 - 19"), 100, Whole),
            (Some("bytes=+10-19"), 100, Whole),
        ];
        for (h, size, want) in cases {
            assert_eq!(parse_range(*h, *size), *want, "{h:?} {size}");
        }
    }
}
