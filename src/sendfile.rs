//! Cached blob bodies sent by the kernel: on a plain HTTP/1.1 connection the bytes of a committed
//! blob go from the page cache to the socket with `sendfile(2)`, never through a buffer here.
//!
//! hyper writes every response: the head with its own encoder, then each body chunk, as one
//! vectored write of the chunks it has queued (its writev strategy, which `server` asks for
//! explicitly: it keeps each chunk as handed over, never copied). A blob body that may use the
//! connection's [`Lane`] hands hyper *placeholder* chunks instead of bytes: slices of one shared,
//! never-written region of zeros, each registered on the lane with the file and offset it stands
//! for. The connection's [`LaneIo`] recognises a placeholder by its address, and writes the file's
//! bytes in its place with `sendfile`, as many as the socket takes, reporting that count to hyper
//! as written. The body's framing (Content-Length, ranges) and everything hyper does around it
//! are unchanged.
//!
//! A placeholder is never sent as bytes: one that is not the next registered segment, in order
//! and at the offset hyper has reached, fails the write, and hyper closes the connection. Only a
//! body whose bytes go straight to the client gets a lane (not a conversion's source, not a
//! multipart part, never h2 or TLS), and only a body with nothing to check on the way
//! (`cache.verify_reads` hashing a whole read takes the reading path).
//!
//! No `unsafe`: rustix wraps `sendfile`, tokio's readiness API drives it on the non-blocking
//! socket. A page-cache miss makes `sendfile` wait for the disk in the connection's task, as
//! nginx's `sendfile` does without thread pools (docs/benchmarks.md, "Cached blobs").

use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The most one placeholder stands for: a chunk per body poll, `sendfile` writes as much of it as
/// the socket takes.
pub const MAX_SEGMENT: usize = 1024 * 1024;

/// The shared placeholder region. Segments are laid out in it round-robin; it is many times what
/// hyper can have queued (its write buffer's limit plus one chunk), so a segment still queued is
/// never overlaid by a new one. Allocated zeroed and never written: its pages are never touched.
const REGION: usize = 64 * MAX_SEGMENT;

/// Segments a lane keeps at most: far more than hyper queues (16 buffers); a lane that holds more
/// has bodies that registered chunks hyper never wrote, and the oldest are dropped.
const MAX_SEGMENTS: usize = 64;

fn region() -> &'static Bytes {
    static REGION_BYTES: OnceLock<Bytes> = OnceLock::new();
    REGION_BYTES.get_or_init(|| Bytes::from(vec![0u8; REGION]))
}

/// Where `buf` lies in the placeholder region, if it does.
fn region_offset(buf: &[u8]) -> Option<usize> {
    let base = region().as_ptr() as usize;
    let at = (buf.as_ptr() as usize).checked_sub(base)?;
    (!buf.is_empty() && at < REGION && REGION - at >= buf.len()).then_some(at)
}

/// One connection's queue of placeholders waiting to be written, in the order hyper writes them.
#[derive(Clone, Default)]
pub struct Lane(Arc<Mutex<LaneState>>);

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct LaneState {
    segments: VecDeque<Segment>,
    /// Where the next segment starts in the region.
    cursor: usize,
}

struct Segment {
    file: Arc<File>,
    /// The file offset of the segment's first byte.
    offset: u64,
    /// The segment's place in the region.
    start: usize,
    len: usize,
    /// Bytes written so far.
    sent: usize,
}

impl Segment {
    fn covers(&self, at: usize) -> bool {
        at >= self.start && at < self.start + self.len
    }

    fn overlaps(&self, start: usize, len: usize) -> bool {
        start < self.start + self.len && self.start < start + len
    }
}

impl Lane {
    pub fn new() -> Lane {
        Lane::default()
    }

