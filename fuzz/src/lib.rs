//! archway's fuzz targets: one function per target, each taking arbitrary bytes. A target panics
//! only when archway panics or breaks one of the invariants checked here; `src/bin/<target>.rs`
//! hands each function to AFL++ (`afl::fuzz!`), and the tests in `src/seeds.rs` replay the seeds and the
//! saved crash inputs through the same functions (`cargo test --lib` here; plain `cargo build`
//! cannot link the binaries, which need AFL++'s runtime: build them with `cargo afl build`).
//!
//! Input shapes (so that the seeds are the real thing, copied from captures and fixtures):
//!
//! | target | input |
//! |---|---|
//! | `path_query` | a request line `METHOD target [HTTP/1.1]`, then optionally a Host value |
//! | `accept_user_agent` | header lines `Name: value` (Accept, User-Agent, X-Meta-Platform) |
//! | `platform` | platform strings, one a line |
//! | `image_index` | an image index or manifest list (JSON) |
//! | `manifest` | a manifest (JSON); a first line that is a header value is also a Content-Type |
//! | `www_authenticate` | `WWW-Authenticate` values, one a line; the whole input is also a token response |
//! | `range` | a blob size line, then a `Range` value |
//! | `config` | a TOML config file |
//! | `zstd_layer` | a zstd stream (a layer), decompressed within bounds |

use std::time::Instant;

use archway::api::{self, ByteRange, Endpoint};
use archway::byte_ranges::{self, Multipart, RangeAnswer};
use archway::config::{Config, UpstreamConfig};
use archway::fuzzing::{self as auth, Challenge};
use archway::image_index::{ImageIndex, SelectError};
use archway::media_type::{self, AcceptSet};
use archway::platform::{self, Matcher, Platform, WindowsMatch, WindowsVersion};
use archway::{conversion, manifest, upstream_choice};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// A fuzz target: panics on a failure.
pub type Target = fn(&[u8]);

/// Every target, by name: what `fuzz/run` builds and runs.
pub const TARGETS: &[(&str, Target)] = &[
    ("path_query", path_query),
    ("accept_user_agent", accept_user_agent),
    ("platform", platform),
    ("image_index", image_index),
    ("manifest", manifest),
    ("www_authenticate", www_authenticate),
    ("range", range),
    ("config", config),
    ("via", via),
    ("zstd_layer", zstd_layer),
];

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Header lines `Name: value`; lines that are not headers are skipped.
fn headers(text: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in text.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map
}

/// Every line of `text` as the value of one `name` header, when it is a valid header value.
fn header_lines(name: HeaderName, text: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in text.lines() {
        if let Ok(v) = HeaderValue::from_str(line) {
            map.append(name.clone(), v);
        }
    }
    map
}

/// A duration that a deadline is made of (`Instant::now() + d`) must not overflow it.
fn assert_deadline_ok(d: std::time::Duration, what: &str) {
    assert!(
        Instant::now().checked_add(d).is_some(),
        "{what} = {d:?} overflows a deadline"
    );
}

// === path_query ===

fn upstreams() -> Vec<UpstreamConfig> {
    let mut hub = UpstreamConfig::from_url(Some("docker.io"), "https://registry-1.docker.io")
        .expect("valid upstream");
    hub.default = true;
    let ghcr = UpstreamConfig::from_url(Some("ghcr.io"), "https://ghcr.io").expect("valid");
    let local = UpstreamConfig::from_url(None, "http://127.0.0.1:5000").expect("valid");
    vec![hub, ghcr, local]
}

fn check_repository_name(name: &str) {
    assert!(!name.is_empty(), "empty repository name");
    assert!(!name.contains(".."), "`..` in repository name {name:?}");
    assert!(!name.contains('%'), "`%` in repository name {name:?}");
    assert!(
        name.split('/').all(|c| !c.is_empty()),
        "empty component in repository name {name:?}"
    );
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/-".contains(&b)),
        "unexpected character in repository name {name:?}"
    );
}

