//! One structured log line per request, written when the response body is finished or dropped,
//! so `bytes` and `duration_ms` are what the client really got. It is written inside the
//! request's span (`request{id kind upstream}`).

use crate::body::ResponseBody;
use crate::metrics::Metrics;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// What the proxy learned while answering, for the log line.
#[derive(Debug, Clone, Default)]
pub struct RequestNotes {
    pub upstream: Option<String>,
    /// How the answer was come by: `cache`, `source` and the blob's `origin` derive from it.
    pub outcome: Option<crate::outcome::Outcome>,
    /// The body is not counted as bytes served from `source`: archway's own error, or a
    /// replica's peer request (the replica that asked counts them as `peer`).
    pub body_uncounted: bool,
    pub error: Option<String>,
    /// The platform a tag answer was resolved for, when it was.
    pub rewrite: Option<String>,
    /// Everything the platform decision considered (for `archway explain`).
    pub decision: Option<Box<crate::route_policy::Decision>>,
    /// The API endpoint kind (`ping`, `manifest`, `blob`, `tags`, `referrers`); `None` when the
    /// path is none of them.
    pub kind: Option<&'static str>,
    /// An error answer depends on the client's hints (a rewritable tag): it carries `Vary`.
    pub vary_on_error: bool,
    /// For the rewrites metric: the client's platform and what the platform logic did
    /// (`legacy`, `always`, `converted`, `rejected`, `no-match`).
    pub rewrite_outcome: Option<(String, &'static str)>,
    /// A foreign layer this request fetched from the url its manifest named (scheme, host, path).
    pub foreign: Option<String>,
    /// Parts of a `multipart/byteranges` answer (after overlapping ranges were merged).
    pub ranges: Option<usize>,
    /// A tag answer whose zstd layers were replaced by tars for this client.
    pub converted: bool,
    /// `upstream/repository:tag` of a manifest request by tag: a pull, for the status page's
    /// "most pulled".
    pub image: Option<String>,
}

impl RequestNotes {
    /// The `cache` field and label.
    pub fn cache(&self) -> Option<&'static str> {
        self.outcome.and_then(|o| o.cache())
    }

    /// Where the body's bytes come from; `None` for archway's own bodies (pings, errors) and
    /// bodies not counted (see `body_uncounted`).
    pub fn source(&self) -> Option<&'static str> {
        if self.body_uncounted {
            return None;
        }
        self.outcome.and_then(|o| o.source())
    }

    /// How a blob was served, as the store told it.
    pub fn blob(&self) -> Option<crate::cache::blob::BlobOrigin> {
        self.outcome.and_then(|o| o.blob())
    }
}

pub struct AccessLog {
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    /// The Content-Length announced, if any: a body that delivered it all is complete even when
    /// the connection never polled for the end of stream.
    pub expected_bytes: Option<u64>,
    pub started: Instant,
    pub notes: RequestNotes,
    /// Where the request is counted once it is over.
    pub metrics: Option<Arc<Metrics>>,
    /// The request's span: the log line is written inside it, tied to the request's other lines.
    pub span: tracing::Span,
}

pub struct LoggedBody {
    inner: ResponseBody,
    bytes: u64,
    failed: bool,
    ended: bool,
    log: Option<AccessLog>,
}

impl LoggedBody {
    pub fn new(inner: ResponseBody, log: AccessLog) -> Self {
        LoggedBody {
            inner,
            bytes: 0,
            failed: false,
            ended: false,
            log: Some(log),
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.failed = true,
            Poll::Ready(None) => self.ended = true,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let Some(log) = self.log.take() else { return };
        let _in_request = log.span.enter();
        let complete = !self.failed
            && (self.ended || self.inner.is_end_stream() || log.expected_bytes == Some(self.bytes));
        let took = log.started.elapsed();
        if let Some(m) = &log.metrics {
            let notes = &log.notes;
            let kind = notes.kind.unwrap_or("other");
            m.request_done(kind, &log.method, log.status, took);
            if let Some(result) = notes.cache() {
                m.cache_result(kind, result);
                if result == "stale" {
                    if let Some(upstream) = &notes.upstream {
                        m.board().stale_served(upstream);
                    }
                }
            }
            if let Some(image) = &notes.image {
                if (200..300).contains(&log.status) {
                    m.board().pulled(image);
                }
            }
            if let Some(source) = notes.source() {
                m.bytes_served(source, self.bytes);
                if notes.blob().is_some_and(|b| b.saves_upstream()) {
                    m.upstream_bytes_saved(self.bytes);
                }
            }
            if let Some((platform, reason)) = &notes.rewrite_outcome {
                m.rewrite(platform, reason);
            }
        }
        tracing::info!(
            target: "archway::access",
            method = %log.method,
            path = %log.path,
            status = log.status,
            bytes = self.bytes,
            complete,
            // Microseconds, printed as milliseconds with at most three decimals.
            duration_ms = took.as_micros() as f64 / 1000.0,
            upstream = log.notes.upstream.as_deref().unwrap_or("-"),
            cache = log.notes.cache().unwrap_or("none"),
            source = log.notes.source(),
            origin = log.notes.blob().map(|b| b.as_str()),
            error = log.notes.error.as_deref(),
            rewrite = log.notes.rewrite.as_deref(),
            foreign = log.notes.foreign.as_deref(),
            ranges = log.notes.ranges,
            // Only on tag answers whose zstd layers were replaced for this client.
            converted = log.notes.converted.then_some("zstd"),
            "request"
        );
    }
}
