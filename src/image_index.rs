//! Image indexes (OCI image index, Docker manifest list) and choosing the child manifest that
//! fits a platform, by containerd's rules.
//!
//! Pure: the caller fetches bytes. When the chosen child is itself an index, the caller fetches
//! it and selects again, at most [`MAX_INDEX_DEPTH`] levels deep.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{ErrorCode, ProxyError};
use crate::media_type;
use crate::platform::{Matcher, Platform, Rank, WindowsMatch};

/// How many index levels a caller follows before giving up (top level counts as 1).
pub const MAX_INDEX_DEPTH: usize = 4;

/// The annotation buildx puts on attestation manifests.
pub const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";

/// A child of an index: what the caller needs to fetch and serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildDescriptor {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// As the index wrote it (not normalised); `None` when the entry names no platform.
    pub platform: Option<Platform>,
}

impl ChildDescriptor {
    /// True when the child is itself an index: fetch it and select again.
    pub fn is_index(&self) -> bool {
        media_type::is_index(&self.media_type)
    }
}

/// One entry of an index with what decides whether it is a candidate at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub descriptor: ChildDescriptor,
    pub annotations: BTreeMap<String, String>,
    pub artifact_type: Option<String>,
}

/// Why an entry is never selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// `unknown/unknown` platform or a `vnd.docker.reference.type` annotation (buildx
    /// provenance / SBOM).
    Attestation,
    /// Not a manifest or index media type (e.g. a layer).
    NotAManifest,
    /// An artifact (`artifactType` set: SBOM, signature, Helm chart…), never a runnable image.
    Artifact,
}

impl IndexEntry {
    pub fn skip_reason(&self) -> Option<SkipReason> {
        if self.annotations.contains_key(REFERENCE_TYPE_ANNOTATION)
            || self
                .descriptor
                .platform
                .as_ref()
                .is_some_and(Platform::is_unknown)
        {
            return Some(SkipReason::Attestation);
        }
        if !is_manifest_type(&self.descriptor.media_type) {
            return Some(SkipReason::NotAManifest);
        }
        if self.artifact_type.is_some() {
            return Some(SkipReason::Artifact);
        }
        None
    }
}

fn is_manifest_type(t: &str) -> bool {
    matches!(
        t,
        media_type::OCI_MANIFEST
            | media_type::OCI_INDEX
            | media_type::DOCKER_MANIFEST
            | media_type::DOCKER_MANIFEST_LIST
            | media_type::DOCKER_SCHEMA1
            | media_type::DOCKER_SCHEMA1_SIGNED
    )
}

/// A parsed index. Unknown fields are ignored; structurally wrong JSON is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageIndex {
    pub media_type: Option<String>,
    pub entries: Vec<IndexEntry>,
}

/// The chosen child and a sentence saying why (for logs and `archway explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub child: ChildDescriptor,
    /// Position of the child in the index, from 0.
    pub position: usize,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("malformed image index: {0}")]
    Malformed(String),
    #[error("not an image index (media type {0})")]
    NotAnIndex(String),
    #[error("{}", no_match_message(wanted, offered))]
    NoMatch {
        /// Boxed to keep the error small.
        wanted: Box<Platform>,
        /// The platforms of the candidate entries, as the index wrote them, duplicates removed.
        offered: Vec<Platform>,
    },
}

fn no_match_message(wanted: &Platform, offered: &[Platform]) -> String {
    if offered.is_empty() {
        return format!("no image for {wanted}: the index offers no platform images");
    }
    let list: Vec<String> = offered.iter().map(Platform::to_string).collect();
    format!(
        "no image for {wanted}: the index offers {}",
        list.join(", ")
    )
}

/// A selection failure at the proxy boundary: no match is the client's 404 `MANIFEST_UNKNOWN`
/// (with the list of what exists); a broken index is upstream's fault.
impl From<SelectError> for ProxyError {
    fn from(e: SelectError) -> Self {
        match e {
            SelectError::NoMatch { .. } => {
                ProxyError::downstream(ErrorCode::ManifestUnknown, e.to_string())
            }
            SelectError::Malformed(_) | SelectError::NotAnIndex(_) => {
                ProxyError::bad_gateway(format!("upstream sent a {e}"))
            }
        }
    }
}

// === serde shapes ===

#[derive(Deserialize)]
struct RawIndex {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<RawPlatform>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(rename = "artifactType", default)]
    artifact_type: Option<String>,
}

#[derive(Deserialize)]
struct RawPlatform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(rename = "os.version", default)]
    os_version: Option<String>,
    #[serde(rename = "os.features", default)]
    os_features: Option<Vec<String>>,
    #[serde(default)]
    variant: Option<String>,
}

