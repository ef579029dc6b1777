//! Which blobs are committed — and which other cache files (manifests, tag records) share their
//! disk budget: size, recency (one LRU over all of them) and pins, with the byte totals. Pure:
//! the catalog deletes the files of what this index evicts.

use crate::cache::lru::{Lru, SlotMap};
use crate::digest::Digest;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// An entry's key as the slab holds it, inline and without a heap string: a sha256 blob or
/// manifest as its 32 raw bytes, a tag record by the 16 bytes its file name spells in hex.
/// Anything else (other algorithms, a name not in the tag store's form) is `Other`, its item
/// kept in `Index::others` by slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Packed {
    Blob([u8; 32]),
    Manifest([u8; 32]),
    Tag([u8; 16]),
    Other,
}

/// A key as it comes in (the start-up scan, an insert): packed, or the whole item.
pub(crate) enum Key {
    Packed(Packed),
    Other(Box<Item>),
}

impl Key {
    pub(crate) fn blob(digest: &Digest) -> Key {
        match digest.sha256_bytes() {
            Some(bytes) => Key::Packed(Packed::Blob(bytes)),
            None => Key::Other(Box::new(Item::Blob(digest.clone()))),
        }
    }

    pub(crate) fn file(file: CacheFile) -> Key {
        let packed = match &file {
            CacheFile::Manifest(d) => d.sha256_bytes().map(Packed::Manifest),
            CacheFile::Tag(name) => tag_name_bytes(name).map(Packed::Tag),
        };
        match packed {
            Some(p) => Key::Packed(p),
            None => Key::Other(Box::new(Item::File(file))),
        }
    }

    /// A tag record by its file name (see [`CacheFile::Tag`]).
    pub(crate) fn tag(name: &str) -> Key {
        match tag_name_bytes(name) {
            Some(bytes) => Key::Packed(Packed::Tag(bytes)),
            None => Key::Other(Box::new(Item::File(CacheFile::Tag(name.to_owned())))),
        }
    }

    fn view(&self) -> View<'_> {
        match self {
            Key::Packed(p) => View::Packed(p),
            Key::Other(item) => View::Other(item),
        }
    }
}

/// What is hashed and compared, the same for a key asked about and a key held.
#[derive(Hash, PartialEq)]
enum View<'a> {
    Packed(&'a Packed),
    Other(&'a Item),
}

/// A tag record's file name (`<32 lowercase hex>.json`, as the tag store names them) as bytes.
fn tag_name_bytes(name: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    let hex = name.strip_suffix(".json")?;
    // `hex` also takes upper case, which would not spell the same name back.
    let lower = hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (lower && hex::decode_to_slice(hex, &mut out).is_ok()).then_some(out)
}

fn packed_item(p: &Packed) -> Option<Item> {
    Some(match p {
        Packed::Blob(b) => Item::Blob(Digest::sha256_from_bytes(b)),
        Packed::Manifest(b) => Item::File(CacheFile::Manifest(Digest::sha256_from_bytes(b))),
        Packed::Tag(b) => Item::File(CacheFile::Tag(format!("{}.json", hex::encode(b)))),
        Packed::Other => return None,
    })
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Item {
    Blob(Digest),
    File(CacheFile),
}

/// Blobs, manifests and tag records in one slab-backed LRU (front: least recently used), found
/// by key through a map of slot numbers: about 70 bytes per entry (see `footprint`).
pub(crate) struct Index {
    lru: Lru<Entry>,
    slots: SlotMap,
    /// The items of `Packed::Other` entries, by slot: rare (sha512 blobs), so not inline.
    others: HashMap<u32, Item>,
    /// Committed blobs, and manifests and tag records, indexed.
    blobs: usize,
    files: usize,
    /// Blobs' bytes, and all bytes (blobs and files): the budget is on the latter.
    blob_bytes: u64,
    bytes: u64,
    evictions: u64,
    /// What `Entry::verified` counts from.
    epoch: Instant,
    /// Pinned images' manifests and blobs (`pin_set`): never evicted, still counted. Kept by
    /// key rather than on the entry, since a pin names digests before they are cached.
    kept: HashSet<Packed>,
    /// …those whose key does not pack (sha512).
    kept_other: HashSet<Item>,
}

/// 64 bytes in the slab with its links.
struct Entry {
    size: u64,
    /// When every byte of this committed blob last matched its digest (its download, a
    /// verified whole read, the scrub), as nanoseconds after `Index::epoch` plus one; 0: not
    /// since `open`. Eight bytes where an `Option<Instant>` takes sixteen.
    verified: u64,
    /// Handles and bodies reading the blob: a pinned blob is never evicted. Files: always 0
    /// (each is read whole, at once).
    pins: u32,
    key: Packed,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            lru: Lru::default(),
            slots: SlotMap::default(),
            others: HashMap::new(),
            blobs: 0,
            files: 0,
            blob_bytes: 0,
            bytes: 0,
            evictions: 0,
            epoch: Instant::now(),
            kept: HashSet::new(),
            kept_other: HashSet::new(),
        }
    }
}

