//! What everyone who follows one in-flight download sees: its phase, how far it got, and the
//! received chunks still waiting for the disk. The fill task is the only writer.

use super::origin::BlobSource;
use super::source::FillError;
use crate::digest::Digest;
use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::watch;

/// Shared between the fill task (the only writer of the state) and every reader of the fill.
pub(crate) struct Fill {
    pub(crate) digest: Digest,
    tx: watch::Sender<FillState>,
    /// Received chunks not yet in the temp file, by offset, in order. The writer removes a chunk
    /// only after writing it and publishing the new `written`, so a reader that misses a chunk
    /// here finds its bytes in the file.
    pending: Mutex<VecDeque<(u64, Bytes)>>,
    /// Requests following the download (each holds a `ReaderGuard`).
    readers: AtomicUsize,
    /// Who started it, as its caller tagged it (the proxy: a hash of the route), so that a
    /// request joining it can tell its own route's download from another's.
    pub(crate) origin: u64,
    /// `[fleet]`: the replica whose fill this one streams, once the lease named it (its
    /// `peer_url`): where a cold range past this fill's bytes may be asked first.
    owner: std::sync::OnceLock<String>,
}

/// One request following a fill, counted while it lives: a download of unknown length that
/// nobody follows any more is stopped (it has no other bound than the largest blob).
pub(crate) struct ReaderGuard {
    fill: Arc<Fill>,
}

impl ReaderGuard {
    pub(crate) fn new(fill: &Arc<Fill>) -> Self {
        fill.readers.fetch_add(1, Ordering::Relaxed);
        ReaderGuard { fill: fill.clone() }
    }
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.fill.readers.fetch_sub(1, Ordering::Relaxed);
    }
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
    /// The source's announced length, known once the phase leaves `Fetching`.
    pub(crate) size: Option<u64>,
    /// The temp file, opened read+write. Readers `pread` from this descriptor, which stays valid
    /// after the rename into `blobs/` (and even after an unlink), so late joiners need no path.
    pub(crate) file: Option<Arc<File>>,
    /// Where the bytes come from, known once the phase leaves `Fetching`.
    pub(crate) source: Option<BlobSource>,
}

#[derive(Clone)]
pub(crate) enum Phase {
    /// Waiting for the source's response head.
    Fetching,
    /// Bytes are arriving; `written` grows.
    Streaming,
    /// Size and digest verified: readers may release the last byte while the rest of the write
    /// and the commit (fsync, rename) run. The fill stays registered until `Done`, so a request
    /// that comes in meanwhile joins it and reads the verified bytes instead of asking upstream.
    Verified,
    /// The blob is committed (or deliberately not kept); the open file still serves readers.
    Done,
    /// The source refused or failed before any body: every waiter gets this error.
    HeadFailed(FillError),
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
    /// The io::Error the message tells of, if any: the cause a `FillError` keeps.
    source: Option<Arc<io::Error>>,
}

impl FillFailure {
    pub(crate) fn new(kind: io::ErrorKind, message: impl Into<String>) -> Self {
        FillFailure {
            kind,
            message: Arc::from(message.into()),
            source: None,
        }
    }

    /// A failure of `source`, told in `message`.
    pub(crate) fn of(source: io::Error, message: impl Into<String>) -> Self {
        FillFailure {
            kind: source.kind(),
            message: Arc::from(message.into()),
            source: Some(Arc::new(source)),
        }
    }

    /// As a `FillError` cause: the words, and the io::Error behind them.
    pub(crate) fn cause(&self) -> super::source::Cause {
        match &self.source {
            Some(e) => super::source::Cause::with_source(self.message(), e.clone()),
            None => self.message().into(),
        }
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn kind(&self) -> io::ErrorKind {
        self.kind
    }

    pub(crate) fn to_io_error(&self) -> io::Error {
        io::Error::new(self.kind, self.message.to_string())
    }
}

impl Fill {
    pub(crate) fn new(digest: Digest, origin: u64) -> Self {
        let (tx, _) = watch::channel(FillState {
            phase: Phase::Fetching,
            written: 0,
            received: 0,
            size: None,
            file: None,
            source: None,
        });
        Fill {
            digest,
            tx,
            pending: Mutex::new(VecDeque::new()),
            readers: AtomicUsize::new(0),
            origin,
            owner: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn pending(&self) -> MutexGuard<'_, VecDeque<(u64, Bytes)>> {
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

    /// `[fleet]`: this fill streams `owner`'s fill (set once, before its first byte).
    pub(crate) fn set_owner(&self, owner: &str) {
        let _ = self.owner.set(owner.to_owned());
    }

    /// `[fleet]`: the replica whose fill this one streams, if it streams one.
    pub(crate) fn owner(&self) -> Option<&str> {
        self.owner.get().map(String::as_str)
    }

    /// The source's announced length, once its response head arrived.
    pub(crate) fn size(&self) -> Option<u64> {
        self.tx.borrow().size
    }

    pub(crate) fn is_verified(&self) -> bool {
        self.tx.borrow().is_verified()
    }

    /// Where the bytes come from, once the source's response head arrived.
    pub(crate) fn source(&self) -> Option<BlobSource> {
        self.tx.borrow().source
    }

    /// `(bytes received, announced size, source)` now.
    pub(crate) fn progress(&self) -> (u64, Option<u64>, Option<BlobSource>) {
        let state = self.tx.borrow();
        (state.received, state.size, state.source)
    }

    /// How many requests follow the download now.
    pub(crate) fn readers(&self) -> usize {
        self.readers.load(Ordering::Relaxed)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<FillState> {
        self.tx.subscribe()
    }

    // `send_modify` (unlike `send`) updates the value even when no receiver exists yet.
    pub(crate) fn publish(&self, f: impl FnOnce(&mut FillState)) {
        self.tx.send_modify(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_fill_logs_the_io_error_behind_its_words() {
        // What fill.rs logs and what a caller that joined too late gets: the words and the cause.
        let failure = FillFailure::of(
            io::Error::other("connection reset by peer"),
            "upstream body failed",
        );
        assert_eq!(
            crate::error::chain(&super::super::FillError::Failed(failure.cause())),
            "upstream body failed: connection reset by peer"
        );
    }
}
