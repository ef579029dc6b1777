//! One client connection's limits: a header-read timeout (from the first byte of a request, or
//! from accept, until the request is dispatched), an idle timeout (no request in flight), a stall
//! timeout (every response in flight waits on a client that takes no bytes; see `stall`), and
//! its part in shutdown (an idle connection is closed at once, a busy one finishes its requests).
//!
//! hyper's own header timeout does not cover a connection that never sends a byte (the protocol
//! sniffing of `auto` has no timer) nor the wait between keep-alive requests, so each connection
//! runs under a supervisor that sees its bytes (through [`TrackedIo`]) and its requests (through
//! [`RequestGuard`], held by the response body).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

tokio::task_local! {
    /// Set in the task of each h2 stream (`stall::StreamExec` spawns them): a response body
    /// made there holds its reads smaller (`cache/blob/body.rs`).
    static H2_STREAM: ();
}

/// Runs `fut` as an h2 stream's task: [`in_h2_stream`] is true inside it.
pub fn h2_stream<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    H2_STREAM.scope((), fut)
}

/// Whether this runs in an h2 stream's task (HTTP/1.1 answers run in the connection's task).
pub fn in_h2_stream() -> bool {
    H2_STREAM.try_with(|_| ()).is_ok()
}

/// How long a connection may take to send a request's head, and stay idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// No response of the connection took a byte for this long while all of them waited on it.
    pub stall_timeout: Duration,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client or the protocol closed it (or it failed).
    Closed,
    /// A request's head did not arrive within `header_read_timeout`.
    HeaderTimeout,
    /// No request for `idle_timeout`.
    IdleTimeout,
    /// Its responses waited on the client for `stall_timeout` without a byte taken.
    Stall,
    /// Shutdown closed it while idle.
    Shutdown,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Closed => "closed",
            Ended::HeaderTimeout => "header_timeout",
            Ended::IdleTimeout => "idle_timeout",
            Ended::Stall => "stall",
            Ended::Shutdown => "shutdown",
        }
    }
}

/// What a connection's bytes and requests tell its supervisor. Times are nanoseconds since the
/// connection was accepted, plus one (0 = unset).
pub struct Tracker {
    opened: Instant,
    active: AtomicUsize,
    /// A request's head started arriving while none was in flight.
    reading_since: AtomicU64,
    /// The last request ended.
    idle_since: AtomicU64,
    /// HTTP/2: bytes between requests are pings and settings, not a request's head.
    h2: AtomicBool,
    /// Responses waiting on the client to take their bytes (`stall`).
    waiting: AtomicIsize,
    /// The last time any response handed over bytes or got new ones ready.
    progress_at: AtomicU64,
    /// The last time the socket took a write of a body's size (not a control frame): what the
    /// client let through. A body handing a chunk to h2 is not that: when one stalled stream is
    /// reset, h2 gives its buffer room to the next, whose body then hands over a chunk that no
    /// window lets out.
    sent_at: AtomicU64,
    /// An h2 stream stalled and nothing else moved for `stall_timeout`: close the connection.
    stalled: AtomicBool,
    /// Wakes the supervisor when `stalled` is set.
    wake: Notify,
    /// Responses that still waited on the client when the connection was closed as stalled.
    stalled_at_close: AtomicUsize,
}

impl Tracker {
    /// A new connection waits for its first request's head from now.
    pub fn new() -> Arc<Tracker> {
        let tracker = Tracker {
            opened: Instant::now(),
            active: AtomicUsize::new(0),
            reading_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            waiting: AtomicIsize::new(0),
            progress_at: AtomicU64::new(0),
            sent_at: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            wake: Notify::new(),
            stalled_at_close: AtomicUsize::new(0),
        };
        tracker
            .reading_since
            .store(tracker.now(), Ordering::Relaxed);
        Arc::new(tracker)
    }

    /// Now, as a time stamp of this connection (see `stall`).
    pub(crate) fn stamp(&self) -> u64 {
        self.now()
    }

    /// A time stamp as an instant.
    pub(crate) fn at_stamp(&self, stamp: u64) -> Instant {
        self.at(stamp)
    }

    pub(crate) fn waiting_changed(&self, delta: isize) {
        self.waiting.fetch_add(delta, Ordering::AcqRel);
    }

    pub(crate) fn progressed(&self, stamp: u64) {
        self.progress_at.fetch_max(stamp, Ordering::Relaxed);
    }

