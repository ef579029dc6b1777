//! Pins as the proxy keeps them: the pure `PinSet` behind a lock, what it holds handed to the
//! blob store's eviction after every change, and `data_dir/pins.json` (the runtime pins and
//! what every pin was last known to hold, written through a temp file and a rename), so a
//! restart keeps holding them before their tags are asked for again.

use crate::cache::blob::DiskBudget;
use crate::config::{Config, UpstreamConfig};
use crate::digest::Digest;
use crate::image_ref::ImageRef;
use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::pin_set::{Origin, Pin, PinSet, PinSpec};
use crate::platform::Platform;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Pins at most (config and runtime together): each costs a few hundred bytes plus its digests.
pub const MAX_PINS: usize = 10_000;
/// The pins file read at start, at most (a larger one is not believed and is left alone).
const MAX_PINS_FILE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{0}")]
    Image(#[from] crate::image_ref::ImageRefError),
    #[error("platform `{0}`: {1}")]
    Platform(String, crate::platform::PlatformError),
    #[error("registry `{0}` is not a configured upstream")]
    UnknownRegistry(String),
    #[error("`{0}` names no registry and no upstream is the default")]
    NoDefault(String),
    #[error("already {MAX_PINS} pins")]
    Full,
    #[error("`{0}` is pinned in the config; remove it there")]
    InConfig(String),
}

/// One pin as listed (`GET /pins`, `archway pins`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinView {
    pub image: String,
    pub upstream: String,
    pub repository: String,
    pub reference: String,
    pub platforms: Vec<String>,
    pub origin: String,
    /// The manifest the reference resolves to, once seen.
    pub digest: Option<String>,
    pub manifests: Vec<String>,
    pub blobs: Vec<String>,
    /// Declared bytes of the manifests and blobs held.
    pub bytes: u64,
}

impl PinView {
    fn of(p: &Pin) -> PinView {
        PinView {
            image: p.spec.image.clone(),
            upstream: p.spec.upstream.clone(),
            repository: p.spec.repository.clone(),
            reference: p.spec.reference.clone(),
            platforms: p.spec.platforms.clone(),
            origin: match p.origin {
                Origin::Config => "config".into(),
                Origin::Runtime => "runtime".into(),
            },
            digest: p.root.as_ref().map(|d| d.to_string()),
            manifests: p.manifests.keys().map(|d| d.to_string()).collect(),
            blobs: p.blobs.keys().map(|d| d.to_string()).collect(),
            bytes: p.bytes(),
        }
    }
}

pub struct Pins {
    set: Mutex<PinSet>,
    disk: DiskBudget,
    file: PathBuf,
    upstreams: Vec<UpstreamConfig>,
    default_upstream: Option<usize>,
    metrics: Arc<Metrics>,
    /// `admin_pins`: whether the admin API may add and remove pins.
    pub admin_writes: bool,
}

impl Pins {
    /// The config's pins, the runtime pins of `data_dir/pins.json` and what each was last known
    /// to hold; handed to the blob store at once. Blocking (reads a small file).
    pub fn open(config: &Config, disk: DiskBudget, metrics: Arc<Metrics>) -> Pins {
        let mut pins = Pins {
            set: Mutex::new(PinSet::default()),
            disk,
            file: config.data_dir.join("pins.json"),
            upstreams: config.upstreams.clone(),
            default_upstream: config.default_upstream(),
            metrics,
            admin_writes: config.admin_pins,
        };
        let mut set = PinSet::default();
        for p in &config.pins {
            let platforms = p.platforms.iter().map(Platform::to_string).collect();
            // Validated at load: every pin resolves.
            match pins.resolve(&p.image, &p.parsed, platforms) {
                Ok(spec) => {
                    set.add(spec, Origin::Config);
                }
                Err(e) => tracing::error!(image = %p.image, error = %e, "pin not kept"),
            }
        }
        if let Some(earlier) = read_file(&pins.file) {
            for p in earlier.runtime() {
                if set.len() < MAX_PINS {
                    set.add(p.spec.clone(), Origin::Runtime);
                }
            }
            set.restore(&earlier);
        }
        tracing::info!(pins = set.len(), "pinned images");
        pins.set = Mutex::new(set);
        pins.changed(&pins.lock());
        pins
    }

    fn lock(&self) -> MutexGuard<'_, PinSet> {
        // Every change is a few map operations: a panic mid-way leaves a usable set.
        self.set.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What `image` pins (as `archway warm` takes images), resolved to its upstream.
    pub fn spec(&self, image: &str, platforms: &[String]) -> Result<PinSpec, PinError> {
        let parsed = ImageRef::parse(image)?;
        let platforms = platforms
            .iter()
            .map(|p| {
                Platform::parse(p)
                    .map(|p| p.to_string())
                    .map_err(|e| PinError::Platform(p.clone(), e))
            })
            .collect::<Result<_, _>>()?;
        self.resolve(image, &parsed, platforms)
    }

