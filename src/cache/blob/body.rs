//! Response bodies that stream a blob: a committed file, or a download in progress (following
//! the fill's progress: bytes not yet written come from the fill's memory, the rest from its temp
//! file). File reads are positional (`pread`) in blocking tasks, a bounded chunk at a time, so no
//! blob is ever read whole into memory and readers never share an offset.

use super::catalog::PinGuard;
use super::fill_state::{Fill, FillState, Phase, ReaderGuard};
use super::scrub::Damage;
use crate::body::ResponseBody;
use crate::digest::{Digest, Verifier};
use crate::sendfile::Lane;
use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Bytes per read at most: large enough to amortise the blocking-task hop, small enough that a
/// response whose client stops taking bytes holds little (hyper holds one chunk a stream while
/// flow control stops it, h2 may buffer one more).
const CHUNK: u64 = 128 * 1024;
/// The largest read of an h2 stream's body. Reads the page cache holds are made in the stream's
/// own task, back to back, so each stream may hold a read more at once than through the blocking
/// pool; half a chunk keeps what a stream holds inside the stated bound (tests/connection_memory.rs:
/// 128 KiB chunks measured 8.6–9.2 MiB per connection of 32 streams against the 9 MiB stated).
const H2_CHUNK: u64 = 64 * 1024;
/// The first read: one default h2 DATA frame. Each chunk the client takes doubles the next, up
/// to `CHUNK`, so a client that takes nothing costs this much, not a full chunk.
const FIRST_CHUNK: u64 = 16 * 1024;

/// `cache.verify_reads`: where damage found by a read is counted, and how long a whole-blob
/// check vouches for the blob's range reads (`cache.verify_reads_ttl`).
pub(crate) struct ReadVerify {
    pub(crate) damage: Arc<Damage>,
    pub(crate) trust: Duration,
}

/// A committed blob. `pin` keeps it from being evicted until the body is finished or dropped.
///
/// With `verify` (`cache.verify_reads`), the bytes are checked against the digest: a whole-blob
/// read hashes as it goes and breaks off before its last chunk on a mismatch; a range read
/// checks the whole file first — unless every byte of the file matched within `trust` (its
/// download, a whole read, the scrub): a partial pull's ranges would each hash the whole blob.
/// A mismatch drops the blob; a match is remembered for the ranges that follow.
pub(crate) fn cached_body(
    path: PathBuf,
    size: u64,
    range: Option<(u64, u64)>,
    pin: Arc<PinGuard>,
    verify: Option<Arc<ReadVerify>>,
    lane: Option<Lane>,
) -> ResponseBody {
    let (start, end) = match range {
        Some((start, end)) => (start, end.checked_add(1)),
        None => (0, Some(size)),
    };
    let check = verify
        .filter(|v| range.is_none() || v.trust.is_zero() || !pin.verified_within(v.trust))
        .map(|v| {
            Box::new(ReadCheck {
                hasher: range
                    .is_none()
                    .then(|| Verifier::new(pin.digest().algorithm())),
                damage: v.damage.clone(),
                size,
            })
        });
    // Bytes that are hashed on the way cannot skip user space.
    let lane = lane
        .filter(|_| check.is_none())
        .map(|lane| Box::new(KernelSend { lane, file: None }));
    let reader = Reader {
        source: Source::Cached {
            path,
            pin,
            check,
            lane,
        },
        pos: start,
        end,
        finished: false,
        chunk: FIRST_CHUNK,
    };
    into_body(reader)
}

/// A blob being filled: bytes are released as they are written, except that the range's last
/// byte (or, with no known end, the end of the stream) waits until the fill is verified —
/// unless `unverified` (a cold range relayed, `cache.cold_ranges`): a range then ends with its
/// last byte received.
pub(crate) fn filling_body(
    fill: Arc<Fill>,
    rx: watch::Receiver<FillState>,
    file: Arc<File>,
    size: Option<u64>,
    range: Option<(u64, u64)>,
    reader: Arc<ReaderGuard>,
    unverified: bool,
) -> ResponseBody {
    let (start, end) = match range {
        Some((start, end)) => (start, end.checked_add(1)),
        None => (0, size),
    };
    let reader = Reader {
        source: Source::Filling {
            fill,
            rx,
            file,
            unverified: unverified && range.is_some(),
            _reader: reader,
        },
        pos: start,
        end,
        finished: false,
        chunk: FIRST_CHUNK,
    };
    into_body(reader)
}

fn into_body(reader: Reader) -> ResponseBody {
    let stream = futures_util::stream::unfold(reader, |mut reader| async move {
        let item = reader.next_chunk().await?;
        Some((item.map(Frame::data), reader))
    });
    StreamBody::new(stream).boxed_unsync()
}

