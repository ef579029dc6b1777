//! The registry pull API as upstream speaks it: HEAD and GET of manifests, blobs, tags/list and
//! referrers. Each call interprets upstream's status and headers and returns a typed answer or
//! an `UpstreamError`; nothing above this file reads an upstream status.

use super::error::{status_error, Missing, UpstreamError};
use super::Upstream;
use crate::body::UpstreamBody;
use crate::digest::Digest;
use crate::manifest::{media_type_of, Manifest, MAX_MANIFEST_BYTES};
use crate::media_type;
use crate::reference::{RepositoryName, Tag};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;

const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

/// Which manifest to fetch: by tag, or by digest (then the bytes must hash to it).
#[derive(Debug, Clone, Copy)]
pub enum ManifestRef<'a> {
    Tag(&'a Tag),
    Digest(&'a Digest),
}

/// What a manifest HEAD tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    /// `Docker-Content-Digest`, when upstream sent a valid one.
    pub digest: Option<Digest>,
}

/// What a blob HEAD tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobHead {
    pub size: Option<u64>,
}

/// A blob GET's answer: the announced length, if any, and the body (a stalled upstream shows up
/// as a body error).
pub struct BlobStream {
    pub size: Option<u64>,
    pub body: UpstreamBody,
    /// A parent archway answered (the parent tier), not upstream itself.
    pub from_parent: bool,
}

/// A blob range's answer (`get_blob_range`): the inclusive range sent, of a blob of `size`.
pub struct RangeStream {
    pub start: u64,
    pub end: u64,
    pub size: u64,
    pub from_parent: bool,
    pub body: UpstreamBody,
}

/// A tags/list or referrers answer, passed on as it came: the status (2xx/3xx), the headers a
/// client needs, and the body.
pub struct Listing {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub content_length: Option<HeaderValue>,
    /// `OCI-Filters-Applied` of a filtered referrers list.
    pub filters_applied: Option<HeaderValue>,
    /// The pagination `Link`, pointing into upstream's namespace.
    pub link: Option<String>,
    pub body: UpstreamBody,
}

impl Upstream {
    /// HEAD a tag (or a digest): its digest, without the bytes (Docker Hub does not count
    /// HEADs as pulls).
    pub async fn head_manifest(
        &self,
        repo: &RepositoryName,
        reference: ManifestRef<'_>,
    ) -> Result<ManifestHead, UpstreamError> {
        let path = match reference {
            ManifestRef::Tag(tag) => format!("manifests/{tag}"),
            ManifestRef::Digest(digest) => format!("manifests/{digest}"),
        };
        let resp = self
            .send(Method::HEAD, repo, &path, manifest_accept())
            .await?;
        self.fail_on_error(&resp, Missing::Manifest)?;
        let digest = resp
            .headers()
            .get(CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        Ok(ManifestHead { digest })
    }

    /// GET a manifest with the full Accept list, its exact bytes within the 4 MiB cap, its
    /// media type (Content-Type, else sniffed) and the digest the bytes hash to. By digest, the
    /// bytes must hash to it.
    pub async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: ManifestRef<'_>,
    ) -> Result<Manifest, UpstreamError> {
        let suffix = match reference {
            ManifestRef::Tag(tag) => format!("manifests/{tag}"),
            ManifestRef::Digest(digest) => format!("manifests/{digest}"),
        };
        let resp = self
            .send(Method::GET, repo, &suffix, manifest_accept())
            .await?;
        self.expect_ok(&resp, Missing::Manifest, "a manifest")?;
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned());
        let announced = resp
            .headers()
            .get(CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let name = &self.config().name;
        let bytes = http_body_util::Limited::new(resp.into_body(), MAX_MANIFEST_BYTES)
            .collect()
            .await
            .map_err(|e| {
                UpstreamError::unavailable(format!(
                    "reading a manifest from upstream {name} failed: {e}"
                ))
            })?
            .to_bytes();
        let digest = match reference {
            ManifestRef::Digest(d) if d.verifies(&bytes) => d.clone(),
            ManifestRef::Digest(d) => {
                return Err(UpstreamError::unavailable_of(
                    name,
                    format!(" sent a manifest that does not match {d}"),
                ))
            }
            ManifestRef::Tag(_) => Digest::sha256_of(&bytes),
        };
        if let Some(a) = announced.filter(|a| *a != digest.to_string()) {
            tracing::warn!(upstream = %name, announced = %a, computed = %digest, "upstream's Docker-Content-Digest differs from the bytes; using the bytes' digest");
        }
        let media_type = media_type_of(content_type.as_deref(), &bytes);
        Ok(Manifest {
            digest,
            media_type,
            bytes,
        })
    }

    /// HEAD a blob: its size, without starting a download.
    pub async fn head_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<BlobHead, UpstreamError> {
        let resp = self
            .send(
                Method::HEAD,
                repo,
                &format!("blobs/{digest}"),
                HeaderMap::new(),
            )
            .await?;
        self.fail_on_error(&resp, Missing::Blob)?;
        // A redirect (not followed for a HEAD) carries its own length, not the blob's.
        let size = (!resp.status().is_redirection())
            .then(|| content_length(resp.headers()))
            .flatten();
        Ok(BlobHead { size })
    }

    /// GET a blob (following the registry's redirect to its storage). The body is not checked
    /// here: the blob store verifies it.
    pub async fn get_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<BlobStream, UpstreamError> {
        let resp = self
            .send(
                Method::GET,
                repo,
                &format!("blobs/{digest}"),
                HeaderMap::new(),
            )
            .await?;
        self.expect_ok(&resp, Missing::Blob, "a blob")?;
        Ok(BlobStream {
            size: content_length(resp.headers()),
            from_parent: resp
                .extensions()
                .get::<super::parent::FromParent>()
                .is_some(),
            body: resp.into_body(),
        })
    }

