//! The proxy-boundary error: knows which side failed and renders the registry error body.

use http::{HeaderValue, StatusCode};

/// Registry error codes (distribution-spec plus Distribution's extras we answer with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    ManifestUnknown,
    ManifestInvalid,
    /// A manifest names a blob (its config, a layer) that cannot be had.
    ManifestBlobUnknown,
    NameUnknown,
    NameInvalid,
    TagInvalid,
    DigestInvalid,
    RangeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    Unavailable,
    /// archway's own request came back to it (508): an upstream or parent leads to archway.
    LoopDetected,
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::LoopDetected => "LOOP_DETECTED",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    /// The status Distribution uses for this code when nothing more specific applies.
    pub fn default_status(self) -> StatusCode {
        match self {
            ErrorCode::BlobUnknown | ErrorCode::ManifestUnknown | ErrorCode::NameUnknown => {
                StatusCode::NOT_FOUND
            }
            ErrorCode::ManifestInvalid
            | ErrorCode::ManifestBlobUnknown
            | ErrorCode::NameInvalid
            | ErrorCode::TagInvalid
            | ErrorCode::DigestInvalid => StatusCode::BAD_REQUEST,
            ErrorCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::BAD_GATEWAY,
            ErrorCode::LoopDetected => StatusCode::LOOP_DETECTED,
            ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Which side of the proxy a failure belongs to: decides 4xx vs 5xx and is a log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we refuse.
    Downstream,
    /// The upstream registry failed or refused.
    Upstream,
    /// Our own fault (disk, bug).
    Internal,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Downstream => "downstream",
            Side::Upstream => "upstream",
            Side::Internal => "internal",
        }
    }
}

/// One error type at the proxy boundary. Cheap to clone so that a failed blob fill can hand the
/// same error to every waiting client. Messages never contain credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{side:?} {code:?} ({status}): {message}")]
pub struct ProxyError {
    pub side: Side,
    pub code: ErrorCode,
    pub status: StatusCode,
    pub message: String,
    /// Kept from an upstream 429/503 so that clients back off as upstream asked.
    pub retry_after: Option<HeaderValue>,
}

impl ProxyError {
    pub fn new(side: Side, code: ErrorCode, message: impl Into<String>) -> Self {
        ProxyError {
            side,
            code,
            status: code.default_status(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn downstream(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(Side::Downstream, code, message)
    }

    pub fn upstream(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(Side::Upstream, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Side::Internal, ErrorCode::Unknown, message)
    }

    /// Upstream unreachable or misbehaving: 502.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(Side::Upstream, ErrorCode::Unavailable, message)
    }

    /// Upstream too slow: 504.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(Side::Upstream, ErrorCode::Unavailable, message)
            .with_status(StatusCode::GATEWAY_TIMEOUT)
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_retry_after(mut self, retry_after: Option<HeaderValue>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// True when the failure is upstream being unavailable (connection error, timeout, 5xx,
    /// 429): the cases where a stale cached answer is better than an error.
    pub fn is_upstream_unavailable(&self) -> bool {
        self.side == Side::Upstream
            && (self.status.is_server_error() || self.status == StatusCode::TOO_MANY_REQUESTS)
    }

    /// The registry error body: `{"errors":[{"code","message","detail"}]}`.
    pub fn body(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "errors": [{
                "code": self.code.as_str(),
                "message": self.message,
                "detail": null,
            }]
        });
        // Serialising a json! value cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_registry_error_shape() {
        let e = ProxyError::downstream(ErrorCode::NameInvalid, "invalid repository name");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "NAME_INVALID");
        assert_eq!(v["errors"][0]["message"], "invalid repository name");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn unavailable_classification() {
        assert!(ProxyError::bad_gateway("x").is_upstream_unavailable());
        assert!(ProxyError::gateway_timeout("x").is_upstream_unavailable());
        assert!(ProxyError::upstream(ErrorCode::TooManyRequests, "x").is_upstream_unavailable());
        assert!(!ProxyError::upstream(ErrorCode::ManifestUnknown, "x").is_upstream_unavailable());
        assert!(!ProxyError::internal("x").is_upstream_unavailable());
    }
}

/// `e` and its `source()` chain on one line, for the log: `outer: inner: io error`. A source
/// whose words the text already ends with (messages that quote their cause) is not repeated.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

#[cfg(test)]
mod chain_tests {
    #[test]
    fn the_chain_names_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left");
        let cause = crate::cache::blob::Cause::with_source(
            "cannot create blob temp file",
            std::sync::Arc::new(io),
        );
        let e = crate::cache::blob::FillError::Storage(cause);
        assert_eq!(
            super::chain(&e),
            "cannot create blob temp file: no space left"
        );
        let quoted = crate::cache::blob::Cause::with_source(
            "cannot write blob temp file: disk on fire",
            std::sync::Arc::new(std::io::Error::other("disk on fire")),
        );
        assert_eq!(
            super::chain(&quoted),
            "cannot write blob temp file: disk on fire"
        );
        let e = crate::upstream::UpstreamError::unavailable_of("hub", ": connection refused")
            .with_source(std::io::Error::other("os says no"));
        assert_eq!(e.to_string(), "upstream hub: connection refused");
        let about = e.about.as_deref().unwrap();
        assert_eq!(
            (about.upstream.as_str(), about.detail.as_str()),
            ("hub", ": connection refused")
        );
        assert_eq!(
            super::chain(&e),
            "upstream hub: connection refused: os says no"
        );
        // A fill whose source failed: the upstream's io::Error is in the chain the log gets.
        let fill = crate::cache::blob::FillError::Source(crate::cache::blob::SourceError::new(e));
        assert_eq!(
            super::chain(&fill),
            "upstream hub: connection refused: os says no"
        );
        let tls =
            crate::upstream::UpstreamInitError::Tls(rustls::Error::General("no versions".into()));
        assert!(std::error::Error::source(&tls).is_some(), "{tls}");
    }
}
