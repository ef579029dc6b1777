//! One exchange with an upstream: the request archway forms (its own User-Agent, never a
//! client's credentials), the bearer-token flow with the token cache, server-side redirects
//! (dropping `Authorization` across origins) and the timeouts.

use super::auth::{self, Challenge};
use super::counted::Counted;
use super::error::{UpstreamError, UpstreamErrorKind};
use super::redirect;
use super::timeout;
use super::token_cache::TokenKey;
use super::{Attempt, AuthHint, Fetched, Upstream};
use crate::body::UpstreamBody;
use crate::config::{Credentials, Secret};
use crate::metrics::UpstreamOutcome;
use crate::reference::RepositoryName;
use base64::Engine as _;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

/// Token responses are small JSON documents; anything bigger is not one.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;

impl Upstream {
    /// `method` GET or HEAD to `{config.url}/v2/{repo}/{suffix}`; suffix e.g.
    /// `manifests/latest`, `blobs/sha256:…`, `tags/list?n=10&last=x`. `headers` are the
    /// caller's extra request headers (Accept, Range, If-None-Match); User-Agent and
    /// Authorization are archway's own. Returns the final response (after auth and
    /// redirects) whatever its status; errors only for transport failures, timeouts and
    /// token endpoint failures. With parents configured the request goes through them
    /// (`parent`), and to `config.url` only as their fallback.
    pub async fn send(
        &self,
        method: Method,
        repo: &RepositoryName,
        suffix: &str,
        headers: HeaderMap,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        // Idempotent, so a caller that already added `library/` is fine.
        let repo = if self.config.library_prefix {
            repo.with_library_prefix()
        } else {
            repo.clone()
        };
        match &self.parents {
            Some(parents) => parents.send(self, method, &repo, suffix, headers).await,
            None => self.send_direct(method, &repo, suffix, headers).await,
        }
    }

