//! The parent tier: a node archway reaches every upstream through parent archways (a cluster).
//!
//! A request goes to the parents in rendezvous order (`parent_choice`), with the same path and
//! `?ns=<upstream name>`, so the parent picks its own configured upstream by name and never a
//! host the node names. The request is what `registry` forms for upstream: the full Accept list,
//! archway's own User-Agent, no client header. A parent that cannot be reached or does not answer
//! in time is skipped for `parent_down_for`, so requests stop paying its timeout; a 5xx passes
//! the request on to the next parent without marking the parent down (it is usually upstream's
//! failure seen through the parent, and every parent would be shut off during an upstream
//! outage). Each parent is tried at most once per request. Nothing a parent sends is trusted:
//! `registry` and the blob store verify digests exactly as for an upstream.

use super::error::{UpstreamError, UpstreamErrorKind};
use super::{Upstream, UpstreamInitError};
use crate::body::UpstreamBody;
use crate::config::{ParentConfig, ParentFallback, UpstreamConfig};
use crate::metrics::{Metrics, UpstreamOutcome};
use crate::parent_choice;
use crate::reference::RepositoryName;
use http::{HeaderMap, Method, Response};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// A response extension: a parent answered this request, not upstream (nor the `direct`
/// fallback).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FromParent;

/// One configured parent: its client (with the parent's credentials) and when it is up again.
struct Parent {
    /// `scheme://host[:port]` as configured: the log field and the metrics label.
    url: String,
    client: Upstream,
    down_until: Mutex<Option<Instant>>,
    /// Why this parent is never asked: it is this archway itself (a loop).
    refused: OnceLock<String>,
}

impl Parent {
    fn is_down(&self, now: Instant) -> bool {
        self.down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| now < until)
    }

    fn mark_down(&self, down_for: Duration) {
        if down_for.is_zero() {
            return;
        }
        // A down time past the clock's range is cut to a year, which is as good as forever.
        let now = Instant::now();
        let until = now
            .checked_add(down_for)
            .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
            .unwrap_or(now);
        *self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(until);
    }
}

/// The parents of this node, shared by all its upstreams (a parent down is down for all).
pub struct Parents {
    members: Vec<Parent>,
    /// The members' URLs in configured order, what the rendezvous hash weighs.
    urls: Vec<String>,
    down_for: Duration,
    fallback: ParentFallback,
    metrics: Option<Arc<Metrics>>,
}

impl fmt::Debug for Parents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parents")
            .field("urls", &self.urls)
            .field("down_for", &self.down_for)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

/// A parent's client could not be set up (its CA file, TLS).
#[derive(Debug, thiserror::Error)]
#[error("parent `{url}`: {source}")]
pub struct ParentInitError {
    pub url: String,
    pub source: UpstreamInitError,
}

/// How one attempt at one parent ended, when it did not answer.
struct Failure {
    message: String,
    timeout: bool,
}

impl Parents {
    /// `None` when `parent` lists no parent: upstreams are then reached directly.
    pub fn new(config: &ParentConfig) -> Result<Option<Parents>, ParentInitError> {
        if config.urls.is_empty() {
            return Ok(None);
        }
        let mut members = Vec::with_capacity(config.urls.len());
        for uri in &config.urls {
            let url = format!(
                "{}://{}",
                uri.scheme_str().unwrap_or("http"),
                uri.authority().map(|a| a.as_str()).unwrap_or_default()
            );
            let client_config = UpstreamConfig {
                name: url.clone(),
                url: uri.clone(),
                aliases: Vec::new(),
                default: false,
                credentials: config.credentials.clone(),
                ca_file: config.ca_file.clone(),
                insecure_skip_verify: false,
                tag_ttl: None,
                connect_timeout: config.connect_timeout,
                read_timeout: config.read_timeout,
                // The node already named the repository as its upstream wants it.
                library_prefix: false,
                redirect_hosts: Vec::new(),
                // A parent serves blobs; the node fetches foreign layers itself.
                foreign_layer_hosts: Vec::new(),
                // Who may be served what is the node's upstream's setting, not the parent's.
                visibility: None,
                clients: None,
            };
            let client = Upstream::new(client_config).map_err(|source| ParentInitError {
                url: url.clone(),
                source,
            })?;
            let client = match &config.token {
                Some(token) => client.with_static_token(token),
                None => client,
            };
            members.push(Parent {
                url,
                client,
                down_until: Mutex::new(None),
                refused: OnceLock::new(),
            });
        }
        Ok(Some(Parents {
            urls: members.iter().map(|m| m.url.clone()).collect(),
            members,
            down_for: config.down_for,
            fallback: config.fallback,
            metrics: None,
        }))
    }

