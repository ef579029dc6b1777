//! The tag store's records in memory: the most recently used within a byte budget
//! (`cache.tag_memory`), the rest on disk. Dense, since a cache of many images holds many tags:
//! one slab entry per tag (the key's three strings in one `Box<str>`, the digest as its 32 raw
//! bytes, the media type as an index into the manifest types) in the slab-backed LRU of
//! [`lru`](super::lru), found through a map of `u32` slots. Anything that does not pack (a
//! digest other than sha256, another media type) goes in a boxed `Extra`, weighed as well.

use super::lru::{Lru, SlotMap};
use super::tag_entry::TagEntry;
use super::tag_key::TagKey;
use crate::digest::Digest;
use std::mem::size_of;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// What a tag in memory costs besides its key's three strings (and any `Extra`): its slab entry
/// (88 bytes), its map slot, the key's allocation header and rounding, the slab's and map's
/// growth. Measured (`tag_store::footprint::tag_memory_per_entry`, 100,000 tags, keys of 27
/// bytes): 168–173 bytes of RSS per tag in a fresh process, 185–186 after the blob index's
/// measurement in the same one — large frees raise glibc's mmap threshold, so the slab then grows
/// inside the heap, as it does in the server after the start-up scan. The larger figure, so the
/// budget is not overrun: 185 − 27. With moka and five strings it was 560 (682 per tag).
pub(crate) const TAG_ENTRY_OVERHEAD: usize = 158;

/// The media types a tag's manifest has in practice, held as their index.
const MEDIA_TYPES: [&str; 6] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
];

/// `Held::media` when the media type is in `Extra`.
const OTHER_MEDIA: u8 = u8::MAX;

/// One tag in memory: 88 bytes in the slab with its links.
struct Held {
    /// upstream, repository and tag, back to back (split by the two lengths below).
    key: Box<str>,
    /// The sha256 digest's raw bytes; zero when the digest is in `extra`.
    digest: [u8; 32],
    size: u64,
    validated_at_ms: u64,
    extra: Option<Box<Extra>>,
    upstream_len: u16,
    repository_len: u16,
    /// Index into `MEDIA_TYPES`, or `OTHER_MEDIA`.
    media: u8,
}

/// The rare parts that do not pack.
struct Extra {
    /// A digest of another algorithm than sha256.
    digest: Option<Digest>,
    /// A media type not in `MEDIA_TYPES`.
    media_type: Option<Box<str>>,
}

impl Held {
    /// `None` when a key part is longer than 64 KiB: such a tag is simply not held in memory
    /// (it is still read from disk); the router never lets one through.
    fn pack(key: &TagKey, entry: &TagEntry) -> Option<Held> {
        let upstream_len = u16::try_from(key.upstream.len()).ok()?;
        let repository_len = u16::try_from(key.repository.len()).ok()?;
        let joined = [
            key.upstream.as_str(),
            key.repository.as_str(),
            key.tag.as_str(),
        ]
        .concat();
        let media = media_index(&entry.media_type);
        let digest = entry.digest.sha256_bytes();
        let extra = (digest.is_none() || media.is_none()).then(|| {
            Box::new(Extra {
                digest: digest.is_none().then(|| entry.digest.clone()),
                media_type: media.is_none().then(|| entry.media_type.as_str().into()),
            })
        });
        Some(Held {
            key: joined.into_boxed_str(),
            digest: digest.unwrap_or_default(),
            size: entry.size,
            validated_at_ms: entry.validated_at_ms,
            extra,
            upstream_len,
            repository_len,
            media: media.unwrap_or(OTHER_MEDIA),
        })
    }

    /// (upstream, repository, tag).
    fn parts(&self) -> (&str, &str, &str) {
        let (upstream, rest) = self.key.split_at(usize::from(self.upstream_len));
        let (repository, tag) = rest.split_at(usize::from(self.repository_len));
        (upstream, repository, tag)
    }

    /// The same as [`weight`] of the key and entry it packs (recomputed, not stored: no room for
    /// it in the padding).
    fn weight(&self) -> u32 {
        let extra = self.extra.as_deref().map_or(0, |x| {
            size_of::<Extra>()
                + x.digest.as_ref().map_or(0, |d| d.hex().len())
                + x.media_type.as_ref().map_or(0, |m| m.len())
        });
        u32::try_from(self.key.len() + extra + TAG_ENTRY_OVERHEAD).unwrap_or(u32::MAX)
    }

