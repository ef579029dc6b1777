//! `GET /v2/<name>/referrers/<digest>` (OCI 1.1), cached per upstream, repository, subject
//! digest and `artifactType` filter, so signatures and SBOMs are still found while upstream is
//! down. Fresh for the tag TTL (`tag_ttl`), then revalidated; when upstream is unavailable a
//! cached answer within `stale_if_error` is served. Upstream's bytes and the headers a client
//! reads (Content-Type, `OCI-Filters-Applied`) are kept as they came, never re-serialised.
//!
//! Also cached: upstream's 404 (a registry without the referrers API, such as Distribution 2.x),
//! fresh for `negative_ttl`, because clients fall back to the tag schema only on a 404; a 502
//! while upstream is down would make them fail instead.
//!
//! Not cached, passed through as before: a paginated answer (a `Link` header, or a request with
//! `n`/`last`), so one page is never kept as the whole list; and any status but 200.

use super::listings::{self, ClientView};
use crate::api;
use crate::body;
use crate::body::ResponseBody;
use crate::cache::keyed_lock::KeyedLock;
use crate::digest::Digest;
use crate::error::ProxyError;
use crate::manifest::MAX_MANIFEST_BYTES;
use crate::outcome::CacheResult;
use crate::reference::RepositoryName;
use crate::upstream::{Listing, Upstream};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

const FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");
const STALE_WARNING: HeaderValue = HeaderValue::from_static("110 - \"Response is Stale\"");

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    upstream: String,
    repository: String,
    subject: Digest,
    /// The query passed upstream (`?artifactType=…` or empty): the filter is part of the key.
    query: String,
}

enum Kept {
    /// A 200: the exact bytes and the headers that matter.
    Listing {
        content_type: Option<HeaderValue>,
        filters_applied: Option<HeaderValue>,
        body: Bytes,
    },
    /// Upstream answered 404: no referrers API (or no such repository).
    Missing(ProxyError),
}

struct Answer {
    at: Instant,
    kept: Kept,
}

impl Answer {
    fn weight(&self, key: &Key) -> u32 {
        let len = 256
            + key.upstream.len()
            + key.repository.len()
            + key.query.len()
            + match &self.kept {
                Kept::Listing { body, .. } => body.len(),
                Kept::Missing(e) => e.message.len(),
            };
        u32::try_from(len).unwrap_or(u32::MAX)
    }
}

/// The cached referrers answers, within `cache.referrers_memory` bytes.
pub(crate) struct Referrers {
    answers: moka::sync::Cache<Key, Arc<Answer>>,
    /// Concurrent misses for one key make one upstream request.
    refreshing: KeyedLock<Key>,
    tag_ttl: Duration,
    stale_if_error: Duration,
    negative_ttl: Duration,
}

enum Fetched {
    Kept(Arc<Answer>),
    /// Paginated, or a status other than 200: passed on uncached.
    PassThrough(Listing),
}

impl Referrers {
    /// `longest_ttl`: the longest tag TTL of any upstream, so no fresh answer is dropped early.
    pub(crate) fn new(
        budget: u64,
        tag_ttl: Duration,
        longest_ttl: Duration,
        stale_if_error: Duration,
        negative_ttl: Duration,
    ) -> Self {
        let live = stale_if_error.max(longest_ttl).max(negative_ttl);
        Referrers {
            answers: moka::sync::Cache::builder()
                .weigher(|k: &Key, a: &Arc<Answer>| a.weight(k))
                .max_capacity(budget)
                .time_to_live(live.max(Duration::from_secs(1)))
                .build(),
            refreshing: KeyedLock::default(),
            tag_ttl,
            stale_if_error,
            negative_ttl,
        }
    }

