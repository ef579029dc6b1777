//! Whether a tag answer is rewritten, and for which platform. Pure: the proxy feeds it the
//! request's hints and the manifest it found.

use crate::config::RouteConfig;
use crate::error::{ErrorCode, ProxyError};
use crate::media_type::{self, AcceptSet};
use crate::platform::{combine, platform_from_meta_header, platform_from_user_agent, Platform};
use crate::route::{RequestFacts, RewriteMode};

/// The platform a client gets when nothing says otherwise.
pub const DEFAULT_PLATFORM: &str = "linux/amd64";

/// A configured route with its platform parsed.
#[derive(Debug, Clone)]
pub struct Route {
    pub index: usize,
    pub config: RouteConfig,
    pub platform: Option<Platform>,
}

impl Route {
    pub fn from_config(index: usize, config: RouteConfig) -> Result<Route, ProxyError> {
        let platform = match &config.platform {
            Some(p) => Some(Platform::parse(p).map_err(|e| {
                ProxyError::internal(format!("route[{index}].platform `{p}`: {e}"))
            })?),
            None => None,
        };
        Ok(Route {
            index,
            config,
            platform,
        })
    }
}

/// What the platform decision for one tag request considered and chose.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Decision {
    pub upstream: String,
    /// How the upstream was chosen: namespace, pathprefix, host, default.
    pub selected_by: String,
    pub repository: String,
    pub route: Option<usize>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub rewrite: bool,
    pub rewrite_reason: String,
    pub platform: Option<String>,
    pub platform_source: Option<PlatformSource>,
    /// The platforms the top-level index offers.
    pub offered: Vec<String>,
    /// One step per index level followed.
    pub steps: Vec<SelectionStep>,
    pub converted: bool,
    pub answer_digest: String,
    pub answer_media_type: String,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SelectionStep {
    pub index_digest: String,
    pub chosen_digest: String,
    pub chosen_media_type: String,
    pub chosen_platform: Option<String>,
    pub reason: String,
}

/// First match wins.
pub fn choose_route<'a>(routes: &'a [Route], facts: &RequestFacts<'_>) -> Option<&'a Route> {
    routes.iter().find(|r| r.config.matcher.matches(facts))
}

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
    let default = Platform::parse(DEFAULT_PLATFORM)
        .map_err(|e| ProxyError::internal(format!("default platform: {e}")))?;
    Ok((default, PlatformSource::Default))
}

/// Whether a tag answer of `media_type` is resolved to one platform for this client, and why.
pub fn should_rewrite(
    mode: RewriteMode,
    accept: &AcceptSet,
    media_type: &str,
) -> (bool, &'static str) {
    if !media_type::is_index(media_type) {
        return (false, "not an index");
    }
    match mode {
        RewriteMode::Never => (false, "route says rewrite = never"),
        RewriteMode::Always => (true, "route says rewrite = always"),
        RewriteMode::Legacy if !accept.is_present() => (true, "legacy client: no Accept header"),
        RewriteMode::Legacy if accept.accepts(media_type) => {
            (false, "client accepts this index type")
        }
        RewriteMode::Legacy => (true, "legacy client: Accept lacks this index type"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::RouteMatch;

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

    #[test]
    fn when_to_rewrite() {
        let docker_1706 = AcceptSet::from_lines([
            media_type::DOCKER_SCHEMA1_SIGNED,
            "application/json",
            media_type::DOCKER_MANIFEST,
            media_type::DOCKER_MANIFEST_LIST,
        ]);
        let schema2_only = AcceptSet::from_lines([media_type::DOCKER_MANIFEST]);
        let none = AcceptSet::default();
        let modern = AcceptSet::from_lines([
            media_type::DOCKER_MANIFEST,
            media_type::DOCKER_MANIFEST_LIST,
            media_type::OCI_MANIFEST,
            media_type::OCI_INDEX,
        ]);
        use RewriteMode::*;
        let cases = [
            (Legacy, &docker_1706, media_type::OCI_INDEX, true),
            (
                Legacy,
                &docker_1706,
                media_type::DOCKER_MANIFEST_LIST,
                false,
            ),
            (
                Legacy,
                &schema2_only,
                media_type::DOCKER_MANIFEST_LIST,
                true,
            ),
            (Legacy, &none, media_type::DOCKER_MANIFEST_LIST, true),
            (Legacy, &modern, media_type::OCI_INDEX, false),
            (Always, &modern, media_type::OCI_INDEX, true),
            (Never, &none, media_type::OCI_INDEX, false),
            (Always, &modern, media_type::OCI_MANIFEST, false),
        ];
        for (mode, accept, mt, want) in cases {
            assert_eq!(should_rewrite(mode, accept, mt).0, want, "{mode:?} {mt}");
        }
    }
}
