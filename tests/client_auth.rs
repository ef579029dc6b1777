//! `[auth]`: htpasswd (bcrypt) users and bearer tokens on the registry listener.

mod support;

use archway::config::AuthConfig;
use archway::Archway;
use base64::Engine as _;
use http::{Method, StatusCode};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{logs, FakeRegistry, Harness, Reply, TestClient};

const PASSWORD: &str = "correct-horse-7731";
const WRONG: &str = "wrong-horse-9924";
const TOKEN: &str = "tok-5b1f0c9e2d";
const WRONG_TOKEN: &str = "tok-000000dead";

fn basic(user: &str, password: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b64}")
}

/// Writes an htpasswd with `alice` (bcrypt, low cost) and a tokens file; returns the config.
fn auth_files(dir: &Path) -> AuthConfig {
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, format!("alice:{hash}\n")).unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("# CI pulls\n{TOKEN}\n")).unwrap();
    AuthConfig {
        htpasswd_file: Some(htpasswd),
        tokens_file: Some(tokens),
        ..AuthConfig::default()
    }
}

async fn auth_harness(dir: &Path) -> Harness {
    let auth = auth_files(dir);
    Harness::with(FakeRegistry::start().await, |c| c.auth = Some(auth)).await
}

fn assert_challenged(r: &Reply, what: &str) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"archway\""),
        "{what}"
    );
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0"),
        "{what}"
    );
}

#[tokio::test]
async fn every_v2_request_needs_credentials() {
    let logs = logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let h = auth_harness(dir.path()).await;
    let img = h.fake.sample_image("lib/app", "v1", 11);
    let manifest = "/v2/lib/app/manifests/v1";
    let blob = format!("/v2/lib/app/blobs/{}", img.config);

    // Without credentials: 401 with the Basic challenge, even for the ping.
    for path in [
        "/v2/",
        "/v2",
        manifest,
        blob.as_str(),
        "/v2/lib/app/tags/list",
    ] {
        let r = h.get(path).await;
        assert_challenged(&r, path);
        assert_eq!(r.error_code(), "UNAUTHORIZED", "{path}");
    }
    let r = h.head(manifest).await;
    assert_challenged(&r, "HEAD");
    assert!(r.body.is_empty());
    assert_eq!(
        h.fake.total(),
        0,
        "nothing reached upstream unauthenticated"
    );

    // Wrong password, unknown user, unknown token, a scheme archway does not take: 401.
    let refused = [
        basic("alice", WRONG),
        basic("mallory", PASSWORD),
        format!("Bearer {WRONG_TOKEN}"),
        format!("Bearer {PASSWORD}"),
        basic("alice", TOKEN),
        "Digest username=\"alice\"".to_owned(),
    ];
    for auth in &refused {
        let r = h.get_with(manifest, &[("authorization", auth)]).await;
        assert_challenged(&r, auth);
    }
    assert_eq!(h.fake.total(), 0);

    // The htpasswd user and the token get through, ping included.
    let alice = basic("alice", PASSWORD);
    let bearer = format!("Bearer {TOKEN}");
    for auth in [&alice, &bearer] {
        let r = h.get_with("/v2/", &[("authorization", auth)]).await;
        assert_eq!(r.status, StatusCode::OK);
        let r = h.get_with(manifest, &[("authorization", auth)]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.sha256(), img.manifest.to_string());
        let r = h.get_with(&blob, &[("authorization", auth)]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, img.config_bytes);
    }
    // The remembered bcrypt success is for that password only.
    let r = h
        .get_with(manifest, &[("authorization", &basic("alice", WRONG))])
        .await;
    assert_challenged(&r, "wrong password after a right one");

    // The client's credentials are never passed upstream.
    for req in h.fake.requests() {
        assert!(
            !req.headers.contains_key("authorization"),
            "{} {} carried Authorization upstream",
            req.method,
            req.path
        );
    }

    // Paths outside /v2/ are not the registry API: they stay 404, credentials or not.
    let r = h.request(Method::GET, "/healthz").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Nothing secret was logged, though the refusals were.
    let text = logs.text();
    assert!(
        text.contains("authentication required") && text.contains("invalid credentials"),
        "the 401s are in the access log:\n{text}"
    );
    let b64_ok = base64::engine::general_purpose::STANDARD.encode(format!("alice:{PASSWORD}"));
    let b64_bad = base64::engine::general_purpose::STANDARD.encode(format!("alice:{WRONG}"));
    for secret in [
        PASSWORD,
        WRONG,
        TOKEN,
        WRONG_TOKEN,
        &b64_ok,
        &b64_bad,
        "$2b$04$",
    ] {
        assert!(!text.contains(secret), "`{secret}` appears in the logs");
    }
}

