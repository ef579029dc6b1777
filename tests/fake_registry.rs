//! Self-tests of the fake upstream registry, with a plain hyper client: the fake must behave
//! like a registry and every fault must really happen, or the proxy tests prove nothing.

#[path = "support/client.rs"]
mod client;
#[path = "support/fake_registry.rs"]
mod fake_registry;

use client::{raw_request, TestClient};
use fake_registry::{sha256_digest, FakeRegistry, Fault, Kind, DOCKER_MANIFEST, OCI_INDEX};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use std::time::{Duration, Instant};

#[tokio::test]
async fn serves_ping_manifests_and_headers() {
    let fake = FakeRegistry::start().await;
    let img = fake.sample_image("library/alpine", "3.20", 1);
    let c = TestClient::new();
    let base = fake.url();

    let ping = c.get(&format!("{base}/v2/")).await;
    assert_eq!(ping.status, StatusCode::OK);
    assert_eq!(ping.body.as_ref(), b"{}");
    assert_eq!(
        ping.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );

    for reference in ["3.20".to_owned(), img.manifest.to_string()] {
        let url = format!("{base}/v2/library/alpine/manifests/{reference}");
        let get = c.get(&url).await;
        assert_eq!(get.status, StatusCode::OK);
        assert_eq!(get.body, img.manifest_bytes);
        assert_eq!(get.header("content-type"), Some(DOCKER_MANIFEST));
        let digest = img.manifest.to_string();
        assert_eq!(get.header("docker-content-digest"), Some(digest.as_str()));
        assert_eq!(get.header("etag"), Some(format!("\"{digest}\"").as_str()));
        assert_eq!(get.sha256(), digest);

        let head = c.head(&url).await;
        assert_eq!(head.status, StatusCode::OK);
        assert!(head.body.is_empty());
        let len = img.manifest_bytes.len().to_string();
        assert_eq!(head.header("content-length"), Some(len.as_str()));
        assert_eq!(head.header("content-type"), Some(DOCKER_MANIFEST));
        assert_eq!(head.header("docker-content-digest"), Some(digest.as_str()));
    }

    // The manifest really describes the stored blobs.
    let m: serde_json::Value = serde_json::from_slice(&img.manifest_bytes).unwrap();
    assert_eq!(m["config"]["digest"], img.config.to_string());
    assert_eq!(m["layers"][1]["digest"], img.layers[1].to_string());
    assert_eq!(m["layers"][1]["size"], 40_000);

    let missing = c
        .get(&format!("{base}/v2/library/alpine/manifests/nope"))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error_code(), "MANIFEST_UNKNOWN");
    let no_repo = c.get(&format!("{base}/v2/nobody/manifests/latest")).await;
    assert_eq!(no_repo.error_code(), "NAME_UNKNOWN");
    let push = c
        .request(
            Method::PUT,
            &format!("{base}/v2/library/alpine/manifests/x"),
            &[],
        )
        .await;
    assert_eq!(push.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn serves_blobs_and_ranges() {
    let fake = FakeRegistry::start().await;
    let img = fake.sample_image("team/app", "v1", 2);
    let c = TestClient::new();
    let url = format!("{}/v2/team/app/blobs/{}", fake.url(), img.layers[1]);
    let bytes = &img.layer_bytes[1];

    let full = c.get(&url).await;
    assert_eq!(full.status, StatusCode::OK);
    assert_eq!(full.body, *bytes);
    assert_eq!(full.sha256(), img.layers[1].to_string());
    assert_eq!(
        full.header("docker-content-digest"),
        Some(img.layers[1].to_string().as_str())
    );

    let head = c.head(&url).await;
    assert_eq!(head.header("content-length"), Some("40000"));
    assert!(head.body.is_empty());

    let r = c.get_with(&url, &[("range", "bytes=10-19")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, bytes.slice(10..20));
    assert_eq!(r.header("content-range"), Some("bytes 10-19/40000"));

    let r = c.get_with(&url, &[("range", "bytes=39990-")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, bytes.slice(39990..));
    assert_eq!(r.header("content-range"), Some("bytes 39990-39999/40000"));

    let r = c.get_with(&url, &[("range", "bytes=-5")]).await;
    assert_eq!(r.body, bytes.slice(39995..));

    let r = c.get_with(&url, &[("range", "bytes=50000-")]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), Some("bytes */40000"));

    let unknown = sha256_digest(b"not stored");
    let r = c
        .get(&format!("{}/v2/team/app/blobs/{unknown}", fake.url()))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "BLOB_UNKNOWN");
    let r = c
        .get(&format!("{}/v2/team/app/blobs/sha256:abc", fake.url()))
        .await;
    assert_eq!(r.error_code(), "DIGEST_INVALID");
}

#[tokio::test]
async fn tags_list_paginates_with_link() {
    let fake = FakeRegistry::start().await;
    fake.add_tags("lib/x", &["a", "b", "c", "d", "e"]);
    let c = TestClient::new();
    let base = fake.url();

    let all = c.get(&format!("{base}/v2/lib/x/tags/list")).await;
    assert_eq!(
        all.json()["tags"],
        serde_json::json!(["a", "b", "c", "d", "e"])
    );
    assert_eq!(all.json()["name"], "lib/x");
    assert!(all.header("link").is_none());

    let p1 = c.get(&format!("{base}/v2/lib/x/tags/list?n=2")).await;
    assert_eq!(p1.json()["tags"], serde_json::json!(["a", "b"]));
    let link = p1.header("link").unwrap().to_owned();
    assert_eq!(link, "</v2/lib/x/tags/list?n=2&last=b>; rel=\"next\"");

    let p2 = c
        .get(&format!("{base}/v2/lib/x/tags/list?n=2&last=b"))
        .await;
    assert_eq!(p2.json()["tags"], serde_json::json!(["c", "d"]));
    let p3 = c
        .get(&format!("{base}/v2/lib/x/tags/list?n=2&last=d"))
        .await;
    assert_eq!(p3.json()["tags"], serde_json::json!(["e"]));
    assert!(p3.header("link").is_none());
}

#[tokio::test]
async fn referrers_and_index() {
    let fake = FakeRegistry::start().await;
    let idx = fake.sample_index("multi", "latest", 3, &["linux/amd64", "linux/arm64/v8"]);
    let subject = idx.images[0].1.manifest.clone();
    let sig = fake.add_referrer("multi", &subject, "application/vnd.dev.sig", 1);
    let sbom = fake.add_referrer("multi", &subject, "application/spdx+json", 2);
    let c = TestClient::new();
    let base = fake.url();

    let m = c.get(&format!("{base}/v2/multi/manifests/latest")).await;
    assert_eq!(m.header("content-type"), Some(OCI_INDEX));
    let v = m.json();
    assert_eq!(v["manifests"][1]["platform"]["architecture"], "arm64");
    assert_eq!(v["manifests"][1]["platform"]["variant"], "v8");
    assert_eq!(
        v["manifests"][1]["digest"],
        idx.images[1].1.manifest.to_string()
    );
    // Children are reachable by digest.
    let child = c
        .get(&format!(
            "{base}/v2/multi/manifests/{}",
            idx.images[1].1.manifest
        ))
        .await;
    assert_eq!(child.body, idx.images[1].1.manifest_bytes);

    let r = c.get(&format!("{base}/v2/multi/referrers/{subject}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    let found: Vec<String> = r.json()["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect();
    let mut want = vec![sig.to_string(), sbom.to_string()];
    want.sort();
    assert_eq!(found, want);

    let filtered = c
        .get(&format!(
            "{base}/v2/multi/referrers/{subject}?artifactType=application/spdx%2Bjson"
        ))
        .await;
    assert_eq!(filtered.json()["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(filtered.json()["manifests"][0]["digest"], sbom.to_string());
    assert_eq!(filtered.header("oci-filters-applied"), Some("artifactType"));

    let page = c
        .get(&format!("{base}/v2/multi/referrers/{subject}?n=1"))
        .await;
    assert_eq!(page.json()["manifests"].as_array().unwrap().len(), 1);
    assert!(page.header("link").unwrap().contains("rel=\"next\""));
}

#[tokio::test]
async fn auth_challenges_issues_and_expires_tokens() {
    let fake = FakeRegistry::builder()
        .auth(true)
        .token_ttl(Duration::from_millis(600))
        .start()
        .await;
    let img = fake.sample_image("private/app", "v1", 4);
    fake.sample_image("other/app", "v1", 5);
    let c = TestClient::new();
    let base = fake.url();
    let url = format!("{base}/v2/private/app/manifests/v1");

    let denied = c.get(&url).await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        denied.header("www-authenticate").unwrap(),
        format!(
            "Bearer realm=\"http://{}/token\",service=\"fake\",scope=\"repository:private/app:pull\"",
            fake.addr()
        )
    );
    let ping = c.get(&format!("{base}/v2/")).await;
    assert_eq!(ping.status, StatusCode::UNAUTHORIZED);
    assert!(!ping.header("www-authenticate").unwrap().contains("scope"));

    let t = c
        .get_with(
            &format!("{base}/token?service=fake&scope=repository:private/app:pull"),
            &[("authorization", "Basic dXNlcjpwYXNz")],
        )
        .await;
    assert_eq!(t.status, StatusCode::OK);
    assert_eq!(t.json()["expires_in"], 1);
    let token = t.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(t.json()["access_token"], token.as_str());
    let reqs = fake.token_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].basic, Some(("user".to_owned(), "pass".to_owned())));
    assert_eq!(reqs[0].service.as_deref(), Some("fake"));
    assert_eq!(reqs[0].scopes, vec!["repository:private/app:pull"]);

    let bearer = format!("Bearer {token}");
    let ok = c.get_with(&url, &[("authorization", &bearer)]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body, img.manifest_bytes);
    // The token's scope is one repository.
    let other = c
        .get_with(
            &format!("{base}/v2/other/app/manifests/v1"),
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(other.status, StatusCode::UNAUTHORIZED);
    let ping = c
        .get_with(&format!("{base}/v2/"), &[("authorization", &bearer)])
        .await;
    assert_eq!(ping.status, StatusCode::OK);

    tokio::time::sleep(Duration::from_millis(700)).await;
    let expired = c.get_with(&url, &[("authorization", &bearer)]).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);

    // Anonymous token requests are recorded without credentials.
    c.get(&format!(
        "{base}/token?service=fake&scope=repository:other/app:pull"
    ))
    .await;
    assert_eq!(fake.token_count(), 2);
    assert_eq!(fake.token_requests()[1].basic, None);
}

#[tokio::test]
async fn token_endpoint_checks_configured_credentials() {
    let fake = FakeRegistry::builder()
        .credentials("bot", "s3cret")
        .start()
        .await;
    let c = TestClient::new();
    let url = format!(
        "{}/token?service=fake&scope=repository:a/b:pull",
        fake.url()
    );
    assert_eq!(c.get(&url).await.status, StatusCode::UNAUTHORIZED);
    // "bot:wrong"
    let wrong = c
        .get_with(&url, &[("authorization", "Basic Ym90Ondyb25n")])
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    // "bot:s3cret"
    let right = c
        .get_with(&url, &[("authorization", "Basic Ym90OnMzY3JldA==")])
        .await;
    assert_eq!(right.status, StatusCode::OK);
    assert_eq!(fake.token_count(), 3);
}

#[tokio::test]
async fn blob_gets_redirect_to_the_cdn() {
    let fake = FakeRegistry::builder().redirect_blobs(true).start().await;
    let img = fake.sample_image("r/x", "v1", 6);
    let c = TestClient::new();
    let url = format!("{}/v2/r/x/blobs/{}", fake.url(), img.layers[0]);

    let redirect = c.get(&url).await;
    assert_eq!(redirect.status, StatusCode::TEMPORARY_REDIRECT);
    let location = redirect.header("location").unwrap().to_owned();
    assert!(
        location.starts_with(&format!(
            "http://{}/cdn/r/x/{}?",
            fake.cdn_addr(),
            img.layers[0]
        )),
        "{location}"
    );
    // HEAD is answered directly.
    assert_eq!(c.head(&url).await.status, StatusCode::OK);

    let from_cdn = c.get(&location).await;
    assert_eq!(from_cdn.status, StatusCode::OK);
    assert_eq!(from_cdn.body, img.layer_bytes[0]);
    let ranged = c.get_with(&location, &[("range", "bytes=0-9")]).await;
    assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.body, img.layer_bytes[0].slice(0..10));

    // Like S3, the CDN refuses a second credential, and records that it was sent.
    let leaked = c
        .get_with(&location, &[("authorization", "Bearer leaked")])
        .await;
    assert_eq!(leaked.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        fake.cdn_authorizations(),
        vec![None, None, Some("Bearer leaked".to_owned())]
    );
    assert_eq!(fake.count("GET", Kind::Cdn), 3);
}

#[tokio::test]
async fn counts_requests_and_connections() {
    let fake = FakeRegistry::start().await;
    let img = fake.sample_image("c/d", "v1", 7);
    let c = TestClient::new();
    let blob_path = format!("/v2/c/d/blobs/{}", img.layers[0]);
    c.get(&format!("{}/v2/", fake.url())).await;
    c.get(&format!("{}/v2/c/d/manifests/v1", fake.url())).await;
    c.head(&format!("{}/v2/c/d/manifests/v1", fake.url())).await;
    c.get(&format!("{}{blob_path}", fake.url())).await;
    c.get(&format!("{}{blob_path}", fake.url())).await;
    c.get(&format!("{}/v2/c/d/tags/list?n=1", fake.url())).await;

    assert_eq!(fake.count("GET", Kind::Ping), 1);
    assert_eq!(fake.count("GET", Kind::Manifest), 1);
    assert_eq!(fake.count("HEAD", Kind::Manifest), 1);
    assert_eq!(fake.count_kind(Kind::Manifest), 2);
    assert_eq!(fake.count("GET", Kind::Blob), 2);
    assert_eq!(fake.count_path("GET", &blob_path), 2);
    assert_eq!(fake.count("GET", Kind::Tags), 1);
    assert_eq!(fake.total(), 6);
    let tags = fake.requests().pop().unwrap();
    assert_eq!(tags.query.as_deref(), Some("n=1"));
    assert_eq!(tags.repo.as_deref(), Some("c/d"));
    // The pooled client reuses one connection.
    assert_eq!(fake.connections(), 1);

    fake.reset_counts();
    assert_eq!(fake.total(), 0);
    assert_eq!(fake.connections(), 0);
}

#[tokio::test]
async fn status_faults_and_retry_after() {
    let fake = FakeRegistry::start().await;
    fake.sample_image("f/s", "v1", 8);
    let c = TestClient::new();
    let url = format!("{}/v2/f/s/manifests/v1", fake.url());

    fake.fault(Some(Kind::Manifest), Fault::status(503));
    let r = c.get(&url).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.error_code(), "UNAVAILABLE");
    // Other kinds are unaffected.
    assert_eq!(
        c.get(&format!("{}/v2/", fake.url())).await.status,
        StatusCode::OK
    );
    fake.clear_faults();
    assert_eq!(c.get(&url).await.status, StatusCode::OK);

    fake.fault_times(None, Fault::too_many_requests("7"), 2);
    for _ in 0..2 {
        let r = c.get(&url).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.header("retry-after"), Some("7"));
        assert_eq!(r.error_code(), "TOOMANYREQUESTS");
    }
    assert_eq!(
        c.get(&url).await.status,
        StatusCode::OK,
        "fault_times runs out"
    );

    fake.fault(None, Fault::status(500));
    assert_eq!(c.get(&url).await.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn stall_headers_never_answers() {
    let fake = FakeRegistry::start().await;
    let img = fake.sample_image("f/h", "v1", 9);
    fake.fault(Some(Kind::Blob), Fault::StallHeaders);
    let c = TestClient::new().with_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let r = c
        .try_request(
            Method::GET,
            &format!("{}/v2/f/h/blobs/{}", fake.url(), img.layers[0]),
            &[],
        )
        .await;
    assert!(r.unwrap_err().contains("timed out"));
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(fake.count("GET", Kind::Blob), 1, "the request did arrive");
}

#[tokio::test]
async fn stall_body_sends_head_and_part_then_nothing() {
    let fake = FakeRegistry::start().await;
    let img = fake.sample_image("f/b", "v1", 10);
    fake.fault(Some(Kind::Blob), Fault::StallBody { sent: 1000 });
    let c = TestClient::new();
    let resp = c
        .send(
            Method::GET,
            &format!("{}/v2/f/b/blobs/{}", fake.url(), img.layers[1]),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-length"], "40000");
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(f) = body.frame().await {
            if let Some(d) = f.unwrap().data_ref() {
                got.extend_from_slice(d);
            }
        }
    })
    .await;
    assert!(read.is_err(), "the body must stall, not end");
    assert_eq!(got, img.layer_bytes[1][..1000].to_vec());
}

