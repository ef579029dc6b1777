//! What archway runs with: listeners, cache limits, upstreams, routes, TLS and client auth, with
//! the embedded defaults and the cross-key checks. Read from TOML by `file`, flags and
//! environment applied by `main`.

use super::error::{invalid, ConfigError};
use super::fleet_model::*;
use super::keys;
pub use super::secret::{Credentials, Secret};
use super::values::{parse_upstream_url, refuse_upstream_user_info};
pub use crate::route_policy::RouteConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:5000";
pub const DEFAULT_DATA_DIR: &str = "./archway-data";
pub const DOCKER_HUB_URL: &str = "https://registry-1.docker.io";
pub const DOCKER_HUB_ALIASES: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `cache.cold_ranges`: how a Range (one or several) of a blob still downloading is answered when the
/// download has not reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColdRanges {
    /// From an upstream Range request (and bytes the download has, before it is verified):
    /// unverified, as a lazy puller checks its chunks itself.
    Relay,
    /// From the download, once every byte matched the digest. The default: a relayed range
    /// passes on whatever upstream sends (the fault soak caught wrong bytes going through).
    #[default]
    Wait,
}

impl ColdRanges {
    /// `relay` or `wait`.
    pub fn parse(key: &str, s: &str) -> Result<ColdRanges, ConfigError> {
        match s {
            "relay" => Ok(ColdRanges::Relay),
            "wait" => Ok(ColdRanges::Wait),
            _ => Err(invalid(key, format!("`{s}` is not one of relay, wait"))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (plain HTTP); `None`: nowhere.
    pub admin_listen: Option<SocketAddr>,
    /// `POST /warm` on the admin listener (`admin_warm`).
    pub admin_warm: bool,
    pub data_dir: PathBuf,
    pub cache: CacheConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub log_format: LogFormat,
    /// `[tls]`: serve the registry listener over HTTPS.
    pub tls: Option<TlsConfig>,
    /// `[auth]`: clients must authenticate on `/v2/`.
    pub auth: Option<AuthConfig>,
    /// `[limits]`: what a client connection may take.
    pub limits: LimitsConfig,
    /// `[storage]`: a shared S3-compatible bucket behind `data_dir`; `None`: `data_dir` alone.
    pub storage: Option<StorageConfig>,
    /// `parent = [...]` and the `parent_*` keys: reach every upstream through parent archways.
    pub parent: ParentConfig,
    /// `[fleet]`: replicas on one bucket fill each blob once (needs `[storage]`).
    pub fleet: Option<FleetConfig>,
    /// `[conversion]`: zstd layers converted for clients that cannot read them.
    pub conversion: ConversionConfig,
    /// `[[pin]]`: images whose manifests and blobs the LRU never evicts.
    pub pins: Vec<PinConfig>,
    /// Whether the admin listener takes `POST /pins` and `DELETE /pins` (it always lists them).
    pub admin_pins: bool,
}

/// One `[[pin]]`: an image (tag or digest reference, as `archway warm` takes them) and the
/// platforms of an index kept (empty: all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinConfig {
    /// As written, for listings and logs.
    pub image: String,
    pub parsed: crate::image_ref::ImageRef,
    pub platforms: Vec<crate::platform::Platform>,
}

/// `[conversion]`: bounds on converting zstd layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversionConfig {
    pub max_concurrent: u32,
    pub max_layer_size: u64,
    pub max_output: u64,
    pub max_ratio: u64,
    pub max_wait: Duration,
}

impl Default for ConversionConfig {
    fn default() -> Self {
        ConversionConfig {
            max_concurrent: keys::CONVERSION_MAX_CONCURRENT,
            max_layer_size: keys::CONVERSION_MAX_LAYER_SIZE,
            max_output: keys::CONVERSION_MAX_OUTPUT,
            max_ratio: keys::CONVERSION_MAX_RATIO,
            max_wait: keys::CONVERSION_MAX_WAIT,
        }
    }
}

/// `[limits]`: bounds on client connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// From a request's first byte (or accept) until its head has arrived.
    pub header_read_timeout: Duration,
    /// How long a connection with no request in flight is kept.
    pub idle_timeout: Duration,
    /// Open client connections at most, across the registry listeners; `None`: sized to the
    /// open-file limit.
    pub max_connections: Option<u32>,
    /// Range-specs in one blob `Range` answered as ranges; past it the whole blob is sent.
    pub max_ranges: usize,
    /// A response (HTTP/1.1) or stream (h2) whose client takes no bytes for this long is
    /// dropped; a connection none of whose responses moves for this long is closed.
    pub stall_timeout: Duration,
    /// Concurrent h2 streams one connection may open.
    pub max_streams_per_connection: u32,
    /// Requests in flight across every connection; past it a request waits up to
    /// `stall_timeout` for a slot, then gets 503. `None`: sized to the open-file limit.
    pub max_requests: Option<u32>,
}

