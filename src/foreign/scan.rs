//! Finds a manifest's foreign layers: digest, size and urls of each layer whose media type says
//! it is not distributed through registries. Pure; never changes the manifest.

use crate::digest::Digest;

/// The media types of non-distributable layers (Docker's, and OCI's deprecated ones).
const FOREIGN_MEDIA_TYPES: [&str; 5] = [
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

/// Most urls kept per layer, and the longest url kept: real manifests name one or two.
const MAX_URLS: usize = 8;
const MAX_URL_LEN: usize = 2048;

pub fn is_foreign_media_type(media_type: &str) -> bool {
    FOREIGN_MEDIA_TYPES.contains(&media_type)
}

/// A foreign layer as a manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignLayer {
    pub digest: Digest,
    pub size: u64,
    pub urls: Vec<String>,
}

/// The foreign layers of an image manifest (none for anything else, or for bytes that are not
/// one). Cheap for the common case: a manifest that names no foreign media type is not parsed.
pub fn foreign_layers(bytes: &[u8]) -> Vec<ForeignLayer> {
    let named = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    if !named(b"rootfs.foreign.") && !named(b".nondistributable.") {
        return Vec::new();
    }
    #[derive(serde::Deserialize)]
    struct Layer {
        #[serde(rename = "mediaType", default)]
        media_type: String,
        #[serde(default)]
        digest: String,
        #[serde(default)]
        size: u64,
        #[serde(default)]
        urls: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        layers: Vec<Layer>,
    }
    let Ok(probe) = serde_json::from_slice::<Probe>(bytes) else {
        return Vec::new();
    };
    probe
        .layers
        .into_iter()
        .filter(|l| is_foreign_media_type(&l.media_type))
        .filter_map(|l| {
            let digest = l.digest.parse().ok()?;
            let urls: Vec<String> = l
                .urls
                .into_iter()
                .filter(|u| u.len() <= MAX_URL_LEN)
                .take(MAX_URLS)
                .collect();
            (!urls.is_empty()).then_some(ForeignLayer {
                digest,
                size: l.size,
                urls,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(layers: &str) -> Vec<u8> {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":1,"digest":"sha256:{c}"}},
            "layers":[{layers}]}}"#,
            c = "c".repeat(64)
        )
        .into_bytes()
    }

    #[test]
    fn foreign_layers_are_found_with_their_urls() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let bytes = manifest(&format!(
            r#"{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","size":1234,"digest":"sha256:{a}",
                "urls":["https://mcr.microsoft.com/v2/windows/servercore/blobs/sha256:{a}"]}},
               {{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":5,"digest":"sha256:{b}"}}"#
        ));
        let found = foreign_layers(&bytes);
        assert_eq!(
            found,
            vec![ForeignLayer {
                digest: format!("sha256:{a}").parse().unwrap(),
                size: 1234,
                urls: vec![format!(
                    "https://mcr.microsoft.com/v2/windows/servercore/blobs/sha256:{a}"
                )],
            }]
        );
    }

    #[test]
    fn what_is_not_a_usable_foreign_layer() {
        let a = "a".repeat(64);
        for (why, layers) in [
            (
                "no urls",
                format!(r#"{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","size":1,"digest":"sha256:{a}"}}"#),
            ),
            (
                "bad digest",
                r#"{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","size":1,"digest":"sha256:zz","urls":["https://x/"]}"#.to_owned(),
            ),
            (
                "a distributable layer with urls",
                format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":1,"digest":"sha256:{a}","urls":["https://x/"]}}"#),
            ),
        ] {
            assert!(foreign_layers(&manifest(&layers)).is_empty(), "{why}");
        }
        assert!(foreign_layers(b"rootfs.foreign. not json").is_empty());
        let index = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar"}]}"#;
        assert!(foreign_layers(index).is_empty(), "an index has no layers");
    }

    #[test]
    fn every_non_distributable_type_counts() {
        let a = "a".repeat(64);
        for t in FOREIGN_MEDIA_TYPES {
            let bytes = manifest(&format!(
                r#"{{"mediaType":"{t}","size":7,"digest":"sha256:{a}","urls":["https://x/1","https://x/2"]}}"#
            ));
            let found = foreign_layers(&bytes);
            assert_eq!(found.len(), 1, "{t}");
            assert_eq!(found[0].urls.len(), 2);
        }
    }
}
