//! What the status page shows that the metrics do not keep: each upstream's and parent's last
//! success and error, stale answers, the hour's traffic and pulls, the bucket's last answer and
//! the fleet's replicas. Fed by the same hooks as the metrics (`Metrics` calls it), so the
//! page and `/metrics` cannot disagree. Every map here is bounded.

use super::health::Health;
use super::top_images::{Top, TopImages};
use super::traffic::{Bytes, Traffic};
use crate::clock::Clock;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Upstreams and parents come from the config; this bound only guards against a caller that
/// names them from elsewhere.
const MAX_PEERS: usize = 256;
/// Lease owners remembered (the newest kept): a fleet has a few replicas per bucket.
pub const MAX_REPLICAS: usize = 256;
/// A replica whose lease was last seen longer ago than this is no longer listed.
pub const REPLICA_SEEN_MS: u64 = 15 * 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Upstream,
    Parent,
}

/// The bucket's last answers (`[storage]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketHealth {
    pub last_ok_ms: Option<u64>,
    /// When, and `op: status` (`PutObject: timeout`): archway's own words, never a URL.
    pub last_error: Option<(u64, String)>,
    /// Its last answer was an error.
    pub failing: bool,
}

impl BucketHealth {
    /// Reachable when its last answer was not an error; `None` before any.
    pub fn reachable(&self) -> Option<bool> {
        (self.last_ok_ms.is_some() || self.last_error.is_some()).then_some(!self.failing)
    }
}

#[derive(Default)]
struct Inner {
    peers: BTreeMap<(Role, String), Health>,
    traffic: Traffic,
    top: TopImages,
    bucket: BucketHealth,
    /// Lease owners (`fleet.peer_url`s) and when one of their leases was last read.
    replicas: BTreeMap<String, u64>,
    leases_held: u64,
}

pub struct Board {
    clock: Clock,
    started: Instant,
    started_ms: u64,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board").finish_non_exhaustive()
    }
}

impl Default for Board {
    fn default() -> Self {
        Board::new(Clock::system())
    }
}

/// What the page reads, copied out under the lock.
#[derive(Debug, Clone, Default)]
pub struct BoardView {
    pub now_ms: u64,
    pub started_ms: u64,
    pub uptime_s: u64,
    pub upstreams: Vec<(String, Health)>,
    pub parents: Vec<(String, Health)>,
    pub since_start: Bytes,
    pub last_hour: Bytes,
    pub top: Top,
    pub bucket: BucketHealth,
    /// Other replicas seen lately, with when, newest first.
    pub replicas: Vec<(String, u64)>,
    pub leases_held: u64,
}