/// containers/storage asks for at most 1024 ranges at once (`maxNumberMissingChunks`).
pub const DEFAULT_MAX_RANGES: usize = 1024;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            header_read_timeout: keys::LIMITS_HEADER_READ_TIMEOUT,
            idle_timeout: keys::LIMITS_IDLE_TIMEOUT,
            max_connections: None,
            max_ranges: DEFAULT_MAX_RANGES,
            stall_timeout: keys::LIMITS_STALL_TIMEOUT,
            max_streams_per_connection: keys::LIMITS_MAX_STREAMS_PER_CONNECTION,
            max_requests: None,
        }
    }
}

/// `[tls]`: PEM certificate chain and private key of the registry listener, re-read on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// `[auth]`: who may pull. At least one of the two files is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// htpasswd with bcrypt hashes (`htpasswd -B`).
    pub htpasswd_file: Option<PathBuf>,
    /// One bearer token per line; `#` starts a comment.
    pub tokens_file: Option<PathBuf>,
    /// Wrong passwords one client address may try in a row before it gets 429 (no bcrypt).
    pub failure_burst: u32,
    /// One more wrong try comes back per this much time.
    pub failure_refill: Duration,
    /// Client addresses whose failures are remembered; past it (all of them recent) the rest
    /// share one budget.
    pub tracked_clients: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            htpasswd_file: None,
            tokens_file: None,
            failure_burst: keys::AUTH_FAILURE_BURST,
            failure_refill: keys::AUTH_FAILURE_REFILL,
            tracked_clients: keys::AUTH_TRACKED_CLIENTS,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Byte budget of the cache on disk: blobs, manifests and tag records together.
    pub max_size: u64,
    /// Byte budget of the in-memory manifest cache.
    pub memory_size: u64,
    /// Received blob bytes that may wait in memory for the disk, across all downloads.
    pub write_buffer: u64,
    /// Byte budget of the remembered tag answers (keyed by the client's hints).
    pub answer_memo: u64,
    /// Byte budget of the remembered platform selections.
    pub selection_memo: u64,
    /// Byte budget of the remembered foreign layers (digest, size, urls) of served manifests.
    pub foreign_memo: u64,
    /// Byte budget of the cached referrers answers (in memory).
    pub referrers_memory: u64,
    /// Byte budget of the tag records held in memory (all of them are on disk).
    pub tag_memory: u64,
    /// Access records (who may be served each object) held in memory; the rest are read from
    /// the objects' files when asked for.
    pub access_memory: u64,
    pub tag_ttl: Duration,
    /// How old a cached tag may be and still be served when upstream fails.
    pub stale_if_error: Duration,
    /// How long an upstream 404 for a tag (or a download that brought wrong bytes) is
    /// remembered.
    pub negative_ttl: Duration,
    /// The largest blob archway downloads; `None`: `max_size`.
    pub max_blob_size: Option<u64>,
    /// Downloads stop short of leaving less than this free on the cache's disk.
    pub min_free_space: u64,
    /// How often the background scrub re-checks every cached blob; zero: never.
    pub scrub_interval: Duration,
    /// Bytes per second the scrub reads at most.
    pub scrub_rate: u64,
    /// Check every read of a cached blob against its digest.
    pub verify_reads: bool,
    /// With `verify_reads`: how long a whole-blob check (its download, a verified whole read,
    /// the scrub) vouches for the blob's range reads; zero: every range read hashes the blob.
    pub verify_reads_ttl: Duration,
    /// A single Range of a blob still downloading, past the bytes the download has.
    pub cold_ranges: ColdRanges,
    /// Cached blob bodies on plain HTTP/1.1 go from the file to the socket by `sendfile`.
    pub sendfile: bool,
    /// With `Relay`: bytes of one request's several ranges relayed from upstream at most.
    pub cold_ranges_relay_max: u64,
    /// Revalidate tags asked for within their TTL in the background before they expire.
    pub refresh_ahead: bool,
    /// Background revalidations at a time (at least 1).
    pub refresh_ahead_concurrency: u32,
    /// How long before expiry the background revalidation starts; `None`: a tenth of the
    /// tag's TTL, at least 1 s. Never more than half the TTL.
    pub refresh_ahead_window: Option<Duration>,
    /// Pinned images at most (`[[pin]]` and the admin API's together).
    pub max_pins: usize,
}

