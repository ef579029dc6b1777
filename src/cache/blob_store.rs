//! The on-disk, content-addressed blob store: an index of committed blobs with a byte budget and
//! LRU eviction, plus coalescing of concurrent downloads of one digest into a single fill
//! (see `blob_fill`) that every waiter streams from (see `blob_body`).
//!
//! Layout under the root: committed blobs at `blobs/<alg>/<first two hex>/<hex>`, downloads in
//! progress in `tmp/` under unique names. Everything under `tmp/` is garbage after a restart.
//!
//! Budget policy: after each commit, least-recently-used committed blobs that are not pinned (no
//! `CachedBlob` handle or body alive) are deleted until the total fits. Pinned blobs are skipped,
//! so if older blobs are all pinned the blob just committed is the one evicted. A blob larger
//! than the whole budget is verified and streamed to its waiting clients (they read from the
//! open temp file) but never committed: keeping it would flush the whole cache for one blob.

use crate::body::{ResponseBody, UpstreamBody};
use crate::cache::blob_body;
use crate::cache::blob_fill::{self, Fill, FillState, Phase, WriteBuffer};
use crate::digest::{Algorithm, Digest};
use crate::error::ProxyError;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

pub type FetchResult = Result<UpstreamBlob, ProxyError>;

/// An upstream blob response: its Content-Length if any, and the body (already wrapped with
/// the read timeout, so a stalled upstream shows up as a body error).
pub struct UpstreamBlob {
    pub size: Option<u64>,
    pub body: UpstreamBody,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlobStoreStats {
    /// Bytes of committed blobs.
    pub bytes: u64,
    /// Committed blobs.
    pub entries: u64,
    /// Blobs deleted to stay within the budget since `open`.
    pub evictions: u64,
    /// Downloads in progress.
    pub in_flight: u64,
    /// Downloads started since `open` (one per coalesced group of requests).
    pub fills_started: u64,
    /// Bytes downloads received that wait in memory for the disk (at most `cache.write_buffer`,
    /// give or take one chunk).
    pub write_buffered: u64,
}

pub struct BlobStore {
    shared: Arc<Shared>,
}

/// State shared by the store, its fill tasks and its pins.
pub(crate) struct Shared {
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    tmp_seq: AtomicU64,
    write_buffer: WriteBuffer,
}

/// Received blob bytes that may wait in memory for the disk, across all downloads, unless
/// configured otherwise (`cache.write_buffer`).
pub const DEFAULT_WRITE_BUFFER: u64 = 64 << 20;

#[derive(Default)]
struct Index {
    entries: HashMap<Digest, Entry>,
    /// Recency order: tick -> digest; the smallest tick is the least recently used.
    lru: BTreeMap<u64, Digest>,
    tick: u64,
    bytes: u64,
    evictions: u64,
    fills_started: u64,
    in_flight: HashMap<Digest, Arc<Fill>>,
}

struct Entry {
    size: u64,
    tick: u64,
    pins: u64,
}

impl Index {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn insert(&mut self, digest: Digest, size: u64) {
        let tick = self.next_tick();
        if let Some(old) = self.entries.insert(
            digest.clone(),
            Entry {
                size,
                tick,
                pins: 0,
            },
        ) {
            self.lru.remove(&old.tick);
            self.bytes = self.bytes.saturating_sub(old.size);
        }
        self.lru.insert(tick, digest);
        self.bytes = self.bytes.saturating_add(size);
    }

