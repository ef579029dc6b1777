//! The shared-cache config: `[storage]` (the bucket), `[fleet]` (replicas filling once) and
//! `parent` (the tier a node reaches upstreams through), with their defaults and checks.

use super::error::{invalid, ConfigError};
use super::keys;
use super::secret::{Credentials, Secret};
use super::values::parse_upstream_url;
use std::path::PathBuf;
use std::time::Duration;

/// `[fleet]`: how this replica coordinates fills with the others on the same bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// How the other replicas reach this one (`http(s)://host:port`, no path); also from
    /// `ARCHWAY_PEER_URL` / `--peer-url`. Required before serving.
    pub peer_url: Option<String>,
    /// Shared by the replicas: keys derived from it seal the bucket's records and sign peer
    /// requests; it never leaves the process. Read from `secret_file` (never inline, never
    /// logged).
    pub secret: Secret,
    /// How long a fill lease holds without renewal; the owner renews it every third of this.
    pub lease_ttl: Duration,
    /// Longest wait for a peer's response head, and for each chunk of its body.
    pub peer_timeout: Duration,
    /// How often one replica deletes the leases dead replicas left (`0s`: never).
    pub sweep_interval: Duration,
    /// A multipart upload under `blobs/` begun longer ago than this is a dead replica's: the
    /// sweep aborts it.
    pub orphaned_upload_age: Duration,
    /// How far ahead of this replica's clock a time read back from the bucket (a tag's
    /// confirmation, a lease's expiry beyond its TTL) or from a peer's request may be and still
    /// be believed: the replicas' clocks disagree by this much at most.
    pub max_clock_skew: Duration,
    /// This replica's clock. Tests only (a replica whose clock runs ahead); not a config key.
    #[doc(hidden)]
    pub clock: crate::clock::Clock,
}

/// The default `fleet.max_clock_skew`: NTP keeps hosts within milliseconds; seconds of slack
/// cover a host that just booted, and are short next to a tag TTL or a lease.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);
/// Longest `fleet.max_clock_skew`: past a minute a forged time buys too much.
pub const MAX_MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Shortest `fleet.lease_ttl`: renewals every third of it must fit an S3 round trip.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

impl FleetConfig {
    /// A fleet member with the defaults for everything else.
    pub fn new(peer_url: Option<String>, secret: Secret) -> Self {
        FleetConfig {
            peer_url,
            secret,
            lease_ttl: keys::FLEET_LEASE_TTL,
            peer_timeout: keys::FLEET_PEER_TIMEOUT,
            sweep_interval: keys::FLEET_SWEEP_INTERVAL,
            orphaned_upload_age: keys::FLEET_ORPHANED_UPLOAD_AGE,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            clock: crate::clock::Clock::system(),
        }
    }

    /// Sets `peer_url` (from `--peer-url` / `ARCHWAY_PEER_URL`), checked like the config key.
    pub fn set_peer_url(&mut self, key: &str, url: &str) -> Result<(), ConfigError> {
        let uri = parse_upstream_url(key, url)?;
        self.peer_url = Some(uri.to_string().trim_end_matches('/').to_owned());
        Ok(())
    }
}

/// `[storage]`: the bucket that replicas share. `data_dir` stays in front of it as L1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    pub s3_bucket: String,
    /// Prepended to every key: empty, or ending in `/`.
    pub s3_prefix: String,
    /// `http(s)://host[:port]` of an S3-compatible server; `None`: AWS for `s3_region`.
    pub s3_endpoint: Option<String>,
    pub s3_region: String,
    /// `endpoint/bucket/key` rather than `bucket.endpoint/key` (MinIO, Ceph, moto).
    pub s3_path_style: bool,
    /// Keys from the config; `None`: the standard AWS chain (environment, shared credentials
    /// file, web identity, container, instance metadata).
    pub credentials: Option<S3Keys>,
    /// Longest wait for any S3 response head, and for each chunk of an object being read.
    pub s3_timeout: Duration,
    /// Longest time one upload request (a whole small object, or one part) may take.
    pub s3_upload_timeout: Duration,
    /// Uploads to the bucket running at once.
    pub s3_max_uploads: u32,
    /// Uploads waiting for one of `s3_max_uploads`; past that, new ones are skipped (counted).
    pub s3_upload_queue: u32,
    /// Blobs up to this size are one PUT; larger ones are multipart uploads of parts this size.
    pub s3_part_size: u64,
    /// A blob GET whose blob is in the bucket is answered `307` to a presigned S3 URL.
    pub redirect: bool,
    /// How long a presigned URL is valid (and how long "this blob is in the bucket" is trusted).
    pub redirect_expiry: Duration,
    /// Bytes of the memo of digests known to be in the bucket (0: always ask the bucket).
    pub redirect_memo: u64,
    /// How often pinned objects are copied under `pins/` and the fleet's pin list adopted.
    pub pin_sync_interval: Duration,
    /// Blobs on the disk from before the bucket are copied to it once, in the background.
    pub backfill: bool,
}

/// Smallest part S3 accepts in a multipart upload (but the last).
pub const S3_MIN_PART_SIZE: u64 = 5 << 20;
/// Largest part (and largest single PUT) S3 accepts.
pub const S3_MAX_PART_SIZE: u64 = 5 << 30;
/// Longest a SigV4 presigned URL may be valid.
pub const MAX_REDIRECT_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

