//! The upstream registry client: a pooled hyper client over rustls, the bearer-token flow with
//! a token cache, server-side redirects (dropping `Authorization` across origins) and timeouts.

mod auth;
mod redirect;
mod timeout;
mod token_cache;

use crate::body::UpstreamBody;
use crate::config::{Credentials, Secret, UpstreamConfig};
use crate::error::{ErrorCode, ProxyError};
use crate::metrics::{Metrics, UpstreamOutcome};
use crate::reference::RepositoryName;
use auth::Challenge;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use token_cache::{TokenCache, TokenKey};

/// Token responses are small JSON documents; anything bigger is not one.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;
/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamInitError {
    #[error("cannot read CA file {}: {source}", path.display())]
    CaFileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {} holds no PEM certificate", path.display())]
    CaFileEmpty { path: PathBuf },
    #[error("CA file {}: {message}", path.display())]
    CaFileInvalid { path: PathBuf, message: String },
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// What the last challenge of this upstream asked for, so that later requests can present a
/// cached token (or Basic credentials) up front instead of going anonymous first.
#[derive(Debug, Clone)]
enum AuthHint {
    Bearer {
        realm: String,
        service: Option<String>,
    },
    Basic,
}

/// The credentials one attempt carries.
enum Attempt {
    Anonymous,
    Bearer { key: TokenKey, token: Secret },
    Basic,
}

/// A client for one upstream registry. `Send + Sync`; share it behind an `Arc`.
pub struct Upstream {
    config: UpstreamConfig,
    client: HttpClient,
    /// `scheme://authority` of the upstream, without a trailing slash.
    base: String,
    user_agent: HeaderValue,
    /// `Basic …` from the configured credentials, marked sensitive.
    basic: Option<HeaderValue>,
    hint: Mutex<Option<AuthHint>>,
    tokens: TokenCache,
    token_fetches: AtomicU64,
    metrics: Option<Arc<Metrics>>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.config.name)
            .field("url", &self.base)
            .field("credentials", &self.basic.is_some())
            .finish_non_exhaustive()
    }
}

/// The final response of one request chain and the URL that gave it.
struct Fetched {
    response: Response<Incoming>,
    url: Uri,
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Result<Upstream, UpstreamInitError> {
        let tls = tls_config(config.ca_file.as_deref(), config.insecure_skip_verify)?;
        if config.insecure_skip_verify {
            tracing::warn!(
                upstream = %config.name,
                url = %config.url,
                "insecure_skip_verify: this upstream's TLS certificate is NOT verified; \
                 anyone on the path can impersonate it"
            );
        }
        let mut http = HttpConnector::new();
        // The https connector wraps this one; it must accept https URLs.
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(https);

        let scheme = config.url.scheme_str().unwrap_or("https");
        let authority = config.url.authority().map(|a| a.as_str()).unwrap_or("");
        let base = format!("{scheme}://{authority}");
        let user_agent = HeaderValue::from_static(concat!("archway/", env!("CARGO_PKG_VERSION")));
        let basic = config.credentials.as_ref().and_then(basic_header);
        if config.credentials.is_some() && basic.is_none() {
            tracing::warn!(upstream = %config.name, "credentials cannot form an Authorization header; ignored");
        }
        Ok(Upstream {
            config,
            client,
            base,
            user_agent,
            basic,
            hint: Mutex::new(None),
            tokens: TokenCache::default(),
            token_fetches: AtomicU64::new(0),
            metrics: None,
        })
    }

    /// Reports every upstream exchange, token fetch and `RateLimit-Remaining` to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        metrics.register_upstream(&self.config.name);
        self.metrics = Some(metrics);
        self
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// How many token requests were made (for tests/metrics).
    pub fn token_fetches(&self) -> u64 {
        self.token_fetches.load(Ordering::Relaxed)
    }

