//! The client's request as the pipeline reads it: where it came from, its method, headers and
//! query. Nothing else of it is ever forwarded.

use http::{HeaderMap, Method};

/// Where a request came from and in on: route matching reads both.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnInfo {
    pub local: Option<std::net::SocketAddr>,
    pub peer: Option<std::net::SocketAddr>,
}

/// Marks a request (as an extension) as coming from `archway explain`, which needs the whole
/// platform decision; other requests skip recording it.
#[derive(Debug, Clone, Copy)]
pub struct ExplainRequest;

/// Marks a request (as an extension) as made in process by a warm job (`archway warm` on a
/// data_dir, or the admin API's `POST /warm`): past `[auth]`, since no client sent it. Only code
/// sets extensions; nothing on the wire can.
#[derive(Debug, Clone, Copy)]
pub struct WarmRequest;

/// The answer header naming what the cache did (`hit`, `miss`, `coalesced`, …), which
/// `archway warm` reports as "already cached" or "fetched".
pub const CACHE_HEADER: &str = "x-archway-cache";

pub(crate) struct ClientRequest {
    pub(crate) conn: ConnInfo,
    pub(crate) version: http::Version,
    pub(crate) method: Method,
    pub(crate) headers: HeaderMap,
    pub(crate) query: Option<String>,
    /// `archway explain` asks: the full platform decision is recorded in the notes.
    pub(crate) explain: bool,
    /// With `[auth]`: the user's or the token's name, for an upstream's `clients`.
    pub(crate) user: Option<std::sync::Arc<str>>,
    /// The connection sends files (`crate::sendfile`): an answer that is a committed blob's
    /// bytes as they are may go by `sendfile`.
    pub(crate) lane: Option<crate::sendfile::Lane>,
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host header, and no request two. (h2
/// names the authority in the request itself.) `Some(why)` when the request breaks that rule.
pub(crate) fn host_header_problem(
    version: http::Version,
    headers: &HeaderMap,
) -> Option<&'static str> {
    let hosts = headers.get_all(http::header::HOST).iter().count();
    match (version, hosts) {
        (_, n) if n > 1 => Some("a request must not carry more than one Host header"),
        (http::Version::HTTP_11, 0) => Some("an HTTP/1.1 request needs a Host header"),
        _ => None,
    }
}

impl ClientRequest {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }

    /// HTTP/1.0 has no chunked framing: a body without a Content-Length ends when the
    /// connection closes, and the client cannot tell a cut-off body from a whole one.
    pub(crate) fn cannot_detect_truncation(&self) -> bool {
        self.version == http::Version::HTTP_10 || self.version == http::Version::HTTP_09
    }
}
