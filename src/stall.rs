//! Whether each response's client is taking its bytes (`limits.stall_timeout`).
//!
//! A response body is *waiting on its client* from the moment it hands hyper a chunk (or its
//! source wakes it with new bytes) until hyper polls it again. hyper polls a body only when the
//! bytes can move on — h2 flow control has room, or (HTTP/1.1) the socket takes them — so a body
//! that waits longer than `stall_timeout` has a client that takes nothing. A body waiting on its
//! *source* (a fill, upstream) is not the client's fault: the source has its own timeouts.
//!
//! HTTP/1.1 answers one request at a time, so the connection's supervisor closes a stalled one
//! (`connection::Tracker`). Each h2 stream runs as its own task, spawned through [`StreamExec`]:
//! a stream that stalls is dropped there, and h2 resets it (`RST_STREAM CANCEL`) — the other
//! streams of the connection go on.

use crate::connection::{RequestGuard, Tracker};
use crate::metrics::Metrics;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

const WORKING: u8 = 0;
const WAITING: u8 = 1;
const DONE: u8 = 2;

tokio::task_local! {
    /// The h2 stream task's progress, for the response body made inside it.
    static STREAM: Arc<ResponseProgress>;
}

/// One response's state: working (its handler or its body's source is busy), waiting on its
/// client (since when), or done.
pub struct ResponseProgress {
    tracker: Arc<Tracker>,
    state: AtomicU8,
    /// `Tracker` time stamp of the last chunk handed over or the last wake-up with new bytes.
    since: AtomicU64,
}

impl ResponseProgress {
    pub fn new(tracker: Arc<Tracker>) -> Arc<ResponseProgress> {
        Arc::new(ResponseProgress {
            tracker,
            state: AtomicU8::new(WORKING),
            since: AtomicU64::new(0),
        })
    }

    /// The progress of the h2 stream task this runs in (see [`StreamExec`]); `None` outside
    /// one (HTTP/1.1).
    pub fn of_current_stream() -> Option<Arc<ResponseProgress>> {
        STREAM.try_with(Arc::clone).ok()
    }

    /// Bytes are ready for the client (handed over, or the source woke the body).
    pub fn waiting(&self) {
        let now = self.tracker.stamp();
        self.since.store(now, Ordering::Relaxed);
        match self
            .state
            .compare_exchange(WORKING, WAITING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => self.tracker.waiting_changed(1),
            Err(DONE) => return,
            Err(_) => {}
        }
        self.tracker.progressed(now);
    }

    /// The body is being polled, or waits on its source.
    pub fn working(&self) {
        if self
            .state
            .compare_exchange(WAITING, WORKING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.tracker.waiting_changed(-1);
        }
    }

    /// The response ended (finished or dropped); later wake-ups change nothing.
    pub fn done(&self) {
        if self.state.swap(DONE, Ordering::AcqRel) == WAITING {
            self.tracker.waiting_changed(-1);
        }
    }

    /// When this response counts as stalled, if it is waiting on its client.
    pub fn stalls_at(&self, timeout: Duration) -> Option<Instant> {
        (self.state.load(Ordering::Acquire) == WAITING)
            .then(|| self.tracker.at_stamp(self.since.load(Ordering::Relaxed)) + timeout)
    }
}

/// One of `limits.max_requests`, held with the response body.
pub struct InFlight {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl InFlight {
    pub fn new(permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> InFlight {
        metrics.request_in_flight(1);
        InFlight {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.request_in_flight(-1);
    }
}

/// A response body that holds its request's guard (and its slot of `limits.max_requests`)
/// until it is finished or dropped, and tells its [`ResponseProgress`] whether it waits on the
/// client or on its source.
pub struct GuardedBody<B> {
    inner: B,
    progress: Arc<ResponseProgress>,
    mark: Arc<WakeMark>,
    _in_flight: Option<InFlight>,
    _guard: RequestGuard,
}

impl<B> GuardedBody<B> {
    /// The response head is handed to hyper: from now on the body waits on its client.
    pub fn new(
        inner: B,
        guard: RequestGuard,
        progress: Arc<ResponseProgress>,
        in_flight: Option<InFlight>,
    ) -> Self {
        progress.waiting();
        GuardedBody {
            inner,
            mark: WakeMark::new(progress.clone()),
            progress,
            _in_flight: in_flight,
            _guard: guard,
        }
    }
}

impl<B> Drop for GuardedBody<B> {
    fn drop(&mut self) {
        self.progress.done();
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        // Polled: the client took what it had. Until the source has more, it waits on that.
        this.progress.working();
        let waker = this.mark.waker(cx);
        let mut marked = Context::from_waker(&waker);
        let polled = Pin::new(&mut this.inner).poll_frame(&mut marked);
        match &polled {
            Poll::Ready(Some(Ok(_))) => this.progress.waiting(),
            Poll::Ready(_) => this.progress.done(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The waker a body's source gets: a wake-up means bytes are ready, so the response waits on
/// its client until hyper polls it again (hyper does not, while the client takes nothing).
pub struct WakeMark {
    progress: Arc<ResponseProgress>,
    inner: Mutex<Option<Waker>>,
}

impl WakeMark {
    pub fn new(progress: Arc<ResponseProgress>) -> Arc<WakeMark> {
        Arc::new(WakeMark {
            progress,
            inner: Mutex::new(None),
        })
    }

    /// A waker for this poll that marks the progress, then wakes hyper's task (`cx`).
    pub fn waker(self: &Arc<Self>, cx: &Context<'_>) -> Waker {
        if let Ok(mut inner) = self.inner.lock() {
            match &*inner {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *inner = Some(cx.waker().clone()),
            }
        }
        Waker::from(self.clone())
    }
}

impl Wake for WakeMark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.progress.waiting();
        let waker = self.inner.lock().ok().and_then(|w| w.clone());
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The executor hyper spawns each h2 stream with: the stream's task carries its
/// [`ResponseProgress`] and is dropped once that waits on its client for `stall_timeout`.
#[derive(Clone)]
pub struct StreamExec {
    tracker: Arc<Tracker>,
    stall_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl StreamExec {
    pub fn new(tracker: Arc<Tracker>, stall_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        StreamExec {
            tracker,
            stall_timeout,
            metrics,
        }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let progress = ResponseProgress::new(self.tracker.clone());
        let timeout = self.stall_timeout;
        let tracker = self.tracker.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let stream = crate::connection::h2_stream(STREAM.scope(progress.clone(), fut));
            if until_stalled(stream, &progress, timeout).await {
                metrics.response_stalled();
                tracker.stream_stalled(timeout);
            }
        });
    }
}

/// Runs `fut` to its end, or until `progress` has waited on its client for `timeout` (then
/// drops it and returns `true`).
async fn until_stalled<F: Future<Output = ()>>(
    fut: F,
    progress: &ResponseProgress,
    timeout: Duration,
) -> bool {
    let mut fut = std::pin::pin!(fut);
    loop {
        // Each look costs one timer: at the stall time if waiting, else a timeout from now.
        let look = progress
            .stalls_at(timeout)
            .unwrap_or_else(|| Instant::now() + timeout);
        tokio::select! {
            () = fut.as_mut() => return false,
            () = tokio::time::sleep_until(look) => {}
        }
        if progress
            .stalls_at(timeout)
            .is_some_and(|at| at <= Instant::now())
        {
            tracing::debug!("h2 stream stalled: its client took no bytes; reset");
            return true;
        }
    }
}