impl CacheConfig {
    /// `max_blob_size`, or `max_size` when unset.
    pub fn max_blob_size(&self) -> u64 {
        self.max_blob_size.unwrap_or(self.max_size)
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size: keys::CACHE_MAX_SIZE,
            memory_size: keys::CACHE_MEMORY_SIZE,
            write_buffer: keys::CACHE_WRITE_BUFFER,
            answer_memo: keys::CACHE_ANSWER_MEMO,
            selection_memo: keys::CACHE_SELECTION_MEMO,
            foreign_memo: keys::CACHE_FOREIGN_MEMO,
            referrers_memory: keys::CACHE_REFERRERS_MEMORY,
            tag_memory: keys::CACHE_TAG_MEMORY,
            access_memory: keys::CACHE_ACCESS_MEMORY,
            tag_ttl: keys::CACHE_TAG_TTL,
            stale_if_error: keys::CACHE_STALE_IF_ERROR,
            negative_ttl: keys::CACHE_NEGATIVE_TTL,
            max_blob_size: None,
            min_free_space: keys::CACHE_MIN_FREE_SPACE,
            scrub_interval: keys::CACHE_SCRUB_INTERVAL,
            scrub_rate: keys::CACHE_SCRUB_RATE,
            verify_reads: false,
            verify_reads_ttl: keys::CACHE_VERIFY_READS_TTL,
            cold_ranges: ColdRanges::Wait,
            sendfile: true,
            cold_ranges_relay_max: keys::CACHE_COLD_RANGES_RELAY_MAX,
            refresh_ahead: true,
            refresh_ahead_concurrency: keys::CACHE_REFRESH_AHEAD_CONCURRENCY,
            refresh_ahead_window: None,
            max_pins: keys::CACHE_MAX_PINS as usize,
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// `scheme://host[:port]`, no path.
    pub url: http::Uri,
    pub aliases: Vec<String>,
    pub default: bool,
    pub credentials: Option<Credentials>,
    /// Extra PEM CA bundle trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate from this upstream (handshake signatures are still checked).
    pub insecure_skip_verify: bool,
    /// Overrides `cache.tag_ttl` for this upstream.
    pub tag_ttl: Option<Duration>,
    pub connect_timeout: Duration,
    /// Longest wait for response headers, and for each chunk of a body.
    pub read_timeout: Duration,
    /// Docker Hub: one-component names live under `library/`.
    pub library_prefix: bool,
    /// Hosts a blob redirect (or token realm) may lead to even when they resolve to loopback,
    /// link-local or private addresses: `host`, `host:port` or `*.domain`.
    pub redirect_hosts: Vec<String>,
    /// Where a foreign layer upstream cannot serve may be fetched from, by its manifest's urls.
    pub foreign_layer_hosts: Vec<crate::foreign::HostPattern>,
    /// Who may be served what was fetched from it (`None`: the default, private when it has
    /// credentials; see `visibility()`).
    pub visibility: Option<crate::access_rule::Visibility>,
    /// The `[auth]` users and named tokens that may use it; `None`: every client `[auth]` lets in.
    pub clients: Option<Vec<String>>,
}

impl UpstreamConfig {
    /// `visibility`, or its default: private when archway holds credentials for it. (With
    /// `parent = [...]` an upstream without `visibility` is private: the proxy sets it.)
    pub fn visibility(&self) -> crate::access_rule::Visibility {
        self.visibility.unwrap_or_else(|| {
            crate::access_rule::Visibility::default_for(self.credentials.is_some())
        })
    }

