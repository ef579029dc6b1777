//! `archway warm --server URL IMAGE…`: fills a running archway's cache by pulling the images
//! through its registry API, as a client would (so every fill lease, bucket copy and access
//! record applies): each manifest, each chosen platform's child, its config and its layers.
//! Bodies are read to the end and dropped. An index gives every runnable platform, or those of
//! `--platform`; attestation manifests only with `--with-attestations`; a single-platform image
//! is warmed as it is. Blobs are fetched `jobs` at a time.
//!
//! This first step fills through a server over plain HTTP; the rest of the issue (TLS and
//! credentials, a data_dir without a server, legacy answers, bars, pins) is built on it.

use crate::digest::Digest;
use crate::image_index::{ImageIndex, SkipReason, MAX_INDEX_DEPTH};
use crate::image_ref::ImageRef;
use crate::media_type;
use crate::platform::{Matcher, Platform, WindowsMatch};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Every manifest type archway serves, as a client that takes them all asks.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// The largest manifest read.
const MAX_MANIFEST: usize = 4 << 20;
/// A request's head, and each gap in a body.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct WarmOptions {
    /// `http://host:port` of the archway to fill.
    pub server: String,
    /// Empty: every runnable platform of an index.
    pub platforms: Vec<Platform>,
    pub with_attestations: bool,
    /// Blobs fetched at once.
    pub jobs: usize,
}

/// What warming one image did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    pub image: String,
    /// The platforms warmed (`-` for an image that names none).
    pub platforms: Vec<String>,
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("--server {0}: only http://host:port is supported so far")]
    Server(String),
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

struct Puller {
    client: HttpClient,
    base: String,
    query: String,
    repo: String,
}

impl Puller {
    /// GET of `path` under the repository: the content type, the body when `accept` is given
    /// (a manifest), and the bytes read.
    async fn get(&self, path: &str, accept: Option<&str>) -> Result<(String, Bytes, u64), String> {
        let url = format!("{}/v2/{}/{path}{}", self.base, self.repo, self.query);
        let mut req = Request::get(&url).header(
            "user-agent",
            concat!("archway-warm/", env!("CARGO_PKG_VERSION")),
        );
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| format!("GET {url}: no answer in {TIMEOUT:?}"))?
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut body = resp.into_body();
        let mut kept = Vec::new();
        let keep = accept.is_some();
        let mut total: u64 = 0;
        loop {
            let frame = tokio::time::timeout(TIMEOUT, body.frame())
                .await
                .map_err(|_| format!("GET {url}: the body stalled"))?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| format!("GET {url}: the body broke off: {e}"))?;
            if let Ok(data) = frame.into_data() {
                total += data.len() as u64;
                if keep {
                    if kept.len() + data.len() > MAX_MANIFEST {
                        return Err(format!("GET {url}: a manifest over {MAX_MANIFEST} bytes"));
                    }
                    kept.extend_from_slice(&data);
                }
            }
        }
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&kept);
            return Err(format!("GET {url}: {status} {}", text.trim()));
        }
        Ok((ct, Bytes::from(kept), total))
    }
}

/// Warms `images` (as people type them), calling `progress` with a line as each is done.
pub async fn warm(
    opts: &WarmOptions,
    images: &[String],
    mut progress: impl FnMut(&Outcome),
) -> Result<Vec<Outcome>, WarmError> {
    let base = opts.server.trim_end_matches('/').to_owned();
    if !base.starts_with("http://") {
        return Err(WarmError::Server(opts.server.clone()));
    }
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let permits = Arc::new(Semaphore::new(opts.jobs.max(1)));
    let mut out = Vec::new();
    for image in images {
        let o = warm_one(opts, &client, &base, &permits, image).await;
        progress(&o);
        out.push(o);
    }
    Ok(out)
}

