//! Tag → digest answers with the time they were last confirmed by upstream. Persisted (one small
//! file per tag) so that a restart keeps serving — including stale-if-error while upstream is down.
//! With `[storage]` and `[fleet]`, each confirmation is also written to the shared bucket
//! (`<prefix>tags/<upstream>/<repository>/<tag>`, JSON sealed with the fleet's record key), and a
//! replica whose own record is missing or older than the TTL takes a newer one from there, if
//! its seal holds and it is not dated ahead of this replica's clock by more than the skew.
//! Without `[fleet]` there is no record key: tags are not shared (a bucket writer could repoint
//! them), while blobs and manifests are (content-addressed, verified on reading).

use super::blob::{CacheFile, DiskBudget};
use super::bucket::{Bucket, SealedRead};
use super::manifest_store::{clear_dir, commit_file, write_atomically};
use super::tag_memory::{weight, TagMemory};
use crate::clock::Clock;
use crate::digest::Digest;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use super::tag_entry::TagEntry;
pub use super::tag_key::TagKey;

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

/// A tag record in the bucket: what upstream answered and when (Unix milliseconds).
#[derive(Serialize, Deserialize)]
struct BucketRecord {
    digest: Digest,
    media_type: String,
    size: u64,
    confirmed_at_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Missing {
    seen: Instant,
    fresh_until: Instant,
    keep_until: Instant,
}

/// Beyond this many remembered 404s, those past their keep time go, then those past their
/// freshness: a scan of random tags cannot grow the map without end.
const MAX_MISSING: usize = 100_000;

/// A tag record is a few hundred bytes; anything much larger is not one.
const MAX_RECORD_BYTES: u64 = 64 << 10;

pub struct TagStore {
    dir: PathBuf,
    bucket: Option<Arc<Bucket>>,
    /// The most recently used records, within `budget` bytes; every record is also on disk.
    memory: TagMemory,
    budget: u64,
    /// `cache.max_size`, shared with the blobs: the records on disk are counted and evicted
    /// with them (a tag whose record is gone is revalidated upstream). `None` (tests): unbounded.
    disk: Option<DiskBudget>,
    /// Upstream said 404: when it did, and until when that answer is fresh. In memory only.
    /// Kept past freshness (up to `MAX_MISSING` tags) so that, while upstream is down, a tag
    /// it said was missing is still answered 404 (stale-if-error), not 502.
    missing: RwLock<HashMap<TagKey, Missing>>,
    /// The clock records are dated by, and how far ahead of it a record may be: one dated
    /// further ahead (a bucket writer's, or a replica's whose clock ran ahead) is not believed.
    clock: Clock,
    skew: Duration,
}

impl TagStore {
    /// Clears what a crash left in `tmp/`; reads no record (see [`warm_up`](Self::warm_up)):
    /// a tag not in memory is read from disk when asked for.
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        clear_dir(&dir.join("tmp"))?;
        Ok(TagStore {
            dir,
            bucket: None,
            memory: TagMemory::new(crate::config::keys::CACHE_TAG_MEMORY),
            budget: crate::config::keys::CACHE_TAG_MEMORY,
            disk: None,
            missing: RwLock::new(HashMap::new()),
            clock: Clock::system(),
            skew: crate::config::DEFAULT_MAX_CLOCK_SKEW,
        })
    }

