//! The peer endpoint's path and authorization (pure).

use crate::digest::Digest;
use sha2::{Digest as _, Sha256};

/// Where a replica serves its blobs to the others; followed by the digest.
pub const PEER_PATH_PREFIX: &str = "/_archway/fleet/blobs/";

/// The digest a peer-endpoint path names: `Some(Ok)` a digest, `Some(Err)` a peer-endpoint path
/// that names none (answered 404), `None` not a peer-endpoint path.
pub fn peer_digest(path: &str) -> Option<Result<Digest, ()>> {
    let rest = path.strip_prefix(PEER_PATH_PREFIX)?;
    Some(rest.parse::<Digest>().map_err(drop))
}

/// Whether the `Authorization` header carries `Bearer <secret>`, compared in constant time
/// (both sides hashed first, so neither the length nor a prefix shows in the timing).
pub fn secret_matches(authorization: Option<&[u8]>, secret: &str) -> bool {
    let Some(presented) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
        return false;
    };
    let a: [u8; 32] = Sha256::digest(presented).into();
    let b: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    diff == 0 && !secret.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_digests_under_the_prefix() {
        let d = Digest::sha256_of(b"x");
        let path = format!("{PEER_PATH_PREFIX}{d}");
        assert_eq!(peer_digest(&path), Some(Ok(d.clone())));
        assert_eq!(peer_digest("/_archway/fleet/blobs/latest"), Some(Err(())));
        assert_eq!(peer_digest(&format!("{path}/x")), Some(Err(())));
        assert_eq!(peer_digest("/_archway/fleet/blobs/"), Some(Err(())));
        assert_eq!(peer_digest(&format!("/v2/library/x/blobs/{d}")), None);
    }

    #[test]
    fn the_secret_as_a_bearer_token_and_nothing_else() {
        assert!(secret_matches(Some(b"Bearer s3cret"), "s3cret"));
        assert!(!secret_matches(Some(b"Bearer s3cre"), "s3cret"));
        assert!(!secret_matches(Some(b"Bearer s3cretx"), "s3cret"));
        assert!(!secret_matches(Some(b"Basic s3cret"), "s3cret"));
        assert!(!secret_matches(Some(b"s3cret"), "s3cret"));
        assert!(!secret_matches(None, "s3cret"));
        assert!(!secret_matches(Some(b"Bearer "), ""));
    }
}
