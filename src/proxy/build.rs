//! A `Proxy` assembled from its config: the bucket and `[fleet]` (leases, peers, sweeping), the
//! pins, the blob and manifest stores, parents and upstreams, routes, `[auth]`, the access gate
//! and the converter. Everything here runs once, at start; a failure is a `ProxyInitError`.

use super::blobs::Blobs;
use super::manifests::Manifests;
use super::platform_answer::PlatformAnswers;
use super::{converter, pins, referrers, refresh_ahead, AccessGate, Proxy};
use crate::cache::access_store::AccessStore;
use crate::cache::blob::{BlobStore, BlobStoreLimits, BucketRedirects, Fleet};
use crate::cache::bucket::RECORD_PURPOSE;
use crate::cache::bucket::{Bucket, BucketSettings, StorageObserver};
use crate::cache::fetch_lease::FetchLeases;
use crate::client_auth::ClientAuth;
use crate::config::Config;
use crate::fleet::{HttpPeers, PeerSigner, PeerVerifier};
use crate::metrics::Metrics;
use crate::record_key::RecordKey;
use crate::route_policy::Route;
use crate::upstream::Egress;
use crate::upstream::{Parents, Upstream};
use crate::via::Via;
use std::sync::Arc;
use std::time::Duration;

/// Why `[fleet]` could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FleetInitError {
    #[error("fleet.peer_url is required (or ARCHWAY_PEER_URL / --peer-url): how the other replicas reach this one")]
    NoPeerUrl,
    #[error("fleet.peer_url `{url}` is not a URL: {source}")]
    PeerUrl {
        url: String,
        source: http::uri::InvalidUri,
    },
    /// The client that reaches the other replicas.
    #[error(transparent)]
    PeerClient(crate::upstream::UpstreamInitError),
}

