//! Fetching a foreign layer from the url its manifest named: the first url the upstream's
//! `foreign_layer_hosts` allow, redirects followed only to allowed hosts, every hop through the
//! egress policy, no credentials sent. The bytes are checked by the blob store (digest, and the
//! manifest's size announced as the length).

use super::error::{UpstreamError, UpstreamErrorKind};
use super::exchange::describe_failure;
use super::{redirect, BlobStream, Upstream};
use crate::foreign::{self, ForeignLayer};
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Empty;

/// A foreign layer's download, and where it came from (scheme, host and path: for the log).
pub struct ForeignBlob {
    pub stream: BlobStream,
    pub url: String,
}

impl Upstream {
    /// `None` if no url of `layer` is on this upstream's `foreign_layer_hosts`: nothing was
    /// fetched.
    pub async fn get_foreign(
        &self,
        layer: &ForeignLayer,
    ) -> Result<Option<ForeignBlob>, UpstreamError> {
        let patterns = &self.config.foreign_layer_hosts;
        let Some(first) = layer
            .urls
            .iter()
            .filter_map(|u| u.parse::<Uri>().ok())
            .find(|u| foreign::allowed(patterns, u))
        else {
            self.count_foreign("not_allowed");
            return Ok(None);
        };
        let shown = redirect::redacted(&first);
        let result = self.fetch_foreign(layer, first, &shown).await;
        self.count_foreign(if result.is_ok() { "fetched" } else { "error" });
        result.map(|stream| Some(ForeignBlob { stream, url: shown }))
    }

    async fn fetch_foreign(
        &self,
        layer: &ForeignLayer,
        mut url: Uri,
        shown: &str,
    ) -> Result<BlobStream, UpstreamError> {
        let name = &self.config.name;
        let fail = |why: String| {
            UpstreamError::unavailable_of(
                name,
                format!(": foreign layer {} from {shown}: {why}", layer.digest),
            )
        };
        let mut hops = 0;
        loop {
            self.egress.check_url(&url).map_err(&fail)?;
            let mut request = Request::new(Empty::new());
            *request.method_mut() = Method::GET;
            *request.uri_mut() = url.clone();
            request
                .headers_mut()
                .insert(header::USER_AGENT, self.user_agent.clone());
            let budget = self.config.read_timeout;
            let response = match tokio::time::timeout(budget, self.client.request(request)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(fail(describe_failure(&e, &url))),
                Err(_) => {
                    return Err(UpstreamError::timeout_of(
                        name,
                        format!(
                            ": foreign layer {} from {shown}: no answer within {:.1} s",
                            layer.digest,
                            budget.as_secs_f64()
                        ),
                    ))
                }
            };
            let status = response.status();
            if redirect::is_followed(status) {
                hops += 1;
                if hops > redirect::MAX_REDIRECTS {
                    return Err(fail("too many redirects".into()));
                }
                let next = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|l| redirect::resolve_location(&url, l).ok())
                    .ok_or_else(|| fail(format!("{status} without a usable Location")))?;
                if !foreign::allowed(&self.config.foreign_layer_hosts, &next) {
                    return Err(fail(format!(
                        "redirect to {} refused: not on foreign_layer_hosts",
                        redirect::redacted(&next)
                    )));
                }
                tracing::debug!(upstream = %name, foreign = %redirect::redacted(&next), hop = hops, "following a foreign layer redirect");
                url = next;
                continue;
            }
            if status == StatusCode::NOT_FOUND {
                return Err(UpstreamError::new(
                    UpstreamErrorKind::NotFound(super::Missing::Blob),
                    format!(
                        "upstream {name}: foreign layer {} not found at {shown}",
                        layer.digest
                    ),
                ));
            }
            if status != StatusCode::OK {
                return Err(fail(format!("answered {status}")));
            }
            let length = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if length.is_some_and(|n| n != layer.size) {
                return Err(fail(format!(
                    "{} bytes announced, the manifest says {}",
                    length.unwrap_or_default(),
                    layer.size
                )));
            }
            // The manifest's size is the length: the blob store refuses a body of any other.
            return Ok(BlobStream {
                size: Some(layer.size),
                body: self.finish(response).into_body(),
                from_parent: false,
            });
        }
    }

    fn count_foreign(&self, outcome: &'static str) {
        if let Some(m) = &self.metrics {
            m.foreign_fetch(&self.config.name, outcome);
        }
    }
}
