//! `[auth]`: htpasswd (bcrypt) users and bearer tokens on the registry listener.

mod support;

use archway::config::AuthConfig;
use archway::Archway;
use base64::Engine as _;
use http::{Method, StatusCode};
use std::path::Path;
use support::{logs, FakeRegistry, Harness, Reply};

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
        tokens_file: None,
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
        htpasswd_file: None,
        tokens_file: Some(dir.path().join("no-such-tokens")),
    });
    let err = match Archway::start(cfg).await {
        Ok(_) => panic!("started without its tokens file"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("no-such-tokens"), "{err}");
}
