//! Blob requests: served from the blob store (a file, memory, or a download in flight), or —
//! on a miss — the one upstream download of that digest is started and streamed while it fills.
//! A HEAD never starts a download. With `storage.redirect`, a GET of a blob in the bucket is
//! answered `307` to a presigned URL of it (the store decides; a HEAD, and a GET for several
//! ranges, are always answered here). A Range of a download that has not got there yet is
//! `cold_range`'s.

mod cold_range;

use super::access::{AccessGate, Object};
use super::client::ClientRequest;
use super::converter::Converter;
use super::response::{blob_headers, blob_response, insert_digest_headers, not_modified};
use super::uncached;
use crate::access_log::RequestNotes;
use crate::body::{self, ResponseBody};
use crate::cache::blob::{
    Blob, BlobOrigin, BlobSource, BlobStore, FillError, IncomingBlob, SourceError,
};
use crate::config::ColdRanges;
use crate::digest::Digest;
use crate::error::ProxyError;
use crate::foreign::ForeignMemo;
use crate::outcome::Outcome;
use crate::reference::RepositoryName;
use crate::upstream::{Upstream, UpstreamError, UpstreamErrorKind};
use cold_range::{asked_for, relay_parts, relayed_response, Cold};
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

type FetchFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<IncomingBlob, SourceError>> + Send>>;

pub(crate) struct Blobs {
    store: Arc<BlobStore>,
    /// Converted layers' zstd sources: a converted layer no longer cached is made again.
    converter: Arc<Converter>,
    /// The foreign layers of the manifests served: fetched from their urls when upstream
    /// cannot serve them.
    foreign: Arc<ForeignMemo>,
    /// `limits.max_ranges`: range-specs in one `Range` answered as such.
    max_ranges: usize,
    /// `cache.cold_ranges`: Ranges (one or several) of a download that has not reached them, relayed.
    cold_ranges: ColdRanges,
    /// `cache.cold_ranges_relay_max`: bytes of one request's several ranges relayed at most.
    relay_max: u64,
}

impl Blobs {
    pub(crate) fn new(
        store: Arc<BlobStore>,
        foreign: Arc<ForeignMemo>,
        max_ranges: usize,
        converter: Arc<Converter>,
        cold_ranges: ColdRanges,
        relay_max: u64,
    ) -> Self {
        Blobs {
            store,
            converter,
            foreign,
            max_ranges,
            cold_ranges,
            relay_max,
        }
    }

    pub(crate) fn foreign(&self) -> &ForeignMemo {
        &self.foreign
    }

    pub(crate) fn store(&self) -> &Arc<BlobStore> {
        &self.store
    }

    pub(crate) async fn serve(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepositoryName,
        digest: &Digest,
        client: &ClientRequest,
        notes: &mut RequestNotes,
        from_route: &mut bool,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        // Set where this route's upstream gives the answer: a HEAD or GET passed on, a download
        // this route started (`route_tag`), not a copy cached or another route's download.
        *from_route = false;
        let tag = route_tag(upstream, repo);
        // S3 answers one range per GET: a list of ranges is served here, never redirected.
        if client.method == Method::GET
            && !not_modified(&client.headers, digest)
            && !asks_for_several_ranges(client)
        {
            let url = self.store.bucket_url(digest).await;
            if let Some(redirected) = url.and_then(|url| redirect(digest, &url)) {
                notes.outcome = Some(Outcome::Redirect);
                return Ok(redirected);
            }
        }
        if let Some(blob) = self.store.lookup(digest).await {
            note(blob.outcome(), notes);
            return Ok(blob_response(client, digest, &blob, self.max_ranges, notes));
        }
        if client.is_head() {
            *from_route = true;
            return self.head(upstream, repo, digest, notes).await;
        }
        // A far range of a blob no download has the head of yet is asked of upstream at once,
        // alongside the download's own GET; its answer goes out as soon as it comes.
        let ((filled, foreign_url), early) = match self.early_spec(client, digest) {
            Some(spec) => {
                let fill = self.fill(upstream, repo, digest);
                let relay = upstream.get_blob_range(repo, digest, &spec);
                tokio::pin!(fill, relay);
                // Biased: the fill is polled first, so the download is started (its own task,
                // which no drop here cancels) before anything is answered.
                tokio::select! {
                    biased;
                    filled = &mut fill => (filled, Some(relay.await)),
                    relayed = &mut relay => match relayed {
                        Ok(stream) if asked_for(client, &stream) => {
                            *from_route = true;
                            return Ok(relayed_response(digest, stream, notes));
                        }
                        other => (fill.await, Some(other)),
                    },
                }
            }
            None => (self.fill(upstream, repo, digest).await, None),
        };
        if let Some(url) = foreign_url {
            notes.foreign = Some(url);
        }
        let blob = match filled {
            Ok(blob) => blob,
            Err(FillError::Storage(why)) => {
                // The cache cannot take it (read-only or full disk): served, not kept.
                tracing::warn!(%digest, reason = %why, "serving a blob uncached");
                *from_route = true;
                return self.uncached(upstream, repo, digest, client, notes).await;
            }
            Err(e) => return Err(fill_error(e)),
        };
        let started = blob.started_download();
        *from_route = started || blob.origin() == Some(tag);
        // A client that cannot tell a cut-off body from a whole one gets a length, so the
        // download must be verified first if upstream announced none.
        let blob = if client.cannot_detect_truncation() && blob.size().is_none() {
            blob.verified().await.map_err(fill_error)?
        } else {
            blob
        };
        if self.cold_ranges == ColdRanges::Relay {
            match self.cold_range(client, digest, &blob) {
                Some(Cold::One(span)) => {
                    return Ok(self
                        .relay(upstream, repo, digest, span, blob, early, notes, from_route)
                        .await);
                }
                Some(Cold::Several(ranges, size)) => {
                    let parts = (ranges, size, self.relay_max);
                    let store = &self.store;
                    let answer = relay_parts(store, upstream, repo, digest, parts, blob, notes);
                    return Ok(answer);
                }
                None => {}
            }
        }
        note(blob.outcome(), notes);
        Ok(blob_response(client, digest, &blob, self.max_ranges, notes))
    }

