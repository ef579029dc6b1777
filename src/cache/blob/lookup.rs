//! What a blob lookup hands the proxy: a committed blob (streamed from its file), a small one's
//! verified bytes (from memory), or a download in flight to follow; and the bodies each makes.

use super::body::{self, ReadVerify};
use super::catalog::PinGuard;
use super::fill_state::{Fill, FillState, Phase, ReaderGuard};
use super::origin::{BlobOrigin, BlobSource};
use super::source::FillError;
use crate::body::ResponseBody;
use crate::digest::Digest;
use crate::sendfile::Lane;
use bytes::Bytes;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

/// A committed blob, pinned while this handle (or a body made from it) lives.
#[derive(Clone)]
pub struct CachedBlob {
    pub(super) size: u64,
    pub(super) path: PathBuf,
    pub(super) pin: Arc<PinGuard>,
    /// `cache.verify_reads`: bodies check the bytes and report damage here.
    pub(super) verify: Option<Arc<ReadVerify>>,
}

impl CachedBlob {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn digest(&self) -> &Digest {
        self.pin.digest()
    }

    /// Where the blob lives on disk (for tests and tools; the proxy streams bodies).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn body(&self, range: Option<(u64, u64)>) -> ResponseBody {
        self.body_sent_by(range, None)
    }

    /// [`CachedBlob::body`], sent by the kernel on `lane` (the connection it is the answer on):
    /// only for a body that goes to the client as it is.
    pub fn body_sent_by(&self, range: Option<(u64, u64)>, lane: Option<Lane>) -> ResponseBody {
        body::cached_body(
            self.path.clone(),
            self.size,
            range,
            self.pin.clone(),
            self.verify.clone(),
            lane,
        )
    }

    /// Part `index` of a multi-range answer. With `cache.verify_reads` only the first part
    /// checks the file: the rest follow it in the same body, and a pinned file does not change,
    /// so the whole file is hashed once per answer rather than once per part.
    pub fn part_body(&self, range: (u64, u64), index: usize) -> ResponseBody {
        body::cached_body(
            self.path.clone(),
            self.size,
            Some(range),
            self.pin.clone(),
            if index == 0 {
                self.verify.clone()
            } else {
                None
            },
            None,
        )
    }
}

impl fmt::Debug for CachedBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedBlob")
            .field("digest", self.pin.digest())
            .field("size", &self.size)
            .finish()
    }
}

/// A blob being downloaded; bodies made from it follow the download.
#[derive(Clone)]
pub struct FillingBlob {
    pub(super) size: Option<u64>,
    pub(super) file: Arc<File>,
    pub(super) rx: watch::Receiver<FillState>,
    pub(super) fill: Arc<Fill>,
    /// Joined after every byte was verified (the commit still running): served wholly from
    /// local, verified data, as a committed blob would be.
    pub(super) verified: bool,
    /// This caller started the download.
    pub(super) started: bool,
    /// Where the download reads from (published with its first byte, so always known here).
    pub(super) source: BlobSource,
    /// Counts this request as following the download while it (or a body from it) lives.
    pub(super) _reader: Arc<ReaderGuard>,
}

impl FillingBlob {
    /// The source's announced length, if it sent one.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    pub fn body(&self, range: Option<(u64, u64)>) -> ResponseBody {
        body::filling_body(
            self.fill.clone(),
            self.rx.clone(),
            self.file.clone(),
            self.size,
            range,
            self._reader.clone(),
            false,
        )
    }

    /// The range `start..=end` as the download receives it, its last byte not held back for the
    /// digest check (`cache.cold_ranges = "relay"`): bytes as the source sent them, unverified.
    pub fn unverified_range(&self, range: (u64, u64)) -> ResponseBody {
        body::filling_body(
            self.fill.clone(),
            self.rx.clone(),
            self.file.clone(),
            self.size,
            Some(range),
            self._reader.clone(),
            true,
        )
    }

    /// Waits until every byte arrived and matched the digest, then answers with the length
    /// known: what a client that cannot tell a cut-off body from a whole one (HTTP/1.0 without
    /// a Content-Length) must get instead of a stream.
    pub async fn verified(&self) -> Result<FillingBlob, FillError> {
        let mut rx = self.rx.clone();
        let state = rx
            .wait_for(|s| s.is_verified() || s.is_terminal())
            .await
            .map(|s| (*s).clone())
            .map_err(|_| FillError::Failed("blob fill vanished".into()))?;
        match state.phase {
            Phase::Verified | Phase::Done => Ok(FillingBlob {
                size: Some(state.received),
                verified: true,
                ..self.clone()
            }),
            Phase::HeadFailed(e) => Err(e),
            Phase::Failed(f) => Err(FillError::Failed(f.cause())),
            Phase::Fetching | Phase::Streaming => {
                Err(FillError::Failed("blob fill ended unverified".into()))
            }
        }
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
    /// Committed, streamed from the store.
    Cached(CachedBlob),
    /// Committed and small: its verified bytes, from memory.
    Memory(Bytes),
    /// Being downloaded.
    Filling(FillingBlob),
}

