//! Which blobs are committed — and which other cache files (manifests, tag records) share their
//! disk budget: size, recency (one LRU over all of them) and pins, with the byte totals. Pure:
//! the catalog deletes the files of what this index evicts.

use crate::digest::Digest;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// A blob's digest as the index holds it: sha256 as its 32 raw bytes inline, so a blob costs no
/// heap string (two, before: the map's key and the LRU's copy); other algorithms boxed.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Sha256([u8; 32]),
    Other(Box<Digest>),
}

impl Key {
    fn of(digest: &Digest) -> Key {
        match digest.sha256_bytes() {
            Some(bytes) => Key::Sha256(bytes),
            None => Key::Other(Box::new(digest.clone())),
        }
    }

    fn digest(&self) -> Digest {
        match self {
            Key::Sha256(bytes) => Digest::sha256_from_bytes(bytes),
            Key::Other(d) => (**d).clone(),
        }
    }
}

/// The LRU's own entries: a blob by its compact key, or another cache file.
enum Slot {
    Blob(Key),
    File(CacheFile),
}

impl Slot {
    fn item(&self) -> Item {
        match self {
            Slot::Blob(k) => Item::Blob(k.digest()),
            Slot::File(f) => Item::File(f.clone()),
        }
    }
}

/// A cache file other than a blob, under the same byte budget (`cache.max_size`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheFile {
    /// `manifests/<alg>/<xx>/<hex>`.
    Manifest(Digest),
    /// `tags/<name>`: the record's file name (a hash of the tag, never client text).
    Tag(String),
}

/// One entry of the LRU: a blob or another cache file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    Blob(Digest),
    File(CacheFile),
}

#[derive(Default)]
pub(crate) struct Index {
    entries: HashMap<Key, Entry>,
    /// Manifests and tag records: never pinned (each is read whole, at once).
    files: HashMap<CacheFile, FileEntry>,
    /// Recency order over both: tick -> item; the smallest tick is the least recently used.
    lru: BTreeMap<u64, Slot>,
    tick: u64,
    /// Blobs' bytes, and all bytes (blobs and files): the budget is on the latter.
    blob_bytes: u64,
    bytes: u64,
    evictions: u64,
}

