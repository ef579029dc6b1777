//! The route policy: which `[[route]]` a request matches (host, port, client subnet, repository,
//! User-Agent; first match wins) and what it says — rewrite mode, platform, OCI for legacy
//! clients, Windows matching — plus the decisions made from it. Pure.
//!
//! - `route_match`: a route's conditions and the request facts they test;
//! - `client_platform`: the client's platform from the route and the request's hints;
//! - `rewrite`: whether a tag answer is resolved to one platform;
//! - `decision`: the record of what was considered and chosen (for `archway explain`).

mod client_platform;
mod decision;
pub mod layers;
mod rewrite;
mod route_match;

pub use client_platform::{client_platform, PlatformSource, DEFAULT_PLATFORM};
pub use decision::{Decision, SelectionStep};
pub use layers::{layers_for, LayersChoice, LayersMode, ZstdReads};
pub use rewrite::should_rewrite;
pub use route_match::{strip_port, OciForLegacy, RepoGlob, RequestFacts, RewriteMode, RouteMatch};

use crate::platform::{Platform, PlatformError};

/// One `[[route]]`: a match and the platform policy it sets.
#[derive(Debug, Clone, Default)]
pub struct RouteConfig {
    pub matcher: RouteMatch,
    /// The route's platform in containerd form (`linux/arm64`, `windows(10.0.17763)/amd64`) or
    /// `windows/amd64:10.0.17763`; validated when the config is loaded.
    pub platform: Option<String>,
    pub rewrite: RewriteMode,
    pub oci_for_legacy: OciForLegacy,
    pub windows_match: crate::platform::WindowsMatch,
    /// zstd layers: as they are, or converted (for clients that cannot read them, or always).
    pub layers: LayersMode,
}

/// A route the config names that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RouteConfigError {
    #[error("route[{index}].platform `{platform}`: {source}")]
    Platform {
        index: usize,
        platform: String,
        source: PlatformError,
    },
}

/// A configured route with its platform parsed.
#[derive(Debug, Clone)]
pub struct Route {
    pub index: usize,
    pub config: RouteConfig,
    pub platform: Option<Platform>,
}

impl Route {
    pub fn from_config(index: usize, config: RouteConfig) -> Result<Route, RouteConfigError> {
        let platform = match &config.platform {
            Some(p) => Some(
                Platform::parse(p).map_err(|source| RouteConfigError::Platform {
                    index,
                    platform: p.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        Ok(Route {
            index,
            config,
            platform,
        })
    }
}

/// First match wins.
pub fn choose_route<'a>(routes: &'a [Route], facts: &RequestFacts<'_>) -> Option<&'a Route> {
    routes.iter().find(|r| r.config.matcher.matches(facts))
}
