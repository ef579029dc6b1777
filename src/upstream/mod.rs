//! The upstream registry client. It speaks the registry API (`registry`: manifests, blobs, tags,
//! referrers, with typed results and one error type, `error`) over one exchange (`exchange`:
//! auth, token cache, redirects, timeouts), a pooled hyper client over rustls (`client_tls`).

pub(crate) mod auth;
mod client_tls;
mod counted;
pub(crate) use client_tls::tls_config;
mod egress;
mod error;
mod exchange;
mod foreign;
mod parent;
mod redirect;
mod registry;
mod timeout;
mod token_cache;

pub use egress::{classify, AddrClass, Egress, GuardedResolver};
pub use error::{status_error, Missing, UpstreamError, UpstreamErrorKind};
pub use foreign::ForeignBlob;
pub use parent::{ParentInitError, Parents};
pub use registry::{BlobHead, BlobStream, Listing, ManifestHead, ManifestRef, RangeStream};

use crate::config::{Secret, UpstreamConfig};
use crate::metrics::Metrics;
use bytes::Bytes;
use http::header::HeaderValue;
use http::{Response, Uri};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use token_cache::{TokenCache, TokenKey};

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

type HttpClient = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Empty<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamInitError {
    #[error(transparent)]
    CaFileRead(crate::key_file::KeyFileError),
    #[error("CA file {} holds no PEM certificate", path.display())]
    CaFileEmpty { path: PathBuf },
    #[error("CA file {}: {message}", path.display())]
    CaFileInvalid { path: PathBuf, message: String },
    #[error("TLS setup failed: {0}")]
    Tls(#[source] rustls::Error),
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
    /// What answers a Basic challenge, marked sensitive: `Basic …` from the configured
    /// credentials, or a parent's static `Bearer …` token (`parent_token`).
    basic: Option<HeaderValue>,
    hint: Mutex<Option<AuthHint>>,
    tokens: TokenCache,
    token_fetches: AtomicU64,
    metrics: Option<Arc<Metrics>>,
    /// Where redirects and token realms may lead.
    egress: Arc<Egress>,
    /// `parent`: every request goes through these archways instead.
    parents: Option<Arc<Parents>>,
    /// `Via` on every request: this archway's marker (the proxy sets it).
    via: Option<crate::via::Via>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.config.name)
            .field("url", &self.base)
            .field("credentials", &self.basic.is_some())
            .field("parents", &self.parents)
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
        // A parent's client is an UpstreamConfig named by its URL; its CA comes from parent_ca_file.
        let ca_key = if config.name.contains("://") {
            "parent_ca_file".to_owned()
        } else {
            format!("upstream[{}].ca_file", config.name)
        };
        let ca_file = config.ca_file.as_deref().map(|p| (ca_key.as_str(), p));
        let tls = client_tls::tls_config(ca_file, config.insecure_skip_verify)?;
        if config.insecure_skip_verify {
            tracing::warn!(
                upstream = %config.name,
                url = %config.url,
                "insecure_skip_verify: this upstream's TLS certificate is NOT verified; \
                 anyone on the path can impersonate it"
            );
        }
        // An explicit `scheme://host:port` foreign layer host is a destination the operator
        // named, like a redirect host.
        let allowed = config
            .redirect_hosts
            .iter()
            .cloned()
            .chain(
                config
                    .foreign_layer_hosts
                    .iter()
                    .filter_map(|p| p.explicit_destination()),
            )
            .collect();
        let egress = Arc::new(Egress::new(
            &config.name,
            config.url.host().unwrap_or_default(),
            allowed,
        ));
        let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(egress.clone()));
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
        let basic = config.credentials.as_ref().and_then(exchange::basic_header);
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
            egress,
            parents: None,
            via: None,
        })
    }

    /// Sends every request through `parents` (the node → cluster tier).
    pub fn with_parents(mut self, parents: Arc<Parents>) -> Self {
        self.parents = Some(parents);
        self
    }

    /// Marks every request with `via` (`Via: 1.1 archway-<id>`), so that one that comes back
    /// to this archway is recognised as a loop.
    pub fn with_via(mut self, via: crate::via::Via) -> Self {
        self.via = Some(via);
        self
    }

    /// Answers this (parent) archway's `[auth]` challenge with a static bearer token of its
    /// `tokens_file` instead of Basic credentials.
    pub fn with_static_token(mut self, token: &crate::config::Secret) -> Self {
        self.basic = exchange::bearer_header(token);
        self
    }

    /// Reports every upstream exchange, token fetch and `RateLimit-Remaining` to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        metrics.register_upstream(&self.config.name);
        self.metrics = Some(metrics);
        self
    }

    /// archway's own listeners (and this host's addresses): never a redirect's destination.
    pub fn set_own_listeners(
        &self,
        listeners: Vec<std::net::SocketAddr>,
        local: Vec<std::net::IpAddr>,
    ) {
        if let Some(p) = &self.parents {
            p.set_own_listeners(listeners.clone(), local.clone());
        }
        self.egress.set_own_listeners(listeners, local);
    }

    /// Why the egress policy refuses this upstream's own URL (archway's own listener, as an IP
    /// literal or `localhost`), if it does.
    pub(crate) fn refused_destination(&self) -> Option<String> {
        self.egress.check_own_url(&self.config.url).err()
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Requests go through parent archways (the parent tier) first.
    pub(crate) fn has_parents(&self) -> bool {
        self.parents.is_some()
    }

    /// How many token requests were made (for tests/metrics).
    pub fn token_fetches(&self) -> u64 {
        self.token_fetches.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::client_tls::tls_config;
    use super::exchange::{basic_header, bearer_header};
    use super::*;
    use crate::config::{Credentials, Secret};
    use std::path::Path;

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
        let err = tls_config(Some(("upstream[r].ca_file", missing)), false).unwrap_err();
        assert!(matches!(err, UpstreamInitError::CaFileRead { .. }));
        assert!(
            err.to_string().contains("/nonexistent/archway-ca.pem"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let err = tls_config(Some(("upstream[r].ca_file", &empty)), false).unwrap_err();
        assert!(matches!(err, UpstreamInitError::CaFileEmpty { .. }));
        assert!(err.to_string().contains("empty.pem"), "{err}");

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = tls_config(Some(("upstream[r].ca_file", &broken)), false).unwrap_err();
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
