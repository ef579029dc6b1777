//! Manifests for the pipeline: by digest (immutable, cached until evicted) and by tag (a TTL,
//! revalidation with HEAD, stale-if-error, one upstream request for concurrent misses of a tag,
//! and a short memo of upstream failures for the requests that queued behind one).
//!
//! With `cache.refresh_ahead`, a tag answered within its TTL is revalidated in the background
//! shortly before it expires (`refresh_ahead.rs` bounds it), the same way an expired request
//! would: under the tag's refresh lock and, with `[fleet]`, its lease.
//!
//! With `[fleet]`, a manifest GET by digest and a tag's revalidation are also made once across
//! the replicas on the bucket (`cache::fetch_lease`): the lease holder writes its answer to the
//! bucket before letting go, the others read it from there.

use super::pins::Pins;
use super::refresh_ahead::RefreshAhead;
use crate::cache::blob::DiskBudget;
use crate::cache::bucket::Bucket;
use crate::cache::fetch_lease::{FetchLeases, Turn};
use crate::cache::keyed_lock::KeyedLock;
use crate::cache::manifest_store::{ManifestFrom, ManifestStore};
use crate::cache::tag_store::{TagEntry, TagKey, TagStore};
use crate::config::CacheConfig;
use crate::digest::Digest;
use crate::error::{ErrorCode, ProxyError};
use crate::manifest::Manifest;
use crate::outcome::CacheResult;
use crate::reference::{RepositoryName, Tag};
use crate::upstream::{ManifestRef, Upstream, UpstreamError};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How long an upstream failure for one tag is reused by requests that were waiting on it.
const RECENT_FAILURE_TTL: Duration = Duration::from_secs(5);
/// Bytes of remembered failures (keys are client-named tags).
const RECENT_FAILURE_BYTES: u64 = 4 << 20;

type Found = (Arc<Manifest>, CacheResult);

/// A manifest found in the store: a hit if it was this archway's own, else read from the bucket.
fn found((m, from): (Arc<Manifest>, ManifestFrom)) -> Found {
    match from {
        ManifestFrom::Local => (m, CacheResult::Hit),
        ManifestFrom::Bucket => (m, CacheResult::Bucket),
    }
}

pub(crate) struct Manifests {
    store: ManifestStore,
    tags: Arc<TagStore>,
    /// Concurrent misses for one tag make one upstream request.
    refreshing: KeyedLock<TagKey>,
    /// Concurrent misses for one manifest digest make one upstream request.
    fetching: KeyedLock<Digest>,
    /// `[fleet]`: one upstream request per manifest digest and per tag TTL across the fleet.
    leases: Option<FetchLeases>,
    /// The last upstream failure per tag, for the requests that queued behind it.
    recent_failures: moka::sync::Cache<TagKey, (Instant, ProxyError)>,
    tag_ttl: Duration,
    stale_if_error: Duration,
    negative_ttl: Duration,
    /// `cache.refresh_ahead`: hot tags revalidated before they expire.
    ahead: Option<RefreshAhead>,
    /// Pinned images: told each tag answer and manifest that passes, to hold what they name.
    pins: std::sync::OnceLock<Arc<Pins>>,
}

/// Manifests a pin walks through the cache at once, at most (an index's children, nested).
const MAX_PIN_WALK: usize = 1024;