    /// Whether the `[auth]` client named `client` (`None`: an unnamed token, or no `[auth]`)
    /// may use this upstream.
    pub fn admits_client(&self, client: Option<&str>) -> bool {
        match (&self.clients, client) {
            (None, _) => true,
            (Some(names), Some(c)) => names.iter().any(|n| n == c),
            (Some(_), None) => false,
        }
    }

    /// An upstream for `url` with defaults; Docker Hub is recognised by its host.
    pub fn from_url(name: Option<&str>, url: &str) -> Result<Self, ConfigError> {
        let uri = parse_upstream_url("upstream.url", url)?;
        refuse_upstream_user_info("upstream.url", &uri)?;
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        let is_hub = DOCKER_HUB_ALIASES.contains(&host.as_str());
        let name = match name {
            Some(n) => n.to_owned(),
            None if is_hub => "docker.io".to_owned(),
            None => match uri.port_u16() {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            },
        };
        let aliases = if is_hub || name == "docker.io" {
            DOCKER_HUB_ALIASES
                .iter()
                .filter(|a| **a != name)
                .map(|s| s.to_string())
                .collect()
        } else {
            Vec::new()
        };
        Ok(UpstreamConfig {
            library_prefix: is_hub || name == "docker.io",
            name,
            url: uri,
            aliases,
            default: false,
            credentials: None,
            ca_file: None,
            insecure_skip_verify: false,
            tag_ttl: None,
            connect_timeout: keys::UPSTREAM_CONNECT_TIMEOUT,
            read_timeout: keys::UPSTREAM_READ_TIMEOUT,
            redirect_hosts: Vec::new(),
            foreign_layer_hosts: crate::foreign::DEFAULT_FOREIGN_LAYER_HOSTS
                .iter()
                .filter_map(|h| crate::foreign::HostPattern::parse(h).ok())
                .collect(),
            visibility: None,
            clients: None,
        })
    }

    /// Every name this upstream answers to (`ns=`, path prefix, Host), lowercased.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(|s| s.as_str()))
    }
}

impl Default for Config {
    /// The embedded defaults: a Docker Hub mirror on :5000 caching under ./archway-data.
    fn default() -> Self {
        let mut hub = UpstreamConfig::from_url(None, DOCKER_HUB_URL)
            .unwrap_or_else(|_| unreachable!("the Docker Hub URL is valid"));
        hub.default = true;
        Config {
            listen: vec![DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| unreachable!("the default address is valid"))],
            admin_listen: None,
            admin_warm: true,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            cache: CacheConfig::default(),
            upstreams: vec![hub],
            routes: Vec::new(),
            log_format: LogFormat::Text,
            tls: None,
            auth: None,
            limits: LimitsConfig::default(),
            storage: None,
            parent: ParentConfig::default(),
            fleet: None,
            conversion: ConversionConfig::default(),
            pins: Vec::new(),
            admin_pins: true,
        }
    }
}

