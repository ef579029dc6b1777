//! A small blocking HTTP/1.1 client for the tests, built on the crate's own hyper stack so the
//! e2e tier adds no dependency. One runtime per call: the tests are sequential within a thread.

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request to a loopback URL and reads the whole answer.
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Response, String> {
    assert_loopback(url);
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let mut req = Request::builder().method(method.clone()).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(body.into()))
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let exchange = async {
            let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>(Response {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(120), exchange)
            .await
            .map_err(|_| "timed out after 120 s".to_string())?
    })
    .map_err(|e| format!("{method} {url}: {e}"))
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    send("GET", url, headers, Bytes::new())
}

/// The tests never talk to anything but this machine.
fn assert_loopback(url: &str) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("test URL must be plain http on loopback: {url}"));
    assert!(
        rest.starts_with("127.0.0.1:")
            || rest.starts_with("localhost:")
            || rest.starts_with("[::1]:"),
        "test URL must be loopback: {url}"
    );
}