impl Manifests {
    /// Opens the manifest and tag stores under `data_dir`, their files under `disk` (the blob
    /// store's budget). Blocking.
    pub(crate) fn open(
        data_dir: &Path,
        cache: &CacheConfig,
        disk: DiskBudget,
        bucket: Option<Arc<Bucket>>,
        leases: Option<FetchLeases>,
        ahead: Option<RefreshAhead>,
    ) -> Result<Self, (std::path::PathBuf, std::io::Error)> {
        let mdir = data_dir.join("manifests");
        let store = ManifestStore::open(mdir.clone(), cache.memory_size)
            .map_err(|e| (mdir, e))?
            .with_disk_budget(Some(disk.clone()))
            .with_bucket(bucket.clone());
        let tdir = data_dir.join("tags");
        let tags = TagStore::open(tdir.clone())
            .map_err(|e| (tdir, e))?
            .with_memory_budget(cache.tag_memory)
            .with_disk_budget(Some(disk))
            .with_bucket(bucket);
        let tags = Arc::new(tags);
        // In the background: readiness does not wait for the records to be read.
        tags.spawn_warm_up();
        Ok(Manifests {
            store,
            tags,
            refreshing: KeyedLock::default(),
            fetching: KeyedLock::default(),
            leases,
            recent_failures: moka::sync::Cache::builder()
                .weigher(|k: &TagKey, (_, e): &(Instant, ProxyError)| {
                    let len =
                        96 + k.upstream.len() + k.repository.len() + k.tag.len() + e.message.len();
                    u32::try_from(len).unwrap_or(u32::MAX)
                })
                .max_capacity(RECENT_FAILURE_BYTES)
                .time_to_live(RECENT_FAILURE_TTL)
                .build(),
            tag_ttl: cache.tag_ttl,
            stale_if_error: cache.stale_if_error,
            negative_ttl: cache.negative_ttl,
            ahead,
            pins: std::sync::OnceLock::new(),
        })
    }

    /// With pinned images fed by what passes through.
    pub(crate) fn set_pins(&self, pins: Arc<Pins>) {
        // Set once, at start, before any request.
        let _ = self.pins.set(pins);
    }

    /// A tag answered `m`: a pin of that tag follows it, then holds what `m` names.
    async fn pin_tag(&self, key: &TagKey, m: &Arc<Manifest>) {
        let Some(pins) = self.pins.get() else { return };
        if !pins.is_pinned_tag(&key.upstream, &key.repository, &key.tag) {
            return;
        }
        let moved = pins.tag_resolved(&key.upstream, &key.repository, &key.tag, &m.digest);
        if moved {
            tracing::info!(upstream = %key.upstream, repository = %key.repository, tag = %key.tag, digest = %m.digest, "pinned tag moved: the pin follows it, the old digest is released");
        }
        self.pin_manifest(m, moved).await;
    }

    /// A manifest passed: if a pin holds it, the pin holds what it names, and the children it
    /// selects that are cached already are walked too (so a pin is whole as soon as its tag
    /// is seen, not only once each child is asked for again).
    async fn pin_manifest(&self, m: &Arc<Manifest>, mut changed: bool) {
        let Some(pins) = self.pins.get() else { return };
        let mut todo = vec![m.clone()];
        let mut walked = 0;
        while let Some(m) = todo.pop() {
            if walked >= MAX_PIN_WALK || !pins.holds_manifest(&m.digest) {
                continue;
            }
            walked += 1;
            let (children, more) = pins.seen(&m);
            changed |= more;
            for child in children {
                if let Some(c) = self.store.get(&child).await {
                    todo.push(c);
                }
            }
        }
        if changed {
            pins.commit();
        }
    }

    /// A pin just added: filled from what the cache has of its tag (or digest) now.
    pub(crate) async fn fill_pin(&self, spec: &crate::pin_set::PinSpec) {
        let root = match crate::reference::Reference::parse(&spec.reference) {
            Ok(crate::reference::Reference::Digest(d)) => Some(d),
            Ok(crate::reference::Reference::Tag(_)) => {
                let key = TagKey {
                    upstream: spec.upstream.clone(),
                    repository: spec.repository.clone(),
                    tag: spec.reference.clone(),
                };
                self.tags.get(&key).await.map(|e| e.digest)
            }
            Err(_) => None,
        };
        let Some(root) = root else { return };
        let Some(m) = self.store.get(&root).await else {
            return;
        };
        if let (Some(pins), Ok(crate::reference::Reference::Tag(_))) = (
            self.pins.get(),
            crate::reference::Reference::parse(&spec.reference),
        ) {
            pins.tag_resolved(&spec.upstream, &spec.repository, &spec.reference, &root);
        }
        self.pin_manifest(&m, true).await;
    }

