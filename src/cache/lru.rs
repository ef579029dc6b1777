//! A recency order as a slab-backed doubly linked list: the entries in one `Vec`, linked by
//! `u32` slot numbers, freed slots reused through a free list. It replaces a
//! `BTreeMap<tick, entry>` (8 bytes of links per entry instead of a share of a half-full B-tree
//! node, about 56) and moves an entry to the back in O(1) without allocating. A slot's number is
//! stable while its entry lives, so a map from key to slot number (`SlotMap`, 4 bytes a slot,
//! hashed by the key held in the entry itself) finds it.
//!
//! Front: the least recently used. Back: the most recently used.

use std::hash::{BuildHasher, Hash, RandomState};

/// No slot: the end of the list (or of the free list).
const NIL: u32 = u32::MAX;

pub(crate) struct Node<T> {
    /// `None`: a free slot, on the free list through `next`.
    value: Option<T>,
    prev: u32,
    next: u32,
}

pub(crate) struct Lru<T> {
    nodes: Vec<Node<T>>,
    head: u32,
    tail: u32,
    /// The first free slot; the free list is linked through `next`.
    free: u32,
    len: usize,
}

impl<T> Default for Lru<T> {
    fn default() -> Self {
        Lru {
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
            free: NIL,
            len: 0,
        }
    }
}

impl<T> Lru<T> {
    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds `value` as the most recently used and returns its slot; a freed slot is reused
    /// before the slab grows. `None` (the value dropped) only when all 2³²−1 slots are taken,
    /// which would take hundreds of GiB of entries.
    pub(crate) fn push_back(&mut self, value: T) -> Option<u32> {
        // `NIL` is never an index of `nodes` (it stops short of it): no free slot, no node.
        let slot = match self.nodes.get_mut(self.free as usize) {
            Some(node) => {
                let slot = self.free;
                self.free = node.next;
                node.value = Some(value);
                slot
            }
            None => {
                let slot = u32::try_from(self.nodes.len()).ok().filter(|&s| s != NIL)?;
                self.nodes.push(Node {
                    value: Some(value),
                    prev: NIL,
                    next: NIL,
                });
                slot
            }
        };
        self.link_back(slot);
        self.len += 1;
        Some(slot)
    }

    /// Room for `additional` more entries; exactly, as the caller knows how many come.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.nodes.reserve_exact(additional);
    }

    pub(crate) fn get(&self, slot: u32) -> Option<&T> {
        self.nodes.get(slot as usize)?.value.as_ref()
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.nodes.get_mut(slot as usize)?.value.as_mut()
    }

    /// Marks the entry most recently used; a free or unknown slot is left alone.
    pub(crate) fn move_to_back(&mut self, slot: u32) {
        if self.get(slot).is_none() || self.tail == slot {
            return;
        }
        self.unlink(slot);
        self.link_back(slot);
    }

    /// Takes the entry out; its slot goes on the free list.
    pub(crate) fn remove(&mut self, slot: u32) -> Option<T> {
        let value = self.nodes.get_mut(slot as usize)?.value.take()?;
        self.unlink(slot);
        if let Some(node) = self.nodes.get_mut(slot as usize) {
            node.next = self.free;
        }
        self.free = slot;
        self.len -= 1;
        Some(value)
    }

    /// The least recently used entry's slot.
    pub(crate) fn front(&self) -> Option<u32> {
        (self.head != NIL).then_some(self.head)
    }

    /// The slot after `slot` (more recently used), if any.
    pub(crate) fn next(&self, slot: u32) -> Option<u32> {
        let node = self.nodes.get(slot as usize)?;
        (node.value.is_some() && node.next != NIL).then_some(node.next)
    }

    /// Every entry with its slot, least recently used first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &T)> + '_ {
        let mut at = self.front();
        std::iter::from_fn(move || {
            let slot = at?;
            at = self.next(slot);
            Some((slot, self.get(slot)?))
        })
    }

    /// Links a slot that is in no list at the back. (A link to `NIL` finds no node: an end.)
    fn link_back(&mut self, slot: u32) {
        let tail = self.tail;
        if let Some(node) = self.nodes.get_mut(slot as usize) {
            node.prev = tail;
            node.next = NIL;
        }
        match self.nodes.get_mut(tail as usize) {
            Some(node) => node.next = slot,
            None => self.head = slot,
        }
        self.tail = slot;
    }

    fn unlink(&mut self, slot: u32) {
        let Some(node) = self.nodes.get(slot as usize) else {
            return;
        };
        let (prev, next) = (node.prev, node.next);
        match self.nodes.get_mut(prev as usize) {
            Some(node) => node.next = next,
            None => self.head = next,
        }
        match self.nodes.get_mut(next as usize) {
            Some(node) => node.prev = prev,
            None => self.tail = prev,
        }
    }
}