/// How many bytes (from offset 0) a reader may release. Until the fill is verified, the last byte
/// of a known end is held back: with Content-Length framing a client that got every byte would
/// treat the response as complete, so the final byte is what makes a failed blob a broken one.
/// With no known end the stream's end itself is held back (see `Reader::next_chunk`).
pub(crate) fn releasable(written: u64, verified: bool, end: Option<u64>) -> u64 {
    match end {
        None => written,
        Some(end) if verified => written.min(end),
        Some(end) if written >= end => end.saturating_sub(1),
        Some(_) => written,
    }
}

enum Source {
    /// Opened for each read and closed after it: a response that waits on its client holds no
    /// descriptor (the pin keeps the file from eviction meanwhile).
    Cached {
        path: PathBuf,
        pin: Arc<PinGuard>,
        check: Option<Box<ReadCheck>>,
        /// Sent by the kernel (`sendfile`): the body hands out placeholders.
        lane: Option<Box<KernelSend>>,
    },
    Filling {
        fill: Arc<Fill>,
        rx: watch::Receiver<FillState>,
        file: Arc<File>,
        /// A range released before the fill is verified (its bytes as they came).
        unverified: bool,
        _reader: Arc<ReaderGuard>,
    },
}

/// A committed blob's body on a connection that sends files (`crate::sendfile`). The file is
/// opened once and held for the body's life: a plain HTTP/1.1 connection has one response at a
/// time, and a request in flight is budgeted a file (`fd_limit`).
struct KernelSend {
    lane: Lane,
    file: Option<Arc<File>>,
}

/// `cache.verify_reads` on one committed blob's body.
struct ReadCheck {
    /// A whole-blob read: the hash so far. A range read: `None` until the whole file checked.
    hasher: Option<Verifier>,
    damage: Arc<Damage>,
    size: u64,
}

struct Reader {
    source: Source,
    pos: u64,
    /// Exclusive end; `None` = the end of a blob whose size is not known yet.
    end: Option<u64>,
    finished: bool,
    /// Bytes the next read asks for (`FIRST_CHUNK`, doubling up to `CHUNK`).
    chunk: u64,
}

/// The file to read from: open already (a fill's), or (a committed blob) to be opened in the
/// same blocking task as the read, so a read costs one hop to the blocking pool.
enum FileRef {
    Open(Arc<File>),
    Path(PathBuf),
}

/// What the fill allows right now.
enum Progress {
    Read {
        file: FileRef,
        limit: u64,
    },
    /// Received bytes not written yet, straight from the fill's memory.
    Ready(Bytes),
    End,
    Fail(io::Error),
}