    /// The manifest store (for the access gate: where a manifest's file is, whether it may be
    /// cached).
    pub(crate) fn store(&self) -> &ManifestStore {
        &self.store
    }

    /// Keeps a manifest archway made (a conversion) so that a GET by its digest is served.
    pub(crate) async fn keep(&self, m: Arc<Manifest>) -> std::io::Result<()> {
        self.store.put(m).await
    }

    pub(crate) async fn by_digest(
        &self,
        upstream: &Upstream,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Found, ProxyError> {
        let found = match self.store.lookup(digest).await {
            Some(f) => found(f),
            None => self.fetch_digest(upstream, repo, digest).await?,
        };
        self.pin_manifest(&found.0, false).await;
        Ok(found)
    }

    /// A manifest missing here, by digest: once per digest on this replica (concurrent misses
    /// wait for the first) and, with `[fleet]`, once across the replicas.
    async fn fetch_digest(
        &self,
        upstream: &Upstream,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Found, UpstreamError> {
        let _fetching = self.fetching.lock(digest).await;
        if let Some(f) = self.store.lookup(digest).await {
            return Ok(found(f));
        }
        let reference = ManifestRef::Digest(digest);
        let Some(leases) = &self.leases else {
            return Ok((
                self.fetch(upstream, repo, reference).await?,
                CacheResult::Miss,
            ));
        };
        let key = leases.bucket().keys().manifest_lease(digest);
        match leases
            .turn(key, "manifest", || self.store.lookup(digest))
            .await
        {
            Turn::Ready(f) => Ok(found(f)),
            // The lease (if any) is let go only after the bucket has the manifest.
            Turn::Fetch(_lease) => Ok((
                self.fetch(upstream, repo, reference).await?,
                CacheResult::Miss,
            )),
        }
    }

    pub(crate) async fn by_tag(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repo: &RepositoryName,
        tag: &Tag,
    ) -> Result<Found, ProxyError> {
        let key = TagKey {
            upstream: upstream.config().name.clone(),
            repository: repo.to_string(),
            tag: tag.to_string(),
        };
        let ttl = upstream.config().tag_ttl.unwrap_or(self.tag_ttl);
        let found = self.tag_answer(upstream, repo, tag, &key, ttl).await;
        if let Ok((m, _)) = &found {
            self.pin_tag(&key, m).await;
        }
        // Asked for within its TTL: worth revalidating before it expires. A stale answer is
        // not (upstream is down; the next request asks again anyway).
        if let Ok((_, CacheResult::Hit | CacheResult::Miss | CacheResult::Bucket)) = &found {
            self.schedule_ahead(upstream, repo, tag, key, ttl).await;
        }
        found
    }

    async fn tag_answer(
        &self,
        upstream: &Upstream,
        repo: &RepositoryName,
        tag: &Tag,
        key: &TagKey,
        ttl: Duration,
    ) -> Result<Found, ProxyError> {
        if let Some(fresh) = self.fresh_tag(key, ttl, repo, tag).await {
            return fresh;
        }
        let queued_at = Instant::now();
        let _refreshing = self.refreshing.lock(key).await;
        // Whoever held the lock before us may have refreshed it.
        if let Some(fresh) = self.fresh_tag(key, ttl, repo, tag).await {
            return fresh;
        }
        let cached = self.tags.get(key).await;
        // Requests that queued behind a refresh which found upstream down don't each wait out
        // another timeout: they take that answer. Requests that came later ask upstream again.
        let refreshed = match self.recent_failures.get(key) {
            Some((failed_at, e)) if failed_at >= queued_at => Err(e),
            _ => {
                self.refresh_tag_once(upstream, repo, tag, key, ttl, cached.as_ref())
                    .await
            }
        };
        match refreshed {
            Ok(found) => Ok(found),
            Err(e) if e.is_upstream_unavailable() => {
                self.recent_failures
                    .insert(key.clone(), (Instant::now(), e.clone()));
                // stale-if-error: a cached answer young enough beats an error.
                let Some(entry) = cached else {
                    return Err(self.stale_missing(key, repo, tag).unwrap_or(e));
                };
                if entry.age(self.tags.now()) > self.stale_if_error {
                    return Err(e);
                }
                match self.store.get(&entry.digest).await {
                    Some(m) => {
                        tracing::warn!(upstream = %key.upstream, repository = %key.repository, tag = %key.tag, error = %crate::error::chain(&e), "upstream unavailable, serving stale tag");
                        Ok((m, CacheResult::Stale))
                    }
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Schedules the tag's background revalidation `window` before it expires, unless one is
    /// scheduled already. The task holds the proxy and upstream weakly while it sleeps.
    async fn schedule_ahead(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repo: &RepositoryName,
        tag: &Tag,
        key: TagKey,
        ttl: Duration,
    ) {
        let Some(ahead) = &self.ahead else { return };
        let Some(window) = ahead.window(ttl) else {
            return;
        };
        // Never a panic on a request path: without a runtime to run it, no refresh-ahead.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The hot path: a hit on a tag already scheduled costs one lookup.
        if ahead.is_scheduled(&key) {
            return;
        }
        let Some(entry) = self.tags.get(&key).await else {
            return;
        };
        let Some(slot) = ahead.slot(&key) else { return };
        let fresh_for = ttl.saturating_sub(window);
        let due = fresh_for.saturating_sub(entry.age(self.tags.now()));
        let this = Arc::downgrade(self);
        let up = Arc::downgrade(upstream);
        let (repo, tag) = (repo.clone(), tag.clone());
        let span = tracing::info_span!(parent: None, "refresh_ahead", upstream = %key.upstream, repository = %key.repository, tag = %key.tag);
        runtime.spawn(
            async move {
                let _slot = slot;
                tokio::time::sleep(due).await;
                let (Some(this), Some(upstream)) = (this.upgrade(), up.upgrade()) else {
                    return;
                };
                let outcome = this
                    .run_ahead(&upstream, &repo, &tag, &key, ttl, fresh_for)
                    .await;
                drop((this, upstream));
                if outcome == Some("failed") {
                    // One attempt per TTL: hits during an outage do not each try again. The
                    // slot is kept past the expiry; then clients revalidate (stale-if-error).
                    tokio::time::sleep(ttl.saturating_sub(fresh_for)).await;
                }
            }
            .instrument(span),
        );
    }

    /// One background revalidation, if a permit is free; its outcome, counted.
    async fn run_ahead(
        &self,
        upstream: &Upstream,
        repo: &RepositoryName,
        tag: &Tag,
        key: &TagKey,
        ttl: Duration,
        fresh_for: Duration,
    ) -> Option<&'static str> {
        let ahead = self.ahead.as_ref()?;
        let _running = ahead.start()?;
        let before = self.tags.get(key).await.map(|e| e.digest);
        // Upstream requests and lease waits have their own timeouts; this bounds the whole.
        // Past one TTL the tag has expired and clients revalidate it themselves.
        let revalidated = tokio::time::timeout(
            ttl,
            self.revalidate_ahead(upstream, repo, tag, key, fresh_for),
        )
        .await;
        let outcome = match revalidated {
            Err(_) => {
                tracing::info!("refresh-ahead gave up after the tag's TTL");
                "failed"
            }
            Ok(Err(e)) => {
                tracing::info!(error = %crate::error::chain(&e), "refresh-ahead failed; the tag expires as usual");
                "failed"
            }
            Ok(Ok(None)) => "not_needed",
            Ok(Ok(Some(digest))) if before.as_ref() == Some(&digest) => "unchanged",
            Ok(Ok(Some(_))) => "refreshed",
        };
        tracing::debug!(outcome, "refresh-ahead");
        ahead.ended(outcome);
        Some(outcome)
    }

    /// Revalidates the tag as an expired request would (the refresh lock, the fleet lease,
    /// HEAD), but already when it is older than `fresh_for`. `None`: someone else did
    /// meanwhile (a client, or another replica whose record is in the bucket), or the tag is
    /// gone. A failure changes nothing cached: the entry expires and stale-if-error applies
    /// as without refresh-ahead.
    async fn revalidate_ahead(
        &self,
        upstream: &Upstream,
        repo: &RepositoryName,
        tag: &Tag,
        key: &TagKey,
        fresh_for: Duration,
    ) -> Result<Option<Digest>, ProxyError> {
        if let Some(Ok(_)) = self.fresh_tag(key, fresh_for, repo, tag).await {
            return Ok(None);
        }
        let _refreshing = self.refreshing.lock(key).await;
        if let Some(Ok(_)) = self.fresh_tag(key, fresh_for, repo, tag).await {
            return Ok(None);
        }
        let Some(cached) = self.tags.get(key).await else {
            return Ok(None);
        };
        // In a fleet one replica asks upstream; the others find its record in the bucket.
        let _lease = match &self.leases {
            None => None,
            Some(leases) => {
                let lease = leases.bucket().keys().tag_lease(key);
                let ready = || async {
                    match self.fresh_tag(key, fresh_for, repo, tag).await {
                        Some(Ok(found)) => Some(found),
                        _ => None,
                    }
                };
                match leases.turn(lease, "tag", ready).await {
                    Turn::Ready(_) => return Ok(None),
                    Turn::Fetch(held) => held,
                }
            }
        };
        let cached = self.tags.get(key).await.unwrap_or(cached);
        match self
            .refresh_tag(upstream, repo, tag, key, Some(&cached))
            .await
        {
            Ok((m, _)) => Ok(Some(m.digest.clone())),
            Err(e) => {
                if e.is_upstream_unavailable() {
                    // Clients that queued behind this refresh take its answer, as behind a
                    // client's (then stale-if-error).
                    self.recent_failures
                        .insert(key.clone(), (Instant::now(), e.clone()));
                }
                Err(e)
            }
        }
    }

    /// stale-if-error for a 404: upstream said the tag was missing within `stale_if_error`, so
    /// while it is down the answer stays 404, not 502. Cosign asks for `sha256-<hex>.sig`
    /// and takes a 404 as "no signatures"; oras and go-containerregistry take a 404 for the
    /// `sha256-<hex>` referrers tag as "no referrers". A 5xx fails them instead.
    fn stale_missing(&self, key: &TagKey, repo: &RepositoryName, tag: &Tag) -> Option<ProxyError> {
        let age = self.tags.missing_age(key)?;
        if age > self.stale_if_error {
            return None;
        }
        tracing::warn!(upstream = %key.upstream, repository = %key.repository, tag = %key.tag, age_s = age.as_secs(), "upstream unavailable, serving the remembered 404 for a tag");
        Some(ProxyError::upstream(
            ErrorCode::ManifestUnknown,
            format!("manifest unknown: {repo}:{tag}"),
        ))
    }

    /// The cached answer while it is fresh, or the remembered 404.
    async fn fresh_tag(
        &self,
        key: &TagKey,
        ttl: Duration,
        repo: &RepositoryName,
        tag: &Tag,
    ) -> Option<Result<Found, ProxyError>> {
        // Another replica may have confirmed the tag within the TTL: then upstream isn't asked.
        self.tags.adopt_from_bucket(key, ttl).await;
        match self.tags.get(key).await {
            Some(entry) if entry.age(self.tags.now()) < ttl => {
                self.store.lookup(&entry.digest).await.map(|f| Ok(found(f)))
            }
            Some(_) => None,
            None if self.tags.is_known_missing(key) => Some(Err(ProxyError::upstream(
                ErrorCode::ManifestUnknown,
                format!("manifest unknown: {repo}:{tag}"),
            ))),
            None => None,
        }
    }

    /// Refreshes the tag from upstream; with `[fleet]`, only the replica holding the tag's
    /// lease does, and the others take its answer from the bucket.
    async fn refresh_tag_once(
        &self,
        upstream: &Upstream,
        repo: &RepositoryName,
        tag: &Tag,
        key: &TagKey,
        ttl: Duration,
        cached: Option<&TagEntry>,
    ) -> Result<Found, ProxyError> {
        let Some(leases) = &self.leases else {
            return self.refresh_tag(upstream, repo, tag, key, cached).await;
        };
        let lease = leases.bucket().keys().tag_lease(key);
        let ready = || async {
            match self.fresh_tag(key, ttl, repo, tag).await {
                Some(Ok(found)) => Some(found),
                _ => None,
            }
        };
        match leases.turn(lease, "tag", ready).await {
            Turn::Ready(found) => Ok(found),
            Turn::Fetch(_lease) => {
                // What we knew may have been superseded while waiting.
                let cached = self.tags.get(key).await.or_else(|| cached.cloned());
                self.refresh_tag(upstream, repo, tag, key, cached.as_ref())
                    .await
            }
        }
    }

    /// Revalidates with HEAD when the tag is known (HEADs don't count against Docker Hub's pull
    /// limit), and GETs by tag otherwise.
    async fn refresh_tag(
        &self,
        upstream: &Upstream,
        repo: &RepositoryName,
        tag: &Tag,
        key: &TagKey,
        cached: Option<&TagEntry>,
    ) -> Result<Found, ProxyError> {
        if cached.is_some() {
            let head = upstream.head_manifest(repo, ManifestRef::Tag(tag)).await;
            if let Err(e) = &head {
                if e.is_not_found() {
                    self.tags
                        .mark_missing(key, self.negative_ttl, self.stale_if_error)
                        .await;
                }
            }
            if let Some(digest) = head?.digest {
                // Unchanged upstream: answered with the copy here, or fetched by digest now
                // (labelled as that fetch was).
                let (m, result) = match self.store.lookup(&digest).await {
                    Some(f) => found(f),
                    None => self.fetch_digest(upstream, repo, &digest).await?,
                };
                self.remember_tag(key, &m).await;
                return Ok((m, result));
            }
        }
        let fetched = self.fetch(upstream, repo, ManifestRef::Tag(tag)).await;
        if let Err(e) = &fetched {
            if e.is_not_found() {
                self.tags
                    .mark_missing(key, self.negative_ttl, self.stale_if_error)
                    .await;
            }
        }
        let m = fetched?;
        self.remember_tag(key, &m).await;
        Ok((m, CacheResult::Miss))
    }

    async fn remember_tag(&self, key: &TagKey, m: &Manifest) {
        let entry = TagEntry {
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            size: m.bytes.len() as u64,
            validated_at_ms: self.tags.now_ms(),
        };
        // With [fleet], the other replicas wait for this record in the bucket.
        let kept = if self.leases.is_some() {
            self.tags.put_shared(key.clone(), entry).await
        } else {
            self.tags.put(key.clone(), entry).await
        };
        if let Err(e) = kept {
            // The answer is still right; only persistence failed.
            tracing::error!(error = %e, "cannot persist tag");
        }
    }

    /// GETs a manifest from upstream and keeps it under the digest it hashes to.
    async fn fetch(
        &self,
        upstream: &Upstream,
        repo: &RepositoryName,
        reference: ManifestRef<'_>,
    ) -> Result<Arc<Manifest>, UpstreamError> {
        let m = Arc::new(upstream.get_manifest(repo, reference).await?);
        // With [fleet], the other replicas wait for it in the bucket.
        let kept = if self.leases.is_some() {
            self.store.put_shared(m.clone()).await
        } else {
            self.store.put(m.clone()).await
        };
        if let Err(e) = kept {
            tracing::error!(error = %e, "cannot persist manifest");
        }
        Ok(m)
    }
}
