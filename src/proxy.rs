//! The pipeline: parse → route → caches → upstream → response. Everything a client sees is
//! decided here; the pieces it calls are pure or thin.

use crate::access_log::{AccessLog, LoggedBody, RequestNotes};
use crate::api::{self, ByteRange, Endpoint};
use crate::body::{self, ResponseBody};
use crate::cache::blob::{BlobStore, BlobStoreLimits, FillError, IncomingBlob, SourceError};
use crate::cache::keyed_lock::KeyedLock;
use crate::cache::manifest_store::{ManifestStore, StoredManifest};
use crate::cache::tag_store::{now_ms, TagEntry, TagKey, TagStore};
use crate::client_auth::ClientAuth;
use crate::config::Config;
use crate::conversion::convert_oci_to_docker;
use crate::digest::Digest;
use crate::error::{ErrorCode, ProxyError};
use crate::image_index::{ImageIndex, SelectError, MAX_INDEX_DEPTH};
use crate::media_type;
use crate::media_type::AcceptSet;
use crate::metrics::Metrics;
use crate::platform::{Platform, WindowsMatch};
use crate::reference::{Reference, Tag};
use crate::rewrite::{
    choose_route, client_platform, should_rewrite, Decision, Route, SelectionStep,
};
use crate::route::{OciForLegacy, RequestFacts, RewriteMode};
use crate::routing::{self, Target};
use crate::upstream::{status_error, Upstream};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Distribution refuses manifests above 4 MiB; so do we, so a hostile upstream can't fill memory.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
/// How long an upstream failure for one tag is reused by requests that were waiting on it.
const RECENT_FAILURE_TTL: std::time::Duration = std::time::Duration::from_secs(5);
/// What a rewritten (or rewritable) answer depends on.
const HINT_VARY: &str = "Accept, User-Agent, X-Meta-Platform";
const STALE_WARNING: &str = "110 - \"Response is Stale\"";

/// Counters the tests and (later) metrics read.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub stale_served: AtomicU64,
    pub manifest_hits: AtomicU64,
    pub manifest_misses: AtomicU64,
    pub blob_hits: AtomicU64,
    pub blob_misses: AtomicU64,
    pub blob_coalesced: AtomicU64,
}

pub struct Proxy {
    pub stats: ProxyStats,
    config: Config,
    upstreams: Vec<Arc<Upstream>>,
    default_upstream: Option<usize>,
    manifests: ManifestStore,
    tags: TagStore,
    /// Concurrent misses for one tag make one upstream request.
    tag_locks: KeyedLock<TagKey>,
    recent_failures: moka::sync::Cache<TagKey, (Instant, ProxyError)>,
    routes: Vec<Route>,
    /// Rewrite answers by (index, platform, what the client takes): a rewritten hit costs about
    /// what a plain hit does.
    selections: moka::sync::Cache<SelectionKey, Arc<Resolved>>,
    blobs: Arc<BlobStore>,
    metrics: Arc<Metrics>,
    /// `[auth]`: credentials every `/v2/` request must carry.
    client_auth: Option<ClientAuth>,
    answers: Answers,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyInitError {
    #[error("[auth]: {0}")]
    ClientAuth(#[from] crate::client_auth::ClientAuthError),
    #[error("cannot open the cache under {path}: {source}")]
    Cache {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Route(String),
    #[error("upstream `{name}`: {source}")]
    Upstream {
        name: String,
        source: crate::upstream::UpstreamInitError,
    },
}

/// How a request was answered, for logs (and later metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheResult {
    Hit,
    Miss,
    Stale,
    Coalesced,
}

impl CacheResult {
    fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Coalesced => "coalesced",
        }
    }

    /// Where the answer's bytes come from, for the bytes-served metric.
    fn source(self) -> &'static str {
        match self {
            CacheResult::Hit | CacheResult::Stale => "cache",
            CacheResult::Miss | CacheResult::Coalesced => "upstream",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SelectionKey {
    index: Digest,
    platform: String,
    windows: WindowsMatch,
    accepts_oci: bool,
    oci_for_legacy: OciForLegacy,
}

/// A cached rewrite: the answer and how it was found.
#[derive(Debug)]
struct Resolved {
    answer: Arc<StoredManifest>,
    converted: bool,
    steps: Vec<SelectionStep>,
    offered: Vec<String>,
}

/// Where a request came from and in on: route matching reads both.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnInfo {
    pub local: Option<std::net::SocketAddr>,
    pub peer: Option<std::net::SocketAddr>,
}

/// The parts of the client request the pipeline reads; nothing else is ever forwarded.
struct ClientRequest {
    conn: ConnInfo,
    method: Method,
    headers: HeaderMap,
    query: Option<String>,
    /// `archway explain` asks: the full platform decision is recorded in the notes.
    explain: bool,
}

/// Marks a request (as an extension) as coming from `archway explain`, which needs the whole
/// platform decision; other requests skip recording it.
#[derive(Debug, Clone, Copy)]
pub struct ExplainRequest;

/// How many tag answers `Answers` remembers before it starts over.
const MAX_ANSWERS: usize = 10_000;

/// Tag answers by what they depend on: the manifest the tag points at, the route, and the
/// client's hints exactly as sent (User-Agent, X-Meta-Platform, every Accept line). A client
/// that asks again with the same headers gets the remembered answer without parsing its Accept
/// or User-Agent or looking the selection up again: a rewritten answer then costs what a
/// pass-through does.
#[derive(Default)]
struct Answers(std::sync::RwLock<std::collections::HashMap<u64, Arc<AnswerMemo>>>);

struct AnswerMemo {
    manifest: Digest,
    route: Option<usize>,
    hints: Vec<(HeaderName, HeaderValue)>,
    answer: Arc<StoredManifest>,
    vary: bool,
    rewrite: Option<String>,
}

/// The request headers a tag answer depends on.
static HINT_HEADERS: [HeaderName; 3] = [
    header::USER_AGENT,
    HeaderName::from_static("x-meta-platform"),
    header::ACCEPT,
];

impl AnswerMemo {
    fn hints(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        HINT_HEADERS
            .iter()
            .flat_map(move |name| headers.get_all(name).iter().map(move |v| (name, v)))
    }

