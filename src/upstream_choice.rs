//! Which configured upstream a request reaches, and the repository name to ask it for. Pure.
//!
//! Selection only ever chooses among configured upstreams (`ns=`, path prefix, Host, default);
//! a registry the client names that is not configured is refused, so archway never connects to
//! a host a client chose.

use crate::config::UpstreamConfig;
use crate::error::{ErrorCode, ProxyError};
use crate::reference::RepositoryName;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index into the configured upstreams.
    pub upstream: usize,
    /// The name to ask upstream for (with `library/` added for Docker Hub).
    pub repository: RepositoryName,
    /// The path prefix the client used (`docker.io` in `/v2/docker.io/alpine/…`), to rewrite
    /// pagination links back into the client's view.
    pub prefix: Option<String>,
    pub selected_by: SelectedBy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectedBy {
    Namespace,
    PathPrefix,
    Host,
    Default,
}

fn find(upstreams: &[UpstreamConfig], name: &str) -> Option<usize> {
    upstreams
        .iter()
        .position(|u| u.names().any(|n| n.eq_ignore_ascii_case(name)))
}

fn unknown(what: &str) -> ProxyError {
    ProxyError::downstream(
        ErrorCode::NameUnknown,
        format!("registry `{what}` is not configured on this mirror"),
    )
}

/// `raw_name` is the repository part of the path, `ns` containerd's query parameter, `host` the
/// Host header (with or without port).
pub fn resolve(
    upstreams: &[UpstreamConfig],
    default: Option<usize>,
    raw_name: &str,
    ns: Option<&str>,
    host: Option<&str>,
) -> Result<Target, ProxyError> {
    let (upstream, name, prefix, selected_by) = if let Some(ns) = ns {
        let i = find(upstreams, ns).ok_or_else(|| unknown(ns))?;
        (i, raw_name, None, SelectedBy::Namespace)
    } else if let Some((i, first, rest)) = raw_name
        .split_once('/')
        .and_then(|(first, rest)| find(upstreams, first).map(|i| (i, first, rest)))
    {
        (i, rest, Some(first.to_owned()), SelectedBy::PathPrefix)
    } else if let Some(i) = host.and_then(|h| host_match(upstreams, h)) {
        (i, raw_name, None, SelectedBy::Host)
    } else {
        let i = default.ok_or_else(|| {
            ProxyError::downstream(
                ErrorCode::NameUnknown,
                "no default upstream: name the registry with ?ns= or a path prefix",
            )
        })?;
        (i, raw_name, None, SelectedBy::Default)
    };
    let repository = RepositoryName::parse(name)
        .map_err(|_| ProxyError::downstream(ErrorCode::NameInvalid, "invalid repository name"))?;
    let library_prefix = upstreams.get(upstream).is_some_and(|u| u.library_prefix);
    let repository = if library_prefix {
        repository.with_library_prefix()
    } else {
        repository
    };
    Ok(Target {
        upstream,
        repository,
        prefix,
        selected_by,
    })
}

fn host_match(upstreams: &[UpstreamConfig], host: &str) -> Option<usize> {
    let host = host.trim();
    find(upstreams, host).or_else(|| {
        let without_port = match host.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        find(upstreams, without_port)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ups() -> Vec<UpstreamConfig> {
        let mut hub =
            UpstreamConfig::from_url(Some("docker.io"), "https://registry-1.docker.io").unwrap();
        hub.default = true;
        let ghcr = UpstreamConfig::from_url(Some("ghcr.io"), "https://ghcr.io").unwrap();
        let local = UpstreamConfig::from_url(None, "http://127.0.0.1:5000").unwrap();
        vec![hub, ghcr, local]
    }

    fn r(
        name: &str,
        ns: Option<&str>,
        host: Option<&str>,
    ) -> Result<(usize, String, SelectedBy), ErrorCode> {
        let u = ups();
        resolve(&u, Some(0), name, ns, host)
            .map(|t| (t.upstream, t.repository.to_string(), t.selected_by))
            .map_err(|e| e.code)
    }

    #[test]
    fn table() {
        use SelectedBy::*;
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
            Result<(usize, &'a str, SelectedBy), ErrorCode>,
        );
        let cases: &[Case] = &[
            // daemon.json mirror: no ns, no prefix → default (Docker Hub), library/ added.
            (
                "alpine",
                None,
                Some("127.0.0.1:5001"),
                Ok((0, "library/alpine", Default)),
            ),
            (
                "library/alpine",
                None,
                None,
                Ok((0, "library/alpine", Default)),
            ),
            // containerd hosts.toml
            (
                "library/alpine",
                Some("docker.io"),
                None,
                Ok((0, "library/alpine", Namespace)),
            ),
            (
                "alpine",
                Some("index.docker.io"),
                None,
                Ok((0, "library/alpine", Namespace)),
            ),
            (
                "org/app",
                Some("ghcr.io"),
                None,
                Ok((1, "org/app", Namespace)),
            ),
            ("app", Some("ghcr.io"), None, Ok((1, "app", Namespace))),
            (
                "org/app",
                Some("evil.example.com"),
                None,
                Err(ErrorCode::NameUnknown),
            ),
            ("x", Some("127.0.0.1:5000"), None, Ok((2, "x", Namespace))),
            // CRI-O path prefix
            (
                "docker.io/library/alpine",
                None,
                None,
                Ok((0, "library/alpine", PathPrefix)),
            ),
            (
                "docker.io/alpine",
                None,
                None,
                Ok((0, "library/alpine", PathPrefix)),
            ),
            (
                "ghcr.io/org/app",
                None,
                None,
                Ok((1, "org/app", PathPrefix)),
            ),
            ("127.0.0.1:5000/x", None, None, Ok((2, "x", PathPrefix))),
            // Host header
            ("org/app", None, Some("ghcr.io"), Ok((1, "org/app", Host))),
            (
                "org/app",
                None,
                Some("ghcr.io:443"),
                Ok((1, "org/app", Host)),
            ),
            // Unknown prefix is just a name component on the default upstream, never a host.
            (
                "quay.io/org/app",
                None,
                None,
                Ok((0, "quay.io/org/app", Default)),
            ),
            ("Bad/Name", None, None, Err(ErrorCode::NameInvalid)),
            ("ghcr.io/../x", None, None, Err(ErrorCode::NameInvalid)),
            ("..%2f..%2fetc", None, None, Err(ErrorCode::NameInvalid)),
            (
                "%2e%2e/x",
                Some("docker.io"),
                None,
                Err(ErrorCode::NameInvalid),
            ),
        ];
        for (name, ns, host, want) in cases {
            let got = r(name, *ns, *host);
            let want = (*want).map(|(i, n, s)| (i, n.to_string(), s));
            assert_eq!(got, want, "{name} ns={ns:?} host={host:?}");
        }
    }

    #[test]
    fn no_default_means_name_unknown() {
        let u = ups();
        let e = resolve(&u, None, "x", None, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::NameUnknown);
    }
}
