//! Configuration: the TOML shape from the design, embedded defaults, and validation that names
//! the offending key.

use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:5000";
pub const DEFAULT_DATA_DIR: &str = "./archway-data";
pub const DOCKER_HUB_URL: &str = "https://registry-1.docker.io";
pub const DOCKER_HUB_ALIASES: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Parse(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (plain HTTP); `None`: nowhere.
    pub admin_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub cache: CacheConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub log_format: LogFormat,
    /// `[tls]`: serve the registry listener over HTTPS.
    pub tls: Option<TlsConfig>,
    /// `[auth]`: clients must authenticate on `/v2/`.
    pub auth: Option<AuthConfig>,
}

/// `[tls]`: PEM certificate chain and private key of the registry listener, re-read on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// `[auth]`: who may pull. At least one of the two files is set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthConfig {
    /// htpasswd with bcrypt hashes (`htpasswd -B`).
    pub htpasswd_file: Option<PathBuf>,
    /// One bearer token per line; `#` starts a comment.
    pub tokens_file: Option<PathBuf>,
}

/// One `[[route]]`: a match and the platform policy it sets.
#[derive(Debug, Clone, Default)]
pub struct RouteConfig {
    pub matcher: crate::route_policy::RouteMatch,
    /// The route's platform in containerd form (`linux/arm64`, `windows(10.0.17763)/amd64`) or
    /// `windows/amd64:10.0.17763`; validated when the config is loaded.
    pub platform: Option<String>,
    pub rewrite: crate::route_policy::RewriteMode,
    pub oci_for_legacy: crate::route_policy::OciForLegacy,
    pub windows_match: crate::platform::WindowsMatch,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Byte budget of the blob store on disk.
    pub max_size: u64,
    /// Byte budget of the in-memory manifest cache.
    pub memory_size: u64,
    /// Received blob bytes that may wait in memory for the disk, across all downloads.
    pub write_buffer: u64,
    pub tag_ttl: Duration,
    /// How old a cached tag may be and still be served when upstream fails.
    pub stale_if_error: Duration,
    /// How long an upstream 404 for a tag is remembered.
    pub negative_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size: 50 << 30,
            memory_size: 64 << 20,
            write_buffer: crate::cache::blob::DEFAULT_WRITE_BUFFER,
            tag_ttl: Duration::from_secs(300),
            stale_if_error: Duration::from_secs(24 * 3600),
            negative_ttl: Duration::from_secs(30),
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
}

impl UpstreamConfig {
    /// An upstream for `url` with defaults; Docker Hub is recognised by its host.
    pub fn from_url(name: Option<&str>, url: &str) -> Result<Self, ConfigError> {
        let uri = parse_upstream_url("upstream.url", url)?;
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
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
        })
    }

    /// Every name this upstream answers to (`ns=`, path prefix, Host), lowercased.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(|s| s.as_str()))
    }
}

fn parse_upstream_url(key: &str, url: &str) -> Result<http::Uri, ConfigError> {
    let uri: http::Uri = url
        .trim_end_matches('/')
        .parse()
        .map_err(|e| invalid(key, format!("not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(invalid(key, "must start with http:// or https://")),
    }
    if uri.host().is_none() {
        return Err(invalid(key, "has no host"));
    }
    if !matches!(uri.path(), "" | "/") {
        return Err(invalid(key, "must not have a path"));
    }
    Ok(uri)
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
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            cache: CacheConfig::default(),
            upstreams: vec![hub],
            routes: Vec::new(),
            log_format: LogFormat::Text,
            tls: None,
            auth: None,
        }
    }
}

// === the TOML file ===

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<OneOrMany>,
    admin_listen: Option<String>,
    data_dir: Option<PathBuf>,
    log_format: Option<String>,
    cache: Option<RawCache>,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    #[serde(default)]
    route: Vec<RawRoute>,
    tls: Option<RawTls>,
    auth: Option<RawAuth>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    htpasswd_file: Option<PathBuf>,
    tokens_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(rename = "match", default)]
    matcher: RawRouteMatch,
    platform: Option<String>,
    rewrite: Option<String>,
    oci_for_legacy: Option<String>,
    windows_match: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRouteMatch {
    host: Option<String>,
    port: Option<u16>,
    client_cidr: Option<String>,
    repository: Option<String>,
    user_agent: Option<String>,
}

