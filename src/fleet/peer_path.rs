//! The peer endpoint's path (pure).

use crate::digest::Digest;

/// Where a replica serves its blobs to the others; followed by the digest.
pub const PEER_PATH_PREFIX: &str = "/_archway/fleet/blobs/";

/// The digest a peer-endpoint path names: `Some(Ok)` a digest, `Some(Err)` a peer-endpoint path
/// that names none (answered 404), `None` not a peer-endpoint path.
pub fn peer_digest(path: &str) -> Option<Result<Digest, ()>> {
    let rest = path.strip_prefix(PEER_PATH_PREFIX)?;
    Some(rest.parse::<Digest>().map_err(drop))
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
}
