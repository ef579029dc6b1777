//! One in-flight blob download: a spawned task that receives the source's chunks and hands each
//! to the readers (at once, from memory), a hashing thread and a writing thread, publishes its
//! progress (see `fill_state`), and commits the temp file through the catalog only once size and
//! digest are verified.
//!
//! Clients are never made to wait for the disk: a chunk is readable as soon as it arrived (from
//! memory until the writer has put it in the temp file, from the file after), and the last byte
//! follows the digest check, not the write or the fsync. The writer runs at a lower CPU priority
//! so that on a busy machine it yields to the transfer and catches up afterwards. What it has not
//! written yet is bounded by the write buffer across all downloads; past that, receiving waits
//! for the disk.

use super::bucket_tier::{BlobTier, FillSource};
use super::catalog::Catalog;
use super::failures::RecentFailures;
use super::fill_state::{Fill, FillFailure, Phase};
use super::fleet::{Fleet, FleetSource};
use super::source::{Cause, FillError, IncomingBlob, SourceError};
use super::write_buffer::{Reservation, WriteBuffer};
use crate::cache::bucket::HeldLease;
use crate::digest::Verifier;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::fs::File;
use std::future::Future;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// Chunks queued for the hashing thread: it keeps up with the network on any machine, and the
/// bound keeps a stalled hasher from queueing the whole blob.
const HASH_QUEUE: usize = 32;

/// The writer's niceness (Linux): 10 gives it about a tenth of a busy core's share, so it never
/// starves, yet a transfer competing for the same cores goes first.
const WRITER_NICE: i32 = 10;

/// How often (in received bytes) a download checks the free space left.
const FREE_SPACE_EVERY: u64 = 64 << 20;

/// What every download of one store shares: where it commits, its bounds, its memory.
pub(crate) struct FillEnv {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) buffer: WriteBuffer,
    pub(crate) failures: RecentFailures,
    /// No download grows past this (`cache.max_blob_size`).
    pub(crate) max_blob_size: u64,
    /// Downloads stop short of leaving less than this free on the disk.
    pub(crate) min_free_space: u64,
    /// `[storage]`: the bucket consulted before upstream, and given what upstream sent.
    pub(crate) tier: Option<BlobTier>,
    /// `[fleet]` (with `tier`): a bucket miss takes the lease or joins its owner.
    pub(crate) fleet: Option<Fleet>,
}

