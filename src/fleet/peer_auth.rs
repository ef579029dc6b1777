//! How a replica proves to another's peer endpoint that it is of the fleet, without sending the
//! fleet secret: `Authorization: ArchwayPeer t=<unix secs>,n=<nonce hex>,sig=<hex>`, where
//! `sig` is the MAC of (method, digest, t, nonce) under a key derived from the secret for this
//! one use. A listener that receives it learns nothing it could use for another digest, another
//! method, or after the window.
//!
//! The endpoint refuses a time outside ±(`max_clock_skew` + 1 s) of its own clock, and a
//! signature it has already seen within that window (a bounded memo): a captured request cannot
//! be replayed. The nonce keeps two replicas asking for the same digest in the same second
//! from sending the same signature.

use crate::clock::Clock;
use crate::digest::Digest;
use crate::record_key::RecordKey;
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The `Authorization` scheme of peer requests.
pub const PEER_SCHEME: &str = "ArchwayPeer";
/// The purpose the signing key is derived for (see `RecordKey::derive`).
pub const PEER_PURPOSE: &str = "peer requests";

/// Signatures remembered against replay. At one peer request per fill (and, with
/// `cache.cold_ranges = "relay"`, one per cold range a joining replica relays from the fill), a
/// fleet makes far fewer within a window; past this the endpoint refuses until the oldest leave
/// the window.
pub const MAX_SEEN_SIGNATURES: usize = 65_536;

/// Why a peer request was refused (the metrics' `reason`; never the header's contents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerAuthError {
    #[error("no ArchwayPeer authorization")]
    Missing,
    #[error("the ArchwayPeer authorization is malformed")]
    Malformed,
    #[error("the request's time is outside the window")]
    Expired,
    #[error("the signature does not match")]
    BadSignature,
    #[error("the signature was already used")]
    Replay,
    #[error("too many recent peer requests to remember; try again")]
    Busy,
}

impl PeerAuthError {
    /// The metrics' `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            PeerAuthError::Missing => "unsealed",
            PeerAuthError::Malformed => "unreadable",
            PeerAuthError::Expired => "expired",
            PeerAuthError::BadSignature => "bad_seal",
            PeerAuthError::Replay | PeerAuthError::Busy => "replay",
        }
    }
}

/// Signs this replica's peer requests.
pub struct PeerSigner {
    key: RecordKey,
    clock: Clock,
    rng: SystemRandom,
}

impl std::fmt::Debug for PeerSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerSigner(..)")
    }
}

impl PeerSigner {
    pub fn new(secret: &[u8], clock: Clock) -> Self {
        PeerSigner {
            key: RecordKey::derive(secret, PEER_PURPOSE),
            clock,
            rng: SystemRandom::new(),
        }
    }

    /// The `Authorization` value for `method` on `digest`, now.
    pub fn authorization(&self, method: &str, digest: &Digest) -> String {
        let t = (self.clock.now_ms() / 1000).to_string();
        let mut nonce = [0u8; 16];
        // The system's random source does not fail on Linux; a zero nonce would still be signed
        // (only two identical requests in one second could then collide).
        let _ = self.rng.fill(&mut nonce);
        let nonce = hex::encode(nonce);
        let sig = self.key.sign(&[
            method.as_bytes(),
            digest.to_string().as_bytes(),
            t.as_bytes(),
            nonce.as_bytes(),
        ]);
        format!("{PEER_SCHEME} t={t},n={nonce},sig={}", hex::encode(sig))
    }
}

/// Checks the peer requests this replica's endpoint receives.
pub struct PeerVerifier {
    key: RecordKey,
    clock: Clock,
    window_secs: u64,
    /// Signatures seen, with the second after which they are outside the window.
    seen: Mutex<HashMap<[u8; 32], u64>>,
}

impl std::fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerVerifier")
            .field("window_secs", &self.window_secs)
            .finish_non_exhaustive()
    }
}