    pub(crate) async fn serve(
        &self,
        upstream: &Upstream,
        repo: &RepositoryName,
        subject: &Digest,
        view: ClientView<'_>,
    ) -> Result<(Response<ResponseBody>, CacheResult), ProxyError> {
        let query = api::passthrough_query(view.query, &["artifactType", "n", "last"]);
        let paged = query
            .trim_start_matches('?')
            .split('&')
            .any(|kv| kv.starts_with("n=") || kv.starts_with("last="));
        if paged {
            // A page of a longer list: never a whole answer to keep.
            let listing = upstream.referrers(repo, subject, &query).await?;
            return Ok((listings::respond(listing, repo, &view), CacheResult::Miss));
        }
        let key = Key {
            upstream: upstream.config().name.clone(),
            repository: repo.to_string(),
            subject: subject.clone(),
            query,
        };
        let ttl = upstream.config().tag_ttl.unwrap_or(self.tag_ttl);
        if let Some(a) = self.fresh(&key, ttl) {
            return answer(&a, false).map(|r| (r, CacheResult::Hit));
        }
        let _refreshing = self.refreshing.lock(&key).await;
        // Whoever held the lock before us may have refreshed it.
        if let Some(a) = self.fresh(&key, ttl) {
            return answer(&a, false).map(|r| (r, CacheResult::Hit));
        }
        let cached = self.answers.get(&key);
        match self.fetch(upstream, repo, &key).await {
            Ok(Fetched::Kept(a)) => {
                self.answers.insert(key, a.clone());
                answer(&a, false).map(|r| (r, CacheResult::Miss))
            }
            Ok(Fetched::PassThrough(listing)) => {
                // What was kept no longer holds (upstream now paginates, or answers otherwise).
                self.answers.invalidate(&key);
                Ok((listings::respond(listing, repo, &view), CacheResult::Miss))
            }
            Err(e) if e.is_upstream_unavailable() => {
                // stale-if-error: a cached answer young enough beats an error.
                match cached {
                    Some(a) if a.at.elapsed() <= self.stale_if_error => {
                        tracing::warn!(upstream = %key.upstream, repository = %key.repository, subject = %key.subject, error = %crate::error::chain(&e), "upstream unavailable, serving cached referrers");
                        answer(&a, true).map(|r| (r, CacheResult::Stale))
                    }
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn fresh(&self, key: &Key, ttl: Duration) -> Option<Arc<Answer>> {
        let a = self.answers.get(key)?;
        let ttl = match a.kept {
            Kept::Listing { .. } => ttl,
            Kept::Missing(_) => self.negative_ttl,
        };
        (a.at.elapsed() < ttl).then_some(a)
    }

    async fn fetch(
        &self,
        upstream: &Upstream,
        repo: &RepositoryName,
        key: &Key,
    ) -> Result<Fetched, ProxyError> {
        let listing = match upstream.referrers(repo, &key.subject, &key.query).await {
            Ok(l) => l,
            Err(e) if e.is_not_found() => {
                let e = ProxyError::from(e);
                return Ok(Fetched::Kept(Arc::new(Answer {
                    at: Instant::now(),
                    kept: Kept::Missing(e),
                })));
            }
            Err(e) => return Err(e.into()),
        };
        if listing.status != StatusCode::OK || listing.link.is_some() {
            return Ok(Fetched::PassThrough(listing));
        }
        let name = &upstream.config().name;
        // An image index like any manifest: the same cap (oras reads at most 4 MiB too).
        let body = http_body_util::Limited::new(listing.body, MAX_MANIFEST_BYTES)
            .collect()
            .await
            .map_err(|e| {
                ProxyError::bad_gateway(format!(
                    "reading a referrers list from upstream {name} failed (over {MAX_MANIFEST_BYTES} bytes, or cut short): {e}"
                ))
            })?
            .to_bytes();
        Ok(Fetched::Kept(Arc::new(Answer {
            at: Instant::now(),
            kept: Kept::Listing {
                content_type: listing.content_type,
                filters_applied: listing.filters_applied,
                body,
            },
        })))
    }
}

fn answer(a: &Answer, stale: bool) -> Result<Response<ResponseBody>, ProxyError> {
    let (content_type, filters_applied, bytes) = match &a.kept {
        Kept::Missing(e) => return Err(e.clone()),
        Kept::Listing {
            content_type,
            filters_applied,
            body,
        } => (content_type, filters_applied, body),
    };
    let mut r = Response::new(body::full(bytes.clone()));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(bytes.len() as u64),
    );
    if let Some(v) = content_type {
        h.insert(header::CONTENT_TYPE, v.clone());
    }
    if let Some(v) = filters_applied {
        h.insert(FILTERS_APPLIED, v.clone());
    }
    if stale {
        h.insert(header::WARNING, STALE_WARNING);
    }
    Ok(r)
}
