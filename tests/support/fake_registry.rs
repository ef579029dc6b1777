//! An in-process fake upstream registry (OCI distribution API, read side) with token auth,
//! CDN redirects, request counters and runtime-switchable faults. Listens on 127.0.0.1:0.
//!
//! Independent of archway's request handling: digests are computed here with sha2 directly, so
//! the fake is an oracle and not an echo of the code under test.
#![allow(dead_code)]

use archway::digest::Digest;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// The sha256 digest of `bytes`, computed here (not by archway).
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
        .parse()
        .unwrap()
}

/// Deterministic pseudo-random bytes (splitmix64), so images differ per seed without a `rand`
/// dependency.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What a request was, by path shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `GET /v2/`
    Ping,
    Manifest,
    Blob,
    Tags,
    Referrers,
    /// The token endpoint `/token`.
    Token,
    /// A request on the CDN listener (the redirect target of blob GETs).
    Cdn,
    Other,
}

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Registry,
    Cdn,
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub listener: Listener,
    pub method: Method,
    /// Path without the query.
    pub path: String,
    pub query: Option<String>,
    pub kind: Kind,
    /// Repository name for /v2/<name>/… requests.
    pub repo: Option<String>,
    pub headers: HeaderMap,
}

/// One call to the token endpoint.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `(username, password)` when the request carried Basic credentials.
    pub basic: Option<(String, String)>,
    pub service: Option<String>,
    pub scopes: Vec<String>,
}

/// A failure the fake injects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a registry error body; `retry_after` sets `Retry-After`.
    Status {
        status: u16,
        retry_after: Option<String>,
    },
    /// Read the request, never answer.
    StallHeaders,
    /// Send headers (full Content-Length) and the first `sent` body bytes, then never more.
    StallBody { sent: usize },
    /// Send headers (full Content-Length) and the first `sent` body bytes, then close.
    Truncate { sent: usize },
    /// Same length, different bytes.
    WrongBytes,
    /// The right bytes with no Content-Length (chunked, or close-delimited for HTTP/1.0).
    NoLength,
    /// Wrong bytes with no Content-Length.
    NoLengthWrongBytes,
    /// Announce this Content-Length, send the first bytes, then stall.
    ClaimLength(u64),
    /// No Content-Length and a body that never ends (counted in `endless_bytes_sent`).
    Endless,
    /// Read the request, then reset the connection (TCP RST, no answer).
    Reset,
    /// Send headers (full Content-Length) and the first `sent` body bytes, then reset the
    /// connection (TCP RST).
    ResetBody { sent: usize },
    /// The right bytes with their Content-Length, `chunk` bytes at a time, `every` apart.
    SlowBody { chunk: usize, every: Duration },
}

impl Fault {
    pub fn status(status: u16) -> Fault {
        Fault::Status {
            status,
            retry_after: None,
        }
    }

    pub fn too_many_requests(retry_after: &str) -> Fault {
        Fault::Status {
            status: 429,
            retry_after: Some(retry_after.to_owned()),
        }
    }

    fn is_body_fault(&self) -> bool {
        matches!(
            self,
            Fault::StallBody { .. }
                | Fault::Truncate { .. }
                | Fault::WrongBytes
                | Fault::NoLength
                | Fault::NoLengthWrongBytes
                | Fault::ClaimLength(_)
                | Fault::Endless
                | Fault::ResetBody { .. }
                | Fault::SlowBody { .. }
        )
    }

    /// A short name of the fault's kind, for counting (`faults_injected`).
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Status { status: 429, .. } => "429",
            Fault::Status { status, .. } if *status >= 500 => "5xx",
            Fault::Status { .. } => "other status",
            Fault::StallHeaders => "stalled headers",
            Fault::StallBody { .. } => "stalled body",
            Fault::Truncate { .. } => "truncated body",
            Fault::WrongBytes => "wrong bytes",
            Fault::NoLength => "no length",
            Fault::NoLengthWrongBytes => "no length, wrong bytes",
            Fault::ClaimLength(_) => "lying length",
            Fault::Endless => "endless body",
            Fault::Reset => "reset before headers",
            Fault::ResetBody { .. } => "reset in body",
            Fault::SlowBody { .. } => "slow body",
        }
    }
}

struct FaultRule {
    /// `None`: every kind.
    kind: Option<Kind>,
    fault: Fault,
    /// `None`: until cleared.
    remaining: Option<usize>,
    /// Only requests for this path (`None`: any).
    path: Option<String>,
}

#[derive(Clone)]
struct StoredManifest {
    media_type: String,
    bytes: Bytes,
}

#[derive(Default)]
struct Repo {
    manifests: HashMap<Digest, StoredManifest>,
    tags: BTreeMap<String, Digest>,
    blobs: HashMap<Digest, Bytes>,
}

struct TokenGrant {
    expires_at: Instant,
    repos: HashSet<String>,
}

#[derive(Default)]
struct State {
    repos: BTreeMap<String, Repo>,
    requests: Vec<Recorded>,
    token_requests: Vec<TokenRequest>,
    tokens: HashMap<String, TokenGrant>,
    token_serial: u64,
    connections: usize,
    faults: Vec<FaultRule>,
    delays: Vec<(Option<Kind>, Duration)>,
    /// Like `delays`, for HEAD requests only.
    head_delays: Vec<(Option<Kind>, Duration)>,
    /// Added to every answer of the registry listener (e.g. Docker Hub's `ratelimit-remaining`).
    extra_headers: Vec<(http::header::HeaderName, HeaderValue)>,
    /// Faults injected so far, by [`Fault::name`].
    injected: BTreeMap<&'static str, u64>,
    /// Requests seen, recorded or not.
    seen: u64,
    /// Answer the referrers API 404 "404 page not found", as Distribution 2.x does.
    no_referrers_api: bool,
    /// Answer a blob GET with a `Range` 200 and the whole blob, as a server that ignores it.
    ignore_ranges: bool,
}

struct Settings {
    auth: bool,
    token_ttl: Duration,
    credentials: Option<(String, String)>,
    redirect_blobs: bool,
    /// Keep every request in `requests` (off for long runs: the counters then see nothing).
    record_requests: bool,
    /// Stalls (headers, bodies, lying lengths) end after this by closing the connection;
    /// `None`: they last until the fake stops.
    stall_limit: Option<Duration>,
}

