//! Pins as the proxy keeps them: the pure `PinSet` behind a lock, what it holds handed to the
//! blob store's eviction after every change, and `data_dir/pins.json` (the runtime pins and
//! what every pin was last known to hold, written through a temp file and a rename), so a
//! restart keeps holding them before their tags are asked for again.
//!
//! With `[storage]`, what the pins hold is copied under the bucket's `pins/` prefix, which the
//! documented lifecycle rules do not expire (docs/fleet.md, "Pins in the bucket"); with
//! `[fleet]`, the runtime pins are one sealed record there, adopted by every replica.

use crate::cache::blob::{DiskBudget, Kept};
use crate::cache::bucket::Bucket;
use crate::config::{Config, UpstreamConfig};
use crate::digest::Digest;
use crate::image_ref::ImageRef;
use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::pin_set::{Origin, Pin, PinSet, PinSpec};
use crate::platform::Platform;
use object_store::{PutMode, UpdateVersion};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, PoisonError};

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
    #[error("already cache.max_pins ({0}) pins")]
    Full(usize),
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
    /// `[storage]`: pinned objects are copied under `pins/` (which the lifecycle rules leave
    /// alone) and, with `[fleet]`, the runtime pins are one sealed record the replicas share.
    bucket: Option<Arc<Bucket>>,
    /// What this replica knows is copied under `pins/`: (manifest?, digest).
    copied: Mutex<HashSet<(bool, Digest)>>,
    /// What this replica's pins let go since the last sync: their `pins/` copies are deleted
    /// then, unless held again.
    released: Mutex<HashSet<(bool, Digest)>>,
    /// The digests held at the last change, to tell what was released.
    last_held: Mutex<HashSet<(bool, Digest)>>,
    /// The blob store's budget, once open (it opens knowing what the pins hold: `kept`).
    disk: std::sync::OnceLock<DiskBudget>,
    file: PathBuf,
    /// Writes of `file` handed out, and the last one done.
    writes: std::sync::atomic::AtomicU64,
    written: Arc<Mutex<Option<u64>>>,
    upstreams: Vec<UpstreamConfig>,
    default_upstream: Option<usize>,
    metrics: Arc<Metrics>,
    /// `cache.max_pins`.
    max_pins: usize,
    /// `storage.pin_sync_interval`.
    sync_interval: std::time::Duration,
    /// `admin_pins`: whether the admin API may add and remove pins.
    pub admin_writes: bool,
}

