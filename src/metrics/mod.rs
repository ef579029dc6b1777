//! Prometheus metrics: one registry per running archway, fed by the request log point, the
//! upstream client and (at scrape time) the blob store. Encoded in the OpenMetrics text format.
//!
//! Every label value is bounded: kinds, methods, results, sources and reasons are fixed sets,
//! statuses are status codes, upstreams come from the config, and platforms (which clients can
//! name freely) are capped at [`MAX_PLATFORM_LABELS`] distinct values.

use crate::cache::blob::BlobStore;
use crate::cache::bucket::StorageObserver;
use crate::status::{Board, Role};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Metric, Registry};
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// `archway_refresh_ahead` outcomes.
pub const REFRESH_AHEAD_OUTCOMES: [&str; 5] = [
    "refreshed",
    "unchanged",
    "not_needed",
    "failed",
    "skipped_busy",
];

/// `archway_layer_conversions` outcomes.
const LAYER_CONVERSIONS: [&str; 3] = ["converted", "failed", "abandoned"];

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Distinct `platform` label values kept; later ones are counted under `other`, so clients
/// sending made-up platforms cannot grow the series without bound.
pub const MAX_PLATFORM_LABELS: usize = 64;

/// Client requests run from a few milliseconds (cache hits) to minutes (big blobs).
const REQUEST_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Upstream requests are timed to their response headers.
const UPSTREAM_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    method: &'static str,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindMethodLabels {
    kind: &'static str,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamStatusLabels {
    upstream: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ParentLabels {
    parent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ParentStatusLabels {
    parent: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StorageOpLabels {
    op: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabels {
    what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForeignLabels {
    upstream: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatOutcomeLabels {
    what: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindReasonLabels {
    kind: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RewriteLabels {
    platform: String,
    reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

impl StorageObserver for Metrics {
    fn operation(&self, op: &'static str, status: &'static str, elapsed: Duration) {
        self.board.bucket_op(op, status);
        self.storage_operations
            .get_or_create(&StorageOpLabels { op, status })
            .inc();
        self.storage_duration
            .get_or_create(&OpLabels { op })
            .observe(elapsed.as_secs_f64());
    }

    fn blob_fill(&self, source: &'static str) {
        Metrics::blob_fill(self, source);
    }

    fn bypassed(&self, what: &'static str) {
        self.storage_bypassed
            .get_or_create(&WhatLabels { what })
            .inc();
    }

    fn fleet_fill(&self, outcome: &'static str) {
        self.fleet_fills
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    fn fleet_fetch(&self, what: &'static str, outcome: &'static str) {
        self.fleet_fetches
            .get_or_create(&WhatOutcomeLabels { what, outcome })
            .inc();
    }

    fn lease_takeover(&self) {
        self.lease_takeovers.inc();
    }

    fn lease_seen(&self, owner: &str) {
        self.board.lease_seen(owner);
    }

    fn lease_held(&self, held: bool) {
        if held {
            self.leases_held.inc();
        } else {
            self.leases_held.dec();
        }
        self.board.lease_held(held);
    }

    fn record_rejected(&self, kind: &'static str, reason: &'static str) {
        self.records_rejected
            .get_or_create(&KindReasonLabels { kind, reason })
            .inc();
    }

    fn leases_swept(&self, count: u64) {
        self.leases_swept.inc_by(count);
    }

    fn uploads_aborted(&self, count: u64) {
        self.uploads_aborted.inc_by(count);
    }

    fn peer_bytes(&self, bytes: u64) {
        self.peer_bytes.inc_by(bytes);
    }

    fn cold_range_bytes(&self, source: &'static str, bytes: u64) {
        self.cold_range_bytes
            .get_or_create(&SourceLabels { source })
            .inc_by(bytes);
    }
}

/// How an upstream exchange ended, for the `status` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// Response headers arrived with this status.
    Status(u16),
    /// The connection or exchange failed.
    Error,
    /// No response headers within the budget.
    Timeout,
}

impl UpstreamOutcome {
    /// The status page's wording of a failed exchange (a 5xx, a 429, no answer); `None` for
    /// an answer (a 404 or a 401 is the upstream working).
    pub fn failure(self) -> Option<String> {
        match self {
            UpstreamOutcome::Status(s) if s >= 500 || s == 429 => {
                let reason = http::StatusCode::from_u16(s)
                    .ok()
                    .and_then(|c| c.canonical_reason())
                    .unwrap_or("");
                Some(format!("HTTP {s} {reason}").trim_end().to_owned())
            }
            UpstreamOutcome::Status(_) => None,
            UpstreamOutcome::Error => Some("connection failed".into()),
            UpstreamOutcome::Timeout => Some("no answer in time".into()),
        }
    }
}

/// The features configured, whose metric families are registered: a family of a feature that
/// is not configured would only ever show zeros for something that cannot happen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// `[storage]`: the `archway_storage_*` families and the bucket as a fill source.
    pub storage: bool,
    /// `[fleet]`: the `archway_fleet_*` families.
    pub fleet: bool,
    /// `parent`: the `archway_parent_*` families.
    pub parent: bool,
}

impl Features {
    pub fn of(config: &crate::config::Config) -> Features {
        Features {
            storage: config.storage.is_some(),
            fleet: config.fleet.is_some(),
            parent: !config.parent.urls.is_empty(),
        }
    }
}

/// Label values known in advance, created at 0 so that every series exists from the first
/// scrape (`increase()` then sees the first event). Families keyed by open values (status
/// codes, platforms, S3 operations) start empty: a zero there would name a made-up series.
const CACHE_KINDS: [&str; 2] = ["manifest", "blob"];
const CACHE_RESULTS: [&str; 4] = ["hit", "miss", "stale", "coalesced"];
const SOURCES: [&str; 2] = ["cache", "upstream"];
const CONNECTION_ENDS: [&str; 5] = [
    "closed",
    "header_timeout",
    "idle_timeout",
    "stall",
    "shutdown",
];
const ACCESS_RESULTS: [&str; 3] = ["allowed", "denied", "error"];
const STORAGE_BYPASSED: [&str; 4] = ["blob_read", "blob_write", "manifest_read", "manifest_write"];
/// Tag and access records go through the bucket only with `[fleet]`.
const FLEET_BYPASSED: [&str; 4] = ["tag_read", "tag_write", "access_read", "access_write"];
const FLEET_FILLS: [&str; 5] = [
    "owned",
    "joined_local",
    "joined_peer",
    "taken_over",
    "lease_error",
];
const FLEET_FETCH_WHAT: [&str; 2] = ["manifest", "tag"];
const FOREIGN_OUTCOMES: [&str; 3] = ["fetched", "error", "not_allowed"];
const FLEET_FETCHES: [&str; 4] = ["owned", "taken_over", "waited", "lease_error"];

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

type Described = (&'static str, &'static str, MetricType);

/// Registers `metric` and notes its description for [`Metrics::encode`].
fn register<M: Metric + TypedMetric>(
    registry: &mut Registry,
    described: &mut Vec<Described>,
    name: &'static str,
    help: &'static str,
    metric: M,
) {
    described.push((name, help, M::TYPE));
    registry.register(name, help, metric);
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
    /// The families of a config with no `[storage]`, `[fleet]` or `parent`.
    pub fn new() -> Metrics {
        Self::with(Features::default())
    }

    /// The families of what is configured, every known series at 0.
    pub fn with(features: Features) -> Metrics {
        let mut registry = Registry::default();
        let mut described = Vec::new();
        let requests = Family::<RequestLabels, Counter>::default();
        register(
            &mut registry,
            &mut described,
            "archway_requests",
            "Client requests answered, by API kind, method and response status",
            requests.clone(),
        );
        let request_duration: HistogramFamily<KindMethodLabels> =
            Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS));
        register(
            &mut registry,
            &mut described,
            "archway_request_duration_seconds",
            "Time from a client request's arrival until its response body was finished or abandoned",
            request_duration.clone(),
        );
        let cache_results = Family::<CacheLabels, Counter>::default();
        register(
            &mut registry,
            &mut described,
            "archway_cache_results",
            "Manifest and blob requests by how the cache answered: hit, miss, stale, coalesced",
            cache_results.clone(),
        );
        let bytes_served = Family::<SourceLabels, Counter>::default();
        register(
            &mut registry,
            &mut described,
            "archway_served_bytes",
            "Response body bytes sent to clients, by where they came from: cache (L1), bucket, peer, parent or upstream",
            bytes_served.clone(),
        );
        let upstream_bytes_saved = Counter::default();
        register(
            &mut registry,
            &mut described,
            "archway_upstream_bytes_saved",
            "Blob body bytes sent to clients that this archway did not fetch from upstream for them: L1 hits, joined downloads, bucket and peer fills",
            upstream_bytes_saved.clone(),
        );
        let rewrites = Family::<RewriteLabels, Counter>::default();
        register(
            &mut registry,
            &mut described,
            "archway_rewrites",
            "Tag requests the platform logic answered or refused, by client platform and reason",
            rewrites.clone(),
        );
        let upstream_requests = Family::<UpstreamStatusLabels, Counter>::default();
        register(
            &mut registry,
            &mut described,
            "archway_upstream_requests",
            "HTTP exchanges with upstreams (auth, token and redirect hops included), by upstream and status",
            upstream_requests.clone(),
        );
        let upstream_duration: HistogramFamily<UpstreamLabels> =
            Family::new_with_constructor(|| Histogram::new(UPSTREAM_BUCKETS));
        register(
            &mut registry,
            &mut described,
            "archway_upstream_request_duration_seconds",
            "Time until an upstream's response headers arrived (or the exchange failed)",
            upstream_duration.clone(),
        );
        let token_fetches = Family::<UpstreamLabels, Counter>::default();
        register(
            &mut registry,
            &mut described,
            "archway_upstream_token_fetches",
            "Bearer token requests made to an upstream's token endpoint",
            token_fetches.clone(),
        );
        let upstream_received = Family::<UpstreamLabels, Counter>::default();
        register(
            &mut registry,
            &mut described,
            "archway_upstream_received_bytes",
            "Response body bytes read from upstreams (blobs, manifests, tag lists, error bodies; not token responses), by upstream",
            upstream_received.clone(),
        );
        let ratelimit_remaining = Family::<UpstreamLabels, Gauge>::default();
        register(
            &mut registry,
            &mut described,
            "archway_upstream_ratelimit_remaining",
            "The last RateLimit-Remaining an upstream sent (Docker Hub: pulls left in its window)",
            ratelimit_remaining.clone(),
        );
        let parent_requests = Family::<ParentStatusLabels, Counter>::default();
        if features.parent {
            register(
                &mut registry,
                &mut described,
                "archway_parent_requests",
                "Requests to parent archways (after their auth challenge), by parent and status: a status code, error or timeout",
                parent_requests.clone(),
            );
        }
        let parent_failovers = Family::<ParentLabels, Counter>::default();
        if features.parent {
            register(
                &mut registry,
                &mut described,
                "archway_parent_failovers",
                "Requests a parent failed (no connection, timeout, 5xx) that went on to the next parent or the fallback",
                parent_failovers.clone(),
            );
        }
        let connections_open = Gauge::default();
        register(
            &mut registry,
            &mut described,
            "archway_connections_open",
            "Client connections open on the registry listeners",
            connections_open.clone(),
        );
        let connections_closed = Family::<ReasonLabels, Counter>::default();
        register(
            &mut registry,
            &mut described,
            "archway_connections_closed",
            "Client connections ended, by why: closed, header_timeout, idle_timeout, stall, shutdown",
            connections_closed.clone(),
        );
        let responses_stalled = Counter::default();
        register(
            &mut registry,
            &mut described,
            "archway_responses_stalled",
            "Responses (HTTP/1.1) and streams (h2) dropped because their client took no bytes for limits.stall_timeout",
            responses_stalled.clone(),
        );
        let requests_in_flight = Gauge::default();
        register(
            &mut registry,
            &mut described,
            "archway_requests_in_flight",
            "Client requests being answered (at most limits.max_requests)",
            requests_in_flight.clone(),
        );
        let requests_refused_busy = Counter::default();
        register(
            &mut registry,
            &mut described,
            "archway_requests_refused_busy",
            "Requests answered 503 because limits.max_requests were in flight for limits.stall_timeout",
            requests_refused_busy.clone(),
        );
        let pins = Gauge::default();
        register(
            &mut registry,
            &mut described,
            "archway_pins",
            "Pinned images ([[pin]] and the admin API's): their manifests and blobs are never evicted",
            pins.clone(),
        );
        let blob_store = Arc::new(BlobStoreCollector::default());
        registry.register_collector(Box::new(blob_store.clone()));
        let storage_operations = Family::<StorageOpLabels, Counter>::default();
        if features.storage {
            register(
                &mut registry,
                &mut described,
                "archway_storage_operations",
                "Requests to the shared storage ([storage]), by S3 operation and how they ended: ok, not_found, error, timeout",
                storage_operations.clone(),
            );
        }
        let storage_duration: HistogramFamily<OpLabels> =
            Family::new_with_constructor(|| Histogram::new(UPSTREAM_BUCKETS));
        if features.storage {
            register(
                &mut registry,
                &mut described,
                "archway_storage_operation_duration_seconds",
                "Time until the shared storage answered a request (its response head), or it failed",
                storage_duration.clone(),
            );
        }
        let storage_bypassed = Family::<WhatLabels, Counter>::default();
        if features.storage {
            register(
                &mut registry,
                &mut described,
                "archway_storage_bypassed",
                "Blobs, manifests and tags read from upstream or left uncopied because the shared storage failed or its upload queue was full",
                storage_bypassed.clone(),
            );
        }
        let access_confirmations = Family::<ResultLabels, Counter>::default();
        register(
            &mut registry,
            &mut described,
            "archway_access_confirmations",
            "HEADs asking an upstream whether a route may be served a cached object it has not been served under: allowed, denied, error",
            access_confirmations.clone(),
        );
        let blob_fills = Family::<SourceLabels, Counter>::default();
        register(
            &mut registry,
            &mut described,
            "archway_blob_fills",
            "Blob downloads into the disk cache, by where the bytes came from: storage or upstream",
            blob_fills.clone(),
        );
        let cold_range_bytes = Family::<SourceLabels, Counter>::default();
        register(
            &mut registry,
            &mut described,
            "archway_cold_range_bytes",
            "Bytes of Range answers relayed from an extra Range request (cache.cold_ranges = \"relay\"), beyond the blob's one whole download, by where they came from: upstream, parent, or peer (another replica's fill in flight, with [fleet])",
            cold_range_bytes.clone(),
        );
        let sendfile_bytes = Counter::default();
        register(
            &mut registry,
            &mut described,
            "archway_sendfile_bytes",
            "Bytes of cached blob bodies the kernel sent from the blob file (sendfile, plain HTTP/1.1, cache.sendfile), never copied through archway",
            sendfile_bytes.clone(),
        );
        let fleet_fills = Family::<OutcomeLabels, Counter>::default();
        if features.fleet {
            register(
                &mut registry,
                &mut described,
                "archway_fleet_fills",
                "Blob fills with [fleet], by outcome: owned (took the lease), joined_local (joined this replica's fill), joined_peer (streamed another replica's fill), taken_over (took over an expired lease), lease_error (the lease could not be had; filled from upstream uncoordinated)",
                fleet_fills.clone(),
            );
        }
        let fleet_fetches = Family::<WhatOutcomeLabels, Counter>::default();
        if features.fleet {
            register(
                &mut registry,
                &mut described,
                "archway_fleet_fetches",
                "Manifest GETs by digest (what=manifest) and tag revalidations (what=tag) with [fleet], by outcome: owned (took the lease and asked upstream), taken_over, waited (another replica's answer, read from the bucket), lease_error (asked upstream uncoordinated)",
                fleet_fetches.clone(),
            );
        }
        let lease_takeovers = Counter::default();
        if features.fleet {
            register(
                &mut registry,
                &mut described,
                "archway_fleet_lease_takeovers",
                "Expired fill and fetch leases taken over from a replica that stopped renewing them",
                lease_takeovers.clone(),
            );
        }
        let leases_held = Gauge::default();
        if features.fleet {
            register(
                &mut registry,
                &mut described,
                "archway_fleet_leases_held",
                "Fill and fetch leases this replica holds in the bucket now",
                leases_held.clone(),
            );
        }
        let records_rejected = Family::<KindReasonLabels, Counter>::default();
        if features.fleet {
            register(
                &mut registry,
                &mut described,
                "archway_storage_records_rejected",
                "Records read back from the bucket (kind: tag, lease) or requests from peers (kind: peer) not believed, by reason: unsealed, bad_seal, unreadable, future (dated ahead of the clock skew), owner (a lease owner the egress policy refuses, or one that served a broken fill), replay, expired",
                records_rejected.clone(),
            );
        }
        let leases_swept = Counter::default();
        if features.fleet {
            register(
                &mut registry,
                &mut described,
                "archway_fleet_leases_swept",
                "Stale leases (expired and unwritten for three lease TTLs: their owner died) deleted by the sweep",
                leases_swept.clone(),
            );
        }
        let uploads_aborted = Counter::default();
        if features.fleet {
            register(
                &mut registry,
                &mut described,
                "archway_fleet_orphaned_uploads_aborted",
                "Multipart uploads under blobs/ older than fleet.orphaned_upload_age (a dead replica's) aborted by the sweep",
                uploads_aborted.clone(),
            );
        }
        let peer_bytes = Counter::default();
        if features.fleet {
            register(
                &mut registry,
                &mut described,
                "archway_fleet_peer_bytes",
                "Blob bytes received from other replicas' fills over the peer endpoint",
                peer_bytes.clone(),
            );
        }
        let foreign_fetches = Family::<ForeignLabels, Counter>::default();
        register(
            &mut registry,
            &mut described,
            "archway_foreign_layer_fetches",
            "Foreign (non-distributable) layers upstream could not serve, by outcome: fetched (from a url on foreign_layer_hosts; the blob store then verifies digest and size like any fill), error (the url failed), not_allowed (no url of the layer is on foreign_layer_hosts)",
            foreign_fetches.clone(),
        );
        for kind in CACHE_KINDS {
            for result in CACHE_RESULTS {
                drop(cache_results.get_or_create(&CacheLabels { kind, result }));
            }
        }
        // A tier's source exists (at 0) only where the tier is configured.
        let tiers = [
            (features.storage, "bucket"),
            (features.fleet, "peer"),
            (features.parent, "parent"),
        ];
        let sources = SOURCES
            .into_iter()
            .chain(tiers.into_iter().filter(|(on, _)| *on).map(|(_, s)| s));
        for source in sources {
            drop(bytes_served.get_or_create(&SourceLabels { source }));
        }
        let layer_conversions = Family::<OutcomeLabels, Counter>::default();
        register(
            &mut registry,
            &mut described,
            "archway_layer_conversions",
            "zstd layers decompressed to their tars for clients that cannot read zstd, by outcome: converted (the whole tar made and its diff_id checked), failed (not zstd, cut off, past conversion.max_output or max_ratio, or not its diff_id), abandoned (no reader left)",
            layer_conversions.clone(),
        );
        for outcome in LAYER_CONVERSIONS {
            drop(layer_conversions.get_or_create(&OutcomeLabels { outcome }));
        }
        let layer_conversion_bytes = Family::<WhatLabels, Counter>::default();
        register(
            &mut registry,
            &mut described,
            "archway_layer_conversion_bytes",
            "Bytes through layer conversions: zstd read, tar written",
            layer_conversion_bytes.clone(),
        );
        for what in ["zstd", "tar"] {
            drop(layer_conversion_bytes.get_or_create(&WhatLabels { what }));
        }
        let layer_conversion_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        register(
            &mut registry,
            &mut described,
            "archway_layer_conversion_seconds",
            "Wall-clock seconds of layer conversions, from the permit to the last byte (waits for the zstd input included; not CPU time), summed over concurrent conversions",
            layer_conversion_seconds.clone(),
        );
        let warm = WarmMetrics::register(&mut registry, &mut described);
        let refresh_ahead = Family::<OutcomeLabels, Counter>::default();
        register(
            &mut registry,
            &mut described,
            "archway_refresh_ahead",
            "Background revalidations of tags shortly before they expire (cache.refresh_ahead), by outcome: refreshed (upstream named a new digest), unchanged, not_needed (already revalidated by a client or, with [fleet], another replica), failed (the tag then expires as usual; stale-if-error unchanged), skipped_busy (cache.refresh_ahead_concurrency were running: revalidated on expiry instead)",
            refresh_ahead.clone(),
        );
        for outcome in REFRESH_AHEAD_OUTCOMES {
            drop(refresh_ahead.get_or_create(&OutcomeLabels { outcome }));
        }
        let refresh_ahead_in_flight = Gauge::default();
        register(
            &mut registry,
            &mut described,
            "archway_refresh_ahead_in_flight",
            "Background tag revalidations running (at most cache.refresh_ahead_concurrency)",
            refresh_ahead_in_flight.clone(),
        );
        for reason in CONNECTION_ENDS {
            drop(connections_closed.get_or_create(&ReasonLabels { reason }));
        }
        for result in ACCESS_RESULTS {
            drop(access_confirmations.get_or_create(&ResultLabels { result }));
        }
        // Upstream is a fill source in every config; the bucket and peers only with their
        // features, and a test reads "no bucket series" as "nothing came from the bucket".
        drop(blob_fills.get_or_create(&SourceLabels { source: "upstream" }));
        drop(cold_range_bytes.get_or_create(&SourceLabels { source: "upstream" }));
        if features.storage {
            for what in STORAGE_BYPASSED {
                drop(storage_bypassed.get_or_create(&WhatLabels { what }));
            }
        }
        if features.fleet {
            drop(cold_range_bytes.get_or_create(&SourceLabels { source: "peer" }));
            for what in FLEET_BYPASSED {
                drop(storage_bypassed.get_or_create(&WhatLabels { what }));
            }
            for outcome in FLEET_FILLS {
                drop(fleet_fills.get_or_create(&OutcomeLabels { outcome }));
            }
            for what in FLEET_FETCH_WHAT {
                for outcome in FLEET_FETCHES {
                    drop(fleet_fetches.get_or_create(&WhatOutcomeLabels { what, outcome }));
                }
            }
        }
        Metrics {
            registry,
            requests,
            request_duration,
            cache_results,
            bytes_served,
            upstream_bytes_saved,
            rewrites,
            upstream_requests,
            upstream_duration,
            token_fetches,
            upstream_received,
            ratelimit_remaining,
            parent_requests,
            parent_failovers,
            connections_open,
            connections_closed,
            responses_stalled,
            requests_in_flight,
            pins,
            requests_refused_busy,
            blob_store,
            storage_operations,
            storage_duration,
            storage_bypassed,
            access_confirmations,
            blob_fills,
            cold_range_bytes,
            sendfile_bytes,
            fleet_fills,
            fleet_fetches,
            lease_takeovers,
            leases_held,
            records_rejected,
            leases_swept,
            uploads_aborted,
            peer_bytes,
            foreign_fetches,
            layer_conversions,
            layer_conversion_bytes,
            layer_conversion_seconds,
            warm,
            refresh_ahead,
            refresh_ahead_in_flight,
            platforms: Mutex::new(HashSet::new()),
            described,
            board: Board::default(),
        }
    }

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

/// Standard methods by name, anything else as `other` (extension methods are unbounded).
fn method_label(method: &http::Method) -> &'static str {
    use http::Method as M;
    match *method {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::OPTIONS => "OPTIONS",
        M::CONNECT => "CONNECT",
        M::TRACE => "TRACE",
        _ => "other",
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
mod warm;
pub use warm::WarmMetrics;

#[cfg(test)]
mod tests;
