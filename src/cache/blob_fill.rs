//! One in-flight blob download: a spawned task that receives upstream chunks and hands each to a
//! hashing thread and a writing thread, publishes its progress through a `watch` channel, and
//! commits the temp file into the store only once size and digest are verified.
//!
//! Clients are never made to wait for the disk: a chunk is readable as soon as it arrived (from
//! memory until the writer has put it in the temp file, from the file after), and the last byte
//! follows the digest check, not the write or the fsync. The writer runs at a lower CPU priority
//! so that on a busy machine it yields to the transfer and catches up afterwards. What it has not
//! written yet is bounded by `cache.write_buffer` across all downloads; past that, receiving waits
//! for the disk.

use crate::cache::blob_store::{Shared, UpstreamBlob};
use crate::digest::{Digest, Verifier};
use crate::error::ProxyError;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

/// Chunks queued for the hashing thread: it keeps up with the network on any machine, and the
/// bound keeps a stalled hasher from queueing the whole blob.
const HASH_QUEUE: usize = 32;

/// Units of `write_buffer` permits: one permit per KiB not yet written.
pub(crate) const PERMIT_BYTES: u64 = 1024;

/// The writer's niceness (Linux): 10 gives it about a tenth of a busy core's share, so it never
/// starves, yet a transfer competing for the same cores goes first.
const WRITER_NICE: i32 = 10;

/// Shared between the fill task (the only writer of the state) and every reader of the fill.
pub(crate) struct Fill {
    pub(crate) digest: Digest,
    tx: watch::Sender<FillState>,
    /// Received chunks not yet in the temp file, by offset, in order. The writer removes a chunk
    /// only after writing it and publishing the new `written`, so a reader that misses a chunk
    /// here finds its bytes in the file.
    pending: Mutex<VecDeque<(u64, Bytes)>>,
}

/// What readers see of a fill. Cheap to clone (the file and failure are behind `Arc`s).
#[derive(Clone)]
pub(crate) struct FillState {
    pub(crate) phase: Phase,
    /// Bytes written to the temp file so far; readers may `pread` up to here.
    pub(crate) written: u64,
    /// Bytes received so far; `written..received` is in `Fill::pending`. Readers may release up
    /// to here (all but a known end's last byte until verified).
    pub(crate) received: u64,
    /// Upstream's Content-Length, known once the phase leaves `Fetching`.
    pub(crate) size: Option<u64>,
    /// The temp file, opened read+write. Readers `pread` from this descriptor, which stays valid
    /// after the rename into `blobs/` (and even after an unlink), so late joiners need no path.
    pub(crate) file: Option<Arc<File>>,
}

#[derive(Clone)]
pub(crate) enum Phase {
    /// Waiting for upstream's response head.
    Fetching,
    /// Bytes are arriving; `written` grows.
    Streaming,
    /// Size and digest verified: readers may release the last byte while the rest of the write
    /// and the commit (fsync, rename) run. The fill stays registered until `Done`, so a request
    /// that comes in meanwhile joins it and reads the verified bytes instead of asking upstream.
    Verified,
    /// The blob is committed (or deliberately not kept); the open file still serves readers.
    Done,
    /// Upstream refused or failed before any body: every waiter gets this error.
    HeadFailed(ProxyError),
    /// The body failed (error, truncation, mismatch): every reader's body errors.
    Failed(FillFailure),
}

impl FillState {
    /// Every byte arrived and the digest matched: all of it may be released.
    pub(crate) fn is_verified(&self) -> bool {
        matches!(self.phase, Phase::Verified | Phase::Done)
    }

    pub(crate) fn is_terminal(&self) -> bool {
        matches!(
            self.phase,
            Phase::Done | Phase::HeadFailed(_) | Phase::Failed(_)
        )
    }
}

/// Why a fill's body failed; turned into an `io::Error` for each reader.
#[derive(Clone, Debug)]
pub(crate) struct FillFailure {
    kind: io::ErrorKind,
    message: Arc<str>,
}

