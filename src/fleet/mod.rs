//! `[fleet]`: replicas on one bucket fill each blob once. The cache takes the lease and decides
//! whom to join (`cache::blob::Fleet`); this module is the HTTP between replicas:
//!
//! - `peer_path`: the peer endpoint's path (pure);
//! - `peer_auth`: signing peer requests and checking them (the secret never leaves the process);
//! - `peer_client`: reaching another replica's peer endpoint for a blob, through the egress
//!   policy;
//!
//! The peer endpoint is `GET /_archway/fleet/blobs/<digest>` on the registry listener: no
//! registry client asks for a path outside `/v2/`. It needs a request signed with a key derived
//! from the fleet secret (`Authorization: ArchwayPeer ...`, see `peer_auth`), serves only
//! digests, and only what this replica has (committed, or its fill in
//! flight): it never starts a fetch for a peer.

mod peer_auth;
mod peer_client;
mod peer_path;

pub use peer_auth::{
    PeerAuthError, PeerSigner, PeerVerifier, MAX_SEEN_SIGNATURES, PEER_PURPOSE, PEER_SCHEME,
};
pub use peer_client::HttpPeers;
pub use peer_path::{peer_digest, PEER_PATH_PREFIX};
