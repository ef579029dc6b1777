//! The pipeline: one request in, one response out. It authenticates the client, parses the path,
//! chooses the upstream, and hands the request to the part that answers it — manifests (by tag
//! or digest, then the platform answer), blobs, or listings. Errors become registry error
//! responses here, and every request gets a tracing span and one access-log line.
//!
//! - `manifests`: tags (TTL, stale-if-error, coalescing, failure memo) and manifests by digest;
//! - `platform_answer` (+ `memo`): the answer for this client's platform, and its memos;
//! - `blobs`: the blob store or one download per digest; `listings`: tags/list and uncached
//!   referrers pages; `referrers`: referrers lists cached per subject and filter;
//! - `peer`: `[fleet]`'s peer endpoint, another replica joining this one's fill;
//! - `build`: the `Proxy` assembled from its config, once, at start;
//! - `response`: building responses (pure); `client`: the request as read (`crate::outcome`: how a request was answered).

mod access;
mod blobs;
mod build;
mod client;
mod converter;
mod layers;
mod listings;
mod manifests;
mod memo;
mod multipart;
mod peer;
pub mod pins;
mod platform_answer;
mod referrers;
mod refresh_ahead;
mod response;
mod uncached;

pub use build::{FleetInitError, ProxyInitError};
pub use client::{ConnInfo, ExplainRequest, WarmRequest, CACHE_HEADER};
pub use response::error_response;

use crate::access_log::{AccessLog, LoggedBody, RequestNotes};
use crate::api::{self, Endpoint, Resource};
use crate::body::ResponseBody;
use crate::cache::blob::BlobStore;
use crate::client_auth::{ClientAuth, Denied};
use crate::config::Config;
use crate::error::{ErrorCode, ProxyError};
use crate::fleet::PeerVerifier;
use crate::metrics::Metrics;
pub use crate::outcome::{CacheResult, Outcome};
use crate::reference::Reference;
use crate::upstream::Egress;
use crate::upstream::Upstream;
use crate::upstream_choice;
use crate::via::{self, Via};
use access::{AccessGate, Object};
use blobs::Blobs;
use client::ClientRequest;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use manifests::Manifests;
use platform_answer::PlatformAnswers;
use response::{manifest_response, ping, API_VERSION, HINT_VARY};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

pub struct Proxy {
    config: Config,
    upstreams: Vec<Arc<Upstream>>,
    default_upstream: Option<usize>,
    manifests: Arc<Manifests>,
    platform: PlatformAnswers,
    blobs: Blobs,
    referrers: referrers::Referrers,
    metrics: Arc<Metrics>,
    /// `[auth]`: credentials every `/v2/` request must carry.
    client_auth: Option<ClientAuth>,
    /// This archway's `Via` marker: on what it sends, and how its own requests are known when
    /// they come back (a loop).
    via: Via,
    /// Who may be served which cached object (`access_rule`).
    access: AccessGate,
    /// zstd layers converted for clients that cannot read them.
    converter: Arc<converter::Converter>,
    /// `[fleet]`: the egress policy lease owners are reached through (told archway's own
    /// listeners once bound), and the check of peer requests to this replica's endpoint.
    peer_egress: Option<Arc<Egress>>,
    peer_verifier: Option<Arc<PeerVerifier>>,
    /// Pinned images (`[[pin]]`, the admin API).
    pins: Arc<pins::Pins>,
}

/// Request ids, unique within the process: every log line of a request carries its id.
static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

impl Proxy {
    /// The pinned images.
    pub fn pins(&self) -> &Arc<pins::Pins> {
        &self.pins
    }

    /// Pins `image` (as `archway warm` takes it) at runtime, for the `platforms` of an index
    /// (empty: all), and holds at once what the cache has of it. `Ok(false)`: it was pinned
    /// already (its platforms are now these). Kept in `data_dir/pins.json`.
    pub async fn add_pin(&self, image: &str, platforms: &[String]) -> Result<bool, pins::PinError> {
        let spec = self.pins.spec(image, platforms)?;
        let added = self.pins.add(spec.clone())?;
        self.manifests.fill_pin(&spec).await;
        // The fleet's too ([fleet]): the other replicas adopt it at their next sync.
        self.pins
            .publish(|list| {
                list.retain(|s| {
                    (&s.upstream, &s.repository, &s.reference)
                        != (&spec.upstream, &spec.repository, &spec.reference)
                });
                list.push(spec.clone());
            })
            .await;
        self.pins.sync_bucket().await;
        self.pins.flush().await;
        Ok(added)
    }