    /// A placeholder chunk standing for `len` bytes (at most [`MAX_SEGMENT`]) of `file` from
    /// `offset`. The caller hands it to hyper as the body's next chunk, unchanged.
    pub fn placeholder(&self, file: Arc<File>, offset: u64, len: usize) -> Bytes {
        let len = len.clamp(1, MAX_SEGMENT);
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if state.cursor + len > REGION {
            state.cursor = 0;
        }
        let start = state.cursor;
        state.cursor += len;
        // Whatever lay here before was never written (see `REGION`): forget it.
        state.segments.retain(|s| !s.overlaps(start, len));
        if state.segments.len() >= MAX_SEGMENTS {
            state.segments.pop_front();
        }
        state.segments.push_back(Segment {
            file,
            offset,
            start,
            len,
            sent: 0,
        });
        region().slice(start..start + len)
    }

    /// The file, file offset and length to send for the placeholder bytes at `at` (`len` of
    /// them): they must be what is left of a registered segment, from where it was left off.
    /// Segments before it were never written (their bodies gone) and are dropped.
    fn next_send(&self, at: usize, len: usize) -> io::Result<(Arc<File>, u64)> {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = state.segments.iter().position(|s| s.covers(at)) else {
            return Err(out_of_step());
        };
        state.segments.drain(..i);
        match state.segments.front() {
            Some(s) if s.start + s.sent == at && s.len - s.sent == len => {
                Ok((s.file.clone(), s.offset + s.sent as u64))
            }
            _ => Err(out_of_step()),
        }
    }

    fn sent(&self, n: usize) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = state.segments.front_mut() {
            s.sent += n;
            if s.sent >= s.len {
                state.segments.pop_front();
            }
        }
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.0.lock().map(|s| s.segments.len()).unwrap_or(0)
    }
}

fn out_of_step() -> io::Error {
    io::Error::other("a sendfile placeholder is out of step with its lane")
}

/// A plain TCP connection whose writes send a [`Lane`]'s placeholders from their files.
pub struct LaneIo {
    stream: TcpStream,
    lane: Lane,
    /// Called with each count of bytes `sendfile` wrote (a response moving on).
    on_sent: Box<dyn Fn(usize) + Send + Sync>,
}

impl LaneIo {
    pub fn new(
        stream: TcpStream,
        lane: Lane,
        on_sent: impl Fn(usize) + Send + Sync + 'static,
    ) -> Self {
        LaneIo {
            stream,
            lane,
            on_sent: Box::new(on_sent),
        }
    }