    /// An h2 stream was dropped as stalled: if no other stream moved for `timeout` either, the
    /// connection goes too.
    pub(crate) fn stream_stalled(&self, timeout: Duration) {
        let last = self.at(self.sent_at.load(Ordering::Relaxed).max(1));
        if last + timeout <= Instant::now() {
            self.stalled.store(true, Ordering::Release);
            self.wake.notify_one();
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn at(&self, stamp: u64) -> Instant {
        self.opened + Duration::from_nanos(stamp.saturating_sub(1))
    }

    /// The socket took `n` bytes. Control frames (RST_STREAM, PING and SETTINGS acks,
    /// WINDOW_UPDATE: at most a few dozen bytes, with TLS too) are no sign of a client taking a
    /// body.
    fn bytes_sent(&self, n: usize) {
        const BODY_SIZED: usize = 256;
        if n >= BODY_SIZED {
            self.sent_at.fetch_max(self.now(), Ordering::Relaxed);
        }
    }

    fn bytes_read(&self) {
        if self.active.load(Ordering::Relaxed) == 0
            && !self.h2.load(Ordering::Relaxed)
            && self.reading_since.load(Ordering::Relaxed) == 0
        {
            self.reading_since.store(self.now(), Ordering::Relaxed);
        }
    }

    /// A request was dispatched; the returned guard ends it when dropped (with the response
    /// body).
    pub fn request_started(self: &Arc<Self>, version: http::Version) -> RequestGuard {
        if version == http::Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.active.fetch_add(1, Ordering::Relaxed);
        self.reading_since.store(0, Ordering::Relaxed);
        RequestGuard {
            tracker: self.clone(),
        }
    }

    fn request_ended(&self) {
        if self.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(self.now(), Ordering::Relaxed);
        }
    }

    /// How many responses went with the connection when it was closed as stalled.
    pub fn stalled_at_close(&self) -> usize {
        self.stalled_at_close.load(Ordering::Relaxed)
    }

    fn is_idle(&self) -> bool {
        self.active.load(Ordering::Relaxed) == 0
    }

    /// When the connection must be closed if nothing changes, and why.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, Ended)> {
        if self.stalled.load(Ordering::Acquire) {
            // Already due: a time taken before the caller's `now` (a fresh `Instant::now()`
            // here would be later than it, never due, and the supervisor would spin).
            return Some((self.opened, Ended::Stall));
        }
        let active = self.active.load(Ordering::Acquire);
        if active > 0 {
            // Every response in flight waits on the client: it has that long to take a byte.
            let waiting = usize::try_from(self.waiting.load(Ordering::Acquire)).unwrap_or(0);
            if waiting < active {
                return None;
            }
            let last = self.progress_at.load(Ordering::Relaxed).max(1);
            return Some((self.at(last) + limits.stall_timeout, Ended::Stall));
        }
        match self.reading_since.load(Ordering::Relaxed) {
            0 => {
                let since = self.idle_since.load(Ordering::Relaxed).max(1);
                Some((self.at(since) + limits.idle_timeout, Ended::IdleTimeout))
            }
            since => Some((
                self.at(since) + limits.header_read_timeout,
                Ended::HeaderTimeout,
            )),
        }
    }
}

/// One request in flight on a connection; dropped with its response body.
pub struct RequestGuard {
    tracker: Arc<Tracker>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.tracker.request_ended();
    }
}

/// The connection's socket (or TLS stream), telling the tracker when bytes arrive.
pub struct TrackedIo<S> {
    inner: S,
    tracker: Arc<Tracker>,
}