    /// Removes a runtime pin; what it held becomes ordinary LRU content. `Ok(None)`: not pinned.
    pub async fn remove_pin(&self, image: &str) -> Result<Option<pins::PinView>, pins::PinError> {
        let spec = self.pins.spec(image, &[])?;
        let removed = self.pins.remove(&spec)?;
        self.pins
            .publish(|list| {
                list.retain(|s| {
                    (&s.upstream, &s.repository, &s.reference)
                        != (&spec.upstream, &spec.repository, &spec.reference)
                })
            })
            .await;
        self.pins.sync_bucket().await;
        self.pins.flush().await;
        Ok(removed)
    }

    /// The metrics this proxy (and its upstreams and blob store) report to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The config this proxy runs.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn upstream(&self, i: usize) -> Option<&Arc<Upstream>> {
        self.upstreams.get(i)
    }

    /// archway's own listeners, once bound: no upstream redirect may lead to them (nor to this
    /// host's other addresses, unless an upstream lives there).
    pub fn set_own_listeners(&self, listeners: &[std::net::SocketAddr]) {
        let local: Vec<std::net::IpAddr> = if_addrs::get_if_addrs()
            .map(|ifs| ifs.iter().map(|i| i.ip()).collect())
            .unwrap_or_default();
        if let Some(egress) = &self.peer_egress {
            egress.set_own_listeners(listeners.to_vec(), local.clone());
        }
        for upstream in &self.upstreams {
            upstream.set_own_listeners(listeners.to_vec(), local.clone());
            // Not refused outright (an address can be shared in ways archway cannot see), but
            // every request there comes back as a loop, and is answered 508.
            if let Some(why) = upstream.refused_destination() {
                let u = upstream.config();
                tracing::warn!(upstream = %u.name, url = %u.url, reason = %why, "upstream is archway's own listener: every request to it would come back as a loop (answered 508 Loop Detected); check its url");
            }
        }
    }

    /// `[auth]`'s checker, when configured.
    pub fn client_auth(&self) -> Option<&ClientAuth> {
        self.client_auth.as_ref()
    }

    pub fn blob_store(&self) -> &Arc<BlobStore> {
        self.blobs.store()
    }

    /// Writes the access records of the objects committed since they were fetched (at
    /// shutdown, after the commits).
    pub fn flush_access_records(&self) {
        self.access.flush();
    }

    /// Answers one request. Never fails: errors become registry error responses. Everything
    /// logged while answering (and the access-log line when the body ends) is in the request's
    /// span: `request{id kind upstream}`.
    pub async fn handle<B>(
        self: &Arc<Self>,
        req: Request<B>,
        conn: ConnInfo,
    ) -> Response<LoggedBody> {
        self.answer_or_refuse(req, conn, false).await
    }

    /// `limits.max_requests` stayed taken: 503 with Retry-After, logged like any answer.
    pub async fn refuse_busy<B>(
        self: &Arc<Self>,
        req: Request<B>,
        conn: ConnInfo,
    ) -> Response<LoggedBody> {
        self.metrics.request_refused_busy();
        self.answer_or_refuse(req, conn, true).await
    }

    async fn answer_or_refuse<B>(
        self: &Arc<Self>,
        req: Request<B>,
        conn: ConnInfo,
        busy: bool,
    ) -> Response<LoggedBody> {
        let started = Instant::now();
        // Decided first (pure and cheap), so the span carries its fields from the start.
        let plan = self.plan(req.method(), req.uri(), req.headers());
        let span = tracing::info_span!(
            "request",
            id = NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed),
            kind = plan.kind(),
            upstream = self.upstream_name(&plan),
        );
        let log_path = match req.uri().query() {
            Some(q) => format!("{}?{q}", req.uri().path()),
            None => req.uri().path().to_owned(),
        };
        let method = req.method().clone();
        let incoming_via = via::incoming_hops(req.headers());
        let (response, notes) = via::scope(
            incoming_via,
            async {
                if self.via.is_own_request(req.headers()) {
                    return self.refuse_loop(&plan, &req);
                }
                if let Some(why) = client::host_header_problem(req.version(), req.headers()) {
                    return refuse(
                        ProxyError::downstream(ErrorCode::Unsupported, why)
                            .with_status(http::StatusCode::BAD_REQUEST),
                        req.method() == Method::HEAD,
                    );
                }
                if busy {
                    let (mut response, notes) = refuse(
                        ProxyError::downstream(
                            ErrorCode::TooManyRequests,
                            "too many requests in flight (limits.max_requests); retry shortly",
                        )
                        .with_status(http::StatusCode::SERVICE_UNAVAILABLE),
                        req.method() == Method::HEAD,
                    );
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return (response, notes);
                }
                match self.authenticate(&req, conn.peer).await {
                    Ok(user) => self.respond(plan, req, conn, user).await,
                    Err(refused) => refused,
                }
            }
            .instrument(span.clone()),
        )
        .await;
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
                    span,
                },
            )
        })
    }

    /// This archway's own request, come back: forwarding it again would go round once more
    /// (and wait on the very download it started), so it is refused at once — before `[auth]`,
    /// which it carries no credentials for.
    fn refuse_loop<B>(
        &self,
        plan: &Plan,
        req: &Request<B>,
    ) -> (Response<ResponseBody>, RequestNotes) {
        let upstream = self.upstream_name(plan);
        let via = req
            .headers()
            .get_all(header::VIA)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        let target = match plan.target.as_ref().and_then(|t| t.as_ref().ok()) {
            Some(t) => self
                .upstreams
                .get(t.upstream)
                .map(|u| format!("upstream {} ({})", u.config().name, u.config().url)),
            None => None,
        }
        .unwrap_or_else(|| "an upstream".to_owned());
        tracing::warn!(
            upstream,
            via = %via,
            marker = self.via.marker(),
            "request loop: this archway's own request came back to it; refused"
        );
        let e = ProxyError::new(
            crate::error::Side::Internal,
            ErrorCode::LoopDetected,
            format!(
                "request loop: this request was sent by this archway ({}) and came back to it; \
                 {target}, directly or through other archways, leads back here: check the \
                 upstream's url and the parent settings",
                self.via.marker()
            ),
        );
        refuse(e, req.method() == Method::HEAD)
    }

    /// With `[auth]`, a `/v2/` request without good credentials gets 401 and the Basic
    /// challenge, or 429 when its address used up its failure budget. Nothing of the presented
    /// credentials goes into the answer or the log.
    async fn authenticate<B>(
        &self,
        req: &Request<B>,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<Option<Arc<str>>, (Response<ResponseBody>, RequestNotes)> {
        let Some(auth) = &self.client_auth else {
            return Ok(None);
        };
        if req.extensions().get::<WarmRequest>().is_some() {
            return Ok(None);
        }
        let path = req.uri().path();
        if path != "/v2" && !path.starts_with("/v2/") {
            return Ok(None);
        }
        let authorization = req.headers().get(header::AUTHORIZATION);
        let denied = match auth.identify(authorization, peer.map(|p| p.ip())).await {
            Ok(user) => return Ok(user),
            Err(d) => d,
        };
        let e = match denied {
            Denied::Throttled { retry_after } => {
                ProxyError::downstream(ErrorCode::TooManyRequests, denied.as_str())
                    .with_retry_after(Some(HeaderValue::from(retry_after)))
            }
            _ => ProxyError::downstream(ErrorCode::Unauthorized, denied.as_str()),
        };
        let mut response = error_response(&e, req.method() == Method::HEAD);
        let h = response.headers_mut();
        h.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
        if e.code == ErrorCode::Unauthorized {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(crate::client_auth::CHALLENGE),
            );
        }
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
        let plan = self.plan(req.method(), req.uri(), req.headers());
        self.respond(plan, req, conn, None).await
    }

    /// Which endpoint, and which upstream and repository for a repository's endpoint.
    fn plan(&self, method: &Method, uri: &http::Uri, headers: &http::HeaderMap) -> Plan {
        let endpoint = api::parse(method, uri.path());
        let target = match &endpoint {
            Ok(Endpoint::Repository { name, .. }) => Some(upstream_choice::resolve(
                &self.config.upstreams,
                self.default_upstream,
                name,
                api::ns_param(uri.query()),
                headers.get(header::HOST).and_then(|h| h.to_str().ok()),
            )),
            _ => None,
        };
        Plan { endpoint, target }
    }

    fn upstream_name(&self, plan: &Plan) -> &str {
        match &plan.target {
            Some(Ok(t)) => self
                .upstreams
                .get(t.upstream)
                .map_or("-", |u| u.config().name.as_str()),
            _ => "-",
        }
    }

    async fn respond<B>(
        &self,
        plan: Plan,
        req: Request<B>,
        conn: ConnInfo,
        user: Option<Arc<str>>,
    ) -> (Response<ResponseBody>, RequestNotes) {
        let (parts, _body) = req.into_parts();
        let client = ClientRequest {
            conn,
            version: parts.version,
            method: parts.method,
            headers: parts.headers,
            query: parts.uri.query().map(str::to_owned),
            explain: parts.extensions.get::<ExplainRequest>().is_some(),
            user,
            lane: parts.extensions.get::<crate::sendfile::Lane>().cloned(),
        };
        let mut notes = RequestNotes::default();
        let peer = self.config.fleet.as_ref().and_then(|f| {
            let verifier = self.peer_verifier.as_ref()?;
            Some((f, verifier, crate::fleet::peer_digest(parts.uri.path())?))
        });
        let answer = match peer {
            Some((fleet, verifier, digest)) => {
                notes.kind = Some("peer_blob");
                let store = self.blobs.store();
                let observer = self.metrics.as_ref();
                let peer = peer::PeerRequest {
                    fleet,
                    verifier,
                    observer,
                };
                peer::serve(store, &peer, digest, &client, &mut notes).await
            }
            None => self.dispatch(plan, &client, &mut notes).await,
        };
        let mut response = match answer {
            Ok(r) => r,
            Err(e) => {
                notes.error = Some(e.message.clone());
                // The body is archway's error, not content from the cache or upstream.
                notes.body_uncounted = true;
                let mut r = error_response(&e, client.is_head());
                if notes.vary_on_error {
                    r.headers_mut()
                        .insert(header::VARY, HeaderValue::from_static(HINT_VARY));
                }
                r
            }
        };
        let h = response.headers_mut();
        h.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
        // What the cache did, for `archway warm`'s "already cached" and "fetched" (a client can
        // tell as much from the timing).
        if let Some(cache) = notes.cache() {
            h.insert(CACHE_HEADER, HeaderValue::from_static(cache));
        }
        (response, notes)
    }

    async fn dispatch(
        &self,
        plan: Plan,
        client: &ClientRequest,
        notes: &mut RequestNotes,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let endpoint = plan.endpoint?;
        notes.kind = Some(endpoint.kind());
        let (raw_name, resource) = match &endpoint {
            Endpoint::Ping => return Ok(ping()),
            Endpoint::Repository { name, resource } => (name.as_str(), resource),
        };
        let ns = api::ns_param(client.query.as_deref());
        let target = plan.target.ok_or_else(|| {
            ProxyError::internal("a repository endpoint without an upstream choice")
        })??;
        let upstream = self.upstreams.get(target.upstream).ok_or_else(|| {
            ProxyError::internal(format!("no upstream #{} configured", target.upstream))
        })?;
        notes.upstream = Some(upstream.config().name.clone());
        if !upstream.config().admits_client(client.user.as_deref()) {
            return Err(ProxyError::downstream(
                ErrorCode::Denied,
                format!(
                    "this client may not use upstream {} (its `clients` does not name it)",
                    upstream.config().name
                ),
            )
            .with_status(http::StatusCode::FORBIDDEN));
        }
        let repo = &target.repository;
        match resource {
            Resource::Manifest(reference) => {
                if client.explain {
                    // Replaced by the whole decision once the manifest is known.
                    notes.decision = Some(Box::new(
                        self.platform
                            .decision_before_manifest(upstream, &target, client),
                    ));
                }
                if let Reference::Tag(tag) = reference {
                    notes.image = Some(format!("{}/{}:{}", upstream.config().name, repo, tag));
                }
                let (m, result) = match reference {
                    Reference::Digest(d) => {
                        let store = || Object::Manifest(self.manifests.store());
                        let admitted = self.access.admit(store(), upstream, repo, d).await?;
                        let found = self.manifests.by_digest(upstream, repo, d).await?;
                        // A miss: this route's GET (one per digest at a time, under a lock).
                        let from_route = found.1 == CacheResult::Miss;
                        self.access
                            .settle(admitted, store(), upstream, repo, d, from_route)
                            .await?;
                        found
                    }
                    Reference::Tag(t) => self.manifests.by_tag(upstream, repo, t).await?,
                };
                notes.outcome = Some(Outcome::Cache(result));
                let foreign = self.blobs.foreign();
                foreign.record(&upstream.config().name, &m);
                let looked_up = m.digest.clone();
                let stale = result == CacheResult::Stale;
                match reference {
                    // Digest requests are never rewritten: the client gets what it named.
                    Reference::Digest(_) => Ok(manifest_response(client, &m, stale, false)),
                    Reference::Tag(_) => {
                        // Only the platform answer fails past here, and its 404s (no match, OCI
                        // refused) are this client's, not everyone's: caches must know.
                        notes.vary_on_error = true;
                        let work = layers::LayerWork {
                            converter: &self.converter,
                            blobs: &self.blobs,
                            access: &self.access,
                        };
                        let (answer, vary) = self
                            .platform
                            .answer(&self.manifests, &work, upstream, &target, client, m, notes)
                            .await?;
                        let store = self.manifests.store();
                        // What a tag gave this route is its to GET by digest, with no question.
                        self.access
                            .served_by_tag(store, upstream, repo, &looked_up)
                            .await;
                        if answer.digest != looked_up {
                            foreign.record(&upstream.config().name, &answer);
                            self.access
                                .served_by_tag(store, upstream, repo, &answer.digest)
                                .await;
                        }
                        Ok(manifest_response(client, &answer, stale, vary))
                    }
                }
            }
            Resource::Blob(digest) => {
                let store = || Object::Blob(self.blobs.store());
                let admitted = self.access.admit(store(), upstream, repo, digest).await?;
                let mut from_route = false;
                let answer = self
                    .blobs
                    .serve(upstream, repo, digest, client, notes, &mut from_route)
                    .await?;
                self.access
                    .settle(admitted, store(), upstream, repo, digest, from_route)
                    .await?;
                Ok(answer)
            }
            Resource::TagsList => {
                notes.outcome = Some(Outcome::Listing);
                listings::tags(upstream, repo, view(raw_name, ns, client)).await
            }
            Resource::Referrers(digest) => {
                let (r, result) = self
                    .referrers
                    .serve(upstream, repo, digest, view(raw_name, ns, client))
                    .await?;
                notes.outcome = Some(Outcome::Cache(result));
                Ok(r)
            }
        }
    }
}

/// What a request asks for and which upstream it reaches, decided once before anything is
/// logged or fetched, so the request's span names both from its first line.
struct Plan {
    endpoint: Result<Endpoint, ProxyError>,
    /// For a repository's endpoint: the configured upstream and the repository there.
    target: Option<Result<upstream_choice::Target, ProxyError>>,
}

impl Plan {
    fn kind(&self) -> &'static str {
        self.endpoint.as_ref().map_or("other", Endpoint::kind)
    }
}

/// An error answer to a request refused before it was looked at.
fn refuse(e: ProxyError, head: bool) -> (Response<ResponseBody>, RequestNotes) {
    let mut response = error_response(&e, head);
    response
        .headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    let notes = RequestNotes {
        error: Some(e.message),
        ..RequestNotes::default()
    };
    (response, notes)
}

fn view<'a>(
    name: &'a str,
    ns: Option<&'a str>,
    client: &'a ClientRequest,
) -> listings::ClientView<'a> {
    listings::ClientView {
        name,
        ns,
        query: client.query.as_deref(),
    }
}
