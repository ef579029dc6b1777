//! The blob store's API: look a blob up, join or start the one download of a digest, answer a
//! HEAD, wait for commits at shutdown. The proxy sees blobs and bodies, never files.

use super::backfill;
use super::body::ReadVerify;
use super::bucket_tier::{BlobTier, BucketRedirects};
use super::catalog::Catalog;
pub use super::disk_budget::{DiskBudget, Kept};
use super::failures::RecentFailures;
use super::fill::{self, FillEnv};
use super::fill_state::{Fill, Phase, ReaderGuard};
use super::fleet::Fleet;
pub use super::index::CacheFile;
pub use super::lookup::{Blob, CachedBlob, FillingBlob};
use super::memory::{Loaded, SmallBlobs, SMALL_BLOB_BYTES};
use super::origin::{BlobOrigin, BlobSource};
use super::scrub::{self, Damage};
use super::source::{FillError, IncomingBlob, SourceError};
use super::write_buffer::WriteBuffer;
use crate::cache::bucket::Bucket;
use crate::config::keys::CACHE_WRITE_BUFFER;
use crate::digest::Digest;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What the store may use.
#[derive(Debug, Clone, Copy)]
pub struct BlobStoreLimits {
    /// Bytes of committed blobs on disk (`cache.max_size`).
    pub max_bytes: u64,
    /// Received bytes that may wait in memory for the disk (`cache.write_buffer`).
    pub write_buffer: u64,
    /// Small committed blobs kept in memory.
    pub small_blob_memory: u64,
    /// No download grows past this (`cache.max_blob_size`).
    pub max_blob_size: u64,
    /// Downloads stop short of leaving less than this free on the disk.
    pub min_free_space: u64,
    /// How long a download that brought wrong bytes is remembered (`cache.negative_ttl`).
    pub bad_blob_ttl: Duration,
    /// Check every read of a committed blob against its digest (`cache.verify_reads`).
    pub verify_reads: bool,
    /// How long a whole-blob check vouches for a blob's range reads (`cache.verify_reads_ttl`).
    pub verify_reads_ttl: Duration,
}

