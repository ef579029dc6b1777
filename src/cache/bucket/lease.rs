//! A fill lease (pure): the record a replica writes at `<prefix>fills/<algorithm>/<hex>` while
//! it fills that blob from upstream — who fills it (the `peer_url` the others join through) and
//! until when the claim holds unless renewed — and the decision a replica takes on finding one.
//! The bucket's conditional writes (`If-None-Match: *` to take it, `If-Match` on its ETag to
//! take it over or renew it) are in `Bucket`; this file never touches the network.

use serde::{Deserialize, Serialize};

/// The lease's JSON body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRecord {
    /// The owner's `fleet.peer_url`.
    pub owner: String,
    /// Milliseconds since the Unix epoch after which the lease may be taken over.
    pub expires_at_ms: u64,
}

/// The largest lease body read (a URL and a number; anything longer is not a lease of ours).
pub const MAX_LEASE_BYTES: u64 = 4096;

/// What a replica does about a lease it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseFound {
    /// A live lease of another replica: join its fill through its peer endpoint.
    Join { owner: String },
    /// Expired, or left by this replica's own earlier life (it has no such fill now): take it
    /// over with `If-Match` on this ETag.
    TakeOver,
}

impl LeaseRecord {
    /// A lease for `owner` until `now_ms + ttl_ms`.
    pub fn new(owner: &str, now_ms: u64, ttl_ms: u64) -> Self {
        LeaseRecord {
            owner: owner.to_owned(),
            expires_at_ms: now_ms.saturating_add(ttl_ms),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A struct of a string and a number always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None`: not a lease body (a damaged one is treated as expired by the caller).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() as u64 > MAX_LEASE_BYTES {
            return None;
        }
        serde_json::from_slice(bytes).ok()
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms
    }

    /// Whether the lease claims to hold further ahead than one TTL (plus the clock skew): no
    /// replica writes that (each renews for one TTL from its now), so it is not believed.
    pub fn is_too_far_ahead(&self, now_ms: u64, ttl_ms: u64, skew_ms: u64) -> bool {
        self.expires_at_ms > now_ms.saturating_add(ttl_ms).saturating_add(skew_ms)
    }

    /// Expired, or not believed: either way it no longer holds.
    pub fn is_stale(&self, now_ms: u64, ttl_ms: u64, skew_ms: u64) -> bool {
        self.is_expired(now_ms) || self.is_too_far_ahead(now_ms, ttl_ms, skew_ms)
    }

    /// What `me` (this replica's `peer_url`) does about this lease at `now_ms`. Called only
    /// when this replica has no fill of the blob in flight, so a lease naming `me` is left from
    /// before a restart.
    /// A lease whose owner is not an `http(s)://host[:port]` URL is not joined (a peer request
    /// would go wherever it points): it is taken over like a damaged one. So is one whose
    /// expiry lies further ahead than `ttl_ms + skew_ms`.
    pub fn decide(&self, me: &str, now_ms: u64, ttl_ms: u64, skew_ms: u64) -> LeaseFound {
        if self.is_stale(now_ms, ttl_ms, skew_ms) || self.owner == me || !is_peer_url(&self.owner) {
            LeaseFound::TakeOver
        } else {
            LeaseFound::Join {
                owner: self.owner.clone(),
            }
        }
    }
}

/// `http(s)://host[:port]`, nothing else (no path, query or user info).
fn is_peer_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.host().is_some_and(|h| !h.is_empty())
        && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none()
}

/// Milliseconds since the Unix epoch (0 for a clock before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trips_and_rejects_what_is_not_a_lease() {
        let r = LeaseRecord::new("http://10.1.2.3:5000", 1_000, 30_000);
        assert_eq!(r.expires_at_ms, 31_000);
        let json = r.to_json();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"owner":"http://10.1.2.3:5000","expires_at_ms":31000}"#
        );
        assert_eq!(LeaseRecord::parse(&json), Some(r));
        assert_eq!(LeaseRecord::parse(b"{}"), None);
        assert_eq!(LeaseRecord::parse(b"not json"), None);
        assert_eq!(
            LeaseRecord::parse(br#"{"owner":"a","expires_at_ms":1,"x":2}"#),
            None
        );
        let long = vec![b' '; 5000];
        assert_eq!(LeaseRecord::parse(&long), None);
        assert_eq!(LeaseRecord::new("a", u64::MAX, 5).expires_at_ms, u64::MAX);
    }

    #[test]
    fn a_live_lease_of_another_is_joined_an_expired_or_own_one_taken_over() {
        let r = LeaseRecord::new("http://a:5000", 1_000, 2_000);
        let join = LeaseFound::Join {
            owner: "http://a:5000".into(),
        };
        let decide = |r: &LeaseRecord, me: &str, now: u64| r.decide(me, now, 2_000, 500);
        assert_eq!(decide(&r, "http://b:5000", 1_000), join);
        assert_eq!(decide(&r, "http://b:5000", 2_999), join);
        assert_eq!(decide(&r, "http://b:5000", 3_000), LeaseFound::TakeOver);
        assert_eq!(decide(&r, "http://a:5000", 1_500), LeaseFound::TakeOver);
        // Written by a clock within the skew ahead: believed; further ahead (or forever): not.
        let ahead = LeaseRecord::new("http://a:5000", 1_400, 2_000);
        assert_eq!(decide(&ahead, "http://b:5000", 1_000), join);
        let forever = LeaseRecord::new("http://a:5000", u64::MAX - 10, 2_000);
        assert_eq!(
            decide(&forever, "http://b:5000", 1_000),
            LeaseFound::TakeOver
        );
        let far = LeaseRecord::new("http://a:5000", 1_501, 2_000);
        assert_eq!(decide(&far, "http://b:5000", 1_000), LeaseFound::TakeOver);
        for bad in [
            "ftp://a",
            "a:5000",
            "http://a/x",
            "http://u@a",
            "http://a?x=1",
            "",
        ] {
            let r = LeaseRecord::new(bad, 1_000, 2_000);
            assert_eq!(
                r.decide("http://b", 1_000, 2_000, 0),
                LeaseFound::TakeOver,
                "{bad:?}"
            );
        }
        let ok = LeaseRecord::new("https://10.1.2.3:5000", 1_000, 2_000);
        assert!(matches!(
            ok.decide("http://b", 1_000, 2_000, 0),
            LeaseFound::Join { .. }
        ));
    }
}
