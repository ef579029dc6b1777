//! `/pins` on the admin listener: `GET` lists the pins, `POST` adds one (`{"image": …,
//! "platforms": […]}`), `DELETE ?image=…` removes one; the changes only with `admin_pins`.
//! The admin listener is unauthenticated by design (a private address): `admin_pins = false`
//! where whoever reaches it must not change what the cache keeps.

use crate::body::{self, ResponseBody};
use crate::proxy::pins::PinError;
use crate::proxy::Proxy;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;

/// A `POST /pins` body, at most: one image and its platforms.
const MAX_BODY: usize = 64 << 10;
/// How long the body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPin {
    image: String,
    #[serde(default)]
    platforms: Vec<String>,
}

/// Answers a request for `/pins`; `proxy` is `None` when the listener has no proxy behind it.
pub async fn handle<B>(proxy: Option<&Arc<Proxy>>, req: Request<B>) -> Response<ResponseBody>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let Some(proxy) = proxy else {
        return message(StatusCode::NOT_FOUND, "no pins here");
    };
    let method = req.method().clone();
    let writes = proxy.pins().admin_writes;
    match method {
        Method::GET | Method::HEAD => {
            let list = proxy.pins().list();
            let mut r = json(StatusCode::OK, &list);
            if method == Method::HEAD {
                *r.body_mut() = body::empty();
            }
            r
        }
        Method::POST | Method::DELETE if !writes => message(
            StatusCode::FORBIDDEN,
            "admin_pins = false: pins are changed in the config only",
        ),
        Method::POST => {
            let raw = match read_body(req.into_body()).await {
                Ok(b) => b,
                Err(e) => return message(StatusCode::BAD_REQUEST, &e),
            };
            let new: NewPin = match serde_json::from_slice(&raw) {
                Ok(n) => n,
                Err(e) => {
                    return message(
                        StatusCode::BAD_REQUEST,
                        &format!("expected {{\"image\": \"…\", \"platforms\": [\"…\"]}}: {e}"),
                    )
                }
            };
            match proxy.add_pin(&new.image, &new.platforms).await {
                Ok(added) => {
                    let status = if added {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    tracing::info!(image = %new.image, platforms = ?new.platforms, added, "pinned (admin API)");
                    let spec = proxy.pins().spec(&new.image, &new.platforms);
                    let view = spec.ok().and_then(|s| {
                        proxy.pins().list().into_iter().find(|p| {
                            p.upstream == s.upstream
                                && p.repository == s.repository
                                && p.reference == s.reference
                        })
                    });
                    json(status, &view)
                }
                Err(e) => pin_error(e),
            }
        }
        Method::DELETE => {
            let Some(image) = query_value(req.uri().query(), "image") else {
                return message(StatusCode::BAD_REQUEST, "DELETE /pins?image=IMAGE");
            };
            match proxy.remove_pin(&image).await {
                Ok(Some(view)) => {
                    tracing::info!(image = %image, "unpinned (admin API)");
                    json(StatusCode::OK, &view)
                }
                Ok(None) => message(StatusCode::NOT_FOUND, &format!("`{image}` is not pinned")),
                Err(e) => pin_error(e),
            }
        }
        _ => message(StatusCode::METHOD_NOT_ALLOWED, "GET, POST or DELETE /pins"),
    }
}

fn pin_error(e: PinError) -> Response<ResponseBody> {
    let status = match e {
        PinError::InConfig(_) => StatusCode::CONFLICT,
        PinError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::BAD_REQUEST,
    };
    message(status, &e.to_string())
}

async fn read_body<B>(body: B) -> Result<Bytes, String>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let read = async {
        let mut body = std::pin::pin!(body);
        let mut out = Vec::new();
        while let Some(frame) = body.as_mut().frame().await {
            let frame = frame.map_err(|e| format!("body: {e}"))?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > MAX_BODY {
                    return Err(format!("body: more than {MAX_BODY} bytes"));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(out))
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| format!("body: not sent within {BODY_TIMEOUT:?}"))?
}

/// `name`'s value in a query string, percent-decoded (`+` as a space).
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))?
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = bytes.next()?;
                let lo = bytes.next()?;
                let pair = [hi, lo];
                let hex = std::str::from_utf8(&pair).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<ResponseBody> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"null".to_vec());
    bytes.push(b'\n');
    respond(status, "application/json", Bytes::from(bytes))
}

fn message(status: StatusCode, text: &str) -> Response<ResponseBody> {
    json(status, &serde_json::json!({ "error": text }))
}

fn respond(status: StatusCode, content_type: &'static str, bytes: Bytes) -> Response<ResponseBody> {
    let len = bytes.len() as u64;
    let mut r = Response::new(body::full(bytes));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let q = Some("x=1&image=docker.io%2Flibrary%2Falpine%3A3.20&y=2");
        assert_eq!(
            query_value(q, "image").as_deref(),
            Some("docker.io/library/alpine:3.20")
        );
        assert_eq!(
            query_value(Some("image=a+b"), "image").as_deref(),
            Some("a b")
        );
        assert_eq!(query_value(Some("image=%zz"), "image"), None);
        assert_eq!(query_value(Some("image=%2"), "image"), None);
        assert_eq!(query_value(Some("other=1"), "image"), None);
        assert_eq!(query_value(None, "image"), None);
    }
}
