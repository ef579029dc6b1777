//! Static bearer tokens, kept only as their SHA-256 and compared in constant time.

use super::{line_error, LineError};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::sync::Arc;

/// Bearer tokens, kept only as their SHA-256.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    hashes: Vec<[u8; 32]>,
    /// Each token's name (`name token` lines), for an upstream's `clients`.
    names: Vec<Option<Arc<str>>>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("tokens", &self.hashes.len())
            .finish()
    }
}

impl Tokens {
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Compares against every token without stopping early, on fixed-size digests: the time
    /// taken says nothing about how close a guess was.
    pub fn contains(&self, token: &str) -> bool {
        self.find(token).is_some()
    }

    /// The token's name if it is one of these (`Some(None)`: a token without a name).
    pub fn find(&self, token: &str) -> Option<Option<Arc<str>>> {
        let presented = sha256(token.as_bytes());
        let mut found = None;
        for (h, name) in self.hashes.iter().zip(&self.names) {
            if ct_eq(h, &presented) {
                found = Some(name.clone());
            }
        }
        found
    }
}

/// One token per line, or `name token` (the name is what an upstream's `clients` lists); blank
/// lines and lines starting with `#` are skipped.
pub fn parse_tokens(text: &str) -> Result<Tokens, LineError> {
    let mut hashes = Vec::new();
    let mut names = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (name, token) =
            match fields.as_slice() {
                [token] => (None, *token),
                [name, token] => (Some(Arc::<str>::from(*name)), *token),
                _ => return Err(line_error(
                    i + 1,
                    "a line is a token, or a name and a token; a token cannot contain whitespace",
                )),
            };
        hashes.push(sha256(token.as_bytes()));
        names.push(name);
    }
    Ok(Tokens { hashes, names })
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    diff == 0
}