impl RawRoute {
    fn into_config(self, i: usize) -> Result<RouteConfig, ConfigError> {
        use crate::route_policy::{OciForLegacy, RewriteMode, RouteMatch};
        let key = |k: &str| format!("route[{i}].{k}");
        let m = self.matcher;
        let client_cidr = match m.client_cidr {
            None => None,
            Some(c) => Some(
                c.parse::<ipnet::IpNet>()
                    .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        invalid(
                            key("match.client_cidr"),
                            format!("`{c}` is not a CIDR like 10.0.0.0/8"),
                        )
                    })?,
            ),
        };
        let repository = match m.repository {
            None => None,
            Some(g) => Some(crate::route_policy::RepoGlob::new(&g).map_err(|e| {
                invalid(
                    key("match.repository"),
                    format!("`{g}` is not a glob like library/*: {}", e.kind()),
                )
            })?),
        };
        let rewrite = match self.rewrite.as_deref() {
            None | Some("legacy") => RewriteMode::Legacy,
            Some("always") => RewriteMode::Always,
            Some("never") => RewriteMode::Never,
            Some(o) => {
                return Err(invalid(
                    key("rewrite"),
                    format!("`{o}` is not one of legacy, always, never"),
                ))
            }
        };
        let oci_for_legacy = match self.oci_for_legacy.as_deref() {
            None | Some("convert") => OciForLegacy::Convert,
            Some("reject") => OciForLegacy::Reject,
            Some(o) => {
                return Err(invalid(
                    key("oci_for_legacy"),
                    format!("`{o}` is not one of convert, reject"),
                ))
            }
        };
        let windows_match = match self.windows_match.as_deref() {
            None | Some("process") => crate::platform::WindowsMatch::Process,
            Some("hyperv") => crate::platform::WindowsMatch::Hyperv,
            Some(o) => {
                return Err(invalid(
                    key("windows_match"),
                    format!("`{o}` is not one of process, hyperv"),
                ))
            }
        };
        if rewrite == RewriteMode::Always && self.platform.is_none() {
            return Err(invalid(
                key("platform"),
                "rewrite = \"always\" needs a platform",
            ));
        }
        if let Some(p) = &self.platform {
            crate::platform::Platform::parse(p)
                .map_err(|e| invalid(key("platform"), format!("`{p}`: {e}")))?;
        }
        Ok(RouteConfig {
            matcher: RouteMatch {
                host: m.host.map(|h| h.to_ascii_lowercase()),
                port: m.port,
                client_cidr,
                repository,
                user_agent: m.user_agent,
            },
            platform: self.platform,
            rewrite,
            oci_for_legacy,
            windows_match,
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    max_size: Option<String>,
    memory_size: Option<String>,
    write_buffer: Option<String>,
    tag_ttl: Option<String>,
    stale_if_error: Option<String>,
    negative_ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    url: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    default: bool,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
    tag_ttl: Option<String>,
    connect_timeout: Option<String>,
    read_timeout: Option<String>,
    library_prefix: Option<bool>,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut cfg = Config::default();
        if let Some(l) = raw.listen {
            let list = match l {
                OneOrMany::One(s) => vec![s],
                OneOrMany::Many(v) => v,
            };
            cfg.listen = parse_listen("listen", &list)?;
        }
        if let Some(a) = raw.admin_listen {
            cfg.admin_listen = parse_admin_listen("admin_listen", &a)?;
        }
        if let Some(d) = raw.data_dir {
            cfg.data_dir = d;
        }
        if let Some(f) = raw.log_format {
            cfg.log_format = parse_log_format("log_format", &f)?;
        }
        if let Some(c) = raw.cache {
            let k = &mut cfg.cache;
            if let Some(v) = c.max_size {
                k.max_size = parse_size("cache.max_size", &v)?;
            }
            if let Some(v) = c.memory_size {
                k.memory_size = parse_size("cache.memory_size", &v)?;
            }
            if let Some(v) = c.write_buffer {
                k.write_buffer = parse_size("cache.write_buffer", &v)?;
            }
            if let Some(v) = c.tag_ttl {
                k.tag_ttl = parse_duration("cache.tag_ttl", &v)?;
            }
            if let Some(v) = c.stale_if_error {
                k.stale_if_error = parse_duration("cache.stale_if_error", &v)?;
            }
            if let Some(v) = c.negative_ttl {
                k.negative_ttl = parse_duration("cache.negative_ttl", &v)?;
            }
        }
        if !raw.upstream.is_empty() {
            cfg.upstreams = raw
                .upstream
                .into_iter()
                .enumerate()
                .map(|(i, u)| u.into_config(i))
                .collect::<Result<_, _>>()?;
        }
        cfg.routes = raw
            .route
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.into_config(i))
            .collect::<Result<_, _>>()?;
        if let Some(t) = raw.tls {
            cfg.tls = Some(TlsConfig {
                cert_file: t
                    .cert_file
                    .ok_or_else(|| invalid("tls.cert_file", "is required in [tls]"))?,
                key_file: t
                    .key_file
                    .ok_or_else(|| invalid("tls.key_file", "is required in [tls]"))?,
            });
        }
        if let Some(a) = raw.auth {
            cfg.auth = Some(AuthConfig {
                htpasswd_file: a.htpasswd_file,
                tokens_file: a.tokens_file,
            });
        }
        cfg.validate()?;
        Ok(cfg)
    }

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
        if self.cache.write_buffer == 0 {
            return Err(invalid("cache.write_buffer", "must be more than 0"));
        }
        if let Some(a) = &self.auth {
            if a.htpasswd_file.is_none() && a.tokens_file.is_none() {
                return Err(invalid("auth", "needs htpasswd_file, tokens_file or both"));
            }
        }
        Ok(())
    }

    /// The upstream a request with no `ns=`, prefix or Host match reaches.
    pub fn default_upstream(&self) -> Option<usize> {
        self.upstreams.iter().position(|u| u.default)
    }
}