impl<S> TrackedIo<S> {
    pub fn new(inner: S, tracker: Arc<Tracker>) -> Self {
        TrackedIo { inner, tracker }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.tracker.bytes_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.tracker.bytes_sent(n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.tracker.bytes_sent(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Drives `conn` to its end under the limits: closes it (by dropping it) when a request's head
/// or an idle spell runs past its timeout, or when shutdown comes while it is idle; on shutdown
/// with requests in flight, asks it (`shut_down`) to finish them and close.
///
/// Requests and bytes do not wake the supervisor (that would cost every request a wake-up and a
/// timer): it looks at the tracker at its deadline, and at least every quarter of the shorter
/// timeout, so a timeout fires at most that much late.
pub async fn supervise<C, T, E>(
    conn: C,
    shut_down: impl Fn(Pin<&mut C>),
    tracker: &Tracker,
    limits: &ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) -> (Ended, Option<E>)
where
    C: Future<Output = Result<T, E>>,
{
    let mut conn = std::pin::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping && tracker.is_idle() {
        return (Ended::Shutdown, None);
    }
    let tick = (limits
        .header_read_timeout
        .min(limits.idle_timeout)
        .min(limits.stall_timeout)
        / 4)
    .clamp(Duration::from_millis(20), Duration::from_secs(5));
    loop {
        let now = Instant::now();
        let wake = match tracker.deadline(limits) {
            Some((at, why)) if at <= now => {
                if why == Ended::Stall {
                    let waiting = tracker.waiting.load(Ordering::Acquire).max(1);
                    tracker
                        .stalled_at_close
                        .store(usize::try_from(waiting).unwrap_or(1), Ordering::Relaxed);
                }
                return (why, None);
            }
            Some((at, _)) => at.min(now + tick),
            None => now + tick,
        };
        tokio::select! {
            result = conn.as_mut() => return (Ended::Closed, result.err()),
            _ = tokio::time::sleep_until(wake) => {}
            _ = tracker.wake.notified() => {}
            changed = stop.changed(), if !stopping => {
                if changed.is_err() || *stop.borrow() {
                    stopping = true;
                    if tracker.is_idle() {
                        return (Ended::Shutdown, None);
                    }
                    shut_down(conn.as_mut());
                }
            }
        }
        if stopping && tracker.is_idle() {
            return (Ended::Shutdown, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnectionLimits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        stall_timeout: Duration::from_secs(30),
    };

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_bytes_and_requests() {
        let t = Tracker::new();
        let opened = Instant::now();
        // A new connection waits for its first request's head.
        assert_eq!(
            t.deadline(&LIMITS),
            Some((opened + LIMITS.header_read_timeout, Ended::HeaderTimeout))
        );
        // Bytes of that head change nothing: the head is timed from accept.
        tokio::time::advance(Duration::from_secs(3)).await;
        t.bytes_read();
        assert_eq!(
            t.deadline(&LIMITS).unwrap().0,
            opened + LIMITS.header_read_timeout
        );
        // A request in flight has no deadline.
        let guard = t.request_started(http::Version::HTTP_11);
        assert_eq!(t.deadline(&LIMITS), None);
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(guard);
        let ended = Instant::now();
        assert_eq!(
            t.deadline(&LIMITS),
            Some((ended + LIMITS.idle_timeout, Ended::IdleTimeout))
        );
        // The next request's first byte starts its head's clock.
        tokio::time::advance(Duration::from_secs(5)).await;
        t.bytes_read();
        assert_eq!(
            t.deadline(&LIMITS),
            Some((
                Instant::now() + LIMITS.header_read_timeout,
                Ended::HeaderTimeout
            ))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn http2_pings_between_requests_are_not_a_head() {
        let t = Tracker::new();
        drop(t.request_started(http::Version::HTTP_2));
        let ended = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        t.bytes_read();
        assert_eq!(
            t.deadline(&LIMITS),
            Some((ended + LIMITS.idle_timeout, Ended::IdleTimeout))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn supervisor_closes_silent_and_idle_connections_and_stops_idle_ones() {
        let (_stop_tx, stop) = watch::channel(false);
        // Never resolves: a connection whose client sends nothing.
        let silent = std::future::pending::<Result<(), ()>>();
        let t = Tracker::new();
        let (why, _) = supervise(silent, |_| {}, &t, &LIMITS, stop.clone()).await;
        assert_eq!(why, Ended::HeaderTimeout);

        let t = Tracker::new();
        drop(t.request_started(http::Version::HTTP_11));
        let idle = std::future::pending::<Result<(), ()>>();
        let (why, _) = supervise(idle, |_| {}, &t, &LIMITS, stop.clone()).await;
        assert_eq!(why, Ended::IdleTimeout);

        // Shutdown closes an idle connection at once, and lets a busy one finish.
        let (stop_tx, stop) = watch::channel(false);
        let t = Tracker::new();
        let guard = t.request_started(http::Version::HTTP_11);
        let asked = std::sync::atomic::AtomicBool::new(false);
        let busy = async {
            tokio::time::sleep(Duration::from_secs(200)).await;
            Ok::<(), ()>(())
        };
        let run = supervise(
            busy,
            |_| asked.store(true, Ordering::Relaxed),
            &t,
            &LIMITS,
            stop,
        );
        let stopper = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop_tx.send(true).unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(guard);
        };
        let ((why, _), ()) = tokio::join!(run, stopper);
        assert_eq!(why, Ended::Shutdown);
        assert!(
            asked.load(Ordering::Relaxed),
            "asked to finish its requests"
        );
    }
}
