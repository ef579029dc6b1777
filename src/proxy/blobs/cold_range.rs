//! Cold ranges (`cache.cold_ranges = "relay"`): a Range of a blob whose download has not got
//! there yet is answered without waiting for the digest check, from an upstream Range request
//! of its own (or the fleet owner's fill) when the download is far from it, else from the
//! download as its bytes arrive. Unverified, as no partial answer can be checked against the
//! blob's digest; the download goes on, and is verified and kept.

use super::{note, Blobs};
use crate::access_log::RequestNotes;
use crate::body::{self, ResponseBody};
use crate::byte_ranges::{self, RangeAnswer};
use crate::cache::blob::{Blob, BlobOrigin, BlobSource, BlobStore};
use crate::config::ColdRanges;
use crate::digest::Digest;
use crate::proxy::client::ClientRequest;
use crate::proxy::response::{blob_headers, multipart, not_modified, range_response};
use crate::reference::RepositoryName;
use crate::upstream::{RangeStream, Upstream, UpstreamError};
use futures_util::stream::{self, StreamExt};
use http::header;
use http::{Method, Response};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A Range starting less than this past the bytes a download has is answered from the download
/// (unverified, as it arrives) rather than by a Range request of its own: the download gets
/// there in about the time another request's round trip takes, and costs no extra transfer.
const FILL_AHEAD: u64 = 64 << 10;

impl Blobs {
    /// The range or ranges a GET asks of a download not verified yet: what
    /// `cache.cold_ranges = "relay"` answers without waiting for the digest check.
    pub(super) fn cold_range(
        &self,
        client: &ClientRequest,
        digest: &Digest,
        blob: &Blob,
    ) -> Option<Cold> {
        blob.unverified_received()?;
        let size = blob.size()?;
        if client.method != Method::GET || not_modified(&client.headers, digest) {
            return None;
        }
        let range = client.headers.get(header::RANGE)?.to_str().ok()?;
        match byte_ranges::parse(Some(range), size, self.max_ranges) {
            RangeAnswer::Single(start, end) => Some(Cold::One((start, end, size))),
            // Already merged and within `limits.max_ranges`: at most that many parts.
            RangeAnswer::Multi(ranges) => Some(Cold::Several(ranges, size)),
            // A 200 (past the cap, unparsable) or a 416: as for any blob (`blob_response`).
            RangeAnswer::Whole | RangeAnswer::Unsatisfiable => None,
        }
    }

    /// The `Range` to ask upstream for alongside the download's start: a single range starting
    /// at least `FILL_AHEAD` in (or a suffix: the end of the blob), of a blob neither cached
    /// nor being downloaded with a known size, under `relay`. Never in a fleet: there the
    /// fill's lease decides first whether another replica's fill has the range (`relay`).
    pub(super) fn early_spec(&self, client: &ClientRequest, digest: &Digest) -> Option<String> {
        if self.cold_ranges != ColdRanges::Relay
            || self.store.in_fleet()
            || client.method != Method::GET
            || not_modified(&client.headers, digest)
            || self.store.head(digest).is_some()
        {
            return None;
        }
        let range = client.headers.get(header::RANGE)?.to_str().ok()?;
        far_range_spec(range)
    }

