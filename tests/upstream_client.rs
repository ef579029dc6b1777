//! The upstream client against small in-process registries on 127.0.0.1:0.

use archway::config::{Credentials, Secret, UpstreamConfig};
use archway::error::{ErrorCode, ProxyError, Side};
use archway::reference::RepositoryName;
use archway::upstream::{status_error, Missing, Upstream};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

// === a minimal test server ===

/// One request as a test server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    /// Path and query.
    target: String,
    headers: HeaderMap,
    version: Version,
}

impl Seen {
    fn authorization(&self) -> Option<&str> {
        self.headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
    }
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

type Reply = Response<Full<Bytes>>;
type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Server {
    serve_with(None, Duration::ZERO, Arc::new(handler)).await
}

/// Serves `handler` (after `delay`) over plain HTTP, or TLS when an acceptor is given.
async fn serve_with(
    tls: Option<tokio_rustls::TlsAcceptor>,
    delay: Duration,
    handler: Handler,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (handler, log, tls) = (handler.clone(), log.clone(), tls.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (handler, log) = (handler.clone(), log.clone());
                    async move {
                        let seen = Seen {
                            method: req.method().clone(),
                            target: req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            headers: req.headers().clone(),
                            version: req.version(),
                        };
                        log.lock().unwrap().push(seen.clone());
                        tokio::time::sleep(delay).await;
                        Ok::<_, Infallible>(handler(&seen))
                    }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    Server { addr, seen }
}

fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

/// A token server handing out `tok-1`, `tok-2`, … with the given `expires_in`.
async fn token_server(expires_in: Option<u64>) -> Server {
    token_server_delayed(expires_in, Duration::ZERO).await
}

async fn token_server_delayed(expires_in: Option<u64>, delay: Duration) -> Server {
    let n = AtomicUsize::new(0);
    serve_with(
        None,
        delay,
        Arc::new(move |_: &Seen| {
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            let body = match expires_in {
                Some(e) => format!(
                    r#"{{"token":"tok-{i}","expires_in":{e},"issued_at":"2024-05-01T10:00:00Z"}}"#
                ),
                None => format!(r#"{{"access_token":"tok-{i}"}}"#),
            };
            reply(200, &[("content-type", "application/json")], &body)
        }),
    )
    .await
}

/// A registry that wants `Bearer <one of valid>`; otherwise answers 401 with a challenge
/// naming `realm`. Authorized requests get `ok <path>`.
async fn bearer_registry(realm: String, valid: Arc<Mutex<Vec<String>>>) -> Server {
    serve(move |seen: &Seen| {
        let ok = seen
            .authorization()
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| valid.lock().unwrap().iter().any(|v| v == t));
        if ok {
            reply(200, &[], &format!("ok {}", seen.path()))
        } else {
            let repo = seen
                .path()
                .trim_start_matches("/v2/")
                .split("/manifests/")
                .next()
                .unwrap_or_default()
                .to_owned();
            let challenge = format!(
                r#"Bearer realm="{realm}",service="test-registry",scope="repository:{repo}:pull""#
            );
            reply(401, &[("www-authenticate", challenge.as_str())], "{}")
        }
    })
    .await
}

fn tokens(list: &[&str]) -> Arc<Mutex<Vec<String>>> {
    Arc::new(Mutex::new(list.iter().map(|s| s.to_string()).collect()))
}

fn config(url: &str) -> UpstreamConfig {
    let mut c = UpstreamConfig::from_url(Some("test"), url).unwrap();
    c.connect_timeout = Duration::from_secs(2);
    c.read_timeout = Duration::from_secs(5);
    c
}

fn upstream(url: &str) -> Upstream {
    Upstream::new(config(url)).unwrap()
}

fn repo(s: &str) -> RepositoryName {
    RepositoryName::parse(s).unwrap()
}

async fn get(up: &Upstream, r: &str, suffix: &str) -> (StatusCode, HeaderMap, Bytes) {
    get_with(up, r, suffix, HeaderMap::new()).await
}

async fn get_with(
    up: &Upstream,
    r: &str,
    suffix: &str,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, Bytes) {
    let resp = up
        .send(Method::GET, &repo(r), suffix, headers)
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

// === bearer flow ===

#[tokio::test]
async fn bearer_flow_end_to_end() {
    let auth = token_server(Some(300)).await;
    let reg = bearer_registry(format!("{}/token", auth.url()), tokens(&["tok-1"])).await;
    let up = upstream(&reg.url());

    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    // A client's own Authorization must never reach upstream.
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Basic Y2xpZW50OnNlY3JldA=="),
    );
    let (status, _, body) = get_with(&up, "team/app", "manifests/latest", headers).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok /v2/team/app/manifests/latest");
    assert_eq!(up.token_fetches(), 1);

    let seen = reg.seen();
    assert_eq!(seen.len(), 2, "anonymous, then with the token");
    assert_eq!(seen[0].authorization(), None);
    assert_eq!(seen[1].authorization(), Some("Bearer tok-1"));
    let ua = concat!("archway/", env!("CARGO_PKG_VERSION"));
    for s in &seen {
        assert_eq!(s.headers[header::USER_AGENT], ua);
        assert_eq!(s.headers[header::ACCEPT], "application/json");
    }

    let token_requests = auth.seen();
    assert_eq!(token_requests.len(), 1);
    assert_eq!(
        token_requests[0].target,
        "/token?service=test-registry&scope=repository%3Ateam%2Fapp%3Apull"
    );
    assert_eq!(token_requests[0].authorization(), None);
    assert_eq!(token_requests[0].headers[header::USER_AGENT], ua);
}

#[tokio::test]
async fn token_is_reused_across_sequential_requests() {
    let auth = token_server(Some(300)).await;
    let reg = bearer_registry(format!("{}/token", auth.url()), tokens(&["tok-1", "tok-2"])).await;
    let up = upstream(&reg.url());

    for i in 0..5 {
        let (status, _, _) = get(&up, "team/app", &format!("manifests/v{i}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(up.token_fetches(), 1);
    // One anonymous try, then every request carries the cached token up front.
    let seen = reg.seen();
    assert_eq!(seen.len(), 6);
    assert!(seen[1..]
        .iter()
        .all(|s| s.authorization() == Some("Bearer tok-1")));

    // Another repository is another scope: its own token.
    let (status, _, _) = get(&up, "team/other", "manifests/latest").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(up.token_fetches(), 2);
    assert!(auth.seen()[1]
        .target
        .ends_with("scope=repository%3Ateam%2Fother%3Apull"));
}

#[tokio::test]
async fn concurrent_cold_requests_fetch_one_token() {
    // The token endpoint is slow, so all requests hit their 401 while the fetch is under way.
    let auth = token_server_delayed(Some(300), Duration::from_millis(300)).await;
    let reg = bearer_registry(format!("{}/token", auth.url()), tokens(&["tok-1"])).await;
    let up = Arc::new(upstream(&reg.url()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let up = up.clone();
        tasks.push(tokio::spawn(async move {
            get(&up, "team/app", &format!("manifests/v{i}")).await.0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(up.token_fetches(), 1);
    assert_eq!(auth.seen().len(), 1);
}

#[tokio::test]
async fn short_lived_token_is_renewed_after_expiry() {
    let auth = token_server(Some(1)).await;
    let reg = bearer_registry(format!("{}/token", auth.url()), tokens(&["tok-1", "tok-2"])).await;
    let up = upstream(&reg.url());

    assert_eq!(get(&up, "a/b", "manifests/1").await.0, StatusCode::OK);
    assert_eq!(get(&up, "a/b", "manifests/2").await.0, StatusCode::OK);
    assert_eq!(up.token_fetches(), 1, "still valid right away");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get(&up, "a/b", "manifests/3").await.0, StatusCode::OK);
    assert_eq!(up.token_fetches(), 2, "expired token was not reused");
    let last = reg.seen().pop().unwrap();
    assert_eq!(last.authorization(), Some("Bearer tok-2"));
}

#[tokio::test]
async fn rejected_cached_token_is_renewed_once() {
    let auth = token_server(Some(300)).await;
    let valid = tokens(&["tok-1"]);
    let reg = bearer_registry(format!("{}/token", auth.url()), valid.clone()).await;
    let up = upstream(&reg.url());

    assert_eq!(get(&up, "a/b", "manifests/1").await.0, StatusCode::OK);
    // The registry revokes tok-1 and will accept tok-2.
    *valid.lock().unwrap() = vec!["tok-2".into()];
    assert_eq!(get(&up, "a/b", "manifests/2").await.0, StatusCode::OK);
    assert_eq!(up.token_fetches(), 2);
    let auths: Vec<_> = reg
        .seen()
        .iter()
        .map(|s| s.authorization().map(str::to_owned))
        .collect();
    assert_eq!(
        auths,
        [
            None,
            Some("Bearer tok-1".into()),
            Some("Bearer tok-1".into()),
            Some("Bearer tok-2".into())
        ]
    );

    // A registry that refuses every token: one fetch, one retry, then its 401 is the answer.
    valid.lock().unwrap().clear();
    let (status, _, _) = get(&up, "a/b", "manifests/3").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(up.token_fetches(), 3);
    assert_eq!(reg.seen().len(), 6);
}

#[tokio::test]
async fn basic_credentials_go_to_the_token_endpoint_only_when_configured() {
    let auth = token_server(None).await;
    let reg = bearer_registry(format!("{}/token", auth.url()), tokens(&["tok-1", "tok-2"])).await;

    let mut with = config(&reg.url());
    with.credentials = Some(Credentials {
        username: "alice".into(),
        password: Secret::new("wonderland"),
    });
    let with = Upstream::new(with).unwrap();
    assert_eq!(get(&with, "a/b", "manifests/x").await.0, StatusCode::OK);

    let without = upstream(&reg.url());
    assert_eq!(get(&without, "a/b", "manifests/x").await.0, StatusCode::OK);

    let token_requests = auth.seen();
    assert_eq!(token_requests.len(), 2);
    // base64("alice:wonderland")
    assert_eq!(
        token_requests[0].authorization(),
        Some("Basic YWxpY2U6d29uZGVybGFuZA==")
    );
    assert_eq!(token_requests[1].authorization(), None);
    // The registry itself only ever sees bearer tokens.
    assert!(reg
        .seen()
        .iter()
        .all(|s| s.authorization().is_none_or(|a| a.starts_with("Bearer "))));
}

#[tokio::test]
async fn basic_challenge_is_answered_with_configured_credentials() {
    let reg = serve(|seen: &Seen| {
        if seen.authorization() == Some("Basic dTpw") {
            reply(200, &[], "ok")
        } else {
            reply(
                401,
                &[("www-authenticate", r#"Basic realm="registry""#)],
                "",
            )
        }
    })
    .await;
    let mut c = config(&reg.url());
    c.credentials = Some(Credentials {
        username: "u".into(),
        password: Secret::new("p"),
    });
    let with = Upstream::new(c).unwrap();
    assert_eq!(get(&with, "a/b", "manifests/1").await.0, StatusCode::OK);
    // Having seen the Basic challenge, the next request sends credentials up front.
    assert_eq!(get(&with, "a/b", "manifests/2").await.0, StatusCode::OK);
    let auths: Vec<_> = reg
        .seen()
        .iter()
        .map(|s| s.authorization().map(str::to_owned))
        .collect();
    assert_eq!(
        auths,
        [None, Some("Basic dTpw".into()), Some("Basic dTpw".into())]
    );
    assert_eq!(with.token_fetches(), 0);

    let without = upstream(&reg.url());
    assert_eq!(
        get(&without, "a/b", "manifests/1").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(reg.seen().len(), 4, "no retry without credentials");
}

#[tokio::test]
async fn token_endpoint_refusal_is_an_upstream_error() {
    for (token_status, code, status) in [
        (401, ErrorCode::Unauthorized, StatusCode::UNAUTHORIZED),
        (403, ErrorCode::Denied, StatusCode::FORBIDDEN),
        (500, ErrorCode::Unavailable, StatusCode::BAD_GATEWAY),
    ] {
        let auth = serve(move |_: &Seen| reply(token_status, &[], "no")).await;
        let reg = bearer_registry(format!("{}/token?x=1", auth.url()), tokens(&[])).await;
        let up = upstream(&reg.url());
        let err = up
            .send(Method::GET, &repo("a/b"), "manifests/1", HeaderMap::new())
            .await
            .map_err(ProxyError::from)
            .unwrap_err();
        assert_eq!(err.side, Side::Upstream);
        assert_eq!((err.code, err.status), (code, status), "{err}");
        assert!(err.message.contains("test"), "{err}");
        assert!(!err.message.contains("x=1"), "no query strings: {err}");
    }

    // A token endpoint answering garbage.
    let auth = serve(|_: &Seen| reply(200, &[], "<html>")).await;
    let reg = bearer_registry(format!("{}/token", auth.url()), tokens(&[])).await;
    let err = upstream(&reg.url())
        .send(Method::GET, &repo("a/b"), "manifests/1", HeaderMap::new())
        .await
        .map_err(ProxyError::from)
        .unwrap_err();
    assert_eq!(err.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn library_prefix_is_added_for_docker_hub_style_upstreams() {
    let reg = serve(|seen: &Seen| reply(200, &[], seen.path())).await;
    let mut c = config(&reg.url());
    c.library_prefix = true;
    let up = Upstream::new(c).unwrap();
    let (_, _, body) = get(&up, "alpine", "manifests/3.20").await;
    assert_eq!(body, "/v2/library/alpine/manifests/3.20");
    let (_, _, body) = get(&up, "library/alpine", "tags/list?n=10&last=x").await;
    assert_eq!(body, "/v2/library/alpine/tags/list");
    assert_eq!(
        reg.seen()[1].target,
        "/v2/library/alpine/tags/list?n=10&last=x"
    );
}

// === redirects ===

#[tokio::test]
async fn blob_redirect_to_other_host_drops_authorization() {
    let cdn = serve(|seen: &Seen| {
        let range = seen
            .headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        reply(200, &[], &format!("blob bytes ({range})"))
    })
    .await;
    let auth = token_server(Some(300)).await;
    let cdn_url = cdn.url();
    let valid = tokens(&["tok-1"]);
    let reg = serve(move |seen: &Seen| {
        let ok = seen
            .authorization()
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| valid.lock().unwrap().iter().any(|v| v == t));
        if !ok {
            let realm = format!(r#"Bearer realm="{}/token",service="s""#, auth.url());
            return reply(401, &[("www-authenticate", realm.as_str())], "");
        }
        let location = format!("{cdn_url}/signed/blob?X-Amz-Signature=s3cr3t");
        reply(307, &[("location", location.as_str())], "")
    })
    .await;
    let up = upstream(&reg.url());
    let mut headers = HeaderMap::new();
    headers.insert(header::RANGE, HeaderValue::from_static("bytes=10-"));
    let digest = format!("blobs/sha256:{}", "a".repeat(64));
    let (status, _, body) = get_with(&up, "a/b", &digest, headers).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "blob bytes (bytes=10-)", "Range goes along");

    let reg_seen = reg.seen();
    assert_eq!(reg_seen.len(), 2);
    assert_eq!(reg_seen[1].authorization(), Some("Bearer tok-1"));
    let cdn_seen = cdn.seen();
    assert_eq!(cdn_seen.len(), 1);
    assert_eq!(cdn_seen[0].authorization(), None);
    assert_eq!(cdn_seen[0].target, "/signed/blob?X-Amz-Signature=s3cr3t");
}

#[tokio::test]
async fn relative_redirect_on_same_host_keeps_authorization() {
    let reg = serve(|seen: &Seen| {
        if seen.authorization() != Some("Basic dTpw") {
            return reply(401, &[("www-authenticate", "Basic realm=\"r\"")], "");
        }
        match seen.path() {
            "/storage/blob" => reply(200, &[], "stored"),
            "/v2/a/b/blobs/first" => reply(302, &[("location", "second?part=2")], ""),
            // Relative to /v2/a/b/blobs/second: climbs to /storage/blob.
            _ => reply(301, &[("location", "../../../../storage/blob")], ""),
        }
    })
    .await;
    let mut c = config(&reg.url());
    c.credentials = Some(Credentials {
        username: "u".into(),
        password: Secret::new("p"),
    });
    let up = Upstream::new(c).unwrap();
    let (status, _, body) = get(&up, "a/b", "blobs/first").await;
    assert_eq!((status, body), (StatusCode::OK, Bytes::from("stored")));
    let targets: Vec<_> = reg.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(
        targets,
        [
            "/v2/a/b/blobs/first",
            "/v2/a/b/blobs/first",
            "/v2/a/b/blobs/second?part=2",
            "/storage/blob"
        ]
    );
    assert!(reg.seen()[1..]
        .iter()
        .all(|s| s.authorization() == Some("Basic dTpw")));
}

#[tokio::test]
async fn redirect_loops_stop_after_five_hops() {
    let reg = serve(|_: &Seen| reply(302, &[("location", "/again")], "")).await;
    let up = upstream(&reg.url());
    // Redirects are followed only for blob GETs (where registries use them).
    let err = up
        .send(Method::GET, &repo("a/b"), "blobs/x", HeaderMap::new())
        .await
        .map_err(ProxyError::from)
        .unwrap_err();
    assert_eq!(err.status, StatusCode::BAD_GATEWAY);
    assert!(
        err.message.contains("redirected more than 5 times"),
        "{err}"
    );
    assert_eq!(reg.seen().len(), 6);
    assert!(reg.seen().iter().all(|s| s.method == Method::GET));
}

#[tokio::test]
async fn redirect_failure_does_not_leak_the_signed_url() {
    let dead = dead_port().await;
    let location = format!("http://127.0.0.1:{dead}/blob?X-Amz-Signature=s3cr3t");
    let reg = serve(move |_: &Seen| reply(307, &[("location", location.as_str())], "")).await;
    let err = upstream(&reg.url())
        .send(Method::GET, &repo("a/b"), "blobs/x", HeaderMap::new())
        .await
        .map_err(ProxyError::from)
        .unwrap_err();
    assert_eq!(err.status, StatusCode::BAD_GATEWAY);
    assert!(!err.message.contains("s3cr3t"), "{err}");
    assert!(!err.message.contains("Signature"), "{err}");
}

// === timeouts and transport errors ===

/// A port nothing listens on.
async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn connection_refused_is_bad_gateway() {
    let port = dead_port().await;
    let up = upstream(&format!("http://127.0.0.1:{port}"));
    let err = up
        .send(Method::GET, &repo("a/b"), "manifests/x", HeaderMap::new())
        .await
        .map_err(ProxyError::from)
        .unwrap_err();
    assert_eq!(err.side, Side::Upstream);
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert_eq!(err.status, StatusCode::BAD_GATEWAY);
    assert!(err.message.starts_with("upstream test"), "{err}");
}

#[tokio::test]
async fn stalled_server_is_gateway_timeout() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut c = config(&format!("http://{addr}"));
    c.connect_timeout = Duration::from_millis(300);
    c.read_timeout = Duration::from_millis(700);
    let up = Upstream::new(c).unwrap();
    let started = Instant::now();
    let err = up
        .send(Method::GET, &repo("a/b"), "manifests/x", HeaderMap::new())
        .await
        .map_err(ProxyError::from)
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(err.side, Side::Upstream);
    assert!(elapsed >= Duration::from_millis(700), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn body_stalling_mid_way_times_out() {
    // Sends headers and part of the body, then goes quiet with the connection open.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst part")
                .await;
            held.push(s);
        }
    });
    let mut c = config(&format!("http://{addr}"));
    c.read_timeout = Duration::from_millis(500);
    let up = Upstream::new(c).unwrap();
    let resp = up
        .send(Method::GET, &repo("a/b"), "blobs/x", HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first part");
    let started = Instant::now();
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert!(started.elapsed() < Duration::from_secs(3));
}

// === status mapping ===

/// What a 404 means, by the registry code a client sees for it.
fn missing(code: ErrorCode) -> Missing {
    match code {
        ErrorCode::ManifestUnknown => Missing::Manifest,
        ErrorCode::BlobUnknown => Missing::Blob,
        ErrorCode::NameUnknown => Missing::Repository,
        other => panic!("no 404 is {other:?}"),
    }
}

#[test]
fn status_error_table() {
    let none = HeaderMap::new();
    let mut retry = HeaderMap::new();
    retry.insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    // (upstream status, code for 404, expected (code, status) or None)
    type Case = (u16, ErrorCode, Option<(ErrorCode, u16)>);
    let cases: &[Case] = &[
        (200, ErrorCode::ManifestUnknown, None),
        (206, ErrorCode::BlobUnknown, None),
        (304, ErrorCode::ManifestUnknown, None),
        (307, ErrorCode::BlobUnknown, None),
        (
            401,
            ErrorCode::ManifestUnknown,
            Some((ErrorCode::Unauthorized, 401)),
        ),
        (
            403,
            ErrorCode::ManifestUnknown,
            Some((ErrorCode::Denied, 403)),
        ),
        (
            404,
            ErrorCode::ManifestUnknown,
            Some((ErrorCode::ManifestUnknown, 404)),
        ),
        (
            404,
            ErrorCode::BlobUnknown,
            Some((ErrorCode::BlobUnknown, 404)),
        ),
        (
            404,
            ErrorCode::NameUnknown,
            Some((ErrorCode::NameUnknown, 404)),
        ),
        (
            416,
            ErrorCode::BlobUnknown,
            Some((ErrorCode::RangeInvalid, 416)),
        ),
        (
            429,
            ErrorCode::ManifestUnknown,
            Some((ErrorCode::TooManyRequests, 429)),
        ),
        (
            400,
            ErrorCode::ManifestUnknown,
            Some((ErrorCode::Unknown, 400)),
        ),
        (
            405,
            ErrorCode::ManifestUnknown,
            Some((ErrorCode::Unknown, 405)),
        ),
        (
            500,
            ErrorCode::ManifestUnknown,
            Some((ErrorCode::Unavailable, 502)),
        ),
        (
            502,
            ErrorCode::ManifestUnknown,
            Some((ErrorCode::Unavailable, 502)),
        ),
        (
            503,
            ErrorCode::ManifestUnknown,
            Some((ErrorCode::Unavailable, 502)),
        ),
        (
            504,
            ErrorCode::ManifestUnknown,
            Some((ErrorCode::Unavailable, 504)),
        ),
    ];
    for (status, not_found, want) in cases {
        let status = StatusCode::from_u16(*status).unwrap();
        let got =
            status_error("docker.io", status, &retry, missing(*not_found)).map(ProxyError::from);
        match (got, want) {
            (None, None) => {}
            (Some(e), Some((code, st))) => {
                assert_eq!((e.code, e.status.as_u16()), (*code, *st), "{status}");
                assert_eq!(e.side, Side::Upstream);
                assert_eq!(e.message, format!("upstream docker.io answered {status}"));
                let keeps_retry = status.as_u16() == 429 || status.is_server_error();
                assert_eq!(e.retry_after.is_some(), keeps_retry, "{status}");
            }
            (got, want) => panic!("{status}: got {got:?}, want {want:?}"),
        }
    }
    let e = ProxyError::from(
        status_error("x", StatusCode::TOO_MANY_REQUESTS, &none, Missing::Blob).unwrap(),
    );
    assert_eq!(e.retry_after, None);
}

#[tokio::test]
async fn too_many_requests_keeps_retry_after() {
    let reg = serve(|seen: &Seen| {
        if seen.path().ends_with("/busy") {
            reply(503, &[("retry-after", "120")], "")
        } else {
            reply(
                429,
                &[("retry-after", "30"), ("ratelimit-remaining", "0;w=21600")],
                r#"{"errors":[{"code":"TOOMANYREQUESTS"}]}"#,
            )
        }
    })
    .await;
    let up = upstream(&reg.url());
    for (suffix, code, status, retry) in [
        ("manifests/latest", ErrorCode::TooManyRequests, 429, "30"),
        ("manifests/busy", ErrorCode::Unavailable, 502, "120"),
    ] {
        let resp = up
            .send(Method::GET, &repo("a/b"), suffix, HeaderMap::new())
            .await
            .unwrap();
        let e = ProxyError::from(
            status_error(
                &up.config().name,
                resp.status(),
                resp.headers(),
                Missing::Manifest,
            )
            .unwrap(),
        );
        assert_eq!((e.code, e.status.as_u16()), (code, status));
        assert_eq!(e.retry_after.as_ref().unwrap(), retry);
        assert!(e.is_upstream_unavailable());
    }
}

// === logs ===

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn debug_logs_name_token_fetches_and_redirects_without_secrets() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let cdn = serve(|_: &Seen| reply(200, &[], "blob")).await;
    let auth = token_server(Some(300)).await;
    let cdn_url = cdn.url();
    let reg = serve(move |seen: &Seen| {
        if seen.authorization() != Some("Bearer tok-1") {
            let realm = format!(r#"Bearer realm="{}/token",service="s""#, auth.url());
            return reply(401, &[("www-authenticate", realm.as_str())], "");
        }
        let location = format!("{cdn_url}/b?X-Amz-Signature=s3cr3t");
        reply(307, &[("location", location.as_str())], "")
    })
    .await;
    let mut c = config(&reg.url());
    c.credentials = Some(Credentials {
        username: "u".into(),
        password: Secret::new("hunter2"),
    });
    let up = Upstream::new(c).unwrap();
    assert_eq!(get(&up, "a/b", "blobs/x").await.0, StatusCode::OK);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("fetching upstream token"), "{text}");
    assert!(text.contains("following upstream redirect"), "{text}");
    for secret in ["tok-1", "hunter2", "dTpodW50ZXIy", "s3cr3t", "X-Amz"] {
        assert!(!text.contains(secret), "{secret} in logs:\n{text}");
    }
}

// === TLS ===

struct Pki {
    ca_pem: String,
    server: tokio_rustls::TlsAcceptor,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Pki {
        ca_pem: ca_cert.pem(),
        server: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
    }
}

#[tokio::test]
async fn https_with_extra_ca_file_uses_http2() {
    let pki = pki();
    let reg = serve_with(
        Some(pki.server.clone()),
        Duration::ZERO,
        Arc::new(|seen: &Seen| reply(200, &[], &format!("{:?}", seen.version))),
    )
    .await;
    let url = format!("https://{}", reg.addr);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();

    let mut c = config(&url);
    c.ca_file = Some(ca_file);
    let up = Upstream::new(c).unwrap();
    let (status, _, body) = get(&up, "a/b", "manifests/latest").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "HTTP/2.0");
    assert_eq!(reg.seen()[0].version, Version::HTTP_2);

    // Without the CA the server's certificate is not trusted.
    let err = upstream(&url)
        .send(
            Method::GET,
            &repo("a/b"),
            "manifests/latest",
            HeaderMap::new(),
        )
        .await
        .map_err(ProxyError::from)
        .unwrap_err();
    assert_eq!(err.status, StatusCode::BAD_GATEWAY);
    assert!(err.message.contains("certificate"), "{err}");
    assert_eq!(reg.seen().len(), 1);
}

#[test]
fn unreadable_ca_file_is_an_init_error_naming_it() {
    let mut c = config("https://127.0.0.1:1");
    c.ca_file = Some("/nonexistent/extra-ca.pem".into());
    let err = Upstream::new(c).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/extra-ca.pem"),
        "{err}"
    );
}

#[test]
fn send_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let up = upstream("http://127.0.0.1:1");
    let r = repo("a/b");
    let fut = up.send(Method::GET, &r, "manifests/x", HeaderMap::new());
    assert_send(&fut);
}

// === where redirects and token realms may lead ===

/// tags/list (or any manifest or referrers request) answered with a redirect: not followed, and
/// not passed on — a `Location` could lead anywhere, archway's own admin listener included.
#[tokio::test]
async fn only_blob_gets_follow_redirects() {
    let elsewhere = serve(|_: &Seen| reply(200, &[], "archway_requests_total 1")).await;
    let target = format!("{}/metrics", elsewhere.url());
    let reg = serve(move |_: &Seen| reply(302, &[("location", target.as_str())], "")).await;
    let up = upstream(&reg.url());
    let err = ProxyError::from(up.tags(&repo("a/b"), "").await.err().unwrap());
    assert_eq!(err.status, StatusCode::BAD_GATEWAY, "{err}");
    assert!(err.message.contains("302"), "{err}");
    let digest: archway::digest::Digest = format!("sha256:{}", "b".repeat(64)).parse().unwrap();
    let err = ProxyError::from(up.referrers(&repo("a/b"), &digest, "").await.err().unwrap());
    assert_eq!(err.status, StatusCode::BAD_GATEWAY, "{err}");
    let tag = archway::reference::Tag::parse("v1").unwrap();
    let err = up
        .get_manifest(&repo("a/b"), archway::upstream::ManifestRef::Tag(&tag))
        .await
        .err()
        .unwrap();
    assert_eq!(ProxyError::from(err).status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        elsewhere.seen().len(),
        0,
        "the redirect target was never asked"
    );
}

/// A blob redirect to the cloud metadata address (link-local), to loopback from an upstream
/// that is not on loopback, or to archway's own listener is refused before any connection.
#[tokio::test]
async fn blob_redirects_never_reach_inside_or_archway() {
    let own = serve(|_: &Seen| reply(200, &[], "archway itself")).await;
    let own_addr = own.addr;
    for (location, needle) in [
        (
            "http://169.254.169.254/latest/meta-data/iam".to_owned(),
            "link-local",
        ),
        ("http://[fe80::1]/x".to_owned(), "link-local"),
        ("http://0.0.0.0:1/x".to_owned(), "nothing may be fetched"),
        (format!("{}/v2/", own.url()), "archway's own listener"),
    ] {
        let loc = location.clone();
        let reg = serve(move |_: &Seen| reply(307, &[("location", loc.as_str())], "")).await;
        let up = upstream(&reg.url());
        up.set_own_listeners(vec![own_addr], vec![]);
        let digest: archway::digest::Digest = format!("sha256:{}", "c".repeat(64)).parse().unwrap();
        let started = Instant::now();
        let err = ProxyError::from(up.get_blob(&repo("a/b"), &digest).await.err().unwrap());
        assert_eq!(err.status, StatusCode::BAD_GATEWAY, "{location}: {err}");
        assert!(err.message.contains(needle), "{location}: {err}");
        assert!(
            !err.message.contains("meta-data"),
            "no path in the message: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{location}: refused at once"
        );
    }
    assert_eq!(own.seen().len(), 0);
}

/// An upstream that lives on loopback may send its blob downloads to another loopback host,
/// named or not (a public upstream may not: `egress` unit tests).
#[tokio::test]
async fn an_upstream_on_loopback_may_redirect_to_loopback_by_name() {
    let cdn = serve(|_: &Seen| reply(200, &[], "blob")).await;
    let port = cdn.addr.port();
    let reg = serve(move |_: &Seen| {
        let loc = format!("http://localhost:{port}/blob");
        reply(307, &[("location", loc.as_str())], "")
    })
    .await;
    let up = upstream(&reg.url());
    let digest: archway::digest::Digest = format!("sha256:{}", "d".repeat(64)).parse().unwrap();
    assert!(up.get_blob(&repo("a/b"), &digest).await.is_ok());
    assert_eq!(cdn.seen().len(), 1);
}

/// A token realm on the metadata address is not asked.
#[tokio::test]
async fn token_realm_on_link_local_is_refused() {
    let reg = serve(|_: &Seen| {
        reply(
            401,
            &[(
                "www-authenticate",
                r#"Bearer realm="http://169.254.169.254/token",service="s""#,
            )],
            "",
        )
    })
    .await;
    let up = upstream(&reg.url());
    let started = Instant::now();
    let err = up
        .send(Method::GET, &repo("a/b"), "manifests/x", HeaderMap::new())
        .await
        .map_err(ProxyError::from)
        .unwrap_err();
    assert_eq!(err.status, StatusCode::BAD_GATEWAY, "{err}");
    assert!(err.message.contains("link-local"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// The upstream timeout is the read timeout, connecting included: not connect + read.
#[tokio::test]
async fn header_wait_is_bounded_by_the_read_timeout_alone() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut c = config(&format!("http://{addr}"));
    c.connect_timeout = Duration::from_secs(3);
    c.read_timeout = Duration::from_millis(800);
    let up = Upstream::new(c).unwrap();
    let started = Instant::now();
    let err = up
        .send(Method::GET, &repo("a/b"), "manifests/x", HeaderMap::new())
        .await
        .map_err(ProxyError::from)
        .unwrap_err();
    assert_eq!(err.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(err.message.contains("0.8 s"), "{err}");
}

/// An upstream whose host cannot be resolved is named, with its host, in plain words.
#[tokio::test]
async fn unresolvable_upstream_is_said_plainly() {
    let up = upstream("http://archway-test-no-such-host.invalid:5000");
    let err = up
        .send(Method::GET, &repo("a/b"), "manifests/x", HeaderMap::new())
        .await
        .map_err(ProxyError::from)
        .unwrap_err();
    assert_eq!(err.status, StatusCode::BAD_GATEWAY);
    assert!(
        err.message
            .contains("cannot resolve host archway-test-no-such-host.invalid"),
        "{err}"
    );
    assert!(!err.message.contains("client error"), "{err}");
}
