//! The one error of the upstream client: what went wrong with which upstream, in a registry
//! user's words, and the status interpretation that turns an upstream answer into one.

use crate::error::{ErrorCode, ProxyError};
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;

/// What was not found, for a 404: decides MANIFEST_UNKNOWN, BLOB_UNKNOWN or NAME_UNKNOWN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Manifest,
    Blob,
    Repository,
}

/// How an upstream exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// 404.
    NotFound(Missing),
    /// 401, from the registry or its token endpoint.
    Unauthorized,
    /// 403.
    Denied,
    /// 416.
    RangeNotSatisfiable,
    /// 429: Docker Hub's pull limit and the like.
    RateLimited,
    /// Unreachable, 5xx, or an answer archway cannot use.
    Unavailable,
    /// No answer within the budget, or 504.
    Timeout,
    /// 508: the request came back to an archway it had passed (a request loop).
    Loop,
    /// Another 4xx, passed on with its status.
    Refused(StatusCode),
    /// A request archway could not even form.
    Internal,
}

/// `Display` is the message: it names the upstream and never holds credentials or signed URLs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct UpstreamError {
    pub kind: UpstreamErrorKind,
    pub message: String,
    /// Kept from a 429 or 5xx so that clients back off as upstream asked.
    pub retry_after: Option<HeaderValue>,
}

impl UpstreamError {
    pub fn new(kind: UpstreamErrorKind, message: impl Into<String>) -> Self {
        UpstreamError {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(UpstreamErrorKind::Unavailable, message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(UpstreamErrorKind::Timeout, message)
    }

    pub fn with_retry_after(mut self, retry_after: Option<HeaderValue>) -> Self {
        self.retry_after = retry_after;
        self
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self.kind, UpstreamErrorKind::NotFound(_))
    }
}

/// Maps a non-success upstream status to the error a client should see, or `None` for
/// 1xx/2xx/3xx. `missing` says what a 404 means. 5xx becomes unavailable (504 a timeout);
/// `Retry-After` is kept on 429 and 5xx.
pub fn status_error(
    upstream_name: &str,
    status: StatusCode,
    headers: &HeaderMap,
    missing: Missing,
) -> Option<UpstreamError> {
    use UpstreamErrorKind::*;
    if !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    let kind = match status {
        StatusCode::UNAUTHORIZED => Unauthorized,
        StatusCode::FORBIDDEN => Denied,
        StatusCode::NOT_FOUND => NotFound(missing),
        StatusCode::RANGE_NOT_SATISFIABLE => RangeNotSatisfiable,
        StatusCode::TOO_MANY_REQUESTS => RateLimited,
        StatusCode::GATEWAY_TIMEOUT => Timeout,
        StatusCode::LOOP_DETECTED => Loop,
        s if s.is_server_error() => Unavailable,
        s => Refused(s),
    };
    let retry_after = match kind {
        RateLimited | Timeout | Unavailable => headers.get(header::RETRY_AFTER).cloned(),
        _ => None,
    };
    let message = match kind {
        Loop => format!(
            "upstream {upstream_name} answered {status}: a request loop; its url leads back to \
             this archway, directly or through other archways (check upstream {upstream_name}'s \
             url and the parents')"
        ),
        _ => format!("upstream {upstream_name} answered {status}"),
    };
    Some(UpstreamError::new(kind, message).with_retry_after(retry_after))
}

impl From<UpstreamError> for ProxyError {
    fn from(e: UpstreamError) -> ProxyError {
        use UpstreamErrorKind::*;
        let UpstreamError {
            kind,
            message,
            retry_after,
        } = e;
        let error = match kind {
            NotFound(missing) => {
                let code = match missing {
                    Missing::Manifest => ErrorCode::ManifestUnknown,
                    Missing::Blob => ErrorCode::BlobUnknown,
                    Missing::Repository => ErrorCode::NameUnknown,
                };
                ProxyError::upstream(code, message).with_status(StatusCode::NOT_FOUND)
            }
            Unauthorized => ProxyError::upstream(ErrorCode::Unauthorized, message),
            Denied => ProxyError::upstream(ErrorCode::Denied, message),
            RangeNotSatisfiable => ProxyError::upstream(ErrorCode::RangeInvalid, message),
            RateLimited => ProxyError::upstream(ErrorCode::TooManyRequests, message)
                .with_status(StatusCode::TOO_MANY_REQUESTS),
            Unavailable => ProxyError::bad_gateway(message),
            Timeout => ProxyError::gateway_timeout(message),
            Loop => ProxyError::upstream(ErrorCode::LoopDetected, message),
            Refused(status) => {
                ProxyError::upstream(ErrorCode::Unknown, message).with_status(status)
            }
            Internal => ProxyError::internal(message),
        };
        error.with_retry_after(retry_after)
    }
}
