//! Body types shared by the upstream client, the blob store and the server.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// A body coming from upstream (already wrapped with the read timeout).
pub type UpstreamBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// A body archway sends to a client. An `Err` frame breaks the response off, which is how a
/// client learns that a streamed blob failed verification.
pub type ResponseBody = UnsyncBoxBody<Bytes, std::io::Error>;

pub fn empty() -> ResponseBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
