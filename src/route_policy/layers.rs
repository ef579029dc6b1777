//! Whether a client gets zstd layers as they are, or a manifest whose zstd layers are replaced
//! by layers it can read. Pure.
//!
//! The route's `layers` setting decides: `as-is` never converts, `compatible` always does, and
//! `auto` (the default) converts for clients known not to read zstd, by their User-Agent:
//!
//! | client (User-Agent) | reads OCI `+zstd` | reads Docker `.tar.zstd` | source |
//! |---|---|---|---|
//! | Docker Engine `docker/` | from 23.0 | from 23.0 (it sniffs the stream) | moby/moby#41759, Docker 23.0 release notes |
//! | containerd `containerd/` | from 1.5 | from 2.0 | containerd/containerd#4809 (1.5), #9859 (2.0) |
//! | containers/image clients: `skopeo/`, `libpod/`, `podman/`, `Buildah/`, `cri-o/`, `containers/` | from c/image 5 (skopeo 0.1.40, podman 1.6, Buildah 1.11, CRI-O 1.16) | no (c/image refuses the type in schema2: containers/image#2906) | containers/image#639 |
//! | anything else | yes | yes | — (unknown clients are assumed current) |
//!
//! A request may force either way with `X-Meta-Layers: compatible` or `as-is` (dockerd forwards
//! `X-Meta-*` headers from the CLI's `HttpHeaders`, as for `X-Meta-Platform`).

use crate::media_type::OCI_LAYER_ZSTD;

/// The Docker-flavoured zstd layer type (BuildKit 0.10–0.11; not in Distribution's spec).
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
/// The non-distributable OCI zstd type (deprecated, still seen).
pub const OCI_NONDISTRIBUTABLE_LAYER_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

/// A route's `layers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum LayersMode {
    /// Never convert.
    AsIs,
    /// Convert for clients known not to read zstd.
    #[default]
    Auto,
    /// Always convert.
    Compatible,
}

impl LayersMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "as-is" => Some(LayersMode::AsIs),
            "auto" => Some(LayersMode::Auto),
            "compatible" => Some(LayersMode::Compatible),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LayersMode::AsIs => "as-is",
            LayersMode::Auto => "auto",
            LayersMode::Compatible => "compatible",
        }
    }
}

/// Which zstd layer types a client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZstdReads {
    Neither,
    /// `application/vnd.oci.image.layer.v1.tar+zstd` only.
    OciType,
    Both,
}

impl ZstdReads {
    /// Whether a layer of `media_type` must be converted for this client.
    pub fn must_convert(self, media_type: &str) -> bool {
        let oci = media_type == OCI_LAYER_ZSTD || media_type == OCI_NONDISTRIBUTABLE_LAYER_ZSTD;
        let docker = media_type == DOCKER_LAYER_ZSTD;
        match self {
            ZstdReads::Neither => oci || docker,
            ZstdReads::OciType => docker,
            ZstdReads::Both => false,
        }
    }
}

/// Whether `media_type` is a zstd layer (either flavour).
pub fn is_zstd_layer(media_type: &str) -> bool {
    ZstdReads::Neither.must_convert(media_type)
}

/// What the request gets, and why (for `archway explain` and the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayersChoice {
    pub reads: ZstdReads,
    pub why: &'static str,
}

/// An `X-Meta-Layers` value that is neither `compatible` nor `as-is`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("X-Meta-Layers must be \"compatible\" or \"as-is\"")]
pub struct BadLayersHeader;

/// The layers a request gets: from the header when it says, else the route's mode, else (auto)
/// the User-Agent.
pub fn layers_for(
    mode: LayersMode,
    header: Option<&str>,
    user_agent: Option<&str>,
) -> Result<LayersChoice, BadLayersHeader> {
    if let Some(h) = header {
        return match h.trim().to_ascii_lowercase().as_str() {
            "compatible" => Ok(LayersChoice {
                reads: ZstdReads::Neither,
                why: "X-Meta-Layers: compatible",
            }),
            "as-is" => Ok(LayersChoice {
                reads: ZstdReads::Both,
                why: "X-Meta-Layers: as-is",
            }),
            _ => Err(BadLayersHeader),
        };
    }
    Ok(match mode {
        LayersMode::AsIs => LayersChoice {
            reads: ZstdReads::Both,
            why: "route layers = \"as-is\"",
        },
        LayersMode::Compatible => LayersChoice {
            reads: ZstdReads::Neither,
            why: "route layers = \"compatible\"",
        },
        LayersMode::Auto => {
            let (reads, why) = zstd_reads(user_agent.unwrap_or(""));
            LayersChoice { reads, why }
        }
    })
}

