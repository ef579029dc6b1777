//! Repository names, tags and references, validated by the distribution-spec grammar.
//!
//! Validation is what keeps client input out of the file system: a valid name has no `..`,
//! no empty component and no character outside `[a-z0-9._/-]`.

use crate::digest::Digest;
use std::fmt;

/// Longest repository name Distribution accepts.
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid repository name")]
    Name,
    #[error("invalid tag")]
    Tag,
    #[error("invalid digest: {0}")]
    Digest(#[from] crate::digest::DigestError),
}

/// `component(/component)*`, each `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(String);

impl RepositoryName {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.is_empty() || s.len() > MAX_NAME_LEN || !s.split('/').all(valid_component) {
            return Err(ReferenceError::Name);
        }
        Ok(RepositoryName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Docker Hub puts one-component names under `library/`.
    pub fn with_library_prefix(&self) -> RepositoryName {
        if self.0.contains('/') {
            self.clone()
        } else {
            RepositoryName(format!("library/{}", self.0))
        }
    }
}

fn valid_component(c: &str) -> bool {
    let alnum = |x: char| x.is_ascii_lowercase() || x.is_ascii_digit();
    let (Some(first), Some(last)) = (c.chars().next(), c.chars().last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Between alphanumeric runs, each separator run is ".", "_", "__" or one or more "-".
    c.split(alnum)
        .filter(|sep| !sep.is_empty())
        .all(|sep| sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-'))
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let first = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
        let rest = |x: u8| first(x) || x == b'.' || x == b'-';
        let mut bytes = s.bytes();
        if s.len() > MAX_TAG_LEN || !bytes.next().is_some_and(first) || !bytes.all(rest) {
            return Err(ReferenceError::Tag);
        }
        Ok(Tag(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(Tag::parse(s)?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => fmt::Display::fmt(t, f),
            Reference::Digest(d) => fmt::Display::fmt(d, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        let ok = [
            "alpine",
            "library/alpine",
            "a/b/c/d",
            "my-org/my--app",
            "foo_bar/x__y",
            "a.b/c",
            "0",
            "kubernetes-sigs/kind/node",
        ];
        let bad = [
            "", "Alpine", "../etc", "a/../b", "a//b", "/a", "a/", "a/.", "a___b", "a..b", "-a",
            "a-", "a b", "a%2f..", "a\\b", "a._b",
        ];
        for n in ok {
            assert!(RepositoryName::parse(n).is_ok(), "{n}");
        }
        for n in bad {
            assert!(RepositoryName::parse(n).is_err(), "{n}");
        }
        assert!(RepositoryName::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn tags() {
        for t in ["latest", "1.0", "v1.2.3-rc1", "_x", "A", &"a".repeat(128)] {
            assert!(Tag::parse(t).is_ok(), "{t}");
        }
        for t in ["", ".x", "-x", "a/b", "a:b", "..", &"a".repeat(129)] {
            assert!(Tag::parse(t).is_err(), "{t}");
        }
    }

    #[test]
    fn library_prefix() {
        let n = RepositoryName::parse("alpine").unwrap();
        assert_eq!(n.with_library_prefix().as_str(), "library/alpine");
        let n = RepositoryName::parse("org/app").unwrap();
        assert_eq!(n.with_library_prefix().as_str(), "org/app");
    }

    proptest! {
        // Whatever parses as a name can never escape a directory it is joined to.
        #[test]
        fn valid_names_are_path_safe(s in "[a-z0-9._/-]{1,40}") {
            if let Ok(n) = RepositoryName::parse(&s) {
                for c in n.as_str().split('/') {
                    prop_assert!(!c.is_empty() && c != "." && c != "..");
                }
            }
        }
    }
}