    fn entry(&self) -> TagEntry {
        let extra = self.extra.as_deref();
        let digest = match extra.and_then(|x| x.digest.clone()) {
            Some(d) => d,
            None => Digest::sha256_from_bytes(&self.digest),
        };
        let media_type = match MEDIA_TYPES.get(usize::from(self.media)) {
            Some(m) => (*m).to_owned(),
            None => extra
                .and_then(|x| x.media_type.as_deref())
                .unwrap_or_default()
                .to_owned(),
        };
        TagEntry {
            digest,
            media_type,
            size: self.size,
            validated_at_ms: self.validated_at_ms,
        }
    }
}

fn media_index(media_type: &str) -> Option<u8> {
    let i = MEDIA_TYPES.iter().position(|m| *m == media_type)?;
    u8::try_from(i).ok()
}

fn parts(key: &TagKey) -> (&str, &str, &str) {
    (&key.upstream, &key.repository, &key.tag)
}

/// A tag's cost in memory, as weighed against the budget: its key's strings, what does not
/// pack, plus [`TAG_ENTRY_OVERHEAD`].
pub(crate) fn weight(key: &TagKey, entry: &TagEntry) -> u32 {
    let key_bytes = key.upstream.len() + key.repository.len() + key.tag.len();
    let digest = entry.digest.sha256_bytes().is_none();
    let media = media_index(&entry.media_type).is_none();
    let extra = if digest || media {
        size_of::<Extra>()
            + if digest { entry.digest.hex().len() } else { 0 }
            + if media { entry.media_type.len() } else { 0 }
    } else {
        0
    };
    u32::try_from(key_bytes + extra + TAG_ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

/// Tags in memory within `budget` bytes (as [`weight`] counts them); least recently used out
/// first. Thread-safe: one short lock per call, never held across an await.
pub(crate) struct TagMemory {
    inner: Mutex<Inner>,
    budget: u64,
}

#[derive(Default)]
struct Inner {
    lru: Lru<Held>,
    slots: SlotMap,
    /// The sum of the held tags' weights.
    weight: u64,
}

impl Inner {
    /// The key's hash, and its slot if held.
    fn find(&self, key: &TagKey) -> (u64, Option<u32>) {
        let hash = self.slots.hash(&parts(key));
        let slot = self.slots.find(hash, |s| {
            self.lru.get(s).is_some_and(|h| h.parts() == parts(key))
        });
        (hash, slot)
    }

    fn remove(&mut self, hash: u64, slot: u32) {
        self.slots.remove(hash, slot);
        if let Some(held) = self.lru.remove(slot) {
            self.weight = self.weight.saturating_sub(u64::from(held.weight()));
        }
    }
}

impl TagMemory {
    pub(crate) fn new(budget: u64) -> Self {
        TagMemory {
            inner: Mutex::new(Inner::default()),
            budget,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation leaves the structure whole between statements that can panic (none do
        // by design); refusing tags after a panic elsewhere would be worse.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The tag's entry, marked most recently used.
    pub(crate) fn get(&self, key: &TagKey) -> Option<TagEntry> {
        let mut inner = self.lock();
        let slot = inner.find(key).1?;
        inner.lru.move_to_back(slot);
        inner.lru.get(slot).map(Held::entry)
    }

    pub(crate) fn contains(&self, key: &TagKey) -> bool {
        self.lock().find(key).1.is_some()
    }

    /// Holds (or replaces) the tag as the most recently used, dropping the least recently used
    /// until the total fits the budget. A tag weighing more than the whole budget is not held
    /// (nor is an older entry of it kept).
    pub(crate) fn insert(&self, key: &TagKey, entry: &TagEntry) {
        self.put(key, entry, true);
    }

    /// Like [`insert`](Self::insert), but a tag already held is left as it is.
    pub(crate) fn insert_if_absent(&self, key: &TagKey, entry: &TagEntry) {
        self.put(key, entry, false);
    }

    fn put(&self, key: &TagKey, entry: &TagEntry, replace: bool) {
        let held = Held::pack(key, entry).filter(|h| u64::from(h.weight()) <= self.budget);
        let mut inner = self.lock();
        let (hash, slot) = inner.find(key);
        if let Some(slot) = slot {
            if !replace {
                return;
            }
            inner.remove(hash, slot);
        }
        let Some(held) = held else { return };
        let w = held.weight();
        let Some(slot) = inner.lru.push_back(held) else {
            return;
        };
        let Inner { lru, slots, .. } = &mut *inner;
        slots.insert(hash, slot, |s| {
            lru.get(s).map(Held::parts).unwrap_or_default()
        });
        inner.weight += u64::from(w);
        while inner.weight > self.budget {
            let Some(front) = inner.lru.front() else {
                break;
            };
            let hash = match inner.lru.get(front) {
                Some(h) => inner.slots.hash(&h.parts()),
                None => break,
            };
            inner.remove(hash, front);
        }
    }

    /// Forgets the tag.
    pub(crate) fn remove(&self, key: &TagKey) {
        let mut inner = self.lock();
        if let (hash, Some(slot)) = inner.find(key) {
            inner.remove(hash, slot);
        }
    }

    /// The sum of the held tags' weights: at most the budget.
    pub(crate) fn weighted_size(&self) -> u64 {
        self.lock().weight
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().lru.len()
    }

    /// Bytes of one tag's slab entry, with its links.
    #[cfg(test)]
    pub(crate) fn slab_entry_bytes() -> usize {
        size_of::<super::lru::Node<Held>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(repository: &str, tag: &str) -> TagKey {
        TagKey {
            upstream: "docker.io".into(),
            repository: repository.into(),
            tag: tag.into(),
        }
    }

    fn entry(n: u64, media_type: &str) -> TagEntry {
        TagEntry {
            digest: Digest::sha256_of(&n.to_be_bytes()),
            media_type: media_type.into(),
            size: n,
            validated_at_ms: 1_000 + n,
        }
    }

    #[test]
    fn entries_come_back_whole_packed_or_not() {
        let m = TagMemory::new(1 << 20);
        let sha512: Digest = format!("sha512:{}", "ab".repeat(64)).parse().unwrap();
        let cases = [
            (key("library/alpine", "3"), entry(1, MEDIA_TYPES[0])),
            (key("library/alpine", "4"), entry(2, "application/x-odd")),
            (
                key("a/b", "c"),
                TagEntry {
                    digest: sha512,
                    ..entry(3, MEDIA_TYPES[5])
                },
            ),
            (key("", ""), entry(4, "")),
        ];
        for (k, e) in &cases {
            m.insert(k, e);
        }
        for (k, e) in &cases {
            assert_eq!(m.get(k).as_ref(), Some(e));
        }
        // Same letters, split differently: another key.
        assert_eq!(m.get(&key("library/alpin", "e3")), None);
        assert!(!m.contains(&key("a/bc", "")));
        let weighed: u64 = cases.iter().map(|(k, e)| u64::from(weight(k, e))).sum();
        assert_eq!(m.weighted_size(), weighed);
        for (k, e) in &cases {
            assert_eq!(Held::pack(k, e).unwrap().weight(), weight(k, e), "{k:?}");
        }
        // Only the unpacked parts weigh extra.
        let (k, e) = &cases[0];
        assert_eq!(weight(k, e) as usize, 9 + 14 + 1 + TAG_ENTRY_OVERHEAD);
    }

    #[test]
    fn least_recently_used_leave_first_within_the_budget() {
        let one = u64::from(weight(&key("r", "t0"), &entry(0, MEDIA_TYPES[0])));
        let m = TagMemory::new(3 * one);
        for n in 0..3 {
            m.insert(&key("r", &format!("t{n}")), &entry(n, MEDIA_TYPES[0]));
        }
        assert_eq!(m.weighted_size(), 3 * one);
        // t0 used: t1 is now the least recently used, and leaves for t3.
        assert!(m.get(&key("r", "t0")).is_some());
        m.insert(&key("r", "t3"), &entry(3, MEDIA_TYPES[0]));
        assert!(!m.contains(&key("r", "t1")));
        for t in ["t0", "t2", "t3"] {
            assert!(m.contains(&key("r", t)), "{t}");
        }
        // Replacing keeps one entry, with the new value, as the most recent.
        m.insert(&key("r", "t2"), &entry(9, MEDIA_TYPES[0]));
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&key("r", "t2")).map(|e| e.size), Some(9));
        m.insert(&key("r", "t4"), &entry(4, MEDIA_TYPES[0]));
        assert!(!m.contains(&key("r", "t0")), "t0 was the least recent");
        // insert_if_absent leaves a held tag alone and adds a new one.
        m.insert_if_absent(&key("r", "t4"), &entry(40, MEDIA_TYPES[0]));
        assert_eq!(m.get(&key("r", "t4")).map(|e| e.size), Some(4));
        // Removed: gone, its weight with it.
        m.remove(&key("r", "t4"));
        assert!(!m.contains(&key("r", "t4")));
        assert_eq!(m.weighted_size(), 2 * one);
        m.insert_if_absent(&key("r", "t4"), &entry(41, MEDIA_TYPES[0]));
        assert_eq!(m.get(&key("r", "t4")).map(|e| e.size), Some(41));
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Insert(u8, u8),
            InsertIfAbsent(u8, u8),
            Get(u8),
            Remove(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0..16u8, 0..4u8).prop_map(|(k, m)| Op::Insert(k, m)),
                1 => (0..16u8, 0..4u8).prop_map(|(k, m)| Op::InsertIfAbsent(k, m)),
                3 => (0..16u8).prop_map(Op::Get),
                1 => (0..16u8).prop_map(Op::Remove),
            ]
        }

        fn k(n: u8) -> TagKey {
            // Keys of different lengths weigh differently.
            key("repo", &"t".repeat(usize::from(n) + 1))
        }

        fn e(n: u8, m: u8) -> TagEntry {
            let media = ["", "application/x-other", MEDIA_TYPES[0], MEDIA_TYPES[3]];
            entry(u64::from(n) * 10 + u64::from(m), media[usize::from(m)])
        }

        proptest! {
            /// Against a model (a `Vec` in recency order, the least recent dropped while over the
            /// budget): the same tags held, with the same values and weights, after every step.
            #[test]
            fn tag_memory_behaves_as_the_model(
                budget in 0u64..2_000,
                ops in prop::collection::vec(op(), 0..100),
            ) {
                let m = TagMemory::new(budget);
                let mut model: Vec<(TagKey, TagEntry)> = Vec::new();
                let total = |model: &Vec<(TagKey, TagEntry)>| -> u64 {
                    model.iter().map(|(k, e)| u64::from(weight(k, e))).sum()
                };
                for op in ops {
                    match op {
                        Op::Insert(n, v) | Op::InsertIfAbsent(n, v) => {
                            let replace = matches!(op, Op::Insert(..));
                            let at = model.iter().position(|(mk, _)| *mk == k(n));
                            if replace || at.is_none() {
                                if let Some(i) = at {
                                    model.remove(i);
                                }
                                if u64::from(weight(&k(n), &e(n, v))) <= budget {
                                    model.push((k(n), e(n, v)));
                                }
                                while total(&model) > budget {
                                    model.remove(0);
                                }
                            }
                            if replace {
                                m.insert(&k(n), &e(n, v));
                            } else {
                                m.insert_if_absent(&k(n), &e(n, v));
                            }
                        }
                        Op::Get(n) => {
                            let at = model.iter().position(|(mk, _)| *mk == k(n));
                            let want = at.map(|i| {
                                let held = model.remove(i);
                                model.push(held);
                                model[model.len() - 1].1.clone()
                            });
                            prop_assert_eq!(m.get(&k(n)), want);
                        }
                        Op::Remove(n) => {
                            model.retain(|(mk, _)| *mk != k(n));
                            m.remove(&k(n));
                        }
                    }
                    prop_assert_eq!(m.weighted_size(), total(&model));
                    prop_assert!(m.weighted_size() <= budget);
                    prop_assert_eq!(m.len(), model.len());
                    for n in 0..16 {
                        let held = model.iter().any(|(mk, _)| *mk == k(n));
                        prop_assert_eq!(m.contains(&k(n)), held);
                    }
                }
            }
        }
    }

    /// A tag heavier than the whole budget is not held, and its older, lighter value goes too.
    #[test]
    fn a_tag_over_the_budget_is_not_held() {
        let k = key("r", "t");
        let small = entry(1, MEDIA_TYPES[0]);
        let m = TagMemory::new(u64::from(weight(&k, &small)));
        m.insert(&k, &small);
        assert!(m.contains(&k));
        m.insert(
            &k,
            &entry(2, "application/vnd.a-much-longer-media-type+json"),
        );
        assert!(!m.contains(&k));
        assert_eq!((m.weighted_size(), m.len()), (0, 0));
        let none = TagMemory::new(0);
        none.insert(&k, &small);
        assert!(!none.contains(&k));
    }
}
