//! The committed blobs and the downloads in flight, kept in step under one lock: a lookup finds a
//! blob committed or in flight, never neither, and an eviction never deletes a file that a
//! concurrent commit just put in its place.
//!
//! Budget policy: after each commit, least-recently-used committed blobs that are not pinned (no
//! handle or body alive) are deleted until the total fits. Pinned blobs are skipped, so if older
//! blobs are all pinned the blob just committed is the one evicted. A blob larger than the whole
//! budget is verified and streamed to its waiting clients (they read from the open temp file) but
//! never committed: keeping it would flush the whole cache for one blob.
//!
//! Manifests and tag records on disk are under the same budget and in the same LRU: their
//! stores write a temp file and hand it here (`commit_file`, renamed into place under the lock,
//! so an eviction never deletes a file a concurrent commit just put in its place), touch them on
//! use, and simply find them missing once evicted (a manifest is fetched again by digest, a tag
//! revalidated upstream).

use super::fill_state::Fill;
use super::index::{CacheFile, Index, Item};
use super::layout::{self, Layout};
use crate::digest::Digest;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub(crate) struct Catalog {
    layout: Layout,
    max_bytes: u64,
    state: Mutex<State>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) index: Index,
    pub(crate) in_flight: HashMap<Digest, Arc<Fill>>,
    pub(crate) fills_started: u64,
    /// The last eviction left the total over budget (pins hold more than it).
    pub(crate) over_budget: bool,
}