struct Shared {
    settings: Settings,
    state: Mutex<State>,
    addr: SocketAddr,
    cdn_addr: SocketAddr,
    /// Bytes sent by `Fault::Endless` bodies.
    endless_sent: Arc<AtomicU64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the fake's state from the others.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Builder for [`FakeRegistry`].
pub struct FakeRegistryBuilder {
    settings: Settings,
}

impl FakeRegistryBuilder {
    /// Require `Authorization: Bearer <token>` from `/token` on every /v2/ request.
    pub fn auth(mut self, on: bool) -> Self {
        self.settings.auth = on;
        self
    }

    /// How long issued tokens live (really: the fake rejects them afterwards). `expires_in` is
    /// advertised rounded up to whole seconds.
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.settings.token_ttl = ttl;
        self
    }

    /// The token endpoint demands these Basic credentials (401 otherwise). Implies auth.
    pub fn credentials(mut self, username: &str, password: &str) -> Self {
        self.settings.auth = true;
        self.settings.credentials = Some((username.to_owned(), password.to_owned()));
        self
    }

    /// Answer blob GETs with 307 to the CDN listener.
    pub fn redirect_blobs(mut self, on: bool) -> Self {
        self.settings.redirect_blobs = on;
        self
    }

    /// Keep no record of requests (`requests`, `count`, … then see none): for long runs, whose
    /// records would grow without bound. On by default.
    pub fn record_requests(mut self, on: bool) -> Self {
        self.settings.record_requests = on;
        self
    }

    /// End every stall after `limit` by closing (resetting) the connection, so that stalled
    /// requests do not pile up in a long run. Default: stalls last until the fake stops.
    pub fn stall_limit(mut self, limit: Duration) -> Self {
        self.settings.stall_limit = Some(limit);
        self
    }

    pub async fn start(self) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cdn = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shared = Arc::new(Shared {
            settings: self.settings,
            state: Mutex::new(State::default()),
            addr: listener.local_addr().unwrap(),
            cdn_addr: cdn.local_addr().unwrap(),
            endless_sent: Arc::new(AtomicU64::new(0)),
        });
        let running = spawn_listeners(&shared, listener, cdn);
        FakeRegistry {
            shared,
            running: Mutex::new(Some(running)),
        }
    }
}

struct Running {
    stop: watch::Sender<bool>,
    accept_loops: Vec<JoinHandle<()>>,
}

/// The fake registry. Dropping it stops it.
pub struct FakeRegistry {
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

/// Digests of an image made by [`FakeRegistry::sample_image`].
#[derive(Debug, Clone)]
pub struct SampleImage {
    pub repo: String,
    pub manifest: Digest,
    pub manifest_bytes: Bytes,
    pub media_type: String,
    pub config: Digest,
    pub config_bytes: Bytes,
    pub layers: Vec<Digest>,
    pub layer_bytes: Vec<Bytes>,
}

/// A multi-platform index made by [`FakeRegistry::sample_index`].
#[derive(Debug, Clone)]
pub struct SampleIndex {
    pub repo: String,
    pub digest: Digest,
    pub bytes: Bytes,
    pub media_type: String,
    /// `("linux/amd64", image)`, in the order given.
    pub images: Vec<(String, SampleImage)>,
}

impl FakeRegistry {
    /// Defaults: no auth, no redirects, tokens live 60 s.
    pub fn builder() -> FakeRegistryBuilder {
        FakeRegistryBuilder {
            settings: Settings {
                auth: false,
                token_ttl: Duration::from_secs(60),
                credentials: None,
                redirect_blobs: false,
                record_requests: true,
                stall_limit: None,
            },
        }
    }

