//! Upstream token auth through archway: tokens are fetched once per scope and reused, renewed
//! after they expire, credentials go only to the token endpoint as Basic, and nothing is sent to
//! a redirect host.

mod support;

use archway::config::{Credentials, Secret};
use http::StatusCode;
use std::time::Duration;
use support::{FakeRegistry, Harness, Kind};

async fn auth_harness(token_ttl: Duration) -> Harness {
    let fake = FakeRegistry::builder()
        .auth(true)
        .token_ttl(token_ttl)
        .start()
        .await;
    Harness::with(fake, |_| {}).await
}

fn bearer_count(h: &Harness, kind: Kind) -> usize {
    h.fake
        .requests()
        .iter()
        .filter(|r| {
            r.kind == kind
                && r.headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("Bearer "))
        })
        .count()
}

#[tokio::test]
async fn token_is_fetched_once_and_reused() {
    let h = auth_harness(Duration::from_secs(300)).await;
    let img = h.fake.sample_image("lib/app", "v1", 1);
    let m = h.get("/v2/lib/app/manifests/v1").await;
    assert_eq!(m.status, StatusCode::OK, "{}", m.text());
    assert_eq!(m.body, img.manifest_bytes);
    for (d, bytes) in img.layers.iter().zip(&img.layer_bytes) {
        let r = h.get(&format!("/v2/lib/app/blobs/{d}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&r.body, bytes);
    }
    let c = h.get(&format!("/v2/lib/app/blobs/{}", img.config)).await;
    assert_eq!(c.body, img.config_bytes);

    assert_eq!(h.fake.token_count(), 1, "{:?}", h.fake.token_requests());
    let t = &h.fake.token_requests()[0];
    assert_eq!(t.service.as_deref(), Some("fake"));
    assert_eq!(t.scopes, vec!["repository:lib/app:pull"]);
    assert_eq!(t.basic, None, "no credentials configured: anonymous");
    // Every blob GET carried the token: no 401 round trip per blob.
    assert_eq!(bearer_count(&h, Kind::Blob), 3);
    assert_eq!(h.fake.count("GET", Kind::Blob), 3);
}

#[tokio::test]
async fn each_repository_gets_its_own_scope() {
    let h = auth_harness(Duration::from_secs(300)).await;
    let a = h.fake.sample_image("team/a", "v1", 2);
    let b = h.fake.sample_image("team/b", "v1", 3);
    assert_eq!(
        h.get("/v2/team/a/manifests/v1").await.body,
        a.manifest_bytes
    );
    assert_eq!(
        h.get("/v2/team/b/manifests/v1").await.body,
        b.manifest_bytes
    );
    assert_eq!(
        h.get("/v2/team/a/manifests/v1?x=1").await.body,
        a.manifest_bytes
    );
    let scopes: Vec<Vec<String>> = h
        .fake
        .token_requests()
        .into_iter()
        .map(|t| t.scopes)
        .collect();
    assert_eq!(
        scopes,
        vec![
            vec!["repository:team/a:pull".to_owned()],
            vec!["repository:team/b:pull".to_owned()]
        ]
    );
}

#[tokio::test]
async fn expired_token_is_renewed() {
    let h = auth_harness(Duration::from_millis(1000)).await;
    let img = h.fake.sample_image("lib/app", "v1", 4);
    assert_eq!(
        h.get("/v2/lib/app/manifests/v1").await.status,
        StatusCode::OK
    );
    assert_eq!(h.fake.token_count(), 1);

    // The fake now rejects the first token.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = h.get(&format!("/v2/lib/app/blobs/{}", img.layers[0])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.body, img.layer_bytes[0]);
    assert_eq!(h.fake.token_count(), 2, "renewed once");

    // And the new one is reused.
    let r = h.get(&format!("/v2/lib/app/blobs/{}", img.layers[1])).await;
    assert_eq!(r.body, img.layer_bytes[1]);
    assert_eq!(h.fake.token_count(), 2);
}

#[tokio::test]
async fn credentials_go_to_the_token_endpoint_as_basic() {
    let fake = FakeRegistry::builder()
        .credentials("bot", "s3cret-pass")
        .start()
        .await;
    let h = Harness::with(fake, |c| {
        c.upstreams[0].credentials = Some(Credentials {
            username: "bot".to_owned(),
            password: Secret::new("s3cret-pass"),
        });
    })
    .await;
    let img = h.fake.sample_image("private/app", "v1", 5);
    let r = h.get("/v2/private/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.body, img.manifest_bytes);
    let t = h.fake.token_requests();
    assert_eq!(t.len(), 1);
    assert_eq!(
        t[0].basic,
        Some(("bot".to_owned(), "s3cret-pass".to_owned()))
    );
    // Registry requests carry the token, never the Basic credentials.
    for req in h.fake.requests().iter().filter(|r| r.kind != Kind::Token) {
        if let Some(v) = req.headers.get("authorization") {
            assert!(v.to_str().unwrap().starts_with("Bearer "), "{:?}", req.path);
        }
    }
}

#[tokio::test]
async fn refused_credentials_become_an_error_without_the_secret() {
    let fake = FakeRegistry::builder()
        .credentials("bot", "right-pass")
        .start()
        .await;
    let h = Harness::with(fake, |c| {
        c.upstreams[0].credentials = Some(Credentials {
            username: "bot".to_owned(),
            password: Secret::new("wrong-pass-hunter2"),
        });
    })
    .await;
    h.fake.sample_image("private/app", "v1", 6);
    let r = h.get("/v2/private/app/manifests/v1").await;
    assert!(
        r.status == StatusCode::UNAUTHORIZED
            || r.status == StatusCode::FORBIDDEN
            || r.status == StatusCode::BAD_GATEWAY,
        "{}",
        r.status
    );
    assert!(r.json()["errors"][0]["code"].is_string());
    let everything = format!("{:?} {}", r.headers, r.text());
    assert!(!everything.contains("hunter2"), "{everything}");
    assert!(
        !everything.contains("d3JvbmctcGFzcy1odW50ZXIy"),
        "base64 of the password"
    );
    assert!(h.fake.token_count() >= 1);
}

#[tokio::test]
async fn authorization_is_not_sent_to_the_redirect_host() {
    let fake = FakeRegistry::builder()
        .auth(true)
        .redirect_blobs(true)
        .start()
        .await;
    let h = Harness::with(fake, |_| {}).await;
    let img = h.fake.sample_image("lib/app", "v1", 7);
    for (d, bytes) in img.layers.iter().zip(&img.layer_bytes) {
        let r = h.get(&format!("/v2/lib/app/blobs/{d}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(&r.body, bytes);
        assert_eq!(r.sha256(), d.to_string());
    }
    assert_eq!(h.fake.count("GET", Kind::Cdn), 2);
    assert_eq!(h.fake.cdn_authorizations(), vec![None, None]);
    // The registry itself did get the token.
    assert_eq!(bearer_count(&h, Kind::Blob), 2);
}

#[tokio::test]
async fn unknown_ns_never_reaches_the_token_endpoint() {
    let h = auth_harness(Duration::from_secs(300)).await;
    h.fake.sample_image("lib/app", "v1", 8);
    let r = h.get("/v2/lib/app/manifests/v1?ns=elsewhere.example").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "NAME_UNKNOWN");
    assert_eq!(h.fake.connections(), 0);
    assert_eq!(h.fake.token_count(), 0);
}