    /// `method` GET or HEAD to `{config.url}/v2/{repo}/{suffix}`; suffix e.g.
    /// `manifests/latest`, `blobs/sha256:…`, `tags/list?n=10&last=x`. `headers` are the
    /// caller's extra request headers (Accept, Range, If-None-Match); User-Agent and
    /// Authorization are the client's own. Returns the final response (after auth and
    /// redirects) whatever its status; errors only for transport failures, timeouts and
    /// token endpoint failures.
    pub async fn send(
        &self,
        method: Method,
        repo: &RepositoryName,
        suffix: &str,
        headers: HeaderMap,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        // Idempotent, so a caller that already added `library/` is fine.
        let repo = if self.config.library_prefix {
            repo.with_library_prefix()
        } else {
            repo.clone()
        };
        let url: Uri = format!(
            "{}/v2/{}/{}",
            self.base,
            repo,
            suffix.trim_start_matches('/')
        )
        .parse()
        .map_err(|_| ProxyError::internal("cannot form the upstream URL"))?;
        let headers = self.request_headers(headers);
        let default_scope = auth::default_scope(repo.as_str());

        let first_attempt = self.preemptive(&default_scope).await;
        let first = self
            .execute(&method, &url, &headers, self.authorization(&first_attempt)?)
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

    fn authorization(&self, attempt: &Attempt) -> Result<Option<HeaderValue>, ProxyError> {
        match attempt {
            Attempt::Anonymous => Ok(None),
            Attempt::Basic => Ok(self.basic.clone()),
            Attempt::Bearer { token, .. } => bearer_header(token).map(Some).ok_or_else(|| {
                ProxyError::bad_gateway(format!(
                    "upstream {}: token endpoint returned an unusable token",
                    self.config.name
                ))
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
    ) -> Result<Fetched, ProxyError> {
        let follow = *method == Method::GET || *method == Method::HEAD;
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
                return Err(ProxyError::bad_gateway(format!(
                    "upstream {} redirected more than {} times",
                    self.config.name,
                    redirect::MAX_REDIRECTS
                )));
            }
            hops += 1;
            let next = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| redirect::resolve_location(&url, l).ok())
                .ok_or_else(|| {
                    ProxyError::bad_gateway(format!(
                        "upstream {} answered {status} without a usable Location",
                        self.config.name
                    ))
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
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut request = Request::new(Empty::new());
        *request.method_mut() = method.clone();
        *request.uri_mut() = url.clone();
        *request.headers_mut() = headers.clone();
        if let Some(value) = authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, value.clone());
        }
        // Connecting has its own limit (the connector's); the header wait starts after it.
        let budget = self.config.connect_timeout + self.config.read_timeout;
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
            Ok(Err(e)) => Err(ProxyError::bad_gateway(format!(
                "upstream {}: request to {host} failed: {}",
                self.config.name,
                error_chain(&e)
            ))),
            Err(_) => Err(ProxyError::gateway_timeout(format!(
                "upstream {}: {host} did not answer within {:.1} s",
                self.config.name,
                budget.as_secs_f64()
            ))),
        }
    }

    fn finish(&self, response: Response<Incoming>) -> Response<UpstreamBody> {
        let idle = self.config.read_timeout;
        response.map(|body| {
            timeout::IdleTimeout::new(body.map_err(std::io::Error::other), idle).boxed_unsync()
        })
    }

    /// `GET realm?service=…&scope=…`, with Basic credentials when configured.
    async fn fetch_token(&self, key: &TokenKey) -> Result<(Secret, Duration), ProxyError> {
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
            .ok_or_else(|| {
                ProxyError::bad_gateway(format!("upstream {name} named an unusable token realm"))
            })?;
        let realm = redirect::redacted(&url);
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
            .execute(&Method::GET, &url, &headers, self.basic.clone())
            .await?;
        let status = fetched.response.status();
        if !status.is_success() {
            let message = format!("upstream {name}: token endpoint {realm} answered {status}");
            tracing::debug!(upstream = %name, realm = %realm, status = status.as_u16(), "token request refused");
            return Err(match status {
                StatusCode::UNAUTHORIZED => ProxyError::upstream(ErrorCode::Unauthorized, message),
                StatusCode::FORBIDDEN => ProxyError::upstream(ErrorCode::Denied, message),
                StatusCode::TOO_MANY_REQUESTS => {
                    ProxyError::upstream(ErrorCode::TooManyRequests, message).with_retry_after(
                        fetched.response.headers().get(header::RETRY_AFTER).cloned(),
                    )
                }
                _ => ProxyError::bad_gateway(message),
            });
        }
        let body = Limited::new(fetched.response.into_body(), MAX_TOKEN_RESPONSE).collect();
        let body = match tokio::time::timeout(self.config.read_timeout, body).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => {
                return Err(ProxyError::bad_gateway(format!(
                    "upstream {name}: reading the token response failed: {e}"
                )))
            }
            Err(_) => {
                return Err(ProxyError::gateway_timeout(format!(
                    "upstream {name}: token endpoint {realm} stalled"
                )))
            }
        };
        let parsed = auth::parse_token_response(&body)
            .map_err(|e| ProxyError::bad_gateway(format!("upstream {name}: {e}")))?;
        if bearer_header(&parsed.token).is_none() {
            return Err(ProxyError::bad_gateway(format!(
                "upstream {name}: token endpoint returned an unusable token"
            )));
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

/// Map a non-success upstream status to the registry error a client should see, or `None` for
/// 1xx/2xx/3xx. `not_found` is the code for 404 (MANIFEST_UNKNOWN / BLOB_UNKNOWN / NAME_UNKNOWN).
/// 5xx becomes UNAVAILABLE 502 (504 stays 504); `Retry-After` is kept on 429 and 5xx.
pub fn status_error(
    upstream_name: &str,
    status: StatusCode,
    headers: &HeaderMap,
    not_found: ErrorCode,
) -> Option<ProxyError> {
    if !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    let message = format!("upstream {upstream_name} answered {status}");
    let retry_after = || headers.get(header::RETRY_AFTER).cloned();
    let error = match status {
        StatusCode::UNAUTHORIZED => ProxyError::upstream(ErrorCode::Unauthorized, message),
        StatusCode::FORBIDDEN => ProxyError::upstream(ErrorCode::Denied, message),
        StatusCode::NOT_FOUND => {
            ProxyError::upstream(not_found, message).with_status(StatusCode::NOT_FOUND)
        }
        StatusCode::RANGE_NOT_SATISFIABLE => ProxyError::upstream(ErrorCode::RangeInvalid, message),
        StatusCode::TOO_MANY_REQUESTS => ProxyError::upstream(ErrorCode::TooManyRequests, message)
            .with_status(StatusCode::TOO_MANY_REQUESTS)
            .with_retry_after(retry_after()),
        StatusCode::GATEWAY_TIMEOUT => {
            ProxyError::gateway_timeout(message).with_retry_after(retry_after())
        }
        s if s.is_server_error() => {
            ProxyError::bad_gateway(message).with_retry_after(retry_after())
        }
        s => ProxyError::upstream(ErrorCode::Unknown, message).with_status(s),
    };
    Some(error)
}

/// Builds the rustls config: system roots plus the optional extra CA file, ring as provider
/// (explicitly, never the process-global default).
fn tls_config(
    ca_file: Option<&Path>,
    insecure_skip_verify: bool,
) -> Result<rustls::ClientConfig, UpstreamInitError> {
    let provider = crate::tls::provider();
    if insecure_skip_verify {
        let verifier = crate::tls::AcceptAnyServerCert::new(provider.clone());
        return Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamInitError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "while loading system CA certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system CA certificates");
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| UpstreamInitError::CaFileRead {
            path: path.to_owned(),
            source,
        })?;
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| UpstreamInitError::CaFileInvalid {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(UpstreamInitError::CaFileEmpty {
                path: path.to_owned(),
            });
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| UpstreamInitError::CaFileInvalid {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamInitError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn basic_header(credentials: &Credentials) -> Option<HeaderValue> {
    let raw = format!("{}:{}", credentials.username, credentials.password.expose());
    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

fn bearer_header(token: &Secret) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?;
    value.set_sensitive(true);
    Some(value)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_is_sensitive_and_encoded() {
        let creds = Credentials {
            username: "user".into(),
            password: Secret::new("pa:ss"),
        };
        let value = basic_header(&creds).unwrap();
        assert!(value.is_sensitive());
        assert_eq!(value, "Basic dXNlcjpwYTpzcw==");
        assert!(bearer_header(&Secret::new("bad\ntoken")).is_none());
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let missing = Path::new("/nonexistent/archway-ca.pem");
        let err = tls_config(Some(missing), false).unwrap_err();
        assert!(matches!(err, UpstreamInitError::CaFileRead { .. }));
        assert!(
            err.to_string().contains("/nonexistent/archway-ca.pem"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let err = tls_config(Some(&empty), false).unwrap_err();
        assert!(matches!(err, UpstreamInitError::CaFileEmpty { .. }));
        assert!(err.to_string().contains("empty.pem"), "{err}");

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = tls_config(Some(&broken), false).unwrap_err();
        assert!(err.to_string().contains("broken.pem"), "{err}");
    }

    #[test]
    fn upstream_is_send_sync_and_debug_hides_credentials() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Upstream>();
        let mut config = UpstreamConfig::from_url(Some("r"), "http://127.0.0.1:1").unwrap();
        config.credentials = Some(Credentials {
            username: "u".into(),
            password: Secret::new("hunter2"),
        });
        let upstream = Upstream::new(config).unwrap();
        let debug = format!("{upstream:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("aHVudGVy"),
            "{debug}"
        );
    }
}