    /// `send` to `config.url` itself; `repo` as `send` made it (`library/` added where due).
    pub(super) async fn send_direct(
        &self,
        method: Method,
        repo: &RepositoryName,
        suffix: &str,
        headers: HeaderMap,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let url: Uri = format!(
            "{}/v2/{}/{}",
            self.base,
            repo,
            suffix.trim_start_matches('/')
        )
        .parse()
        .map_err(|_| {
            UpstreamError::new(UpstreamErrorKind::Internal, "cannot form the upstream URL")
        })?;
        let headers = self.request_headers(headers);
        let default_scope = auth::default_scope(repo.as_str());

        let first_attempt = self.preemptive(&default_scope).await;
        // Redirects are followed only where the registry protocol uses them: blob downloads.
        let follow = method == Method::GET && suffix.starts_with("blobs/");
        let first = self
            .execute(
                &method,
                &url,
                &headers,
                self.authorization(&first_attempt)?,
                follow,
            )
            .await?;
        // A 401 from a redirect target (a CDN) is not the registry's challenge.
        if first.response.status() != StatusCode::UNAUTHORIZED
            || !redirect::same_origin(&first.url, &url)
        {
            return Ok(self.finish(first.response));
        }
        let second_attempt = match auth::select_challenge(first.response.headers()) {
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                self.remember(AuthHint::Bearer {
                    realm: realm.clone(),
                    service: service.clone(),
                });
                let key = TokenKey {
                    realm,
                    service,
                    scope: scope.unwrap_or(default_scope),
                };
                let rejected = match &first_attempt {
                    Attempt::Bearer { key: k, token } if *k == key => Some(token),
                    Attempt::Bearer { key: k, token } => {
                        self.tokens.invalidate(k, token).await;
                        None
                    }
                    _ => None,
                };
                let token = self
                    .tokens
                    .get_or_fetch(&key, rejected, || self.fetch_token(&key))
                    .await?;
                Attempt::Bearer { key, token }
            }
            Some(Challenge::Basic)
                if self.basic.is_some() && !matches!(first_attempt, Attempt::Basic) =>
            {
                self.remember(AuthHint::Basic);
                Attempt::Basic
            }
            // Nothing archway can answer (or the credentials were already refused).
            _ => return Ok(self.finish(first.response)),
        };
        drop(first);
        let second = self
            .execute(
                &method,
                &url,
                &headers,
                self.authorization(&second_attempt)?,
                follow,
            )
            .await?;
        Ok(self.finish(second.response))
    }

    /// The caller's headers minus anything that must not come from a client, plus ours.
    fn request_headers(&self, mut headers: HeaderMap) -> HeaderMap {
        const DROPPED: [HeaderName; 8] = [
            header::AUTHORIZATION,
            header::PROXY_AUTHORIZATION,
            header::COOKIE,
            header::HOST,
            header::CONNECTION,
            header::TE,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
        ];
        for name in DROPPED {
            headers.remove(name);
        }
        headers.insert(header::USER_AGENT, self.user_agent.clone());
        headers.remove(header::VIA);
        if let Some(via) = &self.via {
            headers.insert(header::VIA, via.outgoing());
        }
        headers
    }

    fn remember(&self, hint: AuthHint) {
        *self.hint.lock().unwrap_or_else(PoisonError::into_inner) = Some(hint);
    }

    /// What the first attempt carries: a cached token for the default scope under the last
    /// seen realm, Basic credentials if the upstream asked for them before, else nothing.
    async fn preemptive(&self, default_scope: &str) -> Attempt {
        let hint = self
            .hint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match hint {
            Some(AuthHint::Bearer { realm, service }) => {
                let key = TokenKey {
                    realm,
                    service,
                    scope: default_scope.to_owned(),
                };
                match self.tokens.get(&key).await {
                    Some(token) => Attempt::Bearer { key, token },
                    None => Attempt::Anonymous,
                }
            }
            Some(AuthHint::Basic) if self.basic.is_some() => Attempt::Basic,
            _ => Attempt::Anonymous,
        }
    }

    fn authorization(&self, attempt: &Attempt) -> Result<Option<HeaderValue>, UpstreamError> {
        match attempt {
            Attempt::Anonymous => Ok(None),
            Attempt::Basic => Ok(self.basic.clone()),
            Attempt::Bearer { token, .. } => bearer_header(token).map(Some).ok_or_else(|| {
                UpstreamError::unavailable_of(
                    &self.config.name,
                    ": token endpoint returned an unusable token",
                )
            }),
        }
    }

    /// Sends one request and follows redirects for GET/HEAD, dropping `Authorization` as
    /// soon as a hop leaves the origin.
    async fn execute(
        &self,
        method: &Method,
        url: &Uri,
        headers: &HeaderMap,
        mut authorization: Option<HeaderValue>,
        follow: bool,
    ) -> Result<Fetched, UpstreamError> {
        let mut url = url.clone();
        let mut hops = 0;
        loop {
            let response = self
                .request_once(method, &url, headers, authorization.as_ref())
                .await?;
            let status = response.status();
            if !(follow && redirect::is_followed(status)) {
                return Ok(Fetched { response, url });
            }
            if hops == redirect::MAX_REDIRECTS {
                return Err(UpstreamError::unavailable_of(
                    &self.config.name,
                    format!(" redirected more than {} times", redirect::MAX_REDIRECTS),
                ));
            }
            hops += 1;
            let next = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| redirect::resolve_location(&url, l).ok())
                .ok_or_else(|| {
                    UpstreamError::unavailable_of(
                        &self.config.name,
                        format!(" answered {status} without a usable Location"),
                    )
                })?;
            self.egress.check_url(&next).map_err(|why| {
                UpstreamError::unavailable_of(
                    &self.config.name,
                    format!(
                        ": redirect to {}://{} refused: {why}",
                        next.scheme_str().unwrap_or("http"),
                        next.authority().map(|a| a.as_str()).unwrap_or_default()
                    ),
                )
            })?;
            let keep = redirect::keep_authorization(authorization.is_some(), &url, &next);
            tracing::debug!(
                upstream = %self.config.name,
                status = status.as_u16(),
                from = %redirect::redacted(&url),
                to = %redirect::redacted(&next),
                hop = hops,
                authorization = keep,
                "following upstream redirect"
            );
            if !keep {
                authorization = None;
            }
            url = next;
        }
    }

    async fn request_once(
        &self,
        method: &Method,
        url: &Uri,
        headers: &HeaderMap,
        authorization: Option<&HeaderValue>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut request = Request::new(Empty::new());
        *request.method_mut() = method.clone();
        *request.uri_mut() = url.clone();
        *request.headers_mut() = headers.clone();
        if let Some(value) = authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, value.clone());
        }
        // The whole wait for response headers, connecting included (the connector's own limit
        // may end the connecting part sooner).
        let budget = self.config.read_timeout;
        let host = url.host().unwrap_or_default();
        let started = Instant::now();
        let result = tokio::time::timeout(budget, self.client.request(request)).await;
        if let Some(m) = &self.metrics {
            let outcome = match &result {
                Ok(Ok(response)) => UpstreamOutcome::Status(response.status().as_u16()),
                Ok(Err(_)) => UpstreamOutcome::Error,
                Err(_) => UpstreamOutcome::Timeout,
            };
            m.upstream_request(&self.config.name, outcome, started.elapsed());
            let remaining = result
                .as_ref()
                .ok()
                .and_then(|r| r.as_ref().ok())
                .and_then(|r| {
                    r.headers()
                        .get("ratelimit-remaining")
                        .and_then(|v| v.to_str().ok())
                        .and_then(crate::metrics::parse_ratelimit_remaining)
                });
            if let Some(n) = remaining {
                m.ratelimit_remaining(&self.config.name, n);
            }
        }
        match result {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                let cause = describe_failure(&e, url);
                if let Some(m) = &self.metrics {
                    m.upstream_failure(&self.config.name, &cause);
                }
                Err(
                    UpstreamError::unavailable_of(&self.config.name, format!(": {cause}"))
                        .with_source(e),
                )
            }
            Err(_) => {
                let cause = format!("{host} did not answer within {:.1} s", budget.as_secs_f64());
                if let Some(m) = &self.metrics {
                    m.upstream_failure(&self.config.name, &cause);
                }
                Err(UpstreamError::timeout_of(
                    &self.config.name,
                    format!(": {cause}"),
                ))
            }
        }
    }

    pub(super) fn finish(&self, response: Response<Incoming>) -> Response<UpstreamBody> {
        let idle = self.config.read_timeout;
        let received = self
            .metrics
            .as_ref()
            .map(|m| m.upstream_received_counter(&self.config.name));
        response.map(|body| {
            let body = Counted::new(body.map_err(std::io::Error::other), received);
            timeout::IdleTimeout::new(body, idle).boxed_unsync()
        })
    }

    /// `GET realm?service=…&scope=…`, with Basic credentials when configured.
    async fn fetch_token(&self, key: &TokenKey) -> Result<(Secret, Duration), UpstreamError> {
        self.token_fetches.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.token_fetch(&self.config.name);
        }
        let name = &self.config.name;
        let url: Uri = auth::token_url(&key.realm, key.service.as_deref(), &key.scope)
            .parse()
            .ok()
            .filter(|u: &Uri| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            })
            .ok_or_else(|| UpstreamError::unavailable_of(name, " named an unusable token realm"))?;
        let realm = redirect::redacted(&url);
        // The realm is the upstream's word: it may not lead anywhere a redirect may not.
        self.egress.check_url(&url).map_err(|why| {
            UpstreamError::unavailable_of(name, format!(": token realm {realm} refused: {why}"))
        })?;
        tracing::debug!(
            upstream = %name,
            realm = %realm,
            service = key.service.as_deref().unwrap_or(""),
            scope = %key.scope,
            credentials = self.basic.is_some(),
            "fetching upstream token"
        );
        let mut headers = HeaderMap::new();
        headers.insert(header::USER_AGENT, self.user_agent.clone());
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let fetched = self
            .execute(&Method::GET, &url, &headers, self.basic.clone(), false)
            .await?;
        let status = fetched.response.status();
        if !status.is_success() {
            let message = format!("upstream {name}: token endpoint {realm} answered {status}");
            tracing::debug!(upstream = %name, realm = %realm, status = status.as_u16(), "token request refused");
            return Err(match status {
                StatusCode::UNAUTHORIZED => {
                    UpstreamError::new(UpstreamErrorKind::Unauthorized, message)
                }
                StatusCode::FORBIDDEN => UpstreamError::new(UpstreamErrorKind::Denied, message),
                StatusCode::TOO_MANY_REQUESTS => {
                    UpstreamError::new(UpstreamErrorKind::RateLimited, message).with_retry_after(
                        fetched.response.headers().get(header::RETRY_AFTER).cloned(),
                    )
                }
                _ => UpstreamError::unavailable(message),
            });
        }
        let body = Limited::new(fetched.response.into_body(), MAX_TOKEN_RESPONSE).collect();
        let body = match tokio::time::timeout(self.config.read_timeout, body).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => {
                return Err(UpstreamError::unavailable_of(
                    name,
                    format!(": reading the token response failed: {e}"),
                ))
            }
            Err(_) => {
                return Err(UpstreamError::timeout_of(
                    name,
                    format!(": token endpoint {realm} stalled"),
                ))
            }
        };
        let parsed = auth::parse_token_response(&body)
            .map_err(|e| UpstreamError::unavailable_of(name, format!(": {e}")))?;
        if bearer_header(&parsed.token).is_none() {
            return Err(UpstreamError::unavailable_of(
                name,
                ": token endpoint returned an unusable token",
            ));
        }
        tracing::debug!(
            upstream = %name,
            realm = %realm,
            scope = %key.scope,
            lifetime_s = parsed.lifetime.as_secs_f64(),
            issued_at = parsed.issued_at.as_deref().unwrap_or(""),
            "fetched upstream token"
        );
        Ok((parsed.token, parsed.lifetime))
    }
}

