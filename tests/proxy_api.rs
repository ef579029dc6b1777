//! The client-facing API of archway, in-process in front of the fake registry: ping, read-only
//! methods, routing, input validation, header agreement, conditional and range requests,
//! pass-through endpoints and upstream error mapping.

mod support;

use http::{Method, StatusCode};
use support::fake_registry::{DOCKER_MANIFEST, OCI_INDEX};
use support::{raw_request, upstream_for, FakeRegistry, Fault, Harness, Kind, SampleImage};

#[tokio::test]
async fn ping_is_json_with_api_version() {
    let h = Harness::start().await;
    for method in [Method::GET, Method::HEAD] {
        let r = h.request(method.clone(), "/v2/").await;
        assert_eq!(r.status, StatusCode::OK, "{method}");
        assert_eq!(
            r.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("content-length"), Some("2"));
        if method == Method::GET {
            assert_eq!(r.body.as_ref(), b"{}");
        } else {
            assert!(r.body.is_empty());
        }
    }
}

#[tokio::test]
async fn push_and_delete_methods_are_405_unsupported() {
    let h = Harness::start().await;
    let d = h.fake.add_blob("lib/x", &b"content"[..]);
    let cases = [
        (Method::POST, "/v2/lib/x/blobs/uploads/".to_owned()),
        (Method::PATCH, "/v2/lib/x/blobs/uploads/3f1c0b".to_owned()),
        (
            Method::PUT,
            format!("/v2/lib/x/blobs/uploads/3f1c0b?digest={d}"),
        ),
        (Method::PUT, "/v2/lib/x/manifests/v1".to_owned()),
        (Method::DELETE, format!("/v2/lib/x/manifests/{d}")),
        (Method::DELETE, format!("/v2/lib/x/blobs/{d}")),
        (Method::POST, "/v2/".to_owned()),
        // The upload path is refused for reads too: it is no blob.
        (Method::GET, "/v2/lib/x/blobs/uploads/3f1c0b".to_owned()),
    ];
    for (method, path) in cases {
        let r = h.request(method.clone(), &path).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(r.error_code(), "UNSUPPORTED", "{method} {path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(h.fake.total(), 0, "nothing reaches upstream");
}

/// Two upstreams with the same repository and different content, so the answer tells which one
/// was asked: the default `fake`, and `other` (alias `other.example`).
async fn two_upstreams() -> (Harness, FakeRegistry, SampleImage, SampleImage) {
    let other = FakeRegistry::start().await;
    let other_cfg = {
        let mut u = upstream_for("other", &other);
        u.aliases = vec!["other.example".to_owned()];
        u
    };
    let h = Harness::with(FakeRegistry::start().await, move |c| {
        c.upstreams.push(other_cfg)
    })
    .await;
    let mine = h.fake.sample_image("team/app", "v1", 1);
    let theirs = other.sample_image("team/app", "v1", 2);
    assert_ne!(mine.manifest_bytes, theirs.manifest_bytes);
    (h, other, mine, theirs)
}

#[tokio::test]
async fn routes_by_ns_prefix_host_then_default() {
    let (h, other, mine, theirs) = two_upstreams().await;
    let r = h.get("/v2/team/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, mine.manifest_bytes, "no hint: the default upstream");
    assert_eq!(other.total(), 0);
    assert_eq!(h.fake.count("GET", Kind::Manifest), 1);

    let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
        ("/v2/team/app/manifests/v1?ns=other".into(), vec![]),
        ("/v2/team/app/manifests/v1?ns=other.example".into(), vec![]),
        ("/v2/other/team/app/manifests/v1".into(), vec![]),
        ("/v2/other.example/team/app/manifests/v1".into(), vec![]),
        (
            "/v2/team/app/manifests/v1".into(),
            vec![("host", "other.example")],
        ),
        (
            "/v2/team/app/manifests/v1".into(),
            vec![("host", "other.example:5000")],
        ),
        (
            format!("/v2/team/app/blobs/{}?ns=other", theirs.layers[0]),
            vec![],
        ),
    ];
    for (path, headers) in cases {
        let r = h.get_with(&path, &headers).await;
        assert_eq!(r.status, StatusCode::OK, "{path} {headers:?}");
        let want = if path.contains("/blobs/") {
            &theirs.layer_bytes[0]
        } else {
            &theirs.manifest_bytes
        };
        assert_eq!(&r.body, want, "{path} {headers:?} reaches `other`");
    }
    // The repository asked upstream is the name without the prefix.
    let asked: Vec<Option<String>> = other.requests().into_iter().map(|r| r.repo).collect();
    assert!(!asked.is_empty());
    assert!(
        asked.iter().all(|r| r.as_deref() == Some("team/app")),
        "{asked:?}"
    );
    // An unknown Host falls back to the default.
    let r = h
        .get_with("/v2/team/app/manifests/v1", &[("host", "unknown.example")])
        .await;
    assert_eq!(r.body, mine.manifest_bytes);
    assert_eq!(h.fake.count_kind(Kind::Blob), 0);
}

#[tokio::test]
async fn unknown_ns_is_name_unknown_without_upstream_connection() {
    let (h, other, _, _) = two_upstreams().await;
    for path in [
        "/v2/team/app/manifests/v1?ns=nope.example".to_owned(),
        format!(
            "/v2/team/app/blobs/{}?ns=evil.example",
            h.fake.add_blob("team/app", &b"z"[..])
        ),
        "/v2/team/app/tags/list?ns=127.0.0.1:1".to_owned(),
    ] {
        let r = h.get(&path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.error_code(), "NAME_UNKNOWN", "{path}");
    }
    assert_eq!(h.fake.connections(), 0);
    assert_eq!(other.connections(), 0);
}

#[tokio::test]
async fn malformed_names_and_digests_are_400_and_malformed_manifest_references_404() {
    let h = Harness::start().await;
    let long_tag = "t".repeat(129);
    let cases: Vec<(String, &str)> =
        vec![
        ("/v2/UPPER/case/manifests/v1".into(), "NAME_INVALID"),
        ("/v2/a..b/manifests/v1".into(), "NAME_INVALID"),
        ("/v2/-lead/manifests/v1".into(), "NAME_INVALID"),
        ("/v2/a//b/manifests/v1".into(), "NAME_INVALID"),
        ("/v2/a/blobs/sha256:abc".into(), "DIGEST_INVALID"),
        ("/v2/a/blobs/md5:d41d8cd98f00b204e9800998ecf8427e".into(), "DIGEST_INVALID"),
        (
            "/v2/a/blobs/sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
                .into(),
            "DIGEST_INVALID",
        ),
        ("/v2/a/blobs/latest".into(), "DIGEST_INVALID"),
        ("/v2/a/referrers/notadigest".into(), "DIGEST_INVALID"),
    ];
    for (path, code) in cases {
        let r = h.get(&path).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text());
        assert_eq!(r.error_code(), code, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.json()["errors"][0]["message"].is_string());
    }
    // A manifest reference that is neither a tag nor a digest: unknown, as Distribution answers
    // (it was 400 TAG_INVALID / DIGEST_INVALID before the OCI conformance suite said otherwise).
    for path in [
        "/v2/a/manifests/-bad".to_owned(),
        format!("/v2/a/manifests/{long_tag}"),
        "/v2/a/manifests/bad!tag".to_owned(),
        "/v2/a/manifests/sha256:zz".to_owned(),
        "/v2/a/manifests/.INVALID_MANIFEST_NAME".to_owned(),
    ] {
        let r = h.get(&path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text());
        assert_eq!(r.error_code(), "MANIFEST_UNKNOWN", "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(h.fake.connections(), 0);
}

#[tokio::test]
async fn path_traversal_is_never_served() {
    let h = Harness::start().await;
    let d = h.fake.add_blob("library/alpine", &b"x"[..]);
    let hex = d.hex().to_owned();
    // (raw request target, the code it must get)
    let cases: Vec<(String, &[&str])> = vec![
        (format!("/v2/../../etc/passwd/blobs/{d}"), &["NAME_INVALID"]),
        (
            format!("/v2/%2e%2e/%2e%2e/etc/passwd/blobs/{d}"),
            &["NAME_INVALID"],
        ),
        (
            format!("/v2/library/..%2f..%2fetc/blobs/{d}"),
            &["NAME_INVALID"],
        ),
        (
            "/v2/%2e%2e%2f%2e%2e%2fetc%2fpasswd/manifests/latest".into(),
            &["NAME_INVALID"],
        ),
        (
            "/v2/library/alpine/blobs/sha256:..%2f..%2f..%2fetc%2fpasswd".into(),
            &["DIGEST_INVALID"],
        ),
        (
            format!("/v2/library/alpine/blobs/sha256:../../{hex}"),
            &["NAME_UNKNOWN", "DIGEST_INVALID", "NAME_INVALID"],
        ),
        // A manifest reference that is neither tag nor digest is unknown (as Distribution says).
        (
            "/v2/library/alpine/manifests/..%2f..%2fsecret".into(),
            &["MANIFEST_UNKNOWN"],
        ),
        (
            "/v2/library/alpine/manifests/..".into(),
            &["MANIFEST_UNKNOWN"],
        ),
        (
            "/v2/./library/alpine/manifests/latest".into(),
            &["NAME_INVALID"],
        ),
        // After the API keyword: no endpoint, so nothing to serve.
        (
            "/v2/library/alpine/blobs/../../../../etc/passwd".into(),
            &["NAME_UNKNOWN", "NAME_INVALID", "DIGEST_INVALID"],
        ),
        (
            "/v2/../../../../etc/passwd".into(),
            &["NAME_UNKNOWN", "NAME_INVALID"],
        ),
    ];
    for (target, codes) in cases {
        let (status, headers, body) = raw_request(h.addr(), "GET", &target).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        assert!(
            (400..500).contains(&status),
            "{target}: status {status}, body {text}"
        );
        let v: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{target}: not a registry error body ({e}): {text}"));
        let code = v["errors"][0]["code"].as_str().unwrap_or_default();
        assert!(
            codes.contains(&code),
            "{target}: code {code}, want one of {codes:?}"
        );
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "content-type" && v == "application/json"),
            "{target}"
        );
        assert!(!text.contains("root:"), "{target} leaked a file");
    }
    assert_eq!(h.fake.total(), 0, "no traversal attempt reaches upstream");
    // The data dir holds nothing outside the cache's own folders.
    for f in support::files_under(&h.data_dir()) {
        assert!(!f.ends_with("passwd"), "{}", f.display());
    }
}

#[tokio::test]
async fn head_and_get_agree_on_headers() {
    let h = Harness::start().await;
    let img = h.fake.sample_image("lib/app", "v1", 3);
    let paths = [
        "/v2/lib/app/manifests/v1".to_owned(),
        format!("/v2/lib/app/manifests/{}", img.manifest),
        format!("/v2/lib/app/blobs/{}", img.layers[1]),
        format!("/v2/lib/app/blobs/{}", img.config),
    ];
    // Cold HEAD first (answered from upstream's HEAD), then GET, then warm HEAD.
    for path in &paths {
        let cold_head = h.head(path).await;
        let get = h.get(path).await;
        let warm_head = h.head(path).await;
        assert_eq!(get.status, StatusCode::OK, "{path}");
        assert_eq!(cold_head.status, StatusCode::OK, "{path}");
        assert_eq!(warm_head.status, StatusCode::OK, "{path}");
        assert!(cold_head.body.is_empty() && warm_head.body.is_empty());
        let len = get.body.len().to_string();
        for head in [&cold_head, &warm_head] {
            for name in [
                "content-length",
                "content-type",
                "docker-content-digest",
                "etag",
            ] {
                assert_eq!(head.header(name), get.header(name), "{path}: {name}");
            }
        }
        assert_eq!(get.header("content-length"), Some(len.as_str()), "{path}");
    }
    let m = h.get("/v2/lib/app/manifests/v1").await;
    let digest = img.manifest.to_string();
    assert_eq!(m.header("content-type"), Some(DOCKER_MANIFEST));
    assert_eq!(m.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(m.header("etag"), Some(format!("\"{digest}\"").as_str()));
    assert_eq!(m.body, img.manifest_bytes);
    // A cold blob HEAD must not start a download.
    assert_eq!(h.fake.count("HEAD", Kind::Blob), 2);
}

#[tokio::test]
async fn if_none_match_gives_304() {
    let h = Harness::start().await;
    let img = h.fake.sample_image("lib/app", "v1", 4);
    let quoted = format!("\"{}\"", img.manifest);
    for path in [
        "/v2/lib/app/manifests/v1".to_owned(),
        format!("/v2/lib/app/manifests/{}", img.manifest),
    ] {
        let r = h.get_with(&path, &[("if-none-match", &quoted)]).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some(quoted.as_str()));
        let other = h
            .get_with(&path, &[("if-none-match", "\"sha256:0000\"")])
            .await;
        assert_eq!(other.status, StatusCode::OK);
        assert_eq!(other.body, img.manifest_bytes);
    }
    let blob = format!("/v2/lib/app/blobs/{}", img.layers[0]);
    assert_eq!(h.get(&blob).await.status, StatusCode::OK);
    let tag = format!("\"{}\"", img.layers[0]);
    let r = h.get_with(&blob, &[("if-none-match", &tag)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn blob_ranges_are_206_cold_and_warm() {
    let h = Harness::start().await;
    let img = h.fake.sample_image("lib/app", "v1", 5);
    let bytes = img.layer_bytes[1].clone();
    let path = format!("/v2/lib/app/blobs/{}", img.layers[1]);

    // Cold: the first request is itself a range.
    let r = h.get_with(&path, &[("range", "bytes=100-199")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{}", r.text());
    assert_eq!(r.body, bytes.slice(100..200));
    assert_eq!(r.header("content-range"), Some("bytes 100-199/40000"));
    assert_eq!(r.header("content-length"), Some("100"));

    let r = h.get_with(&path, &[("range", "bytes=39000-")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, bytes.slice(39000..));
    assert_eq!(r.header("content-range"), Some("bytes 39000-39999/40000"));

    let r = h.get_with(&path, &[("range", "bytes=0-0")]).await;
    assert_eq!(r.body, bytes.slice(0..1));

    // Past the end: clamped.
    let r = h.get_with(&path, &[("range", "bytes=39990-99999")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, bytes.slice(39990..));
    assert_eq!(r.header("content-range"), Some("bytes 39990-39999/40000"));

    let r = h.get_with(&path, &[("range", "bytes=40000-")]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), Some("bytes */40000"));

    let whole = h.get(&path).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.body, bytes);
    assert_eq!(
        h.fake.count("GET", Kind::Blob),
        1,
        "ranges are cut from one full download"
    );
    assert!(h
        .fake
        .requests()
        .iter()
        .all(|r| !r.headers.contains_key("range")));
}

#[tokio::test]
async fn tags_list_pagination_passes_link() {
    let h = Harness::start().await;
    h.fake.add_tags("lib/app", &["a", "b", "c", "d", "e"]);

    let all = h.get("/v2/lib/app/tags/list").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(
        all.json()["tags"],
        serde_json::json!(["a", "b", "c", "d", "e"])
    );
    assert!(all.header("link").is_none());

    let p1 = h.get("/v2/lib/app/tags/list?n=2").await;
    assert_eq!(p1.json()["tags"], serde_json::json!(["a", "b"]));
    let link = p1.header("link").expect("Link header passed").to_owned();
    assert_eq!(link, "</v2/lib/app/tags/list?n=2&last=b>; rel=\"next\"");
    let q = h.fake.requests().pop().unwrap();
    assert_eq!(q.query.as_deref(), Some("n=2"), "n passed upstream");

    let p2 = h.get("/v2/lib/app/tags/list?n=2&last=b").await;
    assert_eq!(p2.json()["tags"], serde_json::json!(["c", "d"]));
    let p3 = h.get("/v2/lib/app/tags/list?n=2&last=d").await;
    assert_eq!(p3.json()["tags"], serde_json::json!(["e"]));
    assert!(p3.header("link").is_none());

    // Under a path prefix, the next page stays under it.
    let pre = h.get("/v2/fake/lib/app/tags/list?n=2").await;
    assert_eq!(pre.json()["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(
        pre.header("link"),
        Some("</v2/fake/lib/app/tags/list?n=2&last=b>; rel=\"next\"")
    );

    let missing = h.get("/v2/nobody/here/tags/list").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error_code(), "NAME_UNKNOWN");
}

/// A client routed by `?ns=` that follows the Link must reach the same upstream for page 2.
#[tokio::test]
async fn tags_list_link_keeps_the_ns_upstream() {
    let (h, other, _, _) = two_upstreams().await;
    other.add_tags("team/app", &["o1", "o2", "o3"]);
    let p1 = h.get("/v2/team/app/tags/list?ns=other&n=2").await;
    assert_eq!(p1.json()["tags"], serde_json::json!(["o1", "o2"]));
    let link = p1.header("link").expect("Link header passed").to_owned();
    let target = link
        .strip_prefix('<')
        .and_then(|l| l.split_once('>'))
        .map(|(t, _)| t.to_owned())
        .unwrap();
    let p2 = h.get(&target).await;
    assert_eq!(p2.status, StatusCode::OK, "following {link}");
    assert_eq!(
        p2.json()["tags"],
        serde_json::json!(["o3", "v1"]),
        "page 2 via {link} must come from the same upstream"
    );
}

#[tokio::test]
async fn referrers_pass_through_with_filter_and_link() {
    let h = Harness::start().await;
    let img = h.fake.sample_image("lib/app", "v1", 6);
    let sig = h
        .fake
        .add_referrer("lib/app", &img.manifest, "application/vnd.dev.sig", 1);
    let sbom = h
        .fake
        .add_referrer("lib/app", &img.manifest, "application/spdx+json", 2);
    let path = format!("/v2/lib/app/referrers/{}", img.manifest);

    let r = h.get(&path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    let mut found: Vec<String> = r.json()["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect();
    found.sort();
    let mut want = vec![sig.to_string(), sbom.to_string()];
    want.sort();
    assert_eq!(found, want);

    let f = h
        .get(&format!("{path}?artifactType=application%2Fspdx%2Bjson"))
        .await;
    assert_eq!(f.json()["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(f.json()["manifests"][0]["digest"], sbom.to_string());
    assert_eq!(f.header("oci-filters-applied"), Some("artifactType"));
    // An unescaped `/` is legal in a query. Either the filter is applied and says so, or it is
    // not and the client filters itself (the spec's fallback): never a filtered-looking lie.
    let raw = h
        .get(&format!("{path}?artifactType=application/spdx%2Bjson"))
        .await;
    assert_eq!(raw.status, StatusCode::OK);
    let n = raw.json()["manifests"].as_array().unwrap().len();
    match raw.header("oci-filters-applied") {
        Some("artifactType") => assert_eq!(n, 1),
        None => assert_eq!(n, 2),
        Some(other) => panic!("OCI-Filters-Applied: {other}"),
    }

    let paged = h.get(&format!("{path}?n=1")).await;
    assert_eq!(paged.status, StatusCode::OK);
    if let Some(link) = paged.header("link") {
        assert!(link.starts_with(&format!("<{path}?")), "{link}");
    }
}

#[tokio::test]
async fn upstream_404_maps_to_manifest_and_blob_unknown() {
    let h = Harness::start().await;
    h.fake.sample_image("lib/app", "v1", 7);
    let r = h.get("/v2/lib/app/manifests/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "MANIFEST_UNKNOWN");
    let d = support::sha256_digest(b"never stored");
    let r = h.get(&format!("/v2/lib/app/manifests/{d}")).await;
    assert_eq!(r.error_code(), "MANIFEST_UNKNOWN");
    let r = h.get(&format!("/v2/lib/app/blobs/{d}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "BLOB_UNKNOWN");
    let r = h.head(&format!("/v2/lib/app/blobs/{d}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn upstream_429_is_429_with_retry_after() {
    let h = Harness::start().await;
    let img = h.fake.sample_image("lib/app", "v1", 8);
    h.fake.fault(None, Fault::too_many_requests("17"));
    for path in [
        "/v2/lib/app/manifests/v1".to_owned(),
        format!("/v2/lib/app/manifests/{}", img.manifest),
        format!("/v2/lib/app/blobs/{}", img.layers[0]),
        "/v2/lib/app/tags/list".to_owned(),
    ] {
        let r = h.get(&path).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(r.error_code(), "TOOMANYREQUESTS", "{path}");
        assert_eq!(r.header("retry-after"), Some("17"), "{path}");
    }
}

#[tokio::test]
async fn upstream_5xx_is_502() {
    let h = Harness::start().await;
    let img = h.fake.sample_image("lib/app", "v1", 9);
    for status in [500, 503] {
        h.fake.clear_faults();
        h.fake.fault(None, Fault::status(status));
        for path in [
            "/v2/lib/app/manifests/v1".to_owned(),
            format!("/v2/lib/app/manifests/{}", img.manifest),
            format!("/v2/lib/app/blobs/{}", img.layers[0]),
        ] {
            let r = h.get(&path).await;
            assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{status} {path}");
            assert!(r.json()["errors"][0]["code"].is_string());
        }
    }
}

/// A Docker Hub-like upstream: one-component names get `library/`, and the Link of tags/list is
/// rewritten back to the name the client used.
#[tokio::test]
async fn library_prefix_is_added_for_hub_like_upstreams() {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.upstreams[0].library_prefix = true;
    })
    .await;
    let img = h.fake.sample_image("library/alpine", "3.20", 10);
    h.fake.add_tags("library/alpine", &["3.18", "3.19"]);
    let r = h.get("/v2/alpine/manifests/3.20").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, img.manifest_bytes);
    assert_eq!(
        h.fake.requests()[0].path,
        "/v2/library/alpine/manifests/3.20"
    );
    let l = h.get("/v2/alpine/tags/list?n=1").await;
    assert_eq!(l.json()["tags"], serde_json::json!(["3.18"]));
    assert_eq!(
        l.header("link"),
        Some("</v2/alpine/tags/list?n=1&last=3.18>; rel=\"next\"")
    );
    // Two-component names are left alone.
    let other = h.fake.sample_image("team/app", "v1", 11);
    assert_eq!(
        h.get("/v2/team/app/manifests/v1").await.body,
        other.manifest_bytes
    );
}
