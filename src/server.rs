//! Listeners, HTTP/1.1 + h2 connections, graceful shutdown.

use crate::admin::{self, Admin};
use crate::config::Config;
use crate::proxy::{ConnInfo, Proxy, ProxyInitError};
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

/// How long open connections get to finish after shutdown is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Proxy(#[from] ProxyInitError),
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
}

impl Archway {
    pub async fn start(config: Config) -> Result<Archway, StartError> {
        let listen = config.listen.clone();
        let admin_listen = config.admin_listen;
        let data_dir = config.data_dir.clone();
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
            tracing::info!(addr = %local, "listening");
            tasks.push(tokio::spawn(serve(
                listener,
                proxy.clone(),
                stop.subscribe(),
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
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
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

    /// Stops accepting, lets open requests finish (up to a drain timeout), then returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn serve(listener: TcpListener, proxy: Arc<Proxy>, mut stop: watch::Receiver<bool>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
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
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing");
    }
}
