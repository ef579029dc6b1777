//! Which metric families a running archway registers, each with its help text, and every
//! series whose labels are known in advance created at 0.

use super::labels::*;
use super::BlobStoreCollector;
use super::{Metrics, WarmMetrics};
use crate::status::Board;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Metric, Registry};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Client requests run from a few milliseconds (cache hits) to minutes (big blobs).
pub(super) const REQUEST_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Upstream requests are timed to their response headers.
pub(super) const UPSTREAM_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// `archway_refresh_ahead` outcomes.
pub(super) const REFRESH_AHEAD_OUTCOMES: [&str; 5] = [
    "refreshed",
    "unchanged",
    "not_needed",
    "failed",
    "skipped_busy",
];

/// `archway_layer_conversions` outcomes.
pub(super) const LAYER_CONVERSIONS: [&str; 3] = ["converted", "failed", "abandoned"];

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
pub(super) const CACHE_KINDS: [&str; 2] = ["manifest", "blob"];
pub(super) const CACHE_RESULTS: [&str; 4] = ["hit", "miss", "stale", "coalesced"];
pub(super) const SOURCES: [&str; 2] = ["cache", "upstream"];
pub(super) const CONNECTION_ENDS: [&str; 5] = [
    "closed",
    "header_timeout",
    "idle_timeout",
    "stall",
    "shutdown",
];
pub(super) const ACCESS_RESULTS: [&str; 3] = ["allowed", "denied", "error"];
pub(super) const STORAGE_BYPASSED: [&str; 4] =
    ["blob_read", "blob_write", "manifest_read", "manifest_write"];
/// What copying a blob committed before the bucket did (`storage.backfill`).
pub(super) const STORAGE_BACKFILLED: [&str; 4] = ["copied", "present", "damaged", "failed"];
/// Tag and access records go through the bucket only with `[fleet]`.
pub(super) const FLEET_BYPASSED: [&str; 4] =
    ["tag_read", "tag_write", "access_read", "access_write"];
pub(super) const FLEET_FILLS: [&str; 5] = [
    "owned",
    "joined_local",
    "joined_peer",
    "taken_over",
    "lease_error",
];
pub(super) const FLEET_FETCH_WHAT: [&str; 2] = ["manifest", "tag"];
pub(super) const FOREIGN_OUTCOMES: [&str; 3] = ["fetched", "error", "not_allowed"];
pub(super) const FLEET_FETCHES: [&str; 4] = ["owned", "taken_over", "waited", "lease_error"];

pub(super) type Described = (&'static str, &'static str, MetricType);

/// Registers `metric` and notes its description for [`Metrics::encode`].
pub(super) fn register<M: Metric + TypedMetric>(
    registry: &mut Registry,
    described: &mut Vec<Described>,
    name: &'static str,
    help: &'static str,
    metric: M,
) {
    described.push((name, help, M::TYPE));
    registry.register(name, help, metric);
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
        let storage_backfilled = Family::<OutcomeLabels, Counter>::default();
        if features.storage {
            register(
                &mut registry,
                &mut described,
                "archway_storage_backfilled_blobs",
                "Blobs cached on the disk before [storage] was set, copied to the bucket once (storage.backfill), by outcome: copied, present (the bucket had it), damaged (the file did not match its digest: dropped from the disk, not copied), failed (the next start tries again)",
                storage_backfilled.clone(),
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
            for outcome in STORAGE_BACKFILLED {
                drop(storage_backfilled.get_or_create(&OutcomeLabels { outcome }));
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
            storage_backfilled,
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
}
