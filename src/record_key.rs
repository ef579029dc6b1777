//! The fleet's record key (pure): what makes a record in the bucket that is not content-addressed
//! (a tag record, a lease, an access record) believable. Anyone who can write to the bucket can
//! write such an object; only a holder of the fleet secret can seal one.
//!
//! A sealed object is `archway-seal-v1 <hex HMAC-SHA256>\n` followed by the record's bytes. The
//! MAC covers the object's key as well as its body, so a record sealed for one tag cannot be
//! copied to another tag's key. The key is derived from the fleet secret for this one use, so the
//! secret itself is never a MAC key anywhere else (peer signatures derive their own).

use ring::hmac;

const MAGIC: &[u8] = b"archway-seal-v1 ";
/// Hex of a 32-byte MAC.
const MAC_HEX: usize = 64;

/// An HMAC-SHA256 key derived from the fleet secret for one purpose.
#[derive(Clone)]
pub struct RecordKey {
    key: hmac::Key,
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordKey(..)")
    }
}

/// Why a sealed object was not believed (counted and logged by the caller, never the bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not sealed (no archway-seal-v1 header)")]
    NotSealed,
    #[error("the seal does not match the record (written without the fleet key, or altered)")]
    BadSeal,
}

impl RecordKey {
    /// The key for `purpose` (e.g. `"bucket records"`, `"peer requests"`) under `secret`.
    pub fn derive(secret: &[u8], purpose: &str) -> Self {
        let master = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let tag = hmac::sign(&master, format!("archway/{purpose}/v1").as_bytes());
        RecordKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref()),
        }
    }

    /// The MAC of `parts`, each length-prefixed so that no two lists of parts collide.
    pub fn sign(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in parts {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Whether `mac` is the MAC of `parts` (constant time).
    pub fn verify(&self, parts: &[&[u8]], mac: &[u8]) -> bool {
        let expected = self.sign(parts);
        mac.len() == expected.len()
            && expected
                .iter()
                .zip(mac)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }

    /// The object to store at `object_key` for `body`.
    pub fn seal(&self, object_key: &str, body: &[u8]) -> Vec<u8> {
        let mac = self.sign(&[object_key.as_bytes(), body]);
        let mut out = Vec::with_capacity(MAGIC.len() + MAC_HEX + 1 + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(hex::encode(mac).as_bytes());
        out.push(b'\n');
        out.extend_from_slice(body);
        out
    }

    /// The body of an object read at `object_key`, if its seal is this key's.
    pub fn open<'a>(&self, object_key: &str, object: &'a [u8]) -> Result<&'a [u8], SealError> {
        let rest = object.strip_prefix(MAGIC).ok_or(SealError::NotSealed)?;
        let (Some(mac_hex), Some(b'\n'), Some(body)) = (
            rest.get(..MAC_HEX),
            rest.get(MAC_HEX),
            rest.get(MAC_HEX + 1..),
        ) else {
            return Err(SealError::NotSealed);
        };
        let mac = hex::decode(mac_hex).map_err(|_| SealError::NotSealed)?;
        if self.verify(&[object_key.as_bytes(), body], &mac) {
            Ok(body)
        } else {
            Err(SealError::BadSeal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_record_opens_only_with_its_key_at_its_place() {
        let key = RecordKey::derive(b"fleet secret", "bucket records");
        let sealed = key.seal("tags/hub/library/alpine/3.20", br#"{"digest":"x"}"#);
        assert!(sealed.starts_with(b"archway-seal-v1 "));
        assert_eq!(
            key.open("tags/hub/library/alpine/3.20", &sealed),
            Ok(&br#"{"digest":"x"}"#[..])
        );
        // Copied to another tag's key.
        assert_eq!(
            key.open("tags/hub/library/alpine/latest", &sealed),
            Err(SealError::BadSeal)
        );
        // Another fleet's key, or another purpose of the same secret.
        let other = RecordKey::derive(b"another secret", "bucket records");
        assert_eq!(
            other.open("tags/hub/library/alpine/3.20", &sealed),
            Err(SealError::BadSeal)
        );
        let peer = RecordKey::derive(b"fleet secret", "peer requests");
        assert_eq!(
            peer.open("tags/hub/library/alpine/3.20", &sealed),
            Err(SealError::BadSeal)
        );
        // Altered body, unsealed and truncated objects.
        let mut altered = sealed.clone();
        let last = altered.len() - 2;
        altered[last] = b'y';
        assert_eq!(
            key.open("tags/hub/library/alpine/3.20", &altered),
            Err(SealError::BadSeal)
        );
        assert_eq!(
            key.open("k", br#"{"digest":"x"}"#),
            Err(SealError::NotSealed)
        );
        assert_eq!(key.open("k", &sealed[..40]), Err(SealError::NotSealed));
    }

    #[test]
    fn parts_are_length_prefixed() {
        let key = RecordKey::derive(b"s", "p");
        assert_ne!(key.sign(&[b"ab", b"c"]), key.sign(&[b"a", b"bc"]));
        let mac = key.sign(&[b"GET", b"sha256:x", b"17"]);
        assert!(key.verify(&[b"GET", b"sha256:x", b"17"], &mac));
        assert!(!key.verify(&[b"GET", b"sha256:x", b"18"], &mac));
        assert!(!key.verify(&[b"GET", b"sha256:x", b"17"], &mac[..31]));
    }
}