    /// Marks the entry used and pins it; `None` if not committed.
    fn touch_and_pin(&mut self, digest: &Digest) -> Option<u64> {
        let tick = self.next_tick();
        let entry = self.entries.get_mut(digest)?;
        self.lru.remove(&entry.tick);
        entry.tick = tick;
        entry.pins += 1;
        let size = entry.size;
        self.lru.insert(tick, digest.clone());
        Some(size)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic elsewhere while holding the lock leaves the index consistent enough (every
        // mutation is a few map operations); refusing all blob requests would be worse.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        blob_path(&self.blobs_dir, digest)
    }

    pub(crate) fn write_buffer(&self) -> &WriteBuffer {
        &self.write_buffer
    }

    /// A new, uniquely named temp file, opened read+write.
    pub(crate) fn create_tmp_file(&self) -> io::Result<(PathBuf, File)> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        loop {
            let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
            let name = format!("{}-{nanos}-{seq}.part", std::process::id());
            let path = self.tmp_dir.join(name);
            match fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => return Ok((path, file)),
                // Only possible with a leftover of the same pid and clock reading; try the next.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Forgets an in-flight fill (if it is still the registered one), so the next request retries.
    pub(crate) fn forget_fill(&self, fill: &Arc<Fill>) {
        let mut index = self.lock();
        if index
            .in_flight
            .get(&fill.digest)
            .is_some_and(|current| Arc::ptr_eq(current, fill))
        {
            index.in_flight.remove(&fill.digest);
        }
    }

    /// Makes a verified temp file durable and visible: fsync, rename into `blobs/`, index, evict.
    /// Blocking; runs in a blocking task. On error the caller deletes the temp file.
    pub(crate) fn commit(
        &self,
        fill: &Arc<Fill>,
        tmp: &Path,
        file: &File,
        size: u64,
    ) -> io::Result<()> {
        if size > self.max_bytes {
            // See the module comment: served from the open file, never kept.
            fs::remove_file(tmp)?;
            self.forget_fill(fill);
            tracing::info!(digest = %fill.digest, size, "blob larger than the cache budget; not kept");
            return Ok(());
        }
        file.sync_all()?;
        let dest = self.blob_path(&fill.digest);
        let parent = dest
            .parent()
            .ok_or_else(|| io::Error::other("blob path has no parent"))?;
        fs::create_dir_all(parent)?;
        {
            // Renames into and deletions from `blobs/` happen under the index lock, so an
            // eviction can never delete a file that a concurrent commit just put in its place.
            let mut index = self.lock();
            fs::rename(tmp, &dest)?;
            index.insert(fill.digest.clone(), size);
            if index
                .in_flight
                .get(&fill.digest)
                .is_some_and(|current| Arc::ptr_eq(current, fill))
            {
                index.in_flight.remove(&fill.digest);
            }
            self.evict_locked(&mut index);
        }
        // Makes the rename itself durable; the blob is already correct and visible without it.
        if let Err(e) = File::open(parent).and_then(|dir| dir.sync_all()) {
            tracing::debug!(error = %e, "cannot fsync blob directory");
        }
        Ok(())
    }

    /// Deletes least-recently-used unpinned blobs until the total fits the budget.
    fn evict_locked(&self, index: &mut Index) {
        while index.bytes > self.max_bytes {
            let victim = index
                .lru
                .iter()
                .find(|(_, digest)| index.entries.get(*digest).is_some_and(|e| e.pins == 0))
                .map(|(tick, digest)| (*tick, digest.clone()));
            let Some((tick, digest)) = victim else {
                // Everything left is pinned; the next commit tries again.
                break;
            };
            index.lru.remove(&tick);
            if let Some(entry) = index.entries.remove(&digest) {
                index.bytes = index.bytes.saturating_sub(entry.size);
            }
            index.evictions += 1;
            let path = self.blob_path(&digest);
            match fs::remove_file(&path) {
                Ok(()) => tracing::debug!(%digest, "blob evicted"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "cannot delete evicted blob");
                }
            }
        }
    }

    fn unpin(&self, digest: &Digest) {
        let mut index = self.lock();
        if let Some(entry) = index.entries.get_mut(digest) {
            entry.pins = entry.pins.saturating_sub(1);
        }
    }
}

fn blob_path(blobs_dir: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    // Validated digests have at least 64 hex characters.
    let prefix = hex.get(..2).unwrap_or("00");
    blobs_dir
        .join(digest.algorithm().as_str())
        .join(prefix)
        .join(hex)
}

impl BlobStore {
    /// Creates dirs, deletes everything in `tmp/` (left by a crash), scans `blobs/` to rebuild the
    /// index (recency from each file's latest access/modification time), and evicts down to the
    /// budget. Blocking: call it at startup, before serving.
    pub fn open(root: PathBuf, max_bytes: u64) -> io::Result<Arc<BlobStore>> {
        Self::open_with_write_buffer(root, max_bytes, DEFAULT_WRITE_BUFFER)
    }

