//! Where blobs live on disk: committed ones at `blobs/<alg>/<first two hex>/<hex>`, downloads in
//! progress in `tmp/` under unique names. Everything under `tmp/` is garbage after a restart.
//! The other files under the same budget: manifests at `manifests/<alg>/<xx>/<hex>`, tag
//! records at `tags/<32 hex>.json` (their stores write them; this finds and deletes them).

use super::index::{CacheFile, Item, Key, Packed};
use crate::digest::{Algorithm, Digest};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) struct Layout {
    blobs_dir: PathBuf,
    manifests_dir: PathBuf,
    tags_dir: PathBuf,
    tmp_dir: PathBuf,
    tmp_seq: AtomicU64,
}

/// A committed blob (or another cache file) found on disk at start-up: 64 bytes, no heap for a
/// sha256 blob or manifest or a tag record (the scan holds one per file until it is sorted).
pub(crate) struct Found {
    pub(crate) key: Key,
    pub(crate) size: u64,
    /// The later of the file's access and modification times: its recency across a restart.
    pub(crate) last_used: SystemTime,
}

impl Layout {
    /// Creates the directories and deletes everything in `tmp/` (left by a crash).
    pub(crate) fn open(root: &Path) -> io::Result<Layout> {
        let blobs_dir = root.join("blobs");
        let tmp_dir = root.join("tmp");
        fs::create_dir_all(&blobs_dir)?;
        fs::create_dir_all(&tmp_dir)?;
        clear_dir(&tmp_dir)?;
        Ok(Layout {
            blobs_dir,
            manifests_dir: root.join("manifests"),
            tags_dir: root.join("tags"),
            tmp_dir,
            tmp_seq: AtomicU64::new(0),
        })
    }

    pub(crate) fn blobs_dir(&self) -> &Path {
        &self.blobs_dir
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        // Validated digests have at least 64 hex characters.
        let prefix = hex.get(..2).unwrap_or("00");
        self.blobs_dir
            .join(digest.algorithm().as_str())
            .join(prefix)
            .join(hex)
    }

    /// Where a manifest or tag record lives.
    pub(crate) fn file_path(&self, file: &CacheFile) -> PathBuf {
        match file {
            CacheFile::Manifest(d) => {
                let hex = d.hex();
                self.manifests_dir
                    .join(d.algorithm().as_str())
                    .join(hex.get(..2).unwrap_or("00"))
                    .join(hex)
            }
            CacheFile::Tag(name) => self.tags_dir.join(name),
        }
    }