impl BlobStoreLimits {
    /// The store on its own: a byte budget and nothing else bounded or remembered (the proxy
    /// sets every limit from the config).
    pub fn with_max_bytes(max_bytes: u64) -> Self {
        BlobStoreLimits {
            max_bytes,
            write_buffer: CACHE_WRITE_BUFFER,
            small_blob_memory: 16 << 20,
            max_blob_size: u64::MAX,
            min_free_space: 0,
            bad_blob_ttl: Duration::ZERO,
            verify_reads: false,
            verify_reads_ttl: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlobStoreStats {
    /// Bytes of committed blobs.
    pub bytes: u64,
    /// Committed blobs.
    pub entries: u64,
    /// Bytes the manifests and tag records on disk count against the same budget.
    pub file_bytes: u64,
    /// Manifests and tag records on disk.
    pub files: u64,
    /// Blobs deleted to stay within the budget since `open`.
    pub evictions: u64,
    /// Downloads in progress.
    pub in_flight: u64,
    /// Downloads started since `open` (one per coalesced group of requests).
    pub fills_started: u64,
    /// Bytes downloads received that wait in memory for the disk (at most `cache.write_buffer`,
    /// give or take one chunk).
    pub write_buffered: u64,
    /// Committed blobs the scrub has checked since `open`.
    pub scrub_checked: u64,
    /// Committed blobs found not to match their digest since `open`, by the scrub.
    pub damaged_by_scrub: u64,
    /// …and by a read (a small blob loaded, or `verify_reads`).
    pub damaged_on_read: u64,
    /// Bytes of committed blobs hashed to check reads (`verify_reads`) since `open`.
    pub read_check_bytes: u64,
    /// Bytes on disk (blobs and manifests) that pinned images hold; counted in the totals.
    pub pinned_bytes: u64,
    /// Blobs and manifests on disk that pinned images hold.
    pub pinned_entries: u64,
}

/// One download in progress, as [`BlobStore::fills_in_progress`] tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillProgress {
    pub digest: Digest,
    /// Bytes received so far.
    pub received: u64,
    /// The source's announced length, once known.
    pub size: Option<u64>,
    /// Where the bytes come from, once known.
    pub source: Option<BlobSource>,
    /// Requests following it now.
    pub readers: usize,
}

pub struct BlobStore {
    env: Arc<FillEnv>,
    catalog: Arc<Catalog>,
    small: SmallBlobs,
    verify_reads: bool,
    damage: Arc<Damage>,
    /// What bodies check reads with, when `verify_reads`.
    read_verify: Arc<ReadVerify>,
    bucket: Option<Arc<Bucket>>,
}

impl BlobStore {
    /// Opens the store under `root` with the default write buffer. Blocking: call it at
    /// start-up, before serving.
    pub fn open(root: PathBuf, max_bytes: u64) -> io::Result<Arc<BlobStore>> {
        Self::open_with(root, BlobStoreLimits::with_max_bytes(max_bytes))
    }

    /// `open`, with `write_buffer` bytes of received data allowed to wait in memory for the disk.
    pub fn open_with_write_buffer(
        root: PathBuf,
        max_bytes: u64,
        write_buffer: u64,
    ) -> io::Result<Arc<BlobStore>> {
        Self::open_with(
            root,
            BlobStoreLimits {
                write_buffer,
                ..BlobStoreLimits::with_max_bytes(max_bytes)
            },
        )
    }

    /// Creates dirs, clears what a crash left in `tmp/`, re-indexes the committed blobs and
    /// evicts down to the budget. Blocking.
    pub fn open_with(root: PathBuf, limits: BlobStoreLimits) -> io::Result<Arc<BlobStore>> {
        Self::open_with_bucket(root, limits, None)
    }

    /// `open_with`, with a shared bucket behind the disk (`[storage]`): an L1 miss reads the
    /// bucket before upstream, and a blob from upstream is copied there after its commit.
    pub fn open_with_bucket(
        root: PathBuf,
        limits: BlobStoreLimits,
        bucket: Option<Arc<Bucket>>,
    ) -> io::Result<Arc<BlobStore>> {
        Self::open_in_fleet(root, limits, bucket, None, None, &Kept::default())
    }

    /// `open_with_bucket`, as a member of a fleet (`[fleet]`, which needs the bucket): a fill
    /// that misses the bucket takes the blob's lease or joins the replica that holds it. With
    /// `redirects` (`storage.redirect`), `bucket_url` presigns URLs of blobs in the bucket.
    /// What `kept` names (pinned images) is not evicted, not even by the eviction at open.
    pub fn open_in_fleet(
        root: PathBuf,
        limits: BlobStoreLimits,
        bucket: Option<Arc<Bucket>>,
        fleet: Option<Fleet>,
        redirects: Option<BucketRedirects>,
        kept: &Kept,
    ) -> io::Result<Arc<BlobStore>> {
        let catalog = Arc::new(Catalog::open(&root, limits.max_bytes, kept.items())?);
        let damage = Arc::new(Damage::default());
        let env = FillEnv {
            catalog: catalog.clone(),
            buffer: WriteBuffer::new(limits.write_buffer),
            failures: RecentFailures::new(limits.bad_blob_ttl),
            max_blob_size: limits.max_blob_size,
            min_free_space: limits.min_free_space,
            tier: bucket.clone().map(|b| BlobTier::new(b, redirects)),
            fleet: fleet.filter(|_| bucket.is_some()),
        };
        Ok(Arc::new(BlobStore {
            env: Arc::new(env),
            catalog,
            small: SmallBlobs::new(limits.small_blob_memory),
            verify_reads: limits.verify_reads,
            read_verify: Arc::new(ReadVerify {
                damage: damage.clone(),
                trust: limits.verify_reads_ttl,
            }),
            damage,
            bucket,
        }))
    }

    /// Starts the background scrub: every `interval`, each committed blob is read back (at most
    /// `rate` bytes a second) and checked against its digest; a damaged one is dropped, to be
    /// downloaded again. It ends with the store.
    pub fn start_scrub(self: &Arc<Self>, interval: Duration, rate: u64) {
        scrub::spawn(
            Arc::downgrade(&self.catalog),
            self.damage.clone(),
            interval,
            rate,
        );
    }

    /// With a bucket: starts copying the blobs committed before it was set to it, one at a
    /// time in the background, unless `marker` (a file) already names `target`, the bucket
    /// and prefix a finished pass copied to (`storage.backfill`). It ends with the store, or
    /// when the returned task does; `None` without a bucket.
    pub fn start_backfill(
        self: &Arc<Self>,
        marker: PathBuf,
        target: String,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let tier = self.env.tier.as_ref()?;
        let catalog = Arc::downgrade(&self.catalog);
        Some(backfill::spawn(catalog, tier.clone(), marker, target))
    }

    /// A committed blob, pinned (not evictable) while the returned handle lives. Touches LRU.
    pub fn get(&self, digest: &Digest) -> Option<CachedBlob> {
        let (size, pin) = self.catalog.pin(digest)?;
        Some(CachedBlob {
            size,
            path: self.catalog.blob_path(digest),
            pin: Arc::new(pin),
            verify: self.verify_reads.then(|| self.read_verify.clone()),
        })
    }

    /// A committed blob ready to serve: a small one from memory (read and verified once), any
    /// other streamed from the store. `None` if it is not committed.
    pub async fn lookup(&self, digest: &Digest) -> Option<Blob> {
        let cached = self.get(digest)?;
        if cached.size <= SMALL_BLOB_BYTES {
            let path = cached.path.clone();
            match self.small.get_or_load(digest, path, cached.size).await {
                Loaded::Bytes(bytes) => return Some(Blob::Memory(bytes)),
                // Never served: dropped, and the caller downloads it again.
                Loaded::Damaged => {
                    drop(cached);
                    self.catalog.remove_damaged(digest);
                    self.damage.found_on_read();
                    return None;
                }
                Loaded::Unreadable => {}
            }
        }
        Some(Blob::Cached(cached))
    }

    /// Where the blob's file is, or will be once committed (its access record lives on it).
    pub fn file_path(&self, digest: &Digest) -> std::path::PathBuf {
        self.catalog.blob_path(digest)
    }

    /// Whether a copy of the blob may be here or on its way: committed, being downloaded, or
    /// in the bucket behind the disk — which is always possible (another replica, a writer),
    /// and a copy there is not this route's proof.
    pub async fn may_have(&self, digest: &Digest) -> bool {
        if self.bucket.is_some() {
            return true;
        }
        let state = self.catalog.lock();
        state.index.size(digest).is_some() || state.in_flight.contains_key(digest)
    }

    /// What a `HEAD` needs, in one look at the catalog (a download may commit between two):
    /// the size, and how it would be served — a hit if the bytes are local (committed, or
    /// downloaded and verified with only the commit running), else joined to its fill. `None`:
    /// neither cached nor being downloaded with a known size.
    pub fn head(&self, digest: &Digest) -> Option<(u64, BlobOrigin)> {
        let state = self.catalog.lock();
        if let Some(size) = state.index.size(digest) {
            return Some((size, BlobOrigin::Hit));
        }
        let fill = state.in_flight.get(digest)?;
        let size = fill.size()?;
        if fill.is_verified() {
            return Some((size, BlobOrigin::Hit));
        }
        let source = fill.source().unwrap_or(BlobSource::Upstream);
        Some((size, BlobOrigin::Joined(source)))
    }

    /// The size of a blob that is neither in L1 nor being downloaded, if the bucket has it
    /// (a HEAD on a replica with an empty L1). `None` without `[storage]`, when the bucket does
    /// not have it, or when the bucket fails. The size is the bucket object's, not proven: a
    /// bucket writer can make it wrong (docs/fleet.md); a GET is verified whatever it says.
    pub async fn head_in_bucket(&self, digest: &Digest) -> Option<u64> {
        let bucket = self.bucket.as_ref()?;
        let mut size = bucket.size(&bucket.keys().blob(digest)).await;
        if matches!(size, Ok(None)) {
            // Expired under blobs/: a pinned image's copy is served as well.
            size = bucket.size(&bucket.keys().pinned_blob(digest)).await;
        }
        match size {
            Ok(size) => size,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "storage unavailable for a blob HEAD");
                bucket.observer().bypassed("blob_read");
                None
            }
        }
    }

