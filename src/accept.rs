//! Accepting connections, for both listeners (registry and admin): a free connection slot, the
//! next connection until shutdown (accept errors backed off instead of spun on), and the wait for
//! every connection to end.

use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// The next connection, or `None` once `stop` turns true. Accept errors (out of file descriptors
/// and the like) back off instead of spinning.
pub async fn next_connection(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
    which: &'static str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(listener = which, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return None,
        }
    }
}

/// A connection slot (one of the listener's `max_connections`), or `None` once `stop` turns
/// true. At the cap, new connections wait in the kernel's backlog until one closes.
pub async fn slot(
    slots: &Arc<Semaphore>,
    stop: &mut watch::Receiver<bool>,
) -> Option<OwnedSemaphorePermit> {
    if *stop.borrow() {
        return None;
    }
    tokio::select! {
        permit = slots.clone().acquire_owned() => permit.ok(),
        _ = stop.changed() => None,
    }
}

/// Waits (at most `limit`) until every connection gave its slot back.
pub async fn drained(slots: &Arc<Semaphore>, max: u32, limit: Duration) -> bool {
    tokio::time::timeout(limit, slots.acquire_many(max))
        .await
        .is_ok()
}
