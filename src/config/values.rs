//! Reading one value: addresses, sizes (`bytesize`), durations (`humantime`), log formats and
//! upstream URLs, each error naming the key.

use super::error::{invalid, ConfigError};
use std::net::SocketAddr;
use std::time::Duration;

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

/// The longest duration a config value may name: timeouts and remembered misses are deadlines
/// (now + the duration), which overflow (a panic) some 290 billion years out. 100 of humantime's
/// years (365.25 days).
const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// `"5m"`, `"24h"`, `"30s"`, `"500ms"`, `"1h30m"`, `"2d"`, read by `humantime` (which also takes
/// `"1h 30m"`, `"1.5h"`, `"5min"`, `"1w"` and a bare `"0"`). A number needs a unit: `"5"` is refused.
/// At most 100 years (`MAX_DURATION`).
pub fn parse_duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    let bad = || invalid(key, format!("`{s}` is not a duration like 30s, 5m, 24h"));
    let t = s.trim();
    // humantime reads a capital `M` as months; `5M` is more likely meant as minutes, so it stays
    // an error as it always was (`months` spelt out is taken). No other humantime unit has an
    // upper-case M.
    if t.contains('M') {
        return Err(bad());
    }
    let d = humantime::parse_duration(t).map_err(|_| bad())?;
    if d > MAX_DURATION {
        return Err(invalid(
            key,
            format!("`{s}` is too long (at most 100 years)"),
        ));
    }
    Ok(d)
}

/// `parent`'s URLs (one or a list), each like an upstream's: `scheme://host[:port]`.
pub fn parse_parent_urls(key: &str, list: &[String]) -> Result<Vec<http::Uri>, ConfigError> {
    list.iter().map(|u| parse_upstream_url(key, u)).collect()
}

/// An upstream URL: `http(s)://host[:port]`, no path.
pub(crate) fn parse_upstream_url(key: &str, url: &str) -> Result<http::Uri, ConfigError> {
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

/// Whether a URL as written carries user-info (`user[:password]@`) before its host. Read from
/// the text, so even a URL that does not parse is never echoed with a password in it.
pub fn url_has_user_info(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.contains('@')
}

/// An upstream URL must not carry credentials: they would never be sent (an upstream's
/// `username`/`password` are), and the URL is a log field and a metrics label.
pub(crate) fn refuse_upstream_user_info(key: &str, uri: &http::Uri) -> Result<(), ConfigError> {
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(invalid(
            key,
            "must not hold credentials (user:password@); give them as the upstream's `username` \
             and `password` (or `password_file`, `password_env`)",
        ));
    }
    Ok(())
}