    /// A fake with the defaults.
    pub async fn start() -> FakeRegistry {
        Self::builder().start().await
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    pub fn cdn_addr(&self) -> SocketAddr {
        self.shared.cdn_addr
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    // === content ===

    pub fn add_blob(&self, repo: &str, bytes: impl Into<Bytes>) -> Digest {
        let bytes = bytes.into();
        let digest = sha256_digest(&bytes);
        let mut st = self.shared.lock();
        st.repos
            .entry(repo.to_owned())
            .or_default()
            .blobs
            .insert(digest.clone(), bytes);
        digest
    }

    pub fn add_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: impl Into<Bytes>,
    ) -> Digest {
        let bytes = bytes.into();
        let digest = sha256_digest(&bytes);
        let mut st = self.shared.lock();
        let r = st.repos.entry(repo.to_owned()).or_default();
        r.manifests.insert(
            digest.clone(),
            StoredManifest {
                media_type: media_type.to_owned(),
                bytes,
            },
        );
        if let Some(t) = tag {
            r.tags.insert(t.to_owned(), digest.clone());
        }
        digest
    }

    /// Point `tag` at an already stored manifest (moves the tag).
    pub fn set_tag(&self, repo: &str, tag: &str, digest: &Digest) {
        let mut st = self.shared.lock();
        let r = st.repos.entry(repo.to_owned()).or_default();
        assert!(r.manifests.contains_key(digest), "no manifest {digest}");
        r.tags.insert(tag.to_owned(), digest.clone());
    }

    pub fn remove_tag(&self, repo: &str, tag: &str) {
        if let Some(r) = self.shared.lock().repos.get_mut(repo) {
            r.tags.remove(tag);
        }
    }

    pub fn remove_blob(&self, repo: &str, digest: &Digest) {
        if let Some(r) = self.shared.lock().repos.get_mut(repo) {
            r.blobs.remove(digest);
        }
    }

    /// Tags without manifests behind them, for tags/list tests.
    pub fn add_tags(&self, repo: &str, tags: &[&str]) {
        let placeholder = self.add_manifest(repo, None, OCI_MANIFEST, Bytes::from_static(b"{}"));
        let mut st = self.shared.lock();
        let r = st.repos.entry(repo.to_owned()).or_default();
        for t in tags {
            r.tags.insert((*t).to_owned(), placeholder.clone());
        }
    }

    /// A Docker schema2 image: a config and layers of pseudo-random bytes (3000 and 40000 bytes).
    pub fn sample_image(&self, repo: &str, tag: &str, seed: u64) -> SampleImage {
        self.sample_image_sized(repo, Some(tag), seed, &[3_000, 40_000])
    }

    /// Like [`sample_image`](Self::sample_image) with chosen layer sizes; `tag` may be absent.
    pub fn sample_image_sized(
        &self,
        repo: &str,
        tag: Option<&str>,
        seed: u64,
        layer_sizes: &[usize],
    ) -> SampleImage {
        self.build_image(
            repo,
            tag,
            seed,
            layer_sizes,
            "linux/amd64",
            DOCKER_MANIFEST,
            DOCKER_CONFIG,
            DOCKER_LAYER,
        )
    }

    /// An OCI index over one OCI image per platform (`"linux/arm64/v8"` style), tagged `tag`.
    pub fn sample_index(
        &self,
        repo: &str,
        tag: &str,
        seed: u64,
        platforms: &[&str],
    ) -> SampleIndex {
        self.sample_index_sized(repo, tag, seed, platforms, &[2_000, 5_000])
    }

    /// Like [`sample_index`](Self::sample_index) with chosen layer sizes (for every platform).
    pub fn sample_index_sized(
        &self,
        repo: &str,
        tag: &str,
        seed: u64,
        platforms: &[&str],
        layer_sizes: &[usize],
    ) -> SampleIndex {
        let mut images = Vec::new();
        let mut descriptors = Vec::new();
        for (i, p) in platforms.iter().enumerate() {
            let img = self.build_image(
                repo,
                None,
                seed.wrapping_mul(1000).wrapping_add(i as u64),
                layer_sizes,
                p,
                OCI_MANIFEST,
                OCI_CONFIG,
                OCI_LAYER,
            );
            let mut parts = p.split('/');
            let os = parts.next().unwrap_or("linux");
            let arch = parts.next().unwrap_or("amd64");
            let mut platform = serde_json::json!({"architecture": arch, "os": os});
            if let Some(v) = parts.next() {
                platform["variant"] = v.into();
            }
            descriptors.push(serde_json::json!({
                "mediaType": OCI_MANIFEST,
                "digest": img.manifest.to_string(),
                "size": img.manifest_bytes.len(),
                "platform": platform,
            }));
            images.push(((*p).to_owned(), img));
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": descriptors,
        });
        let bytes = Bytes::from(serde_json::to_vec_pretty(&index).unwrap());
        let digest = self.add_manifest(repo, Some(tag), OCI_INDEX, bytes.clone());
        SampleIndex {
            repo: repo.to_owned(),
            digest,
            bytes,
            media_type: OCI_INDEX.to_owned(),
            images,
        }
    }

