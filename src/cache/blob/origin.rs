//! How a request got its blob, decided by the store and handed back with the blob: the one value
//! the proxy derives its log fields and metric labels from, so no layer has to guess.

/// Where a fill's bytes come from, decided by the fill task before the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobSource {
    /// The shared bucket behind the disk (`[storage]`).
    Bucket,
    /// Another replica's fill, through its peer endpoint (`[fleet]`).
    Peer,
    /// A parent archway (the parent tier) answered for upstream.
    Parent,
    /// Upstream itself (or a conversion made here from what it sent).
    Upstream,
}

impl BlobSource {
    /// The `source` label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            BlobSource::Bucket => "bucket",
            BlobSource::Peer => "peer",
            BlobSource::Parent => "parent",
            BlobSource::Upstream => "upstream",
        }
    }
}

/// How one request's blob was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOrigin {
    /// From L1: committed, or downloaded and verified with only the commit running.
    Hit,
    /// A fill another request started, still arriving from its source.
    Joined(BlobSource),
    /// This request started the fill.
    Filled(BlobSource),
    /// The cache could not take it: passed through from upstream, not kept.
    Uncached,
    /// A Range the download had not reached (`cache.cold_ranges = "relay"`): relayed from an
    /// upstream (or parent) Range request of its own, or (`[fleet]`) from the fill this one
    /// streams, on the replica that owns it; unverified, while the download goes on.
    Relayed(BlobSource),
}

impl BlobOrigin {
    /// The log's `origin` field: one word per outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            BlobOrigin::Hit => "hit",
            BlobOrigin::Joined(_) => "joined",
            BlobOrigin::Filled(source) => source.as_str(),
            BlobOrigin::Uncached => "uncached",
            BlobOrigin::Relayed(_) => "relayed",
        }
    }

    /// Where the body's bytes come from (the `source` label): L1 is `cache`.
    pub fn source(self) -> &'static str {
        match self {
            BlobOrigin::Hit => "cache",
            BlobOrigin::Joined(source)
            | BlobOrigin::Filled(source)
            | BlobOrigin::Relayed(source) => source.as_str(),
            BlobOrigin::Uncached => BlobSource::Upstream.as_str(),
        }
    }

    /// Whether serving it cost this archway no upstream transfer of its own: an L1 hit, a
    /// joined fill (upstream sent it once, for another request), a bucket or peer fill, a
    /// range relayed from a peer's fill. A parent's bytes may well have come from upstream
    /// through it: not counted.
    pub fn saves_upstream(self) -> bool {
        match self {
            BlobOrigin::Hit | BlobOrigin::Joined(_) => true,
            BlobOrigin::Filled(source) => matches!(source, BlobSource::Bucket | BlobSource::Peer),
            // A peer's range is of its fill, which upstream sends once anyway.
            BlobOrigin::Relayed(source) => source == BlobSource::Peer,
            BlobOrigin::Uncached => false,
        }
    }
}
