//! Accepting connections, for both listeners (registry and admin): the next connection until
//! shutdown, with accept errors backed off instead of spun on.

use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

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
