//! Prometheus metrics: one registry per running archway, fed by the request log point, the
//! upstream client and (at scrape time) the blob store. Encoded in the OpenMetrics text format.
//!
//! Every label value is bounded: kinds, methods, results, sources and reasons are fixed sets,
//! statuses are status codes, upstreams come from the config, and platforms (which clients can
//! name freely) are capped at [`MAX_PLATFORM_LABELS`] distinct values.
//!
//! Here: `Metrics`, what each event records, and the encoding. Beside it: `families` (what is
//! registered, with its help, for the [`Features`] configured), `labels` (the label sets),
//! `storage_observer` (the bucket's reports), `upstream_outcome`, `blob_store` (the store's
//! figures read at scrape time) and `warm` (`archway warm`'s own families).

use crate::cache::blob::BlobStore;
use crate::status::{Board, Role};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Distinct `platform` label values kept; later ones are counted under `other`, so clients
/// sending made-up platforms cannot grow the series without bound.
pub const MAX_PLATFORM_LABELS: usize = 64;

/// All of archway's metrics. Cheap to share (`Arc`); every method takes `&self`.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<KindMethodLabels>,
    cache_results: Family<CacheLabels, Counter>,
    bytes_served: Family<SourceLabels, Counter>,
    upstream_bytes_saved: Counter,
    rewrites: Family<RewriteLabels, Counter>,
    upstream_requests: Family<UpstreamStatusLabels, Counter>,
    upstream_duration: HistogramFamily<UpstreamLabels>,
    token_fetches: Family<UpstreamLabels, Counter>,
    upstream_received: Family<UpstreamLabels, Counter>,
    ratelimit_remaining: Family<UpstreamLabels, Gauge>,
    parent_requests: Family<ParentStatusLabels, Counter>,
    parent_failovers: Family<ParentLabels, Counter>,
    connections_open: Gauge,
    connections_closed: Family<ReasonLabels, Counter>,
    responses_stalled: Counter,
    requests_in_flight: Gauge,
    pins: Gauge,
    requests_refused_busy: Counter,
    blob_store: Arc<BlobStoreCollector>,
    storage_operations: Family<StorageOpLabels, Counter>,
    storage_duration: HistogramFamily<OpLabels>,
    storage_bypassed: Family<WhatLabels, Counter>,
    storage_backfilled: Family<OutcomeLabels, Counter>,
    access_confirmations: Family<ResultLabels, Counter>,
    blob_fills: Family<SourceLabels, Counter>,
    cold_range_bytes: Family<SourceLabels, Counter>,
    sendfile_bytes: Counter,
    fleet_fills: Family<OutcomeLabels, Counter>,
    fleet_fetches: Family<WhatOutcomeLabels, Counter>,
    lease_takeovers: Counter,
    leases_held: Gauge,
    records_rejected: Family<KindReasonLabels, Counter>,
    leases_swept: Counter,
    uploads_aborted: Counter,
    peer_bytes: Counter,
    foreign_fetches: Family<ForeignLabels, Counter>,
    layer_conversions: Family<OutcomeLabels, Counter>,
    layer_conversion_bytes: Family<WhatLabels, Counter>,
    layer_conversion_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    warm: WarmMetrics,
    refresh_ahead: Family<OutcomeLabels, Counter>,
    refresh_ahead_in_flight: Gauge,
    platforms: Mutex<HashSet<String>>,
    /// Every registered family's name, help and type: the encoder leaves out a family with no
    /// series, and [`Metrics::encode`] puts its `# HELP`/`# TYPE` back, so that every family
    /// is on the first scrape.
    described: Vec<Described>,
    /// The status page's memory (last errors, the hour's traffic), fed by the same hooks.
    board: Board,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A client connection opened on a registry listener.
    pub fn connection_opened(&self) {
        self.connections_open.inc();
    }

    /// A client connection ended, and why (`connection::Ended`).
    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_open.dec();
        self.connections_closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A response or h2 stream dropped because its client took no bytes (`limits.stall_timeout`).
    pub fn response_stalled(&self) {
        self.responses_stalled.inc();
    }

    /// A request took (`+1`) or gave back (`-1`) one of `limits.max_requests`.
    pub fn request_in_flight(&self, delta: i64) {
        self.requests_in_flight.inc_by(delta);
    }

    /// How many images are pinned now.
    pub fn set_pins(&self, n: usize) {
        self.pins.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A request refused because `limits.max_requests` stayed taken.
    pub fn request_refused_busy(&self) {
        self.requests_refused_busy.inc();
    }

    /// An access confirmation (a HEAD upstream before serving a cached object under a route
    /// it has no record for): `allowed`, `denied` or `error`.
    pub fn access_confirmation(&self, result: &'static str) {
        self.access_confirmations
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Reports the blob store's state at each scrape. The first store given stays.
    pub fn observe_blob_store(&self, store: Arc<BlobStore>) {
        let _ = self.blob_store.store.set(store);
    }

    /// One client request, when its response body is finished or dropped.
    pub fn request_done(
        &self,
        kind: &'static str,
        method: &http::Method,
        status: u16,
        took: Duration,
    ) {
        let method = method_label(method);
        self.requests
            .get_or_create(&RequestLabels {
                kind,
                method,
                status: status.to_string(),
            })
            .inc();
        self.request_duration
            .get_or_create(&KindMethodLabels { kind, method })
            .observe(took.as_secs_f64());
    }

    /// How the cache answered a manifest or blob request (`hit`, `miss`, `stale`, `coalesced`).
    /// The status page's memory (see `status::board`).
    pub fn board(&self) -> &Board {
        &self.board
    }

    pub fn cache_result(&self, kind: &'static str, result: &'static str) {
        self.cache_results
            .get_or_create(&CacheLabels { kind, result })
            .inc();
    }

    /// `n` blob body bytes sent to a client that upstream did not send for it (see
    /// `BlobOrigin::saves_upstream`).
    pub fn upstream_bytes_saved(&self, n: u64) {
        self.board.saved(n);
        self.upstream_bytes_saved.inc_by(n);
    }

    /// `n` body bytes sent to a client from `source` (`cache`, `upstream`, `bucket`, `peer`,
    /// `parent`).
    pub fn bytes_served(&self, source: &'static str, n: u64) {
        self.board.served(source == "cache", n);
        self.bytes_served
            .get_or_create(&SourceLabels { source })
            .inc_by(n);
    }

    /// A tag answer the platform logic changed or refused: `reason` is `legacy`, `always`,
    /// `converted`, `rejected` or `no-match`.
    pub fn rewrite(&self, platform: &str, reason: &'static str) {
        let platform = self.platform_label(platform);
        self.rewrites
            .get_or_create(&RewriteLabels { platform, reason })
            .inc();
    }

    /// One HTTP exchange with an upstream.
    pub fn upstream_request(&self, upstream: &str, outcome: UpstreamOutcome, took: Duration) {
        self.board
            .exchanged(Role::Upstream, upstream, outcome.failure().as_deref());
        let status = match outcome {
            UpstreamOutcome::Status(s) => s.to_string(),
            UpstreamOutcome::Error => "error".to_owned(),
            UpstreamOutcome::Timeout => "timeout".to_owned(),
        };
        self.upstream_requests
            .get_or_create(&UpstreamStatusLabels {
                upstream: upstream.to_owned(),
                status,
            })
            .inc();
        self.upstream_duration
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Makes the token counter of `upstream` exist (at 0) before its first fetch, so that
    /// `increase()` sees the first one.
    pub fn register_upstream(&self, upstream: &str) {
        self.board.register(Role::Upstream, upstream);
        drop(self.token_fetches.get_or_create(&UpstreamLabels {
            upstream: upstream.to_owned(),
        }));
        drop(self.upstream_received_counter(upstream));
        for outcome in FOREIGN_OUTCOMES {
            drop(self.foreign_fetches.get_or_create(&ForeignLabels {
                upstream: upstream.to_owned(),
                outcome,
            }));
        }
    }

    /// Why an exchange with `upstream` failed, in archway's words (host and port, never a
    /// URL's path or query): the status page's "last error".
    pub fn upstream_failure(&self, upstream: &str, wording: &str) {
        self.board.error_detail(Role::Upstream, upstream, wording);
    }

    /// The counter of body bytes read from `upstream`, for a response body to add to as it is
    /// read (looked up once per response, not per frame).
    pub fn upstream_received_counter(&self, upstream: &str) -> Counter {
        self.upstream_received
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .clone()
    }

    pub fn token_fetch(&self, upstream: &str) {
        self.token_fetches
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .inc();
    }

    pub fn ratelimit_remaining(&self, upstream: &str, remaining: i64) {
        self.board.ratelimit(upstream, remaining);
        self.ratelimit_remaining
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .set(remaining);
    }

    /// Without `[storage]` every blob fill reads upstream.
    pub fn blob_fill(&self, source: &'static str) {
        self.blob_fills
            .get_or_create(&SourceLabels { source })
            .inc();
    }

    /// Bytes of a cached blob body the kernel sent (`crate::sendfile`).
    pub fn sendfile_sent(&self, bytes: usize) {
        self.sendfile_bytes.inc_by(bytes as u64);
    }

    /// The counter of bytes relayed for cold ranges from `source` (`upstream`, `parent`), to
    /// count a relayed body as it streams.
    pub fn cold_range_counter(&self, source: &'static str) -> Counter {
        self.cold_range_bytes
            .get_or_create(&SourceLabels { source })
            .clone()
    }

    /// Makes the failover counter of `parent` exist (at 0) before its first failover.
    pub fn register_parent(&self, parent: &str) {
        self.board.register(Role::Parent, parent);
        drop(self.parent_failovers.get_or_create(&ParentLabels {
            parent: parent.to_owned(),
        }));
    }

    /// One request to a parent archway (its auth retry included).
    pub fn parent_request(&self, parent: &str, outcome: UpstreamOutcome) {
        self.board
            .exchanged(Role::Parent, parent, outcome.failure().as_deref());
        let status = match outcome {
            UpstreamOutcome::Status(s) => s.to_string(),
            UpstreamOutcome::Error => "error".to_owned(),
            UpstreamOutcome::Timeout => "timeout".to_owned(),
        };
        self.parent_requests
            .get_or_create(&ParentStatusLabels {
                parent: parent.to_owned(),
                status,
            })
            .inc();
    }

    /// A request `parent` failed, passed on to the next parent (or the fallback).
    pub fn parent_failover(&self, parent: &str) {
        self.parent_failovers
            .get_or_create(&ParentLabels {
                parent: parent.to_owned(),
            })
            .inc();
    }

    /// One zstd layer's decompression ended (see `archway_layer_conversions`).
    pub fn layer_conversion(&self, outcome: &'static str, zstd: u64, tar: u64, took: Duration) {
        self.layer_conversions
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.layer_conversion_bytes
            .get_or_create(&WhatLabels { what: "zstd" })
            .inc_by(zstd);
        self.layer_conversion_bytes
            .get_or_create(&WhatLabels { what: "tar" })
            .inc_by(tar);
        self.layer_conversion_seconds.inc_by(took.as_secs_f64());
    }

    /// The admin API's warm jobs (`archway_warm_*`).
    pub fn warm(&self) -> &WarmMetrics {
        &self.warm
    }

    /// A background tag revalidation ended, or was skipped (see `archway_refresh_ahead`).
    pub fn refresh_ahead(&self, outcome: &'static str) {
        self.refresh_ahead
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// A background tag revalidation started (`true`) or ended.
    pub fn refresh_ahead_running(&self, running: bool) {
        if running {
            self.refresh_ahead_in_flight.inc();
        } else {
            self.refresh_ahead_in_flight.dec();
        }
    }

    /// A foreign layer fetch (see `archway_foreign_layer_fetches`).
    pub fn foreign_fetch(&self, upstream: &str, outcome: &'static str) {
        self.foreign_fetches
            .get_or_create(&ForeignLabels {
                upstream: upstream.to_owned(),
                outcome,
            })
            .inc();
    }

    /// The OpenMetrics text exposition, `# EOF` included.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Only a failing writer errs, and a String never fails; keep what was written.
            tracing::error!(error = %e, "encoding metrics failed");
        }
        // Families with no series yet (labels still unknown): described, with no samples.
        let body_end = out.rfind("# EOF").unwrap_or(out.len());
        let mut empty = String::new();
        for (name, help, ty) in &self.described {
            if !out.contains(&format!("# TYPE {name} ")) {
                empty.push_str(&format!(
                    "# HELP {name} {help}.\n# TYPE {name} {}\n",
                    ty.as_str()
                ));
            }
        }
        out.insert_str(body_end, &empty);
        out
    }

    fn platform_label(&self, platform: &str) -> String {
        let mut seen = self
            .platforms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if seen.contains(platform) {
            return platform.to_owned();
        }
        if seen.len() >= MAX_PLATFORM_LABELS {
            return "other".to_owned();
        }
        seen.insert(platform.to_owned());
        platform.to_owned()
    }
}

/// The remaining count of a `RateLimit-Remaining` value: Docker Hub sends `76;w=21600` (76 pulls
/// left in a 21600 s window); the IETF draft sends a bare `76`.
pub fn parse_ratelimit_remaining(value: &str) -> Option<i64> {
    value
        .split(';')
        .next()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

mod blob_store;
use blob_store::BlobStoreCollector;
mod families;
pub use families::Features;
use families::{register, Described, FOREIGN_OUTCOMES};
mod labels;
use labels::*;
mod storage_observer;
mod upstream_outcome;
pub use upstream_outcome::UpstreamOutcome;
mod warm;
pub use warm::WarmMetrics;

#[cfg(test)]
mod tests;