impl Pins {
    /// The config's pins, the runtime pins of `data_dir/pins.json` and what each was last known
    /// to hold. Blocking (reads a small file). Open the blob store with [`Pins::kept`], then
    /// [`Pins::attach`] it.
    pub fn open(config: &Config, metrics: Arc<Metrics>) -> Pins {
        let mut pins = Pins {
            set: Mutex::new(PinSet::default()),
            bucket: None,
            copied: Mutex::new(HashSet::new()),
            released: Mutex::new(HashSet::new()),
            last_held: Mutex::new(HashSet::new()),
            disk: std::sync::OnceLock::new(),
            file: config.data_dir.join("pins.json"),
            writes: std::sync::atomic::AtomicU64::new(0),
            written: Arc::new(Mutex::new(None)),
            upstreams: config.upstreams.clone(),
            default_upstream: config.default_upstream(),
            metrics,
            max_pins: config.cache.max_pins,
            sync_interval: config
                .storage
                .as_ref()
                .map_or(crate::config::keys::STORAGE_PIN_SYNC_INTERVAL, |s| {
                    s.pin_sync_interval
                }),
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
                if set.len() < pins.max_pins {
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

    /// What the pins hold now.
    pub fn kept(&self) -> Kept {
        kept_of(&self.lock())
    }

    /// Hands what the pins hold to the blob store from now on.
    pub fn attach(&self, disk: DiskBudget) {
        let _ = self.disk.set(disk);
        self.changed(&self.lock());
    }

    /// With the bucket behind the cache: pinned objects are kept under `pins/` there, and the
    /// runtime pins shared (`[fleet]`'s record key) every `storage.pin_sync_interval`.
    pub fn with_bucket(mut self, bucket: Option<Arc<Bucket>>) -> Pins {
        self.bucket = bucket;
        self
    }

    /// Syncs with the bucket now and then every `storage.pin_sync_interval`, in the background.
    pub fn start_syncing(self: &Arc<Self>) {
        if self.bucket.is_none() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pins = Arc::downgrade(self);
        rt.spawn(async move {
            let Some(every) = pins.upgrade().map(|p| p.sync_interval) else {
                return;
            };
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(pins) = pins.upgrade() else { break };
                pins.sync_bucket().await;
            }
        });
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
        if set.len() >= self.max_pins && !set.pins().iter().any(|p| same(&p.spec, &spec)) {
            return Err(PinError::Full(self.max_pins));
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
        let Kept {
            blobs, manifests, ..
        } = {
            let kept = kept_of(set);
            if let Some(disk) = self.disk.get() {
                disk.set_kept(&kept);
            }
            kept
        };
        let held: HashSet<(bool, Digest)> = blobs
            .into_iter()
            .map(|d| (false, d))
            .chain(manifests.into_iter().map(|d| (true, d)))
            .collect();
        let mut last = lock(&self.last_held);
        lock(&self.released).extend(last.difference(&held).cloned());
        *last = held;
        self.metrics.set_pins(set.len());
        drop(self.persist(set));
    }

    /// Waits until `data_dir/pins.json` holds the pins as they are now (the admin API answers
    /// only then, so a restart right after finds its change).
    pub async fn flush(&self) {
        let write = self.persist(&self.lock());
        if let Some(w) = write {
            let _ = w.await;
        }
    }

    /// Writes `data_dir/pins.json` off the request's thread (an fsync); writes never go back
    /// in time: one older than the file's is dropped.
    fn persist(&self, set: &PinSet) -> Option<tokio::task::JoinHandle<()>> {
        let json = match serde_json::to_vec_pretty(set) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "cannot persist the pins");
                return None;
            }
        };
        let seq = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (file, written) = (self.file.clone(), self.written.clone());
        let write = move || {
            let mut last = lock(&written);
            if last.is_some_and(|l| l > seq) {
                return;
            }
            match write_file(&file, &json) {
                Ok(()) => *last = Some(seq),
                Err(e) => {
                    tracing::error!(file = %file.display(), error = %e, "cannot persist the pins")
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => Some(rt.spawn_blocking(write)),
            Err(_) => {
                write();
                None
            }
        }
    }
}

impl Pins {
    /// One round with the bucket: the fleet's runtime pins adopted (`[fleet]`), each held blob
    /// and manifest copied under `pins/` (server-side, from `blobs/` or `manifests/`; one not
    /// there yet is tried again next round), the copies of what was released deleted. Returns
    /// (copied, deleted). Failures are logged and retried next round.
    pub async fn sync_bucket(&self) -> (usize, usize) {
        let Some(bucket) = &self.bucket else {
            return (0, 0);
        };
        if bucket.has_record_key() {
            if let Some(shared) = self.read_list(bucket).await {
                let mut set = self.lock();
                let local: Vec<PinSpec> = set.runtime().map(|p| p.spec.clone()).collect();
                let mut changed = false;
                for spec in &local {
                    if !shared.iter().any(|s| same(s, spec)) {
                        set.remove(spec);
                        changed = true;
                    }
                }
                for spec in shared {
                    if set.len() < self.max_pins && set.add(spec, Origin::Runtime) {
                        changed = true;
                    }
                }
                if changed {
                    self.changed(&set);
                }
            }
        }
        let held = lock(&self.last_held).clone();
        let mut copied = 0;
        for (manifest, digest) in &held {
            if lock(&self.copied).contains(&(*manifest, digest.clone())) {
                continue;
            }
            let (from, to) = if *manifest {
                (
                    bucket.keys().manifest(digest),
                    bucket.keys().pinned_manifest(digest),
                )
            } else {
                (
                    bucket.keys().blob(digest),
                    bucket.keys().pinned_blob(digest),
                )
            };
            let done = match bucket.exists(&to).await {
                Ok(true) => true,
                Ok(false) => match bucket.exists(&from).await {
                    Ok(true) => match bucket.copy(&from, &to).await {
                        Ok(()) => {
                            copied += 1;
                            true
                        }
                        Err(e) => {
                            tracing::warn!(%digest, error = %e, "cannot copy a pinned object under pins/");
                            false
                        }
                    },
                    // Not uploaded yet (or expired and not fetched again): next round.
                    _ => false,
                },
                Err(e) => {
                    tracing::debug!(%digest, error = %e, "storage unavailable for pins");
                    false
                }
            };
            if done {
                lock(&self.copied).insert((*manifest, digest.clone()));
            }
        }
        let released: Vec<(bool, Digest)> = lock(&self.released).drain().collect();
        let mut deleted = 0;
        for (manifest, digest) in released {
            if lock(&self.last_held).contains(&(manifest, digest.clone())) {
                continue;
            }
            let key = if manifest {
                bucket.keys().pinned_manifest(&digest)
            } else {
                bucket.keys().pinned_blob(&digest)
            };
            lock(&self.copied).remove(&(manifest, digest.clone()));
            match bucket.delete(&key).await {
                Ok(()) => deleted += 1,
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "cannot delete a released pinned copy");
                    lock(&self.released).insert((manifest, digest));
                }
            }
        }
        (copied, deleted)
    }

