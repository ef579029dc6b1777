//! Bytes served, by whether a request's bytes came from this archway's disk, and the upstream
//! bytes that were saved: since start and over the last hour, in one-minute buckets (a fixed
//! ring: the hour costs 60 small entries however busy archway is). Pure.

const MINUTE_MS: u64 = 60_000;
/// Minutes in the window.
pub const WINDOW_MINUTES: usize = 60;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bytes {
    /// Response body bytes sent to clients (every source).
    pub served: u64,
    /// …of which from this archway's own disk or memory (`source="cache"`).
    pub from_cache: u64,
    /// Blob bytes sent that upstream did not send for the request
    /// (`archway_upstream_bytes_saved_total`).
    pub saved: u64,
}

impl Bytes {
    fn add(&mut self, other: &Bytes) {
        self.served = self.served.saturating_add(other.served);
        self.from_cache = self.from_cache.saturating_add(other.from_cache);
        self.saved = self.saved.saturating_add(other.saved);
    }

    /// `from_cache / served`, `None` before any byte was served.
    pub fn hit_ratio(&self) -> Option<f64> {
        (self.served > 0).then(|| self.from_cache as f64 / self.served as f64)
    }
}

#[derive(Debug, Clone)]
pub struct Traffic {
    total: Bytes,
    /// `(minute number, bytes in it)`, indexed by minute modulo the window.
    ring: [(u64, Bytes); WINDOW_MINUTES],
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            total: Bytes::default(),
            ring: [(u64::MAX, Bytes::default()); WINDOW_MINUTES],
        }
    }
}

impl Traffic {
    fn add(&mut self, now_ms: u64, bytes: &Bytes) {
        self.total.add(bytes);
        let minute = now_ms / MINUTE_MS;
        if let Some(slot) = self.ring.get_mut((minute % WINDOW_MINUTES as u64) as usize) {
            if slot.0 != minute {
                *slot = (minute, Bytes::default());
            }
            slot.1.add(bytes);
        }
    }

    pub fn served(&mut self, now_ms: u64, from_cache: bool, n: u64) {
        let add = Bytes {
            served: n,
            from_cache: if from_cache { n } else { 0 },
            saved: 0,
        };
        self.add(now_ms, &add);
    }

    pub fn saved(&mut self, now_ms: u64, n: u64) {
        let add = Bytes {
            saved: n,
            ..Bytes::default()
        };
        self.add(now_ms, &add);
    }

    pub fn since_start(&self) -> Bytes {
        self.total
    }

    /// The current minute and the 59 before it.
    pub fn last_hour(&self, now_ms: u64) -> Bytes {
        let now = now_ms / MINUTE_MS;
        let mut sum = Bytes::default();
        for (minute, bytes) in &self.ring {
            if *minute <= now && now - minute < WINDOW_MINUTES as u64 {
                sum.add(bytes);
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hour_forgets_what_is_older_and_the_total_does_not() {
        let mut t = Traffic::default();
        t.served(0, true, 100);
        t.served(30 * MINUTE_MS, false, 50);
        t.saved(30 * MINUTE_MS, 20);
        let hour = t.last_hour(59 * MINUTE_MS);
        assert_eq!((hour.served, hour.from_cache, hour.saved), (150, 100, 20));
        // Minute 0 has left the window; minute 30 is still in it.
        let later = t.last_hour(60 * MINUTE_MS);
        assert_eq!((later.served, later.from_cache, later.saved), (50, 0, 20));
        assert_eq!(t.since_start().served, 150);
        assert_eq!(later.hit_ratio(), Some(0.0));
        assert_eq!(t.since_start().hit_ratio(), Some(100.0 / 150.0));
        assert_eq!(Bytes::default().hit_ratio(), None);
    }

    #[test]
    fn a_slot_reused_an_hour_later_starts_empty() {
        let mut t = Traffic::default();
        t.served(5 * MINUTE_MS, true, 7);
        t.served(65 * MINUTE_MS, true, 3);
        assert_eq!(t.last_hour(65 * MINUTE_MS).served, 3);
        assert_eq!(t.since_start().served, 10);
    }
}