impl RawUpstream {
    fn into_config(self, i: usize) -> Result<UpstreamConfig, ConfigError> {
        let key = |k: &str| format!("upstream[{i}].{k}");
        if self.name.is_empty()
            || self.name.contains('/')
            || self.name.contains(char::is_whitespace)
        {
            return Err(invalid(
                key("name"),
                "must be a non-empty registry name without `/`",
            ));
        }
        parse_upstream_url(&key("url"), &self.url)?;
        let mut u = UpstreamConfig::from_url(Some(&self.name), &self.url)?;
        u.default = self.default;
        for a in self.aliases {
            let a = a.to_ascii_lowercase();
            if a.is_empty() || a.contains('/') {
                return Err(invalid(
                    key("aliases"),
                    format!("`{a}` is not a registry name"),
                ));
            }
            if a != u.name && !u.aliases.contains(&a) {
                u.aliases.push(a);
            }
        }
        if let Some(p) = self.library_prefix {
            u.library_prefix = p;
        }
        u.ca_file = self.ca_file;
        u.insecure_skip_verify = self.insecure_skip_verify;
        if u.insecure_skip_verify && u.ca_file.is_some() {
            return Err(invalid(
                key("insecure_skip_verify"),
                "is set together with ca_file, which it would make pointless; give one",
            ));
        }
        if let Some(v) = self.tag_ttl {
            u.tag_ttl = Some(parse_duration(&key("tag_ttl"), &v)?);
        }
        if let Some(v) = self.connect_timeout {
            u.connect_timeout = parse_duration(&key("connect_timeout"), &v)?;
        }
        if let Some(v) = self.read_timeout {
            u.read_timeout = parse_duration(&key("read_timeout"), &v)?;
        }
        let sources = [
            self.password.is_some(),
            self.password_file.is_some(),
            self.password_env.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if sources > 1 {
            return Err(invalid(
                key("password"),
                "give only one of password, password_file, password_env",
            ));
        }
        let password = if let Some(p) = self.password {
            Some(p)
        } else if let Some(f) = self.password_file {
            let text = std::fs::read_to_string(&f).map_err(|e| {
                invalid(
                    key("password_file"),
                    format!("cannot read {}: {e}", f.display()),
                )
            })?;
            Some(text.trim_end_matches(['\r', '\n']).to_owned())
        } else if let Some(var) = self.password_env {
            Some(std::env::var(&var).map_err(|_| {
                invalid(
                    key("password_env"),
                    format!("environment variable {var} is not set"),
                )
            })?)
        } else {
            None
        };
        u.credentials = match (self.username, password) {
            (Some(username), Some(p)) => Some(Credentials {
                username,
                password: Secret::new(p),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    key("password"),
                    "username given without a password",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    key("username"),
                    "password given without a username",
                ))
            }
        };
        Ok(u)
    }
}