    /// An OCI artifact manifest whose `subject` is `subject`, listed by the referrers API.
    pub fn add_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        artifact_type: &str,
        seed: u64,
    ) -> Digest {
        let payload = pseudo_random_bytes(seed, 64);
        let layer = self.add_blob(repo, payload.clone());
        let empty = self.add_blob(repo, Bytes::from_static(b"{}"));
        let subject_size = {
            let st = self.shared.lock();
            st.repos
                .get(repo)
                .and_then(|r| r.manifests.get(subject))
                .map(|m| m.bytes.len())
                .unwrap_or(0)
        };
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": OCI_EMPTY, "digest": empty.to_string(), "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": layer.to_string(), "size": payload.len()}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject.to_string(), "size": subject_size},
            "annotations": {"seed": seed.to_string()},
        });
        self.add_manifest(repo, None, OCI_MANIFEST, serde_json::to_vec(&m).unwrap())
    }

    #[allow(clippy::too_many_arguments)]
    fn build_image(
        &self,
        repo: &str,
        tag: Option<&str>,
        seed: u64,
        layer_sizes: &[usize],
        platform: &str,
        manifest_type: &str,
        config_type: &str,
        layer_type: &str,
    ) -> SampleImage {
        let layer_bytes: Vec<Bytes> = layer_sizes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                Bytes::from(pseudo_random_bytes(
                    seed.wrapping_mul(31).wrapping_add(i as u64 + 1),
                    *n,
                ))
            })
            .collect();
        let layers: Vec<Digest> = layer_bytes
            .iter()
            .map(|b| self.add_blob(repo, b.clone()))
            .collect();
        let mut parts = platform.split('/');
        let os = parts.next().unwrap_or("linux");
        let arch = parts.next().unwrap_or("amd64");
        let config = serde_json::json!({
            "architecture": arch,
            "os": os,
            "config": {"Env": [format!("SEED={seed}")]},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
        });
        let config_bytes = Bytes::from(serde_json::to_vec(&config).unwrap());
        let config_digest = self.add_blob(repo, config_bytes.clone());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "size": config_bytes.len(), "digest": config_digest.to_string()},
            "layers": layers.iter().zip(&layer_bytes).map(|(d, b)| serde_json::json!({
                "mediaType": layer_type, "size": b.len(), "digest": d.to_string(),
            })).collect::<Vec<_>>(),
        });
        let manifest_bytes = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap());
        let digest = self.add_manifest(repo, tag, manifest_type, manifest_bytes.clone());
        SampleImage {
            repo: repo.to_owned(),
            manifest: digest,
            manifest_bytes,
            media_type: manifest_type.to_owned(),
            config: config_digest,
            config_bytes,
            layers,
            layer_bytes,
        }
    }

    // === counters ===

    /// Every request seen, on both listeners, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// All requests on both listeners (token and CDN included).
    pub fn total(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// Requests with this method and kind (`"GET"`, `Kind::Blob`).
    pub fn count(&self, method: &str, kind: Kind) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.method.as_str() == method && r.kind == kind)
            .count()
    }

    /// Requests of this kind, any method.
    pub fn count_kind(&self, kind: Kind) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.kind == kind)
            .count()
    }

    /// Requests with this method and exact path (query ignored).
    pub fn count_path(&self, method: &str, path: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.method.as_str() == method && r.path == path)
            .count()
    }

    /// TCP connections accepted, both listeners.
    pub fn connections(&self) -> usize {
        self.shared.lock().connections
    }

    /// Bytes `Fault::Endless` bodies have sent so far.
    pub fn endless_bytes_sent(&self) -> u64 {
        self.shared
            .endless_sent
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests seen on both listeners, also when they are not recorded (`record_requests`).
    pub fn requests_seen(&self) -> u64 {
        self.shared.lock().seen
    }

    /// Faults injected so far, by [`Fault::name`].
    pub fn faults_injected(&self) -> BTreeMap<&'static str, u64> {
        self.shared.lock().injected.clone()
    }

    /// Forget requests, token requests and connections seen so far.
    pub fn reset_counts(&self) {
        let mut st = self.shared.lock();
        st.requests.clear();
        st.token_requests.clear();
        st.connections = 0;
    }

    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.shared.lock().token_requests.clone()
    }

    pub fn token_count(&self) -> usize {
        self.shared.lock().token_requests.len()
    }

    /// The Authorization header of each CDN request (`None` when absent, as it must be).
    pub fn cdn_authorizations(&self) -> Vec<Option<String>> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.listener == Listener::Cdn)
            .map(|r| {
                r.headers
                    .get(http::header::AUTHORIZATION)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            })
            .collect()
    }

    // === faults ===

    /// Inject `fault` into every request of `kind` (`None`: all kinds) until cleared.
    pub fn fault(&self, kind: Option<Kind>, fault: Fault) {
        self.shared.lock().faults.push(FaultRule {
            kind,
            fault,
            remaining: None,
            path: None,
        });
    }

    /// Inject `fault` into the next `times` matching requests only.
    pub fn fault_times(&self, kind: Option<Kind>, fault: Fault, times: usize) {
        let mut st = self.shared.lock();
        // Used-up rules never match again: drop them, so that a long run's list stays short.
        st.faults.retain(|r| r.remaining != Some(0));
        st.faults.push(FaultRule {
            kind,
            fault,
            remaining: Some(times),
            path: None,
        });
    }

    /// Inject `fault` into every request for `path` (e.g. one blob) until cleared.
    pub fn fault_path(&self, path: &str, fault: Fault) {
        self.shared.lock().faults.push(FaultRule {
            kind: None,
            fault,
            remaining: None,
            path: Some(path.to_owned()),
        });
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Delay each response of `kind` (`None`: all) by `delay` before answering.
    pub fn set_delay(&self, kind: Option<Kind>, delay: Duration) {
        let mut st = self.shared.lock();
        st.delays.retain(|(k, _)| *k != kind);
        if !delay.is_zero() {
            st.delays.push((kind, delay));
        }
    }

    /// Delay each HEAD of `kind` (`None`: all) by `delay`; GETs are not delayed.
    pub fn set_head_delay(&self, kind: Option<Kind>, delay: Duration) {
        let mut st = self.shared.lock();
        st.head_delays.retain(|(k, _)| *k != kind);
        if !delay.is_zero() {
            st.head_delays.push((kind, delay));
        }
    }

    /// Serve the referrers API (OCI 1.1, the default) or answer it 404 like Distribution 2.x.
    pub fn set_referrers_api(&self, on: bool) {
        self.shared.lock().no_referrers_api = !on;
    }

    /// Ignore `Range` on blob GETs (answer 200 with the whole blob), as RFC 9110 allows.
    pub fn set_ignore_ranges(&self, on: bool) {
        self.shared.lock().ignore_ranges = on;
    }

    /// Send `name: value` on every registry answer from now on (replacing an earlier value).
    pub fn set_response_header(&self, name: &str, value: &str) {
        let name = http::header::HeaderName::from_bytes(name.as_bytes()).unwrap();
        let mut st = self.shared.lock();
        st.extra_headers.retain(|(n, _)| *n != name);
        st.extra_headers
            .push((name, HeaderValue::from_str(value).unwrap()));
    }

    /// Close both listeners and every open connection: new connections are refused.
    pub async fn stop(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some(r) = running {
            let _ = r.stop.send(true);
            for h in r.accept_loops {
                let _ = h.await;
            }
        }
    }

    /// Listen again on the same two ports after [`stop`](Self::stop).
    pub async fn resume(&self) {
        if self.running.lock().unwrap().is_some() {
            return;
        }
        let listener = TcpListener::bind(self.shared.addr).await.unwrap();
        let cdn = TcpListener::bind(self.shared.cdn_addr).await.unwrap();
        let running = spawn_listeners(&self.shared, listener, cdn);
        *self.running.lock().unwrap() = Some(running);
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        if let Ok(mut g) = self.running.lock() {
            if let Some(r) = g.take() {
                let _ = r.stop.send(true);
            }
        }
    }
}

fn spawn_listeners(shared: &Arc<Shared>, main: TcpListener, cdn: TcpListener) -> Running {
    let (stop, rx) = watch::channel(false);
    let accept_loops = vec![
        tokio::spawn(accept_loop(
            shared.clone(),
            main,
            Listener::Registry,
            rx.clone(),
        )),
        tokio::spawn(accept_loop(shared.clone(), cdn, Listener::Cdn, rx)),
    ];
    Running { stop, accept_loops }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    which: Listener,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        let Ok((sock, _)) = accepted else { continue };
        shared.lock().connections += 1;
        let shared = shared.clone();
        let mut conn_stop = stop.clone();
        tokio::spawn(async move {
            let ctl = Arc::new(ConnCtl::default());
            let svc_shared = shared.clone();
            let svc_stop = conn_stop.clone();
            let svc_ctl = ctl.clone();
            let svc = service_fn(move |req| {
                handle(
                    svc_shared.clone(),
                    which,
                    svc_stop.clone(),
                    svc_ctl.clone(),
                    req,
                )
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let io = ResettableIo {
                inner: sock,
                ctl: ctl.clone(),
            };
            let conn = builder.serve_connection(TokioIo::new(io), svc);
            // Dropping the connection future on stop (or on a reset) closes the socket.
            tokio::select! {
                _ = conn => {}
                _ = conn_stop.wait_for(|s| *s) => {}
                _ = ctl.notify.notified() => {}
            }
        });
    }
}

/// Lets a request reset its own connection: [`reset`](Self::reset) makes the connection task
/// drop the connection, and the socket is then closed with a zero linger (a TCP RST).
#[derive(Default)]
pub struct ConnCtl {
    reset: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl ConnCtl {
    fn reset(&self) {
        self.reset.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }
}

/// A connection's socket that ends in a RST instead of a FIN when its [`ConnCtl`] says reset.
struct ResettableIo {
    inner: tokio::net::TcpStream,
    ctl: Arc<ConnCtl>,
}

impl Drop for ResettableIo {
    fn drop(&mut self) {
        if self.ctl.reset.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl tokio::io::AsyncRead for ResettableIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ResettableIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// === request handling ===

fn error_body(code: &str, message: &str) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "errors": [{"code": code, "message": message, "detail": null}]
        }))
        .unwrap(),
    )
}

