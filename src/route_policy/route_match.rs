//! `[[route]]` tables: which platform policy a request gets. First match wins. Pure.

use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum RewriteMode {
    /// Rewrite only when the client cannot take the index it asked for.
    #[default]
    Legacy,
    /// Always answer a tag with the route platform's manifest.
    Always,
    /// Plain pull-through.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum OciForLegacy {
    #[default]
    Convert,
    Reject,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteMatch {
    /// Host header without port, case-insensitive.
    pub host: Option<String>,
    /// The local port the request came in on.
    pub port: Option<u16>,
    pub client_cidr: Option<IpNet>,
    /// Glob over the repository name as asked upstream (`library/*`, `*/windows/*`).
    pub repository: Option<String>,
    /// Substring of the User-Agent.
    pub user_agent: Option<String>,
}

/// What a request looks like to the route table.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts<'a> {
    pub host: Option<&'a str>,
    pub local_port: Option<u16>,
    pub client_ip: Option<IpAddr>,
    pub repository: &'a str,
    pub user_agent: Option<&'a str>,
}

impl RouteMatch {
    pub fn matches(&self, facts: &RequestFacts<'_>) -> bool {
        let host_ok = self.host.as_ref().is_none_or(|want| {
            facts
                .host
                .map(strip_port)
                .is_some_and(|h| h.eq_ignore_ascii_case(want))
        });
        let port_ok = self.port.is_none_or(|p| facts.local_port == Some(p));
        let cidr_ok = self.client_cidr.is_none_or(|net| {
            facts
                .client_ip
                .map(canonical_ip)
                .is_some_and(|ip| net.contains(&ip))
        });
        let repo_ok = self
            .repository
            .as_ref()
            .is_none_or(|g| glob_match(g, facts.repository));
        let ua_ok = self
            .user_agent
            .as_ref()
            .is_none_or(|s| facts.user_agent.is_some_and(|ua| ua.contains(s.as_str())));
        host_ok && port_ok && cidr_ok && repo_ok && ua_ok
    }
}

/// An IPv4 client seen on a dual-stack socket arrives as `::ffff:a.b.c.d`.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [::1]:5000
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// `*` matches any run of characters (including `/`), `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("library/*", "library/alpine", true),
            ("library/*", "org/alpine", false),
            ("*", "a/b/c", true),
            ("*/windows/*", "microsoft/windows/servercore", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("*sigs*", "kubernetes-sigs/kind", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), want, "{p} {t}");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(strip_port("ltsc2019.mirror:5000"), "ltsc2019.mirror");
        assert_eq!(strip_port("ltsc2019.mirror"), "ltsc2019.mirror");
        assert_eq!(strip_port("[::1]:5000"), "::1");
        assert_eq!(strip_port("::1"), "::1");
    }

    #[test]
    fn matching() {
        let facts = RequestFacts {
            host: Some("LTSC2019.mirror.internal:5000"),
            local_port: Some(5019),
            client_ip: Some("::ffff:10.20.3.4".parse().unwrap()),
            repository: "library/alpine",
            user_agent: Some("docker/17.06.2-ee-19 go/go1.8.7 os/windows arch/amd64"),
        };
        let m = |f: &dyn Fn(&mut RouteMatch)| {
            let mut r = RouteMatch::default();
            f(&mut r);
            r.matches(&facts)
        };
        assert!(m(&|_| {}), "an empty match matches everything");
        assert!(m(&|r| r.host = Some("ltsc2019.mirror.internal".into())));
        assert!(!m(&|r| r.host = Some("ltsc2022.mirror.internal".into())));
        assert!(m(&|r| r.port = Some(5019)));
        assert!(!m(&|r| r.port = Some(5000)));
        assert!(m(&|r| r.client_cidr = Some("10.20.0.0/16".parse().unwrap())));
        assert!(!m(
            &|r| r.client_cidr = Some("10.30.0.0/16".parse().unwrap())
        ));
        assert!(m(&|r| r.repository = Some("library/*".into())));
        assert!(m(&|r| r.user_agent = Some("os/windows".into())));
        assert!(!m(&|r| r.user_agent = Some("containerd/".into())));
        assert!(
            !m(&|r| {
                r.port = Some(5019);
                r.user_agent = Some("containerd/".into());
            }),
            "every condition must hold"
        );
    }
}
