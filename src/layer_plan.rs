//! A manifest whose zstd layers a client cannot read, rewritten with those layers as plain tars
//! (pure). A zstd layer's decompressed stream is, by the image spec, the tar whose digest is the
//! config's `diff_id` for that layer: so the converted layer's digest is known before any byte is
//! decompressed, the config (and with it the image ID) does not change, and the conversion is
//! checked by that digest — a layer that does not decompress to its `diff_id` is never served.
//!
//! Steps: [`zstd_layers`] says which layers need converting and which config to read;
//! [`with_diff_ids`] pairs them with the config's `diff_ids`; once each is converted (its size
//! known), [`rewrite`] gives the new manifest's bytes.
//!
//! The rewritten manifest keeps every field of the original; in the converted descriptors the
//! media type becomes the plain tar type of the manifest's flavour, digest and size become the
//! tar's, and zstd:chunked annotations are dropped. It is serialised with sorted keys and
//! three-space indentation (as `conversion.rs`), so one input always gives the same bytes.

use crate::digest::Digest;
use crate::media_type::{self, DOCKER_LAYER, OCI_LAYER};
use crate::route_policy::layers::{ZstdReads, OCI_NONDISTRIBUTABLE_LAYER_ZSTD};
use serde::Serialize;
use serde_json::{Map, Value};

/// Annotations of zstd:chunked layers (containers/storage): they describe the zstd stream,
/// not the tar, and would mislead a client that reads them.
const CHUNKED_ANNOTATION_PREFIX: &str = "io.github.containers.zstd-chunked.";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayerPlanError {
    #[error("malformed manifest: {0}")]
    Malformed(String),
    #[error("malformed image config {config}: {reason}")]
    Config { config: Digest, reason: String },
    #[error("image config {config} lists {diff_ids} diff_ids for {layers} layers")]
    Inconsistent {
        config: Digest,
        diff_ids: usize,
        layers: usize,
    },
    #[error("layer {position} ({digest}) is a non-distributable zstd layer, fetched from its URLs by the client: it cannot be converted")]
    Foreign { position: usize, digest: Digest },
}

/// A layer to convert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZstdLayer {
    /// From 1, as errors name it.
    pub position: usize,
    /// The zstd blob.
    pub digest: Digest,
    pub size: u64,
    /// The tar it decompresses to (from the config); set by [`with_diff_ids`].
    pub diff_id: Option<Digest>,
}

/// What [`zstd_layers`] found to convert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    /// The image config, read for its `diff_ids`.
    pub config: Digest,
    pub config_size: u64,
    pub layer_count: usize,
    pub layers: Vec<ZstdLayer>,
}

/// One converted layer: the tar's digest (its `diff_id`) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertedLayer {
    pub position: usize,
    pub digest: Digest,
    pub size: u64,
}

fn malformed(e: impl std::fmt::Display) -> LayerPlanError {
    LayerPlanError::Malformed(e.to_string())
}

fn object(bytes: &[u8]) -> Result<Map<String, Value>, LayerPlanError> {
    match serde_json::from_slice::<Value>(bytes).map_err(malformed)? {
        Value::Object(o) => Ok(o),
        _ => Err(malformed("not a JSON object")),
    }
}

fn digest_of(d: &Value, what: &str) -> Result<Digest, LayerPlanError> {
    d.get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(format!("{what} has no digest")))?
        .parse()
        .map_err(|e| malformed(format!("{what} digest: {e}")))
}

fn size_of(d: &Value, what: &str) -> Result<u64, LayerPlanError> {
    d.get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| malformed(format!("{what} has no size")))
}

/// The layers of an image manifest (Docker schema2 or OCI) that a client reading `reads`
/// must get converted; `None` when there are none.
pub fn zstd_layers(manifest: &[u8], reads: ZstdReads) -> Result<Option<LayerPlan>, LayerPlanError> {
    let m = object(manifest)?;
    let layers = match m.get("layers") {
        Some(Value::Array(l)) => l,
        _ => return Ok(None),
    };
    let mut todo = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let position = i + 1;
        let what = format!("layer {position}");
        let media_type = layer
            .get("mediaType")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(format!("{what} has no mediaType")))?;
        if !reads.must_convert(media_type) {
            continue;
        }
        let digest = digest_of(layer, &what)?;
        if media_type == OCI_NONDISTRIBUTABLE_LAYER_ZSTD {
            return Err(LayerPlanError::Foreign { position, digest });
        }
        todo.push(ZstdLayer {
            position,
            digest,
            size: size_of(layer, &what)?,
            diff_id: None,
        });
    }
    if todo.is_empty() {
        return Ok(None);
    }
    let config = m
        .get("config")
        .ok_or_else(|| malformed("no config descriptor"))?;
    Ok(Some(LayerPlan {
        config: digest_of(config, "config")?,
        config_size: size_of(config, "config")?,
        layer_count: layers.len(),
        layers: todo,
    }))
}

/// The plan with each layer's `diff_id` from the image config's `rootfs.diff_ids`, which must
/// list one per layer.
pub fn with_diff_ids(mut plan: LayerPlan, config: &[u8]) -> Result<LayerPlan, LayerPlanError> {
    let bad = |reason: &str| LayerPlanError::Config {
        config: plan.config.clone(),
        reason: reason.to_owned(),
    };
    let c = object(config).map_err(|_| bad("not a JSON object"))?;
    let ids = c
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no rootfs.diff_ids"))?;
    if ids.len() != plan.layer_count {
        return Err(LayerPlanError::Inconsistent {
            config: plan.config.clone(),
            diff_ids: ids.len(),
            layers: plan.layer_count,
        });
    }
    let mut out = Vec::with_capacity(plan.layers.len());
    for mut layer in plan.layers.drain(..) {
        let id = ids
            .get(layer.position - 1)
            .and_then(Value::as_str)
            .ok_or_else(|| bad("a diff_id is not a string"))?;
        let digest: Digest = id
            .parse()
            .map_err(|e| bad(&format!("diff_id {id:?}: {e}")))?;
        layer.diff_id = Some(digest);
        out.push(layer);
    }
    plan.layers = out;
    Ok(plan)
}

/// The manifest with the converted layers in place of their zstd originals.
pub fn rewrite(manifest: &[u8], converted: &[ConvertedLayer]) -> Result<Vec<u8>, LayerPlanError> {
    let mut m = object(manifest)?;
    let tar_type = match m.get("mediaType").and_then(Value::as_str) {
        Some(media_type::DOCKER_MANIFEST) => DOCKER_LAYER,
        _ => OCI_LAYER,
    };
    let Some(Value::Array(layers)) = m.get_mut("layers") else {
        return Err(malformed("no layers"));
    };
    for c in converted {
        let layer = layers
            .get_mut(c.position.wrapping_sub(1))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| malformed(format!("no layer {}", c.position)))?;
        layer.insert("mediaType".into(), Value::from(tar_type));
        layer.insert("digest".into(), Value::from(c.digest.to_string()));
        layer.insert("size".into(), Value::from(c.size));
        let empty = match layer.get_mut("annotations") {
            Some(Value::Object(a)) => {
                a.retain(|k, _| !k.starts_with(CHUNKED_ANNOTATION_PREFIX));
                a.is_empty()
            }
            _ => false,
        };
        if empty {
            layer.remove("annotations");
        }
    }
    let mut buf = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
    Value::Object(m).serialize(&mut ser).map_err(malformed)?;
    Ok(buf)
}

#[cfg(test)]
mod tests;
