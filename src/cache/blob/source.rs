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

/// Why a caller gets no blob from `get_or_fill`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FillError {
    /// The source refused or failed before any body.
    #[error("{0}")]
    Source(SourceError),
    /// The download failed before this caller joined it: nothing of it can be served.
    #[error("{0}")]
    Failed(String),
    /// The cache could not take the download (no temp file, no room): it can only be served
    /// uncached.
    #[error("{0}")]
    Storage(String),
    /// The blob is (or claims to be) larger than the cache allows for one blob.
    #[error("{0}")]
    TooLarge(String),
}
