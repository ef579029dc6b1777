//! `archway warm IMAGE…`: fills an archway's cache by pulling the images through its registry
//! API, as a client would (so every fill lease, bucket copy and access record applies): each
//! manifest, each chosen platform's child, its config and its layers. Bodies are read to the end
//! and dropped. An index gives every runnable platform, or those asked for; attestation
//! manifests only when asked; a single-platform image is warmed as it is. With a client to warm
//! for (`--for`), the tag is asked as that client asks, so the answer it will get (a platform
//! child, a schema2 conversion, tars for zstd layers) is made and cached now.
//!
//! Where the requests go is `via` (a running archway, or an in-process one on a data_dir);
//! what the person sees is `report`; the admin API's jobs are `jobs`.

pub mod cli;
pub mod for_client;
pub mod jobs;
pub mod report;
pub mod via;

use crate::digest::Digest;
use crate::image_index::{ImageIndex, SkipReason, MAX_INDEX_DEPTH};
use crate::image_ref::ImageRef;
use crate::media_type;
use crate::platform::{Matcher, Platform, WindowsMatch};
use futures_util::StreamExt;
use http::header::{HeaderMap, HeaderValue, ACCEPT, USER_AGENT};
use http::StatusCode;
use std::sync::Arc;
use tokio::sync::Semaphore;

pub use for_client::ClientHints;
pub use via::{Via, ViaError};

/// Every manifest type archway serves, as a client that takes them all asks.
const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// The largest manifest read.
const MAX_MANIFEST: usize = 4 << 20;
/// The largest error body kept for a message.
const MAX_ERROR_BODY: usize = 64 << 10;
const WARM_AGENT: &str = concat!("archway-warm/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone, Default)]
pub struct WarmOptions {
    /// Empty: every runnable platform of an index (or, with `client`, the client's own).
    pub platforms: Vec<Platform>,
    pub with_attestations: bool,
    /// Blobs fetched at once (and images worked on at once).
    pub jobs: usize,
    /// Ask as this client asks.
    pub client: Option<ClientHints>,
}

/// What warming one image did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Outcome {
    pub image: String,
    /// The platforms warmed (`-` for a manifest that names none).
    pub platforms: Vec<String>,
    pub manifests: usize,
    /// Distinct blobs (configs and layers) read.
    pub blobs: usize,
    pub bytes: u64,
    /// Of those, already in the cache (or the bucket) before warm asked.
    pub cached: usize,
    pub cached_bytes: u64,
    /// Of those, fetched (from upstream, a peer or the bucket) because warm asked.
    pub fetched: usize,
    pub fetched_bytes: u64,
    pub error: Option<String>,
}