impl PeerVerifier {
    /// Accepts times within ±(`skew` + 1 s): the sender's clock may be that far off, and `t`
    /// is whole seconds.
    pub fn new(secret: &[u8], clock: Clock, skew: Duration) -> Self {
        PeerVerifier {
            key: RecordKey::derive(secret, PEER_PURPOSE),
            clock,
            window_secs: skew.as_secs() + 1,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `authorization` signs `method` on `digest` now, and was not seen before.
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        method: &str,
        digest: &Digest,
    ) -> Result<(), PeerAuthError> {
        let value = authorization.ok_or(PeerAuthError::Missing)?;
        let params = value
            .strip_prefix(PEER_SCHEME.as_bytes())
            .and_then(|rest| rest.strip_prefix(b" "))
            .ok_or(PeerAuthError::Missing)?;
        let params = std::str::from_utf8(params).map_err(|_| PeerAuthError::Malformed)?;
        let (mut t, mut nonce, mut sig) = (None, None, None);
        for part in params.split(',') {
            match part.trim().split_once('=') {
                Some(("t", v)) => t = Some(v),
                Some(("n", v)) => nonce = Some(v),
                Some(("sig", v)) => sig = Some(v),
                _ => return Err(PeerAuthError::Malformed),
            }
        }
        let (Some(t), Some(nonce), Some(sig)) = (t, nonce, sig) else {
            return Err(PeerAuthError::Malformed);
        };
        let at: u64 = t.parse().map_err(|_| PeerAuthError::Malformed)?;
        if nonce.len() > 64 {
            return Err(PeerAuthError::Malformed);
        }
        let mac = hex::decode(sig).map_err(|_| PeerAuthError::Malformed)?;
        let now = self.clock.now_ms() / 1000;
        if at.abs_diff(now) > self.window_secs {
            return Err(PeerAuthError::Expired);
        }
        let digest = digest.to_string();
        let parts: [&[u8]; 4] = [
            method.as_bytes(),
            digest.as_bytes(),
            t.as_bytes(),
            nonce.as_bytes(),
        ];
        if !self.key.verify(&parts, &mac) {
            return Err(PeerAuthError::BadSignature);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&mac);
        let mut seen = self.seen.lock().map_err(|_| PeerAuthError::Busy)?;
        if seen.len() >= MAX_SEEN_SIGNATURES {
            seen.retain(|_, until| *until >= now);
        }
        if seen.contains_key(&key) {
            return Err(PeerAuthError::Replay);
        }
        if seen.len() >= MAX_SEEN_SIGNATURES {
            return Err(PeerAuthError::Busy);
        }
        seen.insert(key, at + self.window_secs);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_opens_one_digest_once_within_the_window() {
        let d = Digest::sha256_of(b"blob");
        let other = Digest::sha256_of(b"other");
        let signer = PeerSigner::new(b"s3cret", Clock::system());
        let verifier = PeerVerifier::new(b"s3cret", Clock::system(), Duration::from_secs(5));
        let auth = signer.authorization("GET", &d);
        assert!(auth.starts_with("ArchwayPeer t="), "{auth}");
        assert!(!auth.contains("s3cret"));
        assert_eq!(verifier.check(Some(auth.as_bytes()), "GET", &d), Ok(()));
        assert_eq!(
            verifier.check(Some(auth.as_bytes()), "GET", &d),
            Err(PeerAuthError::Replay)
        );
        // Two requests in the same second differ by their nonce.
        let again = signer.authorization("GET", &d);
        assert_ne!(again, auth);
        assert_eq!(verifier.check(Some(again.as_bytes()), "GET", &d), Ok(()));
        let for_d = signer.authorization("GET", &d);
        assert_eq!(
            verifier.check(Some(for_d.as_bytes()), "GET", &other),
            Err(PeerAuthError::BadSignature)
        );
        assert_eq!(
            verifier.check(Some(for_d.as_bytes()), "HEAD", &d),
            Err(PeerAuthError::BadSignature)
        );
        let stranger = PeerSigner::new(b"other", Clock::system()).authorization("GET", &d);
        assert_eq!(
            verifier.check(Some(stranger.as_bytes()), "GET", &d),
            Err(PeerAuthError::BadSignature)
        );
        // Outside the window, either way.
        for offset in [-60_000, 60_000] {
            let skewed =
                PeerSigner::new(b"s3cret", Clock::offset_by_ms(offset)).authorization("GET", &d);
            assert_eq!(
                verifier.check(Some(skewed.as_bytes()), "GET", &d),
                Err(PeerAuthError::Expired),
                "{offset}"
            );
        }
        let within =
            PeerSigner::new(b"s3cret", Clock::offset_by_ms(4_000)).authorization("GET", &d);
        assert_eq!(verifier.check(Some(within.as_bytes()), "GET", &d), Ok(()));
        // The secret itself, or anything else, is not a peer request.
        for bad in [
            &b"Bearer s3cret"[..],
            b"ArchwayPeer",
            b"ArchwayPeer t=1",
            b"ArchwayPeer t=x,n=1,sig=00",
            b"ArchwayPeer t=1,n=1,sig=zz",
        ] {
            assert!(verifier.check(Some(bad), "GET", &d).is_err(), "{bad:?}");
        }
        assert_eq!(verifier.check(None, "GET", &d), Err(PeerAuthError::Missing));
    }
}