    /// The blob from the cache, or its download under this route (and the foreign url it came
    /// from, if it did).
    async fn fill(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> (Result<Blob, FillError>, Option<String>) {
        let tag = route_tag(upstream, repo);
        // Set by the fill if it fetched a foreign layer from its url.
        let foreign_url = Arc::new(std::sync::OnceLock::<String>::new());
        let mut filled = Err(FillError::Failed("no attempt".into()));
        // A download in flight may be another route's (its own upstream confirmed this one):
        // its refusal (404, 401, 403) is about that route, so this route then asks its own.
        for _attempt in 0..8 {
            let ours = Arc::new(AtomicBool::new(false));
            let fetch = self.fetch(upstream, repo, digest, &foreign_url, &ours, true);
            filled = self.store.get_or_fill_from(digest, tag, fetch).await;
            match &filled {
                Err(FillError::Source(e))
                    if e.is_route_specific() && !ours.load(Ordering::Relaxed) => {}
                _ => break,
            }
        }
        (filled, foreign_url.get().cloned())
    }

    /// A blob archway reads for itself under this route (a conversion's config and zstd
    /// layer): let through the access gate as a client's GET would be.
    pub(crate) async fn fetch_for_route(
        &self,
        access: &AccessGate,
        upstream: &Arc<Upstream>,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Blob, ProxyError> {
        let store = || Object::Blob(&self.store);
        let admitted = access.admit(store(), upstream, repo, digest).await?;
        let blob = self
            .fill(upstream, repo, digest)
            .await
            .0
            .map_err(fill_error)?;
        let from_route =
            blob.started_download() || blob.origin() == Some(route_tag(upstream, repo));
        access
            .settle(admitted, store(), upstream, repo, digest, from_route)
            .await?;
        Ok(blob)
    }

    /// The converted layer `digest`: cached, in flight, or filled by `convert`.
    pub(crate) async fn fill_converted<F, Fut>(
        &self,
        upstream: &Upstream,
        repo: &RepositoryName,
        digest: &Digest,
        convert: F,
    ) -> Result<Blob, FillError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<IncomingBlob, SourceError>> + Send + 'static,
    {
        self.store
            .get_or_fill_from(digest, route_tag(upstream, repo), convert)
            .await
    }

    /// The download of `digest` from this route's upstream (falling back to a foreign layer's
    /// url where the manifest gave one); `ours` is set when it runs. A converted layer is
    /// converted again from its zstd layer.
    fn fetch(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepositoryName,
        digest: &Digest,
        foreign_url: &Arc<std::sync::OnceLock<String>>,
        ours: &Arc<AtomicBool>,
        convert: bool,
    ) -> Box<dyn FnOnce() -> FetchFuture + Send + 'static> {
        let upstream = upstream.clone();
        let repo = repo.clone();
        let digest = digest.clone();
        let memo = self.foreign.clone();
        let foreign_url = foreign_url.clone();
        let ours = ours.clone();
        // Only one step: the zstd source itself is fetched plainly (no chain a hostile
        // upstream's diff_ids could make loop).
        let source = convert
            .then(|| self.converter.source_of(&upstream.config().name, &digest))
            .flatten()
            .filter(|s| *s != digest);
        let again = source.map(|source| {
            let no_url = Arc::new(std::sync::OnceLock::new());
            let fetch = self.fetch(&upstream, &repo, &source, &no_url, &Arc::default(), false);
            (source, fetch, self.store.clone(), self.converter.clone())
        });
        let tag = route_tag(&upstream, &repo);
        Box::new(move || {
            ours.store(true, Ordering::Relaxed);
            Box::pin(async move {
                if let Some((source, fetch, store, converter)) = again {
                    tracing::info!(%digest, %source, "a converted layer no longer cached: converting it again");
                    let zstd = store
                        .get_or_fill_from(&source, tag, fetch)
                        .await
                        .map_err(SourceError::new)?;
                    return converter.decompress(zstd.body(None)).await;
                }
                let stream = match upstream.get_blob(&repo, &digest).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        let name = &upstream.config().name;
                        let Some(layer) = memo.get(name, &digest).filter(|_| foreign_fallback(&e))
                        else {
                            return Err(source_error(e));
                        };
                        match upstream.get_foreign(&layer).await {
                            Ok(Some(f)) => {
                                tracing::info!(%digest, foreign = %f.url, upstream_error = %e, "fetching a foreign layer from its url");
                                let _ = foreign_url.set(f.url);
                                f.stream
                            }
                            // No url of it may be fetched: upstream's answer stands.
                            Ok(None) => return Err(source_error(e)),
                            Err(fe) => return Err(SourceError::new(fe)),
                        }
                    }
                };
                Ok(IncomingBlob {
                    size: stream.size,
                    body: stream.body,
                    from_parent: stream.from_parent,
                    on_settled: None,
                })
            }) as FetchFuture
        })
    }

    /// Straight from upstream, verified on the way (see `uncached`), never kept.
    async fn uncached(
        &self,
        upstream: &Upstream,
        repo: &RepositoryName,
        digest: &Digest,
        client: &ClientRequest,
        notes: &mut RequestNotes,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        note(BlobOrigin::Uncached, notes);
        let stream = upstream.get_blob(repo, digest).await?;
        if stream.size.is_none() && client.cannot_detect_truncation() {
            return Err(ProxyError::bad_gateway(format!(
                "blob {digest} has no announced length and cannot be cached now; an HTTP/1.0 client could not tell a cut-off answer from a whole one"
            )));
        }
        let mut out = Response::new(uncached::verified(digest.clone(), stream.size, stream.body));
        if let Some(size) = stream.size {
            out.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        }
        blob_headers(out.headers_mut(), digest);
        Ok(out)
    }

    /// A HEAD tells the client the size; it must not start a download.
    async fn head(
        &self,
        upstream: &Upstream,
        repo: &RepositoryName,
        digest: &Digest,
        notes: &mut RequestNotes,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let mut out = Response::new(body::empty());
        // Being downloaded, or committed since the lookup: the size is known, upstream isn't
        // asked.
        if let Some((size, origin)) = self.store.head(digest) {
            note(origin, notes);
            out.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            blob_headers(out.headers_mut(), digest);
            return Ok(out);
        }
        // A replica with an empty disk: the shared storage knows the size.
        if let Some(size) = self.store.head_in_bucket(digest).await {
            note(BlobOrigin::Filled(BlobSource::Bucket), notes);
            out.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            blob_headers(out.headers_mut(), digest);
            return Ok(out);
        }
        note(BlobOrigin::Filled(BlobSource::Upstream), notes);
        let head = upstream.head_blob(repo, digest).await?;
        if let Some(size) = head.size {
            out.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        }
        blob_headers(out.headers_mut(), digest);
        Ok(out)
    }
}

