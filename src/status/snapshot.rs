//! Everything the status page shows, as `admin_status.rs` gathers it in one pass from the
//! running proxy: the board, the blob store and the config's names. Nothing secret is in it:
//! upstreams and parents by name, the bucket by name, errors in archway's own words.

use super::board::{BoardView, BucketHealth};
use crate::cache::blob::FillProgress;

/// Images listed in "most pulled".
pub const TOP_IMAGES: usize = 10;
/// Downloads listed in "fills in flight".
pub const FILLS_LISTED: usize = 20;

#[derive(Debug, Clone, Default)]
pub struct CacheFigures {
    /// Blobs, manifests and tag records on disk, against `cache.max_size`.
    pub used: u64,
    pub max: u64,
    pub blobs: u64,
    pub evictions: u64,
    /// Blobs found not to match their digest (scrub and reads) since start.
    pub damaged: u64,
    pub pinned_bytes: u64,
    pub downloads_in_flight: u64,
}

#[derive(Debug, Clone, Default)]
pub struct StorageFigures {
    pub bucket: String,
    pub health: BucketHealth,
}

#[derive(Debug, Clone, Default)]
pub struct FleetFigures {
    /// This replica's `fleet.peer_url`.
    pub me: String,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub version: &'static str,
    pub board: BoardView,
    pub cache: CacheFigures,
    pub storage: Option<StorageFigures>,
    pub fleet: Option<FleetFigures>,
    pub fills: Vec<FillProgress>,
}