#[tokio::test]
async fn without_auth_nothing_is_asked() {
    logs::capture();
    let h = Harness::start().await;
    let r = h.get("/v2/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("www-authenticate"), None);
}

#[tokio::test]
async fn bad_auth_files_stop_the_start_naming_file_and_line() {
    logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRegistry::start().await;
    let htpasswd = dir.path().join("htpasswd");
    let good = bcrypt::hash(PASSWORD, 4).unwrap();
    std::fs::write(
        &htpasswd,
        format!("alice:{good}\nbob:$apr1$abc$PZF73YJz5hJ9yyI.7OP.R.\n"),
    )
    .unwrap();
    let mut cfg = support::config_for(&fake, &dir.path().join("data"));
    cfg.auth = Some(AuthConfig {
        htpasswd_file: Some(htpasswd.clone()),
        ..AuthConfig::default()
    });
    let err = match Archway::start(cfg.clone()).await {
        Ok(_) => panic!("started with an MD5 htpasswd line"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!("{}: line 2:", htpasswd.display())) && err.contains("bcrypt"),
        "{err}"
    );
    assert!(!err.contains("PZF73"), "the hash is not echoed: {err}");

    cfg.auth = Some(AuthConfig {
        tokens_file: Some(dir.path().join("no-such-tokens")),
        ..AuthConfig::default()
    });
    let err = match Archway::start(cfg).await {
        Ok(_) => panic!("started without its tokens file"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("no-such-tokens"), "{err}");
}

/// 127.0.0.2: a client address other than the harness client's 127.0.0.1.
const ADDRESS_A: [u8; 4] = [127, 0, 0, 2];

fn client_at(ip: [u8; 4]) -> TestClient {
    TestClient::new().with_local_address(IpAddr::from(ip))
}

fn client_auth(h: &Harness) -> &archway::client_auth::ClientAuth {
    h.archway.as_ref().unwrap().proxy().client_auth().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_burst_an_address_gets_429_without_bcrypt() {
    let logs = logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let mut auth = auth_files(dir.path());
    auth.failure_burst = 3;
    auth.failure_refill = Duration::from_secs(3600);
    let h = Harness::with(FakeRegistry::start().await, |c| c.auth = Some(auth)).await;
    let checks = client_auth(&h);
    let a = client_at(ADDRESS_A);
    let wrong = basic("alice", WRONG);
    let url = h.url("/v2/");

    // 16 at once from A: three bcrypt checks, the rest 429 without one.
    let headers = [("authorization", wrong.as_str())];
    let replies = futures_util::future::join_all((0..16).map(|_| a.get_with(&url, &headers))).await;
    let refused = replies
        .iter()
        .filter(|r| r.status == StatusCode::UNAUTHORIZED)
        .count();
    let throttled: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!((refused, throttled.len()), (3, 13));
    assert_eq!(checks.bcrypt_runs(), 3);
    // Unknown users too: a 429 would otherwise tell them from known ones.
    let r = a
        .get_with(&url, &[("authorization", &basic("mallory", WRONG))])
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(checks.bcrypt_runs(), 3);
    let r = throttled[0];
    assert_eq!(r.error_code(), "TOOMANYREQUESTS");
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    assert_eq!(r.header("www-authenticate"), None);
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );

    // Another address logs in; once remembered, the password passes from A as well.
    let alice = basic("alice", PASSWORD);
    let r = h.get_with("/v2/", &[("authorization", &alice)]).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = a.get_with(&url, &[("authorization", &alice)]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(checks.bcrypt_runs(), 4);
    let r = a.get_with(&url, &[("authorization", &wrong)]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(checks.bcrypt_runs(), 4);
    assert!(logs.text().contains("too many failed logins"));
}

/// Issue 17, item 3: 16 connections of wrong passwords from one address used to take both
/// slots, and a first login from another address waited behind all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_does_not_delay_another_clients_first_login() {
    logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let mut auth = auth_files(dir.path());
    // Cost 10: long enough per check for a queue to show; a budget the flood never exhausts.
    let hash = bcrypt::hash(PASSWORD, 10).unwrap();
    std::fs::write(
        auth.htpasswd_file.as_ref().unwrap(),
        format!("alice:{hash}\n"),
    )
    .unwrap();
    auth.failure_burst = 1_000_000;
    let h = Harness::with(FakeRegistry::start().await, |c| c.auth = Some(auth)).await;
    let checks = client_auth(&h);
    let wrong = basic("alice", WRONG);

    // One check, alone, from a third address.
    let c = client_at([127, 0, 0, 3]);
    let started = Instant::now();
    let r = c
        .get_with(&h.url("/v2/"), &[("authorization", &wrong)])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let one_check = started.elapsed();

    let stop = Arc::new(AtomicBool::new(false));
    let a = client_at(ADDRESS_A);
    let flood: Vec<_> = (0..16)
        .map(|_| {
            let (a, url, wrong, stop) = (a.clone(), h.url("/v2/"), wrong.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = a.get_with(&url, &[("authorization", &wrong)]).await;
                    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while checks.bcrypt_runs() < 5 {
        assert!(Instant::now() < deadline, "the flood never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let runs_before = checks.bcrypt_runs();
    let started = Instant::now();
    let r = h
        .get_with("/v2/", &[("authorization", &basic("alice", PASSWORD))])
        .await;
    let login = started.elapsed();
    let runs_meanwhile = checks.bcrypt_runs() - runs_before;
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    assert_eq!(r.status, StatusCode::OK);
    println!(
        "one check alone: {one_check:?}; a first login during a 16-connection flood from one \
         address: {login:?}, {runs_meanwhile} bcrypt checks started meanwhile (its own included)"
    );
    // Its own, and the flood's one at a time beside it.
    assert!(
        runs_meanwhile <= 4,
        "{runs_meanwhile} checks started meanwhile"
    );
    assert!(
        login < one_check * 4,
        "the login took {login:?}, one check {one_check:?}"
    );
}

/// Issue 17, item 2: wrong-password requests reset 3 ms after they were sent (h2c), or whose
/// HTTP/1.1 connection closed at once, used to free their slot while bcrypt ran on: 8 s of it
/// made 345 threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_and_closed_connections_run_no_more_checks_than_the_slots() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::AsyncWriteExt;
    logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let mut auth = auth_files(dir.path());
    let hash = bcrypt::hash(PASSWORD, 10).unwrap();
    std::fs::write(
        auth.htpasswd_file.as_ref().unwrap(),
        format!("alice:{hash}\n"),
    )
    .unwrap();
    auth.failure_burst = 1_000_000;
    let h = Harness::with(FakeRegistry::start().await, |c| c.auth = Some(auth)).await;
    let checks = client_auth(&h);
    let wrong = basic("alice", WRONG);
    let addr = h.addr();
    let connect_from = |i: u8| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind((std::net::Ipv4Addr::new(127, 0, 0, 10 + i), 0).into())
            .unwrap();
        socket.connect(addr).await.unwrap()
    };

    // From 24 addresses (one address runs one check at a time anyway): an h2c request reset
    // after 3 ms on a connection that stays open, and an HTTP/1.1 request whose connection is
    // closed as soon as it is written.
    let mut h2_connections = Vec::new();
    for i in 0..24 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            TokioIo::new(connect_from(i).await),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(h.url("/v2/"))
            .header("authorization", &wrong)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let reset = tokio::time::timeout(Duration::from_millis(3), sender.send_request(req)).await;
        assert!(reset.is_err(), "answered within 3 ms");
        h2_connections.push(sender);

        let mut s = connect_from(i).await;
        let head = format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {wrong}\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        drop(s);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while checks.running_checks() > 0 || checks.bcrypt_runs() == 0 {
        assert!(Instant::now() < deadline, "bcrypt checks never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let slots = std::thread::available_parallelism().unwrap().get();
    println!(
        "48 requests reset or closed: {} bcrypt checks ran, at most {} at once ({slots} slots)",
        checks.bcrypt_runs(),
        checks.peak_running_checks()
    );
    assert!(
        checks.peak_running_checks() <= slots,
        "{} bcrypt checks ran at once, {slots} slots",
        checks.peak_running_checks()
    );
    // Nothing is left holding a slot: a login goes through.
    let r = h
        .get_with("/v2/", &[("authorization", &basic("alice", PASSWORD))])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    drop(h2_connections);
}

/// An upstream archway holds credentials for, reachable with no `[auth]`: said at start, in
/// words, naming it; with `[auth]` it is not.
#[tokio::test]
async fn a_credentialed_upstream_open_to_every_client_is_warned_of_at_start() {
    let logs = logs::capture();
    let private = FakeRegistry::start().await;
    let credentialed = |name: &str| {
        let mut u = support::upstream_for(name, &private);
        u.credentials = Some(archway::config::Credentials {
            username: "bot".into(),
            password: archway::config::Secret::new("pw"),
        });
        u
    };
    let open = credentialed("open-private");
    let _h = Harness::with(FakeRegistry::start().await, move |c| c.upstreams.push(open)).await;
    let dir = tempfile::tempdir().unwrap();
    let closed = credentialed("closed-private");
    let auth = auth_files(dir.path());
    let _g = Harness::with(FakeRegistry::start().await, move |c| {
        c.auth = Some(auth);
        c.upstreams.push(closed);
    })
    .await;
    let text = logs.text();
    let warned = |name: &str| {
        text.lines().any(|l| {
            l.contains("WARN")
                && l.contains(&format!(
                    "upstream {name} has credentials and there is no [auth]: every client that can reach archway pulls from it"
                ))
        })
    };
    assert!(warned("open-private"), "{text}");
    assert!(!warned("closed-private"), "with [auth] there is no warning");
    assert!(!warned("fake"), "an anonymous upstream is no matter");
}