    /// `open`, with `write_buffer` bytes of received data allowed to wait in memory for the disk.
    pub fn open_with_write_buffer(
        root: PathBuf,
        max_bytes: u64,
        write_buffer: u64,
    ) -> io::Result<Arc<BlobStore>> {
        let blobs_dir = root.join("blobs");
        let tmp_dir = root.join("tmp");
        fs::create_dir_all(&blobs_dir)?;
        fs::create_dir_all(&tmp_dir)?;
        clear_dir(&tmp_dir)?;

        let mut found = scan_blobs(&blobs_dir)?;
        found.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)));
        let mut index = Index::default();
        for (digest, size, _) in found {
            index.insert(digest, size);
        }
        let shared = Shared {
            blobs_dir,
            tmp_dir,
            max_bytes,
            index: Mutex::new(Index::default()),
            tmp_seq: AtomicU64::new(0),
            write_buffer: WriteBuffer::new(write_buffer),
        };
        shared.evict_locked(&mut index);
        tracing::info!(
            entries = index.entries.len(),
            bytes = index.bytes,
            evictions = index.evictions,
            "blob store opened"
        );
        *shared.lock() = index;
        Ok(Arc::new(BlobStore {
            shared: Arc::new(shared),
        }))
    }

    /// A committed blob, pinned (not evictable) while the returned handle lives. Touches LRU.
    pub fn get(&self, digest: &Digest) -> Option<CachedBlob> {
        let size = self.shared.lock().touch_and_pin(digest)?;
        Some(self.cached_handle(digest, size))
    }

    /// What a `HEAD` needs, in one look at the index (a download may commit between two):
    /// the size, and whether the bytes are local — committed, or downloaded and verified with
    /// only the commit running — rather than still arriving. `None`: neither cached nor being
    /// downloaded with a known size.
    pub fn head(&self, digest: &Digest) -> Option<(u64, bool)> {
        let index = self.shared.lock();
        if let Some(entry) = index.entries.get(digest) {
            return Some((entry.size, true));
        }
        let fill = index.in_flight.get(digest)?;
        Some((fill.size()?, fill.is_verified()))
    }

    /// Waits (at most `limit`) until every download whose bytes are verified is committed, so
    /// that a shutdown right after a pull keeps the blob. Downloads still receiving are left:
    /// they end with the process and their temp files are cleared at the next start.
    pub async fn finish_commits(&self, limit: std::time::Duration) {
        let committing: Vec<_> = {
            let index = self.shared.lock();
            index
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
        if tokio::time::timeout(limit, wait).await.is_err() {
            tracing::warn!("shutdown: blob commits still running after {limit:?}");
        }
    }

    // The pin was taken under the lock; the guard releases it.
    fn cached_handle(&self, digest: &Digest, size: u64) -> CachedBlob {
        CachedBlob {
            size,
            path: self.shared.blob_path(digest),
            pin: Arc::new(PinGuard {
                shared: self.shared.clone(),
                digest: digest.clone(),
            }),
        }
    }

    /// Returns the cached blob, or joins the in-flight fill for this digest, or starts one by
    /// calling `fetch` (only the caller that starts the fill calls it; others' closures are
    /// dropped unused). Returns once the fetch has produced its response head or failed: every
    /// joined caller gets the same `ProxyError` if `fetch` fails. The download runs as its own
    /// task, so it completes (and commits) even if every caller goes away.
    pub async fn get_or_fill<F, Fut>(
        self: &Arc<Self>,
        digest: &Digest,
        fetch: F,
    ) -> Result<Blob, ProxyError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = FetchResult> + Send + 'static,
    {
        let (fill, start) = {
            let mut index = self.shared.lock();
            if let Some(size) = index.touch_and_pin(digest) {
                drop(index);
                return Ok(Blob::Cached(self.cached_handle(digest, size)));
            }
            match index.in_flight.get(digest) {
                Some(fill) => (fill.clone(), false),
                None => {
                    let fill = Arc::new(Fill::new(digest.clone()));
                    index.in_flight.insert(digest.clone(), fill.clone());
                    index.fills_started += 1;
                    (fill, true)
                }
            }
        };
        let mut rx = fill.subscribe();
        if start {
            tracing::debug!(%digest, "blob fill started");
            blob_fill::spawn(self.shared.clone(), fill.clone(), fetch);
        }
        let state = rx
            .wait_for(|s| !matches!(s.phase, Phase::Fetching))
            .await
            .map(|s| (*s).clone())
            .map_err(|_| ProxyError::internal("blob fill vanished"))?;
        match state.phase {
            Phase::HeadFailed(e) => Err(e),
            // Joined too late to stream anything: a clean error beats a broken 200.
            Phase::Failed(failure) => Err(ProxyError::bad_gateway(failure.message())),
            Phase::Fetching | Phase::Streaming | Phase::Verified | Phase::Done => {
                let verified = state.is_verified();
                let file = state
                    .file
                    .ok_or_else(|| ProxyError::internal("blob fill has no file"))?;
                Ok(Blob::Filling(FillingBlob {
                    size: state.size,
                    file,
                    rx,
                    fill,
                    verified,
                }))
            }
        }
    }

    pub fn stats(&self) -> BlobStoreStats {
        let index = self.shared.lock();
        BlobStoreStats {
            bytes: index.bytes,
            entries: index.entries.len() as u64,
            evictions: index.evictions,
            in_flight: index.in_flight.len() as u64,
            fills_started: index.fills_started,
            write_buffered: self.shared.write_buffer.waiting(),
        }
    }

    /// The configured byte budget.
    pub fn max_bytes(&self) -> u64 {
        self.shared.max_bytes
    }
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore")
            .field("blobs_dir", &self.shared.blobs_dir)
            .field("max_bytes", &self.shared.max_bytes)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Deletes every entry of `dir` (files and subdirectories).
fn clear_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        if let Err(e) = removed {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete stale temp file");
        }
    }
    Ok(())
}

