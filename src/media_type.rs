//! Manifest media types and the client's Accept set.

use http::header::{HeaderMap, ACCEPT};

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// What archway always asks upstream for: every manifest type, so the decision of what a client
/// gets is made here and never by upstream's own fallback.
pub const UPSTREAM_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws, \
application/vnd.docker.distribution.manifest.v1+json";

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// The media types a client accepts, merged from every Accept line, comma-split, parameters
/// stripped. No Accept header at all is kept apart from an empty one: it means a legacy client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptSet {
    types: Vec<String>,
    any: bool,
    present: bool,
}

impl AcceptSet {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::from_lines(
            headers
                .get_all(ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        )
    }

    pub fn from_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Self {
        let mut set = AcceptSet::default();
        for line in lines {
            set.present = true;
            for item in line.split(',') {
                let media = item
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                if media.is_empty() {
                    continue;
                }
                if media == "*/*" {
                    set.any = true;
                } else if !set.types.contains(&media) {
                    set.types.push(media);
                }
            }
        }
        set
    }

    /// True when the client sent any Accept header at all.
    pub fn is_present(&self) -> bool {
        self.present
    }

    pub fn accepts(&self, media_type: &str) -> bool {
        self.any
            || self
                .types
                .iter()
                .any(|t| t.eq_ignore_ascii_case(media_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn skopeo_six_lines() {
        let mut h = HeaderMap::new();
        for t in [
            OCI_MANIFEST,
            DOCKER_MANIFEST,
            DOCKER_SCHEMA1_SIGNED,
            DOCKER_SCHEMA1,
            DOCKER_MANIFEST_LIST,
            OCI_INDEX,
        ] {
            h.append(ACCEPT, HeaderValue::from_static(t));
        }
        let a = AcceptSet::from_headers(&h);
        assert!(a.accepts(OCI_INDEX) && a.accepts(DOCKER_MANIFEST_LIST) && a.accepts(OCI_MANIFEST));
        assert!(!a.accepts("application/octet-stream"));
    }

    #[test]
    fn containerd_one_line_with_star() {
        let a = AcceptSet::from_lines(["application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*"]);
        assert!(a.accepts("anything/else"));
    }

    #[test]
    fn parameters_and_case() {
        let a = AcceptSet::from_lines([
            "Application/VND.OCI.image.index.v1+json; q=0.5 ,  application/json",
        ]);
        assert!(a.accepts(OCI_INDEX));
        assert!(a.accepts("application/json"));
        assert!(!a.accepts(DOCKER_MANIFEST));
    }

    #[test]
    fn absent_is_not_present() {
        let a = AcceptSet::from_headers(&HeaderMap::new());
        assert!(!a.is_present());
        assert!(!a.accepts(DOCKER_MANIFEST));
    }
}