    fn key(m: &StoredManifest, route: Option<&Route>, headers: &HeaderMap) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        m.digest.hash(&mut h);
        route.map(|r| r.index).hash(&mut h);
        for (name, value) in Self::hints(headers) {
            name.hash(&mut h);
            value.as_bytes().hash(&mut h);
        }
        h.finish()
    }

    fn new(
        m: &StoredManifest,
        route: Option<&Route>,
        headers: &HeaderMap,
        answer: &Arc<StoredManifest>,
        vary: bool,
        notes: &RequestNotes,
    ) -> AnswerMemo {
        AnswerMemo {
            manifest: m.digest.clone(),
            route: route.map(|r| r.index),
            hints: Self::hints(headers)
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            answer: answer.clone(),
            vary,
            rewrite: notes.rewrite.clone(),
        }
    }

    /// The key is a hash: a hit must also match every input exactly.
    fn matches(&self, m: &StoredManifest, route: Option<&Route>, headers: &HeaderMap) -> bool {
        self.manifest == m.digest
            && self.route == route.map(|r| r.index)
            && Self::hints(headers).eq(self.hints.iter().map(|(n, v)| (n, v)))
    }
}

impl Answers {
    fn get(
        &self,
        key: u64,
        m: &StoredManifest,
        route: Option<&Route>,
        headers: &HeaderMap,
    ) -> Option<Arc<AnswerMemo>> {
        let map = self.0.read().ok()?;
        map.get(&key)
            .filter(|memo| memo.matches(m, route, headers))
            .cloned()
    }

    fn insert(&self, key: u64, memo: AnswerMemo) {
        if let Ok(mut map) = self.0.write() {
            // A crude bound: clients' header sets are few; a flood of distinct ones just
            // starts the memo over.
            if map.len() >= MAX_ANSWERS {
                map.clear();
            }
            map.insert(key, Arc::new(memo));
        }
    }
}