    /// A cold range: from an upstream Range request of its own when the download is far from
    /// it (`early`: asked already, alongside the download), else (or when that request fails,
    /// is refused or answers another range) from the download as its bytes arrive. Either way
    /// unverified; the download goes on, and is verified and kept. In a fleet, a download that
    /// streams another replica's fill asks that replica for a far range first: its fill may be
    /// well ahead of this one's copy of it; upstream only if it has not got every byte yet.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn relay(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepositoryName,
        digest: &Digest,
        (start, end, size): (u64, u64, u64),
        blob: Blob,
        early: Option<Result<RangeStream, UpstreamError>>,
        notes: &mut RequestNotes,
        from_route: &mut bool,
    ) -> Response<ResponseBody> {
        let received = blob.unverified_received().unwrap_or(size);
        // The download near the range already: an early answer is dropped unread.
        let far = start >= received.saturating_add(FILL_AHEAD);
        if far && early.is_none() {
            if let Some(body) = self.store.range_from_owner(&blob, (start, end), size).await {
                note(BlobOrigin::Relayed(BlobSource::Peer), notes);
                return range_response(digest, (start, end), size, body);
            }
        }
        let relayed = match early {
            Some(relayed) => Some(relayed),
            None if far => {
                let spec = format!("bytes={start}-{end}");
                Some(upstream.get_blob_range(repo, digest, &spec).await)
            }
            None => None,
        };
        match relayed {
            None => {}
            Some(_) if !far => {}
            Some(Ok(stream)) if (stream.start, stream.end, stream.size) == (start, end, size) => {
                *from_route = true;
                return relayed_response(digest, stream, notes);
            }
            Some(Ok(stream)) => {
                tracing::info!(%digest, start, end, size, got_start = stream.start, got_end = stream.end, got_size = stream.size, "upstream answered a cold range with another; answered from the download");
            }
            Some(Err(e)) => {
                tracing::info!(%digest, start, end, error = %e, "cold range not relayed; answered from the download");
            }
        }
        note(blob.outcome(), notes);
        let body = match blob.filling() {
            Some(filling) => filling.unverified_range((start, end)),
            None => blob.body(Some((start, end))),
        };
        range_response(digest, (start, end), size, body)
    }
}

/// Whether upstream's range is the one the client's `Range` asks for of a blob of its size.
pub(super) fn asked_for(client: &ClientRequest, stream: &RangeStream) -> bool {
    let range = client
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    matches!(
        byte_ranges::parse(range, stream.size, 1),
        RangeAnswer::Single(a, b) if (a, b) == (stream.start, stream.end)
    )
}

/// The 206 of a range relayed from upstream (or a parent), noted as such.
pub(super) fn relayed_response(
    digest: &Digest,
    stream: RangeStream,
    notes: &mut RequestNotes,
) -> Response<ResponseBody> {
    let source = if stream.from_parent {
        BlobSource::Parent
    } else {
        BlobSource::Upstream
    };
    note(BlobOrigin::Relayed(source), notes);
    range_response(digest, (stream.start, stream.end), stream.size, stream.body)
}

/// What a GET asks of a download not verified yet, under `cache.cold_ranges = "relay"`.
pub(super) enum Cold {
    /// One range `(start, end, size)`.
    One((u64, u64, u64)),
    /// Two or more ranges (merged, at most `limits.max_ranges`) of a blob of `size` bytes.
    Several(Vec<(u64, u64)>, u64),
}

/// Whether a range starting at `start` is far enough past the `received` bytes of a download
/// to be worth an upstream Range request of its own (see `FILL_AHEAD`).
fn far_from(start: u64, received: u64) -> bool {
    start >= received.saturating_add(FILL_AHEAD)
}