impl FillFailure {
    fn new(kind: io::ErrorKind, message: impl Into<String>) -> Self {
        FillFailure {
            kind,
            message: Arc::from(message.into()),
        }
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn to_io_error(&self) -> io::Error {
        io::Error::new(self.kind, self.message.to_string())
    }
}

impl Fill {
    pub(crate) fn new(digest: Digest) -> Self {
        let (tx, _) = watch::channel(FillState {
            phase: Phase::Fetching,
            written: 0,
            received: 0,
            size: None,
            file: None,
        });
        Fill {
            digest,
            tx,
            pending: Mutex::new(VecDeque::new()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Bytes)>> {
        // Every mutation is one push or pop; a panic elsewhere leaves it consistent.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Up to `max` bytes at `pos` from a received chunk not yet written, without copying;
    /// `None` if that chunk is in the file by now.
    pub(crate) fn pending_at(&self, pos: u64, max: u64) -> Option<Bytes> {
        let pending = self.pending();
        let i = pending.partition_point(|(offset, _)| *offset <= pos);
        let (offset, chunk) = pending.get(i.checked_sub(1)?)?;
        let start = usize::try_from(pos - offset).ok()?;
        if start >= chunk.len() {
            return None;
        }
        let len = usize::try_from(max).unwrap_or(usize::MAX);
        Some(chunk.slice(start..chunk.len().min(start.saturating_add(len))))
    }

    /// Upstream's Content-Length, once its response head arrived.
    pub(crate) fn size(&self) -> Option<u64> {
        self.tx.borrow().size
    }

    pub(crate) fn is_verified(&self) -> bool {
        self.tx.borrow().is_verified()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<FillState> {
        self.tx.subscribe()
    }

    // `send_modify` (unlike `send`) updates the value even when no receiver exists yet.
    fn publish(&self, f: impl FnOnce(&mut FillState)) {
        self.tx.send_modify(f);
    }
}

/// Starts the download as its own task, so that no client disconnect can cancel it.
pub(crate) fn spawn<F, Fut>(shared: Arc<Shared>, fill: Arc<Fill>, fetch: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<UpstreamBlob, ProxyError>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut task = FillTask {
            shared,
            fill,
            tmp: None,
            settled: false,
        };
        task.run(fetch).await;
    });
}

/// Owns the fill's cleanup: if the task ends in any way without settling (a panic in `fetch`,
/// runtime shutdown), `Drop` fails the fill so that no waiter hangs and no temp file stays.
struct FillTask {
    shared: Arc<Shared>,
    fill: Arc<Fill>,
    tmp: Option<PathBuf>,
    settled: bool,
}

impl FillTask {
    async fn run<F, Fut>(&mut self, fetch: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<UpstreamBlob, ProxyError>>,
    {
        let digest = self.fill.digest.clone();
        let upstream = match fetch().await {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::debug!(%digest, error = %e, "blob fetch failed");
                self.abandon(Phase::HeadFailed(e));
                return;
            }
        };
        let shared = self.shared.clone();
        let created = tokio::task::spawn_blocking(move || shared.create_tmp_file()).await;
        let (tmp, file) = match created {
            Ok(Ok((tmp, file))) => (tmp, Arc::new(file)),
            Ok(Err(e)) => {
                tracing::error!(%digest, error = %e, "cannot create blob temp file");
                let e = ProxyError::internal("cannot create blob temp file");
                self.abandon(Phase::HeadFailed(e));
                return;
            }
            Err(e) => {
                tracing::error!(%digest, error = %e, "temp file task failed");
                let e = ProxyError::internal("cannot create blob temp file");
                self.abandon(Phase::HeadFailed(e));
                return;
            }
        };
        self.tmp = Some(tmp.clone());
        let size = upstream.size;
        let reader_file = file.clone();
        self.fill.publish(|s| {
            s.phase = Phase::Streaming;
            s.size = size;
            s.file = Some(reader_file);
        });

        let writer = match self.stream(upstream, file.clone()).await {
            Ok(writer) => writer,
            Err(failure) => {
                tracing::warn!(%digest, reason = failure.message(), "blob fill failed");
                self.abandon(Phase::Failed(failure));
                return;
            }
        };
        // Verified: clients have their last byte. What is left (the rest of the write, the
        // fsync, the rename) is not theirs to wait for.
        let (verified_len, writer) = writer;
        let written = match writer.await {
            Ok(Ok(written)) if written == verified_len => written,
            Ok(Ok(written)) => {
                // Cannot happen (the writer gets every chunk); never commit a partial file.
                tracing::error!(%digest, written, verified_len, "blob file short; served, not kept");
                self.abandon(Phase::Done);
                return;
            }
            Ok(Err(e)) => {
                tracing::error!(%digest, error = %e, "cannot write blob; served, not kept");
                self.abandon(Phase::Done);
                return;
            }
            Err(_) => {
                tracing::error!(%digest, "blob writer thread died; served, not kept");
                self.abandon(Phase::Done);
                return;
            }
        };
        let shared = self.shared.clone();
        let fill = self.fill.clone();
        let committed =
            tokio::task::spawn_blocking(move || shared.commit(&fill, &tmp, &file, written)).await;
        match committed {
            Ok(Ok(())) => {
                tracing::debug!(%digest, bytes = written, "blob committed");
                self.settled = true;
                self.fill.publish(|s| s.phase = Phase::Done);
            }
            // The bytes were verified and readers hold the open file, so they finish; the blob
            // just isn't kept, and the next request downloads it again.
            Ok(Err(e)) => {
                tracing::error!(%digest, error = %e, "cannot commit blob; served, not kept");
                self.abandon(Phase::Done);
            }
            Err(e) => {
                tracing::error!(%digest, error = %e, "blob commit task failed; served, not kept");
                self.abandon(Phase::Done);
            }
        }
    }

    /// Receives the body, handing each chunk to the readers (at once, from memory), the hashing
    /// thread and the writing thread; checks length and digest at the end and publishes
    /// `Verified`. Returns the verified length and what the writer will report once every byte
    /// is in the file.
    async fn stream(
        &self,
        upstream: UpstreamBlob,
        file: Arc<File>,
    ) -> Result<(u64, oneshot::Receiver<io::Result<u64>>), FillFailure> {
        let expected_size = upstream.size;
        let mut body = upstream.body;
        let algorithm = self.fill.digest.algorithm();
        let (hash_tx, hash_rx) = mpsc::channel::<Bytes>(HASH_QUEUE);
        let (hash_done_tx, hash_done) = oneshot::channel();
        spawn_thread("archway-blob-hash", move || {
            let _ = hash_done_tx.send(hash_loop(hash_rx, Verifier::new(algorithm)));
        })?;
        let (write_tx, write_rx) = mpsc::unbounded_channel::<(Bytes, Reservation)>();
        let (write_done_tx, write_done) = oneshot::channel();
        let fill = self.fill.clone();
        spawn_thread("archway-blob-write", move || {
            lower_priority();
            let _ = write_done_tx.send(write_loop(write_rx, &file, &fill));
        })?;

        let budget = self.shared.write_buffer();
        let mut received: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                FillFailure::new(e.kind(), format!("upstream blob body failed: {e}"))
            })?;
            // Trailers carry nothing we store.
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            if chunk.is_empty() {
                continue;
            }
            let offset = received;
            received = received.saturating_add(chunk.len() as u64);
            if expected_size.is_some_and(|expected| received > expected) {
                return Err(FillFailure::new(
                    io::ErrorKind::InvalidData,
                    "upstream sent more bytes than its Content-Length",
                ));
            }
            // Room in the write buffer first: a disk that falls behind slows the download.
            let permit = budget
                .acquire(chunk.len() as u64)
                .await
                .ok_or_else(|| FillFailure::new(io::ErrorKind::Other, "write buffer closed"))?;
            self.fill.pending().push_back((offset, chunk.clone()));
            self.fill.publish(|s| s.received = received);
            if hash_tx.send(chunk.clone()).await.is_err() {
                return Err(FillFailure::new(
                    io::ErrorKind::Other,
                    "blob hash thread died",
                ));
            }
            if write_tx.send((chunk, permit)).is_err() {
                // The writer stopped on an error: report it.
                drop(write_tx);
                return Err(match write_done.await {
                    Ok(Err(e)) => {
                        FillFailure::new(e.kind(), format!("cannot write blob temp file: {e}"))
                    }
                    _ => FillFailure::new(io::ErrorKind::Other, "blob writer thread died"),
                });
            }
        }
        drop(write_tx);
        drop(hash_tx);
        if let Some(expected) = expected_size {
            if received != expected {
                return Err(FillFailure::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("upstream blob truncated: {received} of {expected} bytes"),
                ));
            }
        }
        let actual = hash_done
            .await
            .map_err(|_| FillFailure::new(io::ErrorKind::Other, "blob hash thread died"))?
            .finish();
        if actual != self.fill.digest {
            return Err(FillFailure::new(
                io::ErrorKind::InvalidData,
                format!(
                    "upstream blob digest mismatch: expected {}, got {actual}",
                    self.fill.digest
                ),
            ));
        }
        self.fill.publish(|s| s.phase = Phase::Verified);
        Ok((received, write_done))
    }

    /// Deletes the temp file, forgets the fill (so the next request retries) and only then
    /// publishes `phase` (a failure, or `Done` for verified bytes that could not be kept), so
    /// that anyone who sees it also sees a clean store.
    fn abandon(&mut self, phase: Phase) {
        self.settled = true;
        if let Some(tmp) = self.tmp.take() {
            if let Err(e) = std::fs::remove_file(&tmp) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %tmp.display(), error = %e, "cannot delete blob temp file");
                }
            }
        }
        self.shared.forget_fill(&self.fill);
        if !matches!(phase, Phase::Done) {
            // Nobody will read these bytes: readers of a failed fill get the failure.
            self.fill.pending().clear();
        }
        self.fill.publish(|s| s.phase = phase);
    }
}