/// Key → slot of an [`Lru`]: a hash table of bare `u32` slot numbers (4 bytes and a control
/// byte per bucket), the keys themselves living in the slab. Every call takes the hash of the
/// key asked about and a closure that tells a slot's key apart (and, when the table grows, the
/// hash of a slot's key): the table cannot read the slab itself.
pub(crate) struct SlotMap {
    table: hashbrown::HashTable<u32>,
    hasher: RandomState,
}

impl Default for SlotMap {
    fn default() -> Self {
        SlotMap {
            table: hashbrown::HashTable::new(),
            hasher: RandomState::new(),
        }
    }
}

impl SlotMap {
    /// The hash a key is filed under; the same for the key asked about and the key held.
    pub(crate) fn hash<K: Hash + ?Sized>(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(crate) fn find(&self, hash: u64, is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        let mut is_key = is_key;
        self.table.find(hash, |&slot| is_key(slot)).copied()
    }

    /// Files `slot` (whose key is not in the map yet) under `hash`; `key_of` gives any held
    /// slot's key, to rehash it when the table grows.
    pub(crate) fn insert<K: Hash>(&mut self, hash: u64, slot: u32, key_of: impl Fn(u32) -> K) {
        let SlotMap { table, hasher } = self;
        table.insert_unique(hash, slot, |&s| hasher.hash_one(key_of(s)));
    }

    /// Room for `additional` more slots (`key_of` as for [`insert`](Self::insert)).
    pub(crate) fn reserve<K: Hash>(&mut self, additional: usize, key_of: impl Fn(u32) -> K) {
        let SlotMap { table, hasher } = self;
        table.reserve(additional, |&s| hasher.hash_one(key_of(s)));
    }

    pub(crate) fn remove(&mut self, hash: u64, slot: u32) -> bool {
        match self.table.find_entry(hash, |&s| s == slot) {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn order(lru: &Lru<u32>) -> Vec<u32> {
        lru.iter().map(|(_, v)| *v).collect()
    }

    #[test]
    fn a_table_of_operations() {
        let mut lru = Lru::default();
        let s: Vec<u32> = (0..4).map(|v| lru.push_back(v).unwrap()).collect();
        assert_eq!(s, vec![0, 1, 2, 3], "slots in push order");
        assert_eq!(order(&lru), vec![0, 1, 2, 3]);
        // Touch: to the back; touching the back is a no-op.
        lru.move_to_back(s[1]);
        assert_eq!(order(&lru), vec![0, 2, 3, 1]);
        lru.move_to_back(s[1]);
        assert_eq!(order(&lru), vec![0, 2, 3, 1]);
        lru.move_to_back(s[0]);
        assert_eq!(order(&lru), vec![2, 3, 1, 0]);
        // Remove from the middle, the front and the back.
        assert_eq!(lru.remove(s[3]), Some(3));
        assert_eq!(order(&lru), vec![2, 1, 0]);
        assert_eq!(lru.remove(s[2]), Some(2));
        assert_eq!(lru.front(), Some(s[1]));
        assert_eq!(lru.remove(s[0]), Some(0));
        assert_eq!(order(&lru), vec![1]);
        assert_eq!(lru.len(), 1);
        // A freed slot is gone for good: no value, no touch, no second remove.
        assert_eq!(lru.get(s[3]), None);
        lru.move_to_back(s[3]);
        assert_eq!(lru.remove(s[3]), None);
        assert_eq!(lru.next(s[3]), None);
        assert_eq!(order(&lru), vec![1]);
        // Freed slots are reused (last freed first) before the slab grows.
        assert_eq!(lru.push_back(10), Some(s[0]));
        assert_eq!(lru.push_back(11), Some(s[2]));
        assert_eq!(lru.push_back(12), Some(s[3]));
        assert_eq!(lru.push_back(13), Some(4));
        assert_eq!(order(&lru), vec![1, 10, 11, 12, 13]);
        assert_eq!(lru.nodes.len(), 5);
        // Down to empty and back.
        for slot in [s[1], s[0], s[2], s[3], 4] {
            lru.remove(slot);
        }
        assert_eq!((lru.len(), lru.front()), (0, None));
        assert_eq!(lru.push_back(20), Some(4));
        assert_eq!(order(&lru), vec![20]);
        *lru.get_mut(4).unwrap() = 21;
        assert_eq!(order(&lru), vec![21]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Touch(usize),
        Remove(usize),
        PopFront,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Push),
            3 => any::<usize>().prop_map(Op::Touch),
            2 => any::<usize>().prop_map(Op::Remove),
            1 => Just(Op::PopFront),
        ]
    }

    proptest! {
        /// Against a model (a `Vec` in recency order): same order after every operation, slots
        /// unique among the living, the slab never larger than the most entries held at once.
        #[test]
        fn behaves_like_a_recency_ordered_vec(ops in prop::collection::vec(op(), 0..200)) {
            let mut lru = Lru::default();
            let mut model: Vec<(u32, u32)> = Vec::new(); // (slot, value), front first
            let mut next_value = 0u32;
            let mut most = 0;
            for op in ops {
                match op {
                    Op::Push => {
                        let slot = lru.push_back(next_value).unwrap();
                        prop_assert!(model.iter().all(|&(s, _)| s != slot), "slot {slot} in use");
                        model.push((slot, next_value));
                        next_value += 1;
                    }
                    Op::Touch(i) if !model.is_empty() => {
                        let e = model.remove(i % model.len());
                        lru.move_to_back(e.0);
                        model.push(e);
                    }
                    Op::Remove(i) if !model.is_empty() => {
                        let (slot, value) = model.remove(i % model.len());
                        prop_assert_eq!(lru.remove(slot), Some(value));
                        prop_assert_eq!(lru.remove(slot), None);
                    }
                    Op::PopFront => {
                        let front = lru.front();
                        prop_assert_eq!(front, model.first().map(|e| e.0));
                        if let Some(slot) = front {
                            prop_assert_eq!(lru.remove(slot), Some(model.remove(0).1));
                        }
                    }
                    _ => {}
                }
                most = most.max(model.len());
                prop_assert_eq!(lru.len(), model.len());
                let got: Vec<(u32, u32)> = lru.iter().map(|(s, v)| (s, *v)).collect();
                prop_assert_eq!(&got, &model);
                prop_assert_eq!(lru.nodes.len(), most, "freed slots reused first");
            }
        }

        /// The slot map finds exactly the keys held, through inserts, removals and growth.
        #[test]
        fn the_slot_map_finds_what_the_slab_holds(ops in prop::collection::vec((any::<bool>(), 0u32..64), 0..300)) {
            let mut lru: Lru<u32> = Lru::default();
            let mut map = SlotMap::default();
            for (add, key) in ops {
                let h = map.hash(&key);
                let found = map.find(h, |s| lru.get(s) == Some(&key));
                if add && found.is_none() {
                    let slot = lru.push_back(key).unwrap();
                    map.insert(h, slot, |s| *lru.get(s).unwrap());
                } else if !add {
                    if let Some(slot) = found {
                        prop_assert!(map.remove(h, slot));
                        prop_assert_eq!(lru.remove(slot), Some(key));
                    }
                }
                prop_assert_eq!(map.len(), lru.len());
                for k in 0u32..64 {
                    let held = lru.iter().any(|(_, v)| *v == k);
                    let found = map.find(map.hash(&k), |s| lru.get(s) == Some(&k));
                    prop_assert_eq!(found.is_some(), held, "key {}", k);
                }
            }
        }
    }
}