/// Several cold ranges, answered at once `206 multipart/byteranges` exactly as for a cached
/// blob (same boundary, parts, length). Each part is made when the body reaches it: from the
/// download if it has (nearly) got there by then, else from an upstream Range request of its
/// own. One part at a time and at most one request per part, so never more upstream requests
/// than `limits.max_ranges` and never two at once; and at most `relay_max` bytes relayed in all
/// (`cache.cold_ranges_relay_max`): a list covering much of a large blob would otherwise fetch
/// it twice, while the download, running anyway, brings the same bytes in order. Unverified, as
/// a single cold range is; the download goes on, and is verified and kept. In a fleet, a
/// download that streams another replica's fill asks that replica for a relayed part first, as
/// `relay` does for a single range.
pub(super) fn relay_parts(
    store: &Arc<BlobStore>,
    upstream: &Arc<Upstream>,
    repo: &RepositoryName,
    digest: &Digest,
    (ranges, size, relay_max): (Vec<(u64, u64)>, u64, u64),
    blob: Blob,
    notes: &mut RequestNotes,
) -> Response<ResponseBody> {
    let received = blob.unverified_received().unwrap_or(size);
    // The log is written from the notes as they are when the answer starts: `relayed` when a
    // part past the download now fits the budget (each part is decided again when reached).
    let mut plan = relay_max;
    let relays = ranges
        .iter()
        .any(|&(start, end)| far_from(start, received) && take_budget(&mut plan, end - start + 1));
    if relays {
        // A part the owner has not got goes upstream, but the owner is asked first.
        let source = if store.streams_owner(&blob) {
            BlobSource::Peer
        } else if upstream.has_parents() {
            BlobSource::Parent
        } else {
            BlobSource::Upstream
        };
        note(BlobOrigin::Relayed(source), notes);
    } else {
        note(blob.outcome(), notes);
    }
    let mut r = Response::new(body::empty());
    blob_headers(r.headers_mut(), digest);
    let (store, upstream, repo, digest2) = (
        store.clone(),
        upstream.clone(),
        repo.clone(),
        digest.clone(),
    );
    // Parts are made one after the other; an atomic is only what lets the `Fn` count down.
    let budget = std::sync::atomic::AtomicU64::new(relay_max);
    multipart(r, digest, ranges, size, false, notes, move |range, _| {
        let received = blob.unverified_received().unwrap_or(size);
        let len = range.1 - range.0 + 1;
        let relay = far_from(range.0, received)
            && budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    left.checked_sub(len)
                })
                .is_ok();
        if relay {
            relayed_part(&store, &upstream, &repo, &digest2, range, size, &blob)
        } else {
            from_download(&blob, range)
        }
    })
}

/// Takes `len` bytes from a relay budget if they fit.
fn take_budget(left: &mut u64, len: u64) -> bool {
    let fits = len <= *left;
    if fits {
        *left -= len;
    }
    fits
}

/// A part of several cold ranges (`relay_parts`) from an upstream Range request of its own,
/// made when the body reaches it; from the download if that fails or answers another range.
/// In a fleet, from the owner's fill first when it has every byte of the part by then.
fn relayed_part(
    store: &Arc<BlobStore>,
    upstream: &Arc<Upstream>,
    repo: &RepositoryName,
    digest: &Digest,
    (start, end): (u64, u64),
    size: u64,
    blob: &Blob,
) -> ResponseBody {
    let (store, upstream, repo, digest, blob) = (
        store.clone(),
        upstream.clone(),
        repo.clone(),
        digest.clone(),
        blob.clone(),
    );
    let relayed = async move {
        if let Some(body) = store.range_from_owner(&blob, (start, end), size).await {
            return resumable(body, (start, end), digest, blob);
        }
        let spec = format!("bytes={start}-{end}");
        match upstream.get_blob_range(&repo, &digest, &spec).await {
            Ok(stream) if (stream.start, stream.end, stream.size) == (start, end, size) => {
                resumable(stream.body, (start, end), digest, blob)
            }
            Ok(stream) => {
                tracing::info!(%digest, start, end, size, got_start = stream.start, got_end = stream.end, got_size = stream.size, "upstream answered a cold range part with another; answered from the download");
                from_download(&blob, (start, end))
            }
            Err(e) => {
                tracing::info!(%digest, start, end, error = %e, "cold range part not relayed; answered from the download");
                from_download(&blob, (start, end))
            }
        }
    };
    let frames = stream::once(relayed).flat_map(BodyStream::new);
    StreamBody::new(frames).boxed_unsync()
}

/// The bytes `start..=end` from the download as they arrive, unverified (as `relay` answers a
/// range it does not relay).
fn from_download(blob: &Blob, range: (u64, u64)) -> ResponseBody {
    match blob.filling() {
        Some(filling) => filling.unverified_range(range),
        None => blob.body(Some(range)),
    }
}