    /// GET one range of a blob, `spec` as a `Range` value (`bytes=a-b`, `bytes=a-`, `bytes=-n`):
    /// a cold Range relayed (`cache.cold_ranges`), through the same exchange as `get_blob`
    /// (auth, redirects under the egress policy, parents). Only a `206` with a `Content-Range:
    /// bytes a-b/size` and its exact `Content-Length` is an answer; anything else (a `200` that
    /// ignored the Range, no length) is refused before a body byte is read. The caller checks
    /// the range is the one its client asked for. The body is not checked against anything (it
    /// cannot be): it is counted in `archway_cold_range_bytes_total` as it is read.
    pub async fn get_blob_range(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        spec: &str,
    ) -> Result<RangeStream, UpstreamError> {
        let mut headers = HeaderMap::new();
        let range = HeaderValue::from_str(spec)
            .map_err(|_| UpstreamError::unavailable_of(&self.config().name, ": bad range"))?;
        headers.insert(header::RANGE, range);
        let resp = self
            .send(Method::GET, repo, &format!("blobs/{digest}"), headers)
            .await?;
        self.fail_on_error(&resp, Missing::Blob)?;
        let refuse = |why: String| {
            Err(UpstreamError::unavailable_of(
                &self.config().name,
                format!(" answered the Range {spec} of {digest} {why}"),
            ))
        };
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            return refuse(format!("with {}", resp.status()));
        }
        let content_range = resp
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok());
        let Some((start, end, size)) = content_range.and_then(parse_content_range) else {
            return refuse(format!("with Content-Range {content_range:?}"));
        };
        if content_length(resp.headers()) != Some(end - start + 1) {
            return refuse("without its exact Content-Length".to_owned());
        }
        let from_parent = resp
            .extensions()
            .get::<super::parent::FromParent>()
            .is_some();
        let counter = self
            .metrics
            .as_ref()
            .map(|m| m.cold_range_counter(if from_parent { "parent" } else { "upstream" }));
        Ok(RangeStream {
            start,
            end,
            size,
            from_parent,
            body: super::counted::Counted::new(resp.into_body(), counter).boxed_unsync(),
        })
    }

    /// GET tags/list; `query` is the `?n=…&last=…` to pass on (or empty).
    pub async fn tags(&self, repo: &RepositoryName, query: &str) -> Result<Listing, UpstreamError> {
        self.listing(repo, &format!("tags/list{query}"), Missing::Repository)
            .await
    }

    /// GET the referrers of `digest`; `query` is the `?artifactType=…` to pass on (or empty).
    pub async fn referrers(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        query: &str,
    ) -> Result<Listing, UpstreamError> {
        self.listing(
            repo,
            &format!("referrers/{digest}{query}"),
            Missing::Manifest,
        )
        .await
    }

    async fn listing(
        &self,
        repo: &RepositoryName,
        suffix: &str,
        missing: Missing,
    ) -> Result<Listing, UpstreamError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.oci.image.index.v1+json, application/json"),
        );
        let resp = self.send(Method::GET, repo, suffix, headers).await?;
        self.fail_on_error(&resp, missing)?;
        if resp.status().is_redirection() {
            // Never passed on: a Location could point a client (or archway) anywhere.
            return Err(UpstreamError::unavailable_of(
                &self.config().name,
                format!(
                    " answered {} for {suffix}; archway follows redirects only for blob downloads",
                    resp.status()
                ),
            ));
        }
        let (parts, body) = resp.into_parts();
        let h = &parts.headers;
        Ok(Listing {
            status: parts.status,
            content_type: h.get(header::CONTENT_TYPE).cloned(),
            content_length: h.get(header::CONTENT_LENGTH).cloned(),
            filters_applied: h.get(FILTERS_APPLIED).cloned(),
            link: h
                .get(header::LINK)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body,
        })
    }

    fn fail_on_error<B>(&self, resp: &Response<B>, missing: Missing) -> Result<(), UpstreamError> {
        match status_error(&self.config().name, resp.status(), resp.headers(), missing) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A body archway keeps must come from a plain 200: errors map as `status_error` says,
    /// anything else (a 206 or 204 never asked for) is upstream misbehaving.
    fn expect_ok<B>(
        &self,
        resp: &Response<B>,
        missing: Missing,
        what: &str,
    ) -> Result<(), UpstreamError> {
        self.fail_on_error(resp, missing)?;
        if resp.status() != StatusCode::OK {
            return Err(UpstreamError::unavailable_of(
                &self.config().name,
                format!(" answered {} for {what}", resp.status()),
            ));
        }
        Ok(())
    }
}

fn manifest_accept() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::ACCEPT,
        HeaderValue::from_static(media_type::UPSTREAM_ACCEPT),
    );
    h
}

/// `bytes a-b/size` with `a <= b < size`.
fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let (span, size) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let (a, b, size) = (a.parse().ok()?, b.parse().ok()?, size.parse().ok()?);
    (a <= b && b < size).then_some((a, b, size))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::parse_content_range;

    #[test]
    fn content_ranges_that_are_relayed() {
        assert_eq!(parse_content_range("bytes 0-9/10"), Some((0, 9, 10)));
        assert_eq!(parse_content_range("bytes 5-5/6"), Some((5, 5, 6)));
        for bad in [
            "bytes 0-9/*",
            "bytes 0-10/10",
            "bytes 9-0/10",
            "items 0-9/10",
            "bytes */10",
            "bytes 0-9",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }
}
