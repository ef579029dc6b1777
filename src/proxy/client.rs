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

pub(crate) struct ClientRequest {
    pub(crate) conn: ConnInfo,
    pub(crate) method: Method,
    pub(crate) headers: HeaderMap,
    pub(crate) query: Option<String>,
    /// `archway explain` asks: the full platform decision is recorded in the notes.
    pub(crate) explain: bool,
}

impl ClientRequest {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }
}