/// `api::parse` on the path, `ns_param` and `passthrough_query` on the query, then
/// `upstream_choice::resolve` as the proxy does, with and without a default upstream.
pub fn path_query(data: &[u8]) {
    let text = text(data);
    let mut lines = text.lines();
    let request_line = lines.next().unwrap_or("");
    let host = lines.next();
    let mut words = request_line.split(' ');
    let method = words.next().unwrap_or("");
    let target = words.next().unwrap_or("");
    let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
    let ups = upstreams();

    // The raw target as it is, and (when it is a valid URI) split the way hyper splits it.
    let (raw_path, raw_query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut splits = vec![(raw_path.to_owned(), raw_query.map(str::to_owned))];
    if let Ok(uri) = target.parse::<http::Uri>() {
        splits.push((uri.path().to_owned(), uri.query().map(str::to_owned)));
    }
    for (path, query) in &splits {
        let query = query.as_deref();
        let ns = api::ns_param(query);
        if let Some(ns) = ns {
            assert!(!ns.is_empty() && !ns.contains('&'), "ns {ns:?}");
        }
        for allowed in [&["n", "last"][..], &["artifactType"][..]] {
            let q = api::passthrough_query(query, allowed);
            if !q.is_empty() {
                let q = q.strip_prefix('?').expect("a query starts with `?`");
                assert!(!q.contains('#'), "fragment forwarded: {q:?}");
                for kv in q.split('&') {
                    let key = kv.split('=').next().unwrap_or("");
                    assert!(allowed.contains(&key), "{key:?} forwarded");
                }
            }
        }
        let Ok(endpoint) = api::parse(&method, path) else {
            continue;
        };
        assert!(
            method == Method::GET || method == Method::HEAD,
            "{method} accepted"
        );
        let _ = endpoint.kind();
        let Endpoint::Repository { name, .. } = &endpoint else {
            assert!(path == "/v2/" || path == "/v2", "ping at {path:?}");
            continue;
        };
        // The name stays raw (routing decides which prefix names an upstream), but it is the
        // path's own text.
        assert!(!name.is_empty(), "empty raw name");
        assert!(
            path.strip_prefix("/v2/")
                .is_some_and(|rest| rest.starts_with(name.as_str())),
            "name {name:?} is not from {path:?}"
        );
        for default in [Some(0), None] {
            for h in [host, None] {
                let Ok(t) = upstream_choice::resolve(&ups, default, name, ns, h) else {
                    continue;
                };
                assert!(t.upstream < ups.len(), "upstream #{}", t.upstream);
                check_repository_name(t.repository.as_str());
            }
        }
    }
}

// === accept_user_agent ===

const MEDIA_TYPES: &[&str] = &[
    media_type::OCI_INDEX,
    media_type::OCI_MANIFEST,
    media_type::DOCKER_MANIFEST,
    media_type::DOCKER_MANIFEST_LIST,
    media_type::DOCKER_SCHEMA1,
    media_type::DOCKER_SCHEMA1_SIGNED,
];

fn check_hint(p: &Platform) {
    assert_eq!(p.clone().normalize(), *p, "hint not normalised");
    // A hint merged with a route agrees with both where they agree.
    for route in ["linux/arm/v6", "linux/amd64", "windows/amd64:10.0.17763"] {
        let route = Platform::parse(route).expect("valid route platform");
        let merged = platform::combine(p, Some(&route));
        assert_eq!(merged.os, p.os);
        assert_eq!(merged.architecture, p.architecture);
    }
    assert_eq!(platform::combine(p, None), *p);
}

/// `AcceptSet::from_headers` and `accepts`, `platform_from_user_agent` on every User-Agent (and
/// the whole input), `platform_from_meta_header` on every X-Meta-Platform, `combine`.
pub fn accept_user_agent(data: &[u8]) {
    let text = text(data);
    let map = headers(&text);
    let accept = AcceptSet::from_headers(&map);
    assert_eq!(
        accept.is_present(),
        map.get_all(http::header::ACCEPT)
            .iter()
            .any(|v| v.to_str().is_ok()),
        "is_present"
    );
    let mut seen = std::collections::HashSet::new();
    for t in accept.media_types() {
        assert!(!t.is_empty() && t != "*/*", "listed {t:?}");
        assert_eq!(t.trim(), t, "untrimmed {t:?}");
        assert!(!t.contains(',') && !t.contains(';'), "unsplit {t:?}");
        assert_eq!(t.to_ascii_lowercase(), *t, "not lower-cased: {t:?}");
        assert!(seen.insert(t), "listed twice: {t:?}");
        assert!(accept.accepts(t) && accept.accepts(&t.to_ascii_uppercase()));
    }
    for t in MEDIA_TYPES {
        let listed = accept.media_types().iter().any(|m| m == t);
        assert_eq!(
            accept.accepts(t),
            accept.accepts_anything() || listed,
            "{t}"
        );
    }
    // Also every line as a whole Accept line.
    let _ = AcceptSet::from_lines(text.lines());

    let user_agents = map
        .get_all(http::header::USER_AGENT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .chain(std::iter::once(text.as_ref()));
    for ua in user_agents {
        if let Some(p) = platform::platform_from_user_agent(ua) {
            assert!(
                p.variant.is_none() || p.architecture == "arm",
                "{p:?} from {ua:?}"
            );
            assert!(p.os_version.is_none() && p.os_features.is_empty(), "{p:?}");
            check_hint(&p);
        }
    }
    for v in map.get_all("x-meta-platform") {
        let Ok(v) = v.to_str() else { continue };
        if let Ok(p) = platform::platform_from_meta_header(v) {
            check_hint(&p);
        }
    }
}

// === platform ===

fn check_platform(p: &Platform) {
    assert_eq!(
        p.clone().normalize(),
        *p,
        "parse gives a normalised platform"
    );
    assert!(!p.os.is_empty() && !p.architecture.is_empty(), "{p:?}");
    // The Display form parses back (containerd's FormatAll).
    let shown = p.to_string();
    let again = Platform::parse(&shown)
        .unwrap_or_else(|e| panic!("{p:?} shows as {shown:?}, which does not parse: {e}"));
    assert_eq!(again, *p, "{shown:?} parses back differently");
    for mode in [WindowsMatch::Process, WindowsMatch::Hyperv] {
        let only = Matcher::only(p, mode);
        assert_eq!(
            only.fallbacks().first(),
            Some(p),
            "fallback 0 is the platform"
        );
        let rank = only.rank(p).expect("a platform runs itself");
        assert_eq!(rank.fallback(), 0);
        assert!(Matcher::strict(p, mode).matches(p));
    }
}

/// `Platform::parse` (each line), normalisation, `Display` round trip, `Matcher` (each line
/// against each other, both Windows modes), `WindowsVersion::parse`.
pub fn platform(data: &[u8]) {
    let text = text(data);
    let lines: Vec<&str> = text.lines().take(8).collect();
    let parsed: Vec<Platform> = lines
        .iter()
        .filter_map(|l| Platform::parse(l).ok())
        .collect();
    for line in &lines {
        if let Some(v) = WindowsVersion::parse(line) {
            let _ = v.release_name();
        }
    }
    for p in &parsed {
        check_platform(p);
    }
    // Candidates as an index writes them: not normalised, any text.
    let raw: Vec<Platform> = lines
        .iter()
        .map(|l| {
            let mut parts = l.split('/');
            Platform {
                os: parts.next().unwrap_or("").to_owned(),
                architecture: parts.next().unwrap_or("").to_owned(),
                variant: parts.next().map(str::to_owned),
                os_version: parts.next().map(str::to_owned),
                os_features: parts.map(str::to_owned).collect(),
            }
        })
        .collect();
    for wanted in &parsed {
        for mode in [WindowsMatch::Process, WindowsMatch::Hyperv] {
            let m = Matcher::only(wanted, mode);
            for c in parsed.iter().chain(&raw) {
                let rank = m.rank(c);
                assert_eq!(rank.is_some(), m.matches(c));
                if let Some(r) = rank {
                    assert!(r.fallback() < m.fallbacks().len());
                }
            }
        }
    }
}

// === image_index ===

fn wanted_platforms() -> Vec<Platform> {
    [
        "linux/amd64",
        "linux/arm64/v8",
        "linux/arm/v7",
        "windows/amd64:10.0.17763",
    ]
    .iter()
    .map(|s| Platform::parse(s).expect("valid platform"))
    .collect()
}

/// `ImageIndex::parse`, then `select` for linux/amd64, linux/arm64/v8, linux/arm/v7 and
/// windows/amd64:10.0.17763, in both Windows modes.
pub fn image_index(data: &[u8]) {
    let Ok(index) = ImageIndex::parse(data) else {
        return;
    };
    let offered = index.offered();
    for (i, p) in offered.iter().enumerate() {
        assert!(!offered[..i].contains(p), "offered twice: {p:?}");
    }
    for wanted in wanted_platforms() {
        for mode in [WindowsMatch::Process, WindowsMatch::Hyperv] {
            let matcher = Matcher::only(&wanted, mode);
            let candidates = || index.entries.iter().filter(|e| e.skip_reason().is_none());
            match index.select(&wanted, mode) {
                Ok(sel) => {
                    let entry = index
                        .entries
                        .get(sel.position)
                        .expect("the position is in the index");
                    assert_eq!(entry.descriptor, sel.child, "the child is the index's own");
                    assert!(entry.skip_reason().is_none(), "a skipped entry was chosen");
                    match &sel.child.platform {
                        Some(p) => assert!(matcher.matches(p), "{p:?} cannot run {wanted:?}"),
                        None => assert!(
                            !candidates()
                                .filter_map(|e| e.descriptor.platform.as_ref())
                                .any(|p| matcher.matches(p)),
                            "a platform-less child chosen over a matching one"
                        ),
                    }
                    assert!(!sel.reason.is_empty());
                }
                Err(SelectError::NoMatch { offered: o, .. }) => {
                    assert_eq!(o, offered);
                    assert!(
                        !candidates().any(|e| match &e.descriptor.platform {
                            Some(p) => matcher.matches(p),
                            None => true,
                        }),
                        "no match although an entry fits {wanted:?}"
                    );
                }
                Err(e) => panic!("select of a parsed index failed: {e}"),
            }
        }
    }
}

// === manifest ===

/// `convert_oci_to_docker` and `media_type_of` (no Content-Type, generic ones, and the first
/// line when it is a header value).
pub fn manifest(data: &[u8]) {
    if let Ok(out) = conversion::convert_oci_to_docker(data) {
        let m: conversion::Schema2Manifest =
            serde_json::from_slice(&out).expect("the converted manifest is schema2 JSON");
        assert_eq!(m.schema_version, 2);
        assert_eq!(m.media_type, media_type::DOCKER_MANIFEST);
        for d in std::iter::once(&m.config).chain(&m.layers) {
            assert!(
                d.digest.parse::<archway::digest::Digest>().is_ok(),
                "digest {:?}",
                d.digest
            );
        }
        assert_eq!(
            conversion::convert_oci_to_docker(data).ok().as_ref(),
            Some(&out),
            "conversion is deterministic"
        );
    }
    // zstd layers replaced by tars: the rewrite keeps JSON, leaves no zstd type where it put a
    // tar, and is deterministic.
    if let Ok(Some(plan)) = archway::layer_plan::zstd_layers(data, archway::route_policy::ZstdReads::Neither) {
        let converted: Vec<archway::layer_plan::ConvertedLayer> = plan
            .layers
            .iter()
            .map(|l| archway::layer_plan::ConvertedLayer {
                position: l.position,
                digest: archway::digest::Digest::sha256_of(l.digest.to_string().as_bytes()),
                size: l.size.wrapping_mul(3),
            })
            .collect();
        if let Ok(out) = archway::layer_plan::rewrite(data, &converted) {
            let v: serde_json::Value = serde_json::from_slice(&out).expect("rewritten JSON");
            for c in &converted {
                let t = v["layers"][c.position - 1]["mediaType"].as_str().unwrap_or("");
                assert!(!t.contains("zstd"), "layer {} still {t}", c.position);
            }
            assert_eq!(archway::layer_plan::rewrite(data, &converted).ok(), Some(out));
        }
    }
    let first_line = data.split(|b| *b == b'\n').next().unwrap_or_default();
    let first_line = std::str::from_utf8(first_line)
        .ok()
        .filter(|l| HeaderValue::from_str(l).is_ok());
    for ct in [
        None,
        Some(""),
        Some("application/json"),
        Some("text/plain"),
        first_line,
    ] {
        let t = manifest::media_type_of(ct, data);
        assert!(
            HeaderValue::from_str(&t).is_ok(),
            "media type {t:?} is not a header value"
        );
    }
    let body = data.splitn(2, |b| *b == b'\n').nth(1).unwrap_or_default();
    let t = manifest::media_type_of(first_line, body);
    assert!(HeaderValue::from_str(&t).is_ok(), "{t:?}");
}

// === zstd_layer ===

/// The bounds the fuzzer decompresses within: small, so that output past them is reached.
const FUZZ_BOUNDS: archway::unzstd::Bounds = archway::unzstd::Bounds {
    max_output: 1 << 20,
    max_ratio: 1000,
};

/// A zstd stream through the converter's decoder: never a panic, never more than the bounds
/// allow, and whatever it makes is what libzstd's reference decoder makes of the same bytes.
pub fn zstd_layer(data: &[u8]) {
    match archway::unzstd::decompress_slice(data, FUZZ_BOUNDS) {
        Ok(out) => {
            assert!(out.len() as u64 <= FUZZ_BOUNDS.max_output, "{} bytes", out.len());
            let reference = zstd::decode_all(data).expect("the reference decoder agrees it is zstd");
            assert!(out == reference, "the same bytes as the reference decoder");
        }
        Err(e) => {
            // Every refusal is a sentence a client can be shown.
            assert!(!e.to_string().is_empty());
        }
    }
}

// === www_authenticate ===

/// `select_challenge` over the lines as `WWW-Authenticate` values (each line alone, and all
/// together), `token_url` on what it gives, and `parse_token_response` on the whole input.
pub fn www_authenticate(data: &[u8]) {
    let text = text(data);
    let all = header_lines(http::header::WWW_AUTHENTICATE, &text);
    let mut maps = vec![all];
    for line in text.lines().take(4) {
        maps.push(header_lines(http::header::WWW_AUTHENTICATE, line));
    }
    for map in &maps {
        match auth::select_challenge(map) {
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                assert!(!realm.is_empty(), "empty realm");
                assert!(service.as_deref() != Some(""), "empty service");
                assert!(scope.as_deref() != Some(""), "empty scope");
                let scope = scope.unwrap_or_else(|| "repository:library/alpine:pull".into());
                let url = auth::token_url(&realm, service.as_deref(), &scope);
                assert!(url.starts_with(realm.as_str()));
            }
            Some(Challenge::Basic) | None => {}
        }
    }
    if let Ok(t) = auth::parse_token_response(data) {
        assert!(!t.token.expose().is_empty(), "empty token");
        assert!(auth::expiry_margin(t.lifetime) <= t.lifetime);
        // The token cache keeps it until `now + lifetime - margin`.
        assert_deadline_ok(t.lifetime, "the token lifetime");
    }
}

// === range ===

/// `parse_range` and `byte_ranges::parse` against the size on the first line (and 0, 1,
/// u64::MAX), the second line the Range value.
pub fn range(data: &[u8]) {
    let text = text(data);
    let (size, header) = match text.split_once('\n') {
        Some((size, header)) => (size.trim().parse::<u64>().ok(), header),
        None => (None, text.as_ref()),
    };
    for size in [size, Some(0), Some(1), Some(100), Some(u64::MAX)]
        .into_iter()
        .flatten()
    {
        assert_eq!(api::parse_range(None, size), ByteRange::Whole);
        match api::parse_range(Some(header), size) {
            ByteRange::Part(a, b) => {
                assert!(
                    a <= b && b < size,
                    "{header:?} of {size} bytes gives {a}-{b}"
                );
            }
            ByteRange::Whole | ByteRange::Unsatisfiable => {}
        }
        // A list of ranges: each inside the blob, none overlapping, never more than the cap,
        // and the multipart framing's length adds up.
        for cap in [1usize, 4, 1024] {
            let ranges = match byte_ranges::parse(Some(header), size, cap) {
                RangeAnswer::Single(a, b) => vec![(a, b)],
                RangeAnswer::Multi(r) => r,
                RangeAnswer::Whole | RangeAnswer::Unsatisfiable => continue,
            };
            assert!(
                ranges.len() <= cap,
                "{header:?}: {} ranges, cap {cap}",
                ranges.len()
            );
            let mut sorted = ranges.clone();
            sorted.sort_unstable();
            for (a, b) in &sorted {
                assert!(
                    a <= b && *b < size,
                    "{header:?} of {size} bytes gives {a}-{b}"
                );
            }
            for w in sorted.windows(2) {
                assert!(w[0].1 < w[1].0, "{header:?}: overlapping {w:?}");
            }
            if size < u64::MAX / 2 {
                let m = Multipart::new("b".into(), &ranges, size);
                let data: u64 = ranges.iter().map(|(a, b)| b - a + 1).sum();
                let framing: u64 =
                    m.heads.iter().map(|h| h.len() as u64).sum::<u64>() + m.tail.len() as u64;
                assert_eq!(m.content_length, data + framing);
            }
        }
    }
}

// === config ===

/// `Config::from_toml`; a config it accepts validates again, and every duration in it can be
/// added to now (timeouts and remembered misses are deadlines); parent URLs hold no credentials
/// and, with parents, upstream names go into `?ns=` as they are.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::from_toml(text) else {
        return;
    };
    cfg.validate().expect("an accepted config validates");
    assert!(cfg
        .default_upstream()
        .is_none_or(|i| i < cfg.upstreams.len()));
    let c = &cfg.cache;
    for (d, what) in [
        (c.tag_ttl, "cache.tag_ttl"),
        (c.stale_if_error, "cache.stale_if_error"),
        (c.negative_ttl, "cache.negative_ttl"),
        (c.scrub_interval, "cache.scrub_interval"),
        (cfg.limits.header_read_timeout, "limits.header_read_timeout"),
        (cfg.limits.idle_timeout, "limits.idle_timeout"),
        (cfg.limits.stall_timeout, "limits.stall_timeout"),
    ] {
        assert_deadline_ok(d, what);
    }
    if let Some(s) = &cfg.storage {
        assert_deadline_ok(s.s3_timeout, "storage.s3_timeout");
        assert_deadline_ok(s.s3_upload_timeout, "storage.s3_upload_timeout");
        assert!(!s.s3_timeout.is_zero() && s.s3_max_uploads > 0);
        // Keys are built as `<prefix>blobs/...`: a prefix is empty or a whole path step.
        assert!(s.s3_prefix.is_empty() || s.s3_prefix.ends_with('/'));
        assert!(!s.s3_bucket.is_empty() && !s.s3_bucket.contains('/'));
    }
    let p = &cfg.parent;
    for (d, what) in [
        (p.down_for, "parent_down_for"),
        (p.connect_timeout, "parent_connect_timeout"),
        (p.read_timeout, "parent_read_timeout"),
    ] {
        assert_deadline_ok(d, what);
    }
    for u in &p.urls {
        // The URL is a log field and a metrics label: never credentials in it.
        assert!(
            u.authority().is_some_and(|a| !a.as_str().contains('@')),
            "a parent URL with credentials or no host"
        );
    }
    assert!(cfg.limits.max_streams_per_connection > 0 && cfg.limits.max_requests != Some(0));
    for u in &cfg.upstreams {
        assert!(u.names().all(|n| !n.is_empty()), "an empty upstream name");
        // Credentials have their own keys; user-info in the URL is refused (issue 17).
        assert!(
            u.url.authority().is_some_and(|a| !a.as_str().contains('@')),
            "an upstream URL with user-info"
        );
        // Sent to a parent as ?ns=<name> unencoded.
        assert!(
            p.urls.is_empty() || !u.name.contains(['&', '#', '?', '%', '=', ' ']),
            "an upstream name that cannot be a parent's ns="
        );
        for d in [u.connect_timeout, u.read_timeout]
            .into_iter()
            .chain(u.tag_ttl)
        {
            assert_deadline_ok(d, "an upstream timeout");
        }
    }
}