pub(super) fn basic_header(credentials: &Credentials) -> Option<HeaderValue> {
    let raw = format!("{}:{}", credentials.username, credentials.password.expose());
    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

pub(super) fn bearer_header(token: &Secret) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// What failed, for which host, in a registry user's words; the library's own chain of causes
/// only where nothing plainer fits.
pub(super) fn describe_failure(e: &hyper_util::client::legacy::Error, url: &Uri) -> String {
    let host = url.host().unwrap_or_default();
    let port = url.port_u16().unwrap_or(match url.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    let chain = error_chain(e);
    let io_kind = {
        let mut source = std::error::Error::source(e);
        let mut kind = None;
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                kind = Some((io.kind(), io.to_string()));
            }
            source = cause.source();
        }
        kind
    };
    if e.is_connect() {
        match io_kind {
            Some((std::io::ErrorKind::PermissionDenied, why)) => {
                return format!("connection to {host} refused by archway: {why}")
            }
            Some((std::io::ErrorKind::ConnectionRefused, _)) => {
                return format!("cannot connect to {host}:{port}: connection refused")
            }
            Some((std::io::ErrorKind::TimedOut, _)) => {
                return format!("cannot connect to {host}:{port}: timed out")
            }
            _ => {}
        }
        if chain.contains("dns error") || chain.contains("failed to lookup address") {
            return format!("cannot resolve host {host} (DNS lookup failed)");
        }
        if chain.contains("certificate") || chain.contains("tls") || chain.contains("TLS") {
            let why = chain
                .strip_prefix("client error (Connect): ")
                .unwrap_or(&chain);
            return format!("TLS handshake with {host}:{port} failed: {why}");
        }
        return format!("cannot connect to {host}:{port}: {chain}");
    }
    format!("request to {host} failed: {chain}")
}

/// `error: cause: cause…` — hyper's top-level error alone says little ("client error (Connect)").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
