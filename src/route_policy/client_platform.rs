//! The client's platform, strongest hint first: an `always` route, `X-Meta-Platform`, the
//! User-Agent, the route's platform, linux/amd64. Pure.

use super::route_match::RewriteMode;
use super::Route;
use crate::error::{ErrorCode, ProxyError};
use crate::platform::{combine, platform_from_meta_header, platform_from_user_agent, Platform};

/// The platform a client gets when nothing says otherwise.
pub const DEFAULT_PLATFORM: &str = "linux/amd64";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlatformSource {
    /// A `rewrite = "always"` route pins it.
    RouteAlways,
    XMetaPlatform,
    UserAgent,
    Route,
    Default,
}

impl PlatformSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PlatformSource::RouteAlways => "route (rewrite = always)",
            PlatformSource::XMetaPlatform => "X-Meta-Platform header",
            PlatformSource::UserAgent => "User-Agent",
            PlatformSource::Route => "route platform",
            PlatformSource::Default => "default (linux/amd64)",
        }
    }
}

/// The client's platform, strongest first: an `always` route → `X-Meta-Platform` → User-Agent →
/// route platform → linux/amd64. A hint that names only os/arch keeps the route platform's
/// variant and os.version when they agree.
pub fn client_platform(
    route: Option<&Route>,
    meta_platform: Option<&str>,
    user_agent: Option<&str>,
) -> Result<(Platform, PlatformSource), ProxyError> {
    let route_platform = route.and_then(|r| r.platform.as_ref());
    if let (Some(r), Some(p)) = (route, route_platform) {
        if r.config.rewrite == RewriteMode::Always {
            return Ok((p.clone(), PlatformSource::RouteAlways));
        }
    }
    if let Some(h) = meta_platform {
        let hint = platform_from_meta_header(h).map_err(|e| {
            ProxyError::downstream(
                ErrorCode::Unsupported,
                format!("X-Meta-Platform `{h}` is not a platform: {e}"),
            )
            .with_status(http::StatusCode::BAD_REQUEST)
        })?;
        return Ok((
            combine(&hint, route_platform),
            PlatformSource::XMetaPlatform,
        ));
    }
    if let Some(hint) = user_agent.and_then(platform_from_user_agent) {
        return Ok((combine(&hint, route_platform), PlatformSource::UserAgent));
    }
    if let Some(p) = route_platform {
        return Ok((p.clone(), PlatformSource::Route));
    }
    Ok((Platform::default_for_clients(), PlatformSource::Default))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route_policy::RouteConfig;
    use crate::route_policy::RouteMatch;

    const DOCKER_1706: &str = "docker/17.06.2-ee-19 go/go1.8.7 git-commit/6b5fb4d kernel/3.10.0-1062.el7.x86_64 os/linux arch/amd64 UpstreamClient(Docker-Client/17.06.2-ee-19 \\(linux\\))";
    const DOCKER_WIN_1706: &str = "docker/17.06.2-ee-16 go/go1.8.7 git-commit/9ef4f0a os/windows arch/amd64 UpstreamClient(Docker-Client/17.06.2-ee-16 \\(windows\\))";
    const CRIO_ARM64: &str = "cri-o/1.28.1 go/go1.20.10 os/linux arch/arm64";

    fn route(platform: Option<&str>, rewrite: RewriteMode) -> Route {
        Route::from_config(
            0,
            RouteConfig {
                matcher: RouteMatch::default(),
                platform: platform.map(str::to_owned),
                rewrite,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn pick(
        route: Option<&Route>,
        meta: Option<&str>,
        ua: Option<&str>,
    ) -> (String, PlatformSource) {
        let (p, s) = client_platform(route, meta, ua).unwrap();
        (p.to_string(), s)
    }

    #[test]
    fn precedence() {
        use PlatformSource::{Default, RouteAlways, UserAgent, XMetaPlatform};
        let arm64_always = route(Some("linux/arm64"), RewriteMode::Always);
        let ltsc2019 = route(Some("windows/amd64:10.0.17763"), RewriteMode::Legacy);
        let armv6 = route(Some("linux/arm/v6"), RewriteMode::Legacy);
        type Case<'a> = (
            Option<&'a Route>,
            Option<&'a str>,
            Option<&'a str>,
            &'a str,
            PlatformSource,
        );
        let cases: Vec<Case> = vec![
            (None, None, None, "linux/amd64", Default),
            (None, None, Some("containerd/1.6.20~ds1"), "linux/amd64", Default),
            (None, None, Some("skopeo/1.9.3"), "linux/amd64", Default),
            (None, None, Some(DOCKER_1706), "linux/amd64", UserAgent),
            (None, None, Some(CRIO_ARM64), "linux/arm64", UserAgent),
            (None, Some("linux/arm/v7"), Some(DOCKER_1706), "linux/arm/v7", XMetaPlatform),
            // An always route beats every hint.
            (Some(&arm64_always), Some("linux/amd64"), Some(DOCKER_1706), "linux/arm64", RouteAlways),
            (Some(&arm64_always), None, Some(CRIO_ARM64), "linux/arm64", RouteAlways),
            // A Windows User-Agent keeps the route's build.
            (Some(&ltsc2019), None, Some(DOCKER_WIN_1706), "windows(10.0.17763)/amd64", UserAgent),
            // A hint that disagrees on arch stands alone.
            (Some(&ltsc2019), None, Some(DOCKER_1706), "linux/amd64", UserAgent),
            (Some(&ltsc2019), None, Some("containerd/1.7.0"), "windows(10.0.17763)/amd64", PlatformSource::Route),
            // arch/arm from a User-Agent keeps the route's variant.
            (Some(&armv6), None, Some("docker/17.06.0-ce go/go1.8.3 git-commit/02c1d87 kernel/4.9.0 os/linux arch/arm UpstreamClient(Docker-Client/17.06.0-ce \\(linux\\))"), "linux/arm/v6", UserAgent),
        ];
        for (r, meta, ua, want, source) in cases {
            assert_eq!(
                pick(r, meta, ua),
                (want.to_string(), source),
                "{meta:?} {ua:?}"
            );
        }
    }

    #[test]
    fn bad_meta_header_is_a_clear_400() {
        let e = client_platform(None, Some("not a platform!"), None).unwrap_err();
        assert_eq!(e.status, http::StatusCode::BAD_REQUEST);
        assert!(e.message.contains("X-Meta-Platform"));
    }
}
