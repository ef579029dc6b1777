//! The cache's one disk budget (`cache.max_size`) as the manifest and tag stores see it, and
//! what pinned images keep out of its evictions.

use super::catalog::Catalog;
use super::index::{CacheFile, Item};
use crate::digest::Digest;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// What pinned images hold (`pin_set`): blobs and manifests by digest, their tags' records by
/// file name. Never evicted while held; counted against the budget all the same.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    pub blobs: Vec<Digest>,
    pub manifests: Vec<Digest>,
    pub tags: Vec<String>,
}

impl Kept {
    pub(super) fn items(&self) -> Vec<Item> {
        self.blobs
            .iter()
            .map(|d| Item::Blob(d.clone()))
            .chain(
                self.manifests
                    .iter()
                    .map(|d| Item::File(CacheFile::Manifest(d.clone()))),
            )
            .chain(
                self.tags
                    .iter()
                    .map(|t| Item::File(CacheFile::Tag(t.clone()))),
            )
            .collect()
    }
}

/// `cache.max_size` as the manifest and tag stores see it: their files are counted and evicted
/// with the blobs, least recently used first.
#[derive(Clone)]
pub struct DiskBudget {
    pub(super) catalog: Arc<Catalog>,
}

impl DiskBudget {
    /// Puts `tmp` (written and synced, `len` bytes) in place as `file` and evicts down to the
    /// budget. Blocking. On error `tmp` is the caller's to delete.
    pub fn commit(&self, file: CacheFile, tmp: &Path, len: u64) -> io::Result<()> {
        self.catalog.commit_file(file, tmp, len)
    }

    /// What pinned images hold: never evicted while held.
    pub fn set_kept(&self, kept: &Kept) {
        self.catalog.set_kept(kept.items());
    }

    /// `file` was used: it moves to the back of the eviction order. `false` if not on disk.
    pub fn touch(&self, file: &CacheFile) -> bool {
        self.catalog.touch_file(file)
    }

    /// Deletes `file` and stops counting it.
    pub fn remove(&self, file: &CacheFile) {
        self.catalog.remove_file(file)
    }
}

impl fmt::Debug for DiskBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskBudget")
            .field("max_bytes", &self.catalog.max_bytes())
            .finish()
    }
}
