//! A tiny static HTTP/1.1 server standing in for a foreign layer host (mcr.microsoft.com): it
//! answers every GET with the bytes set for its path (404 otherwise), counts requests, and can
//! be stopped. Raw tokio, no framework: the e2e tier uses it too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Default)]
struct Shared {
    files: Mutex<HashMap<String, Vec<u8>>>,
    paths: Mutex<Vec<String>>,
    requests: AtomicUsize,
}

pub struct ForeignHost {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl ForeignHost {
    pub async fn start() -> ForeignHost {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    s.requests.fetch_add(1, Ordering::SeqCst);
                    s.paths.lock().unwrap().push(path.clone());
                    let body = s.files.lock().unwrap().get(&path).cloned();
                    let reply = match body {
                        Some(b) => {
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\r\n",
                                b.len()
                            )
                            .into_bytes();
                            r.extend_from_slice(&b);
                            r
                        }
                        None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(),
                    };
                    let _ = conn.write_all(&reply).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        ForeignHost { addr, shared, task }
    }

    /// `http://127.0.0.1:port`: the `foreign_layer_hosts` entry that allows this host.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves `bytes` at `path`; returns the full url.
    pub fn put(&self, path: &str, bytes: &[u8]) -> String {
        self.shared
            .files
            .lock()
            .unwrap()
            .insert(path.to_owned(), bytes.to_vec());
        format!("{}{path}", self.origin())
    }

    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    #[allow(dead_code)]
    pub fn paths(&self) -> Vec<String> {
        self.shared.paths.lock().unwrap().clone()
    }

    /// Closes the listener: connections are refused from now on.
    #[allow(dead_code)]
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for ForeignHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}
