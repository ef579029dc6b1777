//! OCI image manifest → Docker schema2 manifest, for clients that take schema2 but not OCI
//! (Docker ≤ 18.06, Windows Docker EE 17.06).
//!
//! Only media types change; digests, sizes and `urls` are kept, so every blob the converted
//! manifest names is the same blob. What schema2 has no field for is dropped: the manifest's
//! `annotations`, `subject` and `artifactType`, and descriptor `annotations` (moby ignores them
//! anyway). zstd and unknown layer types have no schema2 equivalent and are refused, as are
//! artifacts (non-image config or `artifactType`).
//!
//! The output is deterministic — fixed field order (schemaVersion, mediaType, config, layers;
//! mediaType, size, digest, urls), three-space indentation as Distribution's `schema2` package
//! writes it — so one input always gives the same bytes and digest.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::media_type::{
    self, DOCKER_CONFIG, DOCKER_FOREIGN_LAYER, DOCKER_FOREIGN_LAYER_GZIP, DOCKER_LAYER,
    DOCKER_LAYER_GZIP, OCI_CONFIG, OCI_LAYER, OCI_LAYER_GZIP, OCI_NONDISTRIBUTABLE_LAYER,
    OCI_NONDISTRIBUTABLE_LAYER_GZIP,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    #[error("malformed OCI manifest: {0}")]
    Malformed(String),
    #[error("not an OCI image manifest (media type {0})")]
    NotAnOciManifest(String),
    #[error("an artifact (artifactType {0}) has no Docker schema2 form")]
    Artifact(String),
    #[error("config media type {0} is not an image config; Docker schema2 cannot carry it")]
    UnsupportedConfig(String),
    #[error("layer {position} has media type {media_type}, which Docker schema2 cannot express")]
    UnsupportedLayer {
        /// From 1.
        position: usize,
        media_type: String,
    },
}

/// The schema2 media type for an OCI (or already Docker) layer media type; `None` when there is
/// none (zstd, unknown).
pub fn docker_layer_type(oci: &str) -> Option<&'static str> {
    Some(match oci {
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => DOCKER_LAYER_GZIP,
        OCI_LAYER | DOCKER_LAYER => DOCKER_LAYER,
        OCI_NONDISTRIBUTABLE_LAYER_GZIP | DOCKER_FOREIGN_LAYER_GZIP => DOCKER_FOREIGN_LAYER_GZIP,
        OCI_NONDISTRIBUTABLE_LAYER | DOCKER_FOREIGN_LAYER => DOCKER_FOREIGN_LAYER,
        _ => return None,
    })
}

#[derive(Deserialize)]
struct OciManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(rename = "artifactType", default)]
    artifact_type: Option<String>,
    config: InDescriptor,
    layers: Vec<InDescriptor>,
}

#[derive(Deserialize)]
struct InDescriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    urls: Option<Vec<String>>,
}

/// Field order here is the output's field order.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Schema2Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub config: Schema2Descriptor,
    pub layers: Vec<Schema2Descriptor>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Schema2Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub size: u64,
    pub digest: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

/// Converts an OCI image manifest into the equivalent Docker schema2 manifest bytes.
pub fn convert_oci_to_docker(bytes: &[u8]) -> Result<Vec<u8>, ConversionError> {
    let malformed = |e: serde_json::Error| ConversionError::Malformed(e.to_string());
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(malformed)?;
    // serde would also read a struct from a JSON array; a manifest and its descriptors are
    // objects.
    let objects = value.as_object().is_some_and(|o| {
        o.get("config").is_none_or(serde_json::Value::is_object)
            && match o.get("layers") {
                Some(serde_json::Value::Array(layers)) => layers.iter().all(|l| l.is_object()),
                _ => true,
            }
    });
    if !objects {
        return Err(ConversionError::Malformed(
            "the manifest and its descriptors must be JSON objects".into(),
        ));
    }
    let oci: OciManifest = serde_json::from_value(value).map_err(malformed)?;
    if let Some(t) = oci.media_type.as_deref() {
        if t != media_type::OCI_MANIFEST {
            return Err(ConversionError::NotAnOciManifest(t.to_owned()));
        }
    }
    if oci.schema_version != 2 {
        return Err(ConversionError::Malformed(format!(
            "schemaVersion {} (want 2)",
            oci.schema_version
        )));
    }
    if let Some(t) = oci.artifact_type {
        return Err(ConversionError::Artifact(t));
    }
    let config_type = match oci.config.media_type.as_str() {
        OCI_CONFIG | DOCKER_CONFIG => DOCKER_CONFIG,
        other => return Err(ConversionError::UnsupportedConfig(other.to_owned())),
    };
    let config = descriptor(oci.config, config_type, "config")?;
    let layers = oci
        .layers
        .into_iter()
        .enumerate()
        .map(|(i, layer)| {
            let Some(t) = docker_layer_type(&layer.media_type) else {
                return Err(ConversionError::UnsupportedLayer {
                    position: i + 1,
                    media_type: layer.media_type,
                });
            };
            descriptor(layer, t, "layer")
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = Schema2Manifest {
        schema_version: 2,
        media_type: media_type::DOCKER_MANIFEST.to_owned(),
        config,
        layers,
    };
    let mut buf = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
    out.serialize(&mut ser)
        .map_err(|e| ConversionError::Malformed(e.to_string()))?;
    Ok(buf)
}

fn descriptor(
    d: InDescriptor,
    media_type: &str,
    what: &str,
) -> Result<Schema2Descriptor, ConversionError> {
    // Validated so that the output never names something no registry could serve.
    let digest: Digest = d
        .digest
        .parse()
        .map_err(|e| ConversionError::Malformed(format!("{what} digest {:?}: {e}", d.digest)))?;
    Ok(Schema2Descriptor {
        media_type: media_type.to_owned(),
        size: d.size,
        digest: digest.to_string(),
        urls: d.urls.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests;
