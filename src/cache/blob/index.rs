//! Which blobs are committed: size, recency (LRU) and pins, with the byte total. Pure: the
//! catalog deletes the files of what this index evicts.

use crate::digest::Digest;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

#[derive(Default)]
pub(crate) struct Index {
    entries: HashMap<Digest, Entry>,
    /// Recency order: tick -> digest; the smallest tick is the least recently used.
    lru: BTreeMap<u64, Digest>,
    tick: u64,
    bytes: u64,
    evictions: u64,
}

struct Entry {
    size: u64,
    tick: u64,
    /// Handles and bodies reading the blob: a pinned blob is never evicted.
    pins: u64,
    /// When every byte of this committed file last matched its digest (its download, a
    /// verified whole read, the scrub); `None`: not since `open`.
    verified: Option<Instant>,
}

impl Index {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Adds (or replaces) a committed blob as the most recently used.
    pub(crate) fn insert(&mut self, digest: Digest, size: u64) {
        let tick = self.next_tick();
        if let Some(old) = self.entries.insert(
            digest.clone(),
            Entry {
                size,
                tick,
                pins: 0,
                verified: None,
            },
        ) {
            self.lru.remove(&old.tick);
            self.bytes = self.bytes.saturating_sub(old.size);
        }
        self.lru.insert(tick, digest);
        self.bytes = self.bytes.saturating_add(size);
    }

    /// Marks the entry used and pins it; `None` if not committed.
    pub(crate) fn touch_and_pin(&mut self, digest: &Digest) -> Option<u64> {
        let tick = self.next_tick();
        let entry = self.entries.get_mut(digest)?;
        self.lru.remove(&entry.tick);
        entry.tick = tick;
        entry.pins += 1;
        let size = entry.size;
        self.lru.insert(tick, digest.clone());
        Some(size)
    }

    pub(crate) fn unpin(&mut self, digest: &Digest) {
        if let Some(entry) = self.entries.get_mut(digest) {
            entry.pins = entry.pins.saturating_sub(1);
        }
    }

    /// Every byte of the committed file matched its digest at `at`.
    pub(crate) fn mark_verified(&mut self, digest: &Digest, at: Instant) {
        if let Some(entry) = self.entries.get_mut(digest) {
            entry.verified = Some(at);
        }
    }

    /// When the committed file was last found whole; `None` if not since `open`.
    pub(crate) fn verified_at(&self, digest: &Digest) -> Option<Instant> {
        self.entries.get(digest).and_then(|e| e.verified)
    }

    /// Forgets a committed blob (found damaged); its file is the caller's to delete.
    pub(crate) fn remove(&mut self, digest: &Digest) -> Option<u64> {
        let entry = self.entries.remove(digest)?;
        self.lru.remove(&entry.tick);
        self.bytes = self.bytes.saturating_sub(entry.size);
        Some(entry.size)
    }

    /// Every committed blob, least recently used first.
    pub(crate) fn digests(&self) -> Vec<Digest> {
        self.lru.values().cloned().collect()
    }

    /// The committed size, without touching recency.
    pub(crate) fn size(&self, digest: &Digest) -> Option<u64> {
        self.entries.get(digest).map(|e| e.size)
    }

    /// Drops least-recently-used unpinned entries until the total fits `max_bytes`, and returns
    /// them (oldest first). Pinned entries are skipped; if only pinned ones are left, the total
    /// stays over budget until a later call.
    pub(crate) fn evict_to(&mut self, max_bytes: u64) -> Vec<Digest> {
        let mut evicted = Vec::new();
        while self.bytes > max_bytes {
            let victim = self
                .lru
                .iter()
                .find(|(_, digest)| self.entries.get(*digest).is_some_and(|e| e.pins == 0))
                .map(|(tick, digest)| (*tick, digest.clone()));
            let Some((tick, digest)) = victim else {
                break;
            };
            self.lru.remove(&tick);
            if let Some(entry) = self.entries.remove(&digest) {
                self.bytes = self.bytes.saturating_sub(entry.size);
            }
            self.evictions += 1;
            evicted.push(digest);
        }
        evicted
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[test]
    fn evicts_least_recently_used_unpinned_first() {
        let mut index = Index::default();
        for n in 0..4 {
            index.insert(d(n), 100);
        }
        assert_eq!(index.bytes(), 400);
        // 0 becomes the most recent and stays pinned; 1 is pinned then released.
        index.touch_and_pin(&d(0));
        index.touch_and_pin(&d(1));
        index.unpin(&d(1));
        assert_eq!(index.evict_to(200), vec![d(2), d(3)]);
        assert_eq!((index.bytes(), index.len(), index.evictions()), (200, 2, 2));
        // Only pinned 0 and unpinned 1 are left: 1 goes, 0 stays although over budget.
        assert_eq!(index.evict_to(0), vec![d(1)]);
        assert_eq!(index.size(&d(0)), Some(100));
        assert_eq!(index.bytes(), 100);
    }

    #[test]
    fn reinsert_replaces_the_size() {
        let mut index = Index::default();
        index.insert(d(1), 10);
        index.insert(d(1), 30);
        assert_eq!((index.bytes(), index.len()), (30, 1));
        assert_eq!(index.touch_and_pin(&d(2)), None);
    }
}