    /// Sends the placeholder `buf` (at `at` in the region) from its file.
    fn poll_send(&self, cx: &mut Context<'_>, at: usize, len: usize) -> Poll<io::Result<usize>> {
        let (file, offset) = self.lane.next_send(at, len)?;
        loop {
            std::task::ready!(self.stream.poll_write_ready(cx))?;
            let sent = self.stream.try_io(Interest::WRITABLE, || {
                let mut from = offset;
                send_file(&self.stream, &file, &mut from, len)
            });
            match sent {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob file is shorter than expected",
                    )))
                }
                Ok(n) => {
                    self.lane.sent(n);
                    (self.on_sent)(n);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn send_file(socket: &TcpStream, file: &File, offset: &mut u64, len: usize) -> io::Result<usize> {
    rustix::fs::sendfile(socket, file, Some(offset), len).map_err(io::Error::from)
}

/// Elsewhere no lane is handed out (`server`), so no placeholder reaches here.
#[cfg(not(target_os = "linux"))]
fn send_file(_: &TcpStream, _: &File, _: &mut u64, _: usize) -> io::Result<usize> {
    Err(io::Error::other("sendfile is only used on Linux"))
}

/// Whether this platform sends placeholders (the server hands out lanes only then).
pub const SUPPORTED: bool = cfg!(target_os = "linux");

impl AsyncRead for LaneIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LaneIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match region_offset(buf) {
            Some(at) => self.poll_send(cx, at, buf.len()),
            None => Pin::new(&mut self.stream).poll_write(cx, buf),
        }
    }

    /// The real bytes up to the first placeholder in one vectored write; a placeholder first,
    /// by `sendfile`. hyper calls again for the rest.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match bufs.iter().position(|b| region_offset(b).is_some()) {
            None => Pin::new(&mut self.stream).poll_write_vectored(cx, bufs),
            Some(i) => match (
                bufs.get(..i),
                bufs.get(i)
                    .and_then(|b| region_offset(b).zip(Some(b.len()))),
            ) {
                (Some(real), _) if !real.is_empty() => {
                    Pin::new(&mut self.stream).poll_write_vectored(cx, real)
                }
                (_, Some((at, len))) => self.poll_send(cx, at, len),
                _ => Poll::Ready(Err(out_of_step())),
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn file_with(bytes: &[u8]) -> Arc<File> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        Arc::new(f)
    }

    async fn pair(lane: Lane) -> (LaneIo, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (
            LaneIo::new(accepted.unwrap().0, lane, |_| {}),
            client.unwrap(),
        )
    }

    #[test]
    fn placeholders_are_recognised_by_address_only() {
        let lane = Lane::new();
        let p = lane.placeholder(file_with(b"abc"), 0, 3);
        assert_eq!(region_offset(&p), Some(0));
        assert_eq!(region_offset(&p[1..]), Some(1));
        // The same bytes elsewhere are bytes.
        assert_eq!(region_offset(&[0u8, 0, 0]), None);
        assert_eq!(region_offset(&[]), None);
    }

    #[tokio::test]
    async fn a_placeholder_is_sent_as_its_file_bytes_between_real_bytes() {
        let lane = Lane::new();
        let (mut io, mut client) = pair(lane.clone()).await;
        let file = file_with(b"0123456789");
        let p = lane.placeholder(file, 2, 5);
        let bufs = [
            io::IoSlice::new(b"head:"),
            io::IoSlice::new(&p),
            io::IoSlice::new(b":tail"),
        ];
        // hyper's loop: write, advance, write again.
        let mut left: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
        while !left.is_empty() {
            let slices: Vec<io::IoSlice<'_>> = left.iter().map(|b| io::IoSlice::new(b)).collect();
            let mut n = io.write_vectored(&slices).await.unwrap();
            while n > 0 {
                let first = left[0];
                if n >= first.len() {
                    n -= first.len();
                    left.remove(0);
                } else {
                    left[0] = &first[n..];
                    n = 0;
                }
            }
        }
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"head:23456:tail");
        assert_eq!(lane.queued(), 0);
    }

    #[tokio::test]
    async fn a_placeholder_out_of_step_fails_and_sends_nothing() {
        let lane = Lane::new();
        let (mut io, mut client) = pair(lane.clone()).await;
        let first = lane.placeholder(file_with(b"aaaa"), 0, 4);
        let second = lane.placeholder(file_with(b"bbbb"), 0, 4);
        // Partly written from the middle: not where the segment was left off.
        assert!(io.write(&second[1..]).await.is_err());
        // Longer than what is left of it.
        let unregistered = region().slice(REGION - 8..REGION);
        assert!(io.write(&unregistered).await.is_err());
        drop(first);
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty(), "nothing of a placeholder went out: {got:?}");
    }

    #[tokio::test]
    async fn a_segment_never_written_is_skipped_by_the_next() {
        let lane = Lane::new();
        let (mut io, mut client) = pair(lane.clone()).await;
        let _unwritten = lane.placeholder(file_with(b"xxxx"), 0, 4);
        let next = lane.placeholder(file_with(b"yyyy"), 0, 4);
        io.write_all(&next).await.unwrap();
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"yyyy");
        assert_eq!(lane.queued(), 0);
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_segment_is_an_error() {
        let lane = Lane::new();
        let (mut io, _client) = pair(lane.clone()).await;
        let p = lane.placeholder(file_with(b"ab"), 0, 4);
        // Two bytes go, then the file ends.
        assert_eq!(io.write(&p).await.unwrap(), 2);
        let err = io.write(&p[2..]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_wrapped_region_forgets_what_lay_there() {
        let lane = Lane::new();
        let file = file_with(b"z");
        for _ in 0..(REGION / MAX_SEGMENT) + 3 {
            let _ = lane.placeholder(file.clone(), 0, MAX_SEGMENT);
        }
        assert!(lane.queued() <= REGION / MAX_SEGMENT);
        let state = lane.0.lock().unwrap();
        for (i, a) in state.segments.iter().enumerate() {
            for b in state.segments.iter().skip(i + 1) {
                assert!(!a.overlaps(b.start, b.len), "segments overlap");
            }
        }
    }
}