fn json_response(status: StatusCode, body: Bytes) -> Response<FakeBody> {
    let mut r = Response::new(FakeBody::full(body.clone()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    h.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    r
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response<FakeBody> {
    json_response(status, error_body(code, message))
}

/// Splits `/v2/<name>/<rest>` into the name and what follows, by the last API keyword so that
/// names with slashes work.
fn classify(path: &str) -> (Kind, Option<String>, Option<String>) {
    if path == "/v2/" || path == "/v2" {
        return (Kind::Ping, None, None);
    }
    if path == "/token" {
        return (Kind::Token, None, None);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return (Kind::Other, None, None);
    };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return (Kind::Tags, Some(name.to_owned()), None);
    }
    for (kw, kind) in [
        ("/manifests/", Kind::Manifest),
        ("/blobs/", Kind::Blob),
        ("/referrers/", Kind::Referrers),
    ] {
        if let Some(i) = rest.rfind(kw) {
            let name = &rest[..i];
            let reference = &rest[i + kw.len()..];
            if !name.is_empty() && !reference.is_empty() && !reference.contains('/') {
                return (kind, Some(name.to_owned()), Some(reference.to_owned()));
            }
        }
    }
    (Kind::Other, None, None)
}

fn query_params(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn handle(
    shared: Arc<Shared>,
    which: Listener,
    mut stop: watch::Receiver<bool>,
    ctl: Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Result<Response<FakeBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let (kind, repo, reference) = match which {
        Listener::Cdn => (Kind::Cdn, None, None),
        Listener::Registry => classify(&path),
    };
    let stall_limit = shared.settings.stall_limit;
    let (delay, early_fault) = {
        let mut st = shared.lock();
        st.seen += 1;
        if shared.settings.record_requests {
            st.requests.push(Recorded {
                listener: which,
                method: req.method().clone(),
                path: path.clone(),
                query: query.clone(),
                kind,
                repo: repo.clone(),
                headers: req.headers().clone(),
            });
        }
        let heads: &[(Option<Kind>, Duration)] = if req.method() == Method::HEAD {
            &st.head_delays
        } else {
            &[]
        };
        let delay = st
            .delays
            .iter()
            .chain(heads)
            .filter(|(k, _)| k.is_none() || *k == Some(kind))
            .map(|(_, d)| *d)
            .max();
        (delay, take_fault(&mut st, kind, &path, false))
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    match early_fault {
        Some(Fault::Status {
            status,
            retry_after,
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let code = match status.as_u16() {
                429 => "TOOMANYREQUESTS",
                503 => "UNAVAILABLE",
                _ => "UNKNOWN",
            };
            let mut r = error_response(status, code, "injected fault");
            if let Some(ra) = retry_after {
                r.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from_str(&ra).unwrap(),
                );
            }
            return Ok(r);
        }
        Some(Fault::StallHeaders) => {
            match stall_limit {
                None => {
                    let _ = stop.wait_for(|s| *s).await;
                }
                Some(limit) => {
                    let stopped = tokio::select! {
                        _ = stop.wait_for(|s| *s) => true,
                        _ = tokio::time::sleep(limit) => false,
                    };
                    if !stopped {
                        ctl.reset();
                        let never: Infallible = std::future::pending().await;
                        match never {}
                    }
                }
            }
            // Never reached in practice: the connection is dropped on stop.
            return Ok(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "stopped",
            ));
        }
        Some(Fault::Reset) => {
            ctl.reset();
            // The connection task drops this request with its connection.
            let never: Infallible = std::future::pending().await;
            match never {}
        }
        _ => {}
    }

    let response = match which {
        Listener::Cdn => serve_cdn(&shared, &req, &path),
        Listener::Registry => {
            if kind == Kind::Token {
                serve_token(&shared, &req, query.as_deref())
            } else if let Some(denied) = check_auth(&shared, &req, kind, repo.as_deref()) {
                denied
            } else {
                route(&shared, &req, kind, repo, reference, query.as_deref())
            }
        }
    };
    let mut response = response;
    if which == Listener::Registry {
        for (name, value) in shared.lock().extra_headers.iter() {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }

    // Body faults only touch successful GETs with a body.
    if req.method() == Method::GET && response.status().is_success() {
        let fault = take_fault(&mut shared.lock(), kind, &path, true);
        if let Some(f) = fault {
            let (mut parts, body) = response.into_parts();
            let FakeBody::Full(Some(bytes)) = body else {
                return Ok(Response::from_parts(parts, body));
            };
            if matches!(
                f,
                Fault::NoLength | Fault::NoLengthWrongBytes | Fault::Endless
            ) {
                parts.headers.remove(http::header::CONTENT_LENGTH);
            }
            if let Fault::ClaimLength(n) = f {
                parts
                    .headers
                    .insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            let body = match f {
                Fault::NoLength => FakeBody::Chunks { data: Some(bytes) },
                Fault::NoLengthWrongBytes => FakeBody::Chunks {
                    data: Some(Bytes::from(
                        bytes.iter().map(|b| b ^ 0x5a).collect::<Vec<u8>>(),
                    )),
                },
                Fault::ClaimLength(_) => {
                    FakeBody::stall(bytes.slice(..bytes.len().min(1024)), stall_limit)
                }
                Fault::Endless => FakeBody::Endless {
                    counter: shared.endless_sent.clone(),
                },
                Fault::WrongBytes => FakeBody::full(Bytes::from(
                    bytes.iter().map(|b| b ^ 0x5a).collect::<Vec<u8>>(),
                )),
                Fault::Truncate { sent } => FakeBody::Truncate {
                    data: Some(bytes.slice(..sent.min(bytes.len()))),
                    sleep: None,
                },
                Fault::StallBody { sent } => {
                    FakeBody::stall(bytes.slice(..sent.min(bytes.len())), stall_limit)
                }
                Fault::ResetBody { sent } => FakeBody::Reset {
                    data: Some(bytes.slice(..sent.min(bytes.len()))),
                    sleep: None,
                    ctl,
                },
                Fault::SlowBody { chunk, every } => FakeBody::Slow {
                    rest: bytes,
                    chunk: chunk.max(1),
                    every,
                    sleep: None,
                },
                _ => FakeBody::full(bytes),
            };
            return Ok(Response::from_parts(parts, body));
        }
    }
    Ok(response)
}

fn take_fault(st: &mut State, kind: Kind, path: &str, body_phase: bool) -> Option<Fault> {
    let i = st.faults.iter().position(|r| {
        (r.kind.is_none() || r.kind == Some(kind))
            && r.path.as_deref().is_none_or(|p| p == path)
            && r.fault.is_body_fault() == body_phase
            && r.remaining != Some(0)
    })?;
    let rule = &mut st.faults[i];
    if let Some(n) = rule.remaining.as_mut() {
        *n -= 1;
    }
    let fault = rule.fault.clone();
    *st.injected.entry(fault.name()).or_default() += 1;
    Some(fault)
}

fn challenge(shared: &Shared, repo: Option<&str>) -> Response<FakeBody> {
    let mut value = format!(
        "Bearer realm=\"http://{}/token\",service=\"fake\"",
        shared.addr
    );
    if let Some(r) = repo {
        value.push_str(&format!(",scope=\"repository:{r}:pull\""));
    }
    let mut resp = error_response(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    );
    resp.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&value).unwrap(),
    );
    resp
}

/// `Some(401)` when auth is on and the request lacks a live token for its repository.
fn check_auth(
    shared: &Shared,
    req: &Request<Incoming>,
    kind: Kind,
    repo: Option<&str>,
) -> Option<Response<FakeBody>> {
    if !shared.settings.auth {
        return None;
    }
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = token.is_some_and(|t| {
        let st = shared.lock();
        st.tokens.get(t).is_some_and(|g| {
            Instant::now() < g.expires_at
                && (kind == Kind::Ping || repo.is_some_and(|r| g.repos.contains(r)))
        })
    });
    if ok {
        None
    } else {
        Some(challenge(shared, repo))
    }
}

fn serve_token(
    shared: &Shared,
    req: &Request<Incoming>,
    query: Option<&str>,
) -> Response<FakeBody> {
    let params = query_params(query);
    let service = params
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.clone());
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let basic = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())));
    let mut st = shared.lock();
    st.token_requests.push(TokenRequest {
        basic: basic.clone(),
        service,
        scopes: scopes.clone(),
    });
    if let Some(want) = &shared.settings.credentials {
        if basic.as_ref() != Some(want) {
            drop(st);
            return error_response(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "bad credentials");
        }
    }
    st.token_serial += 1;
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let nonce = pseudo_random_bytes(st.token_serial ^ clock, 8);
    let token = format!("fake-token-{}-{}", st.token_serial, hex::encode(nonce));
    let repos = scopes
        .iter()
        .filter_map(|s| {
            let (typ, rest) = s.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            (typ == "repository" && actions.split(',').any(|a| a == "pull" || a == "*"))
                .then(|| name.to_owned())
        })
        .collect();
    let ttl = shared.settings.token_ttl;
    st.tokens.insert(
        token.clone(),
        TokenGrant {
            expires_at: Instant::now() + ttl,
            repos,
        },
    );
    let expires_in = ttl.as_millis().div_ceil(1000) as u64;
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": expires_in,
    });
    json_response(
        StatusCode::OK,
        Bytes::from(serde_json::to_vec(&body).unwrap()),
    )
}

