//! Listeners, HTTP/1.1 + h2 connections under their limits (`connection`), at most
//! `max_connections` of them, graceful shutdown.

use crate::accept;
use crate::admin::{self, Admin};
use crate::config::Config;
use crate::connection::{self, ConnectionLimits, Ended, TrackedIo, Tracker};
use crate::proxy::{ConnInfo, Proxy, ProxyInitError};
use crate::sendfile::{self, Lane, LaneIo};
use crate::stall::{GuardedBody, InFlight, ResponseProgress, StreamExec};
use crate::tls::{ServerTls, TlsError};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// How long open connections get to finish after shutdown is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A client that opens a connection and never finishes the TLS handshake is dropped after this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Proxy(#[from] ProxyInitError),
    #[error("[tls]: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running archway: what `main` and the tests both start.
pub struct Archway {
    addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    proxy: Arc<Proxy>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    tls: Option<ServerTls>,
    /// One per open client connection, `max_connections` in all.
    slots: Arc<Semaphore>,
    max_connections: u32,
}

impl Archway {
    pub async fn start(config: Config) -> Result<Archway, StartError> {
        let listen = config.listen.clone();
        let admin_listen = config.admin_listen;
        let admin_warm = config.admin_warm;
        let data_dir = config.data_dir.clone();
        // Certificates first: a bad file stops the start before anything listens.
        let tls = config.tls.as_ref().map(ServerTls::new).transpose()?;
        let limits = ConnectionLimits {
            header_read_timeout: config.limits.header_read_timeout,
            idle_timeout: config.limits.idle_timeout,
            stall_timeout: config.limits.stall_timeout,
        };
        let max_streams = config.limits.max_streams_per_connection;
        let max_connections = config
            .limits
            .max_connections
            .unwrap_or_else(crate::fd_limit::default_max_connections);
        tracing::info!(max_connections, "connection limit");
        // The default share of descriptors for requests follows the connection cap in force,
        // configured or not.
        let max_requests = config
            .limits
            .max_requests
            .unwrap_or_else(|| crate::fd_limit::default_max_requests(max_connections));
        tracing::info!(max_requests, "request limit");
        if let Some(words) =
            crate::fd_limit::over_budget(crate::fd_limit::current(), max_connections, max_requests)
        {
            tracing::warn!("{words}");
        }
        let requests = Arc::new(Semaphore::new(max_requests as usize));
        let slots = Arc::new(Semaphore::new(max_connections as usize));
        let proxy = Arc::new(Proxy::new(config)?);
        let (stop, _) = watch::channel(false);
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for addr in listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            let local = listener.local_addr().unwrap_or(addr);
            addrs.push(local);
            tracing::info!(addr = %local, tls = tls.is_some(), "listening");
            let serving = Serving {
                proxy: proxy.clone(),
                tls: tls.as_ref().map(ServerTls::acceptor),
                limits,
                max_streams,
                requests: requests.clone(),
                stop: stop.subscribe(),
            };
            tasks.push(tokio::spawn(serve(listener, slots.clone(), serving)));
        }
        let mut admin_addr = None;
        if let Some(addr) = admin_listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            let local = listener.local_addr().unwrap_or(addr);
            admin_addr = Some(local);
            tracing::info!(addr = %local, "admin listening (/ status page, /metrics, /healthz, /readyz, /warm, /pins)");
            let jobs = crate::warm::jobs::WarmJobs::new(&proxy, admin_warm);
            let state = Arc::new(
                Admin::new(proxy.metrics().clone(), data_dir)
                    .with_warm(jobs)
                    .with_proxy(proxy.clone()),
            );
            tasks.push(tokio::spawn(admin::serve(
                listener,
                state,
                limits,
                stop.subscribe(),
            )));
        }
        let mut own = addrs.clone();
        own.extend(admin_addr);
        proxy.set_own_listeners(&own);
        Ok(Archway {
            addrs,
            admin_addr,
            proxy,
            stop,
            tasks,
            tls,
            slots,
            max_connections,
        })
    }

    /// Re-reads `[tls]` cert_file and key_file (what SIGHUP does). New handshakes get the new
    /// certificate; open connections keep theirs. On an error the old certificate stays in use
    /// and the error is returned (and logged). Without `[tls]` this does nothing.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        match tls.reload() {
            Ok(()) => {
                tracing::info!(cert_file = %tls.cert_file().display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; keeping the current certificate");
                Err(e)
            }
        }
    }

    /// The TLS set-up of the registry listener, when `[tls]` is configured.
    pub fn tls(&self) -> Option<&ServerTls> {
        self.tls.as_ref()
    }

    /// The first registry listener's address (config validation requires at least one).
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// Where the admin endpoints are served, if `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Stops accepting, closes idle connections at once, lets open requests finish (up to a
    /// drain timeout) and verified blobs finish their commit, then returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if !accept::drained(&self.slots, self.max_connections, DRAIN_TIMEOUT).await {
            tracing::warn!("connections still open after the drain timeout; closing");
        }
        self.proxy.blob_store().finish_commits(DRAIN_TIMEOUT).await;
        self.proxy.flush_access_records();
        // What the pins hold, as of now: the next start spares it from its first eviction.
        self.proxy.pins().flush().await;
    }
}

