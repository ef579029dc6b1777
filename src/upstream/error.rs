//! The one error of the upstream client: what went wrong with which upstream, in a registry
//! user's words, and the status interpretation that turns an upstream answer into one.

use crate::error::{ErrorCode, ProxyError};
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use std::sync::Arc;

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
    /// The upstream the message is about, when one is (boxed: errors stay small).
    pub about: Option<Box<About>>,
    /// Kept from a 429 or 5xx so that clients back off as upstream asked.
    pub retry_after: Option<HeaderValue>,
    /// What failed underneath (a connection's error), for the log's cause chain.
    #[source]
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// The parts of `upstream <upstream><detail>`: a parent tier words its member's failure as
/// `<parent URL><detail>`.
#[derive(Debug, Clone)]
pub struct About {
    pub upstream: String,
    /// The message after the upstream's name (`" answered 503"`, `": connection refused"`).
    pub detail: String,
}

impl UpstreamError {
    pub fn new(kind: UpstreamErrorKind, message: impl Into<String>) -> Self {
        UpstreamError {
            kind,
            message: message.into(),
            about: None,
            retry_after: None,
            source: None,
        }
    }

    /// An error of upstream `name`: `upstream <name><detail>`.
    pub fn of(kind: UpstreamErrorKind, name: &str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        UpstreamError {
            kind,
            message: format!("upstream {name}{detail}"),
            about: Some(Box::new(About {
                upstream: name.to_owned(),
                detail,
            })),
            retry_after: None,
            source: None,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(UpstreamErrorKind::Unavailable, message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(UpstreamErrorKind::Timeout, message)
    }

    pub fn unavailable_of(name: &str, detail: impl Into<String>) -> Self {
        Self::of(UpstreamErrorKind::Unavailable, name, detail)
    }

    pub fn timeout_of(name: &str, detail: impl Into<String>) -> Self {
        Self::of(UpstreamErrorKind::Timeout, name, detail)
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
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
    let detail = match kind {
        Loop => format!(
            " answered {status}: a request loop; its url leads back to \
             this archway, directly or through other archways (check upstream {upstream_name}'s \
             url and the parents')"
        ),
        _ => format!(" answered {status}"),
    };
    Some(UpstreamError::of(kind, upstream_name, detail).with_retry_after(retry_after))
}

impl From<UpstreamError> for ProxyError {
    fn from(e: UpstreamError) -> ProxyError {
        use UpstreamErrorKind::*;
        let UpstreamError {
            kind,
            message,
            retry_after,
            ..
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
