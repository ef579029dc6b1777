//! Fill leases in the bucket: taken with a conditional create (`If-None-Match: *`), taken over
//! with a conditional update (`If-Match` on the ETag read), renewed every third of the TTL
//! while the fill runs, deleted when the holder is done with it.
//!
//! A holder whose renewal loses its condition (another replica took the lease over) has lost
//! it: it stops renewing and does not delete what is now the other replica's lease.

use super::lease::{LeaseFound, LeaseRecord, MAX_LEASE_BYTES};
use super::{Bucket, BucketError};
use crate::digest::Digest;
use object_store::path::Path;
use object_store::{PutMode, UpdateVersion};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How many times a claim retries when the lease changes under it (created, deleted or taken
/// over between its reads and writes) before giving up as an error.
const CLAIM_ROUNDS: usize = 3;

/// What a claim found.
#[derive(Debug)]
pub enum LeaseState {
    /// No lease was there: this replica now fills the blob.
    Taken(HeldLease),
    /// An expired lease (its owner stopped renewing it) is now this replica's.
    TakenOver(HeldLease),
    /// Another replica fills the blob and renews its lease: join it at `owner`.
    Live { owner: String },
}

/// A lease this replica holds: renewed in the background until dropped, then deleted (unless
/// it was lost to a takeover).
pub struct HeldLease {
    shared: Arc<Held>,
    renewal: tokio::task::JoinHandle<()>,
}

struct Held {
    bucket: Arc<Bucket>,
    key: Path,
    owner: String,
    ttl: Duration,
    e_tag: Mutex<Option<String>>,
    lost: AtomicBool,
}

impl std::fmt::Debug for HeldLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldLease")
            .field("key", &self.shared.key.as_ref())
            .finish_non_exhaustive()
    }
}

impl HeldLease {
    /// Whether a renewal found the lease taken over by another replica.
    pub fn is_lost(&self) -> bool {
        self.shared.lost.load(Ordering::Acquire)
    }
}

impl Bucket {
    /// Takes the fill lease of `digest` for `me` (this replica's `peer_url`), takes over an
    /// expired one, or reports the live owner. Errors: the bucket failed, or the lease kept
    /// changing under the claim.
    pub async fn claim_fill(
        self: &Arc<Self>,
        digest: &Digest,
        me: &str,
        ttl: Duration,
    ) -> Result<LeaseState, BucketError> {
        self.claim(self.keys().fill_lease(digest), me, ttl).await
    }

    /// Takes the lease at `key` (a blob's fill, a manifest's fetch, a tag's revalidation) for
    /// `me`, takes over an expired one, or reports the live owner.
    pub async fn claim(
        self: &Arc<Self>,
        key: Path,
        me: &str,
        ttl: Duration,
    ) -> Result<LeaseState, BucketError> {
        self.claim_checked(key, me, ttl, &|_| None).await
    }

