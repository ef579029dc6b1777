//! The credentials an `Authorization` header carries (Basic or Bearer).

use base64::Engine as _;
use std::fmt;

/// The credentials an `Authorization` header carries. Debug never shows the secret part.
#[derive(PartialEq, Eq)]
pub enum Presented {
    Basic { user: String, password: String },
    Bearer(String),
}

impl fmt::Debug for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Presented::Basic { user, .. } => write!(f, "Basic({user}:***)"),
            Presented::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// Parses `Basic <base64 user:password>` or `Bearer <token>` (scheme case-insensitive).
/// Anything else is `None`.
pub fn parse_authorization(value: &[u8]) -> Option<Presented> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        Some(Presented::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        Some(Presented::Bearer(rest.to_owned()))
    } else {
        None
    }
}
