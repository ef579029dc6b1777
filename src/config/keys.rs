//! Every config key, once: its dotted name, default and one-line doc. The constructors in
//! `model`/`fleet_model` take their defaults from the constants here, `archway config
//! --print-defaults` and docs/configuration.md print this table, and the tests in
//! `config::tests::keys` hold the parser's serde fields to it in both directions.

use std::time::Duration;

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

// Defaults without a home elsewhere. Each is read by its constructor and by `KEYS`.
pub const CACHE_MAX_SIZE: u64 = 50 << 30;
pub const CACHE_MEMORY_SIZE: u64 = 64 << 20;
pub const CACHE_WRITE_BUFFER: u64 = 64 << 20;
pub const CACHE_ANSWER_MEMO: u64 = 16 << 20;
pub const CACHE_SELECTION_MEMO: u64 = 16 << 20;
pub const CACHE_FOREIGN_MEMO: u64 = 4 << 20;
pub const CACHE_REFERRERS_MEMORY: u64 = 16 << 20;
pub const CACHE_TAG_MEMORY: u64 = 32 << 20;
pub const CACHE_ACCESS_MEMORY: u64 = 8 << 20;
pub const CACHE_TAG_TTL: Duration = secs(300);
pub const CACHE_STALE_IF_ERROR: Duration = secs(24 * 3600);
pub const CACHE_NEGATIVE_TTL: Duration = secs(30);
pub const CACHE_MIN_FREE_SPACE: u64 = 1 << 30;
pub const CACHE_SCRUB_INTERVAL: Duration = secs(24 * 3600);
pub const CACHE_SCRUB_RATE: u64 = 20 << 20;
/// `cache.cold_ranges_relay_max`: a lazy puller's cold list of chunks is a few MiB (podman's of
/// a 2.6 MB layer: 81 ranges, most of it); past this the download, running anyway, is waited for.
pub const CACHE_COLD_RANGES_RELAY_MAX: u64 = 16 << 20;
pub const CACHE_VERIFY_READS_TTL: Duration = secs(3600);
pub const CACHE_REFRESH_AHEAD_CONCURRENCY: u32 = 4;
pub const CACHE_MAX_PINS: u64 = 10_000;
pub const STORAGE_PIN_SYNC_INTERVAL: Duration = secs(30);
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = secs(10);
pub const UPSTREAM_READ_TIMEOUT: Duration = secs(30);
pub const LIMITS_HEADER_READ_TIMEOUT: Duration = secs(10);
pub const LIMITS_IDLE_TIMEOUT: Duration = secs(60);
pub const LIMITS_STALL_TIMEOUT: Duration = secs(30);
pub const LIMITS_MAX_STREAMS_PER_CONNECTION: u32 = 32;
pub const AUTH_FAILURE_BURST: u32 = 10;
pub const AUTH_FAILURE_REFILL: Duration = secs(6);
pub const AUTH_TRACKED_CLIENTS: usize = 10_000;
pub const STORAGE_S3_REGION: &str = "us-east-1";
pub const STORAGE_S3_TIMEOUT: Duration = secs(5);
pub const STORAGE_S3_UPLOAD_TIMEOUT: Duration = secs(60);
pub const STORAGE_S3_MAX_UPLOADS: u32 = 4;
pub const STORAGE_S3_UPLOAD_QUEUE: u32 = 256;
pub const STORAGE_S3_PART_SIZE: u64 = 16 << 20;
pub const STORAGE_REDIRECT_EXPIRY: Duration = secs(15 * 60);
pub const STORAGE_REDIRECT_MEMO: u64 = 1 << 20;
pub const FLEET_LEASE_TTL: Duration = secs(30);
pub const FLEET_PEER_TIMEOUT: Duration = secs(10);
pub const FLEET_SWEEP_INTERVAL: Duration = secs(600);
pub const FLEET_ORPHANED_UPLOAD_AGE: Duration = secs(24 * 3600);
pub const CONVERSION_MAX_CONCURRENT: u32 = 2;
pub const CONVERSION_MAX_LAYER_SIZE: u64 = 4 << 30;
pub const CONVERSION_MAX_OUTPUT: u64 = 16 << 30;
pub const CONVERSION_MAX_RATIO: u64 = 100;
pub const CONVERSION_MAX_WAIT: Duration = secs(600);
pub const PARENT_DOWN_FOR: Duration = secs(10);
pub const PARENT_CONNECT_TIMEOUT: Duration = secs(5);
pub const PARENT_READ_TIMEOUT: Duration = secs(60);