/// What every connection of one registry listener shares.
#[derive(Clone)]
struct Serving {
    proxy: Arc<Proxy>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnectionLimits,
    /// `limits.max_streams_per_connection`: concurrent h2 streams one connection may open.
    max_streams: u32,
    /// `limits.max_requests`: requests in flight across every connection.
    requests: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

async fn serve(listener: TcpListener, slots: Arc<Semaphore>, serving: Serving) {
    let mut stop = serving.stop.clone();
    loop {
        let Some(slot) = accept::slot(&slots, &mut stop).await else {
            break;
        };
        let Some((stream, peer)) = accept::next_connection(&listener, &mut stop, "registry").await
        else {
            break;
        };
        let _ = stream.set_nodelay(true);
        let serving = serving.clone();
        // No span per connection: formatting it into every request's log lines costs more
        // than it tells (the few connection-level lines name their peer).
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(stream, peer, serving).await;
        });
    }
}

/// One connection: the TLS handshake (in the connection's own task, so a slow client never holds
/// up accepting), then HTTP/1.1 or h2 under the connection limits.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, serving: Serving) {
    let metrics = serving.proxy.metrics().clone();
    metrics.connection_opened();
    let conn_info = ConnInfo {
        local: stream.local_addr().ok(),
        peer: Some(peer),
    };
    let tracker = Tracker::new();
    // Each h2 stream is its own task under the stall rule; HTTP/1.1 uses no executor.
    let mut builder = auto::Builder::new(StreamExec::new(
        tracker.clone(),
        serving.limits.stall_timeout,
        metrics.clone(),
    ));
    builder.http2().max_concurrent_streams(serving.max_streams);
    // hyper's queued writes keep each body chunk as handed over, which a `sendfile` placeholder
    // needs (and avoids a copy of every chunk besides).
    builder.http1().writev(true);
    // Plain HTTP/1.1 answers may send cached blobs' files (`sendfile`); TLS must encrypt every
    // byte here, and h2 frames them.
    let lane =
        (serving.tls.is_none() && sendfile::SUPPORTED && serving.proxy.config().cache.sendfile)
            .then(Lane::new);
    let proxy = serving.proxy.clone();
    let requests = tracker.clone();
    let in_flight = serving.requests.clone();
    let wait_for_slot = serving.limits.stall_timeout;
    let request_lane = lane.clone();
    let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        // Only a blob GET can be answered by sendfile; other requests skip the extension's
        // allocation.
        if req.version() < http::Version::HTTP_2
            && req.method() == http::Method::GET
            && req.uri().path().contains("/blobs/")
        {
            if let Some(lane) = &request_lane {
                req.extensions_mut().insert(lane.clone());
            }
        }
        let proxy = proxy.clone();
        let guard = requests.request_started(req.version());
        let tracker = requests.clone();
        let in_flight = in_flight.clone();
        async move {
            // A request waits a while for one of max_requests, then is answered 503.
            let slot = tokio::time::timeout(wait_for_slot, in_flight.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|permit| InFlight::new(permit, proxy.metrics().clone()));
            let response = match slot {
                Some(_) => proxy.handle(req, conn_info).await,
                None => proxy.refuse_busy(req, conn_info).await,
            };
            let progress = ResponseProgress::of_current_stream()
                .unwrap_or_else(|| ResponseProgress::new(tracker));
            Ok::<_, Infallible>(response.map(|body| GuardedBody::new(body, guard, progress, slot)))
        }
    });
    let (ended, error) = match serving.tls {
        None => {
            let progress = tracker.clone();
            let sent = metrics.clone();
            let io = LaneIo::new(stream, lane.unwrap_or_default(), move |n| {
                progress.progressed(progress.stamp());
                sent.sendfile_sent(n);
            });
            let io = TrackedIo::new(io, tracker.clone());
            let conn = builder.serve_connection(TokioIo::new(io), service);
            connection::supervise(
                conn,
                |c| c.graceful_shutdown(),
                &tracker,
                &serving.limits,
                serving.stop,
            )
            .await
        }
        Some(acceptor) => {
            let io = TrackedIo::new(stream, tracker.clone());
            let stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        metrics.connection_closed(Ended::Closed.as_str());
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        metrics.connection_closed(Ended::HeaderTimeout.as_str());
                        return;
                    }
                };
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            connection::supervise(
                conn,
                |c| c.graceful_shutdown(),
                &tracker,
                &serving.limits,
                serving.stop,
            )
            .await
        }
    };
    metrics.connection_closed(ended.as_str());
    // The responses that went with a stalled connection (h2 streams dropped one by one earlier
    // were counted then).
    for _ in 0..tracker.stalled_at_close() {
        metrics.response_stalled();
    }
    match (ended, error) {
        (_, Some(e)) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
        (Ended::Closed, None) => {}
        (why, None) => {
            tracing::debug!(%peer, reason = why.as_str(), "connection closed by archway")
        }
    }
}