/// Upstream's failures after which a foreign layer is fetched from its url: Docker on Windows
/// turns to the urls after any failed registry GET (moby `distribution/pull_v2_windows.go`), and
/// so does archway — except after an error archway made itself.
fn foreign_fallback(e: &UpstreamError) -> bool {
    !matches!(e.kind, UpstreamErrorKind::Internal)
}

/// A `Range` with a list (`bytes=a-b,c-d`); what it resolves to needs the blob's size.
fn asks_for_several_ranges(client: &ClientRequest) -> bool {
    client
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(','))
}

/// A download's tag for the route that starts it (never 0, which is untagged).
fn route_tag(upstream: &Upstream, repo: &RepositoryName) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (upstream.config().name.as_str(), repo.to_string()).hash(&mut h);
    h.finish() | 1
}

/// Upstream's refusal of this route (404, 401, 403) is about the route, not the blob.
fn source_error(e: UpstreamError) -> SourceError {
    let route = e.is_not_found()
        || matches!(
            e.kind,
            UpstreamErrorKind::Unauthorized | UpstreamErrorKind::Denied
        );
    if route {
        SourceError::for_route(e)
    } else {
        SourceError::new(e)
    }
}

/// Notes how the cache answered a blob request, for the log and the metrics: every field comes
/// from the one outcome the store handed back.
pub(super) fn note(origin: BlobOrigin, notes: &mut RequestNotes) {
    notes.outcome = Some(Outcome::Blob(origin));
}