async fn warm_one(
    opts: &WarmOptions,
    client: &HttpClient,
    base: &str,
    permits: &Arc<Semaphore>,
    image: &str,
) -> Outcome {
    let mut o = Outcome {
        image: image.to_owned(),
        ..Default::default()
    };
    let parsed = match ImageRef::parse(image) {
        Ok(p) => p,
        Err(e) => {
            o.error = Some(e.to_string());
            return o;
        }
    };
    let puller = Puller {
        client: client.clone(),
        base: base.to_owned(),
        query: parsed
            .registry
            .as_ref()
            .map(|r| format!("?ns={r}"))
            .unwrap_or_default(),
        repo: parsed.repository.to_string(),
    };
    // Manifests to read: (reference, the platform it was chosen for).
    let mut todo = vec![(parsed.reference.to_string(), None::<String>, 0usize)];
    let mut blobs: Vec<Digest> = Vec::new();
    while let Some((reference, platform, depth)) = todo.pop() {
        let (ct, bytes, _) = match puller
            .get(&format!("manifests/{reference}"), Some(ACCEPT))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                o.error = Some(e);
                return o;
            }
        };
        o.manifests += 1;
        let mt = crate::manifest::media_type_of(Some(&ct), &bytes);
        if media_type::is_index(&mt) {
            if depth >= MAX_INDEX_DEPTH {
                o.error = Some(format!(
                    "{reference}: indexes nest deeper than {MAX_INDEX_DEPTH}"
                ));
                return o;
            }
            let index = match ImageIndex::parse(&bytes) {
                Ok(i) => i,
                Err(e) => {
                    o.error = Some(format!("{reference}: {e}"));
                    return o;
                }
            };
            for entry in &index.entries {
                let d = &entry.descriptor;
                match entry.skip_reason() {
                    None => {}
                    Some(SkipReason::Attestation) if opts.with_attestations => {}
                    Some(_) => continue,
                }
                let attestation = entry.skip_reason().is_some();
                let wanted = attestation
                    || d.is_index()
                    || opts.platforms.is_empty()
                    || d.platform.as_ref().is_some_and(|p| {
                        opts.platforms
                            .iter()
                            .any(|w| Matcher::strict(w, WindowsMatch::Process).matches(p))
                    });
                if wanted {
                    let label = d.platform.as_ref().map(|p| p.to_string());
                    todo.push((d.digest.to_string(), label, depth + 1));
                }
            }
        } else {
            let v: serde_json::Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    o.error = Some(format!("{reference}: not a manifest: {e}"));
                    return o;
                }
            };
            let named = v
                .get("config")
                .into_iter()
                .chain(
                    v.get("layers")
                        .and_then(|l| l.as_array())
                        .into_iter()
                        .flatten(),
                )
                .filter_map(|d| d.get("digest")?.as_str()?.parse::<Digest>().ok());
            blobs.extend(named);
            o.platforms.push(platform.unwrap_or_else(|| "-".into()));
        }
    }
    if o.platforms.is_empty() {
        o.error = Some("no platform of the index matches --platform".into());
        return o;
    }
    blobs.sort_by_key(|d| d.to_string());
    blobs.dedup();
    let puller = Arc::new(puller);
    let mut tasks = tokio::task::JoinSet::new();
    for digest in blobs {
        let puller = puller.clone();
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
            let (_, _, n) = puller.get(&format!("blobs/{digest}"), None).await?;
            Ok::<u64, String>(n)
        });
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(n)) => {
                o.blobs += 1;
                o.bytes += n;
            }
            Ok(Err(e)) => {
                o.error.get_or_insert(e);
            }
            Err(e) => {
                o.error.get_or_insert(e.to_string());
            }
        }
    }
    o
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            Some(e) => write!(f, "warm: {}: FAILED: {e}", self.image),
            None => write!(
                f,
                "warm: {}: {} ({} manifests, {} blobs, {} bytes)",
                self.image,
                self.platforms.join(", "),
                self.manifests,
                self.blobs,
                self.bytes
            ),
        }
    }
}
