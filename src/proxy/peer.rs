//! `[fleet]`'s peer endpoint, `GET /_archway/fleet/blobs/<digest>`: another replica joining
//! this one's fill. It needs a request signed for that digest with the fleet's peer key, within
//! the clock skew and never seen before (401 otherwise, counted; see `fleet::peer_auth`), names
//! only a digest (404 otherwise), and gets only what this replica has — the committed blob, or its fill in flight
//! as the bytes arrive (a fill that breaks breaks this body off too). It never starts a fetch.

use super::client::ClientRequest;
use super::response::blob_response;
use crate::access_log::RequestNotes;
use crate::body::ResponseBody;
use crate::cache::blob::BlobStore;
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
    // A replica asks for the blob, or one range of it: a list gets the whole blob.
    Ok(blob_response(client, &digest, &blob, 1, notes))
}