/// What a User-Agent's client reads, and the rule that says so.
pub fn zstd_reads(user_agent: &str) -> (ZstdReads, &'static str) {
    // Docker's own part only: the CLI's User-Agent inside `UpstreamClient(…)` may say anything.
    let own = user_agent
        .split(" UpstreamClient(")
        .next()
        .unwrap_or(user_agent);
    let first = own.split_ascii_whitespace().next().unwrap_or("");
    let Some((product, version)) = first.split_once('/') else {
        return (ZstdReads::Both, "client not known to lack zstd");
    };
    let Some(v) = Version::parse(version) else {
        return (ZstdReads::Both, "client not known to lack zstd");
    };
    let c_image = |floor: Version, name: &'static str| {
        if v < floor {
            (ZstdReads::Neither, name)
        } else {
            (
                ZstdReads::OciType,
                "containers/image reads OCI zstd, not Docker's zstd type",
            )
        }
    };
    match product {
        "docker" if v < Version(23, 0, 0) => (ZstdReads::Neither, "Docker Engine before 23.0"),
        "docker" => (ZstdReads::Both, "Docker Engine 23.0 or later"),
        "containerd" if v < Version(1, 5, 0) => (ZstdReads::Neither, "containerd before 1.5"),
        "containerd" if v < Version(2, 0, 0) => (
            ZstdReads::OciType,
            "containerd before 2.0 reads OCI zstd, not Docker's zstd type",
        ),
        "containerd" => (ZstdReads::Both, "containerd 2.0 or later"),
        "skopeo" => c_image(Version(0, 1, 40), "skopeo before 0.1.40"),
        "libpod" | "podman" => c_image(Version(1, 6, 0), "podman before 1.6"),
        "Buildah" | "buildah" => c_image(Version(1, 11, 0), "Buildah before 1.11"),
        "cri-o" => c_image(Version(1, 16, 0), "CRI-O before 1.16"),
        "containers" if own.contains("github.com/containers/image") => {
            c_image(Version(5, 0, 0), "containers/image before 5.0")
        }
        _ => (ZstdReads::Both, "client not known to lack zstd"),
    }
}

/// A version's leading `major.minor.patch` (`20.10.24+dfsg1`, `v1.6.20`, `1.6.20~ds1`,
/// `17.06.2-ee-16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Version(u32, u32, u32);

