//! Pins: images whose manifests and blobs the cache never evicts. Pure: the set of pins, the
//! digests each holds, and how they change as manifests pass through the cache; the proxy feeds
//! it (`proxy/pins.rs`) and hands what it holds to the blob store's eviction.
//!
//! A pin is filled as its manifests pass through: the tag's answer (or the digest pinned) is its
//! root; a held index holds the children its platforms select (every runnable one by default,
//! indexes nested in it too); a held image manifest holds its config and layers. When the tag
//! answers another digest, the pin follows it: it holds the new root only (its children are
//! added as they pass through) and what only the old one named is released to the LRU.

use crate::digest::Digest;
use crate::image_index::ImageIndex;
use crate::manifest::Manifest;
use crate::media_type;
use crate::platform::{Matcher, Platform, WindowsMatch};
use crate::reference::Reference;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

/// What one pin names: the image as written, and where it resolves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinSpec {
    /// As written (config, admin API), for listings and removal.
    pub image: String,
    /// The configured upstream's name.
    pub upstream: String,
    /// The repository as upstream is asked for it (`library/alpine`).
    pub repository: String,
    /// A tag or a digest.
    pub reference: String,
    /// Of an index; empty: every runnable platform.
    #[serde(default)]
    pub platforms: Vec<String>,
}

impl PinSpec {
    /// Two specs pin the same thing when they resolve alike (`alpine` and
    /// `docker.io/library/alpine:latest`).
    fn same_target(&self, other: &PinSpec) -> bool {
        self.upstream == other.upstream
            && self.repository == other.repository
            && self.reference == other.reference
    }

    fn digest(&self) -> Option<Digest> {
        match Reference::parse(&self.reference) {
            Ok(Reference::Digest(d)) => Some(d),
            _ => None,
        }
    }
}

/// Where a pin came from: the config's are re-read at each start; runtime ones are persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Config,
    Runtime,
}

/// One pin and what it holds now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub spec: PinSpec,
    pub origin: Origin,
    /// The manifest the reference resolves to: the digest pinned, or the tag's last answer.
    pub root: Option<Digest>,
    /// Manifests held (the root and the children selected), with their sizes once seen.
    pub manifests: BTreeMap<Digest, u64>,
    /// Configs and layers the held image manifests name, with their declared sizes.
    pub blobs: BTreeMap<Digest, u64>,
}

impl Pin {
    fn new(spec: PinSpec, origin: Origin) -> Pin {
        let mut pin = Pin {
            root: None,
            spec,
            origin,
            manifests: BTreeMap::new(),
            blobs: BTreeMap::new(),
        };
        if let Some(d) = pin.spec.digest() {
            pin.follow(d);
        }
        pin
    }

    /// Holds `root` alone: what the old root named is let go.
    fn follow(&mut self, root: Digest) {
        self.manifests.clear();
        self.blobs.clear();
        self.manifests.insert(root.clone(), 0);
        self.root = Some(root);
    }

    /// Declared bytes of what the pin holds (manifests seen and blobs named).
    pub fn bytes(&self) -> u64 {
        self.manifests
            .values()
            .chain(self.blobs.values())
            .fold(0u64, |a, b| a.saturating_add(*b))
    }

    fn platforms(&self) -> Vec<Platform> {
        self.spec
            .platforms
            .iter()
            .filter_map(|p| Platform::parse(p).ok())
            .collect()
    }
}

/// Every pin. Small: pins are a handful to a few thousand images.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub struct PinSet {
    pins: Vec<Pin>,
    /// What every request asks (is this tag pinned, is this manifest held) answered without a
    /// walk over the pins: the pinned tags' hashes and the held manifests, rebuilt after each
    /// change.
    tag_hashes: HashSet<u64>,
    held_manifests: HashSet<Digest>,
}

/// A pin set as written (`data_dir/pins.json`): the pins alone.
#[derive(Serialize, Deserialize)]
struct Stored {
    pins: Vec<Pin>,
}

impl From<Stored> for PinSet {
    fn from(s: Stored) -> PinSet {
        let mut set = PinSet {
            pins: s.pins,
            ..PinSet::default()
        };
        set.reindex();
        set
    }
}

impl From<PinSet> for Stored {
    fn from(s: PinSet) -> Stored {
        Stored { pins: s.pins }
    }
}

fn tag_hash(upstream: &str, repository: &str, tag: &str) -> u64 {
    let mut h = DefaultHasher::new();
    (upstream, repository, tag).hash(&mut h);
    h.finish()
}

impl PinSet {
    pub fn pins(&self) -> &[Pin] {
        &self.pins
    }

    fn reindex(&mut self) {
        self.tag_hashes = self
            .pins
            .iter()
            .map(|p| tag_hash(&p.spec.upstream, &p.spec.repository, &p.spec.reference))
            .collect();
        self.held_manifests = self
            .pins
            .iter()
            .flat_map(|p| p.manifests.keys().cloned())
            .collect();
    }

    pub fn len(&self) -> usize {
        self.pins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }

