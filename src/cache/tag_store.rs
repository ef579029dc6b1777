//! Tag → digest answers with the time they were last confirmed by upstream. Persisted (one small
//! file per tag) so that a restart keeps serving — including stale-if-error while upstream is down.

use super::manifest_store::{clear_dir, write_atomically};
use crate::digest::Digest;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TagKey {
    pub upstream: String,
    pub repository: String,
    pub tag: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagEntry {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// Unix milliseconds of the last upstream confirmation.
    pub validated_at_ms: u64,
}

impl TagEntry {
    pub fn age(&self, now: SystemTime) -> Duration {
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Duration::from_millis(now_ms.saturating_sub(self.validated_at_ms))
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Serialize, Deserialize)]
struct Record {
    key: TagKey,
    entry: TagEntry,
}

pub struct TagStore {
    dir: PathBuf,
    entries: RwLock<HashMap<TagKey, TagEntry>>,
    /// Upstream said 404: remembered briefly, in memory only.
    missing: RwLock<HashMap<TagKey, Instant>>,
}

impl TagStore {
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        clear_dir(&dir.join("tmp"))?;
        let mut entries = HashMap::new();
        for f in std::fs::read_dir(&dir)? {
            let f = f?;
            if !f.file_type()?.is_file() {
                continue;
            }
            // A damaged record is skipped: the tag is simply fetched again.
            let Ok(raw) = std::fs::read(f.path()) else {
                continue;
            };
            if let Ok(r) = serde_json::from_slice::<Record>(&raw) {
                entries.insert(r.key, r.entry);
            }
        }
        Ok(TagStore {
            dir,
            entries: RwLock::new(entries),
            missing: RwLock::new(HashMap::new()),
        })
    }

    pub fn get(&self, key: &TagKey) -> Option<TagEntry> {
        self.entries.read().ok()?.get(key).cloned()
    }

    pub async fn put(&self, key: TagKey, entry: TagEntry) -> std::io::Result<()> {
        if let Ok(mut m) = self.missing.write() {
            m.remove(&key);
        }
        if let Ok(mut e) = self.entries.write() {
            e.insert(key.clone(), entry.clone());
        }
        let file = self.dir.join(file_name(&key));
        let tmp = self.dir.join("tmp");
        let data = serde_json::to_vec(&Record { key, entry }).map_err(std::io::Error::other)?;
        tokio::task::spawn_blocking(move || write_atomically(&tmp, &file, &data))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Upstream no longer has the tag: forget it and remember the 404 for `ttl`.
    pub async fn mark_missing(&self, key: &TagKey, ttl: Duration) {
        if let Ok(mut e) = self.entries.write() {
            e.remove(key);
        }
        if let Ok(mut m) = self.missing.write() {
            // Keep the map from growing without bound under a scan of random tags.
            if m.len() > 100_000 {
                let now = Instant::now();
                m.retain(|_, until| *until > now);
            }
            m.insert(key.clone(), Instant::now() + ttl);
        }
        let _ = tokio::fs::remove_file(self.dir.join(file_name(key))).await;
    }

    pub fn is_known_missing(&self, key: &TagKey) -> bool {
        self.missing
            .read()
            .ok()
            .and_then(|m| m.get(key).copied())
            .is_some_and(|until| until > Instant::now())
    }
}

/// File names are a hash of the key, so no client-supplied text ever becomes a path.
fn file_name(key: &TagKey) -> String {
    let joined = format!("{}\n{}\n{}", key.upstream, key.repository, key.tag);
    format!("{}.json", &Digest::sha256_of(joined.as_bytes()).hex()[..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tag: &str) -> TagKey {
        TagKey {
            upstream: "docker.io".into(),
            repository: "library/alpine".into(),
            tag: tag.into(),
        }
    }

    #[tokio::test]
    async fn persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let entry = TagEntry {
            digest: Digest::sha256_of(b"x"),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            size: 1,
            validated_at_ms: now_ms(),
        };
        {
            let s = TagStore::open(dir.path().into()).unwrap();
            s.put(key("latest"), entry.clone()).await.unwrap();
        }
        std::fs::write(dir.path().join("garbage.json"), b"{not json").unwrap();
        let s = TagStore::open(dir.path().into()).unwrap();
        assert_eq!(s.get(&key("latest")), Some(entry));
        assert_eq!(s.get(&key("other")), None);
    }

    #[tokio::test]
    async fn missing_is_remembered_briefly() {
        let dir = tempfile::tempdir().unwrap();
        let s = TagStore::open(dir.path().into()).unwrap();
        s.mark_missing(&key("gone"), Duration::from_millis(50))
            .await;
        assert!(s.is_known_missing(&key("gone")));
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(!s.is_known_missing(&key("gone")));
    }
}
