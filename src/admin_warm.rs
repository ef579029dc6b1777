//! The admin listener's warm endpoints: `POST /warm` (a JSON body: images, platforms,
//! with_attestations, for, jobs) answers 202 with the job's id; `GET /warm/<id>` its progress
//! and outcome; `GET /warm` every remembered job. Off with `admin_warm = false` (403).

use crate::body::{self, ResponseBody};
use crate::warm::jobs::{JobError, WarmJobs, MAX_BODY};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use std::time::Duration;

/// A `POST /warm` body must arrive within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `path` is one of these endpoints.
pub fn owns(path: &str) -> bool {
    path == "/warm" || path.starts_with("/warm/")
}

pub async fn handle<B>(jobs: Option<&WarmJobs>, req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(jobs) = jobs else {
        return json(
            StatusCode::FORBIDDEN,
            &error_body(&JobError::Off.to_string()),
        );
    };
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/warm") => {
            let limited = Limited::new(req.into_body(), MAX_BODY);
            let body = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(_)) => {
                    return json(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &error_body(&format!("the body is over {MAX_BODY} bytes or broke off")),
                    )
                }
                Err(_) => {
                    return json(
                        StatusCode::REQUEST_TIMEOUT,
                        &error_body("the body did not arrive in time"),
                    )
                }
            };
            match jobs.start(&body) {
                Ok(id) => {
                    let mut r = json(
                        StatusCode::ACCEPTED,
                        &serde_json::json!({ "id": id, "status": format!("/warm/{id}") }),
                    );
                    if let Ok(v) = HeaderValue::from_str(&format!("/warm/{id}")) {
                        r.headers_mut().insert(header::LOCATION, v);
                    }
                    r
                }
                Err(e) => {
                    let status = match e {
                        JobError::Off => StatusCode::FORBIDDEN,
                        JobError::Busy => StatusCode::TOO_MANY_REQUESTS,
                        JobError::Invalid(_) => StatusCode::BAD_REQUEST,
                    };
                    json(status, &error_body(&e.to_string()))
                }
            }
        }
        (Method::GET, "/warm") => json(StatusCode::OK, &serde_json::json!(jobs.list())),
        (Method::GET, p) => match jobs.report(p.trim_start_matches("/warm/")) {
            Some(r) => json(StatusCode::OK, &serde_json::json!(r)),
            None => json(StatusCode::NOT_FOUND, &error_body("no such warm job")),
        },
        _ => json(
            StatusCode::METHOD_NOT_ALLOWED,
            &error_body("POST /warm, GET /warm, GET /warm/<id>"),
        ),
    }
}

fn error_body(message: &str) -> serde_json::Value {
    serde_json::json!({ "error": message })
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<ResponseBody> {
    let mut bytes = serde_json::to_vec_pretty(v).unwrap_or_default();
    bytes.push(b'\n');
    let len = bytes.len() as u64;
    let mut r = Response::new(body::full(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}
