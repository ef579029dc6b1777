//! What a fill reads from, and how a fill can fail, in the cache's own terms: the cache knows
//! nothing of HTTP or of registry errors.

use crate::body::UpstreamBody;
use std::fmt;
use std::sync::Arc;

/// A blob as its source delivers it: the length it announced, if any, and the body (a stalled
/// source shows up as a body error).
pub struct IncomingBlob {
    pub size: Option<u64>,
    pub body: UpstreamBody,
    /// A parent archway sent it on upstream's behalf (the parent tier): told apart in the
    /// fill's [`BlobSource`](super::BlobSource).
    pub from_parent: bool,
    /// Told whether the fill verified these bytes (`true`) or failed (`false`, also when
    /// dropped untold): a conversion's outcome is known only once its output is checked.
    pub on_settled: Option<OnSettled>,
}

/// Called once with how a fill of an [`IncomingBlob`] ended; dropped uncalled it says `false`.
pub struct OnSettled(Option<Box<dyn FnOnce(bool) + Send>>);

impl OnSettled {
    pub fn new(f: impl FnOnce(bool) + Send + 'static) -> Self {
        OnSettled(Some(Box::new(f)))
    }

    pub fn settle(mut self, verified: bool) {
        if let Some(f) = self.0.take() {
            f(verified);
        }
    }
}

impl Drop for OnSettled {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(false);
        }
    }
}

/// Why the source could not start delivering a blob. Opaque to the cache, which hands the same
/// error to every caller that joined the fill; a caller that knows the type gets it back with
/// [`SourceError::downcast_ref`].
#[derive(Clone)]
pub struct SourceError {
    error: Arc<dyn std::error::Error + Send + Sync>,
    /// An answer about the route that asked (a 404, 401 or 403 for its repository and
    /// credentials), not about the blob: not remembered for the other routes' requests.
    route_specific: bool,
}

impl SourceError {
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        SourceError {
            error: Arc::new(error),
            route_specific: false,
        }
    }

    /// A refusal that holds only for the route that asked (see `is_route_specific`).
    pub fn for_route(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        SourceError {
            error: Arc::new(error),
            route_specific: true,
        }
    }

    pub fn is_route_specific(&self) -> bool {
        self.route_specific
    }

    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.error.downcast_ref()
    }
}

impl fmt::Debug for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.error, f)
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

/// Transparent: the wrapped error's words are this one's, its causes this one's.
impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// A failure's words, and the `io::Error` behind them when there is one: kept as the error's
/// source for the log's cause chain, shared because a fill's error goes to every caller that
/// joined it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Cause {
    message: Arc<str>,
    source: Option<Arc<std::io::Error>>,
}

impl Cause {
    pub fn with_source(message: impl Into<String>, source: Arc<std::io::Error>) -> Self {
        Cause {
            message: Arc::from(message.into()),
            source: Some(source),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        Cause {
            message: Arc::from(message),
            source: None,
        }
    }
}

impl From<String> for Cause {
    fn from(message: String) -> Self {
        Cause {
            message: Arc::from(message),
            source: None,
        }
    }
}

/// Why a caller gets no blob from `get_or_fill`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FillError {
    /// The source refused or failed before any body.
    #[error("{0}")]
    Source(#[source] SourceError),
    /// The download failed before this caller joined it: nothing of it can be served.
    #[error("{0}")]
    Failed(#[source] Cause),
    /// The cache could not take the download (no temp file, no room): it can only be served
    /// uncached.
    #[error("{0}")]
    Storage(#[source] Cause),
    /// The blob is (or claims to be) larger than the cache allows for one blob.
    #[error("{0}")]
    TooLarge(Cause),
}
