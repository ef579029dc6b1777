//! How a request was answered, as one typed value ([`Outcome`]) that the cache layers hand back:
//! the `cache` and `source` log fields and metric labels, the blob's `origin` and the upstream
//! bytes saved are all derived from it here, never set as strings elsewhere.

use crate::cache::blob::BlobOrigin;

/// How one request's answer was come by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A manifest or referrers answer, by how the cache layers had it.
    Cache(CacheResult),
    /// A blob, as the blob store told it (L1 hit, joined or filled from where, uncached).
    Blob(BlobOrigin),
    /// `storage.redirect`: sent to a presigned URL of the bucket; no body from here.
    Redirect,
    /// A tag listing, asked of upstream each time.
    Listing,
}

impl Outcome {
    /// The `cache` log field and metric label; `None` for what the cache does not answer.
    pub fn cache(self) -> Option<&'static str> {
        match self {
            Outcome::Cache(r) => Some(r.as_str()),
            Outcome::Blob(origin) => Some(CacheResult::from(origin).as_str()),
            Outcome::Redirect => Some(CacheResult::Redirect.as_str()),
            Outcome::Listing => None,
        }
    }

    /// Where the body's bytes come from (`cache`, `upstream`; for blobs also `bucket`, `peer`,
    /// `parent`); `None`: no body from here.
    pub fn source(self) -> Option<&'static str> {
        match self {
            Outcome::Cache(r) => r.source(),
            Outcome::Blob(origin) => Some(origin.source()),
            Outcome::Redirect => CacheResult::Redirect.source(),
            Outcome::Listing => Some("upstream"),
        }
    }

    /// The blob's own outcome, for its `origin` log field and the upstream bytes saved.
    pub fn blob(self) -> Option<BlobOrigin> {
        match self {
            Outcome::Blob(origin) => Some(origin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Stale,
    Coalesced,
    /// `storage.redirect`: sent to a presigned URL of the bucket; no body from here.
    Redirect,
    /// Not in L1, read from the shared bucket (`[storage]`): another replica fetched it.
    Bucket,
}

/// A blob's `cache` label is the L1 view (so the hit-ratio recipes keep their meaning); where a
/// fill's bytes came from is its `source` (see `BlobOrigin::source`).
impl From<BlobOrigin> for CacheResult {
    fn from(origin: BlobOrigin) -> Self {
        match origin {
            BlobOrigin::Hit => CacheResult::Hit,
            BlobOrigin::Joined(_) => CacheResult::Coalesced,
            BlobOrigin::Filled(_) | BlobOrigin::Uncached | BlobOrigin::Relayed(_) => {
                CacheResult::Miss
            }
        }
    }
}

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Coalesced => "coalesced",
            CacheResult::Redirect => "redirect",
            // As a blob filled from the bucket: an L1 miss whose bytes came from the bucket.
            CacheResult::Bucket => "miss",
        }
    }

    /// Where a manifest or listing answer's bytes come from, for the bytes-served metric;
    /// `None`: no body. A blob's comes from its `BlobOrigin`.
    pub fn source(self) -> Option<&'static str> {
        match self {
            CacheResult::Hit | CacheResult::Stale => Some("cache"),
            CacheResult::Miss | CacheResult::Coalesced => Some("upstream"),
            CacheResult::Redirect => None,
            CacheResult::Bucket => Some("bucket"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::blob::BlobSource;

    /// Every outcome that is not a blob's (those: `proxy::blobs::tests`), and its labels.
    #[test]
    fn each_outcome_has_its_labels() {
        let table: [(Outcome, Option<&str>, Option<&str>); 8] = [
            (Outcome::Cache(CacheResult::Hit), Some("hit"), Some("cache")),
            (
                Outcome::Cache(CacheResult::Stale),
                Some("stale"),
                Some("cache"),
            ),
            (
                Outcome::Cache(CacheResult::Miss),
                Some("miss"),
                Some("upstream"),
            ),
            (
                Outcome::Cache(CacheResult::Coalesced),
                Some("coalesced"),
                Some("upstream"),
            ),
            (Outcome::Redirect, Some("redirect"), None),
            (
                Outcome::Cache(CacheResult::Bucket),
                Some("miss"),
                Some("bucket"),
            ),
            (Outcome::Listing, None, Some("upstream")),
            (
                Outcome::Blob(BlobOrigin::Filled(BlobSource::Peer)),
                Some("miss"),
                Some("peer"),
            ),
        ];
        for (outcome, cache, source) in table {
            assert_eq!(outcome.cache(), cache, "{outcome:?}");
            assert_eq!(outcome.source(), source, "{outcome:?}");
            assert_eq!(
                outcome.blob().is_some(),
                matches!(outcome, Outcome::Blob(_)),
                "{outcome:?}"
            );
        }
        // A body not counted (an error, a peer request) keeps its cache label, has no source.
        let notes = crate::access_log::RequestNotes {
            outcome: Some(Outcome::Blob(BlobOrigin::Hit)),
            body_uncounted: true,
            ..Default::default()
        };
        assert_eq!((notes.cache(), notes.source()), (Some("hit"), None));
    }
}