fn route(
    shared: &Shared,
    req: &Request<Incoming>,
    kind: Kind,
    repo: Option<String>,
    reference: Option<String>,
    query: Option<&str>,
) -> Response<FakeBody> {
    let method = req.method();
    if method != Method::GET && method != Method::HEAD {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "the fake is read-only",
        );
    }
    let head = method == Method::HEAD;
    match kind {
        Kind::Ping => json_response(StatusCode::OK, Bytes::from_static(b"{}")),
        Kind::Manifest => serve_manifest(
            shared,
            &repo.unwrap_or_default(),
            &reference.unwrap_or_default(),
            head,
        ),
        Kind::Blob => serve_blob(
            shared,
            req,
            &repo.unwrap_or_default(),
            &reference.unwrap_or_default(),
            head,
        ),
        Kind::Tags => serve_tags(shared, &repo.unwrap_or_default(), query),
        Kind::Referrers => serve_referrers(
            shared,
            &repo.unwrap_or_default(),
            &reference.unwrap_or_default(),
            query,
        ),
        _ => error_response(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint"),
    }
}

fn content_response(
    status: StatusCode,
    media_type: &str,
    digest: &Digest,
    body: Bytes,
    head: bool,
) -> Response<FakeBody> {
    let len = body.len();
    let mut r = Response::new(if head {
        FakeBody::Full(None)
    } else {
        FakeBody::full(body)
    });
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_str(media_type).unwrap(),
    );
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        HeaderName::from_static("docker-content-digest"),
        HeaderValue::from_str(&digest.to_string()).unwrap(),
    );
    h.insert(
        http::header::ETAG,
        HeaderValue::from_str(&format!("\"{digest}\"")).unwrap(),
    );
    h.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    r
}