    /// Adds a pin; `false` if one of the same target is there already (its platforms are
    /// then replaced by these, and a config pin stays a config pin).
    pub fn add(&mut self, spec: PinSpec, origin: Origin) -> bool {
        if let Some(p) = self.pins.iter_mut().find(|p| p.spec.same_target(&spec)) {
            if p.spec.platforms != spec.platforms {
                p.spec.platforms = spec.platforms;
                // Children are chosen again as they pass through.
                if let Some(root) = p.root.clone() {
                    p.follow(root);
                }
            }
            if origin == Origin::Config {
                p.origin = Origin::Config;
            }
            self.reindex();
            return false;
        }
        self.pins.push(Pin::new(spec, origin));
        self.reindex();
        true
    }

    /// Removes the pin of `spec`'s target; what it held is released (unless another holds it).
    pub fn remove(&mut self, spec: &PinSpec) -> Option<Pin> {
        let i = self.pins.iter().position(|p| p.spec.same_target(spec))?;
        let removed = self.pins.remove(i);
        self.reindex();
        Some(removed)
    }

    /// Keeps what was known of each pin in `earlier` (roots, held digests) for the pins of
    /// the same target here: a restart does not wait for the tags to pass through again.
    pub fn restore(&mut self, earlier: &PinSet) {
        for p in &mut self.pins {
            if let Some(e) = earlier.pins.iter().find(|e| e.spec.same_target(&p.spec)) {
                if e.spec.platforms == p.spec.platforms && (p.root.is_none() || p.root == e.root) {
                    p.root = e.root.clone();
                    p.manifests = e.manifests.clone();
                    p.blobs = e.blobs.clone();
                }
            }
        }
        self.reindex();
    }

    /// The runtime pins (what is persisted besides the config).
    pub fn runtime(&self) -> impl Iterator<Item = &Pin> {
        self.pins.iter().filter(|p| p.origin == Origin::Runtime)
    }

    /// The pins whose reference is this tag.
    pub fn is_pinned_tag(&self, upstream: &str, repository: &str, tag: &str) -> bool {
        // Most requests are for tags nobody pinned: one hash answers them.
        self.tag_hashes
            .contains(&tag_hash(upstream, repository, tag))
            && self.pins.iter().any(|p| {
                p.spec.upstream == upstream
                    && p.spec.repository == repository
                    && p.spec.reference == tag
            })
    }

    /// The tag answered `digest`: its pins follow it. `true` if any changed.
    pub fn tag_resolved(
        &mut self,
        upstream: &str,
        repository: &str,
        tag: &str,
        digest: &Digest,
    ) -> bool {
        let mut changed = false;
        for p in &mut self.pins {
            let this = p.spec.upstream == upstream
                && p.spec.repository == repository
                && p.spec.reference == tag;
            if this && p.root.as_ref() != Some(digest) {
                p.follow(digest.clone());
                changed = true;
            }
        }
        if changed {
            self.reindex();
        }
        changed
    }

    /// Whether a pin holds this manifest.
    pub fn holds_manifest(&self, digest: &Digest) -> bool {
        self.held_manifests.contains(digest)
    }

    /// A manifest passed through: each pin holding it records what it names (an index's
    /// selected children, an image's config and layers). Returns the child manifests newly
    /// held (for the caller to look at if cached) and whether anything changed.
    pub fn manifest_seen(&mut self, m: &Manifest) -> (Vec<Digest>, bool) {
        let mut children = BTreeSet::new();
        let mut changed = false;
        for p in &mut self.pins {
            let Some(size) = p.manifests.get_mut(&m.digest) else {
                continue;
            };
            // Seen before (its size known): what it names is held already.
            if *size == m.bytes.len() as u64 {
                continue;
            }
            *size = m.bytes.len() as u64;
            changed = true;
            if media_type::is_index(&m.media_type) {
                let Ok(index) = ImageIndex::parse(&m.bytes) else {
                    continue;
                };
                let wanted = p.platforms();
                for entry in &index.entries {
                    let d = &entry.descriptor;
                    if entry.skip_reason().is_some() {
                        continue;
                    }
                    let chosen = d.is_index()
                        || wanted.is_empty()
                        || d.platform.as_ref().is_some_and(|have| {
                            wanted
                                .iter()
                                .any(|w| Matcher::strict(w, WindowsMatch::Process).matches(have))
                        });
                    if chosen && !p.manifests.contains_key(&d.digest) {
                        p.manifests.insert(d.digest.clone(), 0);
                        children.insert(d.digest.clone());
                        changed = true;
                    }
                }
            } else {
                for (d, size) in image_blobs(&m.bytes) {
                    if p.blobs.insert(d, size).is_none() {
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.reindex();
        }
        (children.into_iter().collect(), changed)
    }

    /// Everything the pins hold: (blobs, manifests), each once.
    pub fn held(&self) -> (Vec<Digest>, Vec<Digest>) {
        let blobs: BTreeSet<&Digest> = self.pins.iter().flat_map(|p| p.blobs.keys()).collect();
        let manifests: BTreeSet<&Digest> =
            self.pins.iter().flat_map(|p| p.manifests.keys()).collect();
        (
            blobs.into_iter().cloned().collect(),
            manifests.into_iter().cloned().collect(),
        )
    }
}

/// The config and layers an image manifest names (none when it is not JSON).
fn image_blobs(bytes: &[u8]) -> Vec<(Digest, u64)> {
    crate::manifest::named_blobs(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests;
