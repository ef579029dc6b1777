//! `archway explain`: runs one manifest request through the real pipeline (routing, caches,
//! upstream, platform decision) with the hints given on the command line, and reports why the
//! answer is what it is.

use crate::config::Config;
use crate::image_ref::ImageRef;
use crate::proxy::{ConnInfo, Proxy};
use crate::route_policy::Decision;
use http::{HeaderValue, Method, Request};
use http_body_util::BodyExt;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Default, Clone)]
pub struct Hints {
    pub user_agent: Option<String>,
    /// Each is one Accept header line, as the client would send it.
    pub accept: Vec<String>,
    /// Sent as `X-Meta-Platform`.
    pub platform: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub host: Option<String>,
    /// The listening port the request arrives on (for `port` routes).
    pub port: Option<u16>,
    pub head: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub image: String,
    pub request: String,
    pub status: u16,
    pub content_type: Option<String>,
    pub docker_content_digest: Option<String>,
    pub content_length: Option<u64>,
    pub error: Option<String>,
    pub decision: Option<Decision>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Init(#[from] crate::proxy::ProxyInitError),
    #[error("bad hint: {0}")]
    Hint(String),
}

/// `config.data_dir` should be a scratch directory: explain fills a cache like any request.
pub async fn explain(
    config: Config,
    image: &ImageRef,
    input: &str,
    hints: &Hints,
) -> Result<Report, ExplainError> {
    let port = hints
        .port
        .or_else(|| config.listen.first().map(|a| a.port()))
        .unwrap_or(5000);
    let proxy = Proxy::new(config)?;
    let path = image.manifest_path();
    let mut req = Request::builder()
        .method(if hints.head {
            Method::HEAD
        } else {
            Method::GET
        })
        .uri(&path);
    let hint = |v: &str| HeaderValue::from_str(v).map_err(|_| ExplainError::Hint(v.to_owned()));
    if let Some(ua) = &hints.user_agent {
        req = req.header(http::header::USER_AGENT, hint(ua)?);
    }
    for a in &hints.accept {
        req = req.header(http::header::ACCEPT, hint(a)?);
    }
    if let Some(p) = &hints.platform {
        req = req.header("x-meta-platform", hint(p)?);
    }
    if let Some(h) = &hints.host {
        req = req.header(http::header::HOST, hint(h)?);
    }
    let req = req
        .extension(crate::proxy::ExplainRequest)
        .body(())
        .map_err(|e| ExplainError::Hint(e.to_string()))?;
    let client_ip = hints.client_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let conn = ConnInfo {
        local: Some(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port)),
        peer: Some(SocketAddr::new(client_ip, 0)),
    };
    let (response, notes) = proxy.answer(req, conn).await;
    let header = |n: &str| {
        response
            .headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let report = Report {
        image: input.to_owned(),
        request: format!("{} {path}", if hints.head { "HEAD" } else { "GET" }),
        status: response.status().as_u16(),
        content_type: header("content-type"),
        docker_content_digest: header("docker-content-digest"),
        content_length: header("content-length").and_then(|v| v.parse().ok()),
        error: notes.error.clone(),
        decision: notes.decision.map(|d| *d),
    };
    // Drain the body so a streamed answer finishes cleanly.
    let _ = response.into_body().collect().await;
    Ok(report)
}

impl Report {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &str| {
            let _ = writeln!(out, "{k:<14}{v}");
        };
        line("image", &self.image);
        line("request", &self.request);
        if let Some(d) = &self.decision {
            line(
                "upstream",
                &format!("{} (selected by {})", d.upstream, d.selected_by),
            );
            line("repository", &d.repository);
            line(
                "route",
                &d.route
                    .map(|r| format!("route[{r}]"))
                    .unwrap_or_else(|| "none matched (defaults: rewrite = legacy)".into()),
            );
            if d.manifest_digest.is_empty() {
                line("manifest", "not found (see error)");
            } else {
                line(
                    "manifest",
                    &format!("{} {}", d.manifest_digest, d.manifest_media_type),
                );
                line(
                    "rewrite",
                    &format!(
                        "{} ({})",
                        if d.rewrite { "yes" } else { "no" },
                        d.rewrite_reason
                    ),
                );
            }
            if let (Some(p), Some(s)) = (&d.platform, d.platform_source) {
                line("platform", &format!("{p} (from {})", s.as_str()));
            }
            if !d.offered.is_empty() {
                line("index offers", &d.offered.join(", "));
            }
            for (i, s) in d.steps.iter().enumerate() {
                line(
                    if i == 0 { "chosen" } else { "then" },
                    &format!(
                        "{} {} {} — {}",
                        s.chosen_digest,
                        s.chosen_media_type,
                        s.chosen_platform.as_deref().unwrap_or("(no platform)"),
                        s.reason
                    ),
                );
            }
            if let Some(layers) = &d.layers {
                line("layers", &format!("zstd read: {layers}"));
            }
            if d.layers_converted {
                line(
                    "layers converted",
                    "zstd layers → their tars (digest = the config's diff_id)",
                );
            }
            if d.converted {
                line(
                    "converted",
                    "OCI manifest → Docker schema2 for a client without OCI support",
                );
            }
        }
        line("status", &self.status.to_string());
        if let Some(e) = &self.error {
            line("error", e);
        }
        if let Some(dg) = &self.docker_content_digest {
            line(
                "answer",
                &format!(
                    "{dg} {} ({} bytes)",
                    self.content_type.as_deref().unwrap_or("-"),
                    self.content_length.unwrap_or(0)
                ),
            );
        }
        out
    }
}
