//! Reaching another replica's peer endpoint: one GET signed for that digest (`peer_auth`; the
//! fleet secret itself is never sent), the response head within `fleet.peer_timeout`, and each
//! chunk of the body too (a stalled or dead owner breaks the fill off). The owner's address
//! passes the egress policy for peers (`Egress::for_peers`): its URL before the request, and the
//! addresses a name resolves to at connect time. The bytes are verified by the fill like any
//! source's.

use super::peer_auth::PeerSigner;
use super::peer_path::PEER_PATH_PREFIX;
use crate::body::UpstreamBody;
use crate::cache::blob::{
    IncomingBlob, PeerAnswer, PeerFuture, PeerRangeFuture, PeerSource, SourceError,
};
use crate::cache::bucket::StorageObserver;
use crate::digest::Digest;
use crate::upstream::{Egress, GuardedResolver};
use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::time::Duration;

/// Why a peer gave no blob.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {owner}: {message}")]
    Failed { owner: String, message: String },
    #[error("peer {owner}: no answer within {after:?}")]
    Timeout { owner: String, after: Duration },
}

/// The peer endpoints of the other replicas, over HTTP(S).
pub struct HttpPeers {
    client: Client<HttpsConnector<HttpConnector<GuardedResolver>>, Empty<Bytes>>,
    signer: Arc<PeerSigner>,
    egress: Arc<Egress>,
    timeout: Duration,
    observer: Arc<dyn StorageObserver>,
}

impl HttpPeers {
    pub fn new(
        signer: PeerSigner,
        egress: Arc<Egress>,
        timeout: Duration,
        observer: Arc<dyn StorageObserver>,
    ) -> Result<Self, crate::upstream::UpstreamInitError> {
        let tls = crate::upstream::tls_config(None, false)?;
        let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(egress.clone()));
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(HttpPeers {
            client,
            signer: Arc::new(signer),
            egress,
            timeout,
            observer,
        })
    }
}

impl std::fmt::Debug for HttpPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPeers")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpPeers {
    /// The peer endpoint's URL for `digest` at `owner`, and a fresh signature for a GET of it.
    fn signed_get(
        &self,
        owner: &str,
        digest: &Digest,
    ) -> (
        String,
        Result<HeaderValue, http::header::InvalidHeaderValue>,
    ) {
        (
            format!("{owner}{PEER_PATH_PREFIX}{digest}"),
            HeaderValue::from_str(&self.signer.authorization("GET", digest)),
        )
    }
}

impl PeerSource for HttpPeers {
    fn refuses(&self, owner: &str) -> Option<String> {
        match owner.parse::<http::Uri>() {
            // `localhost` counts as the loopback addresses with the URL's port: archway's own
            // listener by another name. Other names are checked when resolved (connect time).
            Ok(uri) => self.egress.check_own_url(&uri).err(),
            Err(_) => Some("not a URL".into()),
        }
    }

    fn fetch(&self, owner: &str, digest: &Digest) -> PeerFuture {
        let owner = owner.to_owned();
        let (url, authorization) = self.signed_get(&owner, digest);
        let client = self.client.clone();
        let timeout = self.timeout;
        let observer = self.observer.clone();
        Box::pin(async move {
            let failed = |message: String| {
                SourceError::new(PeerError::Failed {
                    owner: owner.clone(),
                    message,
                })
            };
            let authorization = authorization.map_err(|e| failed(e.to_string()))?;
            let req = Request::get(url.as_str())
                .header(header::AUTHORIZATION, authorization)
                .body(Empty::new())
                .map_err(|e| failed(e.to_string()))?;
            let response = tokio::time::timeout(timeout, client.request(req))
                .await
                .map_err(|_| {
                    SourceError::new(PeerError::Timeout {
                        owner: owner.clone(),
                        after: timeout,
                    })
                })?
                .map_err(|e| failed(e.to_string()))?;
            match response.status() {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => return Ok(PeerAnswer::NotThere),
                other => return Err(failed(format!("answered {other}"))),
            }
            let size = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let counted = move |n: u64| observer.peer_bytes(n);
            let body = timed_body(response.into_body(), timeout, counted);
            Ok(PeerAnswer::Blob(IncomingBlob {
                size,
                body,
                from_parent: false,
                on_settled: None,
            }))
        })
    }

    /// A `Range` GET of one range, signed like any peer request (a fresh signature each; the
    /// `Range` is not signed: what comes back is checked instead). Only a `206` with exactly
    /// `Content-Range: bytes start-end/size` and its `Content-Length` is taken; the owner's
    /// `416` (not there yet) and anything else is `None`. The bytes are counted as the peer's
    /// (`peer_bytes`) and as a cold range's (`cold_range_bytes`, `peer`) as they are read.
    fn fetch_range(
        &self,
        owner: &str,
        digest: &Digest,
        (start, end): (u64, u64),
        size: u64,
    ) -> PeerRangeFuture {
        let owner = owner.to_owned();
        let (url, authorization) = self.signed_get(&owner, digest);
        let client = self.client.clone();
        let timeout = self.timeout;
        let observer = self.observer.clone();
        let digest = digest.clone();
        Box::pin(async move {
            let req = Request::get(url.as_str())
                .header(header::AUTHORIZATION, authorization.ok()?)
                .header(header::RANGE, format!("bytes={start}-{end}"))
                .body(Empty::new())
                .ok()?;
            let response = match tokio::time::timeout(timeout, client.request(req)).await {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => {
                    tracing::debug!(%digest, %owner, error = %e, "fill owner unreachable for a cold range");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(%digest, %owner, ?timeout, "fill owner did not answer a cold range");
                    return None;
                }
            };
            let headers = response.headers();
            let content_range = headers
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok());
            let length = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let exact = response.status() == StatusCode::PARTIAL_CONTENT
                && content_range == Some(format!("bytes {start}-{end}/{size}").as_str())
                && length == Some(end - start + 1);
            if !exact {
                tracing::debug!(%digest, %owner, start, end, status = %response.status(), ?content_range, "fill owner has not got a cold range (yet)");
                return None;
            }
            let counted = move |n: u64| {
                observer.peer_bytes(n);
                observer.cold_range_bytes("peer", n);
            };
            Some(timed_body(response.into_body(), timeout, counted))
        })
    }
}

/// A peer's body, each chunk within `timeout` (a stalled or dead owner breaks it off), each
/// data chunk's length handed to `counted`.
fn timed_body(
    body: hyper::body::Incoming,
    timeout: Duration,
    counted: impl Fn(u64) + Clone + Send + Sync + 'static,
) -> UpstreamBody {
    let frames = futures_util::stream::unfold(Some(body), move |body| {
        let counted = counted.clone();
        async move {
            let mut body = body?;
            loop {
                match tokio::time::timeout(timeout, body.frame()).await {
                    Ok(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            counted(data.len() as u64);
                            return Some((Ok(Frame::data(data)), Some(body)));
                        }
                        // Trailers carry nothing.
                        Err(_) => continue,
                    },
                    Ok(Some(Err(e))) => {
                        let e = std::io::Error::other(format!("peer body failed: {e}"));
                        return Some((Err(e), None));
                    }
                    Ok(None) => return None,
                    Err(_) => {
                        let e = std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("peer body stalled for {timeout:?}"),
                        );
                        return Some((Err(e), None));
                    }
                }
            }
        }
    })
    .boxed();
    StreamBody::new(frames).boxed_unsync()
}
