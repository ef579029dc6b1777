//! What the platform decision for one tag request considered and chose: the record
//! `archway explain` prints. Pure data.

use super::client_platform::PlatformSource;

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
    /// Which zstd layer types the client reads, and why.
    pub layers: Option<String>,
    /// zstd layers were replaced by their tars.
    pub layers_converted: bool,
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