/// The hashing thread of one fill: the digest of everything received, in order.
fn hash_loop(mut rx: mpsc::Receiver<Bytes>, mut verifier: Verifier) -> Verifier {
    while let Some(chunk) = rx.blocking_recv() {
        verifier.update(&chunk);
    }
    verifier
}

/// The writing thread of one fill: writes what the queue holds, publishes the new `written`, and
/// only then drops the chunks from `pending` (and their share of the write buffer). Returns the
/// length written; stops at the first write error.
fn write_loop(
    mut rx: mpsc::UnboundedReceiver<(Bytes, Reservation)>,
    file: &File,
    fill: &Fill,
) -> io::Result<u64> {
    let mut written: u64 = 0;
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while let Ok(next) = rx.try_recv() {
            batch.push(next);
        }
        for (chunk, _) in &batch {
            let mut out = file;
            out.write_all(chunk)?;
            written += chunk.len() as u64;
        }
        fill.publish(|s| s.written = written);
        let mut pending = fill.pending();
        for _ in 0..batch.len() {
            pending.pop_front();
        }
        drop(pending);
        batch.clear();
    }
    Ok(written)
}

/// A named thread for one fill's hashing or writing (a spawn failure fails the fill).
fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), FillFailure> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map(drop)
        .map_err(|e| FillFailure::new(e.kind(), format!("cannot start {name} thread: {e}")))
}

