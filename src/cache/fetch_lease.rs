//! One upstream fetch per fleet for manifests by digest and for tag revalidations (`[fleet]`).
//!
//! Both are small, so a replica that finds another's live lease does not stream from it: it
//! waits for the owner's answer to appear in the bucket (the owner writes it there before it
//! lets go of the lease) and polls with a growing pause. The lease is the same conditional
//! object as a blob's fill lease, at its own key (`Keys::manifest_lease`, `Keys::tag_lease`).
//! An expired lease (owner dead) is taken over; a bucket that fails the lease, or an owner
//! that takes longer than two lease TTLs, leaves the replica to ask upstream itself.

use super::bucket::{Bucket, HeldLease, LeaseState};
use object_store::path::Path;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The first pause between looks into the bucket while another replica fetches.
const FIRST_PAUSE: Duration = Duration::from_millis(25);

/// This replica's part in the fleet's leases for small fetches.
#[derive(Clone)]
pub struct FetchLeases {
    bucket: Arc<Bucket>,
    /// This replica's `peer_url`, named in the leases it takes.
    me: String,
    ttl: Duration,
}

impl std::fmt::Debug for FetchLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchLeases")
            .field("me", &self.me)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Whose turn it is.
pub enum Turn<T> {
    /// This replica asks upstream: holding the lease (`None`: it could not be had), which it
    /// keeps until the answer is in the bucket.
    Fetch(Option<HeldLease>),
    /// Another replica's answer, found in the bucket.
    Ready(T),
}

impl FetchLeases {
    pub fn new(bucket: Arc<Bucket>, me: String, ttl: Duration) -> Self {
        FetchLeases { bucket, me, ttl }
    }

    pub fn bucket(&self) -> &Arc<Bucket> {
        &self.bucket
    }

    /// Takes the lease at `key`, or waits while another replica holds it until `ready` finds
    /// the answer (in the bucket). `what` names the fetch in the metrics (`manifest`, `tag`).
    pub async fn turn<T, F, Fut>(&self, key: Path, what: &'static str, mut ready: F) -> Turn<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let observer = self.bucket.observer().clone();
        let deadline = tokio::time::Instant::now() + self.ttl.saturating_mul(2);
        let most = (self.ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut pause = FIRST_PAUSE;
        loop {
            match self.bucket.claim(key.clone(), &self.me, self.ttl).await {
                Err(e) => {
                    tracing::warn!(lease = %key, error = %e, "fetch lease unavailable; asking upstream");
                    observer.fleet_fetch(what, "lease_error");
                    return Turn::Fetch(None);
                }
                Ok(LeaseState::Taken(lease)) => {
                    // An owner may have answered and let go between the caller's miss and
                    // this claim: look once more before asking upstream.
                    if let Some(found) = ready().await {
                        observer.fleet_fetch(what, "waited");
                        return Turn::Ready(found);
                    }
                    observer.fleet_fetch(what, "owned");
                    return Turn::Fetch(Some(lease));
                }
                Ok(LeaseState::TakenOver(lease)) => {
                    tracing::info!(lease = %key, "expired fetch lease taken over");
                    observer.fleet_fetch(what, "taken_over");
                    observer.lease_takeover();
                    return Turn::Fetch(Some(lease));
                }
                Ok(LeaseState::Live { owner }) => {
                    tracing::debug!(lease = %key, %owner, "another replica fetches; waiting for its answer");
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                tracing::warn!(lease = %key, "no answer within two lease TTLs; asking upstream");
                observer.fleet_fetch(what, "lease_error");
                return Turn::Fetch(None);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(most);
            if let Some(found) = ready().await {
                observer.fleet_fetch(what, "waited");
                return Turn::Ready(found);
            }
        }
    }
}
