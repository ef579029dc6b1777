//! The access gate: a client-named blob or manifest digest is served from the cache only to a
//! route (upstream, repository) that could have pulled it (the rule is `access_rule`; the
//! records are `cache::access_store`). A route without a record for the object asks its own
//! upstream first, with a HEAD and the route's own credentials; on 200 the route is recorded,
//! anything else is that upstream's answer.
//!
//! Objects reached through a manifest the route was served (an index's children, a tag's
//! manifest) are not gated again: the registry serves what a manifest it served references.

use crate::access_rule::{admit, Access, Admission};
use crate::cache::access_store::{AccessStore, ObjectKind};
use crate::cache::blob::BlobStore;
use crate::cache::manifest_store::ManifestStore;
use crate::digest::Digest;
use crate::error::{ErrorCode, ProxyError};
use crate::metrics::Metrics;
use crate::reference::RepositoryName;
use crate::upstream::{ManifestRef, Upstream, UpstreamErrorKind};
use http::StatusCode;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What `admit` let through.
pub(crate) enum Admitted {
    /// The route's record allows it, upstream just confirmed it, or this route is fetching it
    /// right now (a concurrent request of the same route joins its own route's download).
    Allowed,
    /// Nothing of it was known or cached here: it is to be fetched under this route, and is
    /// recorded for the route only once upstream has answered for it (`settle`). While the
    /// request lives, the same route's concurrent requests are let through to join it.
    Fetch(Fetching),
}

type FetchKey = (ObjectKind, Digest);
type Route = (Box<str>, Box<str>);

/// This route's fetch of an object, known while the request that started it lives.
pub(crate) struct Fetching {
    table: Arc<Mutex<HashMap<FetchKey, (Route, usize)>>>,
    key: FetchKey,
}

impl Drop for Fetching {
    fn drop(&mut self) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, n)) = table.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                table.remove(&self.key);
            }
        }
    }
}

pub(crate) struct AccessGate {
    /// Objects being fetched under a route by a request that had no record: bounded by the
    /// requests in flight (each entry lives as long as its request).
    fetching: Arc<Mutex<HashMap<FetchKey, (Route, usize)>>>,
    records: Arc<AccessStore>,
    metrics: Arc<Metrics>,
}

/// Where the object's copy and its file are.
pub(crate) enum Object<'a> {
    Blob(&'a BlobStore),
    Manifest(&'a ManifestStore),
}

impl Object<'_> {
    fn kind(&self) -> ObjectKind {
        match self {
            Object::Blob(_) => ObjectKind::Blob,
            Object::Manifest(_) => ObjectKind::Manifest,
        }
    }

    fn file(&self, digest: &Digest) -> PathBuf {
        match self {
            Object::Blob(s) => s.file_path(digest),
            Object::Manifest(s) => s.file_path(digest),
        }
    }

    async fn may_have(&self, digest: &Digest) -> bool {
        match self {
            Object::Blob(s) => s.may_have(digest).await,
            Object::Manifest(s) => s.may_have(digest).await,
        }
    }
}