impl Catalog {
    /// Opens the layout under `root`, re-indexes what is committed (recency from each file's
    /// latest access/modification time) and evicts down to the budget. Blocking.
    pub(crate) fn open(root: &Path, max_bytes: u64, kept: Vec<Item>) -> io::Result<Catalog> {
        let layout = Layout::open(root)?;
        let mut found = layout.scan()?;
        found.extend(layout.scan_files()?);
        // Oldest first; ties (same second) in a stable order.
        found.sort_by_key(|f| f.last_used);
        let mut index = Index::default();
        // Sized once: no rehash or copy of the slab while indexing.
        index.reserve(found.len());
        for f in found {
            index.insert_key(f.key, f.size);
        }
        // Pinned images survive this eviction too (a lowered max_size, a full disk).
        index.set_kept(kept);
        for item in index.evict_to(max_bytes) {
            layout.remove_item(&item);
        }
        tracing::info!(
            entries = index.len(),
            files = index.files(),
            bytes = index.bytes(),
            evictions = index.evictions(),
            "blob store opened"
        );
        Ok(Catalog {
            layout,
            max_bytes,
            state: Mutex::new(State {
                index,
                ..State::default()
            }),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves the state consistent enough (every
        // mutation is a few map operations); refusing all blob requests would be worse.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub(crate) fn blobs_dir(&self) -> &Path {
        self.layout.blobs_dir()
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.layout.blob_path(digest)
    }

    pub(crate) fn create_tmp_file(&self) -> io::Result<(PathBuf, File)> {
        self.layout.create_tmp_file()
    }

    /// A committed blob, pinned: the caller owns one pin and must give it back (`PinGuard`).
    pub(crate) fn pin(self: &Arc<Self>, digest: &Digest) -> Option<(u64, PinGuard)> {
        let size = self.lock().index.touch_and_pin(digest)?;
        Some((size, self.pin_guard(digest)))
    }

    /// `pin`, leaving the blob where it is in the recency order: archway's own reads (the
    /// scrub, the copy to the bucket) are no client's use, and must not spare it from eviction
    /// over blobs, manifests and tags clients did use.
    pub(crate) fn pin_untouched(self: &Arc<Self>, digest: &Digest) -> Option<(u64, PinGuard)> {
        let size = self.lock().index.pin(digest)?;
        Some((size, self.pin_guard(digest)))
    }

    /// Wraps a pin already taken under the lock.
    pub(crate) fn pin_guard(self: &Arc<Self>, digest: &Digest) -> PinGuard {
        PinGuard {
            catalog: self.clone(),
            digest: digest.clone(),
        }
    }

    /// Forgets an in-flight fill (if it is still the registered one), so the next request retries.
    pub(crate) fn forget_fill(&self, fill: &Arc<Fill>) {
        let mut state = self.lock();
        forget_locked(&mut state, fill);
    }

    /// Makes a verified temp file durable and visible: fsync, rename into `blobs/`, index, evict.
    /// Blocking; runs in a blocking task. On error the caller deletes the temp file.
    pub(crate) fn commit(
        &self,
        fill: &Arc<Fill>,
        tmp: &Path,
        file: &File,
        size: u64,
    ) -> io::Result<()> {
        if size > self.max_bytes {
            // See the module comment: served from the open file, never kept.
            fs::remove_file(tmp)?;
            self.forget_fill(fill);
            tracing::info!(digest = %fill.digest, size, "blob larger than the cache budget; not kept");
            return Ok(());
        }
        file.sync_all()?;
        let parent = self.layout.prepare_dir(&fill.digest)?;
        {
            let mut state = self.lock();
            self.layout.install(tmp, &fill.digest)?;
            state.index.insert(fill.digest.clone(), size);
            // The fill checked every byte against the digest on the way in.
            state.index.mark_verified(&fill.digest, Instant::now());
            forget_locked(&mut state, fill);
            for item in state.index.evict_to(self.max_bytes) {
                self.layout.remove_item(&item);
            }
            self.note_overflow(&mut state);
        }
        layout::sync_dir(&parent);
        Ok(())
    }

    /// Puts a manifest or tag record written (and synced) to `tmp` in place, counts it, and
    /// evicts down to the budget. Blocking. One larger than the whole budget is not kept (it
    /// would flush everything else); the caller still serves it. On error `tmp` is the
    /// caller's to delete.
    pub(crate) fn commit_file(&self, file: CacheFile, tmp: &Path, len: u64) -> io::Result<()> {
        let size = layout::charged(len);
        if size > self.max_bytes {
            fs::remove_file(tmp)?;
            return Ok(());
        }
        let dest = self.layout.file_path(&file);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut state = self.lock();
        fs::rename(tmp, &dest)?;
        state.index.insert_file(file, size);
        for item in state.index.evict_to(self.max_bytes) {
            self.layout.remove_item(&item);
        }
        self.note_overflow(&mut state);
        Ok(())
    }

    /// A manifest or tag record was used; `false` if it is not on disk (evicted).
    pub(crate) fn touch_file(&self, file: &CacheFile) -> bool {
        self.lock().index.touch_file(file)
    }

    /// Deletes a manifest or tag record (a tag upstream no longer has).
    pub(crate) fn remove_file(&self, file: &CacheFile) {
        let mut state = self.lock();
        state.index.remove_file(file);
        self.layout.remove_item(&Item::File(file.clone()));
    }

    /// Drops a committed blob found damaged: out of the index, its file deleted (readers that
    /// hold it open are the verifier's to stop). The next request downloads it again.
    pub(crate) fn remove_damaged(&self, digest: &Digest) {
        let mut state = self.lock();
        if state.index.remove(digest).is_some() {
            self.layout.remove(digest);
            tracing::warn!(%digest, "cached blob does not match its digest; dropped");
        }
    }

    /// Every byte of the committed file just matched its digest (a whole read, the scrub).
    pub(crate) fn mark_verified(&self, digest: &Digest) {
        self.lock().index.mark_verified(digest, Instant::now());
    }

    /// Whether the committed file was found whole within the last `within`.
    pub(crate) fn verified_within(&self, digest: &Digest, within: Duration) -> bool {
        self.lock()
            .index
            .verified_at(digest)
            .is_some_and(|at| at.elapsed() < within)
    }

    /// Every committed blob, least recently used first.
    pub(crate) fn digests(&self) -> Vec<Digest> {
        self.lock().index.digests()
    }

    /// Bytes free on the blobs' filesystem, if known.
    pub(crate) fn free_space(&self) -> Option<u64> {
        self.layout.free_space()
    }

    /// Sets what the pinned images hold (`pin_set`): never evicted from now on; what is no
    /// longer held is ordinary LRU content again.
    pub(crate) fn set_kept(&self, items: Vec<Item>) {
        self.lock().index.set_kept(items);
    }

    /// Logs once when eviction leaves the cache over budget because pinned images hold more
    /// than it (pins are never evicted; unpinned newcomers are, at once), and once when it fits
    /// again.
    fn note_overflow(&self, state: &mut State) {
        let over = state.index.bytes() > self.max_bytes;
        if over == state.over_budget {
            return;
        }
        state.over_budget = over;
        if over {
            let (pinned, _) = state.index.kept_bytes();
            tracing::warn!(
                bytes = state.index.bytes(),
                pinned_bytes = pinned,
                max_size = self.max_bytes,
                "the cache is over cache.max_size: pinned images (and blobs being read) hold more than it; nothing pinned is evicted, unpinned blobs are not kept"
            );
        } else {
            tracing::info!(
                max_size = self.max_bytes,
                "the cache fits cache.max_size again"
            );
        }
    }

    fn unpin(&self, digest: &Digest) {
        self.lock().index.unpin(digest);
    }
}

fn forget_locked(state: &mut State, fill: &Arc<Fill>) {
    if state
        .in_flight
        .get(&fill.digest)
        .is_some_and(|current| Arc::ptr_eq(current, fill))
    {
        state.in_flight.remove(&fill.digest);
    }
}

/// Keeps a committed blob from eviction while any handle or body holding it lives.
pub(crate) struct PinGuard {
    catalog: Arc<Catalog>,
    digest: Digest,
}

impl PinGuard {
    pub(crate) fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The pinned blob's bytes all matched its digest just now.
    pub(crate) fn report_verified(&self) {
        self.catalog.mark_verified(&self.digest);
    }

    /// Whether the pinned blob was found whole within the last `within`.
    pub(crate) fn verified_within(&self, within: Duration) -> bool {
        self.catalog.verified_within(&self.digest, within)
    }

    /// The pinned blob's bytes did not match its digest.
    pub(crate) fn report_damaged(&self) {
        self.catalog.remove_damaged(&self.digest);
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.catalog.unpin(&self.digest);
    }
}