/// Committed blobs under `blobs/<alg>/<xx>/<hex>`: (digest, size, last used). Anything else
/// (unknown algorithms, bad names, files in the wrong prefix dir, non-files) is ignored.
fn scan_blobs(blobs_dir: &Path) -> io::Result<Vec<(Digest, u64, SystemTime)>> {
    let mut found = Vec::new();
    for alg in [Algorithm::Sha256, Algorithm::Sha512] {
        let alg_dir = blobs_dir.join(alg.as_str());
        let prefixes = match fs::read_dir(&alg_dir) {
            Ok(prefixes) => prefixes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for prefix in prefixes {
            let prefix = prefix?;
            if !prefix.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Some(prefix_name) = prefix.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            for file in fs::read_dir(prefix.path())? {
                let file = file?;
                if let Some(blob) = scan_entry(alg, &prefix_name, &file) {
                    found.push(blob);
                }
            }
        }
    }
    Ok(found)
}

fn scan_entry(
    alg: Algorithm,
    prefix: &str,
    file: &fs::DirEntry,
) -> Option<(Digest, u64, SystemTime)> {
    let name = file.file_name();
    let name = name.to_str()?;
    let digest: Digest = format!("{}:{name}", alg.as_str()).parse().ok()?;
    if digest.hex().get(..2) != Some(prefix) {
        return None;
    }
    // `DirEntry::metadata` does not follow symlinks, so only real files count.
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
    let accessed = meta.accessed().unwrap_or(UNIX_EPOCH);
    Some((digest, meta.len(), modified.max(accessed)))
}

/// Keeps a committed blob from eviction while any handle or body holding it lives.
pub(crate) struct PinGuard {
    shared: Arc<Shared>,
    digest: Digest,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.shared.unpin(&self.digest);
    }
}

/// A committed blob, pinned while this handle (or a body made from it) lives.
#[derive(Clone)]
pub struct CachedBlob {
    size: u64,
    path: PathBuf,
    pin: Arc<PinGuard>,
}

impl CachedBlob {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn digest(&self) -> &Digest {
        &self.pin.digest
    }

    /// Where the blob lives on disk.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn body(&self, range: Option<(u64, u64)>) -> ResponseBody {
        blob_body::cached_body(self.path.clone(), self.size, range, self.pin.clone())
    }
}

impl fmt::Debug for CachedBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedBlob")
            .field("digest", &self.pin.digest)
            .field("size", &self.size)
            .finish()
    }
}

/// A blob being downloaded; bodies made from it follow the download.
#[derive(Clone)]
pub struct FillingBlob {
    size: Option<u64>,
    file: Arc<File>,
    rx: watch::Receiver<FillState>,
    fill: Arc<Fill>,
    /// Joined after every byte was verified (the commit still running): served wholly from
    /// local, verified data, as a committed blob would be.
    verified: bool,
}

impl FillingBlob {
    /// Upstream's Content-Length, if it sent one.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    pub fn body(&self, range: Option<(u64, u64)>) -> ResponseBody {
        blob_body::filling_body(
            self.fill.clone(),
            self.rx.clone(),
            self.file.clone(),
            self.size,
            range,
        )
    }
}

impl fmt::Debug for FillingBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FillingBlob")
            .field("size", &self.size)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub enum Blob {
    Cached(CachedBlob),
    Filling(FillingBlob),
}

impl Blob {
    /// Known for `Cached`; for `Filling`, upstream's Content-Length if any.
    pub fn size(&self) -> Option<u64> {
        match self {
            Blob::Cached(blob) => Some(blob.size()),
            Blob::Filling(blob) => blob.size(),
        }
    }

    /// Committed in the store (rather than a download joined while in flight).
    pub fn is_cached(&self) -> bool {
        matches!(self, Blob::Cached(_))
    }

    /// Served without waiting on upstream: committed, or fully downloaded and verified with only
    /// the commit still running (a request right after a pull). Counted as a cache hit.
    pub fn is_local(&self) -> bool {
        match self {
            Blob::Cached(_) => true,
            Blob::Filling(blob) => blob.verified,
        }
    }

    /// The bytes `start..=end` (`None` = whole blob) as a streaming response body. The caller
    /// has validated the range against `size()`. For `Filling` it yields bytes as they arrive;
    /// a failed fill ends the body with an `Err`, never a short or wrong success.
    pub fn body(&self, range: Option<(u64, u64)>) -> ResponseBody {
        match self {
            Blob::Cached(blob) => blob.body(range),
            Blob::Filling(blob) => blob.body(range),
        }
    }
}
