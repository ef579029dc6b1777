//! How warm's requests reach an archway: over HTTP(S) to a running one (`--server`, with its CA
//! and credentials when it has TLS and `[auth]`), or straight into an in-process `Proxy` (seeding
//! a data_dir with no server, and the admin API's jobs), past the listener and its `[auth]`.

use crate::config::Secret;
use crate::proxy::{ConnInfo, Proxy, WarmRequest, CACHE_HEADER};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A request's head, and each gap in a body.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ViaError {
    #[error("--server {0}: give http://host:port or https://host:port")]
    Server(String),
    #[error("--ca {path}: {message}")]
    Ca { path: String, message: String },
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Where warm's requests go.
pub enum Via {
    Remote {
        client: Box<HttpsClient>,
        base: String,
        authorization: Option<HeaderValue>,
    },
    Local(Arc<Proxy>),
}

/// One answer, read to its end.
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    /// What archway said of its cache (`hit`, `miss`, `coalesced`, …), when it said.
    pub cache: Option<String>,
    /// The body when it was kept (manifests and error bodies).
    pub body: Bytes,
    pub bytes: u64,
}

impl Via {
    /// A running archway at `server`; `ca` is trusted beside the system's roots; with
    /// `credentials`, every request carries them (Basic).
    pub fn remote(
        server: &str,
        ca: Option<&Path>,
        credentials: Option<(String, Secret)>,
    ) -> Result<Via, ViaError> {
        let base = server.trim_end_matches('/').to_owned();
        let uri: http::Uri = base
            .parse()
            .map_err(|_| ViaError::Server(server.to_owned()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(ViaError::Server(server.to_owned()));
        }
        let tls = crate::upstream::tls_config(ca.map(|p| ("--ca", p)), false).map_err(|e| {
            ViaError::Ca {
                path: ca.map(|p| p.display().to_string()).unwrap_or_default(),
                message: e.to_string(),
            }
        })?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(TIMEOUT));
        http.set_nodelay(true);
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(https);
        let authorization = credentials.map(|(user, password)| {
            use base64::Engine;
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", password.expose()));
            let mut v = HeaderValue::from_str(&format!("Basic {token}"))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            v.set_sensitive(true);
            v
        });
        Ok(Via::Remote {
            client: Box::new(client),
            base,
            authorization,
        })
    }

    /// `GET path` (`/v2/…?…`). The body is kept when `keep` (up to `max_kept` bytes, else an
    /// error); `on_bytes` sees each chunk's length as it arrives. A non-2xx body is kept for the
    /// error it names.
    pub async fn get(
        &self,
        path: &str,
        headers: HeaderMap,
        keep: bool,
        max_kept: usize,
        on_bytes: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Answer, String> {
        match self {
            Via::Remote {
                client,
                base,
                authorization,
            } => {
                let url = format!("{base}{path}");
                let mut req = Request::get(&url);
                if let Some(h) = req.headers_mut() {
                    *h = headers;
                    if let Some(a) = authorization {
                        h.insert(header::AUTHORIZATION, a.clone());
                    }
                }
                let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
                let resp = tokio::time::timeout(TIMEOUT, client.request(req))
                    .await
                    .map_err(|_| format!("GET {path}: no answer in {TIMEOUT:?}"))?
                    .map_err(|e| format!("GET {path}: {e}"))?;
                read(path, resp, keep, max_kept, on_bytes).await
            }
            Via::Local(proxy) => {
                let mut req = Request::get(path);
                if let Some(h) = req.headers_mut() {
                    *h = headers;
                    // HTTP/1.1 requires one; no upstream or route is chosen by this name.
                    h.insert(
                        header::HOST,
                        HeaderValue::from_static("archway-warm.invalid"),
                    );
                }
                let req = req
                    .extension(WarmRequest)
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| e.to_string())?;
                let conn = ConnInfo {
                    local: None,
                    peer: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
                };
                let resp = proxy.handle(req, conn).await;
                read(path, resp, keep, max_kept, on_bytes).await
            }
        }
    }
}

async fn read<B>(
    path: &str,
    resp: http::Response<B>,
    keep: bool,
    max_kept: usize,
    on_bytes: &(dyn Fn(u64) + Send + Sync),
) -> Result<Answer, String>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let status = resp.status();
    // Read before the first await: a borrow of the response held across it would need the
    // body to be Sync.
    let (content_type, cache) = {
        let text = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        (text("content-type").unwrap_or_default(), text(CACHE_HEADER))
    };
    let keep = keep || !status.is_success();
    let mut body = resp.into_body();
    let mut kept = Vec::new();
    let mut total: u64 = 0;
    loop {
        let frame = tokio::time::timeout(TIMEOUT, body.frame())
            .await
            .map_err(|_| format!("GET {path}: the body stalled"))?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| format!("GET {path}: the body broke off: {e}"))?;
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            if status.is_success() {
                on_bytes(data.len() as u64);
            }
            if keep {
                if kept.len() + data.len() > max_kept {
                    return Err(format!("GET {path}: a body over {max_kept} bytes"));
                }
                kept.extend_from_slice(&data);
            }
        }
    }
    Ok(Answer {
        status,
        content_type,
        cache,
        body: Bytes::from(kept),
        bytes: total,
    })
}
