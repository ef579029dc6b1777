//! The TOML file: its shape (unknown keys refused), and how each value becomes config, naming
//! the key when it can't.

use super::error::{invalid, ConfigError};
use super::file_fleet::{credentials, read_password, RawFleet, RawParent, RawStorage};
use super::model::*;
use super::one_or_many::OneOrMany;
use super::values::{
    parse_admin_listen, parse_duration, parse_listen, parse_size, parse_upstream_url,
    refuse_upstream_user_info,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::key_file::read_to_string("--config", path).map_err(ConfigError::Read)?;
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
        if let Some(w) = raw.admin_warm {
            cfg.admin_warm = w;
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
            if let Some(v) = c.answer_memo {
                k.answer_memo = parse_size("cache.answer_memo", &v)?;
            }
            if let Some(v) = c.foreign_memo {
                k.foreign_memo = parse_size("cache.foreign_memo", &v)?;
            }
            if let Some(v) = c.selection_memo {
                k.selection_memo = parse_size("cache.selection_memo", &v)?;
            }
            if let Some(v) = c.referrers_memory {
                k.referrers_memory = parse_size("cache.referrers_memory", &v)?;
            }
            if let Some(v) = c.access_memory {
                k.access_memory = parse_size("cache.access_memory", &v)?;
            }
            if let Some(v) = c.tag_memory {
                k.tag_memory = parse_size("cache.tag_memory", &v)?;
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
            if let Some(v) = c.max_blob_size {
                k.max_blob_size = Some(parse_size("cache.max_blob_size", &v)?);
            }
            if let Some(v) = c.min_free_space {
                k.min_free_space = parse_size("cache.min_free_space", &v)?;
            }
            if let Some(v) = c.scrub_interval {
                k.scrub_interval = parse_duration("cache.scrub_interval", &v)?;
            }
            if let Some(v) = c.scrub_rate {
                k.scrub_rate = parse_size("cache.scrub_rate", &v)?;
            }
            if let Some(v) = c.verify_reads {
                k.verify_reads = v;
            }
            if let Some(v) = c.verify_reads_ttl {
                k.verify_reads_ttl = parse_duration("cache.verify_reads_ttl", &v)?;
            }
            if let Some(v) = c.cold_ranges {
                k.cold_ranges = ColdRanges::parse("cache.cold_ranges", &v)?;
            }
            if let Some(v) = c.sendfile {
                k.sendfile = v;
            }
            if let Some(v) = c.cold_ranges_relay_max {
                k.cold_ranges_relay_max = parse_size("cache.cold_ranges_relay_max", &v)?;
            }
            if let Some(v) = c.refresh_ahead {
                k.refresh_ahead = v;
            }
            if let Some(v) = c.refresh_ahead_concurrency {
                if v == 0 {
                    return Err(invalid(
                        "cache.refresh_ahead_concurrency",
                        "must be at least 1 (set cache.refresh_ahead = false to turn it off)",
                    ));
                }
                k.refresh_ahead_concurrency = v;
            }
            if let Some(v) = c.refresh_ahead_window {
                let w = parse_duration("cache.refresh_ahead_window", &v)?;
                if w.is_zero() {
                    return Err(invalid(
                        "cache.refresh_ahead_window",
                        "must be more than 0 (set cache.refresh_ahead = false to turn it off)",
                    ));
                }
                k.refresh_ahead_window = Some(w);
            }
            if let Some(v) = c.max_pins {
                k.max_pins =
                    usize::try_from(v).map_err(|_| invalid("cache.max_pins", "too large"))?;
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
        if let Some(l) = raw.limits {
            if let Some(v) = l.header_read_timeout {
                cfg.limits.header_read_timeout = parse_duration("limits.header_read_timeout", &v)?;
            }
            if let Some(v) = l.idle_timeout {
                cfg.limits.idle_timeout = parse_duration("limits.idle_timeout", &v)?;
            }
            cfg.limits.max_connections = l.max_connections;
            if let Some(v) = l.max_ranges {
                cfg.limits.max_ranges = v;
            }
            if let Some(v) = l.stall_timeout {
                cfg.limits.stall_timeout = parse_duration("limits.stall_timeout", &v)?;
            }
            if let Some(v) = l.max_streams_per_connection {
                cfg.limits.max_streams_per_connection = v;
            }
            if l.max_requests.is_some() {
                cfg.limits.max_requests = l.max_requests;
            }
        }
        if let Some(c) = raw.conversion {
            let k = &mut cfg.conversion;
            if let Some(v) = c.max_concurrent {
                if v == 0 {
                    return Err(invalid("conversion.max_concurrent", "must be at least 1"));
                }
                k.max_concurrent = v;
            }
            if let Some(v) = c.max_layer_size {
                k.max_layer_size = parse_size("conversion.max_layer_size", &v)?;
            }
            if let Some(v) = c.max_output {
                k.max_output = parse_size("conversion.max_output", &v)?;
            }
            if let Some(v) = c.max_ratio {
                if v == 0 {
                    return Err(invalid("conversion.max_ratio", "must be at least 1"));
                }
                k.max_ratio = v;
            }
            if let Some(v) = c.max_wait {
                k.max_wait = parse_duration("conversion.max_wait", &v)?;
            }
        }
        if let Some(a) = raw.auth {
            let mut auth = AuthConfig {
                htpasswd_file: a.htpasswd_file,
                tokens_file: a.tokens_file,
                ..AuthConfig::default()
            };
            if let Some(v) = a.failure_burst {
                auth.failure_burst = v;
            }
            if let Some(v) = a.failure_refill {
                auth.failure_refill = parse_duration("auth.failure_refill", &v)?;
            }
            if let Some(v) = a.tracked_clients {
                auth.tracked_clients = v;
            }
            cfg.auth = Some(auth);
        }
        if let Some(s) = raw.storage {
            cfg.storage = Some(s.into_config()?);
        }
        cfg.parent = RawParent {
            parent: raw.parent,
            parent_username: raw.parent_username,
            parent_password: raw.parent_password,
            parent_password_file: raw.parent_password_file,
            parent_password_env: raw.parent_password_env,
            parent_token: raw.parent_token,
            parent_token_file: raw.parent_token_file,
            parent_token_env: raw.parent_token_env,
            parent_ca_file: raw.parent_ca_file,
            parent_down_for: raw.parent_down_for,
            parent_connect_timeout: raw.parent_connect_timeout,
            parent_read_timeout: raw.parent_read_timeout,
            parent_fallback: raw.parent_fallback,
        }
        .into_config()?;
        if let Some(f) = raw.fleet {
            cfg.fleet = Some(f.into_config()?);
        }
        cfg.pins = raw
            .pin
            .into_iter()
            .enumerate()
            .map(|(i, p)| p.into_config(i))
            .collect::<Result<_, _>>()?;
        if let Some(v) = raw.admin_pins {
            cfg.admin_pins = v;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<OneOrMany>,
    admin_listen: Option<String>,
    admin_warm: Option<bool>,
    data_dir: Option<PathBuf>,
    log_format: Option<String>,
    cache: Option<RawCache>,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    #[serde(default)]
    route: Vec<RawRoute>,
    tls: Option<RawTls>,
    auth: Option<RawAuth>,
    limits: Option<RawLimits>,
    storage: Option<RawStorage>,
    parent: Option<OneOrMany>,
    parent_username: Option<String>,
    parent_password: Option<String>,
    parent_password_file: Option<PathBuf>,
    parent_password_env: Option<String>,
    parent_token: Option<String>,
    parent_token_file: Option<PathBuf>,
    parent_token_env: Option<String>,
    parent_ca_file: Option<PathBuf>,
    parent_down_for: Option<String>,
    parent_connect_timeout: Option<String>,
    parent_read_timeout: Option<String>,
    parent_fallback: Option<String>,
    fleet: Option<RawFleet>,
    conversion: Option<RawConversion>,
    admin_pins: Option<bool>,
    #[serde(default)]
    pin: Vec<RawPin>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPin {
    image: Option<String>,
    platforms: Option<Vec<String>>,
}

impl RawPin {
    fn into_config(self, i: usize) -> Result<PinConfig, ConfigError> {
        let key = |k: &str| format!("pin[{i}].{k}");
        let image = self
            .image
            .ok_or_else(|| invalid(key("image"), "is required in [[pin]]"))?;
        let parsed = crate::image_ref::ImageRef::parse(&image)
            .map_err(|e| invalid(key("image"), e.to_string()))?;
        let platforms = self
            .platforms
            .unwrap_or_default()
            .iter()
            .map(|p| {
                crate::platform::Platform::parse(p)
                    .map_err(|e| invalid(key("platforms"), format!("`{p}`: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(PinConfig {
            image,
            parsed,
            platforms,
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConversion {
    max_concurrent: Option<u32>,
    max_layer_size: Option<String>,
    max_output: Option<String>,
    max_ratio: Option<u64>,
    max_wait: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<u32>,
    max_ranges: Option<usize>,
    stall_timeout: Option<String>,
    max_streams_per_connection: Option<u32>,
    max_requests: Option<u32>,
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
    failure_burst: Option<u32>,
    failure_refill: Option<String>,
    tracked_clients: Option<usize>,
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
    layers: Option<String>,
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
        let layers = match self.layers.as_deref() {
            None => crate::route_policy::LayersMode::Auto,
            Some(l) => crate::route_policy::LayersMode::parse(l).ok_or_else(|| {
                invalid(
                    key("layers"),
                    format!("`{l}` is not one of auto, compatible, as-is"),
                )
            })?,
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
            layers,
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    max_size: Option<String>,
    memory_size: Option<String>,
    write_buffer: Option<String>,
    answer_memo: Option<String>,
    referrers_memory: Option<String>,
    selection_memo: Option<String>,
    foreign_memo: Option<String>,
    tag_memory: Option<String>,
    access_memory: Option<String>,
    tag_ttl: Option<String>,
    stale_if_error: Option<String>,
    negative_ttl: Option<String>,
    max_blob_size: Option<String>,
    min_free_space: Option<String>,
    scrub_interval: Option<String>,
    /// Bytes per second, as a size (`"20MiB"`).
    scrub_rate: Option<String>,
    verify_reads: Option<bool>,
    verify_reads_ttl: Option<String>,
    cold_ranges: Option<String>,
    sendfile: Option<bool>,
    cold_ranges_relay_max: Option<String>,
    refresh_ahead: Option<bool>,
    refresh_ahead_concurrency: Option<u32>,
    refresh_ahead_window: Option<String>,
    max_pins: Option<u64>,
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
    #[serde(default)]
    redirect_hosts: Vec<String>,
    /// `None`: the Microsoft hosts; `[]`: foreign layers are never fetched.
    foreign_layer_hosts: Option<Vec<String>>,
    visibility: Option<String>,
    clients: Option<Vec<String>>,
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
        let uri = parse_upstream_url(&key("url"), &self.url)?;
        refuse_upstream_user_info(&key("url"), &uri)?;
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
        for h in self.redirect_hosts {
            let host = h.strip_prefix("*.").unwrap_or(&h);
            if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
                return Err(invalid(
                    key("redirect_hosts"),
                    format!("`{h}` is not a host, host:port or *.domain"),
                ));
            }
            u.redirect_hosts.push(h.to_ascii_lowercase());
        }
        if let Some(hosts) = self.foreign_layer_hosts {
            u.foreign_layer_hosts = hosts
                .iter()
                .map(|h| crate::foreign::HostPattern::parse(h))
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(key("foreign_layer_hosts"), e.to_string()))?;
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
        let password = read_password(
            &key("password"),
            self.password,
            self.password_file,
            self.password_env,
        )?;
        u.credentials = credentials(&key("username"), &key("password"), self.username, password)?;
        if let Some(v) = self.visibility {
            u.visibility = Some(crate::access_rule::Visibility::parse(&v).ok_or_else(|| {
                invalid(
                    key("visibility"),
                    format!("`{v}` is neither \"private\" nor \"public\""),
                )
            })?);
        }
        if let Some(clients) = self.clients {
            if let Some(bad) = clients
                .iter()
                .find(|c| c.is_empty() || c.contains(char::is_whitespace) || c.contains(':'))
            {
                return Err(invalid(
                    key("clients"),
                    format!("`{bad}` is not an [auth] user or token name"),
                ));
            }
            u.clients = Some(clients);
        }
        Ok(u)
    }
}