    /// `storage.redirect`: a presigned URL of the blob in the bucket, for a GET to be redirected
    /// to. `None` (serve it here) without `storage.redirect`, when the blob is in L1 or being
    /// downloaded (no S3 round trip is added to those), when the bucket lacks it (a cold blob is
    /// filled as without the option) or fails. A digest seen in the bucket lately (the memo)
    /// is redirected even from L1: the bucket's bandwidth, not this replica's, serves it.
    pub async fn bucket_url(&self, digest: &Digest) -> Option<String> {
        let tier = self.env.tier.as_ref()?;
        if !tier.redirects() {
            return None;
        }
        if !tier.known_in_bucket(digest) && self.head(digest).is_some() {
            return None;
        }
        tier.presigned(digest).await
    }

    /// Waits (at most `limit`) until every download whose bytes are verified is committed, so
    /// that a shutdown right after a pull keeps the blob. Downloads still receiving are left:
    /// they end with the process and their temp files are cleared at the next start.
    /// With `[storage]`, then waits (within the same limit) for the copies to the bucket those
    /// commits started, and any other background write to it.
    pub async fn finish_commits(&self, limit: std::time::Duration) {
        let committing: Vec<_> = {
            let state = self.catalog.lock();
            state
                .in_flight
                .values()
                .filter(|fill| fill.is_verified())
                .map(|fill| fill.subscribe())
                .collect()
        };
        let wait = async {
            for mut rx in committing {
                let _ = rx.wait_for(|s| s.is_terminal()).await;
            }
        };
        let deadline = tokio::time::Instant::now() + limit;
        if tokio::time::timeout(limit, wait).await.is_err() {
            tracing::warn!("shutdown: blob commits still running after {limit:?}");
        }
        if let Some(bucket) = &self.bucket {
            bucket.finish_writes(deadline).await;
        }
    }

