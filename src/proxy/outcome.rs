//! How the cache answered a request: the `cache` log field and metric label, and where the
//! body's bytes came from.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheResult {
    Hit,
    Miss,
    Stale,
    Coalesced,
    /// `storage.redirect`: sent to a presigned URL of the bucket; no body from here.
    Redirect,
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

    /// Where the answer's bytes come from, for the bytes-served metric; `None`: no body.
    pub(crate) fn source(self) -> Option<&'static str> {
        match self {
            CacheResult::Hit | CacheResult::Stale => Some("cache"),
            CacheResult::Miss | CacheResult::Coalesced => Some("upstream"),
            CacheResult::Redirect => None,
        }
    }
}
