//! A manifest as archway keeps and serves it: upstream's exact bytes, the digest they hash to,
//! and the media type. Never re-serialised. Pure.

use crate::digest::Digest;
use crate::media_type;
use bytes::Bytes;

/// Distribution refuses manifests above 4 MiB; so does archway, so a hostile upstream can't fill
/// memory.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// What `bytes` hash to.
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// Upstream's Content-Type when it is specific, else the manifest's own `mediaType` field (or
/// schema 1's shape), else the Content-Type, else `application/json`.
pub fn media_type_of(content_type: Option<&str>, bytes: &[u8]) -> String {
    let generic = |t: &str| {
        t.is_empty()
            || t == "application/json"
            || t == "text/plain"
            || t == "application/octet-stream"
    };
    if let Some(t) = content_type.filter(|t| !generic(t)) {
        return t.to_owned();
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
        signatures: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe {
            media_type: Some(t),
            ..
        }) if !t.is_empty() && http::HeaderValue::from_str(&t).is_ok() => t,
        Ok(Probe {
            schema_version: Some(1),
            signatures: Some(_),
            ..
        }) => media_type::DOCKER_SCHEMA1_SIGNED.to_owned(),
        Ok(Probe {
            schema_version: Some(1),
            ..
        }) => media_type::DOCKER_SCHEMA1.to_owned(),
        _ => content_type.unwrap_or("application/json").to_owned(),
    }
}

/// Whether the manifest's own bytes prove `media_type` (a type read back from somewhere that
/// is not trusted, the bucket's Content-Type): its `mediaType` field when it has one, else its
/// shape (`manifests`: an index or list; `config` and `layers`: an image manifest; schema 1).
/// Bytes that say nothing of their type prove nothing.
pub fn proves_media_type(media_type: &str, bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Shape {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    let Ok(shape) = serde_json::from_slice::<Shape>(bytes) else {
        return false;
    };
    if let Some(t) = shape.media_type.filter(|t| !t.is_empty()) {
        return t == media_type;
    }
    if shape.schema_version == Some(1) {
        return media_type == media_type::DOCKER_SCHEMA1_SIGNED
            || media_type == media_type::DOCKER_SCHEMA1;
    }
    if shape.manifests.is_some() {
        return media_type::is_index(media_type);
    }
    if shape.config.is_some() && shape.layers.is_some() {
        return media_type == media_type::OCI_MANIFEST || media_type == media_type::DOCKER_MANIFEST;
    }
    false
}

/// The config and layers an image manifest names, with their declared sizes (foreign layers
/// too: they may be cached); an error when the bytes are not JSON.
pub fn named_blobs(bytes: &[u8]) -> Result<Vec<(Digest, u64)>, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_slice(bytes)?;
    Ok(v.get("config")
        .into_iter()
        .chain(
            v.get("layers")
                .and_then(|l| l.as_array())
                .into_iter()
                .flatten(),
        )
        .filter_map(|d| {
            let digest = d.get("digest")?.as_str()?.parse::<Digest>().ok()?;
            Some((digest, d.get("size").and_then(|s| s.as_u64()).unwrap_or(0)))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_detection() {
        let oci = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#;
        assert_eq!(media_type_of(None, oci), media_type::OCI_INDEX);
        assert_eq!(
            media_type_of(Some("application/json"), oci),
            media_type::OCI_INDEX
        );
        assert_eq!(
            media_type_of(Some(media_type::DOCKER_MANIFEST), oci),
            media_type::DOCKER_MANIFEST,
            "a specific Content-Type wins"
        );
        let s1 = br#"{"schemaVersion":1,"signatures":[]}"#;
        assert_eq!(media_type_of(None, s1), media_type::DOCKER_SCHEMA1_SIGNED);
        assert_eq!(media_type_of(None, b"not json"), "application/json");
    }

    #[test]
    fn a_media_type_is_proven_by_the_bytes_or_not_at_all() {
        let oci = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert!(proves_media_type(media_type::OCI_INDEX, oci));
        assert!(!proves_media_type(media_type::DOCKER_MANIFEST_LIST, oci));
        assert!(!proves_media_type(media_type::OCI_MANIFEST, oci));
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(proves_media_type(media_type::OCI_INDEX, index));
        assert!(proves_media_type(media_type::DOCKER_MANIFEST_LIST, index));
        assert!(!proves_media_type(media_type::OCI_MANIFEST, index));
        let image = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert!(proves_media_type(media_type::OCI_MANIFEST, image));
        assert!(!proves_media_type(media_type::OCI_INDEX, image));
        let s1 = br#"{"schemaVersion":1,"fsLayers":[],"signatures":[]}"#;
        assert!(proves_media_type(media_type::DOCKER_SCHEMA1_SIGNED, s1));
        assert!(!proves_media_type(media_type::OCI_MANIFEST, s1));
        assert!(!proves_media_type("application/json", b"not json"));
        assert!(!proves_media_type(
            media_type::OCI_MANIFEST,
            br#"{"schemaVersion":2}"#
        ));
    }
}
