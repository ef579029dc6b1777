//! Windows `os.version` (`10.0.<build>.<revision>`) and which image builds a host can run.
//!
//! Process isolation needs the host's major.minor.build; among images of that build the highest
//! revision (the newest monthly patch) is preferred. Revisions compare as numbers: containerd 2.x
//! compares the strings, so there `.999` beats `.1000`.

use std::cmp::Reverse;

/// Known Windows Server LTSC builds.
pub const BUILD_2016: u32 = 14393;
pub const BUILD_2019: u32 = 17763;
pub const BUILD_2022: u32 = 20348;
pub const BUILD_2025: u32 = 26100;

/// How strictly a Windows host's build must match an image's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WindowsMatch {
    /// Process isolation: the same major.minor.build only.
    #[default]
    Process,
    /// Hyper-V isolation: the same build first; failing that, the newest build not above the
    /// host's.
    Hyperv,
}

/// A parsed `major.minor.build[.revision]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowsVersion {
    pub major: u32,
    pub minor: u32,
    pub build: u32,
    pub revision: Option<u64>,
}

impl WindowsVersion {
    /// `10.0.17763` or `10.0.17763.5329`; anything else is `None`.
    pub fn parse(s: &str) -> Option<WindowsVersion> {
        let mut parts = s.split('.');
        let num = |p: Option<&str>| -> Option<u64> {
            let p = p?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let major = u32::try_from(num(parts.next())?).ok()?;
        let minor = u32::try_from(num(parts.next())?).ok()?;
        let build = u32::try_from(num(parts.next())?).ok()?;
        let revision = match parts.next() {
            Some(p) => Some(num(Some(p))?),
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(WindowsVersion {
            major,
            minor,
            build,
            revision,
        })
    }

    /// The Windows Server release name of a build, for messages.
    pub fn release_name(&self) -> Option<&'static str> {
        match self.build {
            BUILD_2016 => Some("Windows Server 2016"),
            BUILD_2019 => Some("Windows Server 2019"),
            BUILD_2022 => Some("Windows Server 2022"),
            BUILD_2025 => Some("Windows Server 2025"),
            _ => None,
        }
    }
}

/// How well a Windows image's `os.version` fits the wanted one; lower is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct WindowsRank {
    pub(crate) class: WindowsClass,
    build: Reverse<u32>,
    revision: Reverse<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) enum WindowsClass {
    /// Same build as wanted (or any versioned image when no version is wanted).
    #[default]
    SameBuild,
    /// An older build accepted under Hyper-V isolation.
    OlderBuild,
    /// A version that does not parse, accepted only when no version is wanted.
    Unparsed,
    /// The image names no version: containerd accepts it, archway ranks it last.
    Unversioned,
}

/// `wanted`: the host's version (`None`: any build will do, the newest wins). `offered`: the
/// image's `os.version`. `None` when the image cannot run on the host.
pub(crate) fn rank(
    wanted: Option<&WindowsVersion>,
    offered: Option<&str>,
    mode: WindowsMatch,
) -> Option<WindowsRank> {
    let Some(offered) = offered.filter(|v| !v.is_empty()) else {
        return Some(WindowsRank {
            class: WindowsClass::Unversioned,
            ..WindowsRank::default()
        });
    };
    let parsed = WindowsVersion::parse(offered);
    let Some(wanted) = wanted else {
        return Some(match parsed {
            Some(v) => WindowsRank {
                class: WindowsClass::SameBuild,
                build: Reverse(v.build),
                revision: Reverse(v.revision.unwrap_or(0)),
            },
            None => WindowsRank {
                class: WindowsClass::Unparsed,
                ..WindowsRank::default()
            },
        });
    };
    let v = parsed?;
    if v.major != wanted.major || v.minor != wanted.minor {
        return None;
    }
    let class = if v.build == wanted.build {
        WindowsClass::SameBuild
    } else if mode == WindowsMatch::Hyperv && v.build < wanted.build {
        WindowsClass::OlderBuild
    } else {
        return None;
    };
    Some(WindowsRank {
        class,
        build: Reverse(v.build),
        revision: Reverse(v.revision.unwrap_or(0)),
    })
}
