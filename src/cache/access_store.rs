//! Where each cached object's access record (`access_rule::Access`) is kept:
//!
//! - in memory, a memo bounded by `cache.access_memory` bytes;
//! - on disk, as an extended attribute (`user.archway.access`) of the object's own file, so it
//!   lives and goes with the file (evicted, replaced after damage: then no record, which is
//!   confirmed again) and costs no file, no start-up read and no memory until asked for;
//! - with `[fleet]`, in the bucket at `<prefix>access/<blobs|manifests>/sha256/<hex>`, sealed
//!   with the fleet's record key, so replicas agree. Without `[fleet]` there is no key any
//!   replica could check, and an object read from the bucket is confirmed with its upstream.
//!
//! A record that cannot be read or believed is no record: the caller confirms with upstream.

use super::bucket::Bucket;
use crate::access_rule::Access;
use crate::digest::Digest;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The extended attribute holding an object's record.
const XATTR: &str = "user.archway.access";
/// Largest record kept (an extended attribute fits in the inode below about this).
const MAX_RECORD_BYTES: usize = 3 << 10;

/// Records waiting for their object's file (a download in flight): at most this many; past it
/// the oldest are dropped (their objects are confirmed again after a restart).
const MAX_PENDING: usize = 16_384;
/// How long a record waits for its file (a download that never commits leaves no file).
const PENDING_FOR: Duration = Duration::from_secs(15 * 60);

/// Blobs and manifests are separate objects even when a digest names both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Blob,
    Manifest,
}

impl ObjectKind {
    fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Blob => "blobs",
            ObjectKind::Manifest => "manifests",
        }
    }
}

struct Pending {
    file: PathBuf,
    memo: Arc<Memo>,
    since: Instant,
}

struct Memo {
    access: Access,
    /// Written to the object's file (false while the object is still being downloaded).
    on_disk: AtomicBool,
}

pub struct AccessStore {
    memo: moka::sync::Cache<(ObjectKind, Digest), Arc<Memo>>,
    /// Records not yet on their files, written by `flush` once the files are there.
    pending: Mutex<std::collections::VecDeque<Pending>>,
    /// The bucket, when it holds sealed records (`[fleet]`).
    shared: Option<Arc<Bucket>>,
}

impl AccessStore {
    pub fn new(memory_bytes: u64) -> Self {
        AccessStore {
            memo: moka::sync::Cache::builder()
                .weigher(|_: &(ObjectKind, Digest), m: &Arc<Memo>| {
                    u32::try_from(160 + m.access.weight()).unwrap_or(u32::MAX)
                })
                .max_capacity(memory_bytes)
                .build(),
            pending: Mutex::new(std::collections::VecDeque::new()),
            shared: None,
        }
    }

    /// With `[fleet]` (a bucket with the record key): records are also kept in the bucket,
    /// sealed.
    pub fn with_bucket(mut self, bucket: Option<Arc<Bucket>>) -> Self {
        self.shared = bucket.filter(|b| b.has_record_key());
        self
    }

    /// The object's record: from memory, else its file's attribute (`file`: where the object
    /// is or will be), else the bucket's sealed copy. `None`: nothing believable is known.
    pub async fn get(&self, kind: ObjectKind, digest: &Digest, file: &Path) -> Option<Access> {
        let key = (kind, digest.clone());
        if let Some(m) = self.memo.get(&key) {
            if !m.on_disk.load(Ordering::Relaxed) && write_attr(file, &m.access) {
                m.on_disk.store(true, Ordering::Relaxed);
            }
            return Some(m.access.clone());
        }
        if let Some(access) = read_attr(file) {
            self.remember(key, access.clone(), true);
            return Some(access);
        }
        let access = self.read_bucket(kind, digest).await?;
        let on_disk = write_attr(file, &access);
        self.remember(key, access.clone(), on_disk);
        Some(access)
    }

    /// Keeps `access` as the object's record: in memory, on its file if it is there yet (else
    /// when it is next asked for), and in the bucket in the background.
    pub fn record(&self, kind: ObjectKind, digest: &Digest, access: Access, file: &Path) {
        let on_disk = write_attr(file, &access);
        if let Some(bucket) = &self.shared {
            let object = bucket.keys().access(kind.as_str(), digest);
            if let Ok(sealed) = bucket.seal(&object, &access.encode()) {
                let writer = bucket.clone();
                bucket.spawn_write("access_write", async move {
                    let put = writer.put(&object, sealed, Some("application/octet-stream"));
                    if let Err(e) = put.await {
                        tracing::warn!(error = %e, "cannot copy an access record to storage");
                        writer.observer().bypassed("access_write");
                    }
                });
            }
        }
        self.remember_at((kind, digest.clone()), access, on_disk, Some(file));
    }

    fn remember(&self, key: (ObjectKind, Digest), access: Access, on_disk: bool) {
        self.remember_at(key, access, on_disk, None);
    }

