//! Records in the bucket that are not content-addressed (tag records, leases): anyone who can
//! write to the bucket can write one, so each is sealed with the fleet's record key
//! (`record_key::RecordKey`, bound to the object's key) and opened on reading. A record that fails
//! its seal is not believed: the caller treats it as absent (a tag) or damaged (a lease). Each
//! rejection is counted (`StorageObserver::record_rejected`) and logged once per object and
//! reason (a bounded memo), not once per read.
//!
//! Times in records are checked against this replica's clock (`Clock`) with `max_clock_skew`
//! of slack: a confirmation or an expiry further ahead is not believed.

use super::{Bucket, BucketError};
use crate::clock::Clock;
use crate::record_key::{RecordKey, SealError};
use bytes::Bytes;
use object_store::path::Path;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

/// The record key's purpose (see `RecordKey::derive`).
pub const RECORD_PURPOSE: &str = "bucket records";

/// Rejections remembered as logged; past this the memo starts over (a flood of forged records
/// is then logged again, once per this many).
const MAX_LOGGED: usize = 4096;

/// What the bucket needs to judge its records.
pub(super) struct Trust {
    key: Option<RecordKey>,
    clock: Clock,
    skew: Duration,
    logged: Mutex<HashSet<u64>>,
}

impl Trust {
    pub(super) fn none() -> Self {
        Trust {
            key: None,
            clock: Clock::system(),
            skew: crate::config::DEFAULT_MAX_CLOCK_SKEW,
            logged: Mutex::new(HashSet::new()),
        }
    }
}

/// A record read back: its body if it passed its seal (`None`: it did not, already counted and
/// logged), and the ETag a conditional write names.
#[derive(Debug)]
pub struct SealedRead {
    pub body: Option<Bytes>,
    pub e_tag: Option<String>,
}

impl Bucket {
    /// With the fleet's record key (from the fleet secret), this replica's clock and the clock
    /// skew believed. Without a key the bucket holds no records of archway's: no tag records
    /// are shared and no lease can be taken.
    pub fn with_records(mut self, key: RecordKey, clock: Clock, skew: Duration) -> Self {
        self.trust = Trust {
            key: Some(key),
            clock,
            skew,
            logged: Mutex::new(HashSet::new()),
        };
        self
    }

    /// Whether records can be sealed and opened (`[fleet]`'s secret is known).
    pub fn has_record_key(&self) -> bool {
        self.trust.key.is_some()
    }

    pub fn clock(&self) -> Clock {
        self.trust.clock
    }

    /// Now by this replica's clock, in Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.trust.clock.now_ms()
    }

    /// `fleet.max_clock_skew` in milliseconds.
    pub fn skew_ms(&self) -> u64 {
        u64::try_from(self.trust.skew.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a time read back (Unix ms) is no further ahead of now than the skew allows.
    pub fn believable_time(&self, at_ms: u64) -> bool {
        at_ms <= self.now_ms().saturating_add(self.skew_ms())
    }

    /// `body` sealed for `key`; an error without the record key.
    pub fn seal(&self, key: &Path, body: &[u8]) -> Result<Bytes, BucketError> {
        let record_key = self.trust.key.as_ref().ok_or(BucketError::Failed {
            op: "seal",
            message: "no fleet record key: records need [fleet]".into(),
        })?;
        Ok(record_key.seal(key.as_ref(), body).into())
    }

    /// The record at `key` (at most `max` bytes), opened: `kind` (`tag`, `lease`) names it in
    /// the metrics and the log when it fails its seal.
    pub async fn get_record(
        &self,
        key: &Path,
        max: u64,
        kind: &'static str,
    ) -> Result<Option<SealedRead>, BucketError> {
        let got = match self.get_versioned(key, max).await {
            Ok(got) => got,
            // Too large to be a record of ours: counted, and the caller's to handle (a sweep
            // deletes it; a claim cannot take it over without its ETag).
            Err(BucketError::Damaged { key: k, why }) => {
                self.reject(kind, "unreadable", key, &why);
                return Err(BucketError::Damaged { key: k, why });
            }
            Err(e) => return Err(e),
        };
        let Some((bytes, _, e_tag)) = got else {
            return Ok(None);
        };
        let opened = match &self.trust.key {
            None => Err(SealError::NotSealed),
            Some(record_key) => record_key
                .open(key.as_ref(), &bytes)
                .map(|body| bytes.slice_ref(body)),
        };
        let body = match opened {
            Ok(body) => Some(body),
            Err(e) => {
                let reason = match e {
                    SealError::NotSealed => "unsealed",
                    SealError::BadSeal => "bad_seal",
                };
                self.reject(kind, reason, key, &e.to_string());
                None
            }
        };
        Ok(Some(SealedRead { body, e_tag }))
    }

    /// Counts a record (or request) not believed, and logs it once per object and reason while
    /// the memo remembers it.
    pub fn reject(&self, kind: &'static str, reason: &'static str, key: &Path, why: &str) {
        self.observer.record_rejected(kind, reason);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (kind, reason, key.as_ref()).hash(&mut h);
        let first = self.trust.logged.lock().is_ok_and(|mut logged| {
            if logged.len() >= MAX_LOGGED {
                logged.clear();
            }
            logged.insert(h.finish())
        });
        if first {
            tracing::warn!(object = %key, kind, reason, why, "record in storage not believed; ignored (logged once)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::bucket::StorageObserver;
    use object_store::memory::InMemory;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[derive(Default)]
    struct Rejections(AtomicU64);

    impl StorageObserver for Rejections {
        fn operation(&self, _: &'static str, _: &'static str, _: Duration) {}
        fn blob_fill(&self, _: &'static str) {}
        fn bypassed(&self, _: &'static str) {}
        fn record_rejected(&self, _: &'static str, _: &'static str) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    // A forged record read a thousand times must not write a thousand log lines: every read
    // is counted, each (object, kind, reason) is logged once.
    #[test]
    fn every_rejection_is_counted_and_each_object_and_reason_logged_once() {
        let seen = Arc::new(Rejections::default());
        let bucket = Bucket::over(
            Arc::new(InMemory::new()),
            "p/",
            Duration::from_secs(5),
            5 << 20,
            seen.clone(),
        );
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let forged = Path::from("p/tags/hub/library/alpine/latest");
            let other = Path::from("p/tags/hub/library/alpine/3.20");
            for _ in 0..1000 {
                bucket.reject("tag", "unsealed", &forged, "no seal");
            }
            bucket.reject("tag", "future", &forged, "ahead");
            bucket.reject("tag", "unsealed", &other, "no seal");
            bucket.reject("tag", "unsealed", &other, "no seal");
        });
        assert_eq!(seen.0.load(Ordering::Relaxed), 1003);
        let text = String::from_utf8_lossy(&lines.0.lock().unwrap_or_else(|p| p.into_inner()))
            .into_owned();
        let logged: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("record in storage not believed"))
            .collect();
        assert_eq!(logged.len(), 3, "{text}");
        assert_eq!(
            logged
                .iter()
                .filter(|l| l.contains("alpine/latest") && l.contains("unsealed"))
                .count(),
            1
        );
    }
}
