//! How the cache answered a request: the `cache` log field and metric label, and where the
//! body's bytes came from.

use crate::cache::blob::BlobOrigin;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheResult {
    Hit,
    Miss,
    Stale,
    Coalesced,
    /// `storage.redirect`: sent to a presigned URL of the bucket; no body from here.
    Redirect,
}

/// A blob's `cache` label is the L1 view (so the hit-ratio recipes keep their meaning); where a
/// fill's bytes came from is its `source` (see `BlobOrigin::source`).
impl From<BlobOrigin> for CacheResult {
    fn from(origin: BlobOrigin) -> Self {
        match origin {
            BlobOrigin::Hit => CacheResult::Hit,
            BlobOrigin::Joined(_) => CacheResult::Coalesced,
            BlobOrigin::Filled(_) | BlobOrigin::Uncached => CacheResult::Miss,
        }
    }
}

impl CacheResult {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Coalesced => "coalesced",
            CacheResult::Redirect => "redirect",
        }
    }

    /// Where a manifest or listing answer's bytes come from, for the bytes-served metric;
    /// `None`: no body. A blob's comes from its `BlobOrigin`.
    pub(crate) fn source(self) -> Option<&'static str> {
        match self {
            CacheResult::Hit | CacheResult::Stale => Some("cache"),
            CacheResult::Miss | CacheResult::Coalesced => Some("upstream"),
            CacheResult::Redirect => None,
        }
    }
}
