//! Whose turn it is to ask upstream, in a fleet (`[fleet]`): the one loop behind a blob's fill
//! lease (`blob/fleet.rs`) and the leases of the small fetches, manifests by digest and tag
//! revalidations (`fetch_lease.rs`).
//!
//! Each round claims the lease at one key in the bucket:
//! - no lease there: it is this replica's; it looks in the bucket once more (an owner may have
//!   answered and let go between the caller's miss and the claim), then asks upstream;
//! - an expired lease (its owner stopped renewing it): taken over, and upstream asked;
//! - another replica's live lease: a blob *joins* it (streams the owner's fill from its peer
//!   endpoint, once; an owner that fails is refused at the next claim, so its lease is taken
//!   over), a small fetch *waits* for the owner's answer to appear in the bucket, looking with
//!   a growing pause;
//! - a bucket that fails the claim, or owners that never deliver (past the rounds, or the
//!   deadline), leave the replica to ask upstream without the lease.
//!
//! [`Turn::decide`] is that decision, pure: the claim and the time in, what to do out.
//! [`take`] drives it against the bucket with the caller's claim, look and join.

use super::bucket::{BucketError, HeldLease, LeaseState};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// What a replica does with another replica's live lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLive {
    /// Join the owner's fetch, in at most `rounds` claims.
    Join { rounds: usize },
    /// Wait for the owner's answer in the bucket, pausing `first`, then twice as long each
    /// time up to `most`, until `within` has passed since the first claim.
    Wait {
        first: Duration,
        most: Duration,
        within: Duration,
    },
}

/// One claim's result, as the decision sees it (`L`: the lease now held).
#[derive(Debug, PartialEq, Eq)]
pub enum Claim<L> {
    /// The bucket failed the claim.
    Failed,
    Taken(L),
    TakenOver(L),
    Live {
        owner: String,
    },
}

impl From<Result<LeaseState, BucketError>> for Claim<HeldLease> {
    fn from(r: Result<LeaseState, BucketError>) -> Self {
        match r {
            Err(_) => Claim::Failed,
            Ok(LeaseState::Taken(l)) => Claim::Taken(l),
            Ok(LeaseState::TakenOver(l)) => Claim::TakenOver(l),
            Ok(LeaseState::Live { owner }) => Claim::Live { owner },
        }
    }
}

/// What to do after a claim.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<L> {
    /// Look in the bucket once; not there: ask upstream holding the lease.
    LookThenFetch(L),
    /// Ask upstream holding the lease, taken over from a dead owner.
    FetchTakenOver(L),
    /// Ask upstream without the lease.
    FetchUnleased(Unleased),
    /// Join `owner`'s fetch; if that fails, `then`.
    Join { owner: String, then: AfterJoin },
    /// Pause this long, look in the bucket, then claim again.
    Wait(Duration),
}

/// Why upstream is asked without the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unleased {
    /// The bucket failed the claim.
    LeaseError,
    /// Owners held the lease past the rounds or the deadline without delivering.
    GaveUp,
}

/// After a join that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterJoin {
    ClaimAgain,
    /// The last round: ask upstream without the lease.
    GiveUp,
}

/// One replica's turn at one lease: the pure decision.
#[derive(Debug)]
pub struct Turn {
    on_live: OnLive,
    claims: usize,
    pause: Duration,
    started: Instant,
}

impl Turn {
    pub fn new(on_live: OnLive, now: Instant) -> Self {
        let pause = match on_live {
            OnLive::Wait { first, .. } => first,
            OnLive::Join { .. } => Duration::ZERO,
        };
        Turn {
            on_live,
            claims: 0,
            pause,
            started: now,
        }
    }

