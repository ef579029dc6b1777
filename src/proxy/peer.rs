//! `[fleet]`'s peer endpoint, `GET /_archway/fleet/blobs/<digest>`: another replica joining
//! this one's fill. It needs a request signed for that digest with the fleet's peer key, within
//! the clock skew and never seen before (401 otherwise, counted; see `fleet::peer_auth`), names
//! only a digest (404 otherwise), and gets only what this replica has — the committed blob, or its fill in flight
//! as the bytes arrive (a fill that breaks breaks this body off too). It never starts a fetch.
//! One range of a fill in flight (a cold range another replica relays) is answered only with
//! bytes already here: `416` at once otherwise (`range_of_fill`).

use super::client::ClientRequest;
use super::response::{blob_response, range_response};
use crate::access_log::RequestNotes;
use crate::body::ResponseBody;
use crate::byte_ranges::{self, RangeAnswer};
use crate::cache::blob::{Blob, BlobStore};
use crate::cache::bucket::StorageObserver;
use crate::config::FleetConfig;
use crate::digest::Digest;
use crate::error::{ErrorCode, ProxyError};
use crate::fleet::PeerVerifier;
use http::{header, Method, Response, StatusCode};
use std::sync::Arc;

/// What the endpoint checks a request against.
pub(super) struct PeerRequest<'a> {
    pub fleet: &'a FleetConfig,
    pub verifier: &'a PeerVerifier,
    pub observer: &'a dyn StorageObserver,
}

pub(super) async fn serve(
    store: &Arc<BlobStore>,
    peer: &PeerRequest<'_>,
    digest: Result<Digest, ()>,
    client: &ClientRequest,
    notes: &mut RequestNotes,
) -> Result<Response<ResponseBody>, ProxyError> {
    let unauthorized = || {
        ProxyError::downstream(
            ErrorCode::Unauthorized,
            "the peer endpoint needs a request signed by a replica of this fleet",
        )
    };
    let not_here = |what: String| {
        ProxyError::downstream(ErrorCode::BlobUnknown, what).with_status(StatusCode::NOT_FOUND)
    };
    let Ok(digest) = digest else {
        // Nothing to check a signature against: refused like an unsigned request.
        let signed = client.headers.contains_key(header::AUTHORIZATION);
        return Err(if signed {
            not_here("the peer endpoint serves only blobs by digest".into())
        } else {
            unauthorized()
        });
    };
    let authorization = client
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if let Err(e) = peer
        .verifier
        .check(authorization, client.method.as_str(), &digest)
    {
        peer.observer.record_rejected("peer", e.reason());
        tracing::debug!(%digest, error = %e, "peer request refused");
        return Err(unauthorized());
    }
    if client.method != Method::GET {
        return Err(not_here("the peer endpoint answers only GET".into()));
    }
    let fleet = peer.fleet;
    let Some(blob) = store.join_for_peer(&digest, fleet.peer_timeout).await else {
        return Err(not_here(format!(
            "blob {digest} is neither cached nor being filled here"
        )));
    };
    super::blobs::note(blob.outcome(), notes);
    // Not a client's bytes: the replica that asked counts them when it serves them (`peer`);
    // counted here too, a fleet's sums would see them twice.
    notes.body_uncounted = true;
    if let Some(answer) = range_of_fill(client, &digest, &blob) {
        return answer;
    }
    // A replica asks for the blob, or one range of it: a list gets the whole blob.
    Ok(blob_response(client, &digest, &blob, 1, notes))
}

/// One range of a fill in flight (not verified yet), which another replica asks for a cold
/// range (`cache.cold_ranges = "relay"`): answered `206` with the bytes as received (unverified,
/// as an upstream Range's are) only if every one of them is here now; else `416` at once — not
/// there yet: the asking replica asks upstream instead, rather than waiting on this fill.
/// (A fill of unknown length has no range to give: `416` too.) `None` for anything else (no
/// `Range`, a list, a committed or verified blob): answered as before.
fn range_of_fill(
    client: &ClientRequest,
    digest: &Digest,
    blob: &Blob,
) -> Option<Result<Response<ResponseBody>, ProxyError>> {
    let received = blob.unverified_received()?;
    let filling = blob.filling()?;
    let range = client.headers.get(header::RANGE)?.to_str().ok()?;
    if let Some(size) = blob.size() {
        match byte_ranges::parse(Some(range), size, 1) {
            RangeAnswer::Single(start, end) if end < received => {
                let body = filling.unverified_range((start, end));
                return Some(Ok(range_response(digest, (start, end), size, body)));
            }
            RangeAnswer::Single(..) => {}
            _ => return None,
        }
    }
    Some(Err(ProxyError::downstream(
        ErrorCode::RangeInvalid,
        format!(
            "the range is not in this replica's fill of {digest} yet ({received} bytes received)"
        ),
    )))
}