impl Reader {
    /// The next chunk, an error (after which the body ends), or `None` at a verified end.
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        if self.finished {
            return None;
        }
        let progress = match self.progress().await {
            Ok(progress) => progress,
            Err(e) => Progress::Fail(e),
        };
        let result = match progress {
            Progress::End => {
                self.finished = true;
                return None;
            }
            Progress::Fail(e) => Err(e),
            Progress::Ready(bytes) => Ok(bytes),
            Progress::Read { file, limit } if self.sends_files() => {
                self.placeholder(file, limit).await
            }
            Progress::Read { file, limit } => {
                let len = (limit - self.pos).min(self.chunk);
                // Asked again: the client took the last chunk.
                self.chunk = (self.chunk * 2).min(if crate::connection::in_h2_stream() {
                    H2_CHUNK
                } else {
                    CHUNK
                });
                match read_at(file, self.pos, len).await {
                    Ok(bytes) => self.checked(bytes).await,
                    Err(e) => Err(e),
                }
            }
        };
        match &result {
            Ok(bytes) => self.pos += bytes.len() as u64,
            Err(_) => self.finished = true,
        }
        Some(result)
    }

    fn sends_files(&self) -> bool {
        matches!(&self.source, Source::Cached { lane: Some(_), .. })
    }

    /// The next chunk as a placeholder the connection sends from the file (opened on the
    /// first chunk). Chunks are as large as a placeholder may be: they cost no memory.
    async fn placeholder(&mut self, file: FileRef, limit: u64) -> io::Result<Bytes> {
        let Source::Cached {
            lane: Some(send), ..
        } = &mut self.source
        else {
            return Err(io::Error::other("not a body that sends files"));
        };
        let open = match (&send.file, file) {
            (Some(open), _) => open.clone(),
            (None, FileRef::Open(open)) => open,
            (None, FileRef::Path(path)) => {
                let opened = tokio::task::spawn_blocking(move || File::open(path))
                    .await
                    .map_err(io::Error::other)??;
                Arc::new(opened)
            }
        };
        send.file = Some(open.clone());
        let len = usize::try_from(limit - self.pos)
            .unwrap_or(usize::MAX)
            .min(crate::sendfile::MAX_SEGMENT);
        Ok(send.lane.placeholder(open, self.pos, len))
    }

    /// With `verify_reads`, a committed blob's bytes pass here before they are released: the
    /// last chunk of a whole read only once the hash matched; a range only after the whole
    /// file checked out. A mismatch drops the blob and breaks the body off.
    async fn checked(&mut self, bytes: Bytes) -> io::Result<Bytes> {
        enum Verdict {
            Known(bool),
            WholeFile(PathBuf, Digest, u64),
        }
        let last = Some(self.pos + bytes.len() as u64) == self.end;
        let verdict = {
            let Source::Cached {
                path,
                pin,
                check: Some(check),
                ..
            } = &mut self.source
            else {
                return Ok(bytes);
            };
            match &mut check.hasher {
                Some(hasher) => {
                    hasher.update(&bytes);
                    check.damage.read_checked(bytes.len() as u64);
                    if !last {
                        return Ok(bytes);
                    }
                    let algorithm = pin.digest().algorithm();
                    let done = std::mem::replace(hasher, Verifier::new(algorithm));
                    Verdict::Known(done.finish() == *pin.digest())
                }
                None => Verdict::WholeFile(path.clone(), pin.digest().clone(), check.size),
            }
        };
        let ok = match verdict {
            Verdict::Known(ok) => ok,
            Verdict::WholeFile(path, digest, size) => {
                if let Source::Cached {
                    check: Some(check), ..
                } = &self.source
                {
                    check.damage.read_checked(size);
                }
                tokio::task::spawn_blocking(move || file_matches(&path, &digest, size))
                    .await
                    .map_err(io::Error::other)??
            }
        };
        if let Source::Cached { pin, check, .. } = &mut self.source {
            if ok {
                pin.report_verified();
                // A range checked once goes out as read.
                if check.as_ref().is_some_and(|c| c.hasher.is_none()) {
                    *check = None;
                }
                return Ok(bytes);
            }
            if let Some(check) = check {
                check.damage.found_on_read();
            }
            pin.report_damaged();
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "cached blob does not match its digest; dropped",
        ))
    }

    /// Waits until there is something to release (bytes, the verified end, or a failure).
    async fn progress(&mut self) -> io::Result<Progress> {
        let pos = self.pos;
        let end = self.end;
        match &mut self.source {
            Source::Cached { path, .. } => {
                let Some(end) = end else {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad range"));
                };
                if pos >= end {
                    return Ok(Progress::End);
                }
                Ok(Progress::Read {
                    file: FileRef::Path(path.clone()),
                    limit: end,
                })
            }
            Source::Filling {
                fill,
                rx,
                file,
                unverified,
                ..
            } => loop {
                let unverified = *unverified;
                // Such a range is whole with its last byte: it does not wait for the verdict.
                if unverified && end.is_some_and(|end| pos >= end) {
                    return Ok(Progress::End);
                }
                let state = rx
                    .wait_for(|s| {
                        s.is_verified()
                            || s.is_terminal()
                            || releasable(s.received, unverified, end) > pos
                    })
                    .await
                    .map(|s| (*s).clone())
                    .map_err(|_| io::Error::other("blob fill vanished"))?;
                let done = match &state.phase {
                    Phase::Verified | Phase::Done => true,
                    Phase::Failed(failure) => return Err(failure.to_io_error()),
                    Phase::HeadFailed(e) => return Err(io::Error::other(e.to_string())),
                    Phase::Fetching | Phase::Streaming => false,
                };
                let limit = releasable(state.received, done || unverified, end);
                if pos < limit {
                    if pos >= state.written {
                        if let Some(bytes) = fill.pending_at(pos, limit - pos) {
                            return Ok(Progress::Ready(bytes));
                        }
                        // Written since the state was read: the file has it now.
                    }
                    return Ok(Progress::Read {
                        file: FileRef::Open(file.clone()),
                        limit,
                    });
                }
                if !done {
                    continue; // Not reachable: the wait above saw new bytes or a verdict.
                }
                // Only reachable when verified: nothing more will ever arrive.
                return match end {
                    Some(end) if pos < end => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "range extends past the end of the blob",
                    )),
                    _ => Ok(Progress::End),
                };
            },
        }
    }
}