impl Board {
    pub fn new(clock: Clock) -> Board {
        Board {
            clock,
            started: Instant::now(),
            started_ms: clock.now_ms(),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn peer(&self, role: Role, name: &str, f: impl FnOnce(&mut Health, u64)) {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let key = (role, name.to_owned());
        if !inner.peers.contains_key(&key) && inner.peers.len() >= MAX_PEERS {
            return;
        }
        f(inner.peers.entry(key).or_default(), now);
    }

    /// Lists `name` before its first exchange.
    pub fn register(&self, role: Role, name: &str) {
        self.peer(role, name, |_, _| {});
    }

    pub fn exchanged(&self, role: Role, name: &str, failure: Option<&str>) {
        self.peer(role, name, |h, now| match failure {
            Some(wording) => h.failed(now, wording),
            None => h.ok(now),
        });
    }

    /// Replaces the last error's wording with a more precise one (the exchange's cause).
    pub fn error_detail(&self, role: Role, name: &str, wording: &str) {
        self.peer(role, name, |h, now| h.failed(now, wording));
    }

    pub fn ratelimit(&self, name: &str, remaining: i64) {
        self.peer(Role::Upstream, name, |h, now| {
            h.ratelimit = Some((remaining, now))
        });
    }

    pub fn stale_served(&self, upstream: &str) {
        self.peer(Role::Upstream, upstream, |h, now| {
            h.last_stale_ms = Some(now)
        });
    }

    pub fn served(&self, from_cache: bool, n: u64) {
        let now = self.clock.now_ms();
        self.lock().traffic.served(now, from_cache, n);
    }

    pub fn saved(&self, n: u64) {
        let now = self.clock.now_ms();
        self.lock().traffic.saved(now, n);
    }

    pub fn pulled(&self, image: &str) {
        let now = self.clock.now_ms();
        self.lock().top.pulled(now, image);
    }

    /// One bucket request and how it ended (`ok`, `not_found`, `precondition_failed`,
    /// `error`, `timeout`).
    pub fn bucket_op(&self, op: &'static str, status: &'static str) {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        match status {
            "error" | "timeout" => {
                inner.bucket.last_error = Some((now, format!("{op}: {status}")));
                inner.bucket.failing = true;
            }
            _ => {
                inner.bucket.last_ok_ms = Some(now);
                inner.bucket.failing = false;
            }
        }
    }

    /// A lease of `owner` read from the bucket.
    pub fn lease_seen(&self, owner: &str) {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        if !inner.replicas.contains_key(owner) && inner.replicas.len() >= MAX_REPLICAS {
            // Forget the longest unseen one.
            let oldest = inner
                .replicas
                .iter()
                .min_by_key(|(_, seen)| **seen)
                .map(|(o, _)| o.clone());
            if let Some(o) = oldest {
                inner.replicas.remove(&o);
            }
        }
        if owner.len() <= 512 {
            inner.replicas.insert(owner.to_owned(), now);
        }
    }

    pub fn lease_held(&self, held: bool) {
        let mut inner = self.lock();
        inner.leases_held = if held {
            inner.leases_held.saturating_add(1)
        } else {
            inner.leases_held.saturating_sub(1)
        };
    }

    pub fn view(&self, top: usize) -> BoardView {
        let now = self.clock.now_ms();
        let inner = self.lock();
        let of = |role: Role| {
            inner
                .peers
                .iter()
                .filter(|((r, _), _)| *r == role)
                .map(|((_, name), h)| (name.clone(), h.clone()))
                .collect()
        };
        let mut replicas: Vec<(String, u64)> = inner
            .replicas
            .iter()
            .filter(|(_, seen)| now.saturating_sub(**seen) <= REPLICA_SEEN_MS)
            .map(|(o, s)| (o.clone(), *s))
            .collect();
        replicas.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        BoardView {
            now_ms: now,
            started_ms: self.started_ms,
            uptime_s: self.started.elapsed().as_secs(),
            upstreams: of(Role::Upstream),
            parents: of(Role::Parent),
            since_start: inner.traffic.since_start(),
            last_hour: inner.traffic.last_hour(now),
            top: inner.top.top(now, top),
            bucket: inner.bucket.clone(),
            replicas,
            leases_held: inner.leases_held,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchanges_stale_answers_and_the_bucket_are_seen_in_the_view() {
        let b = Board::default();
        b.register(Role::Upstream, "hub");
        b.register(Role::Parent, "http://cluster:5000");
        b.exchanged(Role::Upstream, "hub", Some("HTTP 503 Service Unavailable"));
        b.stale_served("hub");
        b.ratelimit("hub", 42);
        b.bucket_op("GetObject", "ok");
        b.bucket_op("PutObject", "timeout");
        b.lease_seen("http://10.0.0.2:5000");
        b.lease_held(true);
        b.lease_held(true);
        b.lease_held(false);
        b.served(true, 30);
        b.served(false, 10);
        b.saved(30);
        b.pulled("hub/library/alpine:3.20");
        let v = b.view(10);
        assert_eq!(v.upstreams.len(), 1);
        let hub = &v.upstreams[0].1;
        assert_eq!(hub.state(), super::super::health::State::Failing);
        assert!(hub.stale_covering(v.now_ms));
        assert_eq!(hub.ratelimit.map(|r| r.0), Some(42));
        assert_eq!(v.parents[0].0, "http://cluster:5000");
        assert_eq!(v.bucket.reachable(), Some(false));
        assert_eq!(
            v.bucket.last_error.as_ref().map(|e| e.1.as_str()),
            Some("PutObject: timeout")
        );
        assert_eq!(v.replicas[0].0, "http://10.0.0.2:5000");
        assert_eq!(v.leases_held, 1);
        assert_eq!(v.since_start.served, 40);
        assert_eq!(v.last_hour.hit_ratio(), Some(0.75));
        assert_eq!(v.top.images, vec![("hub/library/alpine:3.20".into(), 1)]);
    }

    #[test]
    fn replicas_are_bounded() {
        let b = Board::default();
        for i in 0..(MAX_REPLICAS + 10) {
            b.lease_seen(&format!("http://10.0.{}.{}:5000", i / 256, i % 256));
        }
        assert_eq!(b.lock().replicas.len(), MAX_REPLICAS);
    }
}
