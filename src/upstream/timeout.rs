//! An idle timeout for a streamed body: if the inner body produces nothing for `timeout` while
//! someone is waiting on it, it yields an `io::Error` of kind `TimedOut` and ends.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub struct IdleTimeout<B> {
    inner: B,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// The timer runs only while a poll is waiting on the inner body, so a slow consumer (a
    /// client reading slowly) is not blamed on upstream.
    waiting: bool,
    done: bool,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        IdleTimeout {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            waiting: false,
            done: false,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes, Error = io::Error> + Unpin,
{
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if !this.waiting {
            this.waiting = true;
            this.sleep.as_mut().reset(Instant::now() + this.timeout);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                if !matches!(frame, Some(Ok(_))) {
                    this.done = true;
                }
                Poll::Ready(frame)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.done = true;
                    Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "upstream sent no data for {:.1} s",
                            this.timeout.as_secs_f64()
                        ),
                    ))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::{BodyExt, StreamBody};

    type Chunk = Result<Frame<Bytes>, io::Error>;

    /// A body that yields `first`, then stalls for `gap`, then yields "b".
    fn gappy(gap: Duration) -> impl Body<Data = Bytes, Error = io::Error> + Unpin {
        let s = stream::unfold(0u8, move |state| async move {
            match state {
                0 => Some((Ok::<_, io::Error>(Frame::data(Bytes::from("a"))), 1)),
                1 => {
                    tokio::time::sleep(gap).await;
                    Some((Ok(Frame::data(Bytes::from("b"))), 2))
                }
                _ => None,
            }
        });
        StreamBody::new(Box::pin(s) as Pin<Box<dyn futures_util::Stream<Item = Chunk> + Send>>)
    }

    #[tokio::test(start_paused = true)]
    async fn stall_longer_than_timeout_errors() {
        let mut body = IdleTimeout::new(gappy(Duration::from_secs(10)), Duration::from_secs(3));
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(body.frame().await.is_none(), "ends after the error");
    }

    #[tokio::test(start_paused = true)]
    async fn gaps_shorter_than_timeout_pass() {
        let body = IdleTimeout::new(gappy(Duration::from_secs(2)), Duration::from_secs(3));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "ab");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_consumer_is_not_a_timeout() {
        let mut body = IdleTimeout::new(gappy(Duration::from_secs(2)), Duration::from_secs(3));
        body.frame().await.unwrap().unwrap();
        // The consumer takes longer than the timeout before asking for more.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let second = body.frame().await.unwrap().unwrap();
        assert_eq!(second.into_data().unwrap(), "b");
    }
}
