//! zstd layers for clients that cannot read them (who: `route_policy::layers`): a manifest
//! whose zstd layers are replaced by their tars (`layer_plan`), each tar made by decompressing
//! the zstd layer (`unzstd`) as a blob fill under its `diff_id` — so the blob store checks that
//! it hashes to its digest, keeps it like any blob (L1, and the bucket with `[storage]`), and
//! concurrent requests for it join one conversion. The manifest request waits for its layers,
//! at most `conversion.max_wait`.
//!
//! What converts (permits, bounds, the memo of sources) is `converter.rs`, shared with the
//! blob path.

use super::access::{AccessGate, Object};
use super::blobs::Blobs;
use super::converter::Converter;
use super::manifests::Manifests;
use crate::cache::blob::{BlobOrigin, FillError};
use crate::digest::Digest;
use crate::error::{ErrorCode, ProxyError};
use crate::layer_plan::{self, ConvertedLayer, LayerPlan, LayerPlanError, ZstdLayer};
use crate::manifest::Manifest;
use crate::reference::RepositoryName;
use crate::route_policy::ZstdReads;
use crate::upstream::Upstream;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use std::sync::Arc;

/// The largest image config read for its `diff_ids`.
const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// What a conversion needs of the proxy for one request.
pub(crate) struct LayerWork<'a> {
    pub(crate) converter: &'a Arc<Converter>,
    pub(crate) blobs: &'a Blobs,
    pub(crate) access: &'a AccessGate,
}

