//! Image references as people type them (`alpine`, `ghcr.io/org/app:v1`,
//! `127.0.0.1:5000/multi@sha256:…`), for the command line. Pure.

use crate::reference::{Reference, ReferenceError, RepositoryName, Tag};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry part, when the reference names one.
    pub registry: Option<String>,
    pub repository: RepositoryName,
    pub reference: Reference,
}

#[derive(Debug, thiserror::Error)]
#[error("`{input}` is not an image reference: {source}")]
pub struct ImageRefError {
    input: String,
    source: ReferenceError,
}

impl ImageRef {
    pub fn parse(input: &str) -> Result<ImageRef, ImageRefError> {
        let err = |source| ImageRefError {
            input: input.to_owned(),
            source,
        };
        // The first component is a registry when it looks like a host, as docker's parser says.
        let (registry, rest) = match input.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first.to_owned()), rest)
            }
            _ => (None, input),
        };
        let (name, reference) = if let Some((name, digest)) = rest.split_once('@') {
            (
                name,
                Reference::Digest(digest.parse().map_err(|e| err(ReferenceError::Digest(e)))?),
            )
        } else {
            match rest.rsplit_once(':') {
                Some((name, tag)) if !tag.contains('/') => {
                    (name, Reference::Tag(Tag::parse(tag).map_err(err)?))
                }
                _ => (rest, Reference::Tag(Tag::parse("latest").map_err(err)?)),
            }
        };
        Ok(ImageRef {
            registry,
            repository: RepositoryName::parse(name).map_err(err)?,
            reference,
        })
    }

    /// The manifest request path archway would see from a client pulling this image through
    /// a containerd mirror (`?ns=` names the registry).
    pub fn manifest_path(&self) -> String {
        let mut p = format!("/v2/{}/manifests/{}", self.repository, self.reference);
        if let Some(r) = &self.registry {
            p.push_str("?ns=");
            p.push_str(r);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let cases = [
            ("alpine", None, "alpine", "latest"),
            ("alpine:3.19", None, "alpine", "3.19"),
            ("library/alpine", None, "library/alpine", "latest"),
            (
                "docker.io/library/alpine:3",
                Some("docker.io"),
                "library/alpine",
                "3",
            ),
            ("ghcr.io/org/app:v1", Some("ghcr.io"), "org/app", "v1"),
            (
                "127.0.0.1:5000/multi:oci",
                Some("127.0.0.1:5000"),
                "multi",
                "oci",
            ),
            ("localhost/x", Some("localhost"), "x", "latest"),
        ];
        for (input, reg, name, reference) in cases {
            let r = ImageRef::parse(input).unwrap();
            assert_eq!(r.registry.as_deref(), reg, "{input}");
            assert_eq!(r.repository.as_str(), name, "{input}");
            assert_eq!(r.reference.to_string(), reference, "{input}");
        }
        let r = ImageRef::parse(&format!("quay.io/a/b@{d}")).unwrap();
        assert_eq!(r.reference.to_string(), d);
        assert_eq!(
            r.manifest_path(),
            format!("/v2/a/b/manifests/{d}?ns=quay.io")
        );
        for bad in ["", "UPPER/x", "x:-bad", "x@sha256:nope", "a//b"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}
