//! One fill per fleet (`[fleet]`): after an L1 miss and a bucket miss, a fill takes the blob's
//! lease in the bucket and fills from upstream (renewing it), or — another replica holding a
//! live lease — streams that replica's fill through its peer endpoint, verified here like any
//! source. An expired lease is taken over. Any bucket error in the lease falls back to
//! upstream, uncoordinated (counted as `lease_error`).
//!
//! How the peer is reached is the caller's (`PeerSource`): the cache knows no HTTP.

use super::bucket_tier::BlobTier;
use super::source::{IncomingBlob, SourceError};
use crate::body::UpstreamBody;
use crate::cache::bucket::{Bucket, HeldLease};
use crate::cache::lease_turn::{self, OnLive, Taken, Why};
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

/// One range of a peer's blob (`PeerSource::fetch_range`): exactly its bytes, or `None`.
pub type PeerRangeFuture = Pin<Box<dyn Future<Output = Option<UpstreamBody>> + Send>>;

/// Reaches another replica's peer endpoint.
pub trait PeerSource: Send + Sync {
    /// Why `owner` may not be reached (the egress policy), if it may not.
    fn refuses(&self, _owner: &str) -> Option<String> {
        None
    }
    fn fetch(&self, owner: &str, digest: &Digest) -> PeerFuture;
    /// The bytes `start..=end` of `owner`'s blob `digest` (of `size` bytes), if it has every
    /// one of them now: a cold range (`cache.cold_ranges = "relay"`) of a fill streaming
    /// `owner`'s. `None` for anything else (the owner has not got them yet, answered another
    /// range, did not answer): the caller asks upstream. Never waits for the owner's fill.
    fn fetch_range(
        &self,
        _owner: &str,
        _digest: &Digest,
        _range: (u64, u64),
        _size: u64,
    ) -> PeerRangeFuture {
        Box::pin(std::future::ready(None))
    }
}

/// Owners whose fill of a blob failed here (wrong bytes, a broken body, no answer): not
/// joined again for that blob; its lease is taken over instead.
const MAX_FAILED_OWNERS: u64 = 4096;
/// How long such a failure is remembered: long past any lease a live owner would still hold.
const FAILED_OWNER_MEMORY: Duration = Duration::from_secs(600);

/// Claims per fill: each round that finds a live owner tries it once; an owner that fails is
/// taken over in the next.
const MAX_ROUNDS: usize = 4;

/// This replica in the fleet.
pub struct Fleet {
    /// This replica's `peer_url`, named in the leases it takes.
    pub me: String,
    pub lease_ttl: Duration,
    pub peers: Arc<dyn PeerSource>,
    /// (digest, owner) pairs whose peer fill failed here, bounded in count and time.
    failed: moka::sync::Cache<(Digest, String), ()>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("me", &self.me)
            .field("lease_ttl", &self.lease_ttl)
            .field("failed_owners", &self.failed.entry_count())
            .finish_non_exhaustive()
    }
}

/// Where the fill reads from, as the lease decided.
pub(crate) enum FleetSource {
    /// From upstream: this replica holds the lease (`None`: the lease could not be had).
    Upstream(Option<HeldLease>),
    /// Another replica's fill, from `owner`.
    Peer { blob: IncomingBlob, owner: String },
    /// The bucket, which has the blob now (a fill elsewhere finished meanwhile).
    Bucket(IncomingBlob),
}

impl Fleet {
    pub fn new(me: String, lease_ttl: Duration, peers: Arc<dyn PeerSource>) -> Self {
        Fleet {
            me,
            lease_ttl,
            peers,
            failed: moka::sync::Cache::builder()
                .max_capacity(MAX_FAILED_OWNERS)
                .time_to_live(FAILED_OWNER_MEMORY)
                .build(),
        }
    }

    /// `owner`'s fill of `digest` failed here (its bytes did not verify, its body broke off, or
    /// it did not answer): the next fill of `digest` takes the lease over instead of joining
    /// it again. So a client sees at most one broken body from a bad owner.
    pub(crate) fn owner_failed(&self, digest: &Digest, owner: &str) {
        tracing::warn!(%digest, %owner, "a peer's fill failed here; its lease is taken over next time");
        self.failed.insert((digest.clone(), owner.to_owned()), ());
    }

    /// A cold range of `digest` from `owner`, whose fill this replica's streams (see
    /// `PeerSource::fetch_range`); `None` at once if `owner` is not to be asked.
    pub(crate) fn range_from(
        &self,
        owner: &str,
        digest: &Digest,
        range: (u64, u64),
        size: u64,
    ) -> Option<PeerRangeFuture> {
        if let Some(why) = self.refuses(digest, owner) {
            tracing::debug!(%digest, %owner, why, "cold range not asked of the fill's owner");
            return None;
        }
        Some(self.peers.fetch_range(owner, digest, range, size))
    }

    /// Why a live lease's `owner` must not be joined for `digest`.
    fn refuses(&self, digest: &Digest, owner: &str) -> Option<String> {
        if self
            .failed
            .contains_key(&(digest.clone(), owner.to_owned()))
        {
            return Some("its fill of this blob failed here before".into());
        }
        self.peers.refuses(owner)
    }

    /// Decides the source of a fill that missed L1 and the bucket. A live owner that does not
    /// answer, or has nothing, is not waited for: it is remembered as failed and its lease taken
    /// over in the next round. Past `MAX_ROUNDS` (owners changing under the claim), upstream
    /// without the lease. The loop is `lease_turn`'s, shared with the small fetches' leases.
    pub(crate) async fn source(
        &self,
        bucket: &Arc<Bucket>,
        tier: &BlobTier,
        digest: &Digest,
    ) -> FleetSource {
        let key = bucket.keys().fill_lease(digest);
        let refuse = |owner: &str| self.refuses(digest, owner);
        let claim = || bucket.claim_checked(key.clone(), &self.me, self.lease_ttl, &refuse);
        let look = || async {
            tier.fetch(digest)
                .await
                .ok()
                .flatten()
                .map(FleetSource::Bucket)
        };
        let join = |owner: String| async move {
            match self.peers.fetch(&owner, digest).await {
                Ok(PeerAnswer::Blob(blob)) => {
                    tracing::debug!(%digest, %owner, "joined a peer's fill");
                    return Some(FleetSource::Peer { blob, owner });
                }
                // Finished there: the bucket has it by now, or the lease is gone.
                Ok(PeerAnswer::NotThere) => {
                    if let Ok(Some(blob)) = tier.fetch(digest).await {
                        return Some(FleetSource::Bucket(blob));
                    }
                }
                Err(e) => tracing::debug!(%digest, %owner, error = %e, "fill owner unreachable"),
            }
            // An owner that holds the lease but neither has the blob, fills it nor answers is
            // not waited for: its lease is taken over next.
            self.owner_failed(digest, &owner);
            None
        };
        let on_live = OnLive::Join { rounds: MAX_ROUNDS };
        let observer = bucket.observer();
        match lease_turn::take(on_live, &key, claim, look, join).await {
            Taken::Ready(found, _) => {
                if matches!(found, FleetSource::Peer { .. }) {
                    observer.fleet_fill("joined_peer");
                }
                found
            }
            Taken::Fetch(lease, why) => {
                match why {
                    Why::TakenOver => {
                        observer.fleet_fill("taken_over");
                        observer.lease_takeover();
                    }
                    Why::Owned => observer.fleet_fill("owned"),
                    _ => observer.fleet_fill("lease_error"),
                }
                FleetSource::Upstream(lease)
            }
        }
    }
}