#[tokio::test]
async fn truncate_closes_short_of_content_length() {
    let fake = FakeRegistry::start().await;
    let img = fake.sample_image("f/t", "v1", 11);
    fake.fault_times(Some(Kind::Blob), Fault::Truncate { sent: 5000 }, 1);
    let c = TestClient::new();
    let url = format!("{}/v2/f/t/blobs/{}", fake.url(), img.layers[1]);
    let r = c.get(&url).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), Some("40000"));
    assert!(r.body_error.is_some(), "the body must break off");
    assert_eq!(r.body, img.layer_bytes[1].slice(..5000));
    // One-shot: the next answer is whole.
    let r = c.get(&url).await;
    assert!(r.complete());
    assert_eq!(r.body, img.layer_bytes[1]);
}

#[tokio::test]
async fn wrong_bytes_keep_length_but_not_digest() {
    let fake = FakeRegistry::start().await;
    let img = fake.sample_image("f/w", "v1", 12);
    fake.fault(Some(Kind::Blob), Fault::WrongBytes);
    let c = TestClient::new();
    let r = c
        .get(&format!("{}/v2/f/w/blobs/{}", fake.url(), img.layers[0]))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.complete());
    assert_eq!(r.body.len(), img.layer_bytes[0].len());
    assert_ne!(r.body, img.layer_bytes[0]);
    assert_ne!(r.sha256(), img.layers[0].to_string());
    assert_eq!(
        r.header("docker-content-digest"),
        Some(img.layers[0].to_string().as_str()),
        "the lie is in the bytes only"
    );
}

