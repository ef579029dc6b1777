//! Manifests by digest: immutable, exact upstream bytes plus media type, in memory (byte-weighted
//! moka) and on disk so they survive restarts.

use crate::digest::Digest;
pub use crate::manifest::Manifest;
use bytes::Bytes;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct ManifestStore {
    memory: moka::sync::Cache<Digest, Arc<Manifest>>,
    dir: PathBuf,
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
        Ok(ManifestStore { memory, dir })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        manifest_path(&self.dir, digest)
    }

    /// From memory, else from disk (re-checked against its digest, so a damaged file is a miss).
    pub async fn get(&self, digest: &Digest) -> Option<Arc<Manifest>> {
        if let Some(m) = self.memory.get(digest) {
            return Some(m);
        }
        let raw = tokio::fs::read(self.path(digest)).await.ok()?;
        let m = Arc::new(decode(digest, &raw)?);
        self.memory.insert(digest.clone(), m.clone());
        Some(m)
    }

    /// Only call with bytes that hash to `m.digest`.
    pub async fn put(&self, m: Arc<Manifest>) -> std::io::Result<()> {
        self.memory.insert(m.digest.clone(), m.clone());
        let path = self.path(&m.digest);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(());
        }
        let tmp_dir = self.dir.join("tmp");
        tokio::task::spawn_blocking(move || write_atomically(&tmp_dir, &path, &encode(&m)))
            .await
            .map_err(std::io::Error::other)?
    }
}

pub(crate) fn manifest_path(root: &Path, digest: &Digest) -> PathBuf {
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
    std::fs::create_dir_all(tmp_dir)?;
    let mut tmp = tempfile_in(tmp_dir)?;
    tmp.1.write_all(data)?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, path)
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
