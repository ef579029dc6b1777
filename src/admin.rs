//! The admin listener: the status page (`/`, `/status`), `/metrics`, `/healthz`, `/readyz`,
//! the warm jobs (`admin_warm.rs`) and pins (`admin_pins.rs`) over plain HTTP/1.1, on its own address so that it is never exposed (or authenticated) like
//! the registry port.

use crate::accept;
use crate::body::{self, ResponseBody};
use crate::connection::{self, ConnectionLimits, TrackedIo, Tracker};
use crate::metrics::{self, Metrics};
use crate::stall::{GuardedBody, ResponseProgress};
use crate::warm::jobs::WarmJobs;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Scrapes and probes are quick; a connection that lingers longer is dropped at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin endpoints read.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub data_dir: PathBuf,
    probes: AtomicU64,
    /// `POST /warm`'s jobs (refused with `admin_warm = false`).
    warm: Option<WarmJobs>,
    /// The proxy whose pins `/pins` (admin_pins.rs) lists and changes, and whose state the
    /// status page shows.
    proxy: Option<Arc<crate::proxy::Proxy>>,
}

impl Admin {
    pub fn new(metrics: Arc<Metrics>, data_dir: PathBuf) -> Admin {
        Admin {
            metrics,
            data_dir,
            probes: AtomicU64::new(0),
            warm: None,
            proxy: None,
        }
    }

    /// With the warm endpoints, whose jobs run through `proxy`.
    pub fn with_warm(mut self, jobs: WarmJobs) -> Admin {
        self.warm = Some(jobs);
        self
    }

    /// With `/pins` and the status page answered for `proxy`.
    pub fn with_proxy(mut self, proxy: Arc<crate::proxy::Proxy>) -> Admin {
        self.proxy = Some(proxy);
        self
    }

    pub async fn handle<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
    {
        if crate::admin_warm::owns(req.uri().path()) {
            return crate::admin_warm::handle(self.warm.as_ref(), req).await;
        }
        // Its own methods (POST, DELETE) and body: see admin_pins.rs.
        if req.uri().path() == "/pins" {
            return crate::admin_pins::handle(self.proxy.as_ref(), req).await;
        }
        let head = req.method() == Method::HEAD;
        if req.method() != Method::GET && !head {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n", head);
        }
        match req.uri().path() {
            "/metrics" => {
                let mut r = text(StatusCode::OK, self.metrics.encode(), head);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(metrics::CONTENT_TYPE),
                );
                r
            }
            "/" | "/status" => match &self.proxy {
                Some(proxy) => crate::admin_status::respond(proxy, head),
                None => text(StatusCode::NOT_FOUND, "no status page here\n", head),
            },
            "/healthz" => text(StatusCode::OK, "ok\n", head),
            "/readyz" => match self.ready().await {
                Ok(()) => text(StatusCode::OK, "ready\n", head),
                Err(reason) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {reason}\n"),
                    head,
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /, /metrics, /healthz, /readyz, /warm, /pins\n",
                head,
            ),
        }
    }

    /// Ready when the config is loaded (it is, or archway would not be running) and the data
    /// directory takes a new file.
    async fn ready(&self) -> Result<(), String> {
        let n = self.probes.fetch_add(1, Ordering::Relaxed);
        let dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || probe_writable(&dir, n))
            .await
            .map_err(|e| format!("readiness probe failed: {e}"))?
    }
}

/// Creates and deletes a probe file in `dir`.
fn probe_writable(dir: &Path, n: u64) -> Result<(), String> {
    let path = dir.join(format!(".readyz-{}-{n}", std::process::id()));
    let fail = |what: &str, e: std::io::Error| {
        format!(
            "data directory {} is not writable ({what}: {e})",
            dir.display()
        )
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| fail("create", e))?;
    std::fs::remove_file(&path).map_err(|e| fail("delete", e))
}

fn text(status: StatusCode, body: impl Into<Bytes>, head: bool) -> Response<ResponseBody> {
    let bytes: Bytes = body.into();
    let len = bytes.len() as u64;
    let mut r = Response::new(if head {
        body::empty()
    } else {
        body::full(bytes)
    });
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// Scrapes and probes need few connections; a flood of them cannot take the registry's.
const MAX_ADMIN_CONNECTIONS: u32 = 64;

/// Serves the admin endpoints on `listener` until `stop` turns true, each connection under the
/// same limits as the registry's.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS as usize));
    loop {
        let Some(slot) = accept::slot(&slots, &mut stop).await else {
            break;
        };
        let Some((stream, peer)) = accept::next_connection(&listener, &mut stop, "admin").await
        else {
            break;
        };
        let admin = admin.clone();
        let tracker = Tracker::new();
        let requests = tracker.clone();
        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
            let admin = admin.clone();
            let guard = requests.request_started(req.version());
            let progress = ResponseProgress::new(requests.clone());
            async move {
                let response = admin.handle(req).await;
                Ok::<_, Infallible>(
                    response.map(|body| GuardedBody::new(body, guard, progress, None)),
                )
            }
        });
        let io = TokioIo::new(TrackedIo::new(stream, tracker.clone()));
        let conn = http1::Builder::new().serve_connection(io, service);
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (_, error) =
                connection::supervise(conn, |c| c.graceful_shutdown(), &tracker, &limits, stop)
                    .await;
            if let Some(e) = error {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = accept::drained(&slots, MAX_ADMIN_CONNECTIONS, DRAIN_TIMEOUT).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_needs_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        probe_writable(dir.path(), 1).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "probe file left behind"
        );
        let gone = dir.path().join("missing");
        let err = probe_writable(&gone, 2).unwrap_err();
        assert!(err.contains("missing") && err.contains("create"), "{err}");
    }
}