/// An upstream part's body; if it breaks off, the rest of the part comes from the download, so
/// that one failed part does not break a multipart answer whose length is already promised.
fn resumable(
    body: ResponseBody,
    (start, end): (u64, u64),
    digest: Digest,
    blob: Blob,
) -> ResponseBody {
    enum State {
        Relaying(BodyStream<ResponseBody>, u64),
        Download(BodyStream<ResponseBody>),
    }
    let frames = stream::unfold(
        Some(State::Relaying(BodyStream::new(body), start)),
        move |state| {
            let (blob, digest) = (blob.clone(), digest.clone());
            async move {
                match state? {
                    State::Relaying(mut s, pos) => match s.next().await {
                        Some(Ok(frame)) => {
                            let next = pos + frame.data_ref().map_or(0, |d| d.len() as u64);
                            Some((Ok(frame), Some(State::Relaying(s, next))))
                        }
                        // Upstream's exact length was checked: a clean end is the part's end, and
                        // so is an error after its last byte.
                        None => None,
                        Some(Err(_)) if pos > end => None,
                        Some(Err(e)) => {
                            tracing::info!(%digest, start, end, at = pos, error = %e, "a relayed part broke off; the rest from the download");
                            let mut rest = BodyStream::new(from_download(&blob, (pos, end)));
                            let first = rest.next().await?;
                            Some((first, Some(State::Download(rest))))
                        }
                    },
                    State::Download(mut s) => {
                        let item = s.next().await?;
                        Some((item, Some(State::Download(s))))
                    }
                }
            }
        },
    );
    StreamBody::new(frames).boxed_unsync()
}

/// A single range-spec worth asking upstream for before the blob's size is known, normalised:
/// `bytes=a-b` or `bytes=a-` with `a` at least `FILL_AHEAD`, or a suffix `bytes=-n`.
fn far_range_spec(range: &str) -> Option<String> {
    let spec = range.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        return (n > 0).then(|| format!("bytes=-{n}"));
    }
    let a: u64 = a.parse().ok()?;
    if a < FILL_AHEAD {
        return None;
    }
    if b.is_empty() {
        return Some(format!("bytes={a}-"));
    }
    let b: u64 = b.parse().ok()?;
    (b >= a).then(|| format!("bytes={a}-{b}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_ranges_are_asked_for_early() {
        let far = FILL_AHEAD;
        for (range, spec) in [
            (
                format!("bytes={far}-{}", far + 9),
                Some(format!("bytes={far}-{}", far + 9)),
            ),
            (format!("bytes= {far}-"), Some(format!("bytes={far}-"))),
            ("bytes=-65536".to_owned(), Some("bytes=-65536".to_owned())),
            ("bytes=0-9".to_owned(), None),
            ("bytes=-0".to_owned(), None),
            (format!("bytes={far}-{}", far - 1), None),
            (format!("bytes={far}-{},0-1", far + 9), None),
            (format!("items={far}-"), None),
            ("bytes=x-".to_owned(), None),
        ] {
            assert_eq!(far_range_spec(&range), spec, "{range}");
        }
    }

    #[test]
    fn a_relay_budget_is_never_overdrawn() {
        let mut left = 10;
        assert!(take_budget(&mut left, 6));
        assert!(!take_budget(&mut left, 5), "does not fit what is left");
        assert_eq!(left, 4, "a refused part takes nothing");
        assert!(take_budget(&mut left, 4));
        assert!(!take_budget(&mut left, 1));
        assert!(!take_budget(&mut 0, 1), "\"0\": no part relayed");
        // Far: at least FILL_AHEAD past what the download has (no overflow near u64::MAX).
        assert!(!far_from(FILL_AHEAD + 9, 10));
        assert!(far_from(FILL_AHEAD + 10, 10));
        assert!(!far_from(1, u64::MAX));
    }
}
