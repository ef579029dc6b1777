//! One upstream fetch per fleet for manifests by digest and for tag revalidations (`[fleet]`).
//!
//! Both are small, so a replica that finds another's live lease does not stream from it: it
//! waits for the owner's answer to appear in the bucket (the owner writes it there before it
//! lets go of the lease) and polls with a growing pause. The lease is the same conditional
//! object as a blob's fill lease, at its own key (`Keys::manifest_lease`, `Keys::tag_lease`).
//! An expired lease (owner dead) is taken over; a bucket that fails the lease, or an owner
//! that takes longer than two lease TTLs, leaves the replica to ask upstream itself. The loop
//! is `lease_turn`'s, shared with the blobs' fill leases.

use super::bucket::{Bucket, HeldLease};
use super::lease_turn::{self, OnLive, Taken, Why};
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
    pub async fn turn<T, F, Fut>(&self, key: Path, what: &'static str, ready: F) -> Turn<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let on_live = OnLive::Wait {
            first: FIRST_PAUSE,
            most: (self.ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1)),
            within: self.ttl.saturating_mul(2),
        };
        let claim = || self.bucket.claim(key.clone(), &self.me, self.ttl);
        // Small answers are not streamed from their owner: they are waited for in the bucket.
        let join = |_: String| async { None };
        let taken = lease_turn::take(on_live, &key, claim, ready, join).await;
        let observer = self.bucket.observer();
        let (turn, why) = match taken {
            Taken::Fetch(lease, why) => (Turn::Fetch(lease), why),
            Taken::Ready(found, why) => (Turn::Ready(found), why),
        };
        let outcome = match why {
            Why::Owned => "owned",
            Why::TakenOver => {
                observer.lease_takeover();
                "taken_over"
            }
            Why::Unleased(_) => "lease_error",
            Why::FoundAfterClaim | Why::FoundAfterWait | Why::Joined => "waited",
        };
        observer.fleet_fetch(what, outcome);
        turn
    }
}
