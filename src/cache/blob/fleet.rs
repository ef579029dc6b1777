//! One fill per fleet (`[fleet]`): after an L1 miss and a bucket miss, a fill takes the blob's
//! lease in the bucket and fills from upstream (renewing it), or — another replica holding a
//! live lease — streams that replica's fill through its peer endpoint, verified here like any
//! source. An expired lease is taken over. Any bucket error in the lease falls back to
//! upstream, uncoordinated (counted as `lease_error`).
//!
//! How the peer is reached is the caller's (`PeerSource`): the cache knows no HTTP.

use super::bucket_tier::BlobTier;
use super::source::{IncomingBlob, SourceError};
use crate::cache::bucket::{Bucket, HeldLease, LeaseState};
use crate::digest::Digest;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// What a peer answered for a blob.
pub enum PeerAnswer {
    /// Its fill in flight (or its committed copy), as it arrives.
    Blob(IncomingBlob),
    /// It has neither (its fill finished and left L1, or failed).
    NotThere,
}

pub type PeerFuture = Pin<Box<dyn Future<Output = Result<PeerAnswer, SourceError>> + Send>>;

/// Reaches another replica's peer endpoint.
pub trait PeerSource: Send + Sync {
    fn fetch(&self, owner: &str, digest: &Digest) -> PeerFuture;
}

/// This replica in the fleet.
pub struct Fleet {
    /// This replica's `peer_url`, named in the leases it takes.
    pub me: String,
    pub lease_ttl: Duration,
    pub peers: Arc<dyn PeerSource>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("me", &self.me)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

/// Where the fill reads from, as the lease decided.
pub(crate) enum FleetSource {
    /// From upstream: this replica holds the lease (`None`: the lease could not be had).
    Upstream(Option<HeldLease>),
    /// Another replica's fill.
    Peer(IncomingBlob),
    /// The bucket, which has the blob now (a fill elsewhere finished meanwhile).
    Bucket(IncomingBlob),
}

impl Fleet {
    /// Decides the source of a fill that missed L1 and the bucket. Waits for a live owner at
    /// most about two lease TTLs (by then a dead owner's lease has expired and is taken over);
    /// past that, upstream without the lease.
    pub(crate) async fn source(
        &self,
        bucket: &Arc<Bucket>,
        tier: &BlobTier,
        digest: &Digest,
    ) -> FleetSource {
        let observer = bucket.observer();
        let deadline = tokio::time::Instant::now() + self.lease_ttl.saturating_mul(2);
        let pause = (self.lease_ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            match bucket.claim_fill(digest, &self.me, self.lease_ttl).await {
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "fill lease unavailable; blob from upstream");
                    observer.fleet_fill("lease_error");
                    return FleetSource::Upstream(None);
                }
                Ok(LeaseState::Taken(lease)) => {
                    // An owner may have committed it and let go between our bucket miss and
                    // this claim: look once more before asking upstream.
                    if let Ok(Some(blob)) = tier.fetch(digest).await {
                        return FleetSource::Bucket(blob);
                    }
                    tracing::debug!(%digest, "fill lease taken");
                    observer.fleet_fill("owned");
                    return FleetSource::Upstream(Some(lease));
                }
                Ok(LeaseState::TakenOver(lease)) => {
                    tracing::info!(%digest, "expired fill lease taken over");
                    observer.fleet_fill("taken_over");
                    observer.lease_takeover();
                    return FleetSource::Upstream(Some(lease));
                }
                Ok(LeaseState::Live { owner }) => match self.peers.fetch(&owner, digest).await {
                    Ok(PeerAnswer::Blob(blob)) => {
                        tracing::debug!(%digest, %owner, "joined a peer's fill");
                        observer.fleet_fill("joined_peer");
                        return FleetSource::Peer(blob);
                    }
                    Ok(PeerAnswer::NotThere) => {
                        // Finished there: the bucket has it by now, or the lease is gone.
                        if let Ok(Some(blob)) = tier.fetch(digest).await {
                            return FleetSource::Bucket(blob);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%digest, %owner, error = %e, "fill owner unreachable; waiting for its lease");
                    }
                },
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                tracing::warn!(%digest, "no fill owner answered within two lease TTLs; blob from upstream");
                observer.fleet_fill("lease_error");
                return FleetSource::Upstream(None);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
        }
    }
}