#[tokio::test]
async fn delay_holds_each_response() {
    let fake = FakeRegistry::start().await;
    fake.sample_image("f/d", "v1", 13);
    fake.set_delay(Some(Kind::Manifest), Duration::from_millis(500));
    let c = TestClient::new();
    let started = Instant::now();
    let url = format!("{}/v2/f/d/manifests/v1", fake.url());
    let (a, b) = tokio::join!(c.get(&url), c.get(&url));
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(
        took < Duration::from_millis(590),
        "delays overlap: {took:?}"
    );

    fake.set_delay(Some(Kind::Manifest), Duration::ZERO);
    let started = Instant::now();
    c.get(&url).await;
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn stop_refuses_connections_and_resume_listens_again() {
    let fake = FakeRegistry::start().await;
    fake.sample_image("f/x", "v1", 14);
    let c = TestClient::new();
    let url = format!("{}/v2/f/x/manifests/v1", fake.url());
    assert_eq!(c.get(&url).await.status, StatusCode::OK);

    fake.stop().await;
    // A fresh connection is refused; the pooled one was closed too.
    let refused = tokio::net::TcpStream::connect(fake.addr()).await;
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    assert!(c.try_request(Method::GET, &url, &[]).await.is_err());

    fake.resume().await;
    assert_eq!(c.get(&url).await.status, StatusCode::OK);
}

#[tokio::test]
async fn raw_requests_reach_the_fake_verbatim() {
    let fake = FakeRegistry::start().await;
    let (status, headers, body) = raw_request(fake.addr(), "GET", "/v2/../../etc/passwd").await;
    assert_eq!(status, 404);
    assert!(headers.iter().any(|(k, _)| k == "content-length"));
    assert!(String::from_utf8_lossy(&body).contains("NOT_FOUND"));
    assert_eq!(fake.requests()[0].path, "/v2/../../etc/passwd");
}

/// Reads from a raw socket until EOF or an error; returns what arrived and the error's kind.
async fn read_raw(s: &mut tokio::net::TcpStream) -> (Vec<u8>, Option<std::io::ErrorKind>) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Err(_) => panic!("the fake neither answered nor closed"),
            Ok(Ok(0)) => return (got, None),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (got, Some(e.kind())),
        }
    }
}

