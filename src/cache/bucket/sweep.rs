//! Sweeping stale leases (`[fleet]`): a lease whose owner died is taken over when somebody
//! wants that blob, manifest or tag again; one nobody wants again would stay forever. Every
//! `fleet.sweep_interval`, one replica at a time (holding the sweep's own lease at
//! `<prefix>sweep`) lists `<prefix>fills/` and deletes each lease that is both expired by its
//! body and unwritten for three TTLs (a live owner rewrites it every third of a TTL).
//!
//! A takeover racing the delete loses its lease (its renewal then fails its condition and it
//! stops renewing); the fill goes on, and at worst another replica fills the same thing once
//! more. Content addressing keeps that harmless.

use super::lease::{LeaseRecord, MAX_LEASE_BYTES};
use super::{Bucket, BucketError, LeaseState};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// The most leases one sweep looks at (the rest wait for the next round).
const MAX_LISTED: usize = 10_000;

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Leases looked at.
    pub listed: usize,
    /// Stale leases deleted.
    pub deleted: usize,
}

impl Bucket {
    /// Deletes the stale leases under `<prefix>fills/` (see the module doc): expired (or
    /// expiring further ahead than a TTL plus the clock skew: not believed), and last written
    /// more than `3 × ttl` ago. A body that is unreadable or fails its seal counts as expired.
    pub async fn sweep_leases(&self, ttl: Duration) -> Result<Swept, BucketError> {
        let prefix = self.keys().leases();
        let stale_after_ms = i64::try_from(ttl.saturating_mul(3).as_millis()).unwrap_or(i64::MAX);
        let listing = async {
            let mut out = Vec::new();
            let mut objects = self.store.list(Some(&prefix));
            while let Some(meta) = objects.next().await {
                out.push(meta?);
                if out.len() >= MAX_LISTED {
                    break;
                }
            }
            Ok(out)
        };
        let listed = self
            .timed("ListObjects", self.s3_timeout.saturating_mul(6), listing)
            .await?;
        let mut swept = Swept {
            listed: listed.len(),
            deleted: 0,
        };
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        // The listing's times are the bucket's; judged by this replica's clock.
        let now = i64::try_from(self.now_ms()).unwrap_or(i64::MAX);
        for meta in listed {
            let written = meta.last_modified.timestamp_millis();
            if now.saturating_sub(written) <= stale_after_ms {
                continue;
            }
            let expired = match self
                .get_record(&meta.location, MAX_LEASE_BYTES, "lease")
                .await
            {
                Ok(Some(read)) => read
                    .body
                    .as_deref()
                    .and_then(LeaseRecord::parse)
                    .is_none_or(|r| r.is_stale(self.now_ms(), ttl_ms, self.skew_ms())),
                Ok(None) => continue,
                // Too long to be a lease of ours.
                Err(BucketError::Damaged { .. }) => true,
                Err(e) => return Err(e),
            };
            if expired {
                self.delete(&meta.location).await?;
                tracing::info!(lease = %meta.location, "stale lease swept");
                swept.deleted += 1;
            }
        }
        Ok(swept)
    }

    /// Sweeps every `interval` for as long as the bucket lives, one replica of the fleet at a
    /// time: a replica that finds the sweep's lease held skips the round.
    pub fn start_sweeping(
        self: &Arc<Self>,
        me: String,
        ttl: Duration,
        interval: Duration,
        orphaned_upload_age: Duration,
    ) {
        let bucket = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(bucket) = bucket.upgrade() else {
                    return;
                };
                let key = bucket.keys().sweep_lease();
                let _held = match bucket.claim(key, &me, ttl).await {
                    Ok(LeaseState::Taken(held) | LeaseState::TakenOver(held)) => held,
                    Ok(LeaseState::Live { .. }) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot take the sweep lease; next round");
                        continue;
                    }
                };
                match bucket.sweep_leases(ttl).await {
                    Ok(swept) => {
                        bucket.observer().leases_swept(swept.deleted as u64);
                        tracing::debug!(
                            listed = swept.listed,
                            deleted = swept.deleted,
                            "lease sweep done"
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "lease sweep failed; next round"),
                }
                match bucket.sweep_uploads(orphaned_upload_age).await {
                    Ok(n) => bucket.observer().uploads_aborted(n as u64),
                    Err(e) => {
                        tracing::warn!(error = %e, "multipart upload sweep failed; next round")
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::bucket::{now_ms, NoObserver};
    use crate::digest::Digest;
    use object_store::memory::InMemory;
    use object_store::PutMode;

    #[tokio::test]
    async fn only_leases_expired_and_unwritten_for_three_ttls_are_swept() {
        let b = Arc::new(
            Bucket::over(
                Arc::new(InMemory::new()),
                "p/",
                Duration::from_secs(5),
                5 << 20,
                Arc::new(NoObserver),
            )
            .with_records(
                crate::record_key::RecordKey::derive(b"s", "bucket records"),
                crate::clock::Clock::system(),
                Duration::from_secs(5),
            ),
        );
        let plant = |name: &[u8], expires_at_ms: u64| {
            let key = b.keys().fill_lease(&Digest::sha256_of(name));
            let body = LeaseRecord {
                owner: "http://a".into(),
                expires_at_ms,
            };
            let b = b.clone();
            async move {
                let sealed = b.seal(&key, &body.to_json()).unwrap();
                b.put_conditional(&key, sealed, PutMode::Create)
                    .await
                    .unwrap();
                key
            }
        };
        let dead = plant(b"dead", now_ms().saturating_sub(1)).await;
        let live = plant(b"live", now_ms() + 2_000).await;
        // Issue 18: a lease that claims to hold for years is not believed.
        let forever = plant(b"forever", u64::MAX).await;
        let blob = b.keys().blob(&Digest::sha256_of(b"blob"));
        b.put(&blob, bytes::Bytes::from_static(b"blob"), None)
            .await
            .unwrap();
        // Written just now: nothing is stale yet.
        let ttl = Duration::from_millis(100);
        assert_eq!(b.sweep_leases(ttl).await.unwrap().deleted, 0);
        tokio::time::sleep(Duration::from_millis(350)).await;
        let swept = b.sweep_leases(ttl).await.unwrap();
        assert_eq!(
            swept,
            Swept {
                listed: 3,
                deleted: 2
            }
        );
        assert!(!b.exists(&dead).await.unwrap());
        assert!(!b.exists(&forever).await.unwrap());
        assert!(
            b.exists(&live).await.unwrap(),
            "a lease not yet expired stays"
        );
        assert!(b.exists(&blob).await.unwrap(), "only leases are swept");
    }
}
