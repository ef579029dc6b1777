//! Everything the status page shows, gathered in one pass from the running proxy: the board,
//! the blob store and the config's names. Nothing secret is copied in: upstreams and parents
//! by name, the bucket by name, errors in archway's own words.

use super::board::{BoardView, BucketHealth};
use crate::cache::blob::FillProgress;
use crate::proxy::Proxy;

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

pub fn gather(proxy: &Proxy) -> Snapshot {
    let config = proxy.config();
    let store = proxy.blob_store();
    let stats = store.stats();
    let board = proxy.metrics().board().view(TOP_IMAGES);
    Snapshot {
        version: env!("CARGO_PKG_VERSION"),
        cache: CacheFigures {
            used: stats.bytes.saturating_add(stats.file_bytes),
            max: store.max_bytes(),
            blobs: stats.entries,
            evictions: stats.evictions,
            damaged: stats.damaged_by_scrub.saturating_add(stats.damaged_on_read),
            pinned_bytes: stats.pinned_bytes,
            downloads_in_flight: stats.in_flight,
        },
        storage: config.storage.as_ref().map(|s| StorageFigures {
            bucket: s.s3_bucket.clone(),
            health: board.bucket.clone(),
        }),
        fleet: config.fleet.as_ref().map(|f| FleetFigures {
            me: f.peer_url.clone().unwrap_or_default(),
        }),
        fills: store.fills_in_progress(FILLS_LISTED),
        board,
    }
}