    /// [`claim`](Self::claim), where `refuse(owner)` says why a live lease's owner must not be
    /// joined (the egress policy refuses it, or it served a broken fill): such a lease is taken
    /// over like a damaged one, counted under that reason.
    ///
    /// A lease read back is believed only if it bears the fleet's seal for its key and expires
    /// no further ahead than one TTL plus the clock skew; otherwise it is taken over (counted).
    pub async fn claim_checked(
        self: &Arc<Self>,
        key: Path,
        me: &str,
        ttl: Duration,
        refuse: &(dyn Fn(&str) -> Option<String> + Send + Sync),
    ) -> Result<LeaseState, BucketError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        for _ in 0..CLAIM_ROUNDS {
            let record = LeaseRecord::new(me, self.now_ms(), ttl_ms);
            let sealed = self.seal(&key, &record.to_json())?;
            match self.put_conditional(&key, sealed, PutMode::Create).await {
                Ok(e_tag) => return Ok(LeaseState::Taken(self.hold(key, me, ttl, e_tag))),
                Err(BucketError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
            let Some(read) = self.get_record(&key, MAX_LEASE_BYTES, "lease").await? else {
                // Released between the two requests: create it again.
                continue;
            };
            // A body that is not a sealed lease of ours cannot be joined: taken over.
            let found = match read.body.as_deref().map(LeaseRecord::parse) {
                None => LeaseFound::TakeOver,
                Some(None) => {
                    self.reject("lease", "unreadable", &key, "not a lease record");
                    LeaseFound::TakeOver
                }
                Some(Some(r)) => {
                    self.observer.lease_seen(&r.owner);
                    let now = self.now_ms();
                    if r.is_too_far_ahead(now, ttl_ms, self.skew_ms()) {
                        self.reject(
                            "lease",
                            "future",
                            &key,
                            "expires further ahead than a lease TTL plus the clock skew",
                        );
                    }
                    match r.decide(me, now, ttl_ms, self.skew_ms()) {
                        LeaseFound::Join { owner } => match refuse(&owner) {
                            Some(why) => {
                                self.reject("lease", "owner", &key, &why);
                                LeaseFound::TakeOver
                            }
                            None => LeaseFound::Join { owner },
                        },
                        take_over => take_over,
                    }
                }
            };
            match found {
                LeaseFound::Join { owner } => return Ok(LeaseState::Live { owner }),
                LeaseFound::TakeOver => {
                    let record = LeaseRecord::new(me, self.now_ms(), ttl_ms);
                    let sealed = self.seal(&key, &record.to_json())?;
                    let mode = PutMode::Update(UpdateVersion {
                        e_tag: read.e_tag,
                        version: None,
                    });
                    match self.put_conditional(&key, sealed, mode).await {
                        Ok(e_tag) => {
                            return Ok(LeaseState::TakenOver(self.hold(key, me, ttl, e_tag)))
                        }
                        // Another replica took it over first: look again.
                        Err(BucketError::Conflict { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Err(BucketError::Conflict { op: "fill lease" })
    }

    fn hold(
        self: &Arc<Self>,
        key: Path,
        me: &str,
        ttl: Duration,
        e_tag: Option<String>,
    ) -> HeldLease {
        let shared = Arc::new(Held {
            bucket: self.clone(),
            key,
            owner: me.to_owned(),
            ttl,
            e_tag: Mutex::new(e_tag),
            lost: AtomicBool::new(false),
        });
        self.observer.lease_seen(me);
        self.observer.lease_held(true);
        let renewing = shared.clone();
        let renewal = tokio::spawn(async move { renewing.renew_until_lost().await });
        HeldLease { shared, renewal }
    }
}

impl Held {
    /// Every third of the TTL, rewrites the lease with a new expiry on the ETag it last wrote.
    /// A failed renewal is tried again at the next tick (the lease holds a whole TTL); a lost
    /// condition ends it.
    async fn renew_until_lost(&self) {
        let every = (self.ttl / 3).max(Duration::from_millis(100));
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        loop {
            tokio::time::sleep(every).await;
            let e_tag = self.e_tag.lock().map(|e| e.clone()).unwrap_or_default();
            let record = LeaseRecord::new(&self.owner, self.bucket.now_ms(), ttl_ms);
            let sealed = match self.bucket.seal(&self.key, &record.to_json()) {
                Ok(sealed) => sealed,
                Err(e) => {
                    tracing::warn!(lease = %self.key, error = %e, "cannot renew a fill lease");
                    continue;
                }
            };
            let mode = PutMode::Update(UpdateVersion {
                e_tag,
                version: None,
            });
            match self.bucket.put_conditional(&self.key, sealed, mode).await {
                Ok(new) => {
                    if let Ok(mut e) = self.e_tag.lock() {
                        *e = new;
                    }
                }
                Err(BucketError::Conflict { .. }) => {
                    tracing::warn!(lease = %self.key, "fill lease taken over by another replica");
                    self.lost.store(true, Ordering::Release);
                    return;
                }
                Err(e) => {
                    tracing::warn!(lease = %self.key, error = %e, "cannot renew a fill lease")
                }
            }
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.renewal.abort();
        self.shared.bucket.observer.lease_held(false);
        if self.is_lost() {
            return;
        }
        // Outside a runtime (or in its shutdown) nothing is deleted: the lease expires.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = self.shared.clone();
        runtime.spawn(async move {
            if let Err(e) = shared.bucket.delete(&shared.key).await {
                tracing::warn!(lease = %shared.key, error = %e, "cannot release a fill lease; it expires");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::bucket::{now_ms, NoObserver};
    use crate::record_key::RecordKey;
    use bytes::Bytes;
    use object_store::memory::InMemory;

    fn bucket() -> Arc<Bucket> {
        Arc::new(
            Bucket::over(
                Arc::new(InMemory::new()),
                "p/",
                Duration::from_secs(5),
                5 << 20,
                Arc::new(NoObserver),
            )
            .with_records(
                RecordKey::derive(b"s", "bucket records"),
                crate::clock::Clock::system(),
                Duration::from_secs(5),
            ),
        )
    }

    async fn read_lease(b: &Bucket, key: &Path) -> LeaseRecord {
        let read = b.get_record(key, 4096, "lease").await.unwrap().unwrap();
        LeaseRecord::parse(&read.body.unwrap()).unwrap()
    }

    /// Issue 18: what a bucket writer puts at a lease key (no seal, or a seal for another key,
    /// or an expiry years ahead) is never joined: it is taken over.
    #[tokio::test]
    async fn a_forged_or_never_expiring_lease_is_taken_over_not_joined() {
        let b = bucket();
        let ttl = Duration::from_secs(30);
        let live = LeaseRecord::new("http://owner:5000", now_ms(), 30_000);
        let years = LeaseRecord::new("http://owner:5000", now_ms(), 10 * 365 * 86_400_000);
        type Body<'a> = Box<dyn Fn(&Path) -> Bytes + 'a>;
        let cases: Vec<(&str, Body)> = vec![
            ("unsealed", Box::new(|_: &Path| live.to_json().into())),
            (
                "sealed for another key",
                Box::new(|_: &Path| {
                    b.seal(&Path::from("p/fills/other"), &live.to_json())
                        .unwrap()
                }),
            ),
            (
                "never expiring",
                Box::new(|k: &Path| b.seal(k, &years.to_json()).unwrap()),
            ),
        ];
        for (i, (what, body)) in cases.iter().enumerate() {
            let d = Digest::sha256_of(&[i as u8]);
            let key = b.keys().fill_lease(&d);
            b.put_conditional(&key, body(&key), PutMode::Create)
                .await
                .unwrap();
            match b.claim_fill(&d, "http://me", ttl).await.unwrap() {
                LeaseState::TakenOver(_) => {}
                other => panic!("{what}: {other:?}"),
            }
            assert_eq!(read_lease(&b, &key).await.owner, "http://me", "{what}");
        }
        // The same lease sealed for its key is joined.
        let d = Digest::sha256_of(b"real");
        let key = b.keys().fill_lease(&d);
        b.put_conditional(
            &key,
            b.seal(&key, &live.to_json()).unwrap(),
            PutMode::Create,
        )
        .await
        .unwrap();
        assert!(matches!(
            b.claim_fill(&d, "http://me", ttl).await.unwrap(),
            LeaseState::Live { .. }
        ));
    }

    #[tokio::test]
    async fn one_replica_takes_the_lease_others_join_it_and_release_frees_it() {
        let b = bucket();
        let d = Digest::sha256_of(b"blob");
        let ttl = Duration::from_secs(30);
        let held = match b.claim_fill(&d, "http://a", ttl).await.unwrap() {
            LeaseState::Taken(h) => h,
            other => panic!("{other:?}"),
        };
        match b.claim_fill(&d, "http://b", ttl).await.unwrap() {
            LeaseState::Live { owner } => assert_eq!(owner, "http://a"),
            other => panic!("{other:?}"),
        }
        let key = b.keys().fill_lease(&d);
        let record = read_lease(&b, &key).await;
        assert_eq!(record.owner, "http://a");
        assert!(!record.is_expired(now_ms()));
        drop(held);
        for _ in 0..100 {
            if !b.exists(&key).await.unwrap() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!b.exists(&key).await.unwrap(), "released");
        assert!(matches!(
            b.claim_fill(&d, "http://b", ttl).await.unwrap(),
            LeaseState::Taken(_)
        ));
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_once_and_the_loser_stops_renewing() {
        let b = bucket();
        let d = Digest::sha256_of(b"blob");
        let key = b.keys().fill_lease(&d);
        // A lease its dead owner left, expired a second ago.
        let dead = LeaseRecord::new("http://dead", now_ms().saturating_sub(31_000), 30_000);
        b.put_conditional(
            &key,
            b.seal(&key, &dead.to_json()).unwrap(),
            PutMode::Create,
        )
        .await
        .unwrap();
        let ttl = Duration::from_millis(1500);
        let held = match b.claim_fill(&d, "http://b", ttl).await.unwrap() {
            LeaseState::TakenOver(h) => h,
            other => panic!("{other:?}"),
        };
        // Renewed past its first TTL.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        match b.claim_fill(&d, "http://c", ttl).await.unwrap() {
            LeaseState::Live { owner } => assert_eq!(owner, "http://b"),
            other => panic!("{other:?}"),
        }
        // Someone overwrites it (as a takeover would): the holder finds it lost and leaves it.
        let taker = LeaseRecord::new("http://c", now_ms(), 1500);
        b.put(&key, b.seal(&key, &taker.to_json()).unwrap(), None)
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !held.is_lost() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(held.is_lost());
        drop(held);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(read_lease(&b, &key).await.owner, "http://c");
    }
}
