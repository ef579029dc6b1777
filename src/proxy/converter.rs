//! What converts a zstd layer to its tar, shared by the manifest path (`layers.rs`) and the blob
//! path (`blobs.rs`): the conversion permits (`conversion.max_concurrent`), the bounds, and which
//! zstd layer each converted digest comes from, per upstream — so that a GET of a converted
//! layer no longer cached converts it again.

use crate::body::UpstreamBody;
use crate::cache::blob::{IncomingBlob, SourceError};
use crate::config::ConversionConfig;
use crate::digest::Digest;
use crate::unzstd::{self, Bounds};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Converted layers remembered with their zstd source, per upstream.
const MAX_SOURCES: u64 = 100_000;

/// What converts, shared by the manifest path and the blob path.
pub(crate) struct Converter {
    permits: Arc<Semaphore>,
    bounds: Bounds,
    pub(crate) max_layer_size: u64,
    pub(crate) max_wait: Duration,
    /// (upstream, converted digest) → the zstd layer it is made from.
    sources: moka::sync::Cache<(String, Digest), Digest>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Converter {
    pub(crate) fn new(config: &ConversionConfig, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Converter {
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1) as usize)),
            bounds: Bounds {
                max_output: config.max_output,
                max_ratio: config.max_ratio,
            },
            max_layer_size: config.max_layer_size,
            max_wait: config.max_wait,
            sources: moka::sync::Cache::builder()
                .max_capacity(MAX_SOURCES)
                .build(),
            metrics,
        }
    }

    /// The zstd layer `digest` was converted from, for `upstream`.
    pub(crate) fn source_of(&self, upstream: &str, digest: &Digest) -> Option<Digest> {
        self.sources.get(&(upstream.to_owned(), digest.clone()))
    }

    pub(crate) fn remember(&self, upstream: &str, converted: &Digest, source: &Digest) {
        let key = (upstream.to_owned(), converted.clone());
        if self.sources.get(&key).as_ref() != Some(source) {
            self.sources.insert(key, source.clone());
        }
    }

    /// The tar of a zstd layer, as a fill's source: decompressed as it arrives, once a
    /// conversion permit is free.
    pub(crate) async fn decompress(&self, zstd: UpstreamBody) -> Result<IncomingBlob, SourceError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(SourceError::new)?;
        let metrics = self.metrics.clone();
        let report: unzstd::Report = Box::new(move |outcome, zstd, tar, took| {
            metrics.layer_conversion(outcome, zstd, tar, took);
        });
        Ok(IncomingBlob {
            size: None,
            body: unzstd::decompress(zstd, self.bounds, permit, report),
            from_parent: false,
        })
    }
}