/// Why a proxy could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum ProxyInitError {
    #[error("[auth]: {0}")]
    ClientAuth(#[from] crate::client_auth::ClientAuthError),
    #[error("cannot open the cache under {path}: {source}")]
    Cache {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Route(#[from] crate::route_policy::RouteConfigError),
    #[error("[storage]: {0}")]
    Storage(#[from] crate::cache::bucket::BucketError),
    #[error(transparent)]
    Parent(#[from] crate::upstream::ParentInitError),
    #[error("[fleet]: {0}")]
    Fleet(#[from] FleetInitError),
    #[error("upstream `{name}`: {source}")]
    Upstream {
        name: String,
        source: crate::upstream::UpstreamInitError,
    },
}

/// `[storage]` as the bucket client takes it.
fn bucket_settings(s: &crate::config::StorageConfig) -> BucketSettings {
    BucketSettings {
        bucket: s.s3_bucket.clone(),
        prefix: s.s3_prefix.clone(),
        endpoint: s.s3_endpoint.clone(),
        region: s.s3_region.clone(),
        path_style: s.s3_path_style,
        keys: s.credentials.as_ref().map(|k| {
            (
                k.access_key_id.expose().to_owned(),
                k.secret_access_key.expose().to_owned(),
            )
        }),
        s3_timeout: s.s3_timeout,
        s3_upload_timeout: s.s3_upload_timeout,
        max_uploads: s.s3_max_uploads,
        upload_queue: s.s3_upload_queue,
        part_size: s.s3_part_size,
    }
}

impl Proxy {
    pub fn new(config: Config) -> Result<Proxy, ProxyInitError> {
        let cache_err = |path: std::path::PathBuf, source| ProxyInitError::Cache { path, source };
        let dir = config.data_dir.clone();
        let cache = &config.cache;
        let metrics = Arc::new(Metrics::with(crate::metrics::Features::of(&config)));
        let bucket = match &config.storage {
            Some(storage) => {
                let observer: Arc<dyn StorageObserver> = metrics.clone();
                let mut bucket = Bucket::open(&bucket_settings(storage), observer)?;
                // Records (tag records, leases) are sealed with a key only the fleet has;
                // without [fleet] there is none, and tags are not shared.
                if let Some(f) = &config.fleet {
                    let key = RecordKey::derive(f.secret.expose().as_bytes(), RECORD_PURPOSE);
                    bucket = bucket.with_records(key, f.clock, f.max_clock_skew);
                }
                tracing::info!(bucket = %storage.s3_bucket, prefix = %storage.s3_prefix, endpoint = storage.s3_endpoint.as_deref().unwrap_or("AWS"), redirect = storage.redirect, "shared storage behind the disk cache");
                Some(Arc::new(bucket))
            }
            None => None,
        };
        let mut leases = None;
        let mut peer_egress = None;
        let mut peer_verifier = None;
        let fleet = match (&config.fleet, &bucket) {
            (Some(f), Some(b)) => {
                let me = f.peer_url.clone().ok_or(FleetInitError::NoPeerUrl)?;
                let observer: Arc<dyn StorageObserver> = metrics.clone();
                let me_uri = me
                    .parse::<http::Uri>()
                    .map_err(|source| FleetInitError::PeerUrl {
                        url: me.clone(),
                        source,
                    })?;
                let egress = Arc::new(Egress::for_peers(&me_uri));
                peer_egress = Some(egress.clone());
                let secret = f.secret.expose().as_bytes();
                peer_verifier = Some(Arc::new(PeerVerifier::new(
                    secret,
                    f.clock,
                    f.max_clock_skew,
                )));
                let signer = PeerSigner::new(secret, f.clock);
                let peers = HttpPeers::new(signer, egress, f.peer_timeout, observer)
                    .map_err(FleetInitError::PeerClient)?;
                tracing::info!(peer_url = %me, lease_ttl = ?f.lease_ttl, "fleet: one fill per blob, manifest and tag revalidation across the replicas on the bucket");
                leases = Some(FetchLeases::new(b.clone(), me.clone(), f.lease_ttl));
                if !f.sweep_interval.is_zero() {
                    b.start_sweeping(
                        me.clone(),
                        f.lease_ttl,
                        f.sweep_interval,
                        f.orphaned_upload_age,
                    );
                }
                Some(Fleet::new(me, f.lease_ttl, Arc::new(peers)))
            }
            _ => None,
        };
        // Before the blob store: its eviction at open already spares what the pins hold.
        let pins = Arc::new(pins::Pins::open(&config, metrics.clone()).with_bucket(bucket.clone()));
        let blobs = BlobStore::open_in_fleet(
            dir.clone(),
            BlobStoreLimits {
                max_bytes: cache.max_size,
                write_buffer: cache.write_buffer,
                small_blob_memory: cache.memory_size / 4,
                max_blob_size: cache.max_blob_size(),
                min_free_space: cache.min_free_space,
                bad_blob_ttl: cache.negative_ttl,
                verify_reads: cache.verify_reads,
                verify_reads_ttl: cache.verify_reads_ttl,
            },
            bucket.clone(),
            fleet,
            config
                .storage
                .as_ref()
                .filter(|s| s.redirect)
                .map(|s| BucketRedirects {
                    expiry: s.redirect_expiry,
                    memo_bytes: s.redirect_memo,
                }),
            &pins.kept(),
        )
        .map_err(|e| cache_err(dir.clone(), e))?;
        if !cache.scrub_interval.is_zero() {
            blobs.start_scrub(cache.scrub_interval, cache.scrub_rate);
        }
        if let Some(storage) = config.storage.as_ref().filter(|s| s.backfill) {
            // The marker names the bucket and prefix: another bucket is copied to afresh.
            let target = format!(
                "s3://{}/{} at {}",
                storage.s3_bucket,
                storage.s3_prefix,
                storage.s3_endpoint.as_deref().unwrap_or("AWS")
            );
            // Runs on its own; nothing waits for it.
            drop(blobs.start_backfill(dir.join("storage-backfill"), target));
        }
        let manifests = Manifests::open(
            &dir,
            &config.cache,
            blobs.disk_budget(),
            bucket.clone(),
            leases,
            refresh_ahead::RefreshAhead::new(&config.cache, metrics.clone()),
        )
        .map_err(|(path, e)| cache_err(path, e))?;
        let manifests = Arc::new(manifests);
        metrics.observe_blob_store(blobs.clone());
        pins.attach(blobs.disk_budget());
        pins.start_syncing();
        manifests.set_pins(pins.clone());
        let via = Via::new();
        tracing::info!(via = via.marker(), "instance marker, sent upstream in Via");
        let parents = Parents::new(&config.parent)?
            .map(|p| Arc::new(p.with_metrics(metrics.clone()).with_via(&via)));
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let mut u = u.clone();
                if parents.is_some() && u.visibility.is_none() {
                    // Reached through parents, which may hold credentials of their own for it:
                    // what came through them is not known to be anyone's, so it is kept to its
                    // route unless the operator says `visibility = "public"`.
                    u.visibility = Some(crate::access_rule::Visibility::Private);
                }
                Upstream::new(u.clone())
                    .map(|up| {
                        let up = up.with_metrics(metrics.clone()).with_via(via.clone());
                        Arc::new(match &parents {
                            Some(p) => up.with_parents(p.clone()),
                            None => up,
                        })
                    })
                    .map_err(|source| ProxyInitError::Upstream {
                        name: u.name.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| Route::from_config(i, r.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let client_auth = config.auth.as_ref().map(ClientAuth::load).transpose()?;
        warn_open_private_upstreams(&config);
        let access = AccessGate::new(
            AccessStore::new(config.cache.access_memory).with_bucket(bucket),
            metrics.clone(),
        );
        let converter = Arc::new(converter::Converter::new(
            &config.conversion,
            metrics.clone(),
            &config.data_dir,
        ));
        Ok(Proxy {
            access,
            converter: converter.clone(),
            default_upstream: config.default_upstream(),
            upstreams,
            manifests,
            platform: PlatformAnswers::new(
                routes,
                config.cache.answer_memo,
                config.cache.selection_memo,
            ),
            blobs: Blobs::new(
                blobs,
                Arc::new(crate::foreign::ForeignMemo::new(config.cache.foreign_memo)),
                config.limits.max_ranges,
                converter,
                config.cache.cold_ranges,
                config.cache.cold_ranges_relay_max,
            ),
            referrers: referrers::Referrers::new(
                config.cache.referrers_memory,
                config.cache.tag_ttl,
                config
                    .upstreams
                    .iter()
                    .filter_map(|u| u.tag_ttl)
                    .fold(config.cache.tag_ttl, Duration::max),
                config.cache.stale_if_error,
                config.cache.negative_ttl,
            ),
            metrics,
            client_auth,
            config,
            via,
            peer_egress,
            peer_verifier,
            pins,
        })
    }
}

/// An upstream archway holds credentials for, open to every client that reaches archway: say so
/// at start, in words. (Its content is still served only where it was fetched, `access_rule`.)
fn warn_open_private_upstreams(config: &Config) {
    if config.auth.is_some() {
        return;
    }
    for u in config.upstreams.iter().filter(|u| u.credentials.is_some()) {
        tracing::warn!(
            upstream = %u.name,
            visibility = u.visibility().as_str(),
            "upstream {} has credentials and there is no [auth]: every client that can reach archway pulls from it with those credentials; add [auth] (and `clients` on the upstream) to choose who may",
            u.name
        );
    }
}