impl Config {
    /// Cross-key checks; run after flags are applied too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(invalid("listen", "needs at least one address"));
        }
        if self.upstreams.is_empty() {
            return Err(invalid("upstream", "needs at least one upstream"));
        }
        if let Some(a) = self.admin_listen.filter(|a| a.port() != 0) {
            if self.listen.contains(&a) {
                return Err(invalid(
                    "admin_listen",
                    format!(
                        "{a} is also a registry `listen` address; the admin listener needs its own"
                    ),
                ));
            }
        }
        let defaults = self.upstreams.iter().filter(|u| u.default).count();
        if defaults > 1 {
            return Err(invalid(
                "upstream.default",
                "only one upstream may be the default",
            ));
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            refuse_upstream_user_info(&format!("upstream[{i}].url"), &u.url)?;
            // Without [auth] no client has a name, so `clients` would refuse every request.
            if u.clients.is_some() && self.auth.is_none() {
                return Err(invalid(
                    format!("upstream[{i}].clients"),
                    "names [auth] users and tokens, but there is no [auth]: every request to this upstream would be refused (403); add [auth], or remove `clients`",
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            for n in u.names() {
                if !seen.insert(n.to_ascii_lowercase()) {
                    return Err(invalid(
                        format!("upstream[{i}].aliases"),
                        format!("`{n}` names more than one upstream"),
                    ));
                }
            }
        }
        if self.cache.max_size == 0 {
            return Err(invalid("cache.max_size", "must be more than 0"));
        }
        if self.cache.max_pins == 0 {
            return Err(invalid("cache.max_pins", "must be more than 0"));
        }
        self.validate_pins()?;
        if self.cache.max_blob_size == Some(0) {
            return Err(invalid("cache.max_blob_size", "must be more than 0"));
        }
        if self.cache.scrub_rate == 0 {
            return Err(invalid(
                "cache.scrub_rate",
                "must be more than 0 (set cache.scrub_interval = \"0s\" to turn the scrub off)",
            ));
        }
        if self.cache.answer_memo == 0 {
            return Err(invalid("cache.answer_memo", "must be more than 0"));
        }
        if self.cache.foreign_memo == 0 {
            return Err(invalid("cache.foreign_memo", "must be more than 0"));
        }
        if self.cache.selection_memo == 0 {
            return Err(invalid("cache.selection_memo", "must be more than 0"));
        }
        if self.cache.referrers_memory == 0 {
            return Err(invalid("cache.referrers_memory", "must be more than 0"));
        }
        if self.cache.tag_memory == 0 {
            return Err(invalid("cache.tag_memory", "must be more than 0"));
        }
        if self.cache.access_memory == 0 {
            return Err(invalid("cache.access_memory", "must be more than 0"));
        }
        if self.cache.write_buffer == 0 {
            return Err(invalid("cache.write_buffer", "must be more than 0"));
        }
        if self.limits.header_read_timeout.is_zero() {
            return Err(invalid("limits.header_read_timeout", "must be more than 0"));
        }
        if self.limits.idle_timeout.is_zero() {
            return Err(invalid("limits.idle_timeout", "must be more than 0"));
        }
        if self.limits.stall_timeout.is_zero() {
            return Err(invalid("limits.stall_timeout", "must be more than 0"));
        }
        if self.limits.max_streams_per_connection == 0 {
            return Err(invalid(
                "limits.max_streams_per_connection",
                "must be more than 0",
            ));
        }
        if self.limits.max_requests == Some(0) {
            return Err(invalid(
                "limits.max_requests",
                "must be more than 0 (leave it out to size it to the open-file limit)",
            ));
        }
        if self.limits.max_ranges == 0 {
            return Err(invalid(
                "limits.max_ranges",
                "must be more than 0 (1: every list of ranges gets the whole blob)",
            ));
        }
        if self.limits.max_connections == Some(0) {
            return Err(invalid(
                "limits.max_connections",
                "must be more than 0 (leave it out to size it to the open-file limit)",
            ));
        }
        if let Some(a) = &self.auth {
            if a.htpasswd_file.is_none() && a.tokens_file.is_none() {
                return Err(invalid("auth", "needs htpasswd_file, tokens_file or both"));
            }
            if a.failure_burst == 0 {
                return Err(invalid("auth.failure_burst", "must be more than 0"));
            }
            if a.failure_refill.is_zero() {
                return Err(invalid("auth.failure_refill", "must be more than 0"));
            }
            if a.tracked_clients == 0 {
                return Err(invalid("auth.tracked_clients", "must be more than 0"));
            }
        }
        if let Some(s) = &self.storage {
            s.validate()?;
        }
        if let Some(f) = &self.fleet {
            if self.storage.is_none() {
                return Err(invalid(
                    "fleet",
                    "needs [storage]: the replicas share fills through the bucket",
                ));
            }
            if f.lease_ttl < MIN_LEASE_TTL {
                return Err(invalid("fleet.lease_ttl", "must be at least 1s"));
            }
            if f.peer_timeout.is_zero() {
                return Err(invalid("fleet.peer_timeout", "must be more than 0"));
            }
            if f.max_clock_skew > MAX_MAX_CLOCK_SKEW {
                return Err(invalid("fleet.max_clock_skew", "must be at most 1m"));
            }
        }
        self.validate_parent()
    }

    fn validate_parent(&self) -> Result<(), ConfigError> {
        let p = &self.parent;
        let mut seen = std::collections::HashSet::new();
        for u in &p.urls {
            // The URL is a log field and a metrics label: credentials have their own keys.
            if u.authority().is_some_and(|a| a.as_str().contains('@')) {
                return Err(invalid(
                    "parent",
                    "a parent URL must not hold credentials; use parent_username and parent_password",
                ));
            }
            if !seen.insert(u.to_string().to_ascii_lowercase()) {
                return Err(invalid("parent", format!("`{u}` is listed twice")));
            }
        }
        if p.connect_timeout.is_zero() {
            return Err(invalid("parent_connect_timeout", "must be more than 0"));
        }
        if p.read_timeout.is_zero() {
            return Err(invalid("parent_read_timeout", "must be more than 0"));
        }
        if !p.urls.is_empty() {
            // Sent as `?ns=<name>`, which a parent reads without percent-decoding.
            let plain = |n: &str| {
                n.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':')
                })
            };
            if let Some((i, u)) = self
                .upstreams
                .iter()
                .enumerate()
                .find(|(_, u)| !plain(&u.name))
            {
                return Err(invalid(
                    format!("upstream[{i}].name"),
                    format!(
                        "`{}` cannot be sent to a parent as ?ns=: use letters, digits and . - _ ~ :",
                        u.name
                    ),
                ));
            }
        }
        if p.urls.is_empty() && p.credentials.is_some() {
            return Err(invalid(
                "parent_username",
                "is set but `parent` lists no parent",
            ));
        }
        if p.urls.is_empty() && p.fallback != ParentFallback::None {
            return Err(invalid(
                "parent_fallback",
                "is set but `parent` lists no parent",
            ));
        }
        Ok(())
    }

    /// Each `[[pin]]` reaches a configured upstream, and no image is pinned twice.
    fn validate_pins(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.pins.iter().enumerate() {
            let key = format!("pin[{i}].image");
            match &p.parsed.registry {
                Some(r)
                    if !self
                        .upstreams
                        .iter()
                        .any(|u| u.names().any(|n| n.eq_ignore_ascii_case(r))) =>
                {
                    return Err(invalid(
                        key,
                        format!(
                            "registry `{r}` of `{}` is not a configured upstream",
                            p.image
                        ),
                    ));
                }
                None if self.default_upstream().is_none() => {
                    return Err(invalid(
                        key,
                        format!(
                            "`{}` names no registry and no upstream is the default",
                            p.image
                        ),
                    ));
                }
                _ => {}
            }
            if i >= self.cache.max_pins {
                return Err(invalid(
                    key,
                    format!("more than cache.max_pins ({}) pins", self.cache.max_pins),
                ));
            }
            if !seen.insert(p.image.clone()) {
                return Err(invalid(key, format!("`{}` is pinned twice", p.image)));
            }
        }
        Ok(())
    }

    /// The upstream a request with no `ns=`, prefix or Host match reaches: the one with
    /// `default = true`, or the only one there is (a lone mirror without the flag would
    /// otherwise start and then refuse every plain request).
    pub fn default_upstream(&self) -> Option<usize> {
        match self.upstreams.iter().position(|u| u.default) {
            None if self.upstreams.len() == 1 => Some(0),
            found => found,
        }
    }
}

/// `text` or `json`.
pub fn parse_log_format(key: &str, s: &str) -> Result<LogFormat, ConfigError> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(invalid(key, format!("`{s}` is not one of text, json"))),
    }
}
