//! `[fleet]`'s peer endpoint, `GET /_archway/fleet/blobs/<digest>`: another replica joining
//! this one's fill. It needs the fleet secret (401 without), names only a digest (404
//! otherwise), and gets only what this replica has — the committed blob, or its fill in flight
//! as the bytes arrive (a fill that breaks breaks this body off too). It never starts a fetch.

use super::client::ClientRequest;
use super::response::blob_response;
use crate::access_log::RequestNotes;
use crate::body::ResponseBody;
use crate::cache::blob::BlobStore;
use crate::config::FleetConfig;
use crate::digest::Digest;
use crate::error::{ErrorCode, ProxyError};
use crate::fleet::secret_matches;
use http::{header, Method, Response, StatusCode};
use std::sync::Arc;

pub(super) async fn serve(
    store: &Arc<BlobStore>,
    fleet: &FleetConfig,
    digest: Result<Digest, ()>,
    client: &ClientRequest,
    notes: &mut RequestNotes,
) -> Result<Response<ResponseBody>, ProxyError> {
    let authorization = client
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if !secret_matches(authorization, fleet.secret.expose()) {
        return Err(ProxyError::downstream(
            ErrorCode::Unauthorized,
            "the peer endpoint needs the fleet secret",
        ));
    }
    let not_here = |what: String| {
        ProxyError::downstream(ErrorCode::BlobUnknown, what).with_status(StatusCode::NOT_FOUND)
    };
    let Ok(digest) = digest else {
        return Err(not_here(
            "the peer endpoint serves only blobs by digest".into(),
        ));
    };
    if client.method != Method::GET {
        return Err(not_here("the peer endpoint answers only GET".into()));
    }
    let Some(blob) = store.join_for_peer(&digest, fleet.peer_timeout).await else {
        return Err(not_here(format!(
            "blob {digest} is neither cached nor being filled here"
        )));
    };
    notes.cache = Some(if blob.is_local() { "hit" } else { "coalesced" });
    notes.source = Some("cache");
    // A replica asks for the blob, or one range of it: a list gets the whole blob.
    Ok(blob_response(client, &digest, &blob, 1, notes))
}