/// Whether the file holds exactly `size` bytes hashing to `digest`. Blocking.
fn file_matches(path: &std::path::Path, digest: &Digest, size: u64) -> io::Result<bool> {
    use std::io::Read;
    let mut file = File::open(path)?;
    let mut verifier = Verifier::new(digest.algorithm());
    let mut buf = vec![0u8; CHUNK as usize];
    let mut read: u64 = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        verifier.update(buf.get(..n).unwrap_or_default());
        read += n as u64;
    }
    Ok(read == size && verifier.finish() == *digest)
}

/// Reads up to `len` bytes at `offset` (opening the file first if need be, and closing it after);
/// a file shorter than promised is an error, never a short success.
///
/// Bytes in the page cache are read here, in the body's task (`preadv2` with `RWF_NOWAIT`, which
/// never waits for the disk): the hop to the blocking pool costs more than such a read (task
/// switches and wake-ups were the largest part of a cached read's CPU). The rest waits for the
/// disk in the blocking pool.
async fn read_at(file: FileRef, offset: u64, len: u64) -> io::Result<Bytes> {
    if let Some(read) = read_cached_pages(&file, offset, len) {
        return read;
    }
    tokio::task::spawn_blocking(move || {
        let file = match file {
            FileRef::Open(file) => file,
            FileRef::Path(path) => Arc::new(File::open(path)?),
        };
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            let Some(rest) = buf.get_mut(filled..) else {
                break;
            };
            let n = pread(&file, rest, offset + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob file is shorter than expected",
            ));
        }
        buf.truncate(filled);
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

/// What of `len` bytes at `offset` the page cache holds, read without waiting for the disk;
/// `None` when none of it is there (or the file system cannot tell).
#[cfg(target_os = "linux")]
fn read_cached_pages(file: &FileRef, offset: u64, len: u64) -> Option<io::Result<Bytes>> {
    use rustix::io::{preadv2, Errno, ReadWriteFlags};
    let len = usize::try_from(len).ok()?;
    let opened;
    let file = match file {
        FileRef::Open(file) => file.as_ref(),
        FileRef::Path(path) => {
            opened = File::open(path).ok()?;
            &opened
        }
    };
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let rest = buf.get_mut(filled..)?;
        match preadv2(
            file,
            &mut [io::IoSliceMut::new(rest)],
            offset + filled as u64,
            ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::INTR) => continue,
            // Not in the page cache (AGAIN), or no RWF_NOWAIT here: the blocking pool reads.
            Err(_) => break,
        }
    }
    if filled == 0 {
        return None;
    }
    buf.truncate(filled);
    Some(Ok(Bytes::from(buf)))
}

#[cfg(not(target_os = "linux"))]
fn read_cached_pages(_: &FileRef, _: u64, _: u64) -> Option<io::Result<Bytes>> {
    None
}

#[cfg(unix)]
fn pread(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn pread(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

#[cfg(test)]
mod tests {
    use super::{read_at, releasable, FileRef};

    /// A read of bytes in the page cache (a file just written) is served in the task, whole; a
    /// read past the end is the blocking path's error, never a short success.
    #[tokio::test]
    async fn reads_from_the_page_cache_and_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        #[cfg(target_os = "linux")]
        {
            let now = super::read_cached_pages(&FileRef::Path(path.clone()), 1000, 200_000)
                .expect("in the page cache")
                .unwrap();
            assert_eq!(&now[..], &bytes[1000..201_000]);
            assert!(super::read_cached_pages(&FileRef::Path(path.clone()), 400_000, 10).is_none());
        }
        let got = read_at(FileRef::Path(path.clone()), 299_990, 100)
            .await
            .unwrap();
        assert_eq!(&got[..], &bytes[299_990..]);
        let err = read_at(FileRef::Path(path), 300_000, 10).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn releasable_table() {
        // (written, verified, end, expected)
        let cases: &[(u64, bool, Option<u64>, u64)] = &[
            // Unknown end: everything written (the stream end itself waits for verification).
            (0, false, None, 0),
            (10, false, None, 10),
            (10, true, None, 10),
            // Known end, still filling: the last byte is held back.
            (5, false, Some(10), 5),
            (9, false, Some(10), 9),
            (10, false, Some(10), 9),
            (50, false, Some(10), 9),
            // Verified: up to the end.
            (10, true, Some(10), 10),
            (50, true, Some(10), 10),
            // Verified but shorter than the range: only what exists.
            (4, true, Some(10), 4),
            // Empty blob / empty remainder.
            (0, false, Some(0), 0),
            (0, true, Some(0), 0),
            // A one-byte range is released only once verified.
            (1, false, Some(1), 0),
            (1, true, Some(1), 1),
        ];
        for &(written, verified, end, expected) in cases {
            assert_eq!(
                releasable(written, verified, end),
                expected,
                "written={written} verified={verified} end={end:?}"
            );
        }
    }
}