impl Version {
    fn parse(s: &str) -> Option<Version> {
        let s = s.strip_prefix('v').unwrap_or(s);
        let mut parts = s.splitn(3, '.').map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = parts.next()??;
        let minor = parts.next().flatten().unwrap_or(0);
        let patch = parts.next().flatten().unwrap_or(0);
        Some(Version(major, minor, patch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media_type::{DOCKER_LAYER_GZIP, OCI_LAYER_GZIP};

    /// Real User-Agents (captures, and the forms protocol notes give for each client).
    #[test]
    fn who_reads_zstd_by_user_agent() {
        use ZstdReads::*;
        let cases = [
            ("docker/20.10.24+dfsg1 go/go1.19.8 git-commit/5d6db84 kernel/6.18.44-fc-v657 os/linux arch/amd64 UpstreamClient(Docker-Client/20.10.24+dfsg1 \\(linux\\))", Neither),
            ("docker/17.06.2-ee-16 go/go1.8.7 git-commit/9ef4f0a os/windows arch/amd64 UpstreamClient(Docker-Client/17.06.2-ee-16 \\(windows\\))", Neither),
            ("docker/18.03.0-ce go/go1.9.4 git-commit/0520e24 os/windows arch/amd64 UpstreamClient(Docker-Client/18.03.0-ce \\(windows\\))", Neither),
            ("docker/22.06.0-beta.0 go/go1.18 os/linux arch/amd64", Neither),
            ("docker/23.0.0 go/go1.19.5 git-commit/d7573ab kernel/5.15 os/linux arch/arm64 UpstreamClient(Docker-Client/23.0.0 \\(linux\\))", Both),
            ("docker/28.2.2 go/go1.24.3 git-commit/e6534b4 kernel/6.1.0 os/linux arch/amd64", Both),
            // The CLI's part says nothing about the engine.
            ("docker/20.10.7 os/linux arch/amd64 UpstreamClient(docker/28.0.0)", Neither),
            ("containerd/1.4.13", Neither),
            ("containerd/v1.4.0-rc.1", Neither),
            ("containerd/1.5.0", OciType),
            ("containerd/1.6.20~ds1", OciType),
            ("containerd/v1.7.27", OciType),
            ("containerd/2.0.0", Both),
            ("containerd/v2.1.3", Both),
            ("skopeo/1.9.3", OciType),
            ("skopeo/0.1.37", Neither),
            ("libpod/4.3.1", OciType),
            ("libpod/1.4.4", Neither),
            ("Buildah/1.28.2", OciType),
            ("cri-o/1.28.1 go/go1.20.10 os/linux arch/arm64", OciType),
            ("cri-o/1.14.0 go/go1.12 os/linux arch/amd64", Neither),
            ("containers/5.24.2 (github.com/containers/image)", OciType),
            ("containers/4.0.1 (github.com/containers/image)", Neither),
            ("curl/8.5.0", Both),
            ("Go-http-client/1.1", Both),
            ("", Both),
            ("docker/notaversion", Both),
        ];
        for (ua, want) in cases {
            assert_eq!(zstd_reads(ua).0, want, "{ua}");
        }
    }

    #[test]
    fn which_layers_are_converted() {
        use ZstdReads::*;
        let cases = [
            (Neither, OCI_LAYER_ZSTD, true),
            (Neither, DOCKER_LAYER_ZSTD, true),
            (Neither, OCI_NONDISTRIBUTABLE_LAYER_ZSTD, true),
            (Neither, OCI_LAYER_GZIP, false),
            (Neither, DOCKER_LAYER_GZIP, false),
            (OciType, OCI_LAYER_ZSTD, false),
            (OciType, DOCKER_LAYER_ZSTD, true),
            (Both, DOCKER_LAYER_ZSTD, false),
            (Both, OCI_LAYER_ZSTD, false),
        ];
        for (reads, media_type, want) in cases {
            assert_eq!(
                reads.must_convert(media_type),
                want,
                "{reads:?} {media_type}"
            );
        }
    }

    #[test]
    fn header_then_route_then_user_agent() {
        let old = Some("docker/20.10.24 os/linux arch/amd64");
        let new = Some("containerd/2.0.0");
        let r = |mode, header, ua| layers_for(mode, header, ua).map(|c| c.reads);
        assert_eq!(r(LayersMode::Auto, None, old), Ok(ZstdReads::Neither));
        assert_eq!(r(LayersMode::Auto, None, new), Ok(ZstdReads::Both));
        assert_eq!(r(LayersMode::AsIs, None, old), Ok(ZstdReads::Both));
        assert_eq!(r(LayersMode::Compatible, None, new), Ok(ZstdReads::Neither));
        assert_eq!(
            r(LayersMode::AsIs, Some("compatible"), new),
            Ok(ZstdReads::Neither)
        );
        assert_eq!(
            r(LayersMode::Compatible, Some(" As-Is "), old),
            Ok(ZstdReads::Both)
        );
        assert_eq!(r(LayersMode::Auto, Some("gzip"), old), Err(BadLayersHeader));
        for s in ["as-is", "auto", "compatible"] {
            assert_eq!(LayersMode::parse(s).map(LayersMode::as_str), Some(s));
        }
        assert_eq!(LayersMode::parse("never"), None);
    }
}