    /// At most `bytes` of tags in memory (`cache.tag_memory`).
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.memory = TagMemory::new(bytes);
        self.budget = bytes;
        self
    }

    /// With the records counted against the disk budget.
    pub fn with_disk_budget(mut self, disk: Option<DiskBudget>) -> Self {
        self.disk = disk;
        self
    }

    /// Moves the tag's record to the back of the disk's eviction order.
    fn touch(&self, key: &TagKey) {
        if let Some(disk) = &self.disk {
            disk.touch(&CacheFile::Tag(file_name(key)));
        }
    }

    /// Bytes of tags held in memory, as weighed against the budget.
    pub fn memory_bytes(&self) -> u64 {
        self.memory.weighted_size()
    }

    /// The tag is held in memory (no disk read to answer it).
    pub fn in_memory(&self, key: &TagKey) -> bool {
        self.memory.contains(key)
    }

    /// Reads the most recently written records (by file mtime) into memory until the budget
    /// is full, and returns how many. Blocking: run it in the background after start-up, so
    /// that readiness never waits on reading every record.
    pub fn warm_up(&self) -> usize {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut files: Vec<(SystemTime, PathBuf)> = dir
            .filter_map(Result::ok)
            .filter_map(|f| {
                let meta = f.metadata().ok()?;
                meta.is_file()
                    .then(|| (meta.modified().unwrap_or(UNIX_EPOCH), f.path()))
            })
            .collect();
        files.sort_by_key(|f| std::cmp::Reverse(f.0));
        let mut held = 0u64;
        let mut read = 0;
        for (_, path) in files {
            let Some(r) = read_record(&path) else {
                continue;
            };
            let w = u64::from(weight(&r.key, &r.entry));
            if held + w > self.budget {
                break;
            }
            // A record written or a 404 learnt meanwhile is newer than this file.
            if self.is_remembered_missing(&r.key) {
                continue;
            }
            held += w;
            read += 1;
            self.memory.insert_if_absent(&r.key, &r.entry);
        }
        read
    }

    /// [`warm_up`](Self::warm_up) on the blocking pool, if there is a runtime.
    pub fn spawn_warm_up(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.clone();
        rt.spawn_blocking(move || {
            let started = Instant::now();
            let read = me.warm_up();
            tracing::info!(
                tags = read,
                bytes = me.memory_bytes(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "tag records read into memory"
            );
        });
    }

    /// With the shared bucket behind the disk; records are dated by the bucket's clock, and
    /// shared only if the bucket has the fleet's record key.
    pub fn with_bucket(mut self, bucket: Option<Arc<Bucket>>) -> Self {
        if let Some(b) = &bucket {
            self.clock = b.clock();
            self.skew = Duration::from_millis(b.skew_ms());
        }
        self.bucket = bucket.filter(|b| b.has_record_key());
        self
    }

    /// Now, by the clock records are dated by.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A record dated further ahead than the skew is not believed (it came from a bucket
    /// writer, or from a replica whose clock ran ahead): as if absent, so the tag is asked again.
    fn believable(&self, entry: &TagEntry) -> bool {
        let skew = u64::try_from(self.skew.as_millis()).unwrap_or(u64::MAX);
        entry.validated_at_ms <= self.clock.now_ms().saturating_add(skew)
    }

    /// From memory, else from disk (then kept in memory, displacing the least recently used).
    pub async fn get(&self, key: &TagKey) -> Option<TagEntry> {
        if let Some(e) = self.memory.get(key) {
            if !self.believable(&e) {
                self.memory.remove(key);
                return None;
            }
            self.touch(key);
            return Some(e);
        }
        let path = self.dir.join(file_name(key));
        let raw = tokio::fs::read(&path).await.ok()?;
        let r = serde_json::from_slice::<Record>(&raw).ok()?;
        // File names are a hash of the key: make sure this one is the key asked for.
        if r.key != *key || self.is_remembered_missing(key) || !self.believable(&r.entry) {
            return None;
        }
        self.touch(key);
        self.memory.insert(&r.key, &r.entry);
        Some(r.entry)
    }

    /// When this replica's record is missing or older than `ttl`, takes the bucket's record if
    /// it is newer (another replica confirmed the tag since), even if it too is older than
    /// `ttl`: it is still the best answer for stale-if-error. A failing bucket changes nothing.
    pub async fn adopt_from_bucket(&self, key: &TagKey, ttl: Duration) {
        let Some(bucket) = &self.bucket else { return };
        // Upstream said 404 lately: a record from before that must not bring the tag back.
        if self.is_known_missing(key) {
            return;
        }
        let local = self.get(key).await;
        if local.as_ref().is_some_and(|e| e.age(self.now()) < ttl) {
            return;
        }
        let object = bucket.keys().tag(key);
        let record = match bucket.get_record(&object, MAX_RECORD_BYTES, "tag").await {
            // Not sealed with the fleet's key: counted and logged by the bucket, ignored here.
            Ok(Some(SealedRead { body: None, .. })) => return,
            Ok(Some(SealedRead {
                body: Some(raw), ..
            })) => match serde_json::from_slice::<BucketRecord>(&raw) {
                Ok(r) => r,
                Err(e) => {
                    bucket.reject("tag", "unreadable", &object, &e.to_string());
                    return;
                }
            },
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(tag = %key.tag, repository = %key.repository, error = %e, "storage unavailable for a tag");
                bucket.observer().bypassed("tag_read");
                return;
            }
        };
        if !bucket.believable_time(record.confirmed_at_ms) {
            bucket.reject(
                "tag",
                "future",
                &object,
                "confirmed further ahead than the clock skew",
            );
            return;
        }
        if local
            .as_ref()
            .is_some_and(|e| e.validated_at_ms >= record.confirmed_at_ms)
        {
            return;
        }
        let entry = TagEntry {
            digest: record.digest,
            media_type: record.media_type,
            size: record.size,
            validated_at_ms: record.confirmed_at_ms,
        };
        tracing::debug!(tag = %key.tag, repository = %key.repository, digest = %entry.digest, "tag record from storage");
        if let Err(e) = self.keep(key.clone(), entry).await {
            tracing::error!(error = %e, "cannot persist tag");
        }
    }

    /// Remembers a confirmation from upstream, here and (in the background) in the bucket.
    pub async fn put(&self, key: TagKey, entry: TagEntry) -> std::io::Result<()> {
        self.copy_to_bucket(&key, &entry);
        self.keep(key, entry).await
    }

    /// Like [`put`](Self::put), but returns only once the bucket has the record (or failed):
    /// for a replica holding the fleet's revalidation lease, whose waiters look for it there.
    pub async fn put_shared(&self, key: TagKey, entry: TagEntry) -> std::io::Result<()> {
        if let Some(bucket) = self.bucket.clone() {
            copy_record(bucket, &key, &entry).await;
        }
        self.keep(key, entry).await
    }

    fn copy_to_bucket(&self, key: &TagKey, entry: &TagEntry) {
        let Some(bucket) = self.bucket.clone() else {
            return;
        };
        let (key, entry) = (key.clone(), entry.clone());
        let write = {
            let bucket = bucket.clone();
            async move { copy_record(bucket, &key, &entry).await }
        };
        bucket.spawn_write("tag_write", write);
    }

    /// Here only: memory and the disk.
    async fn keep(&self, key: TagKey, entry: TagEntry) -> std::io::Result<()> {
        if let Ok(mut m) = self.missing.write() {
            m.remove(&key);
        }
        self.memory.insert(&key, &entry);
        let name = file_name(&key);
        let file = self.dir.join(&name);
        let tmp = self.dir.join("tmp");
        let data = serde_json::to_vec(&Record { key, entry }).map_err(std::io::Error::other)?;
        let disk = self.disk.clone();
        tokio::task::spawn_blocking(move || match disk {
            Some(disk) => commit_file(&disk, CacheFile::Tag(name), &tmp, &data),
            None => write_atomically(&tmp, &file, &data),
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Upstream no longer has the tag: forget it, remember the 404 as fresh for `ttl`, and keep
    /// it for `keep` (stale-if-error) while the map has room.
    pub async fn mark_missing(&self, key: &TagKey, ttl: Duration, keep: Duration) {
        self.memory.remove(key);
        if let Ok(mut m) = self.missing.write() {
            if m.len() >= MAX_MISSING {
                let now = Instant::now();
                m.retain(|_, v| v.keep_until > now);
                if m.len() >= MAX_MISSING {
                    // Still full: only fresh answers stay.
                    m.retain(|_, v| v.fresh_until > now);
                }
            }
            let now = Instant::now();
            m.insert(
                key.clone(),
                Missing {
                    seen: now,
                    fresh_until: now + ttl,
                    keep_until: now + keep.max(ttl),
                },
            );
        }
        match &self.disk {
            Some(disk) => {
                let (disk, file) = (disk.clone(), CacheFile::Tag(file_name(key)));
                let _ = tokio::task::spawn_blocking(move || disk.remove(&file)).await;
            }
            None => {
                let _ = tokio::fs::remove_file(self.dir.join(file_name(key))).await;
            }
        }
    }

    /// Upstream said 404 for the tag and that is still remembered (fresh or not).
    fn is_remembered_missing(&self, key: &TagKey) -> bool {
        self.missing.read().is_ok_and(|m| m.contains_key(key))
    }

    /// Upstream's 404 for the tag is fresh.
    pub fn is_known_missing(&self, key: &TagKey) -> bool {
        self.missing
            .read()
            .ok()
            .and_then(|m| m.get(key).copied())
            .is_some_and(|v| v.fresh_until > Instant::now())
    }

    /// How long ago upstream last said 404 for the tag, fresh or not (if still remembered).
    pub fn missing_age(&self, key: &TagKey) -> Option<Duration> {
        let v = self.missing.read().ok()?.get(key).copied()?;
        (v.keep_until > Instant::now()).then(|| v.seen.elapsed())
    }
}

/// A damaged or oversized record is skipped: the tag is simply fetched again.
fn read_record(path: &std::path::Path) -> Option<Record> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > MAX_RECORD_BYTES {
        return None;
    }
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// File names are a hash of the key, so no client-supplied text ever becomes a path.
async fn copy_record(bucket: Arc<Bucket>, key: &TagKey, entry: &TagEntry) {
    let record = BucketRecord {
        digest: entry.digest.clone(),
        media_type: entry.media_type.clone(),
        size: entry.size,
        confirmed_at_ms: entry.validated_at_ms,
    };
    let Ok(data) = serde_json::to_vec(&record) else {
        return;
    };
    let object = bucket.keys().tag(key);
    let Ok(sealed) = bucket.seal(&object, &data) else {
        return;
    };
    let put = bucket.put(&object, sealed, Some("application/json"));
    if let Err(e) = put.await {
        tracing::warn!(error = %e, "cannot copy tag record to storage");
        bucket.observer().bypassed("tag_write");
    }
}

/// The record's file name under `tags/` (and its key in the disk budget): a hash, never the
/// tag's own text.
pub(crate) fn file_name(key: &TagKey) -> String {
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
        assert_eq!(s.get(&key("latest")).await, Some(entry));
        assert_eq!(s.get(&key("other")).await, None);
    }

    fn entry_n(n: u64) -> TagEntry {
        TagEntry {
            digest: Digest::sha256_of(&n.to_be_bytes()),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            size: n,
            validated_at_ms: now_ms(),
        }
    }

    /// Issue 17: every tag stayed in memory. Past the budget, the least recently used leave
    /// memory but stay on disk, and are read back from there when asked for.
    #[tokio::test]
    async fn memory_is_bounded_and_tags_out_of_memory_are_read_back_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let budget = 16 << 10;
        let s = TagStore::open(dir.path().into())
            .unwrap()
            .with_memory_budget(budget);
        for n in 0..1000 {
            s.put(key(&format!("t{n}")), entry_n(n)).await.unwrap();
        }
        let held = s.memory_bytes();
        assert!(
            held <= budget,
            "{held} bytes of tags in memory, budget {budget}"
        );
        assert!(held > budget / 2, "the budget is used: {held}");
        assert!(!s.in_memory(&key("t0")), "the oldest left memory");
        for n in 0..1000 {
            let got = s.get(&key(&format!("t{n}"))).await;
            assert_eq!(got.map(|e| e.digest), Some(entry_n(n).digest), "t{n}");
        }
        assert!(s.memory_bytes() <= budget);
    }

    /// Start-up reads nothing itself; the warm-up reads the most recently written records, no
    /// more than the budget holds.
    #[tokio::test]
    async fn start_up_reads_the_newest_records_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = TagStore::open(dir.path().into()).unwrap();
            for n in 0..500 {
                s.put(key(&format!("t{n}")), entry_n(n)).await.unwrap();
            }
        }
        // Recency across a restart is the file's mtime: t499 the newest, t0 the oldest.
        let base = SystemTime::now() - Duration::from_secs(10_000);
        for n in 0..500u64 {
            let path = dir.path().join(file_name(&key(&format!("t{n}"))));
            let f = std::fs::File::options().write(true).open(path).unwrap();
            f.set_modified(base + Duration::from_secs(n)).unwrap();
        }
        let budget = 8 << 10;
        let s = TagStore::open(dir.path().into())
            .unwrap()
            .with_memory_budget(budget);
        assert_eq!(s.memory_bytes(), 0, "open reads no record");
        let read = s.warm_up();
        assert!(read > 5 && read < 100, "{read} records read");
        assert!(s.memory_bytes() <= budget, "{}", s.memory_bytes());
        assert!(s.in_memory(&key("t499")) && s.in_memory(&key("t498")));
        assert!(!s.in_memory(&key("t0")));
        // The rest is still there, from disk.
        let t0 = s.get(&key("t0")).await.map(|e| e.digest);
        assert_eq!(t0, Some(entry_n(0).digest));
    }

    #[tokio::test]
    async fn missing_is_remembered_briefly() {
        let dir = tempfile::tempdir().unwrap();
        let s = TagStore::open(dir.path().into()).unwrap();
        s.mark_missing(&key("gone"), Duration::from_millis(50), Duration::ZERO)
            .await;
        assert!(s.is_known_missing(&key("gone")));
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(!s.is_known_missing(&key("gone")));
        assert_eq!(s.missing_age(&key("gone")), None);
    }

    #[tokio::test]
    async fn a_404_past_its_freshness_is_kept_for_stale_if_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = TagStore::open(dir.path().into()).unwrap();
        s.mark_missing(
            &key("sig"),
            Duration::from_millis(20),
            Duration::from_secs(60),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(!s.is_known_missing(&key("sig")));
        let age = s.missing_age(&key("sig")).unwrap();
        assert!(age >= Duration::from_millis(40) && age < Duration::from_secs(60));
        // A confirmation of the tag forgets the 404.
        let entry = TagEntry {
            digest: Digest::sha256_of(b"sig"),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 3,
            validated_at_ms: now_ms(),
        };
        s.put(key("sig"), entry).await.unwrap();
        assert_eq!(s.missing_age(&key("sig")), None);
    }
}

