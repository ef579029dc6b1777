//! Where things live in the bucket (pure): `<prefix>blobs/sha256/<hex>`,
//! `<prefix>manifests/sha256/<hex>`,
//! `<prefix>fills/sha256/<hex>` (fill leases of blobs), `<prefix>fills/manifests/sha256/<hex>`
//! and `<prefix>fills/tags/<upstream>/<repository>/<tag>` (leases of a manifest fetch and of a
//! tag revalidation), `<prefix>tags/<upstream>/<repository>/<tag>`, and pinned images' copies
//! under `<prefix>pins/` (with the fleet's pin list, `<prefix>pins/list`).
//!
//! Digests are hex, repository names and tags are validated before they get here, and upstream
//! names come from the config; object_store percent-encodes anything a key part may not hold,
//! so no client text can step outside the prefix.

use crate::cache::tag_key::TagKey;
use crate::digest::Digest;
use object_store::path::{Path, PathPart};

/// The key layout under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The prefix's parts (`prod/eu/` → `prod`, `eu`).
    prefix: Vec<String>,
}

impl Keys {
    /// `prefix` is empty or ends in `/` (checked by the config).
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix
                .split('/')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }

    pub fn blob(&self, digest: &Digest) -> Path {
        self.path(&["blobs", digest.algorithm().as_str(), digest.hex()])
    }

    /// Where every blob lives (`<prefix>blobs`).
    pub fn blobs_root(&self) -> Path {
        self.path(&["blobs"])
    }

    /// The fill lease of a blob (`fleet`): present only while one replica fills it.
    pub fn fill_lease(&self, digest: &Digest) -> Path {
        self.path(&["fills", digest.algorithm().as_str(), digest.hex()])
    }

    /// The lease of a manifest GET by digest: present only while one replica fetches it.
    pub fn manifest_lease(&self, digest: &Digest) -> Path {
        self.path(&[
            "fills",
            "manifests",
            digest.algorithm().as_str(),
            digest.hex(),
        ])
    }

    /// The lease of a tag's revalidation: present only while one replica asks upstream.
    pub fn tag_lease(&self, key: &TagKey) -> Path {
        let mut parts = vec!["fills", "tags", key.upstream.as_str()];
        parts.extend(key.repository.split('/'));
        parts.push(key.tag.as_str());
        self.path(&parts)
    }

    /// The lease of the sweep of stale leases (one replica sweeps at a time).
    pub fn sweep_lease(&self) -> Path {
        self.path(&["sweep"])
    }

    /// Where every lease lives (the sweep lists it).
    pub fn leases(&self) -> Path {
        self.path(&["fills"])
    }

    /// The sealed access record of a blob or manifest (`kind`: `blobs`, `manifests`).
    pub fn access(&self, kind: &str, digest: &Digest) -> Path {
        self.path(&["access", kind, digest.algorithm().as_str(), digest.hex()])
    }

    pub fn manifest(&self, digest: &Digest) -> Path {
        self.path(&["manifests", digest.algorithm().as_str(), digest.hex()])
    }

    pub fn tag(&self, key: &TagKey) -> Path {
        let mut parts = vec!["tags", key.upstream.as_str()];
        parts.extend(key.repository.split('/'));
        parts.push(key.tag.as_str());
        self.path(&parts)
    }

    /// A pinned image's copy of a blob: under `pins/`, which the documented lifecycle rules do
    /// not expire (docs/fleet.md, "Pins in the bucket").
    pub fn pinned_blob(&self, digest: &Digest) -> Path {
        self.path(&["pins", "blobs", digest.algorithm().as_str(), digest.hex()])
    }

    /// A pinned image's copy of a manifest.
    pub fn pinned_manifest(&self, digest: &Digest) -> Path {
        self.path(&[
            "pins",
            "manifests",
            digest.algorithm().as_str(),
            digest.hex(),
        ])
    }

    /// The fleet's runtime pins: one sealed record.
    pub fn pin_list(&self) -> Path {
        self.path(&["pins", "list"])
    }

    fn path(&self, parts: &[&str]) -> Path {
        self.prefix
            .iter()
            .map(|p| PathPart::from(p.as_str()))
            .chain(parts.iter().map(|p| PathPart::from(*p)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest::sha256_of(b"x")
    }

    #[test]
    fn layout() {
        let hex = digest().hex().to_owned();
        let none = Keys::new("");
        assert_eq!(none.blob(&digest()).as_ref(), format!("blobs/sha256/{hex}"));
        let prod = Keys::new("prod/eu/");
        assert_eq!(
            prod.blob(&digest()).as_ref(),
            format!("prod/eu/blobs/sha256/{hex}")
        );
        assert_eq!(
            prod.fill_lease(&digest()).as_ref(),
            format!("prod/eu/fills/sha256/{hex}")
        );
        assert_eq!(
            prod.manifest(&digest()).as_ref(),
            format!("prod/eu/manifests/sha256/{hex}")
        );
        let tag = TagKey {
            upstream: "docker.io".into(),
            repository: "library/alpine".into(),
            tag: "3.20".into(),
        };
        assert_eq!(
            prod.tag(&tag).as_ref(),
            "prod/eu/tags/docker.io/library/alpine/3.20"
        );
        assert_eq!(
            prod.manifest_lease(&digest()).as_ref(),
            format!("prod/eu/fills/manifests/sha256/{hex}")
        );
        assert_eq!(
            prod.tag_lease(&tag).as_ref(),
            "prod/eu/fills/tags/docker.io/library/alpine/3.20"
        );
        assert_eq!(prod.leases().as_ref(), "prod/eu/fills");
        assert_eq!(prod.sweep_lease().as_ref(), "prod/eu/sweep");
        assert_eq!(
            prod.pinned_blob(&digest()).as_ref(),
            format!("prod/eu/pins/blobs/sha256/{hex}")
        );
        assert_eq!(
            prod.pinned_manifest(&digest()).as_ref(),
            format!("prod/eu/pins/manifests/sha256/{hex}")
        );
        assert_eq!(prod.pin_list().as_ref(), "prod/eu/pins/list");
    }

    /// The lifecycle rules in docs/fleet.md (what bounds the bucket) expire exactly the objects
    /// archway caches there: each of its blob, manifest and tag keys falls under one Expiration
    /// rule's prefix, and no Expiration rule covers the leases (archway deletes those itself).
    #[test]
    fn the_documented_lifecycle_rules_cover_blobs_manifests_and_tags() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/fleet.md"))
            .expect("docs/fleet.md");
        let start = doc
            .find("put-bucket-lifecycle-configuration --bucket archway --lifecycle-configuration '")
            .expect("the lifecycle command");
        let json = &doc[start..];
        let json = &json[json.find('\'').unwrap() + 1..];
        let json = &json[..json.find('\'').unwrap()];
        let rules: serde_json::Value = serde_json::from_str(json).expect("the rules parse");
        let expiring: Vec<String> = rules["Rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["Status"] == "Enabled" && r["Expiration"]["Days"].as_u64() > Some(0))
            .map(|r| r["Filter"]["Prefix"].as_str().unwrap().to_owned())
            .collect();
        let prod = Keys::new("prod/");
        let tag = TagKey {
            upstream: "docker.io".into(),
            repository: "library/alpine".into(),
            tag: "3.20".into(),
        };
        let covered = |key: &Path| {
            expiring
                .iter()
                .any(|p| key.as_ref().starts_with(p.as_str()))
        };
        assert!(covered(&prod.blob(&digest())), "{expiring:?}");
        assert!(covered(&prod.manifest(&digest())), "{expiring:?}");
        assert!(covered(&prod.tag(&tag)), "{expiring:?}");
        // An access record that expires before its object only costs a HEAD to confirm again.
        assert!(covered(&prod.access("blobs", &digest())), "{expiring:?}");
        assert!(!covered(&prod.fill_lease(&digest())), "{expiring:?}");
        assert!(!covered(&prod.sweep_lease()), "{expiring:?}");
        // Pinned images' copies and the pin list are what the rules must leave alone.
        assert!(!covered(&prod.pinned_blob(&digest())), "{expiring:?}");
        assert!(!covered(&prod.pinned_manifest(&digest())), "{expiring:?}");
        assert!(!covered(&prod.pin_list()), "{expiring:?}");
    }

    #[test]
    fn no_part_escapes_its_place() {
        let tag = TagKey {
            upstream: "host:5000".into(),
            repository: "a/b".into(),
            tag: "..".into(),
        };
        let key = Keys::new("p/").tag(&tag);
        // `..` and `:`-bearing parts are encoded, never path steps.
        assert!(key.as_ref().starts_with("p/tags/"), "{key}");
        assert!(!key.parts().any(|p| p.as_ref() == ".."), "{key}");
    }
}