/// A key's default, typed so that the printed text and the constructor share one constant.
#[derive(Debug, Clone, Copy)]
pub enum DefaultValue {
    Duration(Duration),
    Size(u64),
    Int(u64),
    Bool(bool),
    /// A TOML string.
    Text(&'static str),
    /// A TOML list of strings.
    List(&'static [&'static str]),
    /// No value: what happens without the key (printed as a comment).
    None(&'static str),
}

/// One config key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// Dotted, as errors name it: `listen`, `cache.tag_ttl`, `upstream[].visibility`,
    /// `route[].match.host`.
    pub name: &'static str,
    pub default: DefaultValue,
    /// A TOML value of the key's type, shown for keys without a default (and parsed by the
    /// tests).
    pub example: &'static str,
    pub doc: &'static str,
}

const fn key(
    name: &'static str,
    default: DefaultValue,
    example: &'static str,
    doc: &'static str,
) -> Key {
    Key {
        name,
        default,
        example,
        doc,
    }
}

use DefaultValue as D;

/// Every key the file takes, in the order of the reference.
pub const KEYS: &[Key] = &[
    key("listen", D::Text(super::DEFAULT_LISTEN), "[\"0.0.0.0:5000\", \"[::]:5000\"]", "registry listener(s): one address or a list"),
    key("admin_listen", D::None("none: no admin listener"), "\"127.0.0.1:9091\"", "/metrics, /healthz and /readyz over plain HTTP; \"off\": none"),
    key("admin_warm", D::Bool(true), "", "POST /warm and GET /warm/<id> on the admin listener, which is unauthenticated: false switches warming off"),
    key("data_dir", D::Text(super::DEFAULT_DATA_DIR), "\"/var/lib/archway\"", "the cache on disk"),
    key("log_format", D::Text("text"), "\"json\"", "\"text\" or \"json\""),
    key("parent", D::None("none: upstreams are reached directly"), "[\"http://archway-0.archway:5000\"]", "parent archways every upstream is reached through (scheme and host[:port]); top-level, before any [table]"),
    key("parent_username", D::None("none"), "\"node\"", "answers the parents' [auth] challenge, with one of parent_password, _file, _env"),
    key("parent_password", D::None("none"), "\"secret\"", "the parents' password, inline"),
    key("parent_password_file", D::None("none"), "\"/run/secrets/parent\"", "the parents' password from a file (trailing newline ignored)"),
    key("parent_password_env", D::None("none"), "\"PARENT_PASSWORD\"", "the parents' password from an environment variable"),
    key("parent_token", D::None("none"), "\"token\"", "a bearer token of the parents' tokens_file (not with parent_username)"),
    key("parent_token_file", D::None("none"), "\"/run/secrets/parent-token\"", "parent_token from a file"),
    key("parent_token_env", D::None("none"), "\"PARENT_TOKEN\"", "parent_token from an environment variable"),
    key("parent_ca_file", D::None("none: the system roots"), "\"/etc/archway/cluster-ca.pem\"", "PEM CAs trusted for https:// parents besides the system roots"),
    key("parent_down_for", D::Duration(PARENT_DOWN_FOR), "", "a parent whose connection failed or timed out is skipped this long"),
    key("parent_connect_timeout", D::Duration(PARENT_CONNECT_TIMEOUT), "", "connecting to a parent"),
    key("parent_read_timeout", D::Duration(PARENT_READ_TIMEOUT), "", "a parent's response headers, and each gap in its body"),
    key("admin_pins", D::Bool(true), "", "the admin listener takes POST /pins and DELETE /pins (it is unauthenticated: keep it on a private address)"),
    key("parent_fallback", D::Text("none"), "\"direct\"", "when no parent answers: \"none\" (cache or error) or \"direct\" (the upstream itself)"),
    key("cache.max_size", D::Size(CACHE_MAX_SIZE), "", "disk budget: blobs, manifests and tag records (B, KB/KiB, MB/MiB, GB/GiB, TB/TiB)"),
    key("cache.memory_size", D::Size(CACHE_MEMORY_SIZE), "", "in-memory manifest cache budget (+ a quarter for small blobs)"),
    key("cache.write_buffer", D::Size(CACHE_WRITE_BUFFER), "", "downloaded blob bytes that may wait in memory for the disk"),
    key("cache.answer_memo", D::Size(CACHE_ANSWER_MEMO), "", "remembered tag answers per client header set"),
    key("cache.selection_memo", D::Size(CACHE_SELECTION_MEMO), "", "remembered platform selections per (index, platform)"),
    key("cache.foreign_memo", D::Size(CACHE_FOREIGN_MEMO), "", "remembered foreign layers (digest, size, urls) of served manifests"),
    key("cache.referrers_memory", D::Size(CACHE_REFERRERS_MEMORY), "", "cached referrers answers (per subject and artifactType filter)"),
    key("cache.tag_memory", D::Size(CACHE_TAG_MEMORY), "", "tag records held in memory (the rest are read from disk on use)"),
    key("cache.access_memory", D::Size(CACHE_ACCESS_MEMORY), "", "access records held in memory (the rest live on the cached files)"),
    key("cache.tag_ttl", D::Duration(CACHE_TAG_TTL), "", "how long a tag is served without asking upstream (durations: ms, s, m, h, d, combinable)"),
    key("cache.stale_if_error", D::Duration(CACHE_STALE_IF_ERROR), "", "how old a cached tag may be and still be served when upstream fails"),
    key("cache.negative_ttl", D::Duration(CACHE_NEGATIVE_TTL), "", "how long an upstream 404 for a tag is remembered"),
    key("cache.max_blob_size", D::None("max_size"), "\"50GiB\"", "the largest blob downloaded"),
    key("cache.min_free_space", D::Size(CACHE_MIN_FREE_SPACE), "", "downloads stop short of leaving less free on the disk"),
    key("cache.scrub_interval", D::Duration(CACHE_SCRUB_INTERVAL), "", "re-check every cached blob this often; \"0s\": never"),
    key("cache.scrub_rate", D::Size(CACHE_SCRUB_RATE), "", "bytes per second the scrub reads at most"),
    key("cache.verify_reads", D::Bool(false), "", "check every cached read against its digest"),
    key("cache.verify_reads_ttl", D::Duration(CACHE_VERIFY_READS_TTL), "", "with verify_reads: a whole-blob check vouches this long for Range reads; \"0s\": each Range hashes the blob"),
    key("cache.sendfile", D::Bool(true), "", "cached blob bodies on plain HTTP/1.1 are sent by the kernel (sendfile), not read and written"),
    key("cache.cold_ranges", D::Text("wait"), "\"relay\"", "the Range (one or several) of a blob still downloading, past what the download has: \"relay\" (from upstream Range requests, unverified) or \"wait\" (for the download's digest-checked bytes)"),
    key("cache.cold_ranges_relay_max", D::Size(CACHE_COLD_RANGES_RELAY_MAX), "", "with relay: bytes of one request's several ranges relayed from upstream at most; further parts come from the download"),
    key("cache.refresh_ahead", D::Bool(true), "", "revalidate a tag asked for within its TTL in the background shortly before it expires (TTLs of 2s and more)"),
    key("cache.refresh_ahead_concurrency", D::Int(CACHE_REFRESH_AHEAD_CONCURRENCY as u64), "", "background revalidations at a time; past it a tag is revalidated on expiry as without refresh_ahead"),
    key("cache.refresh_ahead_window", D::None("a tenth of the tag's TTL, at least 1s"), "\"30s\"", "how long before a tag expires its background revalidation starts (at most half its TTL)"),
    key("cache.max_pins", D::Int(CACHE_MAX_PINS), "", "pinned images at most ([[pin]] and the admin API's together)"),
    key("upstream[].name", D::None("none: required; without any [[upstream]], Docker Hub"), "\"docker.io\"", "what ns=, a path prefix or Host select"),
    key("upstream[].url", D::None("none: required"), "\"https://registry-1.docker.io\"", "scheme and host[:port] only; http:// allowed; no user:pass@"),
    key("upstream[].aliases", D::List(&[]), "[\"index.docker.io\"]", "other names that select it"),
    key("upstream[].default", D::Bool(false), "", "what requests with no ns=, prefix or Host match reach (a sole upstream is the default without it)"),
    key("upstream[].username", D::None("none: anonymous"), "\"mirror-bot\"", "for upstream's token service, with one of password, password_file, password_env"),
    key("upstream[].password", D::None("none"), "\"secret\"", "inline"),
    key("upstream[].password_file", D::None("none"), "\"/run/secrets/hub\"", "from a file (trailing newline ignored)"),
    key("upstream[].password_env", D::None("none"), "\"HUB_PASSWORD\"", "from an environment variable"),
    key("upstream[].ca_file", D::None("none: the system roots"), "\"/etc/archway/extra-ca.pem\"", "PEM CAs trusted besides the system roots"),
    key("upstream[].insecure_skip_verify", D::Bool(false), "", "accept any certificate (WARN at start); not with ca_file"),
    key("upstream[].tag_ttl", D::None("cache.tag_ttl"), "\"5m\"", "this upstream's tag TTL"),
    key("upstream[].connect_timeout", D::Duration(UPSTREAM_CONNECT_TIMEOUT), "", "connecting to the upstream"),
    key("upstream[].read_timeout", D::Duration(UPSTREAM_READ_TIMEOUT), "", "response headers (connecting included), and each gap in a body"),
    key("upstream[].library_prefix", D::None("true for Docker Hub, else false"), "true", "add library/ to one-component names"),
    key("upstream[].redirect_hosts", D::List(&[]), "[\"cdn.internal\", \"*.blobs.internal:8443\"]", "blob redirects may reach these even on private addresses"),
    key("upstream[].foreign_layer_hosts", D::List(&crate::foreign::DEFAULT_FOREIGN_LAYER_HOSTS), "", "foreign layers upstream lacks come from their urls on these; host / *.domain: https only; []: never"),
    key("upstream[].visibility", D::None("\"private\" with credentials or parents, else \"public\""), "\"private\"", "who is served what was fetched from it"),
    key("upstream[].clients", D::None("none: every client"), "[\"ci\", \"alice\"]", "[auth] users / named tokens that may use it (needs [auth])"),
    key("route[].match.host", D::None("none: any"), "\"ltsc2019.mirror.internal\"", "the Host the client asked for"),
    key("route[].match.port", D::None("none: any"), "5000", "the listener port the client reached"),
    key("route[].match.client_cidr", D::None("none: any"), "\"10.0.0.0/8\"", "the client's address"),
    key("route[].match.repository", D::None("none: any"), "\"library/*\"", "a repository glob"),
    key("route[].match.user_agent", D::None("none: any"), "\"containerd\"", "a substring of the User-Agent"),
    key("route[].platform", D::None("none: the client's"), "\"windows/amd64:10.0.17763\"", "the platform answered for an image index"),
    key("route[].rewrite", D::Text("legacy"), "\"always\"", "\"legacy\", \"always\" (needs platform) or \"never\""),
    key("route[].oci_for_legacy", D::Text("convert"), "\"reject\"", "an OCI manifest for a legacy client: \"convert\" or \"reject\""),
    key("route[].layers", D::Text("auto"), "\"compatible\"", "zstd layers: \"auto\" (converted for clients that cannot read them), \"compatible\" (always) or \"as-is\""),
    key("route[].windows_match", D::Text("process"), "\"hyperv\"", "Windows build matching: \"process\" or \"hyperv\""),
    key("pin[].image", D::None("none: required in [[pin]]"), "\"docker.io/library/alpine:3.20\"", "an image never evicted: a tag (followed when it moves) or a digest"),
    key("pin[].platforms", D::List(&[]), "[\"linux/amd64\"]", "the platforms of an index kept; []: all"),
    key("tls.cert_file", D::None("none: required in [tls]"), "\"/etc/archway/tls.crt\"", "PEM certificate chain of the registry listener; SIGHUP re-reads it"),
    key("tls.key_file", D::None("none: required in [tls]"), "\"/etc/archway/tls.key\"", "its PEM private key"),
    key("auth.htpasswd_file", D::None("none"), "\"/etc/archway/htpasswd\"", "htpasswd with bcrypt hashes (htpasswd -B); one or both of the two files"),
    key("auth.tokens_file", D::None("none"), "\"/etc/archway/tokens\"", "one bearer token per line"),
    key("auth.failure_burst", D::Int(AUTH_FAILURE_BURST as u64), "", "wrong passwords one client address may try in a row, then 429"),
    key("auth.failure_refill", D::Duration(AUTH_FAILURE_REFILL), "", "and one more try per this much time"),
    key("auth.tracked_clients", D::Int(AUTH_TRACKED_CLIENTS as u64), "", "addresses whose budget is remembered; past it they share one"),
    key("limits.header_read_timeout", D::Duration(LIMITS_HEADER_READ_TIMEOUT), "", "from a request's first byte (or accept) to its whole head"),
    key("limits.idle_timeout", D::Duration(LIMITS_IDLE_TIMEOUT), "", "a connection with no request in flight is closed after this"),
    key("limits.max_connections", D::None("sized to the open-file limit"), "10000", "open client connections at most"),
    key("limits.max_ranges", D::Int(super::DEFAULT_MAX_RANGES as u64), "", "range-specs in one blob Range; past it the whole blob (200)"),
    key("limits.stall_timeout", D::Duration(LIMITS_STALL_TIMEOUT), "", "a response (h2: a stream) whose client takes no bytes this long is dropped"),
    key("limits.max_streams_per_connection", D::Int(LIMITS_MAX_STREAMS_PER_CONNECTION as u64), "", "concurrent h2 streams on one connection"),
    key("limits.max_requests", D::None("sized to the open-file limit, at most 512"), "512", "requests in flight in all; past it a request waits stall_timeout, then 503"),
    key("conversion.max_concurrent", D::Int(CONVERSION_MAX_CONCURRENT as u64), "", "zstd layers decompressed at once (each takes a CPU); the others wait"),
    key("conversion.max_layer_size", D::Size(CONVERSION_MAX_LAYER_SIZE), "", "a larger zstd layer is not converted (the manifest request gets an error)"),
    key("conversion.max_output", D::Size(CONVERSION_MAX_OUTPUT), "", "a layer that decompresses to more is refused, nothing kept"),
    key("conversion.max_ratio", D::Int(CONVERSION_MAX_RATIO), "", "a layer that decompresses to more than this times its size (past 64 MiB) is refused as a bomb"),
    key("conversion.max_wait", D::Duration(CONVERSION_MAX_WAIT), "", "how long a manifest request waits for its layers' conversion, then 503 (the conversion goes on)"),
    key("storage.s3_bucket", D::None("none: required in [storage]"), "\"archway\"", "the bucket the replicas share"),
    key("storage.s3_prefix", D::Text(""), "\"prod/\"", "prepended to every key (ends in / when set)"),
    key("storage.s3_endpoint", D::None("none: AWS"), "\"http://127.0.0.1:9000\"", "an S3-compatible server"),
    key("storage.s3_region", D::Text(STORAGE_S3_REGION), "", "the bucket's region"),
    key("storage.s3_path_style", D::Bool(false), "", "endpoint/bucket/key (MinIO, Ceph, moto)"),
    key("storage.s3_access_key_id", D::None("none: the AWS credential chain"), "\"AKIAEXAMPLE\"", "with s3_secret_access_key"),
    key("storage.s3_access_key_id_file", D::None("none"), "\"/run/secrets/s3-key-id\"", "s3_access_key_id from a file (trailing newline ignored)"),
    key("storage.s3_secret_access_key", D::None("none"), "\"secret\"", "with s3_access_key_id"),
    key("storage.s3_secret_access_key_file", D::None("none"), "\"/run/secrets/s3-secret\"", "s3_secret_access_key from a file"),
    key("storage.s3_timeout", D::Duration(STORAGE_S3_TIMEOUT), "", "any S3 response head, and each gap in an object's body"),
    key("storage.s3_upload_timeout", D::Duration(STORAGE_S3_UPLOAD_TIMEOUT), "", "one upload request: a whole small object, or one part"),
    key("storage.s3_max_uploads", D::Int(STORAGE_S3_MAX_UPLOADS as u64), "", "copies to the bucket running at once"),
    key("storage.s3_upload_queue", D::Int(STORAGE_S3_UPLOAD_QUEUE as u64), "", "copies waiting; past that new ones are skipped (counted)"),
    key("storage.s3_part_size", D::Size(STORAGE_S3_PART_SIZE), "", "blobs up to this are one PUT, larger ones multipart (5MiB-5GiB)"),
    key("storage.redirect", D::Bool(false), "", "true: a blob GET for a blob in the bucket gets 307 to a presigned URL"),
    key("storage.redirect_expiry", D::Duration(STORAGE_REDIRECT_EXPIRY), "", "how long a presigned URL is valid (1s-7d)"),
    key("storage.redirect_memo", D::Size(STORAGE_REDIRECT_MEMO), "", "digests remembered as in the bucket (no HEAD); \"0\": ask each time"),
    key("storage.backfill", D::Bool(true), "", "blobs cached on the disk before this bucket was set are copied to it once, one at a time, in the background"),
    key("storage.pin_sync_interval", D::Duration(STORAGE_PIN_SYNC_INTERVAL), "", "how often pinned objects are copied under pins/ (and, with [fleet], the pin list adopted)"),
    key("fleet.peer_url", D::None("none: required, here or by ARCHWAY_PEER_URL / --peer-url"), "\"http://10.1.2.3:5000\"", "how the other replicas reach this one (no path)"),
    key("fleet.secret", D::None("refused"), "\"inline\"", "not taken inline: keep the secret in a file and give secret_file"),
    key("fleet.secret_file", D::None("none: required in [fleet]"), "\"/etc/archway/fleet-secret\"", "the secret the replicas share (first line)"),
    key("fleet.lease_ttl", D::Duration(FLEET_LEASE_TTL), "", "a fill lease holds this long unrenewed; renewed every ttl/3"),
    key("fleet.peer_timeout", D::Duration(FLEET_PEER_TIMEOUT), "", "a peer's response head, and each gap in its body"),
    key("fleet.sweep_interval", D::Duration(FLEET_SWEEP_INTERVAL), "", "one replica deletes leases dead replicas left; \"0s\": never"),
    key("fleet.orphaned_upload_age", D::Duration(FLEET_ORPHANED_UPLOAD_AGE), "", "the sweep aborts multipart uploads under blobs/ older than this"),
    key("fleet.max_clock_skew", D::Duration(super::DEFAULT_MAX_CLOCK_SKEW), "", "a record or peer request dated further ahead than this is not believed (at most 1m)"),
];

