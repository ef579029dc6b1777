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
}