    fn remember_at(
        &self,
        key: (ObjectKind, Digest),
        access: Access,
        on_disk: bool,
        file: Option<&Path>,
    ) {
        let memo = Arc::new(Memo {
            access,
            on_disk: AtomicBool::new(on_disk),
        });
        if let (false, Some(file)) = (on_disk, file) {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.len() >= MAX_PENDING {
                pending.pop_front();
            }
            pending.push_back(Pending {
                file: file.to_owned(),
                memo: memo.clone(),
                since: Instant::now(),
            });
        }
        self.memo.insert(key, memo);
    }

    /// Writes the records whose files have appeared since (downloads committed); forgets those
    /// that waited past their time. Run every few seconds, and at shutdown.
    pub fn flush(&self) {
        let waiting = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let mut still = std::collections::VecDeque::new();
        for p in waiting {
            if p.memo.on_disk.load(Ordering::Relaxed) {
                continue;
            }
            if write_attr(&p.file, &p.memo.access) {
                p.memo.on_disk.store(true, Ordering::Relaxed);
            } else if p.since.elapsed() < PENDING_FOR {
                still.push_back(p);
            }
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        // Added meanwhile: after the ones still waiting, within the bound.
        still.extend(pending.drain(..));
        while still.len() > MAX_PENDING {
            still.pop_front();
        }
        *pending = still;
    }

    /// Records waiting for their files.
    pub fn pending(&self) -> usize {
        self.pending.lock().map_or(0, |p| p.len())
    }

    async fn read_bucket(&self, kind: ObjectKind, digest: &Digest) -> Option<Access> {
        let bucket = self.shared.as_ref()?;
        let object = bucket.keys().access(kind.as_str(), digest);
        match bucket
            .get_record(&object, MAX_RECORD_BYTES as u64 + 128, "access")
            .await
        {
            // A record that fails its seal was counted and logged by the bucket: no record.
            Ok(Some(read)) => Access::decode(&read.body?),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "storage unavailable for an access record");
                bucket.observer().bypassed("access_read");
                None
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn read_attr(file: &Path) -> Option<Access> {
    let mut buf = [0u8; MAX_RECORD_BYTES];
    let n = rustix::fs::getxattr(file, XATTR, &mut buf[..]).ok()?;
    Access::decode(buf.get(..n)?)
}

/// Whether the record is now the file's (false: no such file yet, or no extended attributes
/// on this filesystem — then it is asked for again after a restart).
#[cfg(target_os = "linux")]
fn write_attr(file: &Path, access: &Access) -> bool {
    let raw = fitted(access);
    rustix::fs::setxattr(file, XATTR, &raw, rustix::fs::XattrFlags::empty()).is_ok()
}

#[cfg(not(target_os = "linux"))]
fn read_attr(_: &Path) -> Option<Access> {
    None
}

#[cfg(not(target_os = "linux"))]
fn write_attr(_: &Path, _: &Access) -> bool {
    false
}

/// The record's bytes within [`MAX_RECORD_BYTES`]: the oldest routes go first.
fn fitted(access: &Access) -> Vec<u8> {
    let mut access = access.clone();
    loop {
        let raw = access.encode();
        match &mut access {
            Access::Private(grants) if raw.len() > MAX_RECORD_BYTES && grants.len() > 1 => {
                grants.remove(0);
            }
            _ => return raw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_rule::{Grant, Visibility};

    #[tokio::test]
    async fn a_record_lives_on_its_file_and_goes_with_it() {
        let dir = std::env::temp_dir().join(format!("archway-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("blob");
        let d = Digest::sha256_of(b"x");
        let corp = Access::fetched(Visibility::Private, "corp", "team/app");
        let store = AccessStore::new(1 << 20);
        // Recorded before the file exists (a download in flight): kept in memory, and written
        // to the file when it is next asked for.
        store.record(ObjectKind::Blob, &d, corp.clone(), &file);
        assert!(read_attr(&file).is_none());
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(
            store.get(ObjectKind::Blob, &d, &file).await,
            Some(corp.clone())
        );
        assert_eq!(read_attr(&file), Some(corp.clone()));
        // A new process (an empty memo) reads it from the file.
        let fresh = AccessStore::new(1 << 20);
        assert_eq!(
            fresh.get(ObjectKind::Blob, &d, &file).await,
            Some(corp.clone())
        );
        // The manifest of the same digest is another object.
        assert_eq!(
            fresh.get(ObjectKind::Manifest, &d, &dir.join("m")).await,
            None
        );
        // The file replaced (evicted, re-downloaded): no record.
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(
            AccessStore::new(1 << 20)
                .get(ObjectKind::Blob, &d, &file)
                .await,
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_long_record_keeps_its_newest_routes() {
        let grants: Vec<Grant> = (0..32)
            .map(|i| Grant::new("corp", &format!("{}/{i}", "r".repeat(200))))
            .collect();
        let raw = fitted(&Access::Private(grants));
        assert!(raw.len() <= MAX_RECORD_BYTES);
        let Some(Access::Private(kept)) = Access::decode(&raw) else {
            panic!("a record")
        };
        assert!(kept.len() < 32 && !kept.is_empty());
        assert!(kept.last().unwrap().repository.ends_with("/31"));
    }
}