/// What a tag in memory really costs: `cargo test --lib -- --ignored tag_memory_per_entry
/// --nocapture` (bench/store_scale's profile of the tag store; the layout is the same in debug).
#[cfg(all(test, target_os = "linux"))]
pub(crate) mod footprint {
    use super::*;

    pub(crate) fn rss_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }

    #[tokio::test]
    #[ignore = "a measurement, not a check"]
    async fn tag_memory_per_entry() {
        let dir = tempfile::tempdir().unwrap();
        let s = TagStore::open(dir.path().into())
            .unwrap()
            .with_memory_budget(1 << 40);
        const N: u64 = 100_000;
        let entries: Vec<_> = (0..N)
            .map(|n| {
                let key = TagKey {
                    upstream: "docker.io".into(),
                    repository: format!("team{}/app{}", n % 97, n % 1009),
                    tag: format!("v{n}"),
                };
                let entry = TagEntry {
                    digest: Digest::sha256_of(&n.to_be_bytes()),
                    media_type: "application/vnd.oci.image.index.v1+json".into(),
                    size: n,
                    validated_at_ms: n,
                };
                (key, entry)
            })
            .collect();
        let weighed: u64 = entries.iter().map(|(k, e)| u64::from(weight(k, e))).sum();
        let before = rss_bytes();
        for (k, e) in &entries {
            s.memory.insert(k, e);
        }
        let after = rss_bytes();
        let key_bytes: usize = entries
            .iter()
            .map(|(k, _)| k.upstream.len() + k.repository.len() + k.tag.len())
            .sum();
        drop(entries);
        println!(
            "tags in memory: {} bytes each by RSS (slab entry, map slot, the key's allocation), \
             {} weighed, keys {} bytes on average; slab entry {} bytes",
            (after - before) / N,
            weighed / N,
            key_bytes as u64 / N,
            TagMemory::slab_entry_bytes(),
        );
    }
}