async fn raw_get(addr: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s
}

#[tokio::test]
async fn reset_answers_nothing_and_resets_the_connection() {
    let fake = FakeRegistry::start().await;
    let img = fake.sample_image("f/r", "v1", 12);
    fake.fault_times(Some(Kind::Blob), Fault::Reset, 1);
    let path = format!("/v2/f/r/blobs/{}", img.layers[1]);
    let mut s = raw_get(fake.addr(), &path).await;
    let (got, err) = read_raw(&mut s).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(err, Some(std::io::ErrorKind::ConnectionReset));
    assert_eq!(fake.faults_injected().get("reset before headers"), Some(&1));
    let r = TestClient::new()
        .get(&format!("{}{path}", fake.url()))
        .await;
    assert_eq!(r.body, img.layer_bytes[1], "one-shot");
}

#[tokio::test]
async fn reset_body_sends_head_and_part_then_resets() {
    let fake = FakeRegistry::start().await;
    let img = fake.sample_image("f/rb", "v1", 13);
    fake.fault_times(Some(Kind::Blob), Fault::ResetBody { sent: 3000 }, 1);
    let mut s = raw_get(fake.addr(), &format!("/v2/f/rb/blobs/{}", img.layers[1])).await;
    let (got, err) = read_raw(&mut s).await;
    assert_eq!(err, Some(std::io::ErrorKind::ConnectionReset));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("content-length: 40000"), "{text}");
    let split = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    // What arrived before the reset is a prefix of the 3000 bytes sent (a RST may discard some).
    let body = &got[split..];
    assert!(body.len() <= 3000);
    assert_eq!(body, &img.layer_bytes[1][..body.len()]);
}

