//! containerd's `platforms.Only`: which platforms a host can run, best first.

use super::windows::{self, WindowsMatch, WindowsRank, WindowsVersion};
use super::Platform;

/// Ranks candidate platforms for one wanted platform. Built by [`Matcher::only`] (with
/// containerd's fallbacks) or [`Matcher::strict`] (exact platform only).
#[derive(Debug, Clone)]
pub struct Matcher {
    target: Platform,
    fallbacks: Vec<Platform>,
    windows_version: Option<WindowsVersion>,
    windows_mode: WindowsMatch,
}

/// How well a candidate fits; lower is better. Ordered by position in the fallback list first,
/// then (Windows) by build and revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    fallback: usize,
    windows: WindowsRank,
}

impl Rank {
    /// 0 for the wanted platform itself, higher for each step down the fallback list.
    pub fn fallback(&self) -> usize {
        self.fallback
    }

    /// True when a Windows image of an older build was accepted (Hyper-V isolation).
    pub fn is_older_windows_build(&self) -> bool {
        self.windows.class == windows::WindowsClass::OlderBuild
    }

    /// True when a Windows image without `os.version` was accepted.
    pub fn is_unversioned_windows(&self) -> bool {
        self.windows.class == windows::WindowsClass::Unversioned
    }
}

impl Matcher {
    /// The wanted platform and what it can also run, in containerd's order: `amd64/vN` → lower
    /// `vN` → `386`; `arm/vN` → down to `v5`; `arm64` → `arm/v8 … v5`; `arm64/v9.x` →
    /// `v9.(x-1) … v9`, `v8.(x+5) … v8`, then `arm`.
    ///
    /// Windows: the wanted `os.version` is the host's; see [`WindowsMatch`]. A wanted Windows
    /// platform without a version accepts every build and prefers the newest. An unparsable
    /// wanted version counts as none (as in containerd).
    pub fn only(target: &Platform, windows_mode: WindowsMatch) -> Matcher {
        let target = target.clone().normalize();
        let fallbacks = fallback_vector(&target);
        Self::with_fallbacks(target, fallbacks, windows_mode)
    }

    /// containerd's `OnlyStrict`: the wanted platform only, no fallbacks.
    pub fn strict(target: &Platform, windows_mode: WindowsMatch) -> Matcher {
        let target = target.clone().normalize();
        let fallbacks = vec![target.clone()];
        Self::with_fallbacks(target, fallbacks, windows_mode)
    }

    fn with_fallbacks(
        target: Platform,
        fallbacks: Vec<Platform>,
        windows_mode: WindowsMatch,
    ) -> Matcher {
        let windows_version = if target.is_windows() {
            target.os_version.as_deref().and_then(WindowsVersion::parse)
        } else {
            None
        };
        Matcher {
            target,
            fallbacks,
            windows_version,
            windows_mode,
        }
    }

    pub fn target(&self) -> &Platform {
        &self.target
    }

    /// The host's Windows version, when one is wanted and parses.
    pub fn windows_version(&self) -> Option<&WindowsVersion> {
        self.windows_version.as_ref()
    }

    /// The platforms accepted, best first (OS version and features as wanted).
    pub fn fallbacks(&self) -> &[Platform] {
        &self.fallbacks
    }

    pub fn matches(&self, candidate: &Platform) -> bool {
        self.rank(candidate).is_some()
    }

    /// `None` when the candidate cannot run here.
    pub fn rank(&self, candidate: &Platform) -> Option<Rank> {
        let c = candidate.clone().normalize();
        let fallback = self.fallbacks.iter().position(|m| {
            m.os == c.os
                && m.architecture == c.architecture
                && m.variant == c.variant
                && features_subset(&c.os_features, &m.os_features, m.is_windows())
        })?;
        let windows = if c.is_windows() {
            windows::rank(
                self.windows_version.as_ref(),
                c.os_version.as_deref(),
                self.windows_mode,
            )?
        } else {
            WindowsRank::default()
        };
        Some(Rank { fallback, windows })
    }
}

/// containerd accepts an image whose `os.features` the host has. Every Windows host with
/// `user32.dll` reports `win32k` (containerd's `DefaultSpec` on Windows), so a wanted Windows
/// platform has it even when config does not say so.
fn features_subset(offered: &[String], host: &[String], windows: bool) -> bool {
    offered
        .iter()
        .all(|f| host.contains(f) || (windows && f == "win32k"))
}

/// The highest variant level the fallback list steps down from. Real variants are small (amd64
/// v1–v4, arm v5–v8, arm64 v8.0–v9.5); a higher one (a client's `X-Meta-Platform:
/// linux/arm64/v9.4000000000`) falls back as if it were this level, instead of listing billions
/// of platforms.
const MAX_VARIANT_LEVEL: u32 = 32;

/// containerd/platforms `compare.go` `platformVector`, on a normalised platform, with variant
/// levels capped at [`MAX_VARIANT_LEVEL`].
fn fallback_vector(p: &Platform) -> Vec<Platform> {
    let with = |arch: &str, variant: Option<String>| {
        Platform {
            os: p.os.clone(),
            architecture: arch.to_owned(),
            variant,
            os_version: p.os_version.clone(),
            os_features: p.os_features.clone(),
        }
        .normalize()
    };
    let mut vector = vec![p.clone()];
    let variant = p.variant.clone().unwrap_or_default();
    match p.architecture.as_str() {
        "amd64" => {
            if let Some(n) = version_number(&variant).filter(|n| *n > 1) {
                for lower in (1..n.min(MAX_VARIANT_LEVEL)).rev() {
                    vector.push(with("amd64", Some(format!("v{lower}"))));
                }
            }
            vector.push(with("386", None));
        }
        "arm" => {
            if let Some(n) = version_number(&variant).filter(|n| *n > 5) {
                for lower in (5..n.min(MAX_VARIANT_LEVEL)).rev() {
                    vector.push(with("arm", Some(format!("v{lower}"))));
                }
            }
        }
        "arm64" => {
            let variant = if variant.is_empty() {
                "v8".to_owned()
            } else {
                variant
            };
            let (major_part, minor_part) = match variant.split_once('.') {
                Some((major, minor)) => (major, Some(minor)),
                None => (variant.as_str(), None),
            };
            if let Some(mut major) = version_number(major_part).filter(|m| *m >= 8) {
                let mut minor = minor_part
                    .and_then(|m| m.parse::<u32>().ok())
                    .unwrap_or(0)
                    .min(MAX_VARIANT_LEVEL);
                let arm64_variant = |major: u32, minor: u32| {
                    if minor == 0 {
                        format!("v{major}")
                    } else {
                        format!("v{major}.{minor}")
                    }
                };
                if major == 9 {
                    for m in (0..minor).rev() {
                        vector.push(with("arm64", Some(arm64_variant(9, m))));
                    }
                    // v9.0 diverged from v8.5: v9.x runs v8.(x+5).
                    minor += 5;
                    major = 8;
                    vector.push(with("arm64", Some(format!("v8.{minor}"))));
                }
                for m in (0..minor).rev() {
                    vector.push(with("arm64", Some(arm64_variant(major, m))));
                }
            }
            let arm_variant = if variant.starts_with("v8.") || variant.starts_with("v9.") {
                "v8".to_owned()
            } else {
                variant
            };
            vector.extend(fallback_vector(&with("arm", Some(arm_variant))));
        }
        _ => {}
    }
    vector
}

/// `v7` → 7, `7` → 7 (containerd trims one leading `v`).
fn version_number(variant: &str) -> Option<u32> {
    variant.strip_prefix('v').unwrap_or(variant).parse().ok()
}
