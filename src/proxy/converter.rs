//! What converts a zstd layer to its tar, shared by the manifest path (`layers.rs`) and the blob
//! path (`blobs.rs`): the conversion permits (`conversion.max_concurrent`), the bounds, and which
//! zstd layer each converted digest comes from, per upstream — so that a GET of a converted
//! layer no longer cached converts it again.

use crate::body::UpstreamBody;
use crate::cache::blob::{IncomingBlob, OnSettled, SourceError};
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
        // A whole zstd stream is a conversion only if its tar is the diff_id: counted once
        // the fill has checked it (a mismatch is `failed`), whichever of the two ends last.
        let outcome = Arc::new(std::sync::Mutex::new(Outcome::default()));
        let metrics = self.metrics.clone();
        let ended = outcome.clone();
        let report: unzstd::Report = Box::new(move |outcome, zstd, tar, took| {
            if let Some((outcome, zstd, tar, took)) = lock(&ended).ended(outcome, zstd, tar, took) {
                metrics.layer_conversion(outcome, zstd, tar, took);
            }
        });
        let metrics = self.metrics.clone();
        let settled = OnSettled::new(move |verified| {
            if let Some((outcome, zstd, tar, took)) = lock(&outcome).settled(verified) {
                metrics.layer_conversion(outcome, zstd, tar, took);
            }
        });
        Ok(IncomingBlob {
            size: None,
            body: unzstd::decompress(zstd, self.bounds, permit, report),
            from_parent: false,
            on_settled: Some(settled),
        })
    }
}

/// What the decompression reported and what the fill said of its output, until both are in.
#[derive(Default)]
struct Outcome {
    decompressed: Option<(&'static str, u64, u64, Duration)>,
    verified: Option<bool>,
}

type Counted = (&'static str, u64, u64, Duration);

impl Outcome {
    /// The decompression ended: counted now unless a whole stream waits for the fill's word.
    fn ended(
        &mut self,
        outcome: &'static str,
        zstd: u64,
        tar: u64,
        took: Duration,
    ) -> Option<Counted> {
        self.decompressed = Some((outcome, zstd, tar, took));
        self.count()
    }

    fn settled(&mut self, verified: bool) -> Option<Counted> {
        self.verified = Some(verified);
        self.count()
    }

    fn count(&mut self) -> Option<Counted> {
        let (outcome, zstd, tar, took) = self.decompressed?;
        let outcome = match (outcome, self.verified) {
            ("converted", None) => return None,
            ("converted", Some(false)) => "failed",
            (outcome, _) => outcome,
        };
        // Counted once: the other side, arriving later, finds nothing.
        self.decompressed = None;
        Some((outcome, zstd, tar, took))
    }
}

fn lock(m: &std::sync::Mutex<Outcome>) -> std::sync::MutexGuard<'_, Outcome> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
