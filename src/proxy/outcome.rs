//! How the cache answered a request: the `cache` log field and metric label, and where the
//! body's bytes came from.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheResult {
    Hit,
    Miss,
    Stale,
    Coalesced,
}

impl CacheResult {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Coalesced => "coalesced",
        }
    }

    /// Where the answer's bytes come from, for the bytes-served metric.
    pub(crate) fn source(self) -> &'static str {
        match self {
            CacheResult::Hit | CacheResult::Stale => "cache",
            CacheResult::Miss | CacheResult::Coalesced => "upstream",
        }
    }
}
