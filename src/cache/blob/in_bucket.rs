//! Blobs known to be in the bucket (`storage.redirect`): a redirect for a digest seen there
//! lately needs no `HeadObject`. Bounded in bytes (`storage.redirect_memo`) and in age: an entry
//! is trusted for `storage.redirect_expiry`, as long as a URL handed out is valid anyway, so the
//! bucket must keep a blob that long after it was last seen (a lifecycle rule counts days).
//!
//! Entries go in time order, which is also expiry order (one TTL for all): the oldest is
//! dropped first, whether it expired or the memo is full.

use crate::digest::Digest;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What one entry costs, counted generously: the digest twice (map key and queue; 64 hex bytes
/// on the heap, the `String` and the algorithm inline), two instants, and the map's overhead.
pub(crate) const ENTRY_BYTES: u64 = 256;

#[derive(Debug)]
pub(crate) struct InBucket {
    ttl: Duration,
    max_entries: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When each digest was last seen in the bucket.
    seen: HashMap<Digest, Instant>,
    /// `(digest, seen at)` in the order seen; an entry whose time is not the map's is stale.
    order: VecDeque<(Digest, Instant)>,
}

impl InBucket {
    pub(crate) fn new(ttl: Duration, max_bytes: u64) -> Self {
        InBucket {
            ttl,
            max_entries: usize::try_from(max_bytes / ENTRY_BYTES).unwrap_or(usize::MAX),
            state: Mutex::new(State::default()),
        }
    }

    /// Seen in the bucket within the TTL.
    pub(crate) fn knows(&self, digest: &Digest) -> bool {
        self.knows_at(digest, Instant::now())
    }

    pub(crate) fn remember(&self, digest: &Digest) {
        self.remember_at(digest, Instant::now());
    }

    /// Not in the bucket (any more), or not as it should be: asked again next time.
    pub(crate) fn forget(&self, digest: &Digest) {
        if let Ok(mut state) = self.state.lock() {
            state.seen.remove(digest);
        }
    }

    fn knows_at(&self, digest: &Digest, now: Instant) -> bool {
        let Ok(state) = self.state.lock() else {
            return false;
        };
        state
            .seen
            .get(digest)
            .is_some_and(|seen| now.saturating_duration_since(*seen) < self.ttl)
    }

    fn remember_at(&self, digest: &Digest, now: Instant) {
        if self.max_entries == 0 {
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let state = &mut *state;
        // Expired entries first, then the oldest while full (a map entry goes with its newest
        // queue entry only).
        while let Some((oldest, at)) = state.order.front() {
            let expired = now.saturating_duration_since(*at) >= self.ttl;
            if !expired && state.order.len() < self.max_entries {
                break;
            }
            if state.seen.get(oldest) == Some(at) {
                state.seen.remove(oldest);
            }
            state.order.pop_front();
        }
        state.seen.insert(digest.clone(), now);
        state.order.push_back((digest.clone(), now));
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap();
        (state.seen.len(), state.order.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u32) -> Digest {
        Digest::sha256_of(&n.to_le_bytes())
    }

    #[test]
    fn known_within_the_ttl_only() {
        let memo = InBucket::new(Duration::from_secs(60), 1 << 20);
        let t0 = Instant::now();
        assert!(!memo.knows_at(&d(1), t0));
        memo.remember_at(&d(1), t0);
        assert!(memo.knows_at(&d(1), t0 + Duration::from_secs(59)));
        assert!(!memo.knows_at(&d(1), t0 + Duration::from_secs(60)));
        memo.remember_at(&d(1), t0 + Duration::from_secs(30));
        assert!(memo.knows_at(&d(1), t0 + Duration::from_secs(89)));
        memo.forget(&d(1));
        assert!(!memo.knows_at(&d(1), t0 + Duration::from_secs(31)));
    }

    #[test]
    fn bounded_in_bytes_the_oldest_going_first() {
        let memo = InBucket::new(Duration::from_secs(3600), 4 * ENTRY_BYTES);
        let t0 = Instant::now();
        for n in 0..10 {
            memo.remember_at(&d(n), t0 + Duration::from_millis(u64::from(n)));
        }
        let (seen, order) = memo.len();
        assert!(seen <= 4 && order <= 4, "{seen} {order}");
        let now = t0 + Duration::from_secs(1);
        assert!((6..10).all(|n| memo.knows_at(&d(n), now)));
        assert!((0..6).all(|n| !memo.knows_at(&d(n), now)));
        // The same digest again and again takes one place in the map, and the queue stays
        // bounded.
        for i in 0..100 {
            memo.remember_at(&d(42), now + Duration::from_millis(i));
        }
        let (seen, order) = memo.len();
        assert!(seen <= 4 && order <= 4, "{seen} {order}");
        assert!(memo.knows_at(&d(42), now + Duration::from_secs(1)));
    }

    #[test]
    fn expired_entries_leave_on_the_next_remember() {
        let memo = InBucket::new(Duration::from_secs(1), 1 << 20);
        let t0 = Instant::now();
        for n in 0..50 {
            memo.remember_at(&d(n), t0);
        }
        memo.remember_at(&d(99), t0 + Duration::from_secs(2));
        assert_eq!(memo.len(), (1, 1));
    }

    #[test]
    fn a_zero_budget_remembers_nothing() {
        let memo = InBucket::new(Duration::from_secs(60), 0);
        memo.remember(&d(1));
        assert!(!memo.knows(&d(1)));
    }
}
