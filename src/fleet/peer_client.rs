//! Reaching another replica's peer endpoint: one GET signed for that digest (`peer_auth`; the
//! fleet secret itself is never sent), the response head within `fleet.peer_timeout`, and each
//! chunk of the body too (a stalled or dead owner breaks the fill off). The owner's address
//! passes the egress policy for peers (`Egress::for_peers`): its URL before the request, and the
//! addresses a name resolves to at connect time. The bytes are verified by the fill like any
//! source's.

use super::peer_auth::PeerSigner;
use super::peer_path::PEER_PATH_PREFIX;
use crate::cache::blob::{IncomingBlob, PeerAnswer, PeerFuture, PeerSource, SourceError};
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
        let url = format!("{owner}{PEER_PATH_PREFIX}{digest}");
        let client = self.client.clone();
        let authorization = HeaderValue::from_str(&self.signer.authorization("GET", digest));
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
            let body = response.into_body();
            let frames = futures_util::stream::unfold(Some(body), move |body| {
                let observer = observer.clone();
                async move {
                    let mut body = body?;
                    loop {
                        match tokio::time::timeout(timeout, body.frame()).await {
                            Ok(Some(Ok(frame))) => match frame.into_data() {
                                Ok(data) => {
                                    observer.peer_bytes(data.len() as u64);
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
            Ok(PeerAnswer::Blob(IncomingBlob {
                size,
                body: StreamBody::new(frames).boxed_unsync(),
                from_parent: false,
            }))
        })
    }
}