    /// Reports every parent request and failover to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        for url in &self.urls {
            metrics.register_parent(url);
        }
        self.metrics = Some(metrics);
        self
    }

    /// Marks every request to a parent with `via` (see `Upstream::with_via`).
    pub fn with_via(mut self, via: &crate::via::Via) -> Self {
        self.members = self
            .members
            .into_iter()
            .map(|mut m| {
                m.client = m.client.with_via(via.clone());
                m
            })
            .collect();
        self
    }

    /// archway's own listeners: a parent's redirect may not lead to them (set once).
    pub fn set_own_listeners(
        &self,
        listeners: Vec<std::net::SocketAddr>,
        local: Vec<std::net::IpAddr>,
    ) {
        for m in &self.members {
            m.client.set_own_listeners(listeners.clone(), local.clone());
            // A request sent to ourselves would come back as a parent request, again and again.
            if let Some(why) = m.client.refused_destination() {
                if m.refused.set(why.clone()).is_ok() {
                    tracing::error!(parent = %m.url, reason = %why, "parent refused: it is this archway; it is never asked");
                }
            }
        }
    }

    /// `node`'s request (`repo` as `node` names it upstream) through the parents, then the
    /// fallback. Any answer below 500 is the answer, whatever its status.
    pub(super) async fn send(
        &self,
        node: &Upstream,
        method: Method,
        repo: &RepositoryName,
        suffix: &str,
        headers: HeaderMap,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let upstream = node.config().name.as_str();
        let key = parent_choice::key(upstream, repo.as_str(), suffix);
        let forwarded = parent_choice::with_namespace(suffix, upstream);
        let mut failures: Vec<Failure> = Vec::new();
        let now = Instant::now();
        for i in parent_choice::order(&self.urls, &key) {
            let Some(parent) = self.members.get(i) else {
                continue;
            };
            if let Some(why) = parent.refused.get() {
                failures.push(Failure {
                    message: format!("{} refused: {why}", parent.url),
                    timeout: false,
                });
                continue;
            }
            if parent.is_down(now) {
                failures.push(Failure {
                    message: format!("{} is marked down after a failure", parent.url),
                    timeout: false,
                });
                continue;
            }
            let result = parent
                .client
                .send_direct(method.clone(), repo, &forwarded, headers.clone())
                .await;
            let failure = match result {
                Ok(response) if response.status().is_server_error() => {
                    let status = response.status();
                    self.count(&parent.url, UpstreamOutcome::Status(status.as_u16()));
                    Failure {
                        message: format!("{} answered {status}", parent.url),
                        timeout: status == http::StatusCode::GATEWAY_TIMEOUT,
                    }
                }
                Ok(mut response) => {
                    unscope_link(&mut response, upstream);
                    // Only a parent's own [auth] challenges (an upstream's 401 comes through
                    // without one): the client sees upstream's words for it, the operator needs
                    // to know it was the parent that refused this node.
                    if response.status() == http::StatusCode::UNAUTHORIZED
                        && response
                            .headers()
                            .contains_key(http::header::WWW_AUTHENTICATE)
                    {
                        tracing::warn!(
                            parent = %parent.url,
                            upstream,
                            credentials = parent.client.config().credentials.is_some(),
                            "the parent's [auth] refused this node; check parent_username and parent_password (or parent_token)"
                        );
                    }
                    self.count(
                        &parent.url,
                        UpstreamOutcome::Status(response.status().as_u16()),
                    );
                    tracing::debug!(
                        parent = %parent.url,
                        upstream,
                        status = response.status().as_u16(),
                        "answered by parent"
                    );
                    // Marked for the blob store, which labels a fill by where it came from.
                    response.extensions_mut().insert(FromParent);
                    return Ok(response);
                }
                Err(e) if is_outage(&e) => {
                    let timeout = e.kind == UpstreamErrorKind::Timeout;
                    let outcome = if timeout {
                        UpstreamOutcome::Timeout
                    } else {
                        UpstreamOutcome::Error
                    };
                    self.count(&parent.url, outcome);
                    parent.mark_down(self.down_for);
                    Failure {
                        // The member is an upstream named by its URL: `<url><detail>`.
                        message: match &e.about {
                            Some(about) => format!("{}{}", about.upstream, about.detail),
                            None => e.message.clone(),
                        },
                        timeout,
                    }
                }
                Err(e) => {
                    // The parent answered (its token endpoint refused, say): an answer.
                    self.count(&parent.url, UpstreamOutcome::Error);
                    return Err(e);
                }
            };
            tracing::warn!(
                parent = %parent.url,
                upstream,
                error = %failure.message,
                "parent failed; trying the next"
            );
            if let Some(m) = &self.metrics {
                m.parent_failover(&parent.url);
            }
            failures.push(failure);
        }
        let summary = failures
            .iter()
            .map(|f| f.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        match self.fallback {
            ParentFallback::Direct => {
                tracing::warn!(upstream, parents = %summary, "no parent answered; going to upstream directly");
                node.send_direct(method, repo, suffix, headers).await
            }
            ParentFallback::None => {
                let kind = if !failures.is_empty() && failures.iter().all(|f| f.timeout) {
                    UpstreamErrorKind::Timeout
                } else {
                    UpstreamErrorKind::Unavailable
                };
                Err(UpstreamError::new(
                    kind,
                    format!("upstream {upstream}: no parent answered ({summary})"),
                ))
            }
        }
    }

    fn count(&self, parent: &str, outcome: UpstreamOutcome) {
        if let Some(m) = &self.metrics {
            m.parent_request(parent, outcome);
        }
    }
}

/// A parent's pagination link carries the `ns=` the node sent; the node's listings expect links
/// in upstream's namespace.
fn unscope_link<B>(response: &mut Response<B>, upstream: &str) {
    let link = response
        .headers()
        .get(http::header::LINK)
        .and_then(|v| v.to_str().ok())
        .map(|l| parent_choice::link_without_namespace(l, upstream));
    if let Some(value) = link.and_then(|l| http::HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(http::header::LINK, value);
    }
}

/// The parent could not be reached, broke off or did not answer in time.
fn is_outage(e: &UpstreamError) -> bool {
    matches!(
        e.kind,
        UpstreamErrorKind::Unavailable | UpstreamErrorKind::Timeout
    )
}
