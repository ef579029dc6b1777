//! `--for CLIENT`: the headers a client sends for a tag, so warm asks as it will. CLIENT is a
//! User-Agent (`docker/20.10.24 go/go1.19.8 … os/windows arch/amd64 …`) or a short name
//! (`docker/20.10 (windows)`, `docker/17.06 (windows/amd64)`, `containerd`, `skopeo`). Docker's
//! Accept lines are the ones captured from its versions: before 20.10 it takes no OCI types.

use crate::platform::Platform;

#[derive(Debug, Clone, PartialEq)]
pub struct ClientHints {
    pub user_agent: String,
    pub accept: Vec<String>,
    /// The client's platform as its User-Agent tells it (os/arch), when it does.
    pub platform: Option<Platform>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("--for {0:?}: give a User-Agent or a short name like 'docker/20.10 (windows)', 'containerd', 'skopeo'")]
pub struct ForClientError(String);

const SCHEMA2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
const JSON: &str = "application/json";

/// Docker 17.06 (captured from Docker EE 17.06 on Linux and Windows).
const DOCKER_LEGACY: &[&str] = &[SCHEMA1, JSON, SCHEMA2, LIST];
/// Docker 20.10 (captured).
const DOCKER_2010: &[&str] = &[SCHEMA2, LIST, OCI_INDEX, SCHEMA1, JSON, OCI_MANIFEST];
/// containerd and skopeo take every type.
const EVERY: &[&str] = &[OCI_MANIFEST, SCHEMA2, OCI_INDEX, LIST];

impl ClientHints {
    pub fn parse(input: &str) -> Result<ClientHints, ForClientError> {
        let s = input.trim();
        if s.is_empty() || s.len() > 512 || s.chars().any(|c| c.is_control()) {
            return Err(ForClientError(input.to_owned()));
        }
        let lower = s.to_ascii_lowercase();
        let user_agent = match lower.as_str() {
            "containerd" => "containerd/1.7.24".to_owned(),
            "skopeo" => "skopeo/1.13.3".to_owned(),
            _ => match short_docker(s) {
                Some(ua) => ua,
                None if s.contains('/') => s.to_owned(),
                None => return Err(ForClientError(input.to_owned())),
            },
        };
        let accept = match docker_version(&user_agent) {
            Some((major, minor)) if (major, minor) < (20, 10) => DOCKER_LEGACY,
            Some(_) => DOCKER_2010,
            None => EVERY,
        };
        Ok(ClientHints {
            platform: crate::platform::platform_from_user_agent(&user_agent),
            accept: accept.iter().map(|a| (*a).to_owned()).collect(),
            user_agent,
        })
    }
}

/// `docker/20.10 (windows)` or `docker/17.06 (linux/arm64)` → a User-Agent as that Docker sends.
fn short_docker(s: &str) -> Option<String> {
    let rest = s.strip_prefix("docker/")?;
    let (version, platform) = rest.split_once(' ')?;
    let platform = platform.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (os, arch) = platform.split_once('/').unwrap_or((platform, "amd64"));
    let ok = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
    };
    if !ok(version) || !ok(os) || !ok(arch) {
        return None;
    }
    Some(format!(
        "docker/{version} go/unknown os/{os} arch/{arch} UpstreamClient(Docker-Client/{version} \\({os}\\))"
    ))
}

/// Docker's (major, minor) from its User-Agent's first token.
fn docker_version(user_agent: &str) -> Option<(u32, u32)> {
    let v = user_agent.strip_prefix("docker/")?;
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_and_user_agents() {
        // (input, UA starts with, takes OCI, platform)
        let cases: &[(&str, &str, bool, Option<&str>)] = &[
            ("docker/20.10 (windows)", "docker/20.10 go/unknown os/windows arch/amd64", true, Some("windows/amd64")),
            ("docker/17.06 (windows)", "docker/17.06 go/unknown os/windows", false, Some("windows/amd64")),
            ("docker/17.06 (linux/arm64)", "docker/17.06 go/unknown os/linux arch/arm64", false, Some("linux/arm64")),
            ("docker/23.0 (linux)", "docker/23.0 ", true, Some("linux/amd64")),
            // Real User-Agents, as captured.
            ("docker/17.06.2-ee-16 go/go1.8.7 git-commit/9ef4f0a os/windows arch/amd64 UpstreamClient(Docker-Client/17.06.2-ee-16 \\(windows\\))", "docker/17.06.2-ee-16 ", false, Some("windows/amd64")),
            ("docker/20.10.24+dfsg1 go/go1.19.8 git-commit/5d6db84 kernel/6.1.0 os/linux arch/arm64 UpstreamClient(Docker-Client/20.10.24+dfsg1 \\(linux\\))", "docker/20.10.24+dfsg1", true, Some("linux/arm64")),
            ("containerd", "containerd/", true, None),
            ("Skopeo", "skopeo/", true, None),
        ];
        for (input, ua, oci, platform) in cases {
            let h = ClientHints::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert!(h.user_agent.starts_with(ua), "{input}: {}", h.user_agent);
            assert_eq!(h.accept.iter().any(|a| a == OCI_MANIFEST), *oci, "{input}");
            assert!(h.accept.iter().any(|a| a == SCHEMA2), "{input}");
            assert_eq!(
                h.platform.as_ref().map(|p| p.to_string()),
                platform.map(str::to_owned),
                "{input}"
            );
        }
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in [
            "",
            "docker",
            "firefox",
            "docker/20.10 (win\ndows)",
            &"a/".repeat(300),
        ] {
            assert!(ClientHints::parse(bad).is_err(), "{bad:?}");
        }
    }
}