    /// Deletes an evicted item's file; a file already gone is not an error.
    pub(crate) fn remove_item(&self, item: &Item) {
        match item {
            Item::Blob(d) => self.remove(d),
            Item::File(f) => match fs::remove_file(self.file_path(f)) {
                Ok(()) => tracing::debug!(file = ?f, "cache file evicted"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(file = ?f, error = %e, "cannot delete evicted cache file"),
            },
        }
    }

    /// A new, uniquely named temp file, opened read+write.
    pub(crate) fn create_tmp_file(&self) -> io::Result<(PathBuf, File)> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        loop {
            let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
            let name = format!("{}-{nanos}-{seq}.part", std::process::id());
            let path = self.tmp_dir.join(name);
            match fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => return Ok((path, file)),
                // Only possible with a leftover of the same pid and clock reading; try the next.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The directory a committed blob goes into, created if need be.
    pub(crate) fn prepare_dir(&self, digest: &Digest) -> io::Result<PathBuf> {
        let dest = self.blob_path(digest);
        let parent = dest
            .parent()
            .ok_or_else(|| io::Error::other("blob path has no parent"))?
            .to_path_buf();
        fs::create_dir_all(&parent)?;
        Ok(parent)
    }

    /// Moves a verified, synced temp file into place.
    pub(crate) fn install(&self, tmp: &Path, digest: &Digest) -> io::Result<()> {
        fs::rename(tmp, self.blob_path(digest))
    }

    /// Bytes free for archway on the filesystem of the blobs, if the platform tells.
    pub(crate) fn free_space(&self) -> Option<u64> {
        #[cfg(target_os = "linux")]
        {
            let st = rustix::fs::statvfs(&self.blobs_dir).ok()?;
            Some(st.f_bavail.saturating_mul(st.f_frsize))
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }

    /// Deletes a committed blob's file; a file already gone is not an error.
    pub(crate) fn remove(&self, digest: &Digest) {
        match fs::remove_file(self.blob_path(digest)) {
            Ok(()) => tracing::debug!(%digest, "blob evicted"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(%digest, error = %e, "cannot delete evicted blob"),
        }
    }

    /// Committed blobs under `blobs/<alg>/<xx>/<hex>`. Anything else (unknown algorithms, bad
    /// names, files in the wrong prefix dir, non-files) is ignored.
    pub(crate) fn scan(&self) -> io::Result<Vec<Found>> {
        let mut found = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let alg_dir = self.blobs_dir.join(alg.as_str());
            let prefixes = match fs::read_dir(&alg_dir) {
                Ok(prefixes) => prefixes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for prefix in prefixes {
                let prefix = prefix?;
                if !prefix.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Some(prefix_name) = prefix.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                for file in fs::read_dir(prefix.path())? {
                    let file = file?;
                    if let Some(blob) = scan_entry(alg, &prefix_name, &file) {
                        found.push(blob);
                    }
                }
            }
        }
        Ok(found)
    }

    /// Manifests under `manifests/<alg>/<xx>/<hex>` and tag records under `tags/`; anything
    /// else (the stores' `tmp/`, stray names) is ignored.
    pub(crate) fn scan_files(&self) -> io::Result<Vec<Found>> {
        let mut found = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let Some(prefixes) = read_dir_if_any(&self.manifests_dir.join(alg.as_str()))? else {
                continue;
            };
            for prefix in prefixes.filter_map(Result::ok) {
                if !prefix.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let prefix_name = prefix.file_name();
                let Some(prefix_name) = prefix_name.to_str() else {
                    continue;
                };
                for file in fs::read_dir(prefix.path())?.filter_map(Result::ok) {
                    let name = file.file_name();
                    let Some(name) = name.to_str() else { continue };
                    let key = match scanned_digest(alg, prefix_name, name) {
                        Some(Scanned::Sha256(bytes)) => Key::Packed(Packed::Manifest(bytes)),
                        Some(Scanned::Other(d)) => Key::file(CacheFile::Manifest(d)),
                        None => continue,
                    };
                    let Ok(meta) = file.metadata() else { continue };
                    found.extend(found_file(key, &meta));
                }
            }
        }
        if let Some(tags) = read_dir_if_any(&self.tags_dir)? {
            for file in tags.filter_map(Result::ok) {
                let name = file.file_name();
                let Some(name) = name.to_str() else { continue };
                if !is_tag_file_name(name) {
                    continue;
                }
                let Ok(meta) = file.metadata() else { continue };
                found.extend(found_file(Key::tag(name), &meta));
            }
        }
        Ok(found)
    }
}

fn read_dir_if_any(dir: &Path) -> io::Result<Option<fs::ReadDir>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(Some(entries)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes a rename into `dir` durable; the blob is already correct and visible without it.
pub(crate) fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|dir| dir.sync_all()) {
        tracing::debug!(error = %e, "cannot fsync blob directory");
    }
}

/// Deletes every entry of `dir` (files and subdirectories).
fn clear_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        if let Err(e) = removed {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete stale temp file");
        }
    }
    Ok(())
}

/// A digest named by a file under `<alg>/<prefix>/`.
enum Scanned {
    Sha256([u8; 32]),
    Other(Digest),
}

/// The digest a file name under `<alg>/<prefix>/` spells, if it is a valid one in the right
/// prefix dir: sha256 straight to its 32 bytes (no `Digest` and its heap string per file at
/// start-up), with the same rules as parsing a `Digest` (64 lowercase hex).
fn scanned_digest(alg: Algorithm, prefix: &str, name: &str) -> Option<Scanned> {
    if name.get(..2) != Some(prefix) {
        return None;
    }
    if alg != Algorithm::Sha256 {
        let digest = format!("{}:{name}", alg.as_str()).parse().ok()?;
        return Some(Scanned::Other(digest));
    }
    let lower_hex = name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let mut bytes = [0u8; 32];
    (lower_hex && hex::decode_to_slice(name, &mut bytes).is_ok()).then_some(Scanned::Sha256(bytes))
}

fn scan_entry(alg: Algorithm, prefix: &str, file: &fs::DirEntry) -> Option<Found> {
    let name = file.file_name();
    let key = match scanned_digest(alg, prefix, name.to_str()?)? {
        Scanned::Sha256(bytes) => Key::Packed(Packed::Blob(bytes)),
        Scanned::Other(digest) => Key::blob(&digest),
    };
    // `DirEntry::metadata` does not follow symlinks, so only real files count.
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
    let accessed = meta.accessed().unwrap_or(UNIX_EPOCH);
    Some(Found {
        key,
        size: meta.len(),
        last_used: modified.max(accessed),
    })
}

/// What a manifest or tag record counts against the budget: its length rounded up to whole
/// 4 KiB blocks, what a small file really takes on the filesystem.
pub(crate) fn charged(len: u64) -> u64 {
    len.div_ceil(4096).max(1).saturating_mul(4096)
}

fn found_file(key: Key, meta: &fs::Metadata) -> Option<Found> {
    if !meta.is_file() {
        return None;
    }
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
    let accessed = meta.accessed().unwrap_or(UNIX_EPOCH);
    Some(Found {
        key,
        size: charged(meta.len()),
        last_used: modified.max(accessed),
    })
}

/// A tag record's file name as the tag store makes it: 32 lowercase hex and `.json`.
pub(crate) fn is_tag_file_name(name: &str) -> bool {
    name.strip_suffix(".json").is_some_and(|h| {
        h.len() == 32
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}
