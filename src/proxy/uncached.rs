//! A blob served straight from upstream when the cache cannot take it (a read-only or full
//! disk): hashed on the way, with the last chunk held back until the digest checks out, so a
//! client never gets wrong bytes as a complete answer.

use crate::body::{ResponseBody, UpstreamBody};
use crate::digest::{Digest, Verifier};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::io;

struct State {
    body: UpstreamBody,
    digest: Digest,
    verifier: Verifier,
    /// Announced length, if any.
    size: Option<u64>,
    received: u64,
    /// The last chunk received, released only when the next one comes or the digest matched.
    held: Option<Bytes>,
    done: bool,
}

/// `body` as a response body that ends in an error unless every byte arrived and hashes to
/// `digest` (and, with `size`, exactly that many came).
pub(crate) fn verified(digest: Digest, size: Option<u64>, body: UpstreamBody) -> ResponseBody {
    let state = State {
        verifier: Verifier::new(digest.algorithm()),
        body,
        digest,
        size,
        received: 0,
        held: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let item = s.next().await;
        if !matches!(item, Some(Ok(_))) {
            s.done = true;
        }
        Some((item?.map(Frame::data), s))
    });
    StreamBody::new(stream).boxed_unsync()
}

impl State {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    let Ok(chunk) = frame.into_data() else {
                        continue;
                    };
                    if chunk.is_empty() {
                        continue;
                    }
                    self.received += chunk.len() as u64;
                    if self.size.is_some_and(|size| self.received > size) {
                        return Some(Err(invalid("upstream sent more bytes than announced")));
                    }
                    self.verifier.update(&chunk);
                    match self.held.replace(chunk) {
                        Some(previous) => return Some(Ok(previous)),
                        None => continue,
                    }
                }
                Some(Err(e)) => return Some(Err(e)),
                None => {
                    let algorithm = self.digest.algorithm();
                    let verifier = std::mem::replace(&mut self.verifier, Verifier::new(algorithm));
                    if self.size.is_some_and(|size| self.received != size) {
                        return Some(Err(invalid("upstream blob truncated")));
                    }
                    if verifier.finish() != self.digest {
                        return Some(Err(invalid("upstream blob digest mismatch")));
                    }
                    // Verified: the held chunk (if any) is the last.
                    self.done = true;
                    return self.held.take().map(Ok);
                }
            }
        }
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(chunks: &[&'static [u8]]) -> UpstreamBody {
        let items: Vec<io::Result<Frame<Bytes>>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(items)).boxed_unsync()
    }

    async fn collect(body: ResponseBody) -> (Vec<u8>, bool) {
        let mut body = body;
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => out.extend_from_slice(f.data_ref().unwrap()),
                Err(_) => return (out, false),
            }
        }
        (out, true)
    }

    #[tokio::test]
    async fn right_bytes_pass_whole_and_wrong_ones_never_end_cleanly() {
        let digest = Digest::sha256_of(b"hello world");
        let (out, ok) = collect(verified(
            digest.clone(),
            Some(11),
            body_of(&[b"hello", b" world"]),
        ))
        .await;
        assert!(ok);
        assert_eq!(out, b"hello world");
        let (out, ok) = collect(verified(
            digest.clone(),
            None,
            body_of(&[b"hello", b" there"]),
        ))
        .await;
        assert!(!ok, "a mismatch ends in an error");
        assert_eq!(out, b"hello", "the last chunk is held back");
        let (_, ok) = collect(verified(digest.clone(), Some(11), body_of(&[b"hello"]))).await;
        assert!(!ok, "short");
        let (_, ok) = collect(verified(digest, Some(5), body_of(&[b"hello", b" world"]))).await;
        assert!(!ok, "long");
    }
}