pub fn parse_listen(key: &str, list: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
    list.iter()
        .map(|s| {
            s.parse()
                .map_err(|_| invalid(key, format!("`{s}` is not an address like 0.0.0.0:5000")))
        })
        .collect()
}

/// An address like `127.0.0.1:9091`, or `""`/`off` for no admin listener.
pub fn parse_admin_listen(key: &str, s: &str) -> Result<Option<SocketAddr>, ConfigError> {
    match s.trim() {
        "" | "off" => Ok(None),
        a => a.parse().map(Some).map_err(|_| {
            invalid(
                key,
                format!("`{s}` is not an address like 127.0.0.1:9091 (or \"off\")"),
            )
        }),
    }
}

pub fn parse_log_format(key: &str, s: &str) -> Result<LogFormat, ConfigError> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(invalid(key, format!("`{s}` is not one of text, json"))),
    }
}

/// `"50GiB"`, `"512MiB"`, `"10GB"`, `"1000"` (bytes), read by `bytesize`: units B, K/KB/KiB up to
/// E/EB/EiB, case-insensitive, optionally after a space; a fraction such as `"1.5GiB"` is allowed.
pub fn parse_size(key: &str, s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let size = t
        .parse::<bytesize::ByteSize>()
        .map_err(|e| invalid(key, format!("`{s}` is not a size like 50GiB: {e}")))?
        .as_u64();
    // bytesize saturates where it overflows. u64::MAX is odd, so no unit above a byte can reach
    // it exactly: there it is always an overflow.
    let in_bytes = t
        .trim_end_matches(['b', 'B'])
        .trim_end()
        .parse::<u64>()
        .is_ok();
    if size == u64::MAX && !in_bytes {
        return Err(invalid(key, format!("`{s}` is too large")));
    }
    Ok(size)
}

