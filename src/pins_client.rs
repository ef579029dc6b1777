//! The admin API's `/pins` from the command line: `archway pins --admin URL` lists them, and
//! [`add`] / [`remove`] are what other commands call (`archway warm --pin`) to pin an image on
//! a running archway. Plain HTTP, as the admin listener is.

use crate::proxy::pins::PinView;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// A request's whole exchange.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (a list of many pins with their digests).
const MAX_ANSWER: usize = 64 << 20;

/// `GET /pins`.
pub async fn list(admin: &str) -> Result<Vec<PinView>, String> {
    let (_, body) = send(admin, Method::GET, "/pins", None).await?;
    serde_json::from_slice(&body).map_err(|e| format!("GET /pins: not a pin list: {e}"))
}

/// `POST /pins`: pins `image` (as `archway warm` takes it) for `platforms` of an index (empty:
/// all). `Ok(true)`: newly pinned; `Ok(false)`: it was pinned already.
pub async fn add(admin: &str, image: &str, platforms: &[String]) -> Result<bool, String> {
    let body = serde_json::json!({ "image": image, "platforms": platforms });
    let (status, _) = send(admin, Method::POST, "/pins", Some(body.to_string())).await?;
    Ok(status == http::StatusCode::CREATED)
}

/// `DELETE /pins?image=…`: `Ok(false)` when it was not pinned.
pub async fn remove(admin: &str, image: &str) -> Result<bool, String> {
    let path = format!("/pins?image={}", percent_encode(image));
    match send(admin, Method::DELETE, &path, None).await {
        Ok(_) => Ok(true),
        Err(e) if e.contains("404") => Ok(false),
        Err(e) => Err(e),
    }
}

/// The pins as a table: image, digest, manifests, blobs, bytes.
pub fn table(pins: &[PinView]) -> String {
    let mut out = format!(
        "{:<48} {:<8} {:<19} {:>9} {:>6} {:>14}\n",
        "IMAGE", "ORIGIN", "DIGEST", "MANIFESTS", "BLOBS", "BYTES"
    );
    for p in pins {
        let digest = p
            .digest
            .as_deref()
            .map(|d| d.chars().take(19).collect::<String>())
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<48} {:<8} {:<19} {:>9} {:>6} {:>14}\n",
            p.image,
            p.origin,
            digest,
            p.manifests.len(),
            p.blobs.len(),
            p.bytes
        ));
    }
    out
}

async fn send(
    admin: &str,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<(http::StatusCode, Bytes), String> {
    let base = admin.trim_end_matches('/');
    if !base.starts_with("http://") {
        return Err(format!(
            "--admin {admin}: http://host:port of the admin listener"
        ));
    }
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("{base}{path}");
    let mut req = Request::builder().method(method.clone()).uri(&url);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("{method} {url}: {e}"))?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > MAX_ANSWER {
                    return Err(format!("{method} {url}: answer over {MAX_ANSWER} bytes"));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok((status, Bytes::from(out)))
    };
    let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{method} {url}: no answer in {TIMEOUT:?}"))??;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(format!("{method} {url}: {status} {}", text.trim()));
    }
    Ok((status, body))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