impl Proxy {
    pub fn new(config: Config) -> Result<Proxy, ProxyInitError> {
        let cache_err =
            |path: std::path::PathBuf| move |source| ProxyInitError::Cache { path, source };
        let dir = config.data_dir.clone();
        let blobs = BlobStore::open_with(
            dir.clone(),
            BlobStoreLimits {
                max_bytes: config.cache.max_size,
                write_buffer: config.cache.write_buffer,
                small_blob_memory: config.cache.memory_size / 4,
            },
        )
        .map_err(cache_err(dir.clone()))?;
        let mdir = dir.join("manifests");
        let manifests =
            ManifestStore::open(mdir.clone(), config.cache.memory_size).map_err(cache_err(mdir))?;
        let tdir = dir.join("tags");
        let tags = TagStore::open(tdir.clone()).map_err(cache_err(tdir))?;
        let metrics = Arc::new(Metrics::new());
        metrics.observe_blob_store(blobs.clone());
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                Upstream::new(u.clone())
                    .map(|up| Arc::new(up.with_metrics(metrics.clone())))
                    .map_err(|source| ProxyInitError::Upstream {
                        name: u.name.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| Route::from_config(i, r.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ProxyInitError::Route(e.message))?;
        let client_auth = config.auth.as_ref().map(ClientAuth::load).transpose()?;
        Ok(Proxy {
            stats: ProxyStats::default(),
            default_upstream: config.default_upstream(),
            config,
            upstreams,
            manifests,
            tags,
            tag_locks: KeyedLock::default(),
            routes,
            selections: moka::sync::Cache::builder().max_capacity(50_000).build(),
            recent_failures: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(RECENT_FAILURE_TTL)
                .build(),
            blobs,
            metrics,
            client_auth,
            answers: Answers::default(),
        })
    }

    /// The metrics this proxy (and its upstreams and blob store) report to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn upstream(&self, i: usize) -> Option<&Arc<Upstream>> {
        self.upstreams.get(i)
    }

    pub fn blob_store(&self) -> &Arc<BlobStore> {
        &self.blobs
    }

    /// Answers one request. Never fails: errors become registry error responses.
    pub async fn handle<B>(
        self: &Arc<Self>,
        req: Request<B>,
        conn: ConnInfo,
    ) -> Response<LoggedBody> {
        let started = Instant::now();
        let log_path = match req.uri().query() {
            Some(q) => format!("{}?{q}", req.uri().path()),
            None => req.uri().path().to_owned(),
        };
        let method = req.method().clone();
        let (response, notes) = match self.authenticate(&req).await {
            Ok(()) => self.answer(req, conn).await,
            Err(refused) => refused,
        };
        let status = response.status().as_u16();
        let expected_bytes = if method == Method::HEAD {
            Some(0)
        } else {
            response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        response.map(|b| {
            LoggedBody::new(
                b,
                AccessLog {
                    method,
                    path: log_path,
                    status,
                    expected_bytes,
                    started,
                    notes,
                    metrics: Some(self.metrics.clone()),
                },
            )
        })
    }

    /// With `[auth]`, a `/v2/` request without good credentials gets 401 and the Basic
    /// challenge. Nothing of the presented credentials goes into the answer or the log.
    async fn authenticate<B>(
        &self,
        req: &Request<B>,
    ) -> Result<(), (Response<ResponseBody>, RequestNotes)> {
        let Some(auth) = &self.client_auth else {
            return Ok(());
        };
        let path = req.uri().path();
        if path != "/v2" && !path.starts_with("/v2/") {
            return Ok(());
        }
        let denied = match auth.check(req.headers().get(header::AUTHORIZATION)).await {
            Ok(()) => return Ok(()),
            Err(d) => d,
        };
        let e = ProxyError::downstream(ErrorCode::Unauthorized, denied.as_str());
        let mut response = error_response(&e, req.method() == Method::HEAD);
        let h = response.headers_mut();
        h.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(crate::client_auth::CHALLENGE),
        );
        let notes = RequestNotes {
            error: Some(e.message),
            ..RequestNotes::default()
        };
        Err((response, notes))
    }

    /// The response and what was learned on the way; `handle` logs it, `archway explain` prints it.
    pub async fn answer<B>(
        &self,
        req: Request<B>,
        conn: ConnInfo,
    ) -> (Response<ResponseBody>, RequestNotes) {
        let (parts, _body) = req.into_parts();
        let client = ClientRequest {
            conn,
            method: parts.method,
            headers: parts.headers,
            query: parts.uri.query().map(str::to_owned),
            explain: parts.extensions.get::<ExplainRequest>().is_some(),
        };
        let mut notes = RequestNotes::default();
        let mut response = match self.dispatch(parts.uri.path(), &client, &mut notes).await {
            Ok(r) => r,
            Err(e) => {
                notes.error = Some(e.message.clone());
                // The body is archway's error, not content from the cache or upstream.
                notes.source = None;
                let mut r = error_response(&e, client.method == Method::HEAD);
                if notes.vary_on_error {
                    r.headers_mut()
                        .insert(header::VARY, HeaderValue::from_static(HINT_VARY));
                }
                r
            }
        };
        response
            .headers_mut()
            .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
        (response, notes)
    }

    async fn dispatch(
        &self,
        path: &str,
        client: &ClientRequest,
        notes: &mut RequestNotes,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let endpoint = api::parse(&client.method, path)?;
        notes.kind = Some(endpoint.kind());
        let raw_name = match endpoint.name() {
            None => return Ok(ping()),
            Some(n) => n,
        };
        let host = client
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let target = routing::resolve(
            &self.config.upstreams,
            self.default_upstream,
            raw_name,
            api::ns_param(client.query.as_deref()),
            host,
        )?;
        let upstream = self.upstreams[target.upstream].clone();
        notes.upstream = Some(upstream.config().name.clone());
        match &endpoint {
            Endpoint::Ping => Ok(ping()),
            Endpoint::Manifest { reference, .. } => {
                let (m, result) = match reference {
                    Reference::Digest(d) => self.manifest_by_digest(&upstream, &target, d).await?,
                    Reference::Tag(t) => self.manifest_by_tag(&upstream, &target, t).await?,
                };
                notes.cache = Some(result.as_str());
                notes.source = Some(result.source());
                let counter = match result {
                    CacheResult::Hit => &self.stats.manifest_hits,
                    CacheResult::Stale => &self.stats.stale_served,
                    CacheResult::Miss | CacheResult::Coalesced => &self.stats.manifest_misses,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let stale = result == CacheResult::Stale;
                match reference {
                    // Digest requests are never rewritten: the client gets what it named.
                    Reference::Digest(_) => Ok(manifest_response(client, &m, stale, false)),
                    Reference::Tag(_) => {
                        // Only the rewrite path fails past here, and its 404s (no match, OCI
                        // refused) are this client's, not everyone's: caches must know.
                        notes.vary_on_error = true;
                        let (answer, vary) = self
                            .answer_for_client(&upstream, &target, client, m, notes)
                            .await?;
                        Ok(manifest_response(client, &answer, stale, vary))
                    }
                }
            }
            Endpoint::Blob { digest, .. } => {
                self.blob(&upstream, &target, digest, client, notes).await
            }
            Endpoint::TagsList { .. } => {
                notes.source = Some("upstream");
                let q = api::passthrough_query(client.query.as_deref(), &["n", "last"]);
                self.pass_through(
                    &upstream,
                    &target,
                    raw_name,
                    api::ns_param(client.query.as_deref()),
                    &format!("tags/list{q}"),
                    ErrorCode::NameUnknown,
                )
                .await
            }
            Endpoint::Referrers { digest, .. } => {
                notes.source = Some("upstream");
                let q = api::passthrough_query(client.query.as_deref(), &["artifactType"]);
                self.pass_through(
                    &upstream,
                    &target,
                    raw_name,
                    api::ns_param(client.query.as_deref()),
                    &format!("referrers/{digest}{q}"),
                    ErrorCode::ManifestUnknown,
                )
                .await
            }
        }
    }

    // === manifests ===

    async fn manifest_by_digest(
        &self,
        upstream: &Upstream,
        target: &Target,
        digest: &Digest,
    ) -> Result<(Arc<StoredManifest>, CacheResult), ProxyError> {
        if let Some(m) = self.manifests.get(digest).await {
            return Ok((m, CacheResult::Hit));
        }
        let m = self
            .fetch_manifest(upstream, target, &digest.to_string(), Some(digest))
            .await?;
        Ok((m, CacheResult::Miss))
    }

    async fn manifest_by_tag(
        &self,
        upstream: &Upstream,
        target: &Target,
        tag: &Tag,
    ) -> Result<(Arc<StoredManifest>, CacheResult), ProxyError> {
        let key = TagKey {
            upstream: upstream.config().name.clone(),
            repository: target.repository.to_string(),
            tag: tag.to_string(),
        };
        let ttl = upstream
            .config()
            .tag_ttl
            .unwrap_or(self.config.cache.tag_ttl);
        if let Some(fresh) = self.fresh_tag(&key, ttl, target, tag).await {
            return fresh;
        }
        let queued_at = Instant::now();
        let _refreshing = self.tag_locks.lock(&key).await;
        // Whoever held the lock before us may have refreshed it.
        if let Some(fresh) = self.fresh_tag(&key, ttl, target, tag).await {
            return fresh;
        }
        let cached = self.tags.get(&key);
        // Requests that queued behind a refresh which found upstream down don't each wait out
        // another timeout: they take that answer. Requests that came later ask upstream again.
        let refreshed = match self.recent_failures.get(&key) {
            Some((failed_at, e)) if failed_at >= queued_at => Err(e),
            _ => {
                self.refresh_tag(upstream, target, tag, &key, cached.as_ref())
                    .await
            }
        };
        match refreshed {
            Ok(found) => Ok(found),
            Err(e) if e.is_upstream_unavailable() => {
                self.recent_failures
                    .insert(key.clone(), (Instant::now(), e.clone()));
                // stale-if-error: a cached answer young enough beats an error.
                let Some(entry) = cached else { return Err(e) };
                if entry.age(SystemTime::now()) > self.config.cache.stale_if_error {
                    return Err(e);
                }
                match self.manifests.get(&entry.digest).await {
                    Some(m) => {
                        tracing::warn!(upstream = %key.upstream, repository = %key.repository, tag = %key.tag, error = %e.message, "upstream unavailable, serving stale tag");
                        Ok((m, CacheResult::Stale))
                    }
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The cached answer while it is fresh, or the remembered 404.
    async fn fresh_tag(
        &self,
        key: &TagKey,
        ttl: std::time::Duration,
        target: &Target,
        tag: &Tag,
    ) -> Option<Result<(Arc<StoredManifest>, CacheResult), ProxyError>> {
        match self.tags.get(key) {
            Some(entry) if entry.age(SystemTime::now()) < ttl => self
                .manifests
                .get(&entry.digest)
                .await
                .map(|m| Ok((m, CacheResult::Hit))),
            Some(_) => None,
            None if self.tags.is_known_missing(key) => Some(Err(ProxyError::upstream(
                ErrorCode::ManifestUnknown,
                format!("manifest unknown: {}:{tag}", target.repository),
            ))),
            None => None,
        }
    }

    /// Revalidates with HEAD when we already know the tag (HEADs don't count against Docker
    /// Hub's pull limit), and GETs by tag otherwise.
    async fn refresh_tag(
        &self,
        upstream: &Upstream,
        target: &Target,
        tag: &Tag,
        key: &TagKey,
        cached: Option<&TagEntry>,
    ) -> Result<(Arc<StoredManifest>, CacheResult), ProxyError> {
        let suffix = format!("manifests/{tag}");
        if cached.is_some() {
            let resp = upstream
                .send(Method::HEAD, &target.repository, &suffix, manifest_accept())
                .await?;
            if resp.status() == StatusCode::NOT_FOUND {
                self.tags
                    .mark_missing(key, self.config.cache.negative_ttl)
                    .await;
            }
            check_status(
                upstream,
                resp.status(),
                resp.headers(),
                ErrorCode::ManifestUnknown,
            )?;
            let announced = resp
                .headers()
                .get(CONTENT_DIGEST)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Digest>().ok());
            if let Some(digest) = announced {
                let m = match self.manifests.get(&digest).await {
                    Some(m) => m,
                    None => {
                        self.fetch_manifest(upstream, target, &digest.to_string(), Some(&digest))
                            .await?
                    }
                };
                self.remember_tag(key, &m).await;
                return Ok((m, CacheResult::Hit));
            }
        }
        let resp = upstream
            .send(Method::GET, &target.repository, &suffix, manifest_accept())
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            self.tags
                .mark_missing(key, self.config.cache.negative_ttl)
                .await;
        }
        let m = self.read_manifest(upstream, resp, None).await?;
        self.remember_tag(key, &m).await;
        Ok((m, CacheResult::Miss))
    }

    async fn remember_tag(&self, key: &TagKey, m: &StoredManifest) {
        let entry = TagEntry {
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            size: m.bytes.len() as u64,
            validated_at_ms: now_ms(),
        };
        if let Err(e) = self.tags.put(key.clone(), entry).await {
            // The answer is still right; only persistence failed.
            tracing::error!(error = %e, "cannot persist tag");
        }
    }

    async fn fetch_manifest(
        &self,
        upstream: &Upstream,
        target: &Target,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<Arc<StoredManifest>, ProxyError> {
        let resp = upstream
            .send(
                Method::GET,
                &target.repository,
                &format!("manifests/{reference}"),
                manifest_accept(),
            )
            .await?;
        self.read_manifest(upstream, resp, expected).await
    }

    /// Reads a manifest body, keeps its exact bytes, and stores it under the digest it hashes to.
    async fn read_manifest(
        &self,
        upstream: &Upstream,
        resp: Response<crate::body::UpstreamBody>,
        expected: Option<&Digest>,
    ) -> Result<Arc<StoredManifest>, ProxyError> {
        expect_ok(upstream, &resp, ErrorCode::ManifestUnknown, "a manifest")?;
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned());
        let announced = resp
            .headers()
            .get(CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = http_body_util::Limited::new(resp.into_body(), MAX_MANIFEST_BYTES)
            .collect()
            .await
            .map_err(|e| {
                ProxyError::bad_gateway(format!(
                    "reading a manifest from upstream {} failed: {e}",
                    upstream.config().name
                ))
            })?
            .to_bytes();
        let digest = match expected {
            Some(d) if d.verifies(&bytes) => d.clone(),
            Some(d) => {
                return Err(ProxyError::bad_gateway(format!(
                    "upstream {} sent a manifest that does not match {d}",
                    upstream.config().name
                )))
            }
            None => Digest::sha256_of(&bytes),
        };
        if let Some(a) = announced.filter(|a| *a != digest.to_string()) {
            tracing::warn!(announced = %a, computed = %digest, "upstream's Docker-Content-Digest differs from the bytes; using the bytes' digest");
        }
        let media_type = media_type_of(content_type.as_deref(), &bytes);
        let m = Arc::new(StoredManifest {
            digest,
            media_type,
            bytes,
        });
        if let Err(e) = self.manifests.put(m.clone()).await {
            tracing::error!(error = %e, "cannot persist manifest");
        }
        Ok(m)
    }

    // === platform rewriting ===

    /// The answer to a tag request for this client: the manifest itself, or — for a client that
    /// can't take an index (or on an `always` route) — the child for its platform, converted to
    /// Docker schema2 when it can't take OCI either.
    async fn answer_for_client(
        &self,
        upstream: &Upstream,
        target: &Target,
        client: &ClientRequest,
        m: Arc<StoredManifest>,
        notes: &mut RequestNotes,
    ) -> Result<(Arc<StoredManifest>, bool), ProxyError> {
        let header_str = |name: &str| client.headers.get(name).and_then(|v| v.to_str().ok());
        let user_agent = header_str("user-agent");
        let facts = RequestFacts {
            host: header_str("host"),
            local_port: client.conn.local.map(|a| a.port()),
            client_ip: client.conn.peer.map(|a| a.ip()),
            repository: target.repository.as_str(),
            user_agent,
        };
        let route = choose_route(&self.routes, &facts);
        let memo_key = (!client.explain).then(|| AnswerMemo::key(&m, route, &client.headers));
        if let Some(hit) =
            memo_key.and_then(|key| self.answers.get(key, &m, route, &client.headers))
        {
            notes.rewrite = hit.rewrite.clone();
            return Ok((hit.answer.clone(), hit.vary));
        }
        let mode = route.map(|r| r.config.rewrite).unwrap_or_default();
        let accept = AcceptSet::from_headers(&client.headers);
        let (rewrite, why) = should_rewrite(mode, &accept, &m.media_type);
        let mut decision = Decision {
            upstream: upstream.config().name.clone(),
            repository: target.repository.to_string(),
            route: route.map(|r| r.index),
            manifest_digest: m.digest.to_string(),
            manifest_media_type: m.media_type.clone(),
            rewrite,
            rewrite_reason: why.to_owned(),
            selected_by: format!("{:?}", target.selected_by).to_lowercase(),
            ..Default::default()
        };
        let result = self
            .resolve_for_client(
                upstream,
                target,
                client,
                m.clone(),
                route,
                &accept,
                &mut decision,
                notes,
            )
            .await;
        if let Ok((answer, vary)) = &result {
            if let Some(key) = memo_key {
                self.answers.insert(
                    key,
                    AnswerMemo::new(&m, route, &client.headers, answer, *vary, notes),
                );
            }
            decision.answer_digest = answer.digest.to_string();
            decision.answer_media_type = answer.media_type.clone();
        }
        if client.explain {
            notes.decision = Some(Box::new(decision));
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn resolve_for_client(
        &self,
        upstream: &Upstream,
        target: &Target,
        client: &ClientRequest,
        m: Arc<StoredManifest>,
        route: Option<&Route>,
        accept: &AcceptSet,
        decision: &mut Decision,
        notes: &mut RequestNotes,
    ) -> Result<(Arc<StoredManifest>, bool), ProxyError> {
        let header_str = |name: &str| client.headers.get(name).and_then(|v| v.to_str().ok());
        let user_agent = header_str("user-agent");
        let mode = route.map(|r| r.config.rewrite).unwrap_or_default();
        let oci_for_legacy = route.map(|r| r.config.oci_for_legacy).unwrap_or_default();
        let windows = route.map(|r| r.config.windows_match).unwrap_or_default();
        let rewrite = decision.rewrite;
        let single_oci = m.media_type == media_type::OCI_MANIFEST;
        let vary =
            mode != RewriteMode::Never && (media_type::is_index(&m.media_type) || single_oci);
        let answer = if rewrite {
            let (platform, source) =
                client_platform(route, header_str("x-meta-platform"), user_agent)?;
            decision.platform = Some(platform.to_string());
            decision.platform_source = Some(source);
            let key = SelectionKey {
                index: m.digest.clone(),
                platform: platform.to_string(),
                windows,
                accepts_oci: accept.accepts(media_type::OCI_MANIFEST),
                oci_for_legacy,
            };
            let resolved = match self.selections.get(&key) {
                Some(r) => r,
                None => {
                    let mut refused = None;
                    let fitted = match self
                        .select_for_platform(
                            upstream,
                            target,
                            &m,
                            &platform,
                            windows,
                            decision,
                            &mut refused,
                        )
                        .await
                    {
                        Ok(child) => {
                            self.fit_for_client(
                                child,
                                accept,
                                oci_for_legacy,
                                &platform,
                                &mut refused,
                            )
                            .await
                        }
                        Err(e) => Err(e),
                    };
                    if let Some(reason) = refused {
                        notes.rewrite_outcome = Some((platform.to_string(), reason));
                    }
                    let (answer, converted) = fitted?;
                    let r = Arc::new(Resolved {
                        answer,
                        converted,
                        steps: decision.steps.clone(),
                        offered: decision.offered.clone(),
                    });
                    self.selections.insert(key, r.clone());
                    r
                }
            };
            decision.steps = resolved.steps.clone();
            decision.offered = resolved.offered.clone();
            decision.converted = resolved.converted;
            let reason = match (resolved.converted, mode) {
                (true, _) => "converted",
                (false, RewriteMode::Always) => "always",
                (false, _) => "legacy",
            };
            notes.rewrite_outcome = Some((platform.to_string(), reason));
            notes.rewrite = Some(format!(
                "{platform} ({}){}",
                source.as_str(),
                if resolved.converted {
                    ", converted"
                } else {
                    ""
                }
            ));
            resolved.answer.clone()
        } else if single_oci
            && mode != RewriteMode::Never
            && !accept.accepts(media_type::OCI_MANIFEST)
        {
            // A single-platform OCI image for a client that only knows Docker's types.
            let platform = Platform::parse(crate::rewrite::DEFAULT_PLATFORM)
                .map_err(|e| ProxyError::internal(e.to_string()))?;
            let mut refused = None;
            let fitted = self
                .fit_for_client(m, accept, oci_for_legacy, &platform, &mut refused)
                .await;
            // No platform was selected: the image has only one.
            if let Some(reason) = refused {
                notes.rewrite_outcome = Some(("none".into(), reason));
            }
            let (answer, converted) = fitted?;
            decision.converted = converted;
            if converted {
                notes.rewrite = Some("converted".into());
                notes.rewrite_outcome = Some(("none".into(), "converted"));
            }
            answer
        } else {
            m
        };
        Ok((answer, vary))
    }

    /// Follows the index (and nested indexes) down to one manifest for `platform`. `refused`
    /// becomes `no-match` when the index has nothing for it.
    #[allow(clippy::too_many_arguments)]
    async fn select_for_platform(
        &self,
        upstream: &Upstream,
        target: &Target,
        index: &Arc<StoredManifest>,
        platform: &Platform,
        windows: WindowsMatch,
        decision: &mut Decision,
        refused: &mut Option<&'static str>,
    ) -> Result<Arc<StoredManifest>, ProxyError> {
        let mut current = index.clone();
        for _ in 0..MAX_INDEX_DEPTH {
            let parsed = ImageIndex::parse(&current.bytes)?;
            if decision.offered.is_empty() {
                decision.offered = parsed.offered().iter().map(|p| p.to_string()).collect();
            }
            let selection = parsed.select(platform, windows).map_err(|e| {
                if matches!(e, SelectError::NoMatch { .. }) {
                    *refused = Some("no-match");
                }
                ProxyError::from(e)
            })?;
            decision.steps.push(SelectionStep {
                index_digest: current.digest.to_string(),
                chosen_digest: selection.child.digest.to_string(),
                chosen_media_type: selection.child.media_type.clone(),
                chosen_platform: selection.child.platform.as_ref().map(|p| p.to_string()),
                reason: selection.reason.clone(),
            });
            let (child, _) = self
                .manifest_by_digest(upstream, target, &selection.child.digest)
                .await?;
            if !media_type::is_index(&child.media_type) {
                return Ok(child);
            }
            current = child;
        }
        Err(ProxyError::bad_gateway(format!(
            "index {} nests deeper than {MAX_INDEX_DEPTH} levels",
            index.digest
        )))
    }

    /// An OCI manifest for a client that doesn't accept OCI: converted to Docker schema2 (and
    /// stored, so the client's GET by the new digest is served) or refused, as the route says.
    /// `refused` becomes `rejected` when it is refused or cannot be converted.
    async fn fit_for_client(
        &self,
        child: Arc<StoredManifest>,
        accept: &AcceptSet,
        oci_for_legacy: OciForLegacy,
        platform: &Platform,
        refused: &mut Option<&'static str>,
    ) -> Result<(Arc<StoredManifest>, bool), ProxyError> {
        if child.media_type != media_type::OCI_MANIFEST || accept.accepts(media_type::OCI_MANIFEST)
        {
            return Ok((child, false));
        }
        if oci_for_legacy == OciForLegacy::Reject {
            *refused = Some("rejected");
            return Err(ProxyError::downstream(
                ErrorCode::ManifestUnknown,
                format!(
                    "the image for {platform} is an OCI manifest ({}), which this client does not accept (oci_for_legacy = \"reject\")",
                    child.digest
                ),
            ));
        }
        let bytes = convert_oci_to_docker(&child.bytes).map_err(|e| {
            *refused = Some("rejected");
            ProxyError::downstream(
                ErrorCode::ManifestUnknown,
                format!(
                    "the image for {platform} is an OCI manifest ({}) that cannot be converted for a client without OCI support: {e}",
                    child.digest
                ),
            )
        })?;
        let converted = Arc::new(StoredManifest {
            digest: Digest::sha256_of(&bytes),
            media_type: media_type::DOCKER_MANIFEST.to_owned(),
            bytes: Bytes::from(bytes),
        });
        self.manifests
            .put(converted.clone())
            .await
            .map_err(|e| ProxyError::internal(format!("cannot store a converted manifest: {e}")))?;
        Ok((converted, true))
    }

    // === blobs ===

    async fn blob(
        &self,
        upstream: &Arc<Upstream>,
        target: &Target,
        digest: &Digest,
        client: &ClientRequest,
        notes: &mut RequestNotes,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        if let Some(blob) = self.blobs.lookup(digest).await {
            self.note_blob(CacheResult::Hit, notes);
            return Ok(blob_response(client, digest, blob.size(), |span| {
                blob.body(span)
            }));
        }
        if client.method == Method::HEAD {
            // Being downloaded, or committed since the lookup above: the size is known, upstream
            // isn't asked.
            if let Some((size, local)) = self.blobs.head(digest) {
                let result = if local {
                    CacheResult::Hit
                } else {
                    CacheResult::Coalesced
                };
                self.note_blob(result, notes);
                let mut out = Response::new(body::empty());
                out.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
                blob_headers(out.headers_mut(), digest);
                return Ok(out);
            }
            // A HEAD tells the client the size; it must not start a download.
            notes.cache = Some(CacheResult::Miss.as_str());
            notes.source = Some(CacheResult::Miss.source());
            let resp = upstream
                .send(
                    Method::HEAD,
                    &target.repository,
                    &format!("blobs/{digest}"),
                    HeaderMap::new(),
                )
                .await?;
            check_status(
                upstream,
                resp.status(),
                resp.headers(),
                ErrorCode::BlobUnknown,
            )?;
            let mut out = Response::new(body::empty());
            if let Some(len) = resp.headers().get(header::CONTENT_LENGTH) {
                out.headers_mut()
                    .insert(header::CONTENT_LENGTH, len.clone());
            }
            blob_headers(out.headers_mut(), digest);
            return Ok(out);
        }
        let fetch = {
            let upstream = upstream.clone();
            let repository = target.repository.clone();
            let digest = digest.clone();
            move || async move {
                let resp = upstream
                    .send(
                        Method::GET,
                        &repository,
                        &format!("blobs/{digest}"),
                        HeaderMap::new(),
                    )
                    .await
                    .map_err(SourceError::new)?;
                expect_ok(&upstream, &resp, ErrorCode::BlobUnknown, "a blob")
                    .map_err(SourceError::new)?;
                let size = resp
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                Ok(IncomingBlob {
                    size,
                    body: resp.into_body(),
                })
            }
        };
        let blob = self
            .blobs
            .get_or_fill(digest, fetch)
            .await
            .map_err(fill_error)?;
        let result = if blob.started_download() {
            CacheResult::Miss
        } else if blob.is_local() {
            CacheResult::Hit
        } else {
            CacheResult::Coalesced
        };
        self.note_blob(result, notes);
        Ok(blob_response(client, digest, blob.size(), |span| {
            blob.body(span)
        }))
    }

    /// Counts how the cache answered a blob request and notes it for the log and the metrics.
    fn note_blob(&self, result: CacheResult, notes: &mut RequestNotes) {
        let counter = match result {
            CacheResult::Hit => &self.stats.blob_hits,
            CacheResult::Miss => &self.stats.blob_misses,
            CacheResult::Coalesced => &self.stats.blob_coalesced,
            CacheResult::Stale => &self.stats.stale_served,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        notes.cache = Some(result.as_str());
        notes.source = Some(result.source());
    }

    // === tags/list and referrers ===

    async fn pass_through(
        &self,
        upstream: &Upstream,
        target: &Target,
        client_name: &str,
        ns: Option<&str>,
        suffix: &str,
        not_found: ErrorCode,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.oci.image.index.v1+json, application/json"),
        );
        let resp = upstream
            .send(Method::GET, &target.repository, suffix, headers)
            .await?;
        check_status(upstream, resp.status(), resp.headers(), not_found)?;
        let (parts, upstream_body) = resp.into_parts();
        let mut out = Response::new(upstream_body);
        *out.status_mut() = parts.status;
        for name in [
            header::CONTENT_TYPE,
            header::CONTENT_LENGTH,
            HeaderName::from_static("oci-filters-applied"),
        ] {
            if let Some(v) = parts.headers.get(&name) {
                out.headers_mut().insert(name, v.clone());
            }
        }
        if let Some(link) = parts
            .headers
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
        {
            let rewritten = rewrite_link(link, target.repository.as_str(), client_name, ns);
            if let Ok(v) = HeaderValue::from_str(&rewritten) {
                out.headers_mut().insert(header::LINK, v);
            }
        }
        Ok(out)
    }
}

/// Why a blob could not be had, as the client sees it.
fn fill_error(e: FillError) -> ProxyError {
    match e {
        FillError::Source(source) => match source.downcast_ref::<ProxyError>() {
            Some(e) => e.clone(),
            None => ProxyError::bad_gateway(source.to_string()),
        },
        FillError::Failed(message) => ProxyError::bad_gateway(message),
        FillError::Storage(message) => ProxyError::internal(message),
    }
}

/// Points a pagination `Link` back through archway: under the name the client used, and with the
/// `ns=` that selected the upstream, so following it reaches the same upstream.
fn rewrite_link(link: &str, upstream_repo: &str, client_name: &str, ns: Option<&str>) -> String {
    let mut out = link.replace(
        &format!("/v2/{upstream_repo}/"),
        &format!("/v2/{client_name}/"),
    );
    if let (Some(ns), Some(end)) = (ns, out.find('>')) {
        let sep = if out[..end].contains('?') { '&' } else { '?' };
        out.insert_str(end, &format!("{sep}ns={ns}"));
    }
    out
}

/// A body we keep must come from a plain 200: errors map as `check_status` says, anything else
/// (a 206 or 204 we never asked for) is upstream misbehaving.
fn expect_ok<B>(
    upstream: &Upstream,
    resp: &Response<B>,
    not_found: ErrorCode,
    what: &str,
) -> Result<(), ProxyError> {
    check_status(upstream, resp.status(), resp.headers(), not_found)?;
    if resp.status() != StatusCode::OK {
        return Err(ProxyError::bad_gateway(format!(
            "upstream {} answered {} for {what}",
            upstream.config().name,
            resp.status()
        )));
    }
    Ok(())
}

fn check_status(
    upstream: &Upstream,
    status: StatusCode,
    headers: &HeaderMap,
    not_found: ErrorCode,
) -> Result<(), ProxyError> {
    match status_error(&upstream.config().name, status, headers, not_found) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn manifest_accept() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::ACCEPT,
        HeaderValue::from_static(media_type::UPSTREAM_ACCEPT),
    );
    h
}

/// Upstream's Content-Type when it is specific, else the manifest's own `mediaType` field.
fn media_type_of(content_type: Option<&str>, bytes: &Bytes) -> String {
    let generic = |t: &str| {
        t.is_empty()
            || t == "application/json"
            || t == "text/plain"
            || t == "application/octet-stream"
    };
    if let Some(t) = content_type.filter(|t| !generic(t)) {
        return t.to_owned();
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
        signatures: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe {
            media_type: Some(t),
            ..
        }) if !t.is_empty() && HeaderValue::from_str(&t).is_ok() => t,
        Ok(Probe {
            schema_version: Some(1),
            signatures: Some(_),
            ..
        }) => media_type::DOCKER_SCHEMA1_SIGNED.to_owned(),
        Ok(Probe {
            schema_version: Some(1),
            ..
        }) => media_type::DOCKER_SCHEMA1.to_owned(),
        _ => content_type.unwrap_or("application/json").to_owned(),
    }
}

/// `Docker-Content-Digest` and `ETag` for a digest. Built from one formatted string, handed to
/// `HeaderValue` without another copy: these are on every cached answer's path.
fn insert_digest_headers(h: &mut HeaderMap, digest: &Digest) {
    let plain = digest.to_string();
    let quoted = format!("\"{plain}\"");
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(plain)) {
        h.insert(CONTENT_DIGEST, v);
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(quoted)) {
        h.insert(header::ETAG, v);
    }
}

/// `If-None-Match` naming this digest, quoted or not, alone or in a list.
fn not_modified(headers: &HeaderMap, digest: &Digest) -> bool {
    let names = |t: &str| {
        t == "*"
            || t.strip_prefix(digest.algorithm().as_str())
                .and_then(|rest| rest.strip_prefix(':'))
                == Some(digest.hex())
    };
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/").trim_matches('"'))
        .any(names)
}

fn ping() -> Response<ResponseBody> {
    let mut r = Response::new(body::full(Bytes::from_static(b"{}")));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
    r
}

fn manifest_response(
    client: &ClientRequest,
    m: &StoredManifest,
    stale: bool,
    vary: bool,
) -> Response<ResponseBody> {
    let mut r = if not_modified(&client.headers, &m.digest) {
        let mut r = Response::new(body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(if client.method == Method::HEAD {
            body::empty()
        } else {
            body::full(m.bytes.clone())
        });
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(m.bytes.len() as u64),
        );
        if let Ok(v) = HeaderValue::from_str(&m.media_type) {
            h.insert(header::CONTENT_TYPE, v);
        }
        r
    };
    let h = r.headers_mut();
    insert_digest_headers(h, &m.digest);
    if stale {
        h.insert(header::WARNING, HeaderValue::from_static(STALE_WARNING));
    }
    if vary {
        h.insert(header::VARY, HeaderValue::from_static(HINT_VARY));
    }
    r
}

fn blob_headers(h: &mut HeaderMap, digest: &Digest) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    insert_digest_headers(h, digest);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Blobs are immutable: let any HTTP cache in front keep them.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=31536000, immutable"),
    );
}

/// A blob answer: headers, `If-None-Match`, `Range`; `body` makes the body for the whole blob
/// (`None`) or an inclusive byte range of it.
fn blob_response(
    client: &ClientRequest,
    digest: &Digest,
    size: Option<u64>,
    body: impl FnOnce(Option<(u64, u64)>) -> ResponseBody,
) -> Response<ResponseBody> {
    let mut r = Response::new(body::empty());
    blob_headers(r.headers_mut(), digest);
    if not_modified(&client.headers, digest) {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        return r;
    }
    let head = client.method == Method::HEAD;
    let Some(size) = size else {
        // Upstream sent no length: stream it whole, ranges can't be answered yet.
        if !head {
            *r.body_mut() = body(None);
        }
        return r;
    };
    let range = client
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    let (status, span) = match api::parse_range(range, size) {
        ByteRange::Whole => (StatusCode::OK, None),
        ByteRange::Part(a, b) => (StatusCode::PARTIAL_CONTENT, Some((a, b))),
        ByteRange::Unsatisfiable => {
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            let e =
                ProxyError::downstream(ErrorCode::RangeInvalid, "requested range not satisfiable");
            *r.body_mut() = if head {
                body::empty()
            } else {
                body::full(e.body())
            };
            return r;
        }
    };
    *r.status_mut() = status;
    let len = match span {
        Some((a, b)) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            b - a + 1
        }
        None => size,
    };
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if !head {
        *r.body_mut() = body(span);
    }
    r
}

pub fn error_response(e: &ProxyError, head: bool) -> Response<ResponseBody> {
    let bytes = e.body();
    let len = bytes.len() as u64;
    let mut r = Response::new(if head {
        body::empty()
    } else {
        body::full(bytes)
    });
    *r.status_mut() = e.status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(ra) = &e.retry_after {
        h.insert(header::RETRY_AFTER, ra.clone());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_links() {
        let link = r#"</v2/library/alpine/tags/list?n=2&last=b>; rel="next""#;
        assert_eq!(
            rewrite_link(link, "library/alpine", "docker.io/alpine", None),
            r#"</v2/docker.io/alpine/tags/list?n=2&last=b>; rel="next""#
        );
        assert_eq!(
            rewrite_link(link, "library/alpine", "library/alpine", Some("docker.io")),
            r#"</v2/library/alpine/tags/list?n=2&last=b&ns=docker.io>; rel="next""#
        );
        assert_eq!(
            rewrite_link("</v2/x/tags/list>; rel=\"next\"", "x", "x", Some("ghcr.io")),
            "</v2/x/tags/list?ns=ghcr.io>; rel=\"next\""
        );
    }

    #[test]
    fn media_type_detection() {
        let oci = Bytes::from_static(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#,
        );
        assert_eq!(media_type_of(None, &oci), media_type::OCI_INDEX);
        assert_eq!(
            media_type_of(Some("application/json"), &oci),
            media_type::OCI_INDEX
        );
        assert_eq!(
            media_type_of(Some(media_type::DOCKER_MANIFEST), &oci),
            media_type::DOCKER_MANIFEST,
            "a specific Content-Type wins"
        );
        let s1 = Bytes::from_static(br#"{"schemaVersion":1,"signatures":[]}"#);
        assert_eq!(media_type_of(None, &s1), media_type::DOCKER_SCHEMA1_SIGNED);
        assert_eq!(
            media_type_of(None, &Bytes::from_static(b"not json")),
            "application/json"
        );
    }

    #[test]
    fn answer_memo_matches_only_the_same_manifest_route_and_hints() {
        let m = Arc::new(StoredManifest {
            digest: Digest::sha256_of(b"index"),
            media_type: media_type::OCI_INDEX.into(),
            bytes: Bytes::from_static(b"index"),
        });
        let other = Arc::new(StoredManifest {
            digest: Digest::sha256_of(b"other"),
            ..(*m).clone()
        });
        let headers = |lines: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in lines {
                h.append(*n, HeaderValue::from_static(v));
            }
            h
        };
        let legacy = headers(&[
            ("accept", media_type::DOCKER_MANIFEST),
            ("accept", media_type::DOCKER_MANIFEST_LIST),
            ("user-agent", "docker/17.06.2-ee-19 os/windows arch/amd64"),
            ("host", "mirror.internal"),
        ]);
        let memo = AnswerMemo::new(&m, None, &legacy, &m, true, &RequestNotes::default());
        let key = AnswerMemo::key(&m, None, &legacy);
        assert!(memo.matches(&m, None, &legacy));
        // Headers the answer does not depend on don't matter.
        let mut other_host = legacy.clone();
        other_host.insert("host", HeaderValue::from_static("elsewhere"));
        assert!(memo.matches(&m, None, &other_host));
        assert_eq!(AnswerMemo::key(&m, None, &other_host), key);
        // Every hint does, and so do the manifest and the route.
        for changed in [
            headers(&[
                ("accept", media_type::DOCKER_MANIFEST),
                ("user-agent", "docker/17.06.2-ee-19 os/windows arch/amd64"),
            ]),
            headers(&[
                ("accept", media_type::DOCKER_MANIFEST_LIST),
                ("accept", media_type::DOCKER_MANIFEST),
                ("user-agent", "docker/17.06.2-ee-19 os/windows arch/amd64"),
            ]),
            headers(&[
                ("accept", media_type::DOCKER_MANIFEST),
                ("accept", media_type::DOCKER_MANIFEST_LIST),
                ("user-agent", "docker/17.06.2-ee-19 os/linux arch/arm64"),
            ]),
            headers(&[
                ("accept", media_type::DOCKER_MANIFEST),
                ("accept", media_type::DOCKER_MANIFEST_LIST),
                ("user-agent", "docker/17.06.2-ee-19 os/windows arch/amd64"),
                ("x-meta-platform", "linux/arm/v7"),
            ]),
        ] {
            assert!(!memo.matches(&m, None, &changed), "{changed:?}");
        }
        assert!(!memo.matches(&other, None, &legacy));
        let route = Route::from_config(0, Default::default()).unwrap();
        assert!(!memo.matches(&m, Some(&route), &legacy));
    }

    #[test]
    fn if_none_match_forms() {
        let d = Digest::sha256_of(b"x");
        for v in [
            format!("\"{d}\""),
            d.to_string(),
            format!("W/\"{d}\""),
            format!("\"a\", \"{d}\""),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&v).unwrap());
            assert!(not_modified(&h, &d), "{v}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"sha256:other\""),
        );
        assert!(!not_modified(&h, &d));
        assert!(!not_modified(&HeaderMap::new(), &d));
    }
}