#[tokio::test]
async fn slow_body_trickles_the_right_bytes() {
    let fake = FakeRegistry::start().await;
    let img = fake.sample_image("f/s", "v1", 14);
    fake.fault_times(
        Some(Kind::Blob),
        Fault::SlowBody {
            chunk: 10_000,
            every: Duration::from_millis(100),
        },
        1,
    );
    let started = Instant::now();
    let r = TestClient::new()
        .get(&format!("{}/v2/f/s/blobs/{}", fake.url(), img.layers[1]))
        .await;
    assert!(r.complete());
    assert_eq!(r.header("content-length"), Some("40000"));
    assert_eq!(r.body, img.layer_bytes[1]);
    assert!(started.elapsed() >= Duration::from_millis(300), "4 chunks");
    assert_eq!(fake.faults_injected().get("slow body"), Some(&1));
}

#[tokio::test]
async fn stall_limit_ends_stalls_by_closing_the_connection() {
    let fake = FakeRegistry::builder()
        .stall_limit(Duration::from_millis(300))
        .record_requests(false)
        .start()
        .await;
    let img = fake.sample_image("f/l", "v1", 15);
    let path = format!("/v2/f/l/blobs/{}", img.layers[1]);
    fake.fault_times(Some(Kind::Blob), Fault::StallHeaders, 1);
    let mut s = raw_get(fake.addr(), &path).await;
    let (got, _) = read_raw(&mut s).await;
    assert!(got.is_empty());
    fake.fault_times(Some(Kind::Blob), Fault::StallBody { sent: 1000 }, 1);
    let r = TestClient::new()
        .get(&format!("{}{path}", fake.url()))
        .await;
    assert!(r.body_error.is_some(), "the stalled body breaks off");
    assert_eq!(r.body, img.layer_bytes[1].slice(..1000));
    assert_eq!(fake.total(), 0, "no requests recorded");
    assert_eq!(fake.requests_seen(), 2, "but counted");
}
