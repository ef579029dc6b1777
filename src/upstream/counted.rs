//! An upstream response body that adds the bytes read from it to
//! `archway_upstream_received_bytes` as they arrive; everything else (frames, errors, the end,
//! the size hint) is the inner body's.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use std::pin::Pin;
use std::task::{Context, Poll};

pub struct Counted<B> {
    inner: B,
    /// `None` without metrics.
    counter: Option<Counter>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, counter: Option<Counter>) -> Self {
        Counted { inner, counter }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(counter)) = (&polled, &this.counter) {
            if let Some(data) = frame.data_ref() {
                counter.inc_by(data.len() as u64);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn counts_the_bytes_read_and_keeps_the_size_hint() {
        let counter = Counter::default();
        let body = Counted::new(Full::new(Bytes::from("12345")), Some(counter.clone()));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        assert_eq!(counter.get(), 0, "nothing read yet");
        let read = body.collect().await.unwrap().to_bytes();
        assert_eq!(read, "12345");
        assert_eq!(counter.get(), 5);

        let uncounted = Counted::new(Full::new(Bytes::from("ab")), None);
        assert_eq!(uncounted.collect().await.unwrap().to_bytes(), "ab");
    }
}
