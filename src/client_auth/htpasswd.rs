//! `user:bcrypt-hash` lines (htpasswd, bcrypt only): parsed, and the cost an unknown user
//! must be checked at.

use super::{line_error, LineError, DUMMY_PASSWORD};
use std::collections::HashMap;
use std::fmt;

/// `user:bcrypt-hash` lines. Blank lines and lines starting with `#` are skipped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Htpasswd {
    pub(super) users: HashMap<String, String>,
}

impl fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Htpasswd")
            .field("users", &self.users.len())
            .finish()
    }
}

impl Htpasswd {
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The bcrypt cost most users' hashes have (ties: the higher): what checking an unknown
    /// user must cost so that the time taken does not tell.
    pub(super) fn usual_cost(&self) -> Option<u32> {
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for h in self.users.values() {
            if let Ok(parts) = h.parse::<bcrypt::HashParts>() {
                *counts.entry(parts.get_cost()).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .max_by_key(|&(cost, n)| (n, cost))
            .map(|(cost, _)| cost)
    }

    /// A hash of [`DUMMY_PASSWORD`] at the usual cost, made once: unknown users are checked
    /// against it. `None` without users (there is no one to tell apart).
    pub(super) fn dummy_hash(&self) -> Option<String> {
        let cost = self.usual_cost()?;
        bcrypt::hash(DUMMY_PASSWORD, cost).ok().or_else(|| {
            // Hashing fails only without OS randomness; a user's own hash of that cost costs
            // the same to check, and an unknown user is refused whatever it says.
            self.users
                .values()
                .find(|h| {
                    h.parse::<bcrypt::HashParts>()
                        .is_ok_and(|p| p.get_cost() == cost)
                })
                .cloned()
        })
    }
}

/// What kind of hash an htpasswd entry holds, for the error that refuses it.
fn hash_kind(hash: &str) -> &'static str {
    if hash.starts_with("$apr1$") {
        "an Apache MD5 ($apr1$) hash"
    } else if hash.starts_with("{SHA}") {
        "a SHA-1 ({SHA}) hash"
    } else if hash.starts_with("$1$") {
        "an MD5-crypt ($1$) hash"
    } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
        "a SHA-crypt ($5$/$6$) hash"
    } else if hash.starts_with('$') {
        "an unknown hash type"
    } else {
        "a DES-crypt hash or a plain-text password"
    }
}

pub fn parse_htpasswd(text: &str) -> Result<Htpasswd, LineError> {
    let mut users = HashMap::new();
    let mut first_line = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(line_error(n, "not `user:hash`"));
        };
        if user.is_empty() {
            return Err(line_error(n, "the user name is empty"));
        }
        if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
            return Err(line_error(
                n,
                format!(
                    "user `{user}` has {}; only bcrypt ($2y$, $2b$, $2a$) is accepted \
                     (make one with `htpasswd -B`)",
                    hash_kind(hash)
                ),
            ));
        }
        // The crate's own error would quote the hash; say what is wrong without it.
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(line_error(
                n,
                format!("user `{user}` has a malformed bcrypt hash"),
            ));
        }
        if let Some(first) = first_line.insert(user.to_owned(), n) {
            return Err(line_error(
                n,
                format!("user `{user}` is already on line {first}"),
            ));
        }
        users.insert(user.to_owned(), hash.to_owned());
    }
    Ok(Htpasswd { users })
}