fn serve_manifest(shared: &Shared, repo: &str, reference: &str, head: bool) -> Response<FakeBody> {
    let st = shared.lock();
    let Some(r) = st.repos.get(repo) else {
        return error_response(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository name not known to registry",
        );
    };
    let digest = match reference.parse::<Digest>() {
        Ok(d) => Some(d),
        Err(_) => r.tags.get(reference).cloned(),
    };
    let Some((digest, m)) = digest.and_then(|d| r.manifests.get(&d).map(|m| (d, m.clone()))) else {
        return error_response(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest unknown",
        );
    };
    content_response(StatusCode::OK, &m.media_type, &digest, m.bytes, head)
}

fn serve_blob(
    shared: &Shared,
    req: &Request<Incoming>,
    repo: &str,
    reference: &str,
    head: bool,
) -> Response<FakeBody> {
    let Ok(digest) = reference.parse::<Digest>() else {
        return error_response(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "invalid digest");
    };
    let bytes = {
        let st = shared.lock();
        let Some(r) = st.repos.get(repo) else {
            return error_response(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                "repository name not known to registry",
            );
        };
        match r.blobs.get(&digest) {
            Some(b) => b.clone(),
            None => return error_response(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unknown"),
        }
    };
    if !head && shared.settings.redirect_blobs {
        let mut r = Response::new(FakeBody::Full(None));
        *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
        let location = format!(
            "http://{}/cdn/{}/{}?X-Signature={}",
            shared.cdn_addr,
            repo,
            digest,
            hex::encode(pseudo_random_bytes(bytes.len() as u64, 8))
        );
        r.headers_mut().insert(
            http::header::LOCATION,
            HeaderValue::from_str(&location).unwrap(),
        );
        r.headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(0));
        return r;
    }
    let mut headers = req.headers().clone();
    if shared.lock().ignore_ranges {
        headers.remove(http::header::RANGE);
    }
    serve_bytes(&headers, "application/octet-stream", &digest, bytes, head)
}