/// What warm reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// The image's manifests are read: its blobs and their total size are known.
    Planned {
        image: &'a str,
        blobs: usize,
        bytes: u64,
    },
    /// Bytes of one of its blobs arrived.
    Bytes { image: &'a str, n: u64 },
    /// The image is done (or failed).
    Done(&'a Outcome),
}

pub type Events = Arc<dyn Fn(Event<'_>) + Send + Sync>;

/// Warms `images` (as people type them), `opts.jobs` at a time, reporting to `events`; the
/// outcomes come back in the order of `images`.
pub async fn warm(
    via: Arc<Via>,
    opts: &WarmOptions,
    images: &[String],
    events: Events,
) -> Vec<Outcome> {
    let jobs = opts.jobs.max(1);
    let permits = Arc::new(Semaphore::new(jobs));
    // Futures made by an iterator, not `Stream::map`: that one's closure would have to be
    // general over the borrow's lifetime, which a spawned task cannot prove.
    let work = images.iter().cloned().map(|image| {
        let (via, permits, events) = (via.clone(), permits.clone(), events.clone());
        async move {
            let o = warm_one(&via, opts, &permits, &events, &image).await;
            events(Event::Done(&o));
            o
        }
    });
    futures_util::stream::iter(work)
        .buffered(jobs)
        .collect()
        .await
}

struct Repo {
    /// `/v2/<repository>/`
    prefix: String,
    /// `?ns=<registry>` or nothing.
    query: String,
}

impl Repo {
    fn path(&self, rest: &str) -> String {
        format!("{}{rest}{}", self.prefix, self.query)
    }
}

fn headers(opts: &WarmOptions, manifest: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    let agent = opts
        .client
        .as_ref()
        .and_then(|c| HeaderValue::from_str(&c.user_agent).ok())
        .unwrap_or(HeaderValue::from_static(WARM_AGENT));
    h.insert(USER_AGENT, agent);
    if manifest {
        match &opts.client {
            Some(c) => {
                for a in &c.accept {
                    if let Ok(v) = HeaderValue::from_str(a) {
                        h.append(ACCEPT, v);
                    }
                }
            }
            None => {
                h.insert(ACCEPT, HeaderValue::from_static(ACCEPT_ALL));
            }
        }
    }
    h
}

/// The platforms an index's children are chosen by: those asked for, else the client's own.
fn wanted_platforms(opts: &WarmOptions) -> Vec<Platform> {
    if !opts.platforms.is_empty() {
        return opts.platforms.clone();
    }
    opts.client
        .as_ref()
        .and_then(|c| c.platform.clone())
        .into_iter()
        .collect()
}

fn error_text(a: &via::Answer) -> String {
    let text = String::from_utf8_lossy(&a.body);
    let text = text.trim();
    // Enough to name the registry error; never a whole page.
    let text: String = text.chars().take(300).collect();
    format!("{} {text}", a.status)
}

async fn warm_one(
    via: &Via,
    opts: &WarmOptions,
    permits: &Arc<Semaphore>,
    events: &Events,
    image: &str,
) -> Outcome {
    let mut o = Outcome {
        image: image.to_owned(),
        ..Default::default()
    };
    if let Err(e) = plan_and_fetch(via, opts, permits, events, &mut o).await {
        o.error = Some(e);
    }
    o
}

async fn plan_and_fetch(
    via: &Via,
    opts: &WarmOptions,
    permits: &Arc<Semaphore>,
    events: &Events,
    o: &mut Outcome,
) -> Result<(), String> {
    let parsed = ImageRef::parse(&o.image).map_err(|e| e.to_string())?;
    let repo = Repo {
        prefix: format!("/v2/{}/", parsed.repository),
        query: parsed
            .registry
            .as_ref()
            .map(|r| format!("?ns={r}"))
            .unwrap_or_default(),
    };
    let wanted = wanted_platforms(opts);
    // Manifests to read: (reference, the platform it was chosen for, depth).
    let mut todo = vec![(parsed.reference.to_string(), None::<String>, 0usize)];
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    let nothing = |_: u64| {};
    while let Some((reference, platform, depth)) = todo.pop() {
        let path = repo.path(&format!("manifests/{reference}"));
        let a = via
            .get(&path, headers(opts, true), true, MAX_MANIFEST, &nothing)
            .await?;
        if a.status != StatusCode::OK {
            return Err(format!("{reference}: {}", error_text(&a)));
        }
        o.manifests += 1;
        let mt = crate::manifest::media_type_of(Some(&a.content_type), &a.body);
        if media_type::is_index(&mt) {
            if depth >= MAX_INDEX_DEPTH {
                return Err(format!(
                    "{reference}: indexes nest deeper than {MAX_INDEX_DEPTH}"
                ));
            }
            let index = ImageIndex::parse(&a.body).map_err(|e| format!("{reference}: {e}"))?;
            for entry in &index.entries {
                let d = &entry.descriptor;
                let attestation = match entry.skip_reason() {
                    None => false,
                    Some(SkipReason::Attestation) if opts.with_attestations => true,
                    Some(_) => continue,
                };
                let chosen = attestation
                    || d.is_index()
                    || wanted.is_empty()
                    || d.platform.as_ref().is_some_and(|p| {
                        wanted
                            .iter()
                            .any(|w| Matcher::strict(w, WindowsMatch::Process).matches(p))
                    });
                if chosen {
                    let label = d.platform.as_ref().map(|p| p.to_string());
                    todo.push((d.digest.to_string(), label, depth + 1));
                }
            }
        } else {
            let named = crate::manifest::named_blobs(&a.body)
                .map_err(|e| format!("{reference}: not a manifest: {e}"))?;
            blobs.extend(named);
            o.platforms.push(platform.unwrap_or_else(|| "-".into()));
        }
    }
    if o.platforms.is_empty() {
        return Err("no platform of the index matches --platform".into());
    }
    blobs.sort_by_key(|b| b.0.to_string());
    blobs.dedup_by(|a, b| a.0 == b.0);
    events(Event::Planned {
        image: &o.image,
        blobs: blobs.len(),
        bytes: blobs.iter().map(|b| b.1).sum(),
    });
    let fetches = blobs.into_iter().map(|(digest, size)| {
        let path = repo.path(&format!("blobs/{digest}"));
        let permits = permits.clone();
        let image = o.image.clone();
        async move {
            let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
            let on_bytes = |n: u64| events(Event::Bytes { image: &image, n });
            let a = via
                .get(
                    &path,
                    headers(opts, false),
                    false,
                    MAX_ERROR_BODY,
                    &on_bytes,
                )
                .await?;
            match a.status {
                StatusCode::OK => Ok((a.cache.as_deref() == Some("hit"), a.bytes)),
                // storage.redirect: the blob is in the bucket; the client would read it there.
                StatusCode::TEMPORARY_REDIRECT => Ok((true, size)),
                _ => Err(format!("blobs/{digest}: {}", error_text(&a))),
            }
        }
    });
    let mut fetches = futures_util::stream::iter(fetches).buffer_unordered(opts.jobs.max(1));
    let mut first_error = None;
    while let Some(done) = fetches.next().await {
        match done {
            Ok((hit, n)) => {
                o.blobs += 1;
                o.bytes += n;
                if hit {
                    o.cached += 1;
                    o.cached_bytes += n;
                } else {
                    o.fetched += 1;
                    o.fetched_bytes += n;
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            Some(e) => write!(f, "warm: {}: FAILED: {e}", self.image),
            None => write!(
                f,
                "warm: {}: {} ({} manifests, {} blobs, {} bytes; {} cached, {} fetched)",
                self.image,
                self.platforms.join(", "),
                self.manifests,
                self.blobs,
                self.bytes,
                self.cached,
                self.fetched
            ),
        }
    }
}
