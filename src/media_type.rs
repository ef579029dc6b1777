//! Manifest media types and the client's Accept set.

use http::header::{HeaderMap, ACCEPT};

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Distribution's `schema2.MediaTypeUncompressedLayer`; moby decompresses layers by sniffing, so
/// an uncompressed tar pulls.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// Named by containerd and containers/image; Docker on Windows fetches any layer that has
/// `urls` from those URLs when the registry lacks it.
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar";

pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_NONDISTRIBUTABLE_LAYER: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_NONDISTRIBUTABLE_LAYER_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const OCI_NONDISTRIBUTABLE_LAYER_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

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

    /// The listed media types, lower-cased, in first-seen order (`*/*` not included).
    pub fn media_types(&self) -> &[String] {
        &self.types
    }

    /// True when the client sent `*/*`.
    pub fn accepts_anything(&self) -> bool {
        self.any
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

    /// Real request headers: Docker 20.10, ctr 1.6 (by tag and by digest) and skopeo 1.9, every
    /// header line as sent (tests/data/client-requests.jsonl, from the shared captures).
    #[test]
    fn captured_clients() {
        let mut seen = 0;
        for line in include_str!("../tests/data/client-requests.jsonl").lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let mut h = HeaderMap::new();
            for pair in v["headers"].as_array().unwrap() {
                let name =
                    http::HeaderName::from_bytes(pair[0].as_str().unwrap().as_bytes()).unwrap();
                h.append(
                    name,
                    HeaderValue::from_str(pair[1].as_str().unwrap()).unwrap(),
                );
            }
            let a = AcceptSet::from_headers(&h);
            assert!(a.is_present());
            let name = v["name"].as_str().unwrap();
            match name {
                "docker-20.10-tag" => {
                    assert_eq!(h.get_all(ACCEPT).iter().count(), 6);
                    for t in [
                        OCI_INDEX,
                        OCI_MANIFEST,
                        DOCKER_MANIFEST_LIST,
                        DOCKER_MANIFEST,
                        DOCKER_SCHEMA1_SIGNED,
                        "application/json",
                    ] {
                        assert!(a.accepts(t), "{name}: {t}");
                    }
                    assert!(!a.accepts_anything());
                    assert!(!a.accepts(DOCKER_SCHEMA1));
                }
                "ctr-1.6-tag" => {
                    assert_eq!(h.get_all(ACCEPT).iter().count(), 1);
                    assert!(a.accepts_anything());
                    assert_eq!(
                        a.media_types(),
                        [
                            DOCKER_MANIFEST,
                            DOCKER_MANIFEST_LIST,
                            OCI_MANIFEST,
                            OCI_INDEX
                        ]
                    );
                }
                // By digest containerd names the one type it expects, plus */*.
                "ctr-1.6-digest-list" => {
                    assert_eq!(a.media_types(), [DOCKER_MANIFEST_LIST]);
                    assert!(a.accepts_anything() && a.accepts(OCI_INDEX));
                }
                "ctr-1.6-digest-manifest" => {
                    assert_eq!(a.media_types(), [OCI_MANIFEST]);
                    assert!(a.accepts_anything());
                }
                "skopeo-1.9-tag" => {
                    assert_eq!(h.get_all(ACCEPT).iter().count(), 6);
                    assert_eq!(
                        a.media_types(),
                        [
                            OCI_MANIFEST,
                            DOCKER_MANIFEST,
                            DOCKER_SCHEMA1_SIGNED,
                            DOCKER_SCHEMA1,
                            DOCKER_MANIFEST_LIST,
                            OCI_INDEX
                        ]
                    );
                    assert!(!a.accepts_anything());
                }
                other => panic!("unexpected capture {other}"),
            }
            seen += 1;
        }
        assert_eq!(seen, 5);
    }

    /// Docker 1.10–18.06 (and Windows Docker EE 17.06): separate lines, no OCI types. Such a
    /// client takes a manifest list and schema2, but neither an OCI index nor an OCI manifest.
    #[test]
    fn docker_17_06_takes_no_oci() {
        let mut h = HeaderMap::new();
        for t in [
            DOCKER_SCHEMA1_SIGNED,
            "application/json",
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST,
        ] {
            h.append(ACCEPT, HeaderValue::from_static(t));
        }
        let a = AcceptSet::from_headers(&h);
        assert!(a.accepts(DOCKER_MANIFEST_LIST) && a.accepts(DOCKER_MANIFEST));
        assert!(!a.accepts(OCI_INDEX) && !a.accepts(OCI_MANIFEST));
        assert!(!a.accepts_anything());
    }

    #[test]
    fn absent_is_not_present() {
        let a = AcceptSet::from_headers(&HeaderMap::new());
        assert!(!a.is_present());
        assert!(!a.accepts(DOCKER_MANIFEST));
    }
}
