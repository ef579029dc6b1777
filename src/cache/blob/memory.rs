//! Small committed blobs' bytes in memory (image configs, small layers), verified when loaded:
//! serving a few KiB from a file costs a hop to the blocking pool per request, most of the
//! request's cost. Budgeted in bytes. A file that does not match its digest is never served.

use crate::digest::Digest;
use bytes::Bytes;
use std::path::PathBuf;

/// Committed blobs up to this size are kept in memory once read.
pub const SMALL_BLOB_BYTES: u64 = 64 << 10;

pub(crate) struct SmallBlobs {
    cache: moka::sync::Cache<Digest, Bytes>,
}

/// What loading a small blob found.
pub(crate) enum Loaded {
    /// Its verified bytes.
    Bytes(Bytes),
    /// The file does not match the digest.
    Damaged,
    /// The file could not be read (the caller streams it; the stream reports the error).
    Unreadable,
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
    /// then kept.
    pub(crate) async fn get_or_load(&self, digest: &Digest, path: PathBuf, size: u64) -> Loaded {
        if let Some(bytes) = self.cache.get(digest) {
            return Loaded::Bytes(bytes);
        }
        let raw = match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
            Ok(Ok(raw)) => raw,
            _ => return Loaded::Unreadable,
        };
        if raw.len() as u64 != size || !digest.verifies(&raw) {
            return Loaded::Damaged;
        }
        let bytes = Bytes::from(raw);
        self.cache.insert(digest.clone(), bytes.clone());
        Loaded::Bytes(bytes)
    }
}