/// `307` to the bucket, with the headers a registry sends with its own redirect: the digest (the
/// client checks the bytes against it), no body. A `Range` the client sent goes along with the
/// same GET to S3, which honours it. Never kept by a cache in between: the URL expires.
/// `None` if the URL is no header value (object_store's never fails that; then the blob is
/// served here).
fn redirect(digest: &Digest, url: &str) -> Option<Response<ResponseBody>> {
    let location = HeaderValue::from_str(url).ok()?;
    let mut out = Response::new(body::empty());
    *out.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    let h = out.headers_mut();
    h.insert(header::LOCATION, location);
    insert_digest_headers(h, digest);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(out)
}

/// Why a blob could not be had, as the client sees it.
fn fill_error(e: FillError) -> ProxyError {
    match e {
        FillError::Source(source) => match source.downcast_ref::<UpstreamError>() {
            Some(e) => ProxyError::from(e.clone()),
            None => ProxyError::bad_gateway(source.to_string()),
        },
        // The download broke before this request joined: nothing of it can be served.
        FillError::Failed(cause) => {
            tracing::warn!(error = %crate::error::chain(&cause), "blob download failed");
            ProxyError::bad_gateway(cause.message())
        }
        FillError::TooLarge(cause) => ProxyError::bad_gateway(cause.message()),
        FillError::Storage(cause) => {
            // The client gets the words; the log gets the io::Error behind them too.
            tracing::warn!(error = %crate::error::chain(&cause), "blob cannot be cached");
            ProxyError::internal(cause.message())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::upstream::{Missing, UpstreamErrorKind};
    use http::StatusCode;

    #[test]
    fn a_redirect_carries_the_location_and_the_digest_and_is_not_cached() {
        let digest = Digest::sha256_of(b"layer");
        let url = "http://127.0.0.1:9000/b/blobs/sha256/x?X-Amz-Signature=abc";
        let r = redirect(&digest, url).unwrap();
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        let h = r.headers();
        assert_eq!(h[header::LOCATION], url);
        assert_eq!(h["docker-content-digest"], digest.to_string().as_str());
        assert_eq!(h[header::CONTENT_LENGTH], "0");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert!(
            redirect(&digest, "http://x/\n").is_none(),
            "served here instead"
        );
    }

    #[test]
    fn fill_errors_as_clients_see_them() {
        let not_found = UpstreamError::new(
            UpstreamErrorKind::NotFound(Missing::Blob),
            "upstream x answered 404 Not Found",
        );
        let e = fill_error(FillError::Source(SourceError::new(not_found)));
        assert_eq!(
            (e.code, e.status),
            (ErrorCode::BlobUnknown, StatusCode::NOT_FOUND)
        );
        let e = fill_error(FillError::Failed("upstream blob truncated".into()));
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
        let e = fill_error(FillError::Storage("cannot create blob temp file".into()));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// Every log field and metric label of a blob answer comes from the store's outcome: the
    /// `cache` result is L1's view, `source` where the bytes came from.
    #[test]
    fn each_blob_origin_has_its_labels() {
        use crate::cache::blob::{BlobOrigin as O, BlobSource as S};
        for (origin, cache, source, word, saves) in [
            (O::Hit, "hit", "cache", "hit", true),
            (
                O::Joined(S::Upstream),
                "coalesced",
                "upstream",
                "joined",
                true,
            ),
            (O::Joined(S::Bucket), "coalesced", "bucket", "joined", true),
            (
                O::Filled(S::Upstream),
                "miss",
                "upstream",
                "upstream",
                false,
            ),
            (O::Filled(S::Bucket), "miss", "bucket", "bucket", true),
            (O::Filled(S::Peer), "miss", "peer", "peer", true),
            (O::Filled(S::Parent), "miss", "parent", "parent", false),
            (O::Uncached, "miss", "upstream", "uncached", false),
            (
                O::Relayed(S::Upstream),
                "miss",
                "upstream",
                "relayed",
                false,
            ),
            (O::Relayed(S::Parent), "miss", "parent", "relayed", false),
            (O::Relayed(S::Peer), "miss", "peer", "relayed", true),
        ] {
            let mut notes = RequestNotes::default();
            note(origin, &mut notes);
            assert_eq!(notes.cache(), Some(cache), "{origin:?}");
            assert_eq!(notes.source(), Some(source), "{origin:?}");
            assert_eq!(notes.blob().map(|b| b.as_str()), Some(word), "{origin:?}");
            assert_eq!(origin.saves_upstream(), saves, "{origin:?}");
        }
    }
}