impl LayerWork<'_> {
    /// `m` with the layers `reads` cannot take converted (and stored, so a GET by its digest is
    /// served); `None` when it has none.
    pub(crate) async fn convert(
        &self,
        manifests: &Manifests,
        upstream: &Arc<Upstream>,
        repo: &RepositoryName,
        m: &Arc<Manifest>,
        reads: ZstdReads,
    ) -> Result<Option<Arc<Manifest>>, ProxyError> {
        let bad = |e: LayerPlanError| {
            ProxyError::upstream(
                ErrorCode::ManifestInvalid,
                format!("cannot convert the zstd layers of {}: {e}", m.digest),
            )
            .with_status(StatusCode::BAD_GATEWAY)
        };
        let Some(plan) = layer_plan::zstd_layers(&m.bytes, reads).map_err(bad)? else {
            return Ok(None);
        };
        let config = self.read_config(upstream, repo, &plan).await?;
        let plan = layer_plan::with_diff_ids(plan, &config).map_err(bad)?;
        let layers = plan
            .layers
            .iter()
            .map(|layer| self.convert_layer(upstream, repo, m, layer));
        let converted = futures_util::future::try_join_all(layers).await?;
        let bytes = layer_plan::rewrite(&m.bytes, &converted).map_err(bad)?;
        let out = Arc::new(Manifest {
            digest: Digest::sha256_of(&bytes),
            media_type: m.media_type.clone(),
            bytes: Bytes::from(bytes),
        });
        manifests
            .keep(out.clone())
            .await
            .map_err(|e| ProxyError::internal(format!("cannot store a converted manifest: {e}")))?;
        tracing::info!(source = %m.digest, converted = %out.digest, layers = converted.len(), "zstd layers converted");
        Ok(Some(out))
    }

    /// The image config's bytes (a blob this route may read).
    async fn read_config(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepositoryName,
        plan: &LayerPlan,
    ) -> Result<Vec<u8>, ProxyError> {
        if plan.config_size > MAX_CONFIG_BYTES {
            return Err(ProxyError::bad_gateway(format!(
                "image config {} is {} bytes, over the {MAX_CONFIG_BYTES} read for its diff_ids",
                plan.config, plan.config_size
            )));
        }
        let blob = self
            .blobs
            .fetch_for_route(self.access, upstream, repo, &plan.config)
            .await
            .map_err(|e| {
                unreadable(
                    e,
                    format!(
                        "the image config {} cannot be read for its diff_ids",
                        plan.config
                    ),
                )
            })?;
        let blob = blob
            .verified()
            .await
            .map_err(|e| ProxyError::bad_gateway(format!("image config {}: {e}", plan.config)))?;
        let body = http_body_util::Limited::new(blob.body(None), MAX_CONFIG_BYTES as usize);
        let bytes = body
            .collect()
            .await
            .map_err(|e| ProxyError::bad_gateway(format!("image config {}: {e}", plan.config)))?;
        Ok(bytes.to_bytes().to_vec())
    }

    /// One zstd layer as its tar, committed under its `diff_id`.
    async fn convert_layer(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepositoryName,
        m: &Manifest,
        layer: &ZstdLayer,
    ) -> Result<ConvertedLayer, ProxyError> {
        let converter = self.converter;
        let name = upstream.config().name.as_str();
        let diff_id = layer.diff_id.clone().ok_or_else(|| {
            ProxyError::internal(format!("layer {} has no diff_id", layer.position))
        })?;
        let failed = |why: String| {
            ProxyError::upstream(
                ErrorCode::ManifestInvalid,
                format!(
                    "layer {} of {} ({}) cannot be converted for this client: {why}",
                    layer.position, m.digest, layer.digest
                ),
            )
            .with_status(StatusCode::BAD_GATEWAY)
        };
        converter.remember(name, &diff_id, &layer.digest);
        let store = self.blobs.store();
        let size = match store.head(&diff_id) {
            Some((size, BlobOrigin::Hit)) => size,
            _ => {
                if layer.size > converter.max_layer_size {
                    return Err(failed(format!(
                        "it is {} bytes, over conversion.max_layer_size ({})",
                        layer.size, converter.max_layer_size
                    )));
                }
                // The zstd layer, read as this route (the access gate decides, as for a GET).
                let source = self
                    .blobs
                    .fetch_for_route(self.access, upstream, repo, &layer.digest)
                    .await
                    .map_err(|e| {
                        unreadable(
                            e,
                            format!(
                                "layer {} of {} ({}) cannot be converted for this client",
                                layer.position, m.digest, layer.digest
                            ),
                        )
                    })?;
                let c = converter.clone();
                let fill = self
                    .blobs
                    .fill_converted(upstream, repo, &diff_id, move || async move {
                        c.decompress(source.body(None)).await
                    })
                    .await
                    .map_err(|e| failed(conversion_error(e, &diff_id)))?;
                let done = tokio::time::timeout(converter.max_wait, fill.verified())
                    .await
                    .map_err(|_| {
                        ProxyError::downstream(
                            ErrorCode::Unavailable,
                            format!(
                                "layer {} of {} is still being converted (conversion.max_wait {:?}); it goes on, ask again",
                                layer.position, m.digest, converter.max_wait
                            ),
                        )
                        .with_status(StatusCode::SERVICE_UNAVAILABLE)
                    })?
                    .map_err(|e| failed(conversion_error(e, &diff_id)))?;
                done.size()
                    .ok_or_else(|| failed("no size after conversion".into()))?
            }
        };
        // Made from a layer this route could read: the route may read it.
        self.access
            .granted(Object::Blob(store), upstream, repo, &diff_id)
            .await;
        Ok(ConvertedLayer {
            position: layer.position,
            digest: diff_id,
            size,
        })
    }
}

/// A blob a conversion reads (the config, a zstd layer) that could not be had, said of the
/// manifest asked for: upstream's 404 of that blob is not the manifest missing, so the answer
/// is a 502 naming the blob. Other failures keep their status and code (a 401 still asks for
/// credentials, a 429 or 503 still says when to retry), with `what` in the message.
fn unreadable(e: ProxyError, what: String) -> ProxyError {
    if e.status == StatusCode::NOT_FOUND {
        ProxyError::upstream(
            ErrorCode::ManifestBlobUnknown,
            format!("{what}: upstream does not have it ({})", e.message),
        )
        .with_status(StatusCode::BAD_GATEWAY)
    } else {
        ProxyError {
            message: format!("{what}: {}", e.message),
            ..e
        }
    }
}

/// A conversion's failure in words: a mismatch says the tar is not the config's diff_id.
fn conversion_error(e: FillError, diff_id: &Digest) -> String {
    let text = match &e {
        FillError::Source(s) => s.to_string(),
        FillError::Failed(c) | FillError::TooLarge(c) | FillError::Storage(c) => {
            c.message().to_owned()
        }
    };
    if text.contains("mismatch") || text.contains("does not match") {
        format!("it does not decompress to its diff_id {diff_id}: {text}")
    } else {
        text
    }
}
