//! Small committed blobs' bytes in memory (image configs, small layers), verified when loaded:
//! serving a few KiB from a file costs a hop to the blocking pool per request, most of the
//! request's cost. Budgeted in bytes.

use crate::digest::Digest;
use bytes::Bytes;
use std::path::PathBuf;

/// Committed blobs up to this size are kept in memory once read.
pub const SMALL_BLOB_BYTES: u64 = 64 << 10;

pub(crate) struct SmallBlobs {
    cache: moka::sync::Cache<Digest, Bytes>,
}

impl SmallBlobs {
    pub(crate) fn new(budget: u64) -> Self {
        SmallBlobs {
            cache: moka::sync::Cache::builder()
                .weigher(|_: &Digest, b: &Bytes| u32::try_from(b.len() + 128).unwrap_or(u32::MAX))
                .max_capacity(budget)
                .build(),
        }
    }

    /// The bytes from memory, or read from `path` and checked against the digest and `size`,
    /// then kept. `None` if the file can't be read or doesn't match: the caller then streams
    /// the file as usual, so a damaged file is never pinned in memory.
    pub(crate) async fn get_or_load(
        &self,
        digest: &Digest,
        path: PathBuf,
        size: u64,
    ) -> Option<Bytes> {
        if let Some(bytes) = self.cache.get(digest) {
            return Some(bytes);
        }
        let raw = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .ok()?
            .ok()?;
        if raw.len() as u64 != size || !digest.verifies(&raw) {
            tracing::warn!(%digest, "cached blob file does not match its digest");
            return None;
        }
        let bytes = Bytes::from(raw);
        self.cache.insert(digest.clone(), bytes.clone());
        Some(bytes)
    }
}
