//! A plain HTTP/1 test client (hyper-util legacy client) that keeps a broken-off body's bytes and
//! error apart, plus a raw-socket request for paths no URI type would let through.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A whole response: the body bytes received and, if the body broke off, why.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub body_error: Option<String>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// All values of a header.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// `errors[0].code` of a registry error body.
    pub fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not a registry error body: {:?}", self.text()))
            .to_owned()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `sha256:<hex>` of the body received.
    pub fn sha256(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.body)))
    }

    /// True only for a clean, complete body.
    pub fn complete(&self) -> bool {
        self.body_error.is_none()
    }
}

#[derive(Clone)]
pub struct TestClient {
    inner: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Default for TestClient {
    fn default() -> Self {
        Self::new()
    }
}

impl TestClient {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        TestClient {
            inner: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(5))
                .build(connector),
            timeout: Duration::from_secs(20),
        }
    }

    /// Drop pooled connections unused for `idle` (keep it below the server's idle timeout, or a
    /// request may go out on a connection the server is closing).
    pub fn with_pool_idle_timeout(mut self, idle: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        self.inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle)
            .build(connector);
        self
    }

    /// Connect from `ip` (any of 127.0.0.0/8 is this host): a second client address.
    pub fn with_local_address(mut self, ip: std::net::IpAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_local_address(Some(ip));
        self.inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build(connector);
        self
    }

    /// Give up on a whole exchange (headers and body) after `t`.
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Send a request; `Err` when no response head arrives (connection refused, reset, timeout).
    pub async fn try_request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| format!("request failed: {e:?}"))?;
            let (parts, mut body) = resp.into_parts();
            let mut buf = BytesMut::new();
            let mut body_error = None;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            buf.extend_from_slice(d);
                        }
                    }
                    Err(e) => {
                        body_error = Some(format!("{e:?}"));
                        break;
                    }
                }
            }
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body: buf.freeze(),
                body_error,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {:?}", self.timeout)),
        }
    }

    /// Only the response head (within the timeout); the body is left to the caller.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        match tokio::time::timeout(self.timeout, self.inner.request(req)).await {
            Ok(r) => r.map_err(|e| format!("request failed: {e:?}")),
            Err(_) => Err(format!("timed out after {:?}", self.timeout)),
        }
    }

    pub async fn request(&self, method: Method, url: &str, headers: &[(&str, &str)]) -> Reply {
        self.try_request(method.clone(), url, headers)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.request(Method::GET, url, &[]).await
    }

    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Reply {
        self.request(Method::GET, url, headers).await
    }

    pub async fn head(&self, url: &str) -> Reply {
        self.request(Method::HEAD, url, &[]).await
    }
}

/// A raw HTTP/1.1 exchange: the request target is written byte for byte. Returns status, the
/// head's header lines (lowercased names) and the de-chunked body.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
) -> (u16, Vec<(String, String)>, Bytes) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: archway-test\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("raw request timed out")
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("no status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    (status, headers, Bytes::from(body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            return out;
        };
        if size == 0 || b.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
}