/// Lowers the calling thread's CPU priority (a fresh thread of its own, so nothing else inherits
/// it). Best effort: without it the writer just competes with the transfer as an equal.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), WRITER_NICE) {
            tracing::debug!(error = %e, "cannot lower the blob writer's priority");
        }
    }
}

/// The store-wide bound on received bytes not yet written, in `PERMIT_BYTES` units.
pub(crate) struct WriteBuffer {
    semaphore: Arc<Semaphore>,
    permits: u32,
    /// Bytes received and not yet written, for the metrics.
    waiting: Arc<AtomicU64>,
}

/// One chunk's room in the write buffer, given back when the chunk is written (or dropped).
pub(crate) struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    waiting: Arc<AtomicU64>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.waiting.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl WriteBuffer {
    pub(crate) fn new(bytes: u64) -> Self {
        let permits = u32::try_from(bytes.div_ceil(PERMIT_BYTES).max(1)).unwrap_or(u32::MAX);
        let permits = permits.min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        WriteBuffer {
            semaphore: Arc::new(Semaphore::new(permits as usize)),
            permits,
            waiting: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Waits for room for `len` bytes; a chunk larger than the whole buffer takes all of it.
    async fn acquire(&self, len: u64) -> Option<Reservation> {
        let want = u32::try_from(len.div_ceil(PERMIT_BYTES).max(1)).unwrap_or(u32::MAX);
        let permit = self
            .semaphore
            .clone()
            .acquire_many_owned(want.min(self.permits))
            .await
            .ok()?;
        self.waiting.fetch_add(len, Ordering::Relaxed);
        Some(Reservation {
            _permit: permit,
            bytes: len,
            waiting: self.waiting.clone(),
        })
    }

    /// Bytes received by downloads and not yet in their temp files.
    pub(crate) fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }
}

impl Drop for FillTask {
    fn drop(&mut self) {
        if !self.settled {
            let failure = FillFailure::new(io::ErrorKind::Interrupted, "blob fill aborted");
            self.abandon(Phase::Failed(failure));
        }
    }
}