impl Blob {
    /// Known unless a download's source announced no length.
    pub fn size(&self) -> Option<u64> {
        match self {
            Blob::Cached(blob) => Some(blob.size()),
            Blob::Memory(bytes) => Some(bytes.len() as u64),
            Blob::Filling(blob) => blob.size(),
        }
    }

    /// Committed in the store (rather than a download joined while in flight).
    pub fn is_cached(&self) -> bool {
        matches!(self, Blob::Cached(_) | Blob::Memory(_))
    }

    /// Served without waiting on the source: committed, or fully downloaded and verified with
    /// only the commit still running (a request right after a pull). Counted as a cache hit.
    pub fn is_local(&self) -> bool {
        match self {
            Blob::Cached(_) | Blob::Memory(_) => true,
            Blob::Filling(blob) => blob.verified,
        }
    }

    /// The blob with its length known and (if downloading) every byte verified; see
    /// [`FillingBlob::verified`].
    pub async fn verified(self) -> Result<Blob, FillError> {
        match self {
            Blob::Filling(blob) => Ok(Blob::Filling(blob.verified().await?)),
            done => Ok(done),
        }
    }

    /// How this request got it, for the proxy's log and metrics. A download this request
    /// started stays its fill even once verified; a joined one verified before the join is
    /// local bytes, a hit.
    pub fn outcome(&self) -> BlobOrigin {
        match self {
            Blob::Cached(_) | Blob::Memory(_) => BlobOrigin::Hit,
            Blob::Filling(blob) if blob.started => BlobOrigin::Filled(blob.source),
            Blob::Filling(blob) if blob.verified => BlobOrigin::Hit,
            Blob::Filling(blob) => BlobOrigin::Joined(blob.source),
        }
    }

    /// A download not verified yet: the bytes it has received so far (`None`: every byte is
    /// here and verified, or committed).
    pub fn unverified_received(&self) -> Option<u64> {
        match self {
            Blob::Filling(blob) if !blob.verified => Some(blob.fill.progress().0),
            _ => None,
        }
    }

    /// The filling blob itself (`None` when committed).
    pub fn filling(&self) -> Option<&FillingBlob> {
        match self {
            Blob::Filling(blob) => Some(blob),
            _ => None,
        }
    }

    /// This caller's request started the download (a miss, not a join).
    pub fn started_download(&self) -> bool {
        matches!(self, Blob::Filling(blob) if blob.started)
    }

    /// The `origin` the download it follows was started with; `None` once committed.
    pub fn origin(&self) -> Option<u64> {
        match self {
            Blob::Filling(blob) => Some(blob.fill.origin),
            _ => None,
        }
    }

    /// The bytes `start..=end` (`None` = whole blob) as a streaming response body. The caller
    /// has validated the range against `size()`. For `Filling` it yields bytes as they arrive;
    /// a failed fill ends the body with an `Err`, never a short or wrong success.
    pub fn body(&self, range: Option<(u64, u64)>) -> ResponseBody {
        self.body_sent_by(range, None)
    }

    /// [`Blob::body`] as the whole answer on a connection that may send files (`lane`): a
    /// committed blob's bytes then go by `sendfile`.
    pub fn body_sent_by(&self, range: Option<(u64, u64)>, lane: Option<Lane>) -> ResponseBody {
        match self {
            Blob::Cached(blob) => blob.body_sent_by(range, lane),
            Blob::Memory(bytes) => memory_body(bytes, range),
            Blob::Filling(blob) => blob.body(range),
        }
    }

    /// Part `index` (an inclusive range inside the blob) of a multi-range answer; see
    /// [`CachedBlob::part_body`].
    pub fn part_body(&self, range: (u64, u64), index: usize) -> ResponseBody {
        match self {
            Blob::Cached(blob) => blob.part_body(range, index),
            other => other.body(Some(range)),
        }
    }
}

fn memory_body(bytes: &Bytes, range: Option<(u64, u64)>) -> ResponseBody {
    match range {
        None => crate::body::full(bytes.clone()),
        // Callers only pass ranges inside the blob; anything else would end short of its
        // Content-Length, never panic.
        Some((a, b)) => match (usize::try_from(a), usize::try_from(b)) {
            (Ok(a), Ok(b)) if a <= b && b < bytes.len() => crate::body::full(bytes.slice(a..=b)),
            _ => crate::body::empty(),
        },
    }
}
