//! What a request says about the client's platform: the User-Agent of Docker and CRI-O, and
//! the `X-Meta-Platform` header that dockerd forwards from the CLI's `HttpHeaders`.

use super::normalize;
use super::{Platform, PlatformError};

/// The `os/…` and `arch/…` tokens of a Docker (`docker/20.10.24 go/… git-commit/… kernel/…
/// os/linux arch/amd64 UpstreamClient(…)`) or CRI-O (`cri-o/1.28.1 go/… os/linux arch/arm64`)
/// User-Agent. Only the part before ` UpstreamClient(` counts: the CLI's own User-Agent inside it
/// is escaped and may say anything. containerd, skopeo, podman and buildah send no such tokens,
/// so they give `None`. A User-Agent never names a variant: `arch/arm` is `arm/v7`, and Docker on
/// Windows sends no build number.
pub fn platform_from_user_agent(user_agent: &str) -> Option<Platform> {
    let own = match user_agent.find(" UpstreamClient(") {
        Some(i) => &user_agent[..i],
        None => user_agent,
    };
    let mut os = None;
    let mut arch = None;
    for token in own.split_ascii_whitespace() {
        if let Some(v) = token.strip_prefix("os/") {
            os.get_or_insert(v);
        } else if let Some(v) = token.strip_prefix("arch/") {
            arch.get_or_insert(v);
        }
    }
    let (os, arch) = (os?, arch?);
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 32
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !valid(os) || !valid(arch) {
        return None;
    }
    let platform = Platform::new(os, arch, None);
    // Go's GOOS/GOARCH lists are what these tokens come from; anything else is noise.
    (normalize::is_known_os(&platform.os) && normalize::is_known_arch(&platform.architecture))
        .then_some(platform)
}

/// `X-Meta-Platform: linux/arm64`, `windows(10.0.17763)/amd64` or `windows/amd64:10.0.17763`.
pub fn platform_from_meta_header(value: &str) -> Result<Platform, PlatformError> {
    Platform::parse(value.trim())
}

/// Merges a client hint with the route's platform. When the hint's OS and architecture agree
/// with the route's, what the hint leaves unsaid comes from the route: the variant (when the
/// hint has none or only the architecture's default, e.g. a User-Agent's `arm` = `arm/v7`), the
/// OS version (a Windows User-Agent never erases a route's build) and the OS features.
/// Otherwise the hint stands alone.
///
/// Because an explicit `linux/arm/v7` looks like the default, it does not override a route's
/// `arm/v6`.
pub fn combine(hint: &Platform, route: Option<&Platform>) -> Platform {
    let hint = hint.clone().normalize();
    let Some(route) = route.map(|r| r.clone().normalize()) else {
        return hint;
    };
    if hint.os != route.os || hint.architecture != route.architecture {
        return hint;
    }
    let hint_names_variant = match hint.variant.as_deref() {
        None => false,
        Some(v) => normalize::default_variant(&hint.architecture) != Some(v),
    };
    Platform {
        variant: if hint_names_variant || route.variant.is_none() {
            hint.variant
        } else {
            route.variant
        },
        os_version: hint.os_version.or(route.os_version),
        os_features: if hint.os_features.is_empty() {
            route.os_features
        } else {
            hint.os_features
        },
        ..hint
    }
}