    /// Returns the cached blob, or joins the in-flight fill for this digest, or starts one by
    /// calling `fetch` (only the caller that starts the fill calls it; others' closures are
    /// dropped unused). Returns once the fetch has produced its response head or failed: every
    /// joined caller gets the same error if `fetch` fails. The download runs as its own task,
    /// so it completes (and commits) even if every caller goes away.
    pub async fn get_or_fill<F, Fut>(&self, digest: &Digest, fetch: F) -> Result<Blob, FillError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<IncomingBlob, SourceError>> + Send + 'static,
    {
        self.get_or_fill_from(digest, 0, fetch).await
    }

    /// Like `get_or_fill`, a download it starts tagged with `origin` (see `Blob::origin`).
    pub async fn get_or_fill_from<F, Fut>(
        &self,
        digest: &Digest,
        origin: u64,
        fetch: F,
    ) -> Result<Blob, FillError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<IncomingBlob, SourceError>> + Send + 'static,
    {
        let (fill, start) = {
            let mut state = self.catalog.lock();
            if let Some(size) = state.index.touch_and_pin(digest) {
                drop(state);
                return Ok(Blob::Cached(CachedBlob {
                    size,
                    path: self.catalog.blob_path(digest),
                    pin: Arc::new(self.catalog.pin_guard(digest)),
                    verify: self.verify_reads.then(|| self.read_verify.clone()),
                }));
            }
            match state.in_flight.get(digest) {
                Some(fill) => (fill.clone(), false),
                None => {
                    // A download that just failed is not tried again at once.
                    if let Some(e) = self.env.failures.get(digest) {
                        return Err(e);
                    }
                    let fill = Arc::new(Fill::new(digest.clone(), origin));
                    state.in_flight.insert(digest.clone(), fill.clone());
                    state.fills_started += 1;
                    (fill, true)
                }
            }
        };
        let mut rx = fill.subscribe();
        // Counted before the download can see its first byte, so it never looks unfollowed.
        let reader = Arc::new(ReaderGuard::new(&fill));
        if !start && self.env.fleet.is_some() {
            if let Some(bucket) = &self.bucket {
                bucket.observer().fleet_fill("joined_local");
            }
        }
        if start {
            tracing::debug!(%digest, "blob fill started");
            fill::spawn(self.env.clone(), fill.clone(), fetch);
        }
        let state = rx
            .wait_for(|s| !matches!(s.phase, Phase::Fetching))
            .await
            .map(|s| (*s).clone())
            .map_err(|_| FillError::Failed("blob fill vanished".into()))?;
        match state.phase {
            Phase::HeadFailed(e) => Err(e),
            // Joined too late to stream anything: a clean error beats a broken 200.
            Phase::Failed(failure) => Err(FillError::Failed(failure.cause())),
            Phase::Fetching | Phase::Streaming | Phase::Verified | Phase::Done => {
                let verified = state.is_verified();
                let file = state
                    .file
                    .ok_or_else(|| FillError::Storage("blob fill has no file".into()))?;
                Ok(Blob::Filling(FillingBlob {
                    size: state.size,
                    file,
                    rx,
                    fill,
                    verified,
                    started: start,
                    source: state.source.unwrap_or(BlobSource::Upstream),
                    _reader: reader,
                }))
            }
        }
    }

