//! Pure redirect logic: which statuses are followed, resolving `Location` against the current
//! URL (RFC 3986 §5.2), and whether `Authorization` may go along.

use http::uri::{Scheme, Uri};
use http::StatusCode;

/// Most hops followed before giving up (a CDN redirect is usually one).
pub const MAX_REDIRECTS: usize = 5;

pub fn is_followed(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectError {
    #[error("redirect Location is not a usable http(s) URL")]
    BadLocation,
}

/// Resolves a `Location` value against the URL that answered with it. Accepts absolute URLs,
/// scheme-relative `//host/path`, absolute paths and relative paths; the fragment is dropped.
/// Only http and https targets are accepted.
pub fn resolve_location(base: &Uri, location: &str) -> Result<Uri, RedirectError> {
    let location = location.trim();
    let location = location.split('#').next().unwrap_or_default();
    if location.is_empty() {
        return Err(RedirectError::BadLocation);
    }
    let base_scheme = base.scheme_str().ok_or(RedirectError::BadLocation)?;
    let base_authority = base.authority().ok_or(RedirectError::BadLocation)?;

    let absolute = if has_scheme(location) {
        location.to_owned()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{base_scheme}://{rest}")
    } else {
        let (path, query) = match location.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (location, None),
        };
        let merged = if path.is_empty() {
            // Query-only reference keeps the base path.
            base.path().to_owned()
        } else if path.starts_with('/') {
            remove_dot_segments(path)
        } else {
            let base_path = base.path();
            let dir = match base_path.rfind('/') {
                Some(i) => &base_path[..=i],
                None => "/",
            };
            remove_dot_segments(&format!("{dir}{path}"))
        };
        match query {
            Some(q) => format!("{base_scheme}://{base_authority}{merged}?{q}"),
            None => format!("{base_scheme}://{base_authority}{merged}"),
        }
    };
    let uri: Uri = absolute.parse().map_err(|_| RedirectError::BadLocation)?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {}
        _ => return Err(RedirectError::BadLocation),
    }
    if uri.host().unwrap_or_default().is_empty() {
        return Err(RedirectError::BadLocation);
    }
    Ok(uri)
}

/// `scheme:` at the start, per RFC 3986 (`ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"`).
fn has_scheme(s: &str) -> bool {
    let Some(colon) = s.find(':') else {
        return false;
    };
    let scheme = &s[..colon];
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// RFC 3986 §5.2.4, on a path that starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// Scheme, lowercased host and effective port: what must stay equal for `Authorization` to
/// be sent along.
fn origin(uri: &Uri) -> Option<(String, String, u16)> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = uri.host()?.to_ascii_lowercase();
    let port = uri.port_u16().or(match scheme.as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    })?;
    Some((scheme, host, port))
}

/// True when both URLs have the same scheme, host and port (default ports made explicit).
pub fn same_origin(a: &Uri, b: &Uri) -> bool {
    match (origin(a), origin(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Whether `Authorization` goes along to `next`: only while every hop so far stayed on the
/// same origin — once dropped it stays dropped, even if a later hop comes back.
pub fn keep_authorization(kept_so_far: bool, current: &Uri, next: &Uri) -> bool {
    kept_so_far && same_origin(current, next)
}

/// `scheme://host[:port]/path` without the query, for logs and errors: signed CDN URLs carry
/// their credentials in the query.
pub fn redacted(uri: &Uri) -> String {
    let scheme = uri.scheme().unwrap_or(&Scheme::HTTPS);
    match uri.authority() {
        Some(a) => format!("{scheme}://{a}{}", uri.path()),
        None => uri.path().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_locations() {
        let base: Uri = "https://registry.example:5000/v2/library/alpine/blobs/sha256:abc?x=1"
            .parse()
            .unwrap();
        let cases = [
            (
                "https://cdn.example/blobs/abc?X-Amz-Signature=s3cr3t",
                Some("https://cdn.example/blobs/abc?X-Amz-Signature=s3cr3t"),
            ),
            (
                "HTTP://Cdn.Example:8080/x",
                Some("http://Cdn.Example:8080/x"),
            ),
            ("//cdn.example/x?sig=1", Some("https://cdn.example/x?sig=1")),
            (
                "/storage/abc",
                Some("https://registry.example:5000/storage/abc"),
            ),
            (
                "/storage/./a/../abc",
                Some("https://registry.example:5000/storage/abc"),
            ),
            (
                "other?q=2",
                Some("https://registry.example:5000/v2/library/alpine/blobs/other?q=2"),
            ),
            (
                "../manifests/latest",
                Some("https://registry.example:5000/v2/library/alpine/manifests/latest"),
            ),
            (
                "../../../../../../x",
                Some("https://registry.example:5000/x"),
            ),
            (
                "?q=3",
                Some("https://registry.example:5000/v2/library/alpine/blobs/sha256:abc?q=3"),
            ),
            ("/x#frag", Some("https://registry.example:5000/x")),
            ("  /padded  ", Some("https://registry.example:5000/padded")),
            ("ftp://cdn.example/x", None),
            ("javascript:alert(1)", None),
            ("", None),
            ("#only", None),
            ("http://", None),
            ("https://bad host/x", None),
        ];
        for (location, want) in cases {
            let got = resolve_location(&base, location)
                .ok()
                .map(|u| u.to_string());
            assert_eq!(got.as_deref(), want, "Location {location:?}");
        }
    }

    #[test]
    fn authorization_follows_only_same_origin() {
        let u = |s: &str| s.parse::<Uri>().unwrap();
        let cases = [
            ("https://r.example/a", "https://r.example/b", true),
            ("https://r.example/a", "https://R.EXAMPLE:443/b", true),
            ("http://r.example/a", "http://r.example:80/b", true),
            ("https://r.example/a", "https://cdn.example/b", false),
            ("https://r.example/a", "https://r.example:8443/b", false),
            ("https://r.example/a", "http://r.example/b", false),
            ("http://127.0.0.1:5000/a", "http://127.0.0.1:5001/a", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(keep_authorization(true, &u(a), &u(b)), want, "{a} -> {b}");
            assert!(
                !keep_authorization(false, &u(a), &u(b)),
                "dropped stays dropped"
            );
        }
    }

    #[test]
    fn followed_statuses() {
        for s in [301, 302, 303, 307, 308] {
            assert!(is_followed(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 300, 304, 305, 401] {
            assert!(!is_followed(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn redaction_drops_query() {
        let u: Uri = "https://cdn.example/blobs/x?X-Amz-Signature=s3cr3t"
            .parse()
            .unwrap();
        assert_eq!(redacted(&u), "https://cdn.example/blobs/x");
    }
}