impl DefaultValue {
    /// The default as TOML text; `None` for a key without one.
    pub fn toml(&self) -> Option<String> {
        Some(match *self {
            D::Duration(d) => format!("\"{}\"", duration_text(d)),
            D::Size(n) => format!("\"{}\"", size_text(n)),
            D::Int(n) => n.to_string(),
            D::Bool(b) => b.to_string(),
            D::Text(s) => format!("{s:?}"),
            D::List(l) => format!(
                "[{}]",
                l.iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            D::None(_) => return None,
        })
    }
}

impl Key {
    /// A value of the key's type: its default, or its example when it has none.
    pub fn value(&self) -> String {
        self.default
            .toml()
            .unwrap_or_else(|| self.example.to_owned())
    }

    /// The table the key sits in (`cache`, `upstream[]`, `route[].match`), `""` at the top.
    pub fn section(&self) -> &'static str {
        self.name.rsplit_once('.').map_or("", |(s, _)| s)
    }

    /// Its name inside its table.
    pub fn leaf(&self) -> &'static str {
        self.name.rsplit_once('.').map_or(self.name, |(_, l)| l)
    }
}

/// The largest whole unit: `24h`, `15m`, `5s`, `250ms`.
fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, n) in [("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms.is_multiple_of(n) {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

/// The largest whole binary unit: `50GiB`, `64MiB`, `0`.
fn size_text(n: u64) -> String {
    if n == 0 {
        return "0".into();
    }
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// The reference: every key under its table header, with its default (or a commented
/// example) and its doc. What `archway config --print-defaults` prints, and the block
/// docs/configuration.md holds.
pub fn reference() -> String {
    let mut out = String::new();
    let mut section = "";
    for k in KEYS {
        let s = k.section();
        // route[].match.* keys are written inside [[route]] as `match.host = …`.
        let (header, leaf) = match s.split_once("[].") {
            Some((table, sub)) => (table, format!("{sub}.{}", k.leaf())),
            None => (s.trim_end_matches("[]"), k.leaf().to_owned()),
        };
        if header != section {
            section = header;
            let array = k.name.starts_with(&format!("{header}[]"));
            out.push_str(&if array {
                format!("\n[[{header}]]\n")
            } else {
                format!("\n[{header}]\n")
            });
        }
        let line = match k.default {
            D::None(_) => format!("# {leaf} = {}", k.example),
            _ => format!("{leaf} = {}", k.value()),
        };
        let doc = match k.default {
            D::None(why) => format!("{} (default: {why})", k.doc),
            _ => k.doc.to_owned(),
        };
        out.push_str(&format!("{line:<44} # {doc}\n"));
    }
    out
}

#[cfg(test)]
mod tests;