/// Full or single-range answer for a blob's bytes.
fn serve_bytes(
    headers: &HeaderMap,
    media_type: &str,
    digest: &Digest,
    bytes: Bytes,
    head: bool,
) -> Response<FakeBody> {
    let total = bytes.len() as u64;
    let range = headers
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, total));
    let mut r = match range {
        None => content_response(StatusCode::OK, media_type, digest, bytes, head),
        Some(Some((a, b))) => {
            let mut r = content_response(
                StatusCode::PARTIAL_CONTENT,
                media_type,
                digest,
                bytes.slice(a as usize..=b as usize),
                head,
            );
            r.headers_mut().insert(
                http::header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {a}-{b}/{total}")).unwrap(),
            );
            r
        }
        Some(None) => {
            let mut r = error_response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_INVALID",
                "range not satisfiable",
            );
            r.headers_mut().insert(
                http::header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{total}")).unwrap(),
            );
            r
        }
    };
    r.headers_mut().insert(
        http::header::ACCEPT_RANGES,
        HeaderValue::from_static("bytes"),
    );
    r
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` → inclusive `(first, last)`; `None` if unsatisfiable.
pub fn parse_range(v: &str, total: u64) -> Option<(u64, u64)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || total == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return None;
        }
        return Some((total.saturating_sub(n), total - 1));
    }
    let first: u64 = a.parse().ok()?;
    let last: u64 = if b.is_empty() {
        total - 1
    } else {
        b.parse::<u64>().ok()?.min(total - 1)
    };
    (first <= last && first < total).then_some((first, last))
}

/// `n`/`last` pagination over a sorted list, with the `Link` header of the next page.
fn paginate(
    items: &[String],
    query: Option<&str>,
    link_base: &str,
) -> (Vec<String>, Option<String>) {
    let params = query_params(query);
    let n: Option<usize> = params
        .iter()
        .find(|(k, _)| k == "n")
        .and_then(|(_, v)| v.parse().ok());
    let last = params
        .iter()
        .find(|(k, _)| k == "last")
        .map(|(_, v)| v.clone());
    let start: Vec<String> = items
        .iter()
        .filter(|t| match &last {
            Some(l) => t.as_str() > l.as_str(),
            None => true,
        })
        .cloned()
        .collect();
    match n {
        Some(n) if start.len() > n => {
            let page: Vec<String> = start[..n].to_vec();
            let link = page.last().map(|l| {
                format!(
                    "<{link_base}?n={n}&last={}>; rel=\"next\"",
                    percent_encode(l)
                )
            });
            (page, link)
        }
        _ => (start, None),
    }
}

fn serve_tags(shared: &Shared, repo: &str, query: Option<&str>) -> Response<FakeBody> {
    let tags: Vec<String> = {
        let st = shared.lock();
        let Some(r) = st.repos.get(repo) else {
            return error_response(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                "repository name not known to registry",
            );
        };
        r.tags.keys().cloned().collect()
    };
    let (page, link) = paginate(&tags, query, &format!("/v2/{repo}/tags/list"));
    let body = serde_json::json!({"name": repo, "tags": page});
    let mut r = json_response(
        StatusCode::OK,
        Bytes::from(serde_json::to_vec(&body).unwrap()),
    );
    if let Some(l) = link {
        r.headers_mut()
            .insert(http::header::LINK, HeaderValue::from_str(&l).unwrap());
    }
    r
}

fn serve_referrers(
    shared: &Shared,
    repo: &str,
    reference: &str,
    query: Option<&str>,
) -> Response<FakeBody> {
    if shared.lock().no_referrers_api {
        // Distribution 2.x: no route, so Go's mux answers in plain text.
        let mut r = Response::new(FakeBody::full(Bytes::from_static(b"404 page not found\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return r;
    }
    let Ok(subject) = reference.parse::<Digest>() else {
        return error_response(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "invalid digest");
    };
    let params = query_params(query);
    let filter = params
        .iter()
        .find(|(k, _)| k == "artifactType")
        .map(|(_, v)| v.clone());
    let mut descriptors: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    {
        let st = shared.lock();
        let Some(r) = st.repos.get(repo) else {
            return error_response(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                "repository name not known to registry",
            );
        };
        for (d, m) in &r.manifests {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.bytes) else {
                continue;
            };
            if v["subject"]["digest"].as_str() != Some(subject.to_string().as_str()) {
                continue;
            }
            let at = v["artifactType"].as_str().unwrap_or_default().to_owned();
            if filter.as_ref().is_some_and(|f| *f != at) {
                continue;
            }
            descriptors.insert(
                d.to_string(),
                serde_json::json!({
                    "mediaType": m.media_type,
                    "digest": d.to_string(),
                    "size": m.bytes.len(),
                    "artifactType": at,
                    "annotations": v["annotations"],
                }),
            );
        }
    }
    let keys: Vec<String> = descriptors.keys().cloned().collect();
    let (page, link) = paginate(&keys, query, &format!("/v2/{repo}/referrers/{subject}"));
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": page.iter().map(|k| descriptors[k].clone()).collect::<Vec<_>>(),
    });
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap());
    let mut r = json_response(StatusCode::OK, bytes);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(OCI_INDEX),
    );
    if filter.is_some() {
        r.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    if let Some(l) = link {
        r.headers_mut()
            .insert(http::header::LINK, HeaderValue::from_str(&l).unwrap());
    }
    r
}

/// The CDN: `/cdn/<repo>/<digest>?X-Signature=…`. Like S3, it refuses a request that also
/// carries an Authorization header (the signature in the URL is the only credential).
fn serve_cdn(shared: &Shared, req: &Request<Incoming>, path: &str) -> Response<FakeBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "cdn is read-only",
        );
    }
    if req.headers().contains_key(http::header::AUTHORIZATION) {
        return error_response(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Only one auth mechanism allowed",
        );
    }
    let Some(rest) = path.strip_prefix("/cdn/") else {
        return error_response(StatusCode::NOT_FOUND, "NoSuchKey", "no such key");
    };
    let Some((repo, digest)) = rest.rsplit_once('/') else {
        return error_response(StatusCode::NOT_FOUND, "NoSuchKey", "no such key");
    };
    let Ok(digest) = digest.parse::<Digest>() else {
        return error_response(StatusCode::NOT_FOUND, "NoSuchKey", "no such key");
    };
    let bytes = shared
        .lock()
        .repos
        .get(repo)
        .and_then(|r| r.blobs.get(&digest).cloned());
    match bytes {
        Some(b) => {
            let mut r = serve_bytes(
                req.headers(),
                "application/octet-stream",
                &digest,
                b,
                req.method() == Method::HEAD,
            );
            // A CDN does not speak the registry protocol.
            r.headers_mut().remove("docker-content-digest");
            r.headers_mut().remove("docker-distribution-api-version");
            r
        }
        None => error_response(StatusCode::NOT_FOUND, "NoSuchKey", "no such key"),
    }
}

// === the response body ===

/// A response body that can misbehave on purpose.
pub enum FakeBody {
    Full(Option<Bytes>),
    /// Sends `data`, then waits a moment (so hyper flushes it) and fails, which makes hyper close
    /// the connection short of Content-Length.
    Truncate {
        data: Option<Bytes>,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    /// Sends `data`, then never anything more (or, with `until`, fails when it fires, which
    /// closes the connection).
    Stall {
        data: Option<Bytes>,
        until: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    /// Sends `data`, then waits a moment (so hyper flushes it) and resets the connection.
    Reset {
        data: Option<Bytes>,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
        ctl: Arc<ConnCtl>,
    },
    /// Sends `rest` `chunk` bytes at a time, `every` apart.
    Slow {
        rest: Bytes,
        chunk: usize,
        every: Duration,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    /// Sends `data` with no size hint (so hyper frames it chunked), then ends.
    Chunks {
        data: Option<Bytes>,
    },
    /// 64 KiB chunks for ever, counting the bytes sent.
    Endless {
        counter: Arc<AtomicU64>,
    },
}

impl FakeBody {
    fn full(b: Bytes) -> FakeBody {
        FakeBody::Full(Some(b))
    }

    fn stall(data: Bytes, limit: Option<Duration>) -> FakeBody {
        FakeBody::Stall {
            data: Some(data),
            until: limit.map(|l| Box::pin(tokio::time::sleep(l))),
        }
    }
}

impl hyper::body::Body for FakeBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        match this {
            FakeBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            FakeBody::Truncate { data, sleep } => {
                if let Some(d) = data.take() {
                    *sleep = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                    if !d.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(d))));
                    }
                }
                match sleep.as_mut() {
                    Some(s) => match s.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            Poll::Ready(Some(Err(std::io::Error::other("fake: truncated body"))))
                        }
                        Poll::Pending => Poll::Pending,
                    },
                    None => Poll::Ready(Some(Err(std::io::Error::other("fake: truncated body")))),
                }
            }
            FakeBody::Stall { data, until } => match data.take() {
                Some(d) if !d.is_empty() => Poll::Ready(Some(Ok(Frame::data(d)))),
                _ => match until.as_mut() {
                    Some(u) => match u.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            Poll::Ready(Some(Err(std::io::Error::other("fake: stall ended"))))
                        }
                        Poll::Pending => Poll::Pending,
                    },
                    // Nothing will ever wake this: the body stalls until the connection is
                    // dropped.
                    None => Poll::Pending,
                },
            },
            FakeBody::Reset { data, sleep, ctl } => {
                if let Some(d) = data.take() {
                    *sleep = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                    if !d.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(d))));
                    }
                }
                if let Some(s) = sleep.as_mut() {
                    if s.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                ctl.reset();
                // The connection task drops the connection (and this body) now.
                Poll::Pending
            }
            FakeBody::Slow {
                rest,
                chunk,
                every,
                sleep,
            } => {
                if rest.is_empty() {
                    return Poll::Ready(None);
                }
                if let Some(s) = sleep.as_mut() {
                    if s.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                let n = (*chunk).min(rest.len());
                let piece = rest.split_to(n);
                *sleep = Some(Box::pin(tokio::time::sleep(*every)));
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
            FakeBody::Chunks { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            FakeBody::Endless { counter } => {
                counter.fetch_add(64 << 10, std::sync::atomic::Ordering::Relaxed);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![0x42u8; 64 << 10])))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            FakeBody::Full(None) => true,
            FakeBody::Slow { rest, .. } => rest.is_empty(),
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FakeBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            FakeBody::Full(None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