    /// What to do with this round's `claim`, made at `now`.
    pub fn decide<L>(&mut self, claim: Claim<L>, now: Instant) -> Next<L> {
        self.claims += 1;
        let owner = match claim {
            Claim::Failed => return Next::FetchUnleased(Unleased::LeaseError),
            Claim::Taken(lease) => return Next::LookThenFetch(lease),
            Claim::TakenOver(lease) => return Next::FetchTakenOver(lease),
            Claim::Live { owner } => owner,
        };
        match self.on_live {
            OnLive::Join { rounds } => Next::Join {
                owner,
                then: if self.claims >= rounds {
                    AfterJoin::GiveUp
                } else {
                    AfterJoin::ClaimAgain
                },
            },
            OnLive::Wait { most, within, .. } => {
                let deadline = self.started + within;
                if now >= deadline {
                    return Next::FetchUnleased(Unleased::GaveUp);
                }
                let pause = self.pause.min(deadline - now);
                self.pause = (self.pause * 2).min(most);
                Next::Wait(pause)
            }
        }
    }
}

/// How a turn ended, for the caller's metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The lease was free: this replica's.
    Owned,
    TakenOver,
    Unleased(Unleased),
    /// Found in the bucket right after the lease was taken.
    FoundAfterClaim,
    /// Another replica's answer, found in the bucket after a pause.
    FoundAfterWait,
    /// What the join gave.
    Joined,
}

/// Whose turn it is, decided.
pub enum Taken<T> {
    /// This replica asks upstream: holding the lease (`None`: it could not be had), which it
    /// keeps until its answer is in the bucket.
    Fetch(Option<HeldLease>, Why),
    /// Another replica's answer (from the bucket, or the joined owner).
    Ready(T, Why),
}

/// Drives a [`Turn`]: `claim` claims the lease (logged here as `lease`), `look` looks for the
/// answer in the bucket, `join` joins a live owner's fetch (`None`: it failed, and the owner
/// is refused at the next claim).
pub async fn take<T, C, CF, K, KF, J, JF>(
    on_live: OnLive,
    lease: &(dyn std::fmt::Display + Sync),
    mut claim: C,
    mut look: K,
    mut join: J,
) -> Taken<T>
where
    C: FnMut() -> CF,
    CF: Future<Output = Result<LeaseState, BucketError>>,
    K: FnMut() -> KF,
    KF: Future<Output = Option<T>>,
    J: FnMut(String) -> JF,
    JF: Future<Output = Option<T>>,
{
    let mut turn = Turn::new(on_live, Instant::now());
    loop {
        let claimed = claim().await;
        if let Err(e) = &claimed {
            tracing::warn!(%lease, error = %e, "lease unavailable; asking upstream");
        }
        match turn.decide(Claim::from(claimed), Instant::now()) {
            Next::FetchUnleased(why) => {
                if why == Unleased::GaveUp {
                    tracing::warn!(%lease, "no owner delivered; asking upstream");
                }
                return Taken::Fetch(None, Why::Unleased(why));
            }
            Next::LookThenFetch(held) => {
                if let Some(found) = look().await {
                    return Taken::Ready(found, Why::FoundAfterClaim);
                }
                tracing::debug!(%lease, "lease taken");
                return Taken::Fetch(Some(held), Why::Owned);
            }
            Next::FetchTakenOver(held) => {
                tracing::info!(%lease, "expired lease taken over");
                return Taken::Fetch(Some(held), Why::TakenOver);
            }
            Next::Join { owner, then } => {
                if let Some(found) = join(owner).await {
                    return Taken::Ready(found, Why::Joined);
                }
                if then == AfterJoin::GiveUp {
                    tracing::warn!(%lease, "no owner delivered; asking upstream");
                    return Taken::Fetch(None, Why::Unleased(Unleased::GaveUp));
                }
            }
            Next::Wait(pause) => {
                tracing::debug!(%lease, "another replica fetches; waiting for its answer");
                tokio::time::sleep(pause).await;
                if let Some(found) = look().await {
                    return Taken::Ready(found, Why::FoundAfterWait);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