/// `"5m"`, `"24h"`, `"30s"`, `"500ms"`, `"1h30m"`, `"2d"`, read by `humantime` (which also takes
/// `"1h 30m"`, `"1.5h"`, `"5min"`, `"1w"` and a bare `"0"`). A number needs a unit: `"5"` is refused.
pub fn parse_duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    let bad = || invalid(key, format!("`{s}` is not a duration like 30s, 5m, 24h"));
    let t = s.trim();
    // humantime reads a capital `M` as months; `5M` is more likely meant as minutes, so it stays
    // an error as it always was (`months` spelt out is taken). No other humantime unit has an
    // upper-case M.
    if t.contains('M') {
        return Err(bad());
    }
    humantime::parse_duration(t).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_a_hub_mirror() {
        let c = Config::default();
        assert_eq!(c.listen, vec!["0.0.0.0:5000".parse().unwrap()]);
        assert_eq!(c.data_dir, PathBuf::from("./archway-data"));
        assert_eq!(c.upstreams.len(), 1);
        let hub = &c.upstreams[0];
        assert!(hub.default && hub.library_prefix);
        assert_eq!(hub.name, "docker.io");
        assert!(hub.names().any(|n| n == "index.docker.io"));
        c.validate().unwrap();
    }

    #[test]
    fn design_doc_example_parses() {
        let c = Config::from_toml(
            r#"
listen = "0.0.0.0:5000"
data_dir = "/var/lib/archway"
[cache]
max_size = "50GiB"
tag_ttl = "5m"
stale_if_error = "24h"
[[upstream]]
name = "docker.io"
url = "https://registry-1.docker.io"
aliases = ["docker.io", "index.docker.io", "registry-1.docker.io"]
default = true
[[upstream]]
name = "ghcr.io"
url = "https://ghcr.io"
username = "bot"
password = "hunter2"
"#,
        )
        .unwrap();
        assert_eq!(c.cache.max_size, 50 << 30);
        assert_eq!(c.cache.write_buffer, 64 << 20, "the default");
        assert_eq!(c.cache.tag_ttl, Duration::from_secs(300));
        assert_eq!(c.upstreams.len(), 2);
        assert_eq!(c.default_upstream(), Some(0));
        let creds = c.upstreams[1].credentials.as_ref().unwrap();
        assert_eq!(creds.password.expose(), "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"), "secrets never print");
    }

    #[test]
    fn admin_listen() {
        assert_eq!(Config::default().admin_listen, None, "off unless asked for");
        let c = Config::from_toml(r#"admin_listen = "127.0.0.1:9091""#).unwrap();
        assert_eq!(c.admin_listen, Some("127.0.0.1:9091".parse().unwrap()));
        let c = Config::from_toml(r#"admin_listen = "off""#).unwrap();
        assert_eq!(c.admin_listen, None);
        for bad in [
            r#"admin_listen = "localhost""#,
            "listen = \"127.0.0.1:5000\"\nadmin_listen = \"127.0.0.1:5000\"",
        ] {
            let err = Config::from_toml(bad).unwrap_err().to_string();
            assert!(err.contains("admin_listen"), "{bad:?} -> {err}");
        }
        // Port 0 (tests) may appear in both: each bind gets its own port.
        Config::from_toml("listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"").unwrap();
    }

    #[test]
    fn listen_takes_a_list() {
        let c = Config::from_toml(r#"listen = ["127.0.0.1:5000", "127.0.0.1:5001"]"#).unwrap();
        assert_eq!(c.listen.len(), 2);
    }

    #[test]
    fn bad_config_names_the_key() {
        let cases = [
            (r#"listen = "nope""#, "listen"),
            ("[cache]\nmax_size = \"lots\"", "cache.max_size"),
            ("[cache]\ntag_ttl = \"5 parsecs\"", "cache.tag_ttl"),
            ("[cache]\nwrite_buffer = \"0\"", "cache.write_buffer"),
            ("[cache]\nwrite_buffer = \"a lot\"", "cache.write_buffer"),
            ("[[upstream]]\nname = \"x\"\nurl = \"ftp://x\"", "upstream[0].url"),
            ("[[upstream]]\nname = \"x\"\nurl = \"http://x/path\"", "upstream[0].url"),
            (
                "[[upstream]]\nname = \"a\"\nurl = \"http://a\"\ndefault = true\n[[upstream]]\nname = \"b\"\nurl = \"http://b\"\ndefault = true",
                "upstream.default",
            ),
            ("[[upstream]]\nname = \"x\"\nurl = \"http://x\"\nusername = \"u\"", "upstream[0].password"),
            ("bogus = 1", "bogus"),
            ("[cache]\nttl = \"5m\"", "ttl"),
            (
                "[[route]]\nmatch = { repository = \"library/[\" }",
                "route[0].match.repository",
            ),
        ];
        for (toml, key) in cases {
            let err = Config::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(key), "{toml:?} -> {err}");
        }
    }

    #[test]
    fn tls_auth_and_insecure_upstreams_parse() {
        let c = Config::from_toml(
            r#"
[tls]
cert_file = "/etc/archway/tls.crt"
key_file = "/etc/archway/tls.key"
[auth]
htpasswd_file = "/etc/archway/htpasswd"
[[upstream]]
name = "lab"
url = "https://registry.lab:5000"
insecure_skip_verify = true
"#,
        )
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert_file, PathBuf::from("/etc/archway/tls.crt"));
        assert_eq!(tls.key_file, PathBuf::from("/etc/archway/tls.key"));
        let auth = c.auth.unwrap();
        assert_eq!(
            auth.htpasswd_file,
            Some(PathBuf::from("/etc/archway/htpasswd"))
        );
        assert_eq!(auth.tokens_file, None);
        assert!(c.upstreams[0].insecure_skip_verify);

        let plain = Config::from_toml("").unwrap();
        assert!(plain.tls.is_none() && plain.auth.is_none());
        assert!(!plain.upstreams[0].insecure_skip_verify);
    }

    #[test]
    fn bad_tls_and_auth_name_the_key() {
        let cases = [
            ("[tls]\nkey_file = \"k.pem\"", "tls.cert_file"),
            ("[tls]\ncert_file = \"c.pem\"", "tls.key_file"),
            ("[tls]\ncert = \"c.pem\"", "cert"),
            ("[auth]", "`auth`"),
            ("[auth]\nhtpasswd = \"h\"", "htpasswd"),
            (
                "[[upstream]]\nname = \"x\"\nurl = \"https://x\"\nca_file = \"ca.pem\"\ninsecure_skip_verify = true",
                "upstream[0].insecure_skip_verify",
            ),
            (
                "[[upstream]]\nname = \"x\"\nurl = \"https://x\"\ninsecure_skip_verify = \"yes\"",
                "insecure_skip_verify",
            ),
        ];
        for (toml, key) in cases {
            let err = Config::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(key), "{toml:?} -> {err}");
        }
    }

    #[test]
    fn write_buffer_is_configurable() {
        let c = Config::from_toml("[cache]\nwrite_buffer = \"16MiB\"").unwrap();
        assert_eq!(c.cache.write_buffer, 16 << 20);
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("k", "1000").unwrap(), 1000);
        assert_eq!(parse_size("k", "2MiB").unwrap(), 2 << 20);
        assert_eq!(parse_size("k", "10GB").unwrap(), 10_000_000_000);
        assert!(parse_size("k", "-1").is_err());
        let sizes: &[(&str, Option<u64>)] = &[
            ("50GiB", Some(50 << 30)),
            ("512MiB", Some(512 << 20)),
            ("16MiB", Some(16 << 20)),
            ("64kib", Some(64 << 10)),
            ("1k", Some(1_000)),
            ("1kb", Some(1_000)),
            ("3m", Some(3_000_000)),
            ("3Mb", Some(3_000_000)),
            ("2g", Some(2_000_000_000)),
            ("2T", Some(2_000_000_000_000)),
            ("2tb", Some(2_000_000_000_000)),
            ("1TiB", Some(1 << 40)),
            // bytesize also takes fractions and the short IEC forms.
            ("1.5GiB", Some(3 << 29)),
            ("4Mi", Some(4 << 20)),
            ("7b", Some(7)),
            ("7B", Some(7)),
            ("10 GB", Some(10_000_000_000)),
            (" 10GB ", Some(10_000_000_000)),
            ("0", Some(0)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551615B", Some(u64::MAX)),
            ("", None),
            ("GB", None),
            ("10 parsecs", None),
            ("10GBs", None),
            ("1e3", None),
            ("0x10", None),
            ("-1GB", None),
            ("18446744073709551616", None),
            ("20000000TB", None),
            ("99999999999999999999GiB", None),
        ];
        for (input, want) in sizes {
            assert_eq!(parse_size("k", input).ok(), *want, "{input:?}");
        }
        assert_eq!(
            parse_duration("k", "1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_duration("k", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert!(parse_duration("k", "5").is_err());
        assert!(parse_duration("k", "m").is_err());
        let secs = Duration::from_secs;
        let durations: &[(&str, Option<Duration>)] = &[
            ("5m", Some(secs(300))),
            ("24h", Some(secs(86_400))),
            ("30s", Some(secs(30))),
            ("2d", Some(secs(172_800))),
            ("1h30m", Some(secs(5400))),
            ("1d12h", Some(secs(129_600))),
            ("0s", Some(Duration::ZERO)),
            (" 10s ", Some(secs(10))),
            // humantime's wider grammar.
            ("1h 30m", Some(secs(5400))),
            ("5min", Some(secs(300))),
            ("1.5h", Some(secs(5400))),
            ("0", Some(Duration::ZERO)),
            ("", None),
            ("5", None),
            ("m", None),
            ("5 parsecs", None),
            ("-5s", None),
            ("5s-", None),
            ("1h30", None),
            // Months in humantime; refused rather than read as 5 months.
            ("5M", None),
            ("1h5M", None),
            ("99999999999999999999s", None),
        ];
        for (input, want) in durations {
            assert_eq!(parse_duration("k", input).ok(), *want, "{input:?}");
        }
    }

    #[test]
    fn upstream_from_url_names_by_host() {
        let u = UpstreamConfig::from_url(None, "http://127.0.0.1:5000").unwrap();
        assert_eq!(u.name, "127.0.0.1:5000");
        assert!(!u.library_prefix);
    }
}
