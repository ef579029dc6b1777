//! Manifests by digest: immutable, exact upstream bytes plus media type, in memory (byte-weighted
//! moka) and on disk so they survive restarts; with `[storage]`, in the shared bucket too
//! (`<prefix>manifests/<algorithm>/<hex>`: the exact bytes, the media type as the object's
//! Content-Type), read on a disk miss and checked against the digest like the disk copy.
//! The files on disk count against `cache.max_size` with the blobs (`DiskBudget`): touched on
//! use, evicted least recently used first; an evicted manifest is fetched again by digest.

use super::blob::{CacheFile, DiskBudget};
use super::bucket::Bucket;
use crate::digest::Digest;
pub use crate::manifest::Manifest;
use bytes::Bytes;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The largest manifest read from the bucket (as upstream's: 4 MiB).
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Where [`ManifestStore::lookup`] found a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFrom {
    /// This archway's memory or disk (L1).
    Local,
    /// The shared bucket (`[storage]`): another replica fetched it.
    Bucket,
}

pub struct ManifestStore {
    memory: moka::sync::Cache<Digest, Arc<Manifest>>,
    dir: PathBuf,
    bucket: Option<Arc<Bucket>>,
    /// `cache.max_size`, shared with the blobs; `None` (tests): files are kept unbounded.
    disk: Option<DiskBudget>,
}

impl ManifestStore {
    pub fn open(dir: PathBuf, memory_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        clear_dir(&dir.join("tmp"))?;
        let memory = moka::sync::Cache::builder()
            .weigher(|_: &Digest, m: &Arc<Manifest>| {
                u32::try_from(m.bytes.len() + m.media_type.len() + 128).unwrap_or(u32::MAX)
            })
            .max_capacity(memory_bytes)
            .build();
        Ok(ManifestStore {
            memory,
            dir,
            bucket: None,
            disk: None,
        })
    }

    /// With the shared bucket behind the disk.
    pub fn with_bucket(mut self, bucket: Option<Arc<Bucket>>) -> Self {
        self.bucket = bucket;
        self
    }

    /// With the files counted against the disk budget.
    pub fn with_disk_budget(mut self, disk: Option<DiskBudget>) -> Self {
        self.disk = disk;
        self
    }

    /// Moves the file to the back of the eviction order.
    fn touch(&self, digest: &Digest) -> bool {
        self.disk
            .as_ref()
            .is_some_and(|d| d.touch(&CacheFile::Manifest(digest.clone())))
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        manifest_path(&self.dir, digest)
    }

    /// Where the manifest's file is, or will be (its access record lives on it).
    pub fn file_path(&self, digest: &Digest) -> PathBuf {
        self.path(digest)
    }

    /// Whether a copy may be here: in memory, on disk, or in the bucket (always possible).
    pub async fn may_have(&self, digest: &Digest) -> bool {
        self.bucket.is_some() || self.memory.contains_key(digest) || self.path(digest).exists()
    }

    /// From memory, else from disk, else from the bucket (each copy re-checked against its
    /// digest, so a damaged one is a miss). One found in the bucket is kept on disk.
    pub async fn get(&self, digest: &Digest) -> Option<Arc<Manifest>> {
        self.lookup(digest).await.map(|(m, _)| m)
    }

    /// Like [`get`](Self::get), saying whether the copy was this archway's own or the bucket's.
    pub async fn lookup(&self, digest: &Digest) -> Option<(Arc<Manifest>, ManifestFrom)> {
        if let Some(m) = self.memory.get(digest) {
            // Used: its file (if still on disk) is not the next to go.
            self.touch(digest);
            return Some((m, ManifestFrom::Local));
        }
        let from_disk = match tokio::fs::read(self.path(digest)).await {
            Ok(raw) => decode(digest, &raw),
            Err(_) => None,
        };
        let (m, from) = match from_disk {
            Some(m) => {
                self.touch(digest);
                (Arc::new(m), ManifestFrom::Local)
            }
            None => {
                let m = Arc::new(self.read_bucket(digest).await?);
                if let Err(e) = self.write_file(&m).await {
                    tracing::error!(%digest, error = %e, "cannot persist manifest");
                }
                (m, ManifestFrom::Bucket)
            }
        };
        self.memory.insert(digest.clone(), m.clone());
        Some((m, from))
    }

    async fn read_bucket(&self, digest: &Digest) -> Option<Manifest> {
        let bucket = self.bucket.as_ref()?;
        let mut key = bucket.keys().manifest(digest);
        let mut got = bucket.get_small(&key, MAX_MANIFEST_BYTES).await;
        if matches!(got, Ok(None)) {
            // Expired under manifests/ by the lifecycle rule: a pinned image's copy outlives it.
            key = bucket.keys().pinned_manifest(digest);
            got = bucket.get_small(&key, MAX_MANIFEST_BYTES).await;
        }
        match got {
            Ok(Some((bytes, _))) if !digest.verifies(&bytes) => {
                tracing::warn!(%digest, "manifest in storage does not match its digest; ignored");
                None
            }
            // The bytes are proven by their digest, the Content-Type beside them by nothing: a
            // bucket writer could retype a verified manifest, so the type must be the bytes' own.
            Ok(Some((bytes, Some(media_type))))
                if crate::manifest::proves_media_type(&media_type, &bytes) =>
            {
                tracing::debug!(%digest, "manifest from storage");
                Some(Manifest {
                    digest: digest.clone(),
                    media_type,
                    bytes,
                })
            }
            Ok(Some((_, media_type))) => {
                let why = format!(
                    "media type {media_type:?} is not the one the manifest's bytes say; a miss"
                );
                bucket.reject("manifest", "media_type", &key, &why);
                None
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "storage unavailable for a manifest");
                bucket.observer().bypassed("manifest_read");
                None
            }
        }
    }

    /// Only call with bytes that hash to `m.digest`. Copied to the bucket in the background.
    pub async fn put(&self, m: Arc<Manifest>) -> std::io::Result<()> {
        self.memory.insert(m.digest.clone(), m.clone());
        self.copy_to_bucket(&m);
        self.write_file(&m).await
    }

    /// Like [`put`](Self::put), but returns only once the bucket has it (or failed): for a
    /// replica holding the fleet's fetch lease, whose waiters look for it there.
    pub async fn put_shared(&self, m: Arc<Manifest>) -> std::io::Result<()> {
        self.memory.insert(m.digest.clone(), m.clone());
        if let Some(bucket) = self.bucket.clone() {
            copy_manifest(bucket, m.clone()).await;
        }
        self.write_file(&m).await
    }

    fn copy_to_bucket(&self, m: &Arc<Manifest>) {
        let Some(bucket) = self.bucket.clone() else {
            return;
        };
        let write = copy_manifest(bucket.clone(), m.clone());
        bucket.spawn_write("manifest_write", write);
    }

    async fn write_file(&self, m: &Arc<Manifest>) -> std::io::Result<()> {
        let m = m.clone();
        let path = self.path(&m.digest);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            self.touch(&m.digest);
            return Ok(());
        }
        let tmp_dir = self.dir.join("tmp");
        let disk = self.disk.clone();
        tokio::task::spawn_blocking(move || {
            let data = encode(&m);
            match disk {
                Some(disk) => commit_file(
                    &disk,
                    CacheFile::Manifest(m.digest.clone()),
                    &tmp_dir,
                    &data,
                ),
                None => write_atomically(&tmp_dir, &path, &data),
            }
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

pub(crate) async fn copy_manifest(bucket: Arc<Bucket>, m: Arc<Manifest>) {
    let key = bucket.keys().manifest(&m.digest);
    let put = bucket.put(&key, m.bytes.clone(), Some(&m.media_type));
    if let Err(e) = put.await {
        tracing::warn!(digest = %m.digest, error = %e, "cannot copy manifest to storage");
        bucket.observer().bypassed("manifest_write");
    }
}

fn manifest_path(root: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    root.join(digest.algorithm().as_str())
        .join(&hex[..2])
        .join(hex)
}

/// `<media type>\n<exact bytes>`: media types never contain a newline (they were header values).
fn encode(m: &Manifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.media_type.len() + 1 + m.bytes.len());
    out.extend_from_slice(m.media_type.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&m.bytes);
    out
}

fn decode(digest: &Digest, raw: &[u8]) -> Option<Manifest> {
    let nl = raw.iter().position(|b| *b == b'\n')?;
    let (head, rest) = raw.split_at(nl);
    let media_type = std::str::from_utf8(head).ok()?.to_owned();
    let bytes = Bytes::copy_from_slice(rest.get(1..)?);
    if !digest.verifies(&bytes) {
        return None;
    }
    Some(Manifest {
        digest: digest.clone(),
        media_type,
        bytes,
    })
}

/// Write to a temp file, fsync, rename into place: readers see the whole file or none.
pub(crate) fn write_atomically(tmp_dir: &Path, path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = write_temp(tmp_dir, data)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// `write_atomically` under the disk budget: the budget renames the temp file into place,
/// counts it and evicts. Blocking.
pub(crate) fn commit_file(
    disk: &DiskBudget,
    file: CacheFile,
    tmp_dir: &Path,
    data: &[u8],
) -> std::io::Result<()> {
    let tmp = write_temp(tmp_dir, data)?;
    disk.commit(file, &tmp, data.len() as u64).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// `data` in a new temp file under `tmp_dir`, synced.
fn write_temp(tmp_dir: &Path, data: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(tmp_dir)?;
    let (path, mut file) = tempfile_in(tmp_dir)?;
    let written = file.write_all(data).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}

pub(crate) fn clear_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(body: &'static [u8]) -> Arc<Manifest> {
        Arc::new(Manifest {
            digest: Digest::sha256_of(body),
            media_type: crate::media_type::OCI_MANIFEST.into(),
            bytes: Bytes::from_static(body),
        })
    }

    #[tokio::test]
    async fn survives_reopen_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest(b"{\"schemaVersion\":2}");
        {
            let s = ManifestStore::open(dir.path().into(), 1 << 20).unwrap();
            s.put(m.clone()).await.unwrap();
            assert_eq!(s.get(&m.digest).await.unwrap(), m);
        }
        let s = ManifestStore::open(dir.path().into(), 1 << 20).unwrap();
        assert_eq!(s.get(&m.digest).await.unwrap(), m, "read back from disk");

        // A damaged file is a miss, never served under a digest it does not hash to.
        let other = manifest(b"{\"other\":1}");
        let path = manifest_path(dir.path(), &other.digest);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"application/json\n{\"tampered\":1}").unwrap();
        assert!(s.get(&other.digest).await.is_none());
    }

    #[tokio::test]
    async fn leftover_temp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("tmp/partial"), b"x").unwrap();
        ManifestStore::open(dir.path().into(), 1 << 20).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