impl StorageConfig {
    /// A bucket with the defaults for everything else.
    pub fn new(bucket: impl Into<String>) -> Self {
        StorageConfig {
            s3_bucket: bucket.into(),
            s3_prefix: String::new(),
            s3_endpoint: None,
            s3_region: keys::STORAGE_S3_REGION.into(),
            s3_path_style: false,
            credentials: None,
            s3_timeout: keys::STORAGE_S3_TIMEOUT,
            s3_upload_timeout: keys::STORAGE_S3_UPLOAD_TIMEOUT,
            s3_max_uploads: keys::STORAGE_S3_MAX_UPLOADS,
            s3_upload_queue: keys::STORAGE_S3_UPLOAD_QUEUE,
            s3_part_size: keys::STORAGE_S3_PART_SIZE,
            redirect: false,
            redirect_expiry: keys::STORAGE_REDIRECT_EXPIRY,
            redirect_memo: keys::STORAGE_REDIRECT_MEMO,
            pin_sync_interval: keys::STORAGE_PIN_SYNC_INTERVAL,
            backfill: true,
        }
    }
}

/// An access key from the config (or its files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Keys {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
}

/// What a node does when no parent answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParentFallback {
    /// Answer from the cache (stale-if-error) or with an error naming the parents.
    #[default]
    None,
    /// Go to the upstream itself.
    Direct,
}

/// The parent tier: archways (a cluster) this node reaches every upstream through. Empty `urls`:
/// upstreams are reached directly, as without the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentConfig {
    /// `scheme://host[:port]` of each parent, as configured (also the metrics' `parent` label).
    pub urls: Vec<http::Uri>,
    /// Answers a parent's `[auth]` challenge (Basic, or Bearer through its token realm).
    pub credentials: Option<Credentials>,
    /// Or a static bearer token of the parents' `[auth] tokens_file`, sent as
    /// `Authorization: Bearer` once a parent asks for credentials.
    pub token: Option<Secret>,
    /// Extra PEM CA bundle trusted for `https://` parents besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// How long a parent whose connection failed or timed out is skipped.
    pub down_for: Duration,
    pub connect_timeout: Duration,
    /// Longest wait for a parent's response headers, and for each chunk of a body. Longer than
    /// an upstream's default, since the parent may itself wait on upstream that long.
    pub read_timeout: Duration,
    pub fallback: ParentFallback,
}

impl Default for ParentConfig {
    fn default() -> Self {
        ParentConfig {
            urls: Vec::new(),
            credentials: None,
            token: None,
            ca_file: None,
            down_for: keys::PARENT_DOWN_FOR,
            connect_timeout: keys::PARENT_CONNECT_TIMEOUT,
            read_timeout: keys::PARENT_READ_TIMEOUT,
            fallback: ParentFallback::None,
        }
    }
}

impl StorageConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.s3_bucket.is_empty()
            || self.s3_bucket.contains('/')
            || self.s3_bucket.contains(char::is_whitespace)
        {
            return Err(invalid(
                "storage.s3_bucket",
                "must be a bucket name without `/` or spaces",
            ));
        }
        if self.s3_region.is_empty() {
            return Err(invalid("storage.s3_region", "must not be empty"));
        }
        let prefix_ok = self.s3_prefix.is_empty()
            || (self.s3_prefix.ends_with('/')
                && self
                    .s3_prefix
                    .trim_end_matches('/')
                    .split('/')
                    .all(|part| !part.is_empty() && part != "." && part != "..")
                && !self.s3_prefix.contains(char::is_whitespace));
        if !prefix_ok {
            return Err(invalid(
                "storage.s3_prefix",
                format!(
                    "`{}` is not a key prefix like prod/ (no empty, . or .. parts)",
                    self.s3_prefix
                ),
            ));
        }
        if self.s3_timeout.is_zero() {
            return Err(invalid("storage.s3_timeout", "must be more than 0"));
        }
        if self.s3_upload_timeout.is_zero() {
            return Err(invalid("storage.s3_upload_timeout", "must be more than 0"));
        }
        if self.s3_max_uploads == 0 {
            return Err(invalid("storage.s3_max_uploads", "must be more than 0"));
        }
        if self.s3_part_size > S3_MAX_PART_SIZE {
            return Err(invalid(
                "storage.s3_part_size",
                "must be at most 5GiB (S3's largest part)",
            ));
        }
        if self.s3_part_size < S3_MIN_PART_SIZE {
            return Err(invalid(
                "storage.s3_part_size",
                format!("must be at least {S3_MIN_PART_SIZE} bytes (5MiB, S3's smallest part)"),
            ));
        }
        // A client may wait a while between the redirect and its GET (a slow pull of many
        // layers): under a second is surely a mistake; S3 refuses more than 7 days.
        if self.redirect_expiry < Duration::from_secs(1)
            || self.redirect_expiry > MAX_REDIRECT_EXPIRY
        {
            return Err(invalid(
                "storage.redirect_expiry",
                "must be between 1s and 7d (S3's longest presigned URL)",
            ));
        }
        Ok(())
    }
}

/// `none` or `direct`.
pub fn parse_parent_fallback(key: &str, s: &str) -> Result<ParentFallback, ConfigError> {
    match s {
        "none" => Ok(ParentFallback::None),
        "direct" => Ok(ParentFallback::Direct),
        _ => Err(invalid(key, format!("`{s}` is not one of none, direct"))),
    }
}
