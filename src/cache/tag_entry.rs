//! What a tag points at, and when upstream last confirmed it: the value the tag store keeps (on
//! disk, in memory, in the bucket's record) under a `TagKey`.

use crate::digest::Digest;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagEntry {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// Unix milliseconds of the last upstream confirmation.
    pub validated_at_ms: u64,
}

impl TagEntry {
    pub fn age(&self, now: SystemTime) -> Duration {
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Duration::from_millis(now_ms.saturating_sub(self.validated_at_ms))
    }
}