    /// For another replica (the peer endpoint): the committed blob, or this replica's fill in
    /// flight joined (waiting at most `limit` for its first byte). Never starts a fill: `None`
    /// when there is neither, or the fill failed.
    pub async fn join_for_peer(&self, digest: &Digest, limit: Duration) -> Option<Blob> {
        if let Some(blob) = self.lookup(digest).await {
            return Some(blob);
        }
        let fill = self.catalog.lock().in_flight.get(digest).cloned()?;
        let mut rx = fill.subscribe();
        let reader = Arc::new(ReaderGuard::new(&fill));
        let waited = tokio::time::timeout(limit, async {
            rx.wait_for(|s| !matches!(s.phase, Phase::Fetching))
                .await
                .map(|s| (*s).clone())
        })
        .await;
        let Ok(Ok(state)) = waited else {
            return None;
        };
        match state.phase {
            Phase::HeadFailed(_) | Phase::Failed(_) => None,
            Phase::Fetching | Phase::Streaming | Phase::Verified | Phase::Done => {
                let verified = state.is_verified();
                Some(Blob::Filling(FillingBlob {
                    size: state.size,
                    file: state.file?,
                    rx,
                    fill,
                    verified,
                    started: false,
                    source: state.source.unwrap_or(BlobSource::Upstream),
                    _reader: reader,
                }))
            }
        }
    }

    /// A member of a fleet (`[fleet]`).
    pub fn in_fleet(&self) -> bool {
        self.env.fleet.is_some()
    }

    /// `[fleet]`, a cold range (`cache.cold_ranges = "relay"`): the bytes `start..=end` of a
    /// blob (`size` bytes) whose fill here streams another replica's fill, from that replica,
    /// if it has every one of them now. `None` when the blob is no such fill, or the owner did
    /// not answer with exactly that range at once (see `PeerSource::fetch_range`).
    pub async fn range_from_owner(
        &self,
        blob: &Blob,
        range: (u64, u64),
        size: u64,
    ) -> Option<crate::body::UpstreamBody> {
        let fleet = self.env.fleet.as_ref()?;
        let Blob::Filling(filling) = blob else {
            return None;
        };
        let fill = &filling.fill;
        let asked = fleet.range_from(fill.owner()?, &fill.digest, range, size)?;
        asked.await
    }

    /// `[fleet]`: whether `blob` is a fill here that streams another replica's fill (so its
    /// cold ranges are asked of that replica first, `range_from_owner`).
    pub fn streams_owner(&self, blob: &Blob) -> bool {
        self.env.fleet.is_some()
            && matches!(blob, Blob::Filling(filling) if filling.fill.owner().is_some())
    }

    pub fn stats(&self) -> BlobStoreStats {
        let state = self.catalog.lock();
        let (pinned_bytes, pinned_entries) = state.index.kept_bytes();
        BlobStoreStats {
            pinned_bytes,
            pinned_entries,
            bytes: state.index.blob_bytes(),
            entries: state.index.len() as u64,
            file_bytes: state.index.bytes() - state.index.blob_bytes(),
            files: state.index.files() as u64,
            evictions: state.index.evictions(),
            in_flight: state.in_flight.len() as u64,
            fills_started: state.fills_started,
            write_buffered: self.env.buffer.waiting(),
            scrub_checked: self.damage.checked(),
            damaged_by_scrub: self.damage.by_scrub(),
            damaged_on_read: self.damage.on_read(),
            read_check_bytes: self.damage.read_check_bytes(),
        }
    }

    /// Up to `max` downloads in progress (largest received first): for the status page.
    pub fn fills_in_progress(&self, max: usize) -> Vec<FillProgress> {
        let mut fills: Vec<FillProgress> = {
            let state = self.catalog.lock();
            state
                .in_flight
                .values()
                .map(|fill| {
                    let (received, size, source) = fill.progress();
                    FillProgress {
                        digest: fill.digest.clone(),
                        received,
                        size,
                        source,
                        readers: fill.readers(),
                    }
                })
                .collect()
        };
        fills.sort_by(|a, b| {
            b.received
                .cmp(&a.received)
                .then_with(|| a.digest.cmp(&b.digest))
        });
        fills.truncate(max);
        fills
    }

    /// The configured byte budget.
    pub fn max_bytes(&self) -> u64 {
        self.catalog.max_bytes()
    }

    /// The store's byte budget, for the manifest and tag stores to keep their files under.
    /// Bytes free for archway on the cache's filesystem (`statvfs`), if the platform tells.
    pub fn disk_free(&self) -> Option<u64> {
        self.catalog.free_space()
    }

    /// `cache.min_free_space`: below it, blobs are served without being cached.
    pub fn min_free_space(&self) -> u64 {
        self.env.min_free_space
    }

    pub fn disk_budget(&self) -> DiskBudget {
        DiskBudget {
            catalog: self.catalog.clone(),
        }
    }
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore")
            .field("blobs_dir", &self.catalog.blobs_dir())
            .field("max_bytes", &self.catalog.max_bytes())
            .field("stats", &self.stats())
            .finish()
    }
}