    /// The fleet's runtime pins; `None` when there is no record, or it is not believed.
    async fn read_list(&self, bucket: &Bucket) -> Option<Vec<PinSpec>> {
        let key = bucket.keys().pin_list();
        let read = match bucket.get_record(&key, MAX_PINS_FILE, "pins").await {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "storage unavailable for the pin list");
                return None;
            }
        };
        let list: SharedList = serde_json::from_slice(&read.body?).ok()?;
        if !bucket.believable_time(list.at_ms) {
            bucket.reject("pins", "future", &key, "dated ahead of the clock skew");
            return None;
        }
        Some(list.pins)
    }

    /// Writes this replica's runtime pins as the fleet's, after `change` adopted what the
    /// bucket had: a conditional write, retried when another replica wrote in between.
    pub async fn publish(&self, change: impl Fn(&mut Vec<PinSpec>)) {
        let Some(bucket) = &self.bucket else { return };
        if !bucket.has_record_key() {
            return;
        }
        let key = bucket.keys().pin_list();
        for _ in 0..5 {
            let (mut pins, mode) = match bucket.get_record(&key, MAX_PINS_FILE, "pins").await {
                Ok(Some(read)) => {
                    let pins = read
                        .body
                        .and_then(|b| serde_json::from_slice::<SharedList>(&b).ok())
                        .map(|l| l.pins)
                        .unwrap_or_default();
                    let mode = match read.e_tag {
                        Some(e_tag) => PutMode::Update(UpdateVersion {
                            e_tag: Some(e_tag),
                            version: None,
                        }),
                        None => PutMode::Overwrite,
                    };
                    (pins, mode)
                }
                Ok(None) => (Vec::new(), PutMode::Create),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the pin list in storage; not shared");
                    return;
                }
            };
            change(&mut pins);
            let body = SharedList {
                pins,
                at_ms: bucket.now_ms(),
            };
            let Ok(json) = serde_json::to_vec(&body) else {
                return;
            };
            let sealed = match bucket.seal(&key, &json) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot seal the pin list");
                    return;
                }
            };
            match bucket.put_conditional(&key, sealed, mode).await {
                Ok(_) => return,
                Err(crate::cache::bucket::BucketError::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write the pin list to storage; not shared");
                    return;
                }
            }
        }
        tracing::warn!("the pin list in storage kept changing; not shared this time");
    }
}

/// The fleet's runtime pins, as sealed in `pins/list`.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedList {
    pins: Vec<PinSpec>,
    at_ms: u64,
}

/// What `set` holds, as the blob store keeps it.
fn kept_of(set: &PinSet) -> Kept {
    let (blobs, manifests) = set.held();
    // A pinned tag's record too: without it the tag could not be answered offline.
    let tags = set
        .pins()
        .iter()
        .filter(|p| p.spec.reference.parse::<Digest>().is_err())
        .map(|p| {
            crate::cache::tag_store::file_name(&crate::cache::tag_store::TagKey {
                upstream: p.spec.upstream.clone(),
                repository: p.spec.repository.clone(),
                tag: p.spec.reference.clone(),
            })
        })
        .collect();
    Kept {
        blobs,
        manifests,
        tags,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
fn write_file(path: &std::path::Path, json: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(json)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
