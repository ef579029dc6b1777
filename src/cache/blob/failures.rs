//! Downloads that failed lately, by digest: a burst of requests for a blob upstream serves wrong
//! (or not at all) makes one upstream request, not one each. Bad content is remembered for
//! `cache.negative_ttl`, a transient failure only briefly (2 s, or less if `negative_ttl` is).
//! Budgeted in bytes.

use super::source::FillError;
use crate::digest::Digest;
use std::time::{Duration, Instant};

/// How long a failure that may be transient (a stall, a reset, a 5xx) is remembered.
pub const TRANSIENT_FAILURE_TTL: Duration = Duration::from_secs(2);
/// Bytes of remembered failures.
const BUDGET: u64 = 4 << 20;
/// The longest any failure is kept, whatever it says.
const MAX_TTL: Duration = Duration::from_secs(3600);

pub(crate) struct RecentFailures {
    cache: moka::sync::Cache<Digest, (Instant, FillError)>,
    bad_content_ttl: Duration,
}

impl RecentFailures {
    pub(crate) fn new(bad_content_ttl: Duration) -> Self {
        RecentFailures {
            cache: moka::sync::Cache::builder()
                .weigher(|_: &Digest, (_, e): &(Instant, FillError)| {
                    u32::try_from(160 + e.to_string().len()).unwrap_or(u32::MAX)
                })
                .max_capacity(BUDGET)
                .time_to_live(MAX_TTL.min(bad_content_ttl.max(TRANSIENT_FAILURE_TTL)))
                .build(),
            bad_content_ttl,
        }
    }

    /// Remembers why a download of `digest` failed: bad content (`bad`) for the long TTL,
    /// anything else for the short one.
    pub(crate) fn remember(&self, digest: &Digest, error: FillError, bad: bool) {
        let ttl = if bad {
            self.bad_content_ttl
        } else {
            TRANSIENT_FAILURE_TTL.min(self.bad_content_ttl)
        };
        if !ttl.is_zero() {
            self.cache
                .insert(digest.clone(), (Instant::now() + ttl, error));
        }
    }

    /// The failure a new request for `digest` gets instead of another download, if any.
    pub(crate) fn get(&self, digest: &Digest) -> Option<FillError> {
        match self.cache.get(digest) {
            Some((until, e)) if until > Instant::now() => Some(e),
            Some(_) => {
                self.cache.invalidate(digest);
                None
            }
            None => None,
        }
    }
}
