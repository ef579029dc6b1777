//! Whether a tag answer is resolved to one platform for this client (`rewrite = legacy | always
//! | never` and the client's Accept). Pure.

use super::route_match::RewriteMode;
use crate::media_type::{self, AcceptSet};

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
