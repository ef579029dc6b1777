//! The background scrub: committed blobs read back at a bounded rate and checked against their
//! digests, so damage on disk (bit rot, a truncated file, a hand edit) is found before a client
//! is served it. A damaged blob is dropped; the next request downloads it again. Also the
//! counters of damage found, by the scrub and by reads.

use super::catalog::Catalog;
use crate::digest::{Digest, Verifier};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Bytes read per step; the pause after each keeps the rate.
const STEP: usize = 1 << 20;

#[derive(Default)]
pub(crate) struct Damage {
    checked: AtomicU64,
    by_scrub: AtomicU64,
    on_read: AtomicU64,
    /// Bytes `verify_reads` hashed to check reads.
    read_check_bytes: AtomicU64,
}

impl Damage {
    pub(crate) fn read_checked(&self, bytes: u64) {
        self.read_check_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub(crate) fn read_check_bytes(&self) -> u64 {
        self.read_check_bytes.load(Ordering::Relaxed)
    }
    pub(crate) fn found_on_read(&self) {
        self.on_read.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn checked(&self) -> u64 {
        self.checked.load(Ordering::Relaxed)
    }
    pub(crate) fn by_scrub(&self) -> u64 {
        self.by_scrub.load(Ordering::Relaxed)
    }
    pub(crate) fn on_read(&self) -> u64 {
        self.on_read.load(Ordering::Relaxed)
    }
}

/// Runs a pass over every committed blob, then waits `interval`, until the store is gone.
pub(crate) fn spawn(catalog: Weak<Catalog>, damage: Arc<Damage>, interval: Duration, rate: u64) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(digests) = catalog.upgrade().map(|c| c.digests()) else {
                return;
            };
            tracing::debug!(blobs = digests.len(), "scrub pass started");
            for digest in digests {
                let Some(store) = catalog.upgrade() else {
                    return;
                };
                let damage = damage.clone();
                let checked =
                    tokio::task::spawn_blocking(move || check(&store, &digest, rate, &damage))
                        .await;
                if checked.is_err() {
                    return;
                }
            }
        }
    });
}

/// Reads one committed blob (pinned meanwhile) at no more than `rate` bytes a second.
fn check(catalog: &Arc<Catalog>, digest: &Digest, rate: u64, damage: &Damage) {
    let Some((size, pin)) = catalog.pin_untouched(digest) else {
        return; // Evicted meanwhile.
    };
    let Ok(mut file) = std::fs::File::open(catalog.blob_path(digest)) else {
        return;
    };
    let mut verifier = Verifier::new(digest.algorithm());
    let mut buf = vec![0u8; STEP];
    let mut read: u64 = 0;
    let started = Instant::now();
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => return,
        };
        verifier.update(buf.get(..n).unwrap_or_default());
        read += n as u64;
        if rate > 0 {
            let due = Duration::from_secs_f64(read as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    damage.checked.fetch_add(1, Ordering::Relaxed);
    if read != size || verifier.finish() != *digest {
        damage.by_scrub.fetch_add(1, Ordering::Relaxed);
        drop(pin);
        catalog.remove_damaged(digest);
    } else {
        // Vouches for the blob's range reads under `verify_reads` for a while.
        catalog.mark_verified(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::blob::index::Item;
    use crate::cache::blob::CacheFile;

    /// The scrub reads every blob; that is no client's use. A manifest a client used after the
    /// blob still outlives it afterwards.
    #[test]
    fn a_scrubbed_blob_is_no_more_recent_than_before() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Catalog::open(dir.path(), 1 << 20, Vec::new()).unwrap());
        let bytes = b"an old layer".to_vec();
        let digest = Digest::sha256_of(&bytes);
        let path = catalog.blob_path(&digest);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let manifest = CacheFile::Manifest(Digest::sha256_of(b"{}"));
        {
            let mut state = catalog.lock();
            state.index.insert(digest.clone(), bytes.len() as u64);
            state.index.insert_file(manifest.clone(), 2);
        }
        let damage = Damage::default();
        check(&catalog, &digest, 0, &damage);
        assert_eq!((damage.checked(), damage.by_scrub()), (1, 0));
        let evicted = catalog.lock().index.evict_to(2);
        assert_eq!(
            evicted,
            vec![Item::Blob(digest)],
            "the blob, used first, goes first"
        );
    }
}