/// Starts the download as its own task, so that no client disconnect can cancel it (a download
/// of unknown length that nobody follows any more stops itself). The task carries the span of
/// the request that started it, so its log lines tie back to it.
pub(crate) fn spawn<F, Fut>(env: Arc<FillEnv>, fill: Arc<Fill>, fetch: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<IncomingBlob, SourceError>> + Send + 'static,
{
    let task = async move {
        let mut task = FillTask {
            env,
            fill,
            tmp: None,
            settled: false,
            source: FillSource::Upstream,
            lease: None,
            peer: None,
        };
        task.run(fetch).await;
    };
    // So are the archway hops of its `Via`: a loop through several archways shows in them.
    tokio::spawn(crate::via::carry(task).in_current_span());
}

/// Owns the fill's cleanup: if the task ends in any way without settling (a panic in `fetch`,
/// runtime shutdown), `Drop` fails the fill so that no waiter hangs and no temp file stays.
struct FillTask {
    env: Arc<FillEnv>,
    fill: Arc<Fill>,
    tmp: Option<PathBuf>,
    settled: bool,
    /// Where the bytes come from (the bucket's are not remembered as upstream's failures).
    source: FillSource,
    /// `[fleet]`: the blob's fill lease while this fill (and its copy to the bucket) runs;
    /// released when dropped.
    lease: Option<HeldLease>,
    /// `[fleet]`: the owner whose fill this one streams (`FillSource::Peer`).
    peer: Option<String>,
}

impl FillTask {
    async fn run<F, Fut>(&mut self, fetch: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<IncomingBlob, SourceError>>,
    {
        let digest = self.fill.digest.clone();
        // A disk already inside its reserve is known before upstream is asked, too.
        let reserve = self.env.min_free_space;
        if let Some(free) = self.env.catalog.free_space().filter(|free| *free < reserve) {
            let e = FillError::Storage(format!(
                "not enough free disk space to cache blob {digest} ({free} bytes free, less than cache.min_free_space)"
            ).into());
            tracing::warn!(%digest, free, reserve, "disk inside cache.min_free_space; blob not cached");
            self.abandon(Phase::HeadFailed(e));
            return;
        }
        // The temp file first: a cache that cannot write is known before upstream is asked, so
        // the caller's uncached answer makes the only upstream request.
        let catalog = self.env.catalog.clone();
        let created = tokio::task::spawn_blocking(move || catalog.create_tmp_file()).await;
        let (tmp, file) = match created {
            Ok(Ok((tmp, file))) => (tmp, Arc::new(file)),
            Ok(Err(e)) => {
                tracing::error!(%digest, error = %e, "cannot create blob temp file");
                let e = FillError::Storage(Cause::with_source(
                    "cannot create blob temp file",
                    Arc::new(e),
                ));
                self.abandon(Phase::HeadFailed(e));
                return;
            }
            Err(e) => {
                tracing::error!(%digest, error = %e, "temp file task failed");
                let e = FillError::Storage("cannot create blob temp file".into());
                self.abandon(Phase::HeadFailed(e));
                return;
            }
        };
        self.tmp = Some(tmp.clone());
        let fetched = match self.env.tier.clone() {
            None => fetch().await,
            Some(tier) => {
                // L1 missed: the bucket before upstream. A bucket that fails is a miss: the
                // blob comes from upstream, is served and kept in L1, and is not copied.
                let (source, fetched) = match tier.fetch(&digest).await {
                    Ok(Some(blob)) => (FillSource::Bucket, Ok(blob)),
                    Ok(None) => match &self.env.fleet {
                        None => (FillSource::Upstream, fetch().await),
                        Some(fleet) => match fleet.source(tier.bucket(), &tier, &digest).await {
                            FleetSource::Upstream(lease) => {
                                self.lease = lease;
                                (FillSource::Upstream, fetch().await)
                            }
                            FleetSource::Peer { blob, owner } => {
                                self.fill.set_owner(&owner);
                                self.peer = Some(owner);
                                (FillSource::Peer, Ok(blob))
                            }
                            FleetSource::Bucket(blob) => (FillSource::Bucket, Ok(blob)),
                        },
                    },
                    Err(e) => {
                        tracing::warn!(%digest, error = %e, "storage unavailable; blob from upstream");
                        (FillSource::UpstreamBucketDown, fetch().await)
                    }
                };
                let from_parent = fetched.as_ref().is_ok_and(|b| b.from_parent);
                tracing::debug!(%digest, source = source.blob_source(from_parent).as_str(), "blob fill source");
                tier.note_fill(source, from_parent);
                self.source = source;
                fetched
            }
        };
        let upstream = match fetched {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::debug!(%digest, error = %crate::error::chain(&e), "blob fetch failed");
                self.abandon(Phase::HeadFailed(FillError::Source(e)));
                return;
            }
        };
        if let Some(size) = upstream.size.filter(|s| *s > self.env.max_blob_size) {
            let e = FillError::TooLarge(format!(
                "blob {digest} is {size} bytes, more than the largest blob this cache takes ({} bytes, cache.max_blob_size)",
                self.env.max_blob_size
            ).into());
            tracing::warn!(%digest, size, "blob larger than cache.max_blob_size; refused");
            self.abandon(Phase::HeadFailed(e));
            return;
        }
        let needed = upstream
            .size
            .unwrap_or(0)
            .saturating_add(self.env.min_free_space);
        if let Some(free) = self.env.catalog.free_space().filter(|free| *free < needed) {
            let e = FillError::Storage(
                format!("not enough free disk space to cache blob {digest} ({free} bytes free)")
                    .into(),
            );
            tracing::warn!(%digest, free, needed, "disk too full to cache a blob");
            self.abandon(Phase::HeadFailed(e));
            return;
        }
        let size = upstream.size;
        let reader_file = file.clone();
        let source = self.source.blob_source(upstream.from_parent);
        self.fill.publish(|s| {
            s.phase = Phase::Streaming;
            s.size = size;
            s.file = Some(reader_file);
            s.source = Some(source);
        });

        let writer = match self.stream(upstream, file.clone()).await {
            Ok(writer) => writer,
            Err(failure) => {
                // The log gets the io::Error behind the words too.
                tracing::warn!(%digest, error = %crate::error::chain(&failure.cause()), "blob fill failed");
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
        // The commit takes the fill out of the in-flight table before its copy is queued: a
        // shutdown waiting for commits and then for copies must see the copy coming.
        let _copy_coming = self
            .env
            .tier
            .as_ref()
            .filter(|_| self.source == FillSource::Upstream)
            .map(|tier| tier.bucket().expect_write());
        let catalog = self.env.catalog.clone();
        let fill = self.fill.clone();
        let committed =
            tokio::task::spawn_blocking(move || catalog.commit(&fill, &tmp, &file, written)).await;
        match committed {
            Ok(Ok(())) => {
                tracing::debug!(%digest, bytes = written, "blob committed");
                self.settled = true;
                // Queued before `Done` is published, so a shutdown that waits for commits sees
                // the copy too.
                self.copy_to_bucket(written);
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

    /// After the commit: a blob upstream sent goes to the bucket too, in the background, its
    /// file pinned until then.
    fn copy_to_bucket(&mut self, size: u64) {
        let Some(tier) = &self.env.tier else { return };
        if self.source != FillSource::Upstream {
            return;
        }
        let lease = self.lease.take();
        let digest = &self.fill.digest;
        if let Some((size, pin)) = self.env.catalog.pin(digest).filter(|(s, _)| *s == size) {
            tier.upload(
                digest.clone(),
                self.env.catalog.blob_path(digest),
                size,
                pin,
                lease,
            );
        }
    }

    /// Receives the body, handing each chunk to the readers (at once, from memory), the hashing
    /// thread and the writing thread; checks length and digest at the end and publishes
    /// `Verified`. Returns the verified length and what the writer will report once every byte
    /// is in the file.
    async fn stream(
        &self,
        upstream: IncomingBlob,
        file: Arc<File>,
    ) -> Result<(u64, oneshot::Receiver<io::Result<u64>>), FillFailure> {
        let expected_size = upstream.size;
        let mut body = upstream.body;
        // Dropped on any early return (so told `false`) before the failure is published.
        let on_settled = upstream.on_settled;
        let from = self.source.name();
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

        let budget = &self.env.buffer;
        let mut received: u64 = 0;
        let mut next_space_check = FREE_SPACE_EVERY;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                let message = format!("{from} blob body failed: {e}");
                FillFailure::of(e, message)
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
                    format!("{from} sent more bytes than its Content-Length"),
                ));
            }
            if received > self.env.max_blob_size {
                return Err(FillFailure::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{from} blob grew past cache.max_blob_size ({} bytes)",
                        self.env.max_blob_size
                    ),
                ));
            }
            if expected_size.is_none() && self.fill.readers() == 0 {
                // Nothing bounds it but the largest blob, and nobody wants it any more.
                return Err(FillFailure::new(
                    io::ErrorKind::Interrupted,
                    "download of unknown length stopped: no request follows it any more",
                ));
            }
            if received >= next_space_check {
                next_space_check = received.saturating_add(FREE_SPACE_EVERY);
                let low = self
                    .env
                    .catalog
                    .free_space()
                    .is_some_and(|free| free < self.env.min_free_space);
                if low {
                    return Err(FillFailure::new(
                        io::ErrorKind::StorageFull,
                        "download stopped: the disk is nearly full",
                    ));
                }
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
                        let message = format!("cannot write blob temp file: {e}");
                        FillFailure::of(e, message)
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
                    format!("{from} blob truncated: {received} of {expected} bytes"),
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
                    "{from} blob digest mismatch: expected {}, got {actual}",
                    self.fill.digest
                ),
            ));
        }
        if let Some(settled) = on_settled {
            settled.settle(true);
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
        self.env.catalog.forget_fill(&self.fill);
        // Released: another replica may fill it now.
        self.lease = None;
        let digest = &self.fill.digest;
        if self.source == FillSource::Peer {
            // The peer's failure (wrong bytes, a stall, a reset, a dead owner) says nothing
            // about upstream's blob: not remembered as upstream's, so the retry is not refused.
            // The owner is: the retry takes its lease over rather than join it again.
            if let (Some(fleet), Some(owner)) = (&self.env.fleet, &self.peer) {
                if !matches!(phase, Phase::Done) {
                    fleet.owner_failed(digest, owner);
                }
            }
        } else if self.source == FillSource::Bucket {
            // The bucket's failure says nothing about upstream's blob: not remembered, so the
            // retry is not refused. A damaged object is deleted, so the retry goes upstream.
            if let (Phase::Failed(failure), Some(tier)) = (&phase, &self.env.tier) {
                if failure.kind() == io::ErrorKind::InvalidData {
                    tier.discard(digest);
                }
            }
        } else {
            self.remember_failure(&phase);
        }
        if !matches!(phase, Phase::Done) {
            // Nobody will read these bytes: readers of a failed fill get the failure.
            self.fill.pending().clear();
        }
        self.fill.publish(|s| s.phase = phase);
    }

    /// A failure upstream caused, remembered for a while so that it is not tried at once again.
    fn remember_failure(&self, phase: &Phase) {
        let digest = &self.fill.digest;
        match phase {
            // Another route's request may well get it: not held against them.
            Phase::HeadFailed(FillError::Source(s)) if s.is_route_specific() => {}
            Phase::HeadFailed(e @ (FillError::Source(_) | FillError::TooLarge(_))) => {
                let bad = matches!(e, FillError::TooLarge(_));
                self.env.failures.remember(digest, e.clone(), bad);
            }
            // A download stopped for archway's own reasons (nobody follows it, the disk is
            // full, shutdown) says nothing about the blob.
            Phase::Failed(failure)
                if !matches!(
                    failure.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::StorageFull
                ) =>
            {
                // Wrong bytes stay wrong; a stall or a reset may not happen again.
                let bad = failure.kind() == io::ErrorKind::InvalidData;
                let e = FillError::Failed(failure.cause());
                self.env.failures.remember(digest, e, bad);
            }
            _ => {}
        }
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

impl Drop for FillTask {
    fn drop(&mut self) {
        if !self.settled {
            let failure = FillFailure::new(io::ErrorKind::Interrupted, "blob fill aborted");
            self.abandon(Phase::Failed(failure));
        }
    }
}