struct FileEntry {
    size: u64,
    tick: u64,
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
        let key = Key::of(&digest);
        if let Some(old) = self.entries.insert(
            key.clone(),
            Entry {
                size,
                tick,
                pins: 0,
                verified: None,
            },
        ) {
            self.lru.remove(&old.tick);
            self.bytes = self.bytes.saturating_sub(old.size);
            self.blob_bytes = self.blob_bytes.saturating_sub(old.size);
        }
        self.lru.insert(tick, Slot::Blob(key));
        self.bytes = self.bytes.saturating_add(size);
        self.blob_bytes = self.blob_bytes.saturating_add(size);
    }

    /// Adds (or replaces) a manifest or tag record as the most recently used.
    pub(crate) fn insert_file(&mut self, file: CacheFile, size: u64) {
        let tick = self.next_tick();
        if let Some(old) = self.files.insert(file.clone(), FileEntry { size, tick }) {
            self.lru.remove(&old.tick);
            self.bytes = self.bytes.saturating_sub(old.size);
        }
        self.lru.insert(tick, Slot::File(file));
        self.bytes = self.bytes.saturating_add(size);
    }

    /// Marks a manifest or tag record used; `false` if it is not indexed.
    pub(crate) fn touch_file(&mut self, file: &CacheFile) -> bool {
        let tick = self.next_tick();
        let Some(entry) = self.files.get_mut(file) else {
            return false;
        };
        if let Some(item) = self.lru.remove(&entry.tick) {
            self.lru.insert(tick, item);
        }
        entry.tick = tick;
        true
    }

    /// Forgets a manifest or tag record; its file is the caller's to delete.
    pub(crate) fn remove_file(&mut self, file: &CacheFile) -> Option<u64> {
        let entry = self.files.remove(file)?;
        self.lru.remove(&entry.tick);
        self.bytes = self.bytes.saturating_sub(entry.size);
        Some(entry.size)
    }

    /// Marks the entry used and pins it; `None` if not committed.
    pub(crate) fn touch_and_pin(&mut self, digest: &Digest) -> Option<u64> {
        let tick = self.next_tick();
        let entry = self.entries.get_mut(&Key::of(digest))?;
        // The item moves to its new tick: no clone of the digest on a hit.
        if let Some(item) = self.lru.remove(&entry.tick) {
            self.lru.insert(tick, item);
        }
        entry.tick = tick;
        entry.pins += 1;
        Some(entry.size)
    }

    pub(crate) fn unpin(&mut self, digest: &Digest) {
        if let Some(entry) = self.entries.get_mut(&Key::of(digest)) {
            entry.pins = entry.pins.saturating_sub(1);
        }
    }

    /// Every byte of the committed file matched its digest at `at`.
    pub(crate) fn mark_verified(&mut self, digest: &Digest, at: Instant) {
        if let Some(entry) = self.entries.get_mut(&Key::of(digest)) {
            entry.verified = Some(at);
        }
    }

    /// When the committed file was last found whole; `None` if not since `open`.
    pub(crate) fn verified_at(&self, digest: &Digest) -> Option<Instant> {
        self.entries.get(&Key::of(digest)).and_then(|e| e.verified)
    }

    /// Forgets a committed blob (found damaged); its file is the caller's to delete.
    pub(crate) fn remove(&mut self, digest: &Digest) -> Option<u64> {
        let entry = self.entries.remove(&Key::of(digest))?;
        self.lru.remove(&entry.tick);
        self.bytes = self.bytes.saturating_sub(entry.size);
        self.blob_bytes = self.blob_bytes.saturating_sub(entry.size);
        Some(entry.size)
    }

    /// Every committed blob, least recently used first.
    pub(crate) fn digests(&self) -> Vec<Digest> {
        self.lru
            .values()
            .filter_map(|slot| match slot {
                Slot::Blob(k) => Some(k.digest()),
                Slot::File(_) => None,
            })
            .collect()
    }

    /// The committed size, without touching recency.
    pub(crate) fn size(&self, digest: &Digest) -> Option<u64> {
        self.entries.get(&Key::of(digest)).map(|e| e.size)
    }

    /// Drops least-recently-used unpinned entries (blobs, manifests and tag records alike)
    /// until the total fits `max_bytes`, and returns them (oldest first). Pinned blobs are
    /// skipped; if only pinned ones are left, the total stays over budget until a later call.
    pub(crate) fn evict_to(&mut self, max_bytes: u64) -> Vec<Item> {
        let mut evicted = Vec::new();
        while self.bytes > max_bytes {
            let victim = self
                .lru
                .iter()
                .find(|(_, slot)| match slot {
                    Slot::Blob(k) => self.entries.get(k).is_some_and(|e| e.pins == 0),
                    Slot::File(_) => true,
                })
                .map(|(tick, _)| *tick);
            let Some(slot) = victim.and_then(|tick| self.lru.remove(&tick)) else {
                break;
            };
            match &slot {
                Slot::Blob(k) => {
                    if let Some(entry) = self.entries.remove(k) {
                        self.bytes = self.bytes.saturating_sub(entry.size);
                        self.blob_bytes = self.blob_bytes.saturating_sub(entry.size);
                    }
                }
                Slot::File(f) => {
                    if let Some(entry) = self.files.remove(f) {
                        self.bytes = self.bytes.saturating_sub(entry.size);
                    }
                }
            }
            self.evictions += 1;
            evicted.push(slot.item());
        }
        evicted
    }

    /// Bytes of everything indexed: blobs, manifests and tag records.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes of the committed blobs.
    pub(crate) fn blob_bytes(&self) -> u64 {
        self.blob_bytes
    }

    /// Committed blobs.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Manifests and tag records indexed.
    pub(crate) fn files(&self) -> usize {
        self.files.len()
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
        assert_eq!(
            index.evict_to(200),
            vec![Item::Blob(d(2)), Item::Blob(d(3))]
        );
        assert_eq!((index.bytes(), index.len(), index.evictions()), (200, 2, 2));
        // Only pinned 0 and unpinned 1 are left: 1 goes, 0 stays although over budget.
        assert_eq!(index.evict_to(0), vec![Item::Blob(d(1))]);
        assert_eq!(index.size(&d(0)), Some(100));
        assert_eq!(index.bytes(), 100);
    }

    /// Manifests and tag records share the LRU and the budget with the blobs; pins still hold.
    #[test]
    fn files_and_blobs_leave_in_one_least_recently_used_order() {
        let mut index = Index::default();
        let m = |n: u8| CacheFile::Manifest(d(100 + n));
        let t = |n: u8| CacheFile::Tag(format!("{n}.json"));
        index.insert(d(0), 100);
        index.insert_file(m(0), 100);
        index.insert_file(t(0), 100);
        index.insert(d(1), 100);
        assert_eq!(
            (index.bytes(), index.blob_bytes(), index.files()),
            (400, 200, 2)
        );
        // Blob 0 pinned, the manifest used: the tag record is now the least recently used.
        index.touch_and_pin(&d(0));
        assert!(index.touch_file(&m(0)));
        assert_eq!(index.evict_to(300), vec![Item::File(t(0))]);
        assert_eq!(
            index.evict_to(100),
            vec![Item::Blob(d(1)), Item::File(m(0))]
        );
        assert_eq!((index.bytes(), index.len(), index.files()), (100, 1, 0));
        assert!(!index.touch_file(&m(0)));
        index.insert_file(t(1), 50);
        assert_eq!(index.remove_file(&t(1)), Some(50));
        assert_eq!(index.digests(), vec![d(0)]);
    }

    /// Digests are held compactly; every algorithm comes back out as it went in.
    #[test]
    fn digests_of_every_algorithm_come_back_whole() {
        let mut index = Index::default();
        let sha512: Digest = format!("sha512:{}", "ab".repeat(64)).parse().unwrap();
        index.insert(sha512.clone(), 10);
        index.insert(d(7), 10);
        assert_eq!(index.touch_and_pin(&sha512), Some(10));
        index.unpin(&sha512);
        assert_eq!(index.digests(), vec![d(7), sha512.clone()]);
        assert_eq!(
            index.evict_to(0),
            vec![Item::Blob(d(7)), Item::Blob(sha512)]
        );
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

/// What a committed blob costs in the index: `cargo test --lib -- --ignored
/// index_memory_per_blob --nocapture` (bench/store_scale's profile; same layout in debug).
#[cfg(all(test, target_os = "linux"))]
mod footprint {
    use super::*;

    #[test]
    #[ignore = "a measurement, not a check"]
    fn index_memory_per_blob() {
        const N: u64 = 200_000;
        let before = crate::cache::tag_store::footprint::rss_bytes();
        let mut index = Index::default();
        for n in 0..N {
            index.insert(Digest::sha256_of(&n.to_be_bytes()), 4096);
        }
        let after = crate::cache::tag_store::footprint::rss_bytes();
        println!(
            "blob index: {} bytes per blob by RSS (digest, size, recency, pins)",
            (after - before) / N
        );
        assert_eq!(index.len() as u64, N);
    }
}
