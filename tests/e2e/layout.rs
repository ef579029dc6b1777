//! Reading what skopeo wrote: an OCI image layout, every blob checked against its digest.

use crate::e2e::fixtures::sha256;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    pub fn open(dir: &Path) -> OciLayout {
        let marker = std::fs::read_to_string(dir.join("oci-layout"))
            .unwrap_or_else(|e| panic!("{} is not an OCI layout: {e}", dir.display()));
        assert!(
            marker.contains("imageLayoutVersion"),
            "odd oci-layout file: {marker}"
        );
        OciLayout {
            dir: dir.to_owned(),
        }
    }

    pub fn index(&self) -> Value {
        let raw = std::fs::read(self.dir.join("index.json")).expect("index.json");
        serde_json::from_slice(&raw).expect("index.json is JSON")
    }

    /// The descriptor `index.json` holds under the tag `name`.
    pub fn descriptor(&self, name: &str) -> Value {
        let index = self.index();
        index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("layout has no tag {name}: {index}"))
    }

    /// The bytes of a blob, after checking that they hash to `digest`.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("unexpected digest {digest}"));
        let path = self.dir.join("blobs/sha256").join(hex);
        let data = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("blob {digest} missing from the layout: {e}"));
        assert_eq!(
            sha256(&data),
            digest,
            "blob file {} is corrupt",
            path.display()
        );
        data
    }

    pub fn json(&self, digest: &str) -> Value {
        serde_json::from_slice(&self.blob(digest))
            .unwrap_or_else(|e| panic!("blob {digest} is not JSON: {e}"))
    }

    /// Every digest reachable from the manifest or index `digest`, each one present and intact.
    pub fn walk(&self, digest: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        self.walk_into(digest, &mut seen);
        seen
    }

    fn walk_into(&self, digest: &str, seen: &mut BTreeSet<String>) {
        if !seen.insert(digest.to_owned()) {
            return;
        }
        let doc = self.json(digest);
        for child in doc["manifests"].as_array().into_iter().flatten() {
            self.walk_into(child["digest"].as_str().expect("child digest"), seen);
        }
        let blobs = doc["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(doc.get("config"));
        for b in blobs {
            let d = b["digest"].as_str().expect("blob digest");
            self.blob(d);
            seen.insert(d.to_owned());
        }
    }
}
