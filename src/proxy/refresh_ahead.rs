//! Refresh-ahead (`cache.refresh_ahead`): a tag answered within its TTL is revalidated in the
//! background shortly before it expires, so the client that comes after the TTL does not wait
//! for the HEAD. The revalidation itself is `Manifests::revalidate_ahead` (the same refresh lock,
//! fleet lease and HEAD as an expired request's); this holds what bounds it: one scheduled
//! refresh per tag, a cap on scheduled tags, and permits for the ones running.

use crate::cache::tag_store::TagKey;
use crate::config::CacheConfig;
use crate::metrics::Metrics;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Tags with a shorter TTL are not refreshed ahead: the 1 s minimum window would be most of it.
pub(crate) const MIN_TTL: Duration = Duration::from_secs(2);
/// The window when `cache.refresh_ahead_window` is unset: a tenth of the TTL, at least this.
const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Tags waiting for their refresh (a sleeping task each, a key in memory): past this many, a
/// tag is revalidated on expiry as without refresh-ahead. Clients name tags, so this is bounded.
const MAX_SCHEDULED: usize = 65_536;

pub(crate) struct RefreshAhead {
    window: Option<Duration>,
    permits: Arc<Semaphore>,
    scheduled: Arc<Mutex<HashSet<TagKey>>>,
    metrics: Arc<Metrics>,
}

/// A tag's place among the scheduled: its key leaves the set when this is dropped, however the
/// task ends (done, cancelled by the runtime's shutdown, or panicked).
pub(crate) struct Slot {
    key: TagKey,
    scheduled: Arc<Mutex<HashSet<TagKey>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.scheduled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// A running refresh: its permit and its part of the in-flight gauge.
pub(crate) struct Running {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.metrics.refresh_ahead_running(false);
    }
}

impl RefreshAhead {
    /// `None` when `cache.refresh_ahead` is off.
    pub(crate) fn new(cache: &CacheConfig, metrics: Arc<Metrics>) -> Option<Self> {
        if !cache.refresh_ahead {
            return None;
        }
        let permits = usize::try_from(cache.refresh_ahead_concurrency.max(1)).unwrap_or(1);
        Some(RefreshAhead {
            window: cache.refresh_ahead_window,
            permits: Arc::new(Semaphore::new(permits)),
            scheduled: Arc::default(),
            metrics,
        })
    }

    /// How long before expiry a tag with this TTL is refreshed; `None`: not refreshed ahead.
    pub(crate) fn window(&self, ttl: Duration) -> Option<Duration> {
        if ttl < MIN_TTL {
            return None;
        }
        let w = self.window.unwrap_or((ttl / 10).max(MIN_WINDOW));
        // More than half the TTL would revalidate a hot tag more than twice per TTL.
        Some(w.min(ttl / 2))
    }

    /// Whether `key` has a refresh scheduled or running (cheap: the hot path asks first).
    pub(crate) fn is_scheduled(&self, key: &TagKey) -> bool {
        self.scheduled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(key)
    }

    /// The tag's slot, unless it has one already (`None`, nothing counted) or too many tags
    /// are scheduled (`None`, counted as `skipped_busy`).
    pub(crate) fn slot(&self, key: &TagKey) -> Option<Slot> {
        let mut scheduled = self
            .scheduled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if scheduled.contains(key) {
            return None;
        }
        if scheduled.len() >= MAX_SCHEDULED {
            drop(scheduled);
            self.metrics.refresh_ahead("skipped_busy");
            return None;
        }
        scheduled.insert(key.clone());
        Some(Slot {
            key: key.clone(),
            scheduled: self.scheduled.clone(),
        })
    }

    /// A permit to run now, or `None` (counted as `skipped_busy`): the tag is then revalidated
    /// on expiry by the client that asks, as without refresh-ahead.
    pub(crate) fn start(&self) -> Option<Running> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                self.metrics.refresh_ahead_running(true);
                Some(Running {
                    _permit: permit,
                    metrics: self.metrics.clone(),
                })
            }
            Err(_) => {
                self.metrics.refresh_ahead("skipped_busy");
                None
            }
        }
    }

    pub(crate) fn ended(&self, outcome: &'static str) {
        self.metrics.refresh_ahead(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ahead(window: Option<Duration>, concurrency: u32) -> RefreshAhead {
        let cache = CacheConfig {
            refresh_ahead_window: window,
            refresh_ahead_concurrency: concurrency,
            ..CacheConfig::default()
        };
        RefreshAhead::new(&cache, Arc::new(Metrics::new())).unwrap()
    }

    fn key(tag: &str) -> TagKey {
        TagKey {
            upstream: "u".into(),
            repository: "r".into(),
            tag: tag.into(),
        }
    }

    #[test]
    fn off_means_none() {
        let cache = CacheConfig {
            refresh_ahead: false,
            ..CacheConfig::default()
        };
        assert!(RefreshAhead::new(&cache, Arc::new(Metrics::new())).is_none());
    }

    #[test]
    fn the_window_is_a_tenth_at_least_a_second_at_most_half() {
        let a = ahead(None, 4);
        let s = Duration::from_secs;
        assert_eq!(a.window(s(300)), Some(s(30)));
        assert_eq!(a.window(s(5)), Some(s(1)));
        assert_eq!(a.window(s(2)), Some(s(1)));
        assert_eq!(a.window(Duration::from_millis(1999)), None);
        let a = ahead(Some(s(20)), 4);
        assert_eq!(a.window(s(300)), Some(s(20)));
        assert_eq!(a.window(s(10)), Some(s(5)));
    }

    #[test]
    fn one_slot_per_tag_and_bounded_permits() {
        let a = ahead(None, 1);
        let slot = a.slot(&key("a")).unwrap();
        assert!(a.is_scheduled(&key("a")));
        assert!(a.slot(&key("a")).is_none(), "one per tag");
        assert!(a.slot(&key("b")).is_some());
        drop(slot);
        assert!(!a.is_scheduled(&key("a")));
        let running = a.start().unwrap();
        assert!(a.start().is_none(), "one at a time");
        drop(running);
        assert!(a.start().is_some());
    }
}
