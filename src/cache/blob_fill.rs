//! One in-flight blob download: a spawned task that tees upstream chunks into a temp file while
//! hashing them, publishes its progress through a `watch` channel, and commits the file into the
//! store only once size and digest are verified.

use crate::cache::blob_store::{Shared, UpstreamBlob};
use crate::digest::{Digest, Verifier};
use crate::error::ProxyError;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::fs::File;
use std::future::Future;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Upstream chunks queued for the writer thread: enough to keep the network read going while
/// the disk catches up, bounded so that a slow disk pushes back on upstream.
const WRITE_QUEUE: usize = 32;

/// Shared between the fill task (the only writer of the state) and every reader of the fill.
pub(crate) struct Fill {
    pub(crate) digest: Digest,
    tx: watch::Sender<FillState>,
}

/// What readers see of a fill. Cheap to clone (the file and failure are behind `Arc`s).
#[derive(Clone)]
pub(crate) struct FillState {
    pub(crate) phase: Phase,
    /// Bytes written to the temp file so far; readers may `pread` up to here.
    pub(crate) written: u64,
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
    /// Size and digest verified; the blob is committed (or deliberately not kept).
    Done,
    /// Upstream refused or failed before any body: every waiter gets this error.
    HeadFailed(ProxyError),
    /// The body failed (error, truncation, mismatch): every reader's body errors.
    Failed(FillFailure),
}

impl FillState {
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
            size: None,
            file: None,
        });
        Fill { digest, tx }
    }

    /// Upstream's Content-Length, once its response head arrived.
    pub(crate) fn size(&self) -> Option<u64> {
        self.tx.borrow().size
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
                self.settle_failed(Phase::HeadFailed(e));
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
                self.settle_failed(Phase::HeadFailed(e));
                return;
            }
            Err(e) => {
                tracing::error!(%digest, error = %e, "temp file task failed");
                let e = ProxyError::internal("cannot create blob temp file");
                self.settle_failed(Phase::HeadFailed(e));
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

        let written = match self.stream(upstream, file.clone()).await {
            Ok(written) => written,
            Err(failure) => {
                tracing::warn!(%digest, reason = failure.message(), "blob fill failed");
                self.settle_failed(Phase::Failed(failure));
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
            Ok(Err(e)) => {
                tracing::error!(%digest, error = %e, "cannot commit blob");
                let failure = FillFailure::new(e.kind(), "cannot store blob");
                self.settle_failed(Phase::Failed(failure));
            }
            Err(e) => {
                tracing::error!(%digest, error = %e, "blob commit task failed");
                let failure = FillFailure::new(io::ErrorKind::Other, "cannot store blob");
                self.settle_failed(Phase::Failed(failure));
            }
        }
    }

    /// Tees the body into the temp file, hashing as it goes; returns the verified length.
    ///
    /// One blocking thread per fill writes, publishes and hashes, fed through a bounded queue:
    /// the next network read overlaps this chunk's write, chunks that queued up meanwhile are
    /// written as one batch with one wake-up of the readers, and each batch is hashed after it
    /// was published (the hash is only needed at the end). This replaced a blocking task per
    /// upstream frame; a second thread for the hash, and serving not-yet-written chunks from
    /// memory, both measured slower on two cores (docs/benchmarks.md).
    async fn stream(&self, upstream: UpstreamBlob, file: Arc<File>) -> Result<u64, FillFailure> {
        let expected_size = upstream.size;
        let mut body = upstream.body;
        let (tx, rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let fill = self.fill.clone();
        let writer = tokio::task::spawn_blocking(move || write_loop(rx, &file, &fill));
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
            received = received.saturating_add(chunk.len() as u64);
            if expected_size.is_some_and(|expected| received > expected) {
                return Err(FillFailure::new(
                    io::ErrorKind::InvalidData,
                    "upstream sent more bytes than its Content-Length",
                ));
            }
            if tx.send(chunk).await.is_err() {
                break; // The writer stopped: its error is collected below.
            }
        }
        drop(tx);
        let (written, verifier) = writer
            .await
            .map_err(|e| FillFailure::new(io::ErrorKind::Other, format!("blob write task: {e}")))?
            .map_err(|e| FillFailure::new(e.kind(), format!("cannot write blob temp file: {e}")))?;
        if let Some(expected) = expected_size {
            if written != expected {
                return Err(FillFailure::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("upstream blob truncated: {written} of {expected} bytes"),
                ));
            }
        }
        let actual = verifier.finish();
        if actual != self.fill.digest {
            return Err(FillFailure::new(
                io::ErrorKind::InvalidData,
                format!(
                    "upstream blob digest mismatch: expected {}, got {actual}",
                    self.fill.digest
                ),
            ));
        }
        // The last byte is released only once the blob is committed (`Done`): a client that has
        // the whole blob can count on the next request being a cache hit, and a restart right
        // after a pull keeps it. This costs the commit's fsync (tens of milliseconds for 50 MB)
        // on a cold download's total time; see docs/benchmarks.md.
        Ok(written)
    }

    /// Deletes the temp file, forgets the fill (so the next request retries) and only then
    /// publishes the failure, so that anyone who sees it also sees a clean store.
    fn settle_failed(&mut self, phase: Phase) {
        self.settled = true;
        if let Some(tmp) = self.tmp.take() {
            if let Err(e) = std::fs::remove_file(&tmp) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %tmp.display(), error = %e, "cannot delete blob temp file");
                }
            }
        }
        self.shared.forget_fill(&self.fill);
        self.fill.publish(|s| s.phase = phase);
    }
}

/// The writer thread of one fill: writes what the queue holds, publishes it to the readers, then
/// hashes it. Returns the length written and the hash state; stops at the first write error.
fn write_loop(
    mut rx: mpsc::Receiver<Bytes>,
    file: &File,
    fill: &Fill,
) -> io::Result<(u64, Verifier)> {
    let mut verifier = Verifier::new(fill.digest.algorithm());
    let mut written: u64 = 0;
    let mut batch: Vec<Bytes> = Vec::with_capacity(WRITE_QUEUE);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < WRITE_QUEUE {
            match rx.try_recv() {
                Ok(chunk) => batch.push(chunk),
                Err(_) => break,
            }
        }
        for chunk in &batch {
            let mut out = file;
            out.write_all(chunk)?;
            written += chunk.len() as u64;
        }
        // Published only after the writes returned, so readers never `pread` past real data.
        fill.publish(|s| s.written = written);
        for chunk in batch.drain(..) {
            verifier.update(&chunk);
        }
    }
    Ok((written, verifier))
}

impl Drop for FillTask {
    fn drop(&mut self) {
        if !self.settled {
            let failure = FillFailure::new(io::ErrorKind::Interrupted, "blob fill aborted");
            self.settle_failed(Phase::Failed(failure));
        }
    }
}
