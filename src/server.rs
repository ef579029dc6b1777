//! Listeners, HTTP/1.1 + h2 connections, graceful shutdown.

use crate::accept;
use crate::admin::{self, Admin};
use crate::config::Config;
use crate::proxy::{ConnInfo, Proxy, ProxyInitError};
use crate::tls::{ServerTls, TlsError};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

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
}

impl Archway {
    pub async fn start(config: Config) -> Result<Archway, StartError> {
        let listen = config.listen.clone();
        let admin_listen = config.admin_listen;
        let data_dir = config.data_dir.clone();
        // Certificates first: a bad file stops the start before anything listens.
        let tls = config.tls.as_ref().map(ServerTls::new).transpose()?;
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
            tasks.push(tokio::spawn(serve(
                listener,
                proxy.clone(),
                stop.subscribe(),
                tls.as_ref().map(ServerTls::acceptor),
            )));
        }
        let mut admin_addr = None;
        if let Some(addr) = admin_listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            let local = listener.local_addr().unwrap_or(addr);
            admin_addr = Some(local);
            tracing::info!(addr = %local, "admin listening (/metrics, /healthz, /readyz)");
            let state = Arc::new(Admin::new(proxy.metrics().clone(), data_dir));
            tasks.push(tokio::spawn(admin::serve(
                listener,
                state,
                stop.subscribe(),
            )));
        }
        Ok(Archway {
            addrs,
            admin_addr,
            proxy,
            stop,
            tasks,
            tls,
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

    /// Stops accepting, lets open requests finish (up to a drain timeout) and verified blobs
    /// finish their commit, then returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.proxy.blob_store().finish_commits(DRAIN_TIMEOUT).await;
    }
}

async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    mut stop: watch::Receiver<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let Some((stream, peer)) = accept::next_connection(&listener, &mut stop, "registry").await
        else {
            break;
        };
        let _ = stream.set_nodelay(true);
        let conn_info = ConnInfo {
            local: stream.local_addr().ok(),
            peer: Some(peer),
        };
        let proxy = proxy.clone();
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, conn_info).await) }
        });
        // The connection's lines (and, over HTTP/1.1, its requests' spans) nest in this one.
        let span = tracing::info_span!("connection", %peer);
        let Some(acceptor) = tls.clone() else {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn.into_owned());
            tokio::spawn(
                async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                .instrument(span),
            );
            continue;
        };
        // The handshake runs in the connection's own task so a slow client never holds up
        // accepting; the watcher makes shutdown wait for it too.
        let watcher = graceful.watcher();
        let builder = builder.clone();
        tokio::spawn(
            async move {
                let stream = match tokio::time::timeout(
                    TLS_HANDSHAKE_TIMEOUT,
                    acceptor.accept(stream),
                )
                .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                };
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(conn.into_owned()).await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing");
    }
}