    fn resolve(
        &self,
        image: &str,
        parsed: &ImageRef,
        platforms: Vec<String>,
    ) -> Result<PinSpec, PinError> {
        let raw = parsed.repository.to_string();
        let target = crate::upstream_choice::resolve(
            &self.upstreams,
            self.default_upstream,
            &raw,
            parsed.registry.as_deref(),
            None,
        )
        .map_err(|_| match &parsed.registry {
            Some(r) => PinError::UnknownRegistry(r.clone()),
            None => PinError::NoDefault(image.to_owned()),
        })?;
        let upstream = self
            .upstreams
            .get(target.upstream)
            .map(|u| u.name.clone())
            .ok_or_else(|| PinError::NoDefault(image.to_owned()))?;
        Ok(PinSpec {
            image: image.to_owned(),
            upstream,
            repository: target.repository.to_string(),
            reference: parsed.reference.to_string(),
            platforms,
        })
    }

    /// Adds a runtime pin (kept in `pins.json`); `false` if it was pinned already (its
    /// platforms are then these).
    pub fn add(&self, spec: PinSpec) -> Result<bool, PinError> {
        let mut set = self.lock();
        if set.len() >= MAX_PINS && !set.pins().iter().any(|p| same(&p.spec, &spec)) {
            return Err(PinError::Full);
        }
        let added = set.add(spec, Origin::Runtime);
        self.changed(&set);
        Ok(added)
    }

    /// Removes a runtime pin; what it held becomes ordinary LRU content. `Ok(None)`: no such pin.
    pub fn remove(&self, spec: &PinSpec) -> Result<Option<PinView>, PinError> {
        let mut set = self.lock();
        if let Some(p) = set.pins().iter().find(|p| same(&p.spec, spec)) {
            if p.origin == Origin::Config {
                return Err(PinError::InConfig(p.spec.image.clone()));
            }
        }
        let removed = set.remove(spec).map(|p| PinView::of(&p));
        self.changed(&set);
        Ok(removed)
    }

    pub fn list(&self) -> Vec<PinView> {
        self.lock().pins().iter().map(PinView::of).collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub(crate) fn is_pinned_tag(&self, upstream: &str, repository: &str, tag: &str) -> bool {
        self.lock().is_pinned_tag(upstream, repository, tag)
    }

    pub(crate) fn holds_manifest(&self, digest: &Digest) -> bool {
        self.lock().holds_manifest(digest)
    }

    /// The pinned tag answered `digest` (stored or revalidated): its pins follow it. The
    /// change is handed on by [`Pins::seen`]'s caller through [`Pins::commit`].
    pub(crate) fn tag_resolved(
        &self,
        upstream: &str,
        repository: &str,
        tag: &str,
        digest: &Digest,
    ) -> bool {
        self.lock().tag_resolved(upstream, repository, tag, digest)
    }

    /// A held manifest passed: what it names is held too; returns the child manifests newly
    /// held and whether anything changed.
    pub(crate) fn seen(&self, m: &Manifest) -> (Vec<Digest>, bool) {
        self.lock().manifest_seen(m)
    }

    /// Hands what the pins hold to the blob store and persists them.
    pub(crate) fn commit(&self) {
        self.changed(&self.lock());
    }

    fn changed(&self, set: &PinSet) {
        let (blobs, manifests) = set.held();
        // A pinned tag's record too: without it the tag could not be answered offline.
        let tags: Vec<String> = set
            .pins()
            .iter()
            .filter(|p| p.spec.reference.parse::<crate::digest::Digest>().is_err())
            .map(|p| {
                crate::cache::tag_store::file_name(&crate::cache::tag_store::TagKey {
                    upstream: p.spec.upstream.clone(),
                    repository: p.spec.repository.clone(),
                    tag: p.spec.reference.clone(),
                })
            })
            .collect();
        self.disk.set_kept(&blobs, &manifests, &tags);
        self.metrics.set_pins(set.len());
        if let Err(e) = write_file(&self.file, set) {
            tracing::error!(file = %self.file.display(), error = %e, "cannot persist the pins");
        }
    }
}

fn same(a: &PinSpec, b: &PinSpec) -> bool {
    a.upstream == b.upstream && a.repository == b.repository && a.reference == b.reference
}

fn read_file(path: &std::path::Path) -> Option<PinSet> {
    let len = std::fs::metadata(path).ok()?.len();
    if len > MAX_PINS_FILE {
        tracing::warn!(file = %path.display(), len, "pins file too large; not read");
        return None;
    }
    let raw = std::fs::read(path).ok()?;
    match serde_json::from_slice(&raw) {
        Ok(set) => Some(set),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "pins file unreadable; runtime pins lost");
            None
        }
    }
}

/// Whole or not at all: a temp file beside it, synced, renamed over it.
fn write_file(path: &std::path::Path, set: &PinSet) -> std::io::Result<()> {
    use std::io::Write;
    let json = serde_json::to_vec_pretty(set).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
