//! `foreign_layer_hosts` entries and which URLs they allow. Pure.
//!
//! - `mcr.microsoft.com`, `*.microsoft.com`: https on port 443 only;
//! - `scheme://host[:port]` (`http://127.0.0.1:8080`): exactly that scheme, host and port — the
//!   only way to allow plain http, and (being explicit) it also lets the fetch reach that
//!   host:port when it is on loopback or a private network.

use http::Uri;

/// The hosts Windows base images' foreign layers name (`mcr.microsoft.com/v2/…/blobs/…`, older
/// `go.microsoft.com/fwlink/?linkid=…`) and where those answers redirect (`*.data.mcr…`, Azure
/// blob storage).
pub const DEFAULT_FOREIGN_LAYER_HOSTS: [&str; 4] = [
    "mcr.microsoft.com",
    "*.mcr.microsoft.com",
    "go.microsoft.com",
    "*.blob.core.windows.net",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{entry}` is not a host, *.domain or scheme://host:port: {why}")]
pub struct HostPatternError {
    entry: String,
    why: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Exact(String),
    /// `*.domain`: any name under `domain` (not `domain` itself).
    Under(String),
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    https: bool,
    host: Host,
    port: u16,
    /// Written as `scheme://host:port`: an explicit destination.
    explicit: bool,
}

impl HostPattern {
    pub fn parse(entry: &str) -> Result<HostPattern, HostPatternError> {
        let err = |why| HostPatternError {
            entry: entry.to_owned(),
            why,
        };
        let lower = entry.trim().to_ascii_lowercase();
        let (https, rest, explicit) = if let Some(r) = lower.strip_prefix("https://") {
            (true, r, true)
        } else if let Some(r) = lower.strip_prefix("http://") {
            (false, r, true)
        } else if lower.contains("://") {
            return Err(err("only http and https"));
        } else {
            (true, lower.as_str(), false)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) || rest.contains(char::is_whitespace) {
            return Err(err("no path, query or credentials"));
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = match rest.rsplit_once(':') {
            _ if rest.ends_with(']') => (rest, default_port),
            // `[::1]:8080`, `host:8080`; a bare IPv6 literal needs its brackets.
            Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
                if !explicit {
                    return Err(err("a port needs the scheme:// form"));
                }
                (h, p.parse::<u16>().map_err(|_| err("bad port"))?)
            }
            Some(_) => return Err(err("bad host")),
            None => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = match host.strip_prefix("*.") {
            Some(d) if !d.is_empty() && !d.contains('*') => Host::Under(d.to_owned()),
            Some(_) => return Err(err("bad wildcard")),
            None if host.is_empty() || host.contains('*') => return Err(err("bad host")),
            None => Host::Exact(host.to_owned()),
        };
        Ok(HostPattern {
            https,
            host,
            port,
            explicit,
        })
    }

    /// Whether `uri` is allowed by this entry: scheme, host and port.
    pub fn matches(&self, uri: &Uri) -> bool {
        let https = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            _ => return false,
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let host_ok = match &self.host {
            Host::Exact(h) => host == *h,
            Host::Under(d) => host.len() > d.len() + 1 && host.ends_with(&format!(".{d}")),
        };
        https == self.https && port == self.port && host_ok
    }

    /// For an explicit `scheme://host:port` entry: `host:port`, which the upstream's egress
    /// policy then allows even on loopback or a private network (like `redirect_hosts`).
    pub fn explicit_destination(&self) -> Option<String> {
        match (&self.host, self.explicit) {
            (Host::Exact(h), true) => Some(format!("{h}:{}", self.port)),
            _ => None,
        }
    }
}

/// Whether any entry allows `uri`.
pub fn allowed(patterns: &[HostPattern], uri: &Uri) -> bool {
    patterns.iter().any(|p| p.matches(uri))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(entry: &str, url: &str) -> bool {
        HostPattern::parse(entry)
            .unwrap()
            .matches(&url.parse().unwrap())
    }

    #[test]
    fn which_urls_each_entry_allows() {
        let mcr = "https://mcr.microsoft.com/v2/windows/servercore/blobs/sha256:ab";
        for (entry, url, want) in [
            ("mcr.microsoft.com", mcr, true),
            ("MCR.microsoft.com", "https://mcr.MICROSOFT.com./x", true),
            ("mcr.microsoft.com", "http://mcr.microsoft.com/x", false),
            (
                "mcr.microsoft.com",
                "https://mcr.microsoft.com:8443/x",
                false,
            ),
            (
                "mcr.microsoft.com",
                "https://mcr.microsoft.com.evil/x",
                false,
            ),
            ("*.microsoft.com", mcr, true),
            (
                "*.microsoft.com",
                "https://go.microsoft.com/fwlink/?linkid=837858",
                true,
            ),
            ("*.microsoft.com", "https://microsoft.com/x", false),
            ("*.microsoft.com", "https://evilmicrosoft.com/x", false),
            (
                "*.microsoft.com",
                "https://a.microsoft.com.evil.net/x",
                false,
            ),
            (
                "*.blob.core.windows.net",
                "https://x.blob.core.windows.net/c/b",
                true,
            ),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080/layer", true),
            (
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8081/layer",
                false,
            ),
            (
                "http://127.0.0.1:8080",
                "https://127.0.0.1:8080/layer",
                false,
            ),
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/a", true),
            ("https://mirror.lan", "https://mirror.lan/a", true),
            ("http://[::1]:9000", "http://[::1]:9000/a", true),
            ("http://[::1]", "http://[::1]/a", true),
            ("mcr.microsoft.com", "ftp://mcr.microsoft.com/x", false),
        ] {
            assert_eq!(allows(entry, url), want, "{entry} vs {url}");
        }
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in [
            "",
            "*.",
            "*",
            "a.*.com",
            "ftp://host",
            "host:8080",
            "https://host/path",
            "https://user@host",
            "http://host:99999",
            "http://:80",
            "two words",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
        for d in DEFAULT_FOREIGN_LAYER_HOSTS {
            HostPattern::parse(d).unwrap();
        }
    }

    #[test]
    fn only_explicit_entries_widen_the_egress_policy() {
        let p = |e: &str| HostPattern::parse(e).unwrap().explicit_destination();
        assert_eq!(p("http://127.0.0.1:8080"), Some("127.0.0.1:8080".into()));
        assert_eq!(p("https://mirror.lan"), Some("mirror.lan:443".into()));
        assert_eq!(p("mcr.microsoft.com"), None);
        assert_eq!(p("https://*.lan"), None);
    }
}