impl AccessGate {
    /// Also starts writing, every 2 s, the records whose downloads have committed since.
    pub(crate) fn new(records: AccessStore, metrics: Arc<Metrics>) -> Self {
        let records = Arc::new(records);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&records);
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(records) = weak.upgrade() else {
                        return;
                    };
                    if records.pending() > 0 {
                        // A few syscalls per record: off the async workers.
                        let _ = tokio::task::spawn_blocking(move || records.flush()).await;
                    }
                }
            });
        }
        AccessGate {
            fetching: Arc::default(),
            records,
            metrics,
        }
    }

    /// Writes records to the files committed since they were made (see `AccessStore::flush`).
    pub(crate) fn flush(&self) {
        self.records.flush();
    }

    /// `Ok`: the request may be answered from the cache, or fetched under this route (then
    /// `settle` it). `Err`: what to answer instead — this upstream's 404, or its failure.
    pub(crate) async fn admit(
        &self,
        object: Object<'_>,
        upstream: &Upstream,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Admitted, ProxyError> {
        let kind = object.kind();
        let file = object.file(digest);
        let name = upstream.config().name.as_str();
        let repository = repo.to_string();
        let known = self.records.get(kind, digest, &file).await;
        let may_have = known.is_none() && object.may_have(digest).await;
        let key = (kind, digest.clone());
        let route: Route = (name.into(), repository.as_str().into());
        if known.is_none() && self.join_own_fetch(&key, &route) {
            // This route's own download in flight: joining it is fetching it.
            return Ok(Admitted::Fetch(Fetching {
                table: self.fetching.clone(),
                key,
            }));
        }
        match admit(known.as_ref(), may_have, name, &repository) {
            Admission::Serve => Ok(Admitted::Allowed),
            // Nothing is recorded yet: only an answer of upstream's proves anything.
            Admission::Fetch => {
                let ours = {
                    let mut table = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
                    let entry = table.entry(key.clone()).or_insert((route.clone(), 0));
                    let ours = entry.0 == route;
                    if ours {
                        entry.1 += 1;
                    }
                    ours
                };
                if !ours {
                    // Another route started it between the look and now: ask upstream.
                    self.confirm(kind, upstream, repo, digest, None, &file)
                        .await?;
                    return Ok(Admitted::Allowed);
                }
                Ok(Admitted::Fetch(Fetching {
                    table: self.fetching.clone(),
                    key,
                }))
            }
            Admission::Confirm => {
                self.confirm(kind, upstream, repo, digest, known.as_ref(), &file)
                    .await?;
                Ok(Admitted::Allowed)
            }
        }
    }

    /// Whether this route is fetching `key` now (then counted as one more of its requests).
    fn join_own_fetch(&self, key: &FetchKey, route: &Route) -> bool {
        let mut table = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        match table.get_mut(key) {
            Some((r, n)) if r == route => {
                *n += 1;
                true
            }
            _ => false,
        }
    }

    /// After a successful answer to a request `admit` let through to be fetched: if this
    /// route's upstream gave it (`from_route`: a download this route started, a request passed
    /// on), the route is recorded. If the answer came from elsewhere — another route's download
    /// it joined, a copy committed meanwhile — it is served only if a record allows the route
    /// by now, or its upstream confirms it (else that upstream's answer replaces it).
    pub(crate) async fn settle(
        &self,
        admitted: Admitted,
        object: Object<'_>,
        upstream: &Upstream,
        repo: &RepositoryName,
        digest: &Digest,
        from_route: bool,
    ) -> Result<(), ProxyError> {
        let Admitted::Fetch(_fetching) = admitted else {
            return Ok(());
        };
        let kind = object.kind();
        let file = object.file(digest);
        let name = upstream.config().name.as_str();
        let repository = repo.to_string();
        let known = self.records.get(kind, digest, &file).await;
        if known.as_ref().is_some_and(|a| a.allows(name, &repository)) {
            return Ok(());
        }
        if from_route {
            let visibility = upstream.config().visibility();
            let access = Access::confirmed(known.as_ref(), visibility, name, &repository);
            self.records.record(kind, digest, access, &file);
            return Ok(());
        }
        self.confirm(kind, upstream, repo, digest, known.as_ref(), &file)
            .await
    }

    /// Asks the route's upstream (HEAD, the route's credentials) whether it has the object;
    /// records the route on 200.
    async fn confirm(
        &self,
        kind: ObjectKind,
        upstream: &Upstream,
        repo: &RepositoryName,
        digest: &Digest,
        known: Option<&Access>,
        file: &std::path::Path,
    ) -> Result<(), ProxyError> {
        let name = upstream.config().name.as_str();
        let repository = repo.to_string();
        let asked = match kind {
            ObjectKind::Blob => upstream.head_blob(repo, digest).await.map(drop),
            ObjectKind::Manifest => upstream
                .head_manifest(repo, ManifestRef::Digest(digest))
                .await
                .map(drop),
        };
        match asked {
            Ok(()) => {
                self.metrics.access_confirmation("allowed");
                let visibility = upstream.config().visibility();
                let access = Access::confirmed(known, visibility, name, &repository);
                tracing::debug!(%digest, upstream = name, repository, %access, "upstream confirmed a cached object for this route");
                self.records.record(kind, digest, access, file);
                Ok(())
            }
            Err(e) if e.is_not_found() => {
                self.metrics.access_confirmation("denied");
                tracing::info!(%digest, upstream = name, repository, "a cached object not confirmed for this route; not served");
                Err(not_here(kind, digest, &repository))
            }
            // 401/403: upstream's refusal is the answer, as it would be uncached.
            Err(e)
                if e.kind == UpstreamErrorKind::Unauthorized
                    || e.kind == UpstreamErrorKind::Denied =>
            {
                self.metrics.access_confirmation("denied");
                Err(e.into())
            }
            Err(e) => {
                self.metrics.access_confirmation("error");
                Err(e.into())
            }
        }
    }

    /// A manifest served under this route by tag (a platform answer: an index's child, or a
    /// conversion archway made): a GET of its digest under the same route is served too, as
    /// its source was.
    pub(crate) async fn served_by_tag(
        &self,
        manifests: &ManifestStore,
        upstream: &Upstream,
        repo: &RepositoryName,
        digest: &Digest,
    ) {
        self.granted(Object::Manifest(manifests), upstream, repo, digest)
            .await;
    }

    /// An object this route got, or archway made from what it got (a converted layer): a GET
    /// of its digest under the same route is served. Recorded only if not yet allowed, so a
    /// repeated answer costs a memo hit.
    pub(crate) async fn granted(
        &self,
        object: Object<'_>,
        upstream: &Upstream,
        repo: &RepositoryName,
        digest: &Digest,
    ) {
        let name = upstream.config().name.as_str();
        let repository = repo.to_string();
        let kind = object.kind();
        let file = object.file(digest);
        let known = self.records.get(kind, digest, &file).await;
        if known.as_ref().is_some_and(|a| a.allows(name, &repository)) {
            return;
        }
        let visibility = upstream.config().visibility();
        let access = Access::confirmed(known.as_ref(), visibility, name, &repository);
        self.records.record(kind, digest, access, &file);
    }
}

/// What upstream would have said: the route cannot pull it, so for the client it is not there.
fn not_here(kind: ObjectKind, digest: &Digest, repository: &str) -> ProxyError {
    let (code, what) = match kind {
        ObjectKind::Blob => (ErrorCode::BlobUnknown, "blob"),
        ObjectKind::Manifest => (ErrorCode::ManifestUnknown, "manifest"),
    };
    ProxyError::upstream(
        code,
        format!("{what} unknown to upstream: {repository}@{digest}"),
    )
    .with_status(StatusCode::NOT_FOUND)
}
