//! A `multipart/byteranges` response body, streamed: each part's headers, then that range of
//! the blob read a bounded chunk at a time (the same readers as a single range), then the
//! close delimiter. One part's reader exists at a time.

use crate::body::ResponseBody;
use crate::byte_ranges::Multipart;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use std::io;

/// The body for `ranges` framed by `layout`; `part(range, index)` makes each range's body.
pub(crate) fn body<F>(layout: Multipart, ranges: Vec<(u64, u64)>, part: F) -> ResponseBody
where
    F: Fn((u64, u64), usize) -> ResponseBody + Send + 'static,
{
    let Multipart { heads, tail, .. } = layout;
    let parts = heads
        .into_iter()
        .zip(ranges)
        .enumerate()
        .map(move |(i, (head, range))| (i, head, range));
    let frames = stream::iter(parts)
        .flat_map(move |(i, head, range)| {
            let head =
                stream::once(async move { Ok::<_, io::Error>(Frame::data(Bytes::from(head))) });
            // Made when the stream reaches this part, not before.
            let bytes = BodyStream::new(part(range, i));
            head.chain(bytes).boxed()
        })
        .chain(stream::once(
            async move { Ok(Frame::data(Bytes::from(tail))) },
        ));
    StreamBody::new(frames).boxed_unsync()
}