#[cfg(test)]
mod seeds;

/// `Via` headers from a client or a chain of archways (issue 17: loops). One header value a line.
/// The archway hops carried on are at most 8, each `<protocol> archway-<id>`, carried the same
/// when carried again; a request carrying this archway's own `Via` is always its own.
pub fn via(data: &[u8]) {
    use archway::via::{incoming_hops, Via};
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n').take(16) {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(http::header::VIA, v);
        }
    }
    if let Some(hops) = incoming_hops(&headers) {
        let text = hops.to_str().expect("carried hops are visible ASCII");
        let entries: Vec<&str> = text.split(", ").collect();
        assert!(entries.len() <= 8, "{} hops carried", entries.len());
        for e in &entries {
            let (protocol, by) = e.split_once(' ').expect("protocol and received-by");
            assert!(!protocol.is_empty() && !by.contains(' '));
            assert!(by.to_ascii_lowercase().starts_with("archway-"), "{e}");
        }
        let mut again = HeaderMap::new();
        again.insert(http::header::VIA, hops.clone());
        assert_eq!(
            incoming_hops(&again).as_ref(),
            Some(&hops),
            "carrying is stable"
        );
    }
    let me = Via::new();
    headers.append(http::header::VIA, me.outgoing());
    assert!(me.is_own_request(&headers), "its own Via not recognised");
}