impl ImageIndex {
    pub fn parse(bytes: &[u8]) -> Result<ImageIndex, SelectError> {
        let malformed = |e: serde_json::Error| SelectError::Malformed(e.to_string());
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(malformed)?;
        // serde would also read a struct from a JSON array; an index and its entries are objects.
        let objects = value.as_object().is_some_and(|o| match o.get("manifests") {
            Some(serde_json::Value::Array(entries)) => entries.iter().all(|e| e.is_object()),
            _ => true,
        });
        if !objects {
            return Err(SelectError::Malformed(
                "the index and its entries must be JSON objects".into(),
            ));
        }
        let raw: RawIndex = serde_json::from_value(value).map_err(malformed)?;
        if let Some(t) = raw.media_type.as_deref() {
            if !media_type::is_index(t) {
                return Err(SelectError::NotAnIndex(t.to_owned()));
            }
        }
        let Some(manifests) = raw.manifests else {
            return Err(SelectError::NotAnIndex(
                raw.media_type
                    .unwrap_or_else(|| "none, no \"manifests\"".into()),
            ));
        };
        let entries = manifests
            .into_iter()
            .enumerate()
            .map(|(i, d)| entry(i, d))
            .collect::<Result<_, _>>()?;
        Ok(ImageIndex {
            media_type: raw.media_type,
            entries,
        })
    }

    /// The candidates' platforms as written, in index order, duplicates removed.
    pub fn offered(&self) -> Vec<Platform> {
        let mut out: Vec<Platform> = Vec::new();
        for e in self.entries.iter().filter(|e| e.skip_reason().is_none()) {
            if let Some(p) = &e.descriptor.platform {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
        }
        out
    }

    /// The best candidate for `wanted`: lowest rank (containerd's fallback order, then Windows
    /// build/revision); equal ranks keep index order ("the first matching entry SHOULD be
    /// used"). Entries without a platform come after every matching one, as in containerd;
    /// containerd then checks such a child's config, so a caller that serves one unverified
    /// (`child.platform == None`) should know it may be for another platform.
    pub fn select(
        &self,
        wanted: &Platform,
        windows: WindowsMatch,
    ) -> Result<Selection, SelectError> {
        let matcher = Matcher::only(wanted, windows);
        // (has no platform, rank): lower is better.
        type Key = (bool, Option<Rank>);
        let mut best: Option<(Key, usize, &IndexEntry)> = None;
        for (i, e) in self.entries.iter().enumerate() {
            if e.skip_reason().is_some() {
                continue;
            }
            let key = match &e.descriptor.platform {
                Some(p) => match matcher.rank(p) {
                    Some(rank) => (false, Some(rank)),
                    None => continue,
                },
                None => (true, None),
            };
            if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
                best = Some((key, i, e));
            }
        }
        let Some(((_, rank), position, entry)) = best else {
            return Err(SelectError::NoMatch {
                wanted: Box::new(matcher.target().clone()),
                offered: self.offered(),
            });
        };
        let child = entry.descriptor.clone();
        let reason = reason(&matcher, &child, rank, position, self.entries.len());
        Ok(Selection {
            child,
            position,
            reason,
        })
    }
}

/// Parses `index` and selects the child for `wanted`. See [`ImageIndex::select`].
pub fn select_child(
    index: &[u8],
    wanted: &Platform,
    windows: WindowsMatch,
) -> Result<Selection, SelectError> {
    ImageIndex::parse(index)?.select(wanted, windows)
}

fn entry(i: usize, d: RawDescriptor) -> Result<IndexEntry, SelectError> {
    let digest: Digest = d.digest.parse().map_err(|e| {
        SelectError::Malformed(format!("entry {}: digest {:?}: {e}", i + 1, d.digest))
    })?;
    let platform = d.platform.and_then(|p| {
        if p.os.is_empty() && p.architecture.is_empty() {
            return None;
        }
        Some(Platform {
            os: p.os,
            architecture: p.architecture,
            variant: p.variant.filter(|v| !v.is_empty()),
            os_version: p.os_version.filter(|v| !v.is_empty()),
            os_features: p.os_features.unwrap_or_default(),
        })
    });
    let annotations = d
        .annotations
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect();
    Ok(IndexEntry {
        descriptor: ChildDescriptor {
            digest,
            media_type: d.media_type.unwrap_or_default(),
            size: d.size,
            platform,
        },
        annotations,
        artifact_type: d.artifact_type,
    })
}

fn reason(
    matcher: &Matcher,
    child: &ChildDescriptor,
    rank: Option<Rank>,
    position: usize,
    entries: usize,
) -> String {
    let wanted = matcher.target();
    let mut s = format!("entry {} of {entries}", position + 1);
    let Some(rank) = rank else {
        let _ = write!(
            s,
            " names no platform, and no entry names one {wanted} can run: it is the last resort"
        );
        return s;
    };
    let platform = child
        .platform
        .as_ref()
        .map(Platform::to_string)
        .unwrap_or_default();
    let _ = write!(s, ", {platform},");
    if rank.fallback() == 0 {
        let _ = write!(s, " matches {wanted}");
    } else {
        let _ = write!(
            s,
            " is the best {wanted} can run (fallback {} of its list; nothing closer is offered)",
            rank.fallback()
        );
    }
    if child.platform.as_ref().is_some_and(Platform::is_windows) {
        if rank.is_unversioned_windows() {
            s.push_str("; it names no os.version, so it comes after every versioned image");
        } else if rank.is_older_windows_build() {
            s.push_str("; an older build, accepted for Hyper-V isolation because none of the host's build is offered");
        } else if matcher.windows_version().is_some() {
            s.push_str("; same build, highest revision");
        } else {
            s.push_str("; no build wanted, so the newest build and revision");
        }
    }
    s
}

#[cfg(test)]
mod tests;
