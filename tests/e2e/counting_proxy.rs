//! A counting HTTP proxy in front of the upstream registry: every request that reaches upstream
//! is recorded (method and path) when it arrives, so a fetch cut short by a crash counts too, and
//! chosen responses can be slowed down to keep a fill in flight.

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// Response bodies of GETs whose path ends in `suffix` are sent at `bytes_per_sec`, for the
/// next `times` such requests.
#[derive(Clone, Debug)]
struct Throttle {
    suffix: String,
    bytes_per_sec: usize,
    times: usize,
}

#[derive(Default)]
struct State {
    /// (method, path) → requests seen.
    counts: BTreeMap<(String, String), usize>,
    throttle: Option<Throttle>,
    /// Set once the upstream is meant to be gone: answer 502 without forwarding.
    refuse: bool,
}

pub struct CountingProxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
    // Dropping the runtime stops the proxy.
    _rt: tokio::runtime::Runtime,
}

type ProxyBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

impl CountingProxy {
    /// Starts the proxy on a free loopback port, forwarding to `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> CountingProxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new(Mutex::new(State::default()));
        let upstream = Arc::new(upstream.trim_end_matches('/').to_owned());
        let st = state.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (st, client, upstream) = (st.clone(), client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        forward(req, st.clone(), client.clone(), upstream.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        CountingProxy {
            port,
            state,
            _rt: rt,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many `method` requests for exactly `path` reached the proxy.
    pub fn count(&self, method: &str, path: &str) -> usize {
        let s = self.state.lock().expect("proxy state");
        s.counts
            .get(&(method.to_owned(), path.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Every (method, path) seen, with its count.
    pub fn counts(&self) -> BTreeMap<(String, String), usize> {
        self.state.lock().expect("proxy state").counts.clone()
    }

    /// The total number of requests seen.
    pub fn total(&self) -> usize {
        self.counts().values().sum()
    }

    /// Slows the next `times` GETs of a path ending in `suffix` to `bytes_per_sec`.
    pub fn throttle(&self, suffix: &str, bytes_per_sec: usize, times: usize) {
        self.state.lock().expect("proxy state").throttle = Some(Throttle {
            suffix: suffix.to_owned(),
            bytes_per_sec,
            times,
        });
    }

    /// From now on every request is counted and answered 502 without reaching upstream.
    pub fn refuse(&self) {
        self.state.lock().expect("proxy state").refuse = true;
    }

    /// The counts as lines, for failure messages.
    pub fn show(&self) -> String {
        self.counts()
            .iter()
            .map(|((m, p), n)| format!("  {n} × {m} {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

async fn forward(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    upstream: Arc<String>,
) -> Result<Response<ProxyBody>, std::io::Error> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let (throttle, refuse) = {
        let mut s = state.lock().expect("proxy state");
        *s.counts.entry((method.clone(), path.clone())).or_insert(0) += 1;
        let mut throttle = None;
        if let Some(t) = s.throttle.as_mut() {
            if method == "GET" && t.times > 0 && path.ends_with(&t.suffix) {
                t.times -= 1;
                throttle = Some(t.bytes_per_sec);
            }
        }
        (throttle, s.refuse)
    };
    if refuse {
        return Ok(plain(502, "upstream is down (the test stopped it)"));
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri: Uri = format!("{upstream}{pq}")
        .parse()
        .map_err(std::io::Error::other)?;
    let mut out = Request::builder().method(parts.method).uri(uri);
    for (k, v) in &parts.headers {
        if k != http::header::HOST {
            out = out.header(k, v);
        }
    }
    let out = out.body(Full::new(body)).map_err(std::io::Error::other)?;
    let resp = match client.request(out).await {
        Ok(r) => r,
        Err(e) => return Ok(plain(502, &format!("upstream: {e}"))),
    };
    let (parts, body) = resp.into_parts();
    let body: ProxyBody = match throttle {
        None => body.map_err(std::io::Error::other).boxed(),
        Some(rate) => slowed(body, rate).boxed(),
    };
    Ok(Response::from_parts(parts, body))
}

fn plain(status: u16, text: &str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(text.to_owned()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
    r
}

/// The body re-sent in 64 KiB pieces at `rate` bytes per second.
fn slowed(mut body: Incoming, rate: usize) -> ChanBody {
    const PIECE: usize = 64 << 10;
    let (tx, rx) = mpsc::channel(4);
    let pause = Duration::from_secs_f64(PIECE as f64 / rate.max(1) as f64);
    tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    return;
                }
            };
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            while !data.is_empty() {
                let piece = data.split_to(data.len().min(PIECE));
                tokio::time::sleep(pause).await;
                if tx.send(Ok(piece)).await.is_err() {
                    // The receiver went away (the replica died): stop reading upstream.
                    return;
                }
            }
        }
    });
    ChanBody(rx)
}

struct ChanBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}