/// The key held in `slot`. A slot in the map always holds an entry; the fallback is never used.
fn view_of<'a>(lru: &'a Lru<Entry>, others: &'a HashMap<u32, Item>, slot: u32) -> View<'a> {
    match lru.get(slot).map(|e| &e.key) {
        Some(Packed::Other) => others
            .get(&slot)
            .map_or(View::Packed(&Packed::Other), View::Other),
        Some(p) => View::Packed(p),
        None => View::Packed(&Packed::Other),
    }
}

impl Index {
    /// Room for `additional` more entries without growing.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.lru.reserve(additional);
        let (lru, others) = (&self.lru, &self.others);
        self.slots.reserve(additional, |s| view_of(lru, others, s));
    }

    fn find(&self, key: &Key) -> Option<u32> {
        let view = key.view();
        self.slots.find(self.slots.hash(&view), |slot| {
            view_of(&self.lru, &self.others, slot) == view
        })
    }

    fn find_blob(&self, digest: &Digest) -> Option<u32> {
        self.find(&Key::blob(digest))
    }

    fn is_blob(&self, slot: u32, key: &Packed) -> bool {
        match key {
            Packed::Blob(_) => true,
            Packed::Other => matches!(self.others.get(&slot), Some(Item::Blob(_))),
            Packed::Manifest(_) | Packed::Tag(_) => false,
        }
    }

    /// Adds (or replaces) a committed blob as the most recently used.
    pub(crate) fn insert(&mut self, digest: Digest, size: u64) {
        let key = match digest.sha256_bytes() {
            Some(bytes) => Key::Packed(Packed::Blob(bytes)),
            None => Key::Other(Box::new(Item::Blob(digest))),
        };
        self.insert_key(key, size);
    }

    /// Adds (or replaces) a manifest or tag record as the most recently used.
    pub(crate) fn insert_file(&mut self, file: CacheFile, size: u64) {
        self.insert_key(Key::file(file), size);
    }

    /// Adds (or replaces: unpinned, not verified) a blob or file as the most recently used.
    pub(crate) fn insert_key(&mut self, key: Key, size: u64) {
        if let Some(slot) = self.find(&key) {
            let Some(entry) = self.lru.get_mut(slot) else {
                return;
            };
            let old = std::mem::replace(&mut entry.size, size);
            entry.pins = 0;
            entry.verified = 0;
            let packed = entry.key;
            self.lru.move_to_back(slot);
            self.bytes = self.bytes.saturating_sub(old).saturating_add(size);
            if self.is_blob(slot, &packed) {
                self.blob_bytes = self.blob_bytes.saturating_sub(old).saturating_add(size);
            }
            return;
        }
        let hash = self.slots.hash(&key.view());
        let (packed, other) = match key {
            Key::Packed(p) => (p, None),
            Key::Other(item) => (Packed::Other, Some(*item)),
        };
        let entry = Entry {
            size,
            verified: 0,
            pins: 0,
            key: packed,
        };
        // Full only past 4 billion entries (hundreds of GiB of index): the file stays unindexed.
        let Some(slot) = self.lru.push_back(entry) else {
            return;
        };
        if let Some(item) = other {
            self.others.insert(slot, item);
        }
        let (lru, others) = (&self.lru, &self.others);
        self.slots.insert(hash, slot, |s| view_of(lru, others, s));
        self.bytes = self.bytes.saturating_add(size);
        if self.is_blob(slot, &packed) {
            self.blobs += 1;
            self.blob_bytes = self.blob_bytes.saturating_add(size);
        } else {
            self.files += 1;
        }
    }

    /// Takes an entry out of the slab and the map; returns its item and size.
    fn remove_slot(&mut self, slot: u32) -> Option<(Item, u64)> {
        let hash = self.slots.hash(&view_of(&self.lru, &self.others, slot));
        self.slots.remove(hash, slot);
        let entry = self.lru.remove(slot)?;
        let item = match entry.key {
            Packed::Other => self.others.remove(&slot)?,
            p => packed_item(&p)?,
        };
        self.bytes = self.bytes.saturating_sub(entry.size);
        if matches!(item, Item::Blob(_)) {
            self.blobs -= 1;
            self.blob_bytes = self.blob_bytes.saturating_sub(entry.size);
        } else {
            self.files -= 1;
        }
        Some((item, entry.size))
    }

    /// Marks a manifest or tag record used; `false` if it is not indexed.
    pub(crate) fn touch_file(&mut self, file: &CacheFile) -> bool {
        let Some(slot) = self.find(&Key::file(file.clone())) else {
            return false;
        };
        self.lru.move_to_back(slot);
        true
    }

    /// Forgets a manifest or tag record; its file is the caller's to delete.
    pub(crate) fn remove_file(&mut self, file: &CacheFile) -> Option<u64> {
        let slot = self.find(&Key::file(file.clone()))?;
        self.remove_slot(slot).map(|(_, size)| size)
    }

    /// Marks the entry used and pins it; `None` if not committed.
    pub(crate) fn touch_and_pin(&mut self, digest: &Digest) -> Option<u64> {
        let slot = self.find_blob(digest)?;
        self.lru.move_to_back(slot);
        self.pin_slot(slot)
    }

    /// Pins the entry where it is in the recency order: for archway's own reads (the scrub,
    /// the copy to the bucket), which are no client's use; `None` if not committed.
    pub(crate) fn pin(&mut self, digest: &Digest) -> Option<u64> {
        let slot = self.find_blob(digest)?;
        self.pin_slot(slot)
    }

    fn pin_slot(&mut self, slot: u32) -> Option<u64> {
        let entry = self.lru.get_mut(slot)?;
        entry.pins = entry.pins.saturating_add(1);
        Some(entry.size)
    }

    pub(crate) fn unpin(&mut self, digest: &Digest) {
        if let Some(entry) = self.find_blob(digest).and_then(|s| self.lru.get_mut(s)) {
            entry.pins = entry.pins.saturating_sub(1);
        }
    }

    /// Every byte of the committed file matched its digest at `at` (a time before the index
    /// was made counts as its making).
    pub(crate) fn mark_verified(&mut self, digest: &Digest, at: Instant) {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        let stamp = u64::try_from(nanos)
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        if let Some(entry) = self.find_blob(digest).and_then(|s| self.lru.get_mut(s)) {
            entry.verified = stamp;
        }
    }

    /// When the committed file was last found whole; `None` if not since `open`.
    pub(crate) fn verified_at(&self, digest: &Digest) -> Option<Instant> {
        let entry = self.lru.get(self.find_blob(digest)?)?;
        let nanos = entry.verified.checked_sub(1)?;
        self.epoch.checked_add(Duration::from_nanos(nanos))
    }

    /// Forgets a committed blob (found damaged); its file is the caller's to delete.
    pub(crate) fn remove(&mut self, digest: &Digest) -> Option<u64> {
        let slot = self.find_blob(digest)?;
        self.remove_slot(slot).map(|(_, size)| size)
    }

    /// Every committed blob, least recently used first.
    pub(crate) fn digests(&self) -> Vec<Digest> {
        self.lru
            .iter()
            .filter_map(|(slot, e)| match &e.key {
                Packed::Blob(b) => Some(Digest::sha256_from_bytes(b)),
                Packed::Other => match self.others.get(&slot) {
                    Some(Item::Blob(d)) => Some(d.clone()),
                    _ => None,
                },
                Packed::Manifest(_) | Packed::Tag(_) => None,
            })
            .collect()
    }

    /// The committed size, without touching recency.
    pub(crate) fn size(&self, digest: &Digest) -> Option<u64> {
        self.lru.get(self.find_blob(digest)?).map(|e| e.size)
    }

    /// Replaces the set of items the pinned images hold (blobs and manifests).
    pub(crate) fn set_kept(&mut self, items: impl IntoIterator<Item = Item>) {
        self.kept.clear();
        self.kept_other.clear();
        for item in items {
            let key = match item {
                Item::Blob(d) => Key::blob(&d),
                Item::File(f) => Key::file(f),
            };
            match key {
                Key::Packed(p) => {
                    self.kept.insert(p);
                }
                Key::Other(item) => {
                    self.kept_other.insert(*item);
                }
            }
        }
    }

    /// Whether the entry in `slot` belongs to a pinned image.
    fn is_kept(&self, slot: u32, key: &Packed) -> bool {
        match key {
            Packed::Other => self
                .others
                .get(&slot)
                .is_some_and(|i| self.kept_other.contains(i)),
            p => self.kept.contains(p),
        }
    }

    /// Bytes and entries on disk that pinned images hold (they count against the budget).
    pub(crate) fn kept_bytes(&self) -> (u64, u64) {
        let found = |key: Key| {
            self.find(&key)
                .and_then(|s| self.lru.get(s))
                .map(|e| e.size)
        };
        let mut bytes = 0u64;
        let mut entries = 0u64;
        let sizes = self
            .kept
            .iter()
            .map(|p| found(Key::Packed(*p)))
            .chain(
                self.kept_other
                    .iter()
                    .map(|i| found(Key::Other(Box::new(i.clone())))),
            )
            .collect::<Vec<_>>();
        for size in sizes.into_iter().flatten() {
            bytes = bytes.saturating_add(size);
            entries += 1;
        }
        (bytes, entries)
    }

    /// Drops least-recently-used unpinned entries (blobs, manifests and tag records alike)
    /// until the total fits `max_bytes`, and returns them (oldest first). Pinned blobs are
    /// skipped; if only pinned ones are left, the total stays over budget until a later call.
    pub(crate) fn evict_to(&mut self, max_bytes: u64) -> Vec<Item> {
        let mut evicted = Vec::new();
        let mut at = self.lru.front();
        while self.bytes > max_bytes {
            let Some(slot) = at else { break };
            // The next one first: `slot` may leave the list. Pins earlier in the list stay.
            at = self.lru.next(slot);
            let held = self
                .lru
                .get(slot)
                .is_some_and(|e| e.pins > 0 || self.is_kept(slot, &e.key));
            if held {
                continue;
            }
            if let Some((item, _)) = self.remove_slot(slot) {
                self.evictions += 1;
                evicted.push(item);
            }
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
        self.blobs
    }

    /// Manifests and tag records indexed.
    pub(crate) fn files(&self) -> usize {
        self.files
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

    /// archway's own reads pin a blob without making it recent: evicted in its turn once released.
    #[test]
    fn a_pin_that_is_no_use_keeps_the_recency_order() {
        let mut index = Index::default();
        for n in 0..3 {
            index.insert(d(n), 100);
        }
        let manifest = CacheFile::Manifest(d(9));
        index.insert_file(manifest.clone(), 10);
        assert_eq!(index.pin(&d(0)), Some(100));
        assert_eq!(index.pin(&d(7)), None, "not committed");
        assert_eq!(
            index.digests(),
            vec![d(0), d(1), d(2)],
            "least recent first, unchanged"
        );
        // Pinned, 0 is skipped; released, it is the first to go, before the newer manifest.
        assert_eq!(index.evict_to(300), vec![Item::Blob(d(1))]);
        index.unpin(&d(0));
        assert_eq!(index.evict_to(200), vec![Item::Blob(d(0))]);
        assert_eq!(
            index.evict_to(0),
            vec![Item::Blob(d(2)), Item::File(manifest)],
            "the manifest, used last, goes last"
        );
    }

    /// Pinned images' blobs and manifests are skipped by eviction however old, still count
    /// against the budget (so unpinned newcomers go instead), and become ordinary LRU content
    /// once released — also when they were named before they were cached.
    #[test]
    fn kept_items_are_never_evicted_but_count() {
        let mut index = Index::default();
        let sha512 = format!("sha512:{}", "ab".repeat(64))
            .parse::<Digest>()
            .unwrap();
        let manifest = CacheFile::Manifest(d(9));
        // Kept before any is cached.
        index.set_kept([
            Item::Blob(d(0)),
            Item::File(manifest.clone()),
            Item::Blob(sha512.clone()),
        ]);
        index.insert(d(0), 100);
        index.insert_file(manifest.clone(), 100);
        index.insert(sha512.clone(), 100);
        index.insert(d(1), 100);
        assert_eq!(index.kept_bytes(), (300, 3));
        // The oldest three are kept: only 1 goes, and the total stays over budget.
        assert_eq!(index.evict_to(0), vec![Item::Blob(d(1))]);
        assert_eq!(index.bytes(), 300);
        // A newcomer does not push kept ones out: it is the one evicted.
        index.insert(d(2), 100);
        assert_eq!(index.evict_to(300), vec![Item::Blob(d(2))]);
        // Released: ordinary content, least recently used first.
        index.set_kept([Item::Blob(d(0))]);
        assert_eq!(index.kept_bytes(), (100, 1));
        assert_eq!(
            index.evict_to(100),
            vec![Item::File(manifest), Item::Blob(sha512)]
        );
        assert_eq!(index.size(&d(0)), Some(100));
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

    /// Entries are held as packed bytes; every kind of key comes back out exactly as it went in.
    #[test]
    fn every_kind_of_key_comes_back_whole() {
        let mut index = Index::default();
        let sha512: Digest = format!("sha512:{}", "cd".repeat(64)).parse().unwrap();
        let files = [
            CacheFile::Manifest(d(1)),
            CacheFile::Manifest(sha512.clone()),
            CacheFile::Tag(format!("{}.json", "0123456789abcdef".repeat(2))),
            // Not the tag store's form (upper case, short): kept whole, never respelt.
            CacheFile::Tag(format!("{}.json", "0123456789ABCDEF".repeat(2))),
            CacheFile::Tag("x.json".into()),
        ];
        for f in &files {
            index.insert_file(f.clone(), 10);
        }
        // A blob and a manifest of the same digest are two entries.
        index.insert(d(1), 10);
        assert_eq!((index.len(), index.files(), index.bytes()), (1, 5, 60));
        for f in &files {
            assert!(index.touch_file(f), "{f:?}");
        }
        let mut evicted = index.evict_to(0);
        assert_eq!(evicted.remove(0), Item::Blob(d(1)));
        let files: Vec<Item> = files.into_iter().map(Item::File).collect();
        assert_eq!(evicted, files);
        assert_eq!((index.len(), index.files(), index.bytes()), (0, 0, 0));
    }

    /// Verification times are held as nanoseconds since the index was made: exact.
    #[test]
    fn verification_times_come_back_exact() {
        let mut index = Index::default();
        index.insert(d(1), 10);
        assert_eq!(index.verified_at(&d(1)), None);
        let at = Instant::now() + Duration::from_nanos(123_456_789);
        index.mark_verified(&d(1), at);
        assert_eq!(index.verified_at(&d(1)), Some(at));
        index.mark_verified(&d(2), at);
        assert_eq!(index.verified_at(&d(2)), None);
        // Inserted again: a new file, not verified.
        index.insert(d(1), 10);
        assert_eq!(index.verified_at(&d(1)), None);
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        /// The index as specified, naively: a `Vec` in recency order (front: least recent).
        #[derive(Default)]
        struct Model {
            entries: Vec<(Item, u64, u32)>,
        }

        impl Model {
            fn at(&self, item: &Item) -> Option<usize> {
                self.entries.iter().position(|e| e.0 == *item)
            }
            fn insert(&mut self, item: Item, size: u64) {
                if let Some(i) = self.at(&item) {
                    self.entries.remove(i);
                }
                self.entries.push((item, size, 0));
            }
            fn touch(&mut self, item: &Item) -> Option<usize> {
                let i = self.at(item)?;
                let e = self.entries.remove(i);
                self.entries.push(e);
                Some(self.entries.len() - 1)
            }
            fn remove(&mut self, item: &Item) -> Option<u64> {
                Some(self.entries.remove(self.at(item)?).1)
            }
            fn bytes(&self, blobs_only: bool) -> u64 {
                self.entries
                    .iter()
                    .filter(|e| !blobs_only || matches!(e.0, Item::Blob(_)))
                    .map(|e| e.1)
                    .sum()
            }
            fn evict_to(&mut self, max: u64) -> Vec<Item> {
                let mut out = Vec::new();
                while self.bytes(false) > max {
                    let Some(i) = self.entries.iter().position(|e| e.2 == 0) else {
                        break;
                    };
                    out.push(self.entries.remove(i).0);
                }
                out
            }
        }

        fn items() -> Vec<Item> {
            let sha512: Digest = format!("sha512:{}", "ab".repeat(64)).parse().unwrap();
            let mut items: Vec<Item> = (0..5).map(|n| Item::Blob(d(n))).collect();
            items.push(Item::Blob(sha512.clone()));
            items.push(Item::File(CacheFile::Manifest(d(0))));
            items.push(Item::File(CacheFile::Manifest(d(9))));
            items.push(Item::File(CacheFile::Manifest(sha512)));
            items.push(Item::File(CacheFile::Tag(format!(
                "{}.json",
                "5a".repeat(16)
            ))));
            items.push(Item::File(CacheFile::Tag(format!(
                "{}.json",
                "77".repeat(16)
            ))));
            items.push(Item::File(CacheFile::Tag("odd.json".into())));
            items
        }

        #[derive(Debug, Clone)]
        enum Op {
            Insert(usize, u64),
            Touch(usize),
            Unpin(usize),
            Remove(usize),
            Evict(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0..12usize, 1..100u64).prop_map(|(i, s)| Op::Insert(i, s)),
                3 => (0..12usize).prop_map(Op::Touch),
                2 => (0..12usize).prop_map(Op::Unpin),
                1 => (0..12usize).prop_map(Op::Remove),
                1 => (0..600u64).prop_map(Op::Evict),
            ]
        }

        proptest! {
            /// Insert, touch (pinning a blob), unpin, remove and evict, in any order over blobs,
            /// manifests and tag records of every key kind: the index answers as the model does
            /// (the old `BTreeMap` index's semantics) after every step.
            #[test]
            fn the_index_behaves_as_the_model(ops in prop::collection::vec(op(), 0..120)) {
                let items = items();
                let mut index = Index::default();
                let mut model = Model::default();
                for op in ops {
                    match op {
                        Op::Insert(i, size) => {
                            match items[i].clone() {
                                Item::Blob(d) => index.insert(d, size),
                                Item::File(f) => index.insert_file(f, size),
                            }
                            model.insert(items[i].clone(), size);
                        }
                        Op::Touch(i) => match &items[i] {
                            Item::Blob(d) => {
                                let want = model.touch(&items[i]).map(|at| {
                                    model.entries[at].2 += 1;
                                    model.entries[at].1
                                });
                                prop_assert_eq!(index.touch_and_pin(d), want);
                            }
                            Item::File(f) => {
                                prop_assert_eq!(index.touch_file(f), model.touch(&items[i]).is_some());
                            }
                        },
                        Op::Unpin(i) => {
                            if let Item::Blob(d) = &items[i] {
                                index.unpin(d);
                                if let Some(at) = model.at(&items[i]) {
                                    model.entries[at].2 = model.entries[at].2.saturating_sub(1);
                                }
                            }
                        }
                        Op::Remove(i) => {
                            let got = match &items[i] {
                                Item::Blob(d) => index.remove(d),
                                Item::File(f) => index.remove_file(f),
                            };
                            prop_assert_eq!(got, model.remove(&items[i]));
                        }
                        Op::Evict(max) => {
                            prop_assert_eq!(index.evict_to(max), model.evict_to(max));
                        }
                    }
                    let blobs: Vec<Digest> = model
                        .entries
                        .iter()
                        .filter_map(|e| match &e.0 {
                            Item::Blob(d) => Some(d.clone()),
                            Item::File(_) => None,
                        })
                        .collect();
                    prop_assert_eq!(index.bytes(), model.bytes(false));
                    prop_assert_eq!(index.blob_bytes(), model.bytes(true));
                    prop_assert_eq!(index.len(), blobs.len());
                    prop_assert_eq!(index.files(), model.entries.len() - blobs.len());
                    for d in &blobs {
                        let size = model.at(&Item::Blob(d.clone())).map(|i| model.entries[i].1);
                        prop_assert_eq!(index.size(d), size);
                    }
                    prop_assert_eq!(index.digests(), blobs);
                }
            }
        }
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
            "blob index: {} bytes per blob by RSS, grown one insert at a time (digest, size, \
             recency, pins, verified); slab entry {} bytes, map {} bytes a slot",
            (after - before) / N,
            std::mem::size_of::<crate::cache::lru::Node<Entry>>(),
            std::mem::size_of::<u32>() + 1,
        );
        assert_eq!(index.len() as u64, N);
        // As `Catalog::open` builds it: sized for what the scan found, then filled (the scan's
        // keys are freed by the time of the second reading, as at start-up).
        let before = crate::cache::tag_store::footprint::rss_bytes();
        let keys: Vec<Key> = (N..2 * N)
            .map(|n| Key::blob(&Digest::sha256_of(&n.to_be_bytes())))
            .collect();
        let mut opened = Index::default();
        opened.reserve(keys.len());
        for key in keys {
            opened.insert_key(key, 4096);
        }
        let after = crate::cache::tag_store::footprint::rss_bytes();
        println!(
            "blob index: {} bytes per blob by RSS, sized at start-up",
            (after - before) / N
        );
        assert_eq!(opened.len() as u64, N);
    }
}
