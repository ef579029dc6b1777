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
    pub repository: Option<RepoGlob>,
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
            .is_none_or(|g| g.is_match(facts.repository));
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

/// A `match.repository` glob, compiled once when the config is read. `*` matches any run of
/// characters (including `/`; `**` is the same as `*`), `?` one character, and, from `globset`,
/// `[a-z]` a class, `{a,b}` either alternative, `\\` escapes the next character.
#[derive(Clone)]
pub struct RepoGlob {
    pattern: String,
    matcher: globset::GlobMatcher,
}

impl RepoGlob {
    pub fn new(pattern: &str) -> Result<Self, globset::Error> {
        let glob = globset::GlobBuilder::new(&collapse_stars(pattern))
            .literal_separator(false)
            .backslash_escape(true)
            .build()?;
        Ok(RepoGlob {
            pattern: pattern.to_owned(),
            matcher: glob.compile_matcher(),
        })
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    pub fn is_match(&self, repository: &str) -> bool {
        self.matcher.is_match(repository)
    }
}

/// For globs written in code (tests, defaults); the config goes through [`RepoGlob::new`], which
/// reports a bad glob as a config error.
///
/// # Panics
/// On a pattern that is not a valid glob.
impl From<&str> for RepoGlob {
    fn from(pattern: &str) -> Self {
        RepoGlob::new(pattern).unwrap_or_else(|e| panic!("invalid glob {pattern:?}: {e}"))
    }
}

impl PartialEq for RepoGlob {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl std::fmt::Debug for RepoGlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RepoGlob").field(&self.pattern).finish()
    }
}

/// `**` means "any number of directories" to globset, where `**/x` also matches a bare `x`;
/// in a repository glob `*` already crosses `/`, so a run of stars means just what one does.
fn collapse_stars(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let (mut escaped, mut star) = (false, false);
    for c in pattern.chars() {
        if escaped {
            escaped = false;
            star = false;
        } else if c == '*' {
            if star {
                continue;
            }
            star = true;
        } else {
            escaped = c == '\\';
            star = false;
        }
        out.push(c);
    }
    out
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
            // A run of stars is one star: `**/alpine` needs a `/` before `alpine`.
            ("**/alpine", "library/alpine", true),
            ("**/alpine", "alpine", false),
            ("library/**", "library/a/b", true),
            ("a/**/b", "a/b", false),
            ("a/**/b", "a/x/y/b", true),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("?", "", false),
            ("???", "a/b", true),
            ("library/alpine", "library/Alpine", false),
            // Classes, alternatives and escapes (globset's).
            ("library/[ab]*", "library/alpine", true),
            ("library/[!a]*", "library/alpine", false),
            ("{library,team}/*", "team/app", true),
            ("{library,team}/*", "org/app", false),
            (r"a\*", "a*", true),
            (r"a\*", "ab", false),
            (r"a\**", "a*b", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), want, "{p} {t}");
        }
        for bad in ["library/[", "{a,b", "a\\"] {
            assert!(RepoGlob::new(bad).is_err(), "{bad}");
        }
    }

    fn glob_match(pattern: &str, text: &str) -> bool {
        RepoGlob::new(pattern).unwrap().is_match(text)
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
