//! Platform rewriting, in-process in front of the fake registry, with real clients' exact header
//! sets (tests/data/*client-requests.jsonl): which clients get an index passed through, which get
//! one platform's manifest (converted to Docker schema2 or refused when they can't take OCI), for
//! which platform (route, X-Meta-Platform, User-Agent, default), and that every rewritten answer
//! is byte for byte the child stored upstream (or its conversion) under a digest it hashes to.

mod support;

use archway::config::RouteConfig;
use archway::conversion::convert_oci_to_docker;
use archway::platform::WindowsMatch;
use archway::route_policy::{OciForLegacy, RewriteMode, RouteMatch};
use http::{Method, StatusCode};
use std::net::SocketAddr;
use support::clients::{self, ClientHeaders};
use support::fake_registry::{
    DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, OCI_INDEX, OCI_LAYER, OCI_MANIFEST,
};
use support::images::{
    self, Image, DOCKER_LIST, LTSC2019_NEWEST, LTSC2022_NEWEST, OCI_NONDISTRIBUTABLE_LAYER,
};
use support::{sha256_digest, FakeRegistry, Harness, Kind, Reply};

const REPO: &str = "team/app";
const TAG_PATH: &str = "/v2/team/app/manifests/v1";
const BUILDX_PLATFORMS: [&str; 3] = ["linux/amd64", "linux/arm64", "linux/arm/v7"];
/// linux/amd64 is not first, so "the first entry" and "linux/amd64" differ.
const LIST_PLATFORMS: [&str; 5] = [
    "linux/arm/v5",
    "linux/arm/v6",
    "linux/arm/v7",
    "linux/amd64",
    "linux/arm64/v8",
];
const DOCKER_FOREIGN_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

// === helpers ===

/// How a client asks for a tag: modern clients HEAD it first, Docker ≤ 18.06 GETs it.
#[derive(Debug, Clone, Copy)]
enum First {
    Head,
    Get,
}

/// What HEAD and GET of one tag must agree on.
const AGREED: [&str; 5] = [
    "content-type",
    "content-length",
    "docker-content-digest",
    "etag",
    "vary",
];

/// HEAD and GET of `path` on `addr` (in the order `first`) with the same headers; asserts they
/// agree and returns the GET.
async fn pull_at(
    h: &Harness,
    addr: SocketAddr,
    first: First,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let url = format!("http://{addr}{path}");
    let (head, get) = match first {
        First::Head => {
            let head = h.client.request(Method::HEAD, &url, headers).await;
            (head, h.client.request(Method::GET, &url, headers).await)
        }
        First::Get => {
            let get = h.client.request(Method::GET, &url, headers).await;
            (h.client.request(Method::HEAD, &url, headers).await, get)
        }
    };
    assert_eq!(
        head.status,
        get.status,
        "HEAD and GET {path} differ in status (GET said {})",
        get.text()
    );
    for name in AGREED {
        assert_eq!(
            head.header_all(name),
            get.header_all(name),
            "HEAD and GET {path} differ in {name}"
        );
    }
    assert!(head.body.is_empty(), "HEAD {path} has a body");
    assert!(get.complete(), "GET {path} broke off: {:?}", get.body_error);
    get
}

async fn pull(h: &Harness, path: &str, headers: &[(&str, &str)]) -> Reply {
    pull_at(h, h.addr(), First::Head, path, headers).await
}

/// Docker ≤ 18.06 GETs the tag directly.
async fn pull_get_first(h: &Harness, path: &str, headers: &[(&str, &str)]) -> Reply {
    pull_at(h, h.addr(), First::Get, path, headers).await
}

/// A 200 whose body is exactly `bytes`, with their media type, digest, ETag and length.
#[track_caller]
fn assert_answer(r: &Reply, bytes: &[u8], media_type: &str, what: &str) {
    assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());
    assert!(
        r.body.as_ref() == bytes,
        "{what}: the body is not the expected bytes; got {}",
        r.text()
    );
    assert_eq!(r.header("content-type"), Some(media_type), "{what}");
    let digest = sha256_digest(bytes).to_string();
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.as_str()),
        "{what}"
    );
    assert_eq!(
        r.header("etag"),
        Some(format!("\"{digest}\"").as_str()),
        "{what}"
    );
    let len = bytes.len().to_string();
    assert_eq!(r.header("content-length"), Some(len.as_str()), "{what}");
}

/// The child stored upstream, byte for byte.
#[track_caller]
fn assert_child(r: &Reply, child: &Image, what: &str) {
    assert_answer(r, &child.bytes, &child.media_type, what);
}

/// `convert_oci_to_docker(child as stored upstream)`, byte for byte, and — checked here without
/// archway's code — a schema2 manifest naming the very same config and layers.
#[track_caller]
fn assert_converted(r: &Reply, child: &Image, what: &str) {
    assert_eq!(child.media_type, OCI_MANIFEST, "fixture: {what}");
    let expected = convert_oci_to_docker(&child.bytes).unwrap();
    assert_answer(r, &expected, DOCKER_MANIFEST, what);
    let got = r.json();
    let oci: serde_json::Value = serde_json::from_slice(&child.bytes).unwrap();
    assert_eq!(got["schemaVersion"], 2, "{what}");
    assert_eq!(got["mediaType"], DOCKER_MANIFEST, "{what}");
    assert_eq!(got["config"]["mediaType"], DOCKER_CONFIG, "{what}");
    assert_eq!(got["config"]["digest"], child.config.to_string(), "{what}");
    assert_eq!(got["config"]["size"], child.config_bytes.len(), "{what}");
    let layers = got["layers"].as_array().unwrap();
    assert_eq!(layers.len(), child.layers.len(), "{what}");
    for (i, (l, (media_type, digest, _))) in layers.iter().zip(&child.layers).enumerate() {
        let want_type = match media_type.as_str() {
            OCI_LAYER => DOCKER_LAYER,
            OCI_NONDISTRIBUTABLE_LAYER => DOCKER_FOREIGN_LAYER_GZIP,
            other => panic!("fixture layer type {other}"),
        };
        assert_eq!(l["mediaType"], want_type, "{what}: layer {i}");
        assert_eq!(l["digest"], digest.to_string(), "{what}: layer {i}");
        assert_eq!(l["size"], oci["layers"][i]["size"], "{what}: layer {i}");
        assert_eq!(l["urls"], oci["layers"][i]["urls"], "{what}: layer {i}");
    }
}

/// The answer says it depends on the client's hints.
#[track_caller]
fn assert_vary(r: &Reply, what: &str) {
    let vary: Vec<String> = r
        .header_all("vary")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for name in ["accept", "user-agent", "x-meta-platform"] {
        assert!(
            vary.iter().any(|v| v == name),
            "{what}: Vary {vary:?} lacks {name}"
        );
    }
}

/// A registry error body with `code` whose message contains every one of `words`.
#[track_caller]
fn assert_error(r: &Reply, status: StatusCode, code: &str, words: &[&str], what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(r.error_code(), code, "{what}");
    let message = r.json()["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for w in words {
        assert!(
            message.contains(w),
            "{what}: message {message:?} does not mention {w:?}"
        );
    }
}

fn route(matcher: RouteMatch, platform: Option<&str>, rewrite: RewriteMode) -> RouteConfig {
    RouteConfig {
        matcher,
        platform: platform.map(str::to_owned),
        rewrite,
        ..Default::default()
    }
}

fn any_request() -> RouteMatch {
    RouteMatch::default()
}

fn by_host(host: &str) -> RouteMatch {
    RouteMatch {
        host: Some(host.to_owned()),
        ..Default::default()
    }
}

/// `client` with its User-Agent replaced.
fn with_user_agent(client: &ClientHeaders, ua: &str) -> ClientHeaders {
    client.with_user_agent(ua)
}

/// Two ports free right now (both bound at once, so they differ), for a two-listener archway.
fn two_free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

// === OCI index from buildx to Docker 17.06 ===

#[tokio::test]
async fn buildx_index_to_docker_1706_on_amd64_is_the_amd64_child_as_schema2() {
    let h = Harness::start().await;
    let idx = images::buildx_index(&h.fake, REPO, "v1", 1, &BUILDX_PLATFORMS);
    assert_eq!(idx.attestations.len(), 3, "fixture has attestations");
    let c = clients::docker_1706();
    let r = pull_get_first(&h, TAG_PATH, &c.lines()).await;
    assert_converted(&r, idx.image("linux/amd64"), "Docker 17.06 amd64");
    assert_vary(&r, "Docker 17.06 amd64");
    // The decision was made here: upstream was asked with every manifest type, never with the
    // client's narrower set (Distribution would then rewrite on its own).
    let asked: Vec<_> = h
        .fake
        .requests()
        .into_iter()
        .filter(|q| q.kind == Kind::Manifest)
        .collect();
    assert!(!asked.is_empty());
    for q in asked {
        let accept: Vec<String> = q
            .headers
            .get_all("accept")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let accept = accept.join(",");
        for t in [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST] {
            assert!(accept.contains(t), "{} asked with Accept {accept}", q.path);
        }
    }
}

#[tokio::test]
async fn buildx_index_to_docker_1706_on_arm64_by_meta_header_or_user_agent() {
    let h = Harness::start().await;
    let idx = images::buildx_index(&h.fake, REPO, "v1", 2, &BUILDX_PLATFORMS);
    let arm64 = idx.image("linux/arm64");
    // X-Meta-Platform beats the User-Agent's linux/amd64.
    let amd64_ua = clients::docker_1706();
    for meta in ["linux/arm64", "linux/aarch64", "linux/arm64/v8"] {
        let r = pull_get_first(&h, TAG_PATH, &amd64_ua.with(&[("X-Meta-Platform", meta)])).await;
        assert_converted(&r, arm64, &format!("X-Meta-Platform {meta}"));
        assert_vary(&r, meta);
    }
    let c = clients::docker_1706_arm64();
    let r = pull_get_first(&h, TAG_PATH, &c.lines()).await;
    assert_converted(&r, arm64, "Docker 17.06 arm64 User-Agent");
}

#[tokio::test]
async fn buildx_index_to_docker_1706_on_arm_is_arm_v7() {
    let h = Harness::start().await;
    let idx = images::buildx_index(&h.fake, REPO, "v1", 3, &BUILDX_PLATFORMS);
    let armv7 = idx.image("linux/arm/v7");
    let c = clients::docker_1706_arm();
    let r = pull_get_first(&h, TAG_PATH, &c.lines()).await;
    assert_converted(&r, armv7, "User-Agent arch/arm");
    let c = clients::docker_1706();
    let r = pull_get_first(
        &h,
        TAG_PATH,
        &c.with(&[("X-Meta-Platform", "linux/arm/v7")]),
    )
    .await;
    assert_converted(&r, armv7, "X-Meta-Platform linux/arm/v7");
}

#[tokio::test]
async fn converted_answer_is_served_by_its_digest_then_its_blobs() {
    let mut h = Harness::start().await;
    let idx = images::buildx_index(&h.fake, REPO, "v1", 4, &BUILDX_PLATFORMS);
    let child = idx.image("linux/amd64");
    let c = clients::docker_1706();
    let tag = pull_get_first(&h, TAG_PATH, &c.lines()).await;
    assert_converted(&tag, child, "tag");
    let digest = tag.header("docker-content-digest").unwrap().to_owned();
    assert_eq!(
        digest,
        tag.sha256(),
        "the digest is the sha256 of the answered bytes"
    );
    assert_ne!(digest, child.digest.to_string());

    // What Docker does next: GET the manifest by the digest it was given, then the blobs.
    let by_digest_path = format!("/v2/{REPO}/manifests/{digest}");
    let m = pull_get_first(&h, &by_digest_path, &c.lines()).await;
    assert_answer(
        &m,
        &tag.body,
        DOCKER_MANIFEST,
        "GET by the converted digest",
    );
    assert_eq!(
        h.fake.count_path("GET", &by_digest_path),
        0,
        "upstream never has the converted manifest; archway must not ask for it"
    );
    let blobs = std::iter::once((child.config.clone(), child.config_bytes.clone()))
        .chain(child.layers.iter().map(|(_, d, b)| (d.clone(), b.clone())));
    for (d, bytes) in blobs {
        let r = h
            .get_with(&format!("/v2/{REPO}/blobs/{d}"), &c.lines())
            .await;
        assert_eq!(r.status, StatusCode::OK, "blob {d}: {}", r.text());
        assert_eq!(r.sha256(), d.to_string(), "blob {d} verifies");
        assert!(r.body == bytes, "blob {d} is the fake's bytes");
    }

    // The converted manifest is kept like any other: a restart still serves it by digest.
    h.restart().await;
    let m = pull_get_first(&h, &by_digest_path, &c.lines()).await;
    assert_answer(
        &m,
        &tag.body,
        DOCKER_MANIFEST,
        "GET by converted digest after restart",
    );
}

#[tokio::test]
async fn reject_route_refuses_an_oci_child_to_a_client_without_oci() {
    let fake = FakeRegistry::start().await;
    let h = Harness::with(fake, |cfg| {
        cfg.routes.push(RouteConfig {
            oci_for_legacy: OciForLegacy::Reject,
            ..route(any_request(), None, RewriteMode::Legacy)
        })
    })
    .await;
    let idx = images::buildx_index(&h.fake, REPO, "v1", 5, &BUILDX_PLATFORMS);
    let list = images::docker_list(&h.fake, REPO, "list", 6, &LIST_PLATFORMS);
    let c = clients::docker_1706();
    let r = pull_get_first(&h, TAG_PATH, &c.lines()).await;
    assert_error(
        &r,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
        &["OCI", "reject"],
        "Docker 17.06 on a reject route",
    );
    // Nothing changes for clients that take OCI, or for Docker children.
    let modern = clients::docker_2010();
    let r = pull(&h, TAG_PATH, &modern.lines()).await;
    assert_answer(&r, &idx.bytes, OCI_INDEX, "Docker 20.10 on a reject route");
    let r = pull(
        &h,
        &format!("/v2/{REPO}/manifests/list"),
        &clients::schema2_only().lines(),
    )
    .await;
    assert_child(
        &r,
        list.image("linux/amd64"),
        "a Docker child on a reject route",
    );
}

/// On a `layers = "as-is"` route a zstd layer is never converted: OCI -> schema2 cannot
/// express it, so a Docker 17.06 client gets a 404 saying so (tests/zstd_layers.rs: converted
/// everywhere else).
#[tokio::test]
async fn zstd_layer_on_an_as_is_route_cannot_be_converted_and_is_a_404_saying_so() {
    let h = Harness::with(FakeRegistry::start().await, |cfg| {
        cfg.routes.push(RouteConfig {
            layers: archway::route_policy::LayersMode::AsIs,
            ..route(any_request(), None, RewriteMode::Legacy)
        })
    })
    .await;
    let idx = images::zstd_index(&h.fake, REPO, "v1", 7);
    let c = clients::docker_1706();
    let r = pull_get_first(&h, TAG_PATH, &c.lines()).await;
    assert_error(
        &r,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
        &["zstd"],
        "zstd layer to Docker 17.06",
    );
    // The arm64 image has gzip layers only: it converts.
    let r = pull_get_first(&h, TAG_PATH, &clients::docker_1706_arm64().lines()).await;
    assert_converted(&r, idx.image("linux/arm64"), "gzip-only arm64 image");
    let r = pull(&h, TAG_PATH, &clients::docker_2010().lines()).await;
    assert_answer(&r, &idx.bytes, OCI_INDEX, "Docker 20.10 takes the index");
}

#[tokio::test]
async fn nested_index_is_followed_to_the_platform_child() {
    let h = Harness::start().await;
    let (idx, inner) = images::nested_index(&h.fake, REPO, "v1", 8);
    let r = pull_get_first(&h, TAG_PATH, &clients::docker_1706().lines()).await;
    assert_converted(
        &r,
        inner.image("linux/amd64"),
        "amd64 through the inner index",
    );
    let r = pull_get_first(&h, TAG_PATH, &clients::docker_1706_arm64().lines()).await;
    assert_converted(&r, idx.image("linux/arm64"), "arm64 from the top level");
    let r = pull(&h, TAG_PATH, &clients::docker_2010().lines()).await;
    assert_answer(
        &r,
        &idx.bytes,
        OCI_INDEX,
        "Docker 20.10 takes the top index",
    );
}

// === Docker manifest lists ===

#[tokio::test]
async fn docker_list_to_a_schema2_only_client_is_the_user_agent_platform() {
    let h = Harness::start().await;
    let list = images::docker_list(&h.fake, REPO, "v1", 9, &LIST_PLATFORMS);
    let script = clients::schema2_only();
    let r = pull(&h, TAG_PATH, &script.lines()).await;
    assert_child(&r, list.image("linux/amd64"), "schema2-only, no hint");
    assert_vary(&r, "schema2-only, no hint");
    // The schema2-only Accept set with a User-Agent that names a platform.
    let arm64 = with_user_agent(&script, clients::docker_1706_arm64().user_agent().unwrap());
    let r = pull(&h, TAG_PATH, &arm64.lines()).await;
    assert_child(&r, list.image("linux/arm64/v8"), &arm64.name);
    let arm = with_user_agent(&script, clients::docker_1706_arm().user_agent().unwrap());
    let r = pull(&h, TAG_PATH, &arm.lines()).await;
    assert_child(&r, list.image("linux/arm/v7"), &arm.name);
}

#[tokio::test]
async fn docker_list_to_a_schema2_only_client_on_a_route_is_the_route_platform() {
    let fake = FakeRegistry::start().await;
    let h = Harness::with(fake, |cfg| {
        cfg.routes.push(route(
            any_request(),
            Some("linux/arm/v6"),
            RewriteMode::Legacy,
        ))
    })
    .await;
    let list = images::docker_list(&h.fake, REPO, "v1", 10, &LIST_PLATFORMS);
    let script = clients::schema2_only();
    let r = pull(&h, TAG_PATH, &script.lines()).await;
    assert_child(
        &r,
        list.image("linux/arm/v6"),
        "no hint: the route's platform",
    );
    // `arch/arm` names no variant: the route's v6 stays.
    let arm = with_user_agent(&script, clients::docker_1706_arm().user_agent().unwrap());
    let r = pull(&h, TAG_PATH, &arm.lines()).await;
    assert_child(&r, list.image("linux/arm/v6"), &arm.name);
    // A User-Agent that disagrees on the architecture stands alone.
    let amd64 = with_user_agent(&script, clients::docker_1706().user_agent().unwrap());
    let r = pull(&h, TAG_PATH, &amd64.lines()).await;
    assert_child(&r, list.image("linux/amd64"), &amd64.name);
    // Docker 17.06 takes Docker lists: nothing to rewrite on a legacy route.
    let r = pull_get_first(&h, TAG_PATH, &clients::docker_1706().lines()).await;
    assert_answer(&r, &list.bytes, DOCKER_LIST, "Docker 17.06 on the route");
}

#[tokio::test]
async fn docker_list_to_docker_1706_is_passed_through() {
    let h = Harness::start().await;
    let list = images::docker_list(&h.fake, REPO, "v1", 11, &LIST_PLATFORMS);
    let wl = images::windows_list(&h.fake, REPO, "win", 12);
    for c in [
        clients::docker_1706(),
        clients::docker_1706_arm64(),
        clients::docker_1706_windows(),
    ] {
        let r = pull_get_first(&h, TAG_PATH, &c.lines()).await;
        assert_answer(&r, &list.bytes, DOCKER_LIST, &c.name);
        assert_vary(&r, &c.name);
        let r = pull_get_first(&h, &format!("/v2/{REPO}/manifests/win"), &c.lines()).await;
        assert_answer(&r, &wl.bytes, DOCKER_LIST, &c.name);
    }
}

#[tokio::test]
async fn no_accept_header_is_legacy_and_gets_linux_amd64() {
    let h = Harness::start().await;
    let list = images::docker_list(&h.fake, REPO, "v1", 13, &LIST_PLATFORMS);
    let idx = images::buildx_index(&h.fake, REPO, "oci", 14, &BUILDX_PLATFORMS);
    let docker19 = clients::docker_19();
    assert!(docker19.accept_lines().is_empty());
    let r = pull_get_first(&h, TAG_PATH, &docker19.lines()).await;
    assert_child(&r, list.image("linux/amd64"), "Docker 1.9");
    assert_vary(&r, "Docker 1.9");
    let r = pull_get_first(&h, TAG_PATH, &[]).await;
    assert_child(&r, list.image("linux/amd64"), "no headers at all");
    // Without Accept there is no OCI either.
    let oci_path = format!("/v2/{REPO}/manifests/oci");
    let r = pull_get_first(&h, &oci_path, &docker19.lines()).await;
    assert_converted(&r, idx.image("linux/amd64"), "Docker 1.9, OCI index");
    let r = pull_get_first(&h, &oci_path, &[]).await;
    assert_converted(&r, idx.image("linux/amd64"), "no headers, OCI index");
}

#[tokio::test]
async fn single_oci_manifest_tag_to_docker_1706_is_converted_or_rejected() {
    let fake = FakeRegistry::start().await;
    let h = Harness::with(fake, |cfg| {
        cfg.routes.push(RouteConfig {
            oci_for_legacy: OciForLegacy::Reject,
            ..route(
                RouteMatch {
                    repository: Some("team/strict".into()),
                    ..Default::default()
                },
                None,
                RewriteMode::Legacy,
            )
        })
    })
    .await;
    let img = images::oci_image(&h.fake, REPO, 40, "linux/amd64", &[OCI_LAYER, OCI_LAYER]);
    h.fake.set_tag(REPO, "v1", &img.digest);
    let strict = images::oci_image(&h.fake, "team/strict", 41, "linux/amd64", &[OCI_LAYER]);
    h.fake.set_tag("team/strict", "v1", &strict.digest);
    let docker = clients::docker_1706();
    let r = pull_get_first(&h, TAG_PATH, &docker.lines()).await;
    assert_converted(&r, &img, "single OCI manifest, Docker 17.06");
    assert_vary(&r, "single OCI manifest, Docker 17.06");
    let r = pull(&h, TAG_PATH, &clients::docker_2010().lines()).await;
    assert_child(&r, &img, "single OCI manifest, Docker 20.10");
    let r = pull_get_first(&h, "/v2/team/strict/manifests/v1", &docker.lines()).await;
    assert_error(
        &r,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
        &["OCI", "reject"],
        "single OCI manifest on a reject route",
    );
}

#[tokio::test]
async fn client_taking_oci_manifests_but_no_index_gets_the_oci_child_unconverted() {
    let h = Harness::start().await;
    let idx = images::buildx_index(&h.fake, REPO, "v1", 42, &BUILDX_PLATFORMS);
    // Not a captured client: the OCI manifest and schema2 types, no index type.
    let headers = [
        (
            "User-Agent",
            "cri-o/1.28.1 go/go1.20.10 os/linux arch/arm64",
        ),
        ("Accept", OCI_MANIFEST),
        ("Accept", DOCKER_MANIFEST),
    ];
    let r = pull(&h, TAG_PATH, &headers).await;
    assert_child(&r, idx.image("linux/arm64"), "OCI manifest but no index");
    assert_vary(&r, "OCI manifest but no index");
}

// === clients that take indexes ===

#[tokio::test]
async fn modern_clients_get_indexes_passed_through() {
    let h = Harness::start().await;
    let idx = images::buildx_index(&h.fake, REPO, "v1", 15, &BUILDX_PLATFORMS);
    let list = images::docker_list(&h.fake, REPO, "list", 16, &LIST_PLATFORMS);
    for c in [
        clients::docker_2010(),
        clients::containerd_16(),
        clients::skopeo_19(),
        clients::crio_arm64(),
    ] {
        let r = pull(&h, TAG_PATH, &c.lines()).await;
        assert_answer(&r, &idx.bytes, OCI_INDEX, &c.name);
        assert_vary(&r, &c.name);
        let r = pull(&h, &format!("/v2/{REPO}/manifests/list"), &c.lines()).await;
        assert_answer(&r, &list.bytes, DOCKER_LIST, &c.name);
        assert_vary(&r, &c.name);
    }
}

#[tokio::test]
async fn always_route_pins_cri_o_and_modern_clients_to_the_route_platform() {
    let fake = FakeRegistry::start().await;
    let h = Harness::with(fake, |cfg| {
        cfg.routes.push(route(
            any_request(),
            Some("linux/arm64"),
            RewriteMode::Always,
        ))
    })
    .await;
    let idx = images::buildx_index(&h.fake, REPO, "v1", 17, &BUILDX_PLATFORMS);
    let list = images::docker_list(&h.fake, REPO, "list", 18, &LIST_PLATFORMS);
    let arm64 = idx.image("linux/arm64");
    // They take OCI: the child as stored, unconverted.
    let crio = clients::crio_arm64();
    let r = pull(&h, TAG_PATH, &crio.lines()).await;
    assert_child(&r, arm64, "CRI-O arm64");
    assert_vary(&r, "CRI-O arm64");
    let docker = clients::docker_2010();
    let r = pull(&h, TAG_PATH, &docker.lines()).await;
    assert_child(&r, arm64, "Docker 20.10 (amd64 User-Agent)");
    let r = pull(
        &h,
        TAG_PATH,
        &docker.with(&[("X-Meta-Platform", "linux/amd64")]),
    )
    .await;
    assert_child(&r, arm64, "Docker 20.10 with X-Meta-Platform linux/amd64");
    let r = pull(&h, TAG_PATH, &clients::containerd_16().lines()).await;
    assert_child(&r, arm64, "containerd");
    // Docker 17.06 gets it converted; a Docker list's arm64 child as stored.
    let r = pull_get_first(&h, TAG_PATH, &clients::docker_1706().lines()).await;
    assert_converted(&r, arm64, "Docker 17.06");
    let r = pull(&h, &format!("/v2/{REPO}/manifests/list"), &docker.lines()).await;
    assert_child(
        &r,
        list.image("linux/arm64/v8"),
        "Docker list, Docker 20.10",
    );
}

// === Windows ===

#[tokio::test]
async fn windows_docker_ee_routes_by_host_and_port_get_their_build_highest_revision() {
    let (p1, p2) = two_free_ports();
    let fake = FakeRegistry::start().await;
    let h = Harness::with(fake, |cfg| {
        cfg.listen = vec![
            SocketAddr::from(([127, 0, 0, 1], p1)),
            SocketAddr::from(([127, 0, 0, 1], p2)),
        ];
        cfg.routes.push(route(
            by_host("ltsc2019.mirror.internal"),
            Some("windows/amd64:10.0.17763"),
            RewriteMode::Always,
        ));
        cfg.routes.push(route(
            RouteMatch {
                port: Some(p2),
                ..Default::default()
            },
            Some("windows(10.0.20348)/amd64"),
            RewriteMode::Always,
        ));
    })
    .await;
    let addrs = h.archway.as_ref().unwrap().local_addrs();
    assert_eq!(addrs.iter().map(|a| a.port()).collect::<Vec<_>>(), [p1, p2]);
    let wl = images::windows_list(&h.fake, REPO, "v1", 19);
    let ee = clients::docker_1706_windows();
    let host_2019 = format!("ltsc2019.mirror.internal:{p1}");
    let r = pull_at(
        &h,
        addrs[0],
        First::Get,
        TAG_PATH,
        &ee.with(&[("Host", host_2019.as_str())]),
    )
    .await;
    assert_child(&r, wl.image(LTSC2019_NEWEST), "Host ltsc2019");
    assert_vary(&r, "Host ltsc2019");
    let r = pull_at(&h, addrs[1], First::Get, TAG_PATH, &ee.lines()).await;
    assert_child(&r, wl.image(LTSC2022_NEWEST), "port for 20348");
    // Both match on the second port: the first route wins.
    let host_2019_p2 = format!("ltsc2019.mirror.internal:{p2}");
    let r = pull_at(
        &h,
        addrs[1],
        First::Get,
        TAG_PATH,
        &ee.with(&[("Host", host_2019_p2.as_str())]),
    )
    .await;
    assert_child(
        &r,
        wl.image(LTSC2019_NEWEST),
        "Host ltsc2019 on the 20348 port",
    );
    // No route on the first port without that Host: the list, which Docker EE takes.
    let r = pull_at(&h, addrs[0], First::Get, TAG_PATH, &ee.lines()).await;
    assert_answer(&r, &wl.bytes, DOCKER_LIST, "no route");
}

#[tokio::test]
async fn windows_user_agent_keeps_the_route_build_on_a_legacy_route() {
    let fake = FakeRegistry::start().await;
    let h = Harness::with(fake, |cfg| {
        cfg.routes.push(route(
            by_host("ltsc2019.mirror.internal"),
            Some("windows/amd64:10.0.17763"),
            RewriteMode::Legacy,
        ))
    })
    .await;
    let idx = images::windows_oci_index(&h.fake, REPO, "v1", 20);
    let host = [("Host", "ltsc2019.mirror.internal")];
    // Docker EE can't take an OCI index: os/windows arch/amd64 from its User-Agent, the build
    // from the route, the highest revision of that build, converted (foreign layer, urls kept).
    let ee = clients::docker_1706_windows();
    let r = pull_get_first(&h, TAG_PATH, &ee.with(&host)).await;
    assert_converted(&r, idx.image(LTSC2019_NEWEST), "Windows Docker EE 17.06");
    // X-Meta-Platform naming only os/arch keeps the route's build too.
    let r = pull_get_first(
        &h,
        TAG_PATH,
        &ee.with(&[
            ("Host", "ltsc2019.mirror.internal"),
            ("X-Meta-Platform", "windows/amd64"),
        ]),
    )
    .await;
    assert_converted(
        &r,
        idx.image(LTSC2019_NEWEST),
        "X-Meta-Platform windows/amd64",
    );
    // Without a route the header alone names the build.
    for meta in ["windows/amd64:10.0.20348", "windows(10.0.20348)/amd64"] {
        let r = pull_get_first(&h, TAG_PATH, &ee.with(&[("X-Meta-Platform", meta)])).await;
        assert_converted(&r, idx.image(LTSC2022_NEWEST), meta);
    }
    // A Linux User-Agent disagrees with the route: it stands alone, and the index has no Linux.
    let r = pull_get_first(&h, TAG_PATH, &clients::docker_1706().with(&host)).await;
    assert_error(
        &r,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
        &["linux/amd64", "windows(10.0.17763.5830)/amd64"],
        "Linux Docker 17.06 on the Windows route",
    );
}

#[tokio::test]
async fn hyperv_route_accepts_the_newest_build_not_above_the_host() {
    let fake = FakeRegistry::start().await;
    let h = Harness::with(fake, |cfg| {
        for (host, platform, mode) in [
            (
                "ltsc2025-hyperv",
                "windows/amd64:10.0.26100",
                WindowsMatch::Hyperv,
            ),
            (
                "ltsc2025-process",
                "windows/amd64:10.0.26100",
                WindowsMatch::Process,
            ),
            (
                "ltsc2022-hyperv",
                "windows/amd64:10.0.20348",
                WindowsMatch::Hyperv,
            ),
            (
                "ltsc2019-hyperv",
                "windows/amd64:10.0.17763",
                WindowsMatch::Hyperv,
            ),
            (
                "ltsc2016-hyperv",
                "windows/amd64:10.0.14393",
                WindowsMatch::Hyperv,
            ),
        ] {
            cfg.routes.push(RouteConfig {
                windows_match: mode,
                ..route(by_host(host), Some(platform), RewriteMode::Always)
            });
        }
    })
    .await;
    let wl = images::windows_list(&h.fake, REPO, "v1", 21);
    let ee = clients::docker_1706_windows();
    let on = |host: &'static str| ee.with(&[("Host", host)]);
    let r = pull_get_first(&h, TAG_PATH, &on("ltsc2025-hyperv")).await;
    assert_child(&r, wl.image(LTSC2022_NEWEST), "2025 host, Hyper-V");
    let r = pull_get_first(&h, TAG_PATH, &on("ltsc2022-hyperv")).await;
    assert_child(
        &r,
        wl.image(LTSC2022_NEWEST),
        "2022 host, Hyper-V: same build",
    );
    let r = pull_get_first(&h, TAG_PATH, &on("ltsc2019-hyperv")).await;
    assert_child(
        &r,
        wl.image(LTSC2019_NEWEST),
        "2019 host, Hyper-V: never a newer build",
    );
    let r = pull_get_first(&h, TAG_PATH, &on("ltsc2025-process")).await;
    assert_error(
        &r,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
        &[
            "10.0.26100",
            "linux/amd64",
            "windows(10.0.17763.5329)/amd64",
            "windows(10.0.20348.10000)/amd64",
        ],
        "2025 host, process isolation",
    );
    let r = pull_get_first(&h, TAG_PATH, &on("ltsc2016-hyperv")).await;
    assert_error(
        &r,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
        &["10.0.14393", "windows(10.0.17763.5830)/amd64"],
        "2016 host: every build is newer",
    );
}

// === digests, errors, caching, Vary ===

#[tokio::test]
async fn digest_requests_are_never_rewritten() {
    let fake = FakeRegistry::start().await;
    // Even on an `always` route.
    let h = Harness::with(fake, |cfg| {
        cfg.routes.push(route(
            RouteMatch {
                repository: Some("team/pinned".into()),
                ..Default::default()
            },
            Some("linux/arm64"),
            RewriteMode::Always,
        ))
    })
    .await;
    let idx = images::buildx_index(&h.fake, REPO, "v1", 22, &BUILDX_PLATFORMS);
    let list = images::docker_list(&h.fake, REPO, "list", 23, &LIST_PLATFORMS);
    let (_, inner) = images::nested_index(&h.fake, REPO, "nested", 24);
    let pinned = images::buildx_index(&h.fake, "team/pinned", "v1", 25, &BUILDX_PLATFORMS);
    let amd64 = idx.image("linux/amd64");
    let cases: Vec<(String, &[u8], &str, ClientHeaders)> = vec![
        (
            format!("/v2/{REPO}/manifests/{}", idx.digest),
            &idx.bytes[..],
            OCI_INDEX,
            clients::docker_1706(),
        ),
        (
            format!("/v2/{REPO}/manifests/{}", idx.digest),
            &idx.bytes[..],
            OCI_INDEX,
            clients::docker_19(),
        ),
        (
            format!("/v2/{REPO}/manifests/{}", amd64.digest),
            &amd64.bytes[..],
            OCI_MANIFEST,
            clients::docker_1706(),
        ),
        (
            format!("/v2/{REPO}/manifests/{}", list.digest),
            &list.bytes[..],
            DOCKER_LIST,
            clients::schema2_only(),
        ),
        (
            format!("/v2/{REPO}/manifests/{}", inner.digest),
            &inner.bytes[..],
            OCI_INDEX,
            clients::docker_1706(),
        ),
        (
            format!("/v2/team/pinned/manifests/{}", pinned.digest),
            &pinned.bytes[..],
            OCI_INDEX,
            clients::docker_2010(),
        ),
        (
            format!("/v2/team/pinned/manifests/{}", pinned.digest),
            &pinned.bytes[..],
            OCI_INDEX,
            clients::docker_1706(),
        ),
    ];
    for (path, bytes, media_type, c) in cases {
        let what = format!("{} GET {path}", c.name);
        let r = pull_get_first(&h, &path, &c.lines()).await;
        assert_answer(&r, bytes, media_type, &what);
        assert_eq!(
            r.header("vary"),
            None,
            "{what}: a digest answer depends on no hint"
        );
    }
    // The tag on the always route is rewritten, for contrast.
    let r = pull(
        &h,
        "/v2/team/pinned/manifests/v1",
        &clients::docker_2010().lines(),
    )
    .await;
    assert_child(&r, pinned.image("linux/arm64"), "tag on the always route");
}

#[tokio::test]
async fn no_matching_platform_is_a_404_listing_what_the_index_offers() {
    let h = Harness::start().await;
    images::buildx_index(&h.fake, REPO, "v1", 26, &BUILDX_PLATFORMS);
    let c = clients::docker_1706();
    let r = pull_get_first(&h, TAG_PATH, &c.with(&[("X-Meta-Platform", "linux/s390x")])).await;
    assert_error(
        &r,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
        &["linux/s390x", "linux/amd64", "linux/arm64", "linux/arm/v7"],
        "linux/s390x",
    );
    assert!(
        !r.text().contains("unknown/unknown"),
        "attestations are not offered platforms: {}",
        r.text()
    );
    let ppc = with_user_agent(
        &c,
        "docker/17.06.2-ce go/go1.8.3 git-commit/cec0b72 kernel/4.15.0 os/linux arch/ppc64le UpstreamClient(Docker-Client/17.06.2-ce \\(linux\\))",
    );
    let r = pull_get_first(&h, TAG_PATH, &ppc.lines()).await;
    assert_error(
        &r,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
        &[
            "linux/ppc64le",
            "linux/amd64",
            "linux/arm64",
            "linux/arm/v7",
        ],
        "ppc64le User-Agent",
    );
}

/// A 404 that exists only because of this client's platform or Accept must not be reused by an
/// HTTP cache in front of archway for other clients: it carries Vary like a rewritten answer.
#[tokio::test]
async fn hint_dependent_404s_carry_vary() {
    let fake = FakeRegistry::start().await;
    let h = Harness::with(fake, |cfg| {
        cfg.routes.push(RouteConfig {
            oci_for_legacy: OciForLegacy::Reject,
            ..route(
                RouteMatch {
                    repository: Some("team/strict".into()),
                    ..Default::default()
                },
                None,
                RewriteMode::Legacy,
            )
        })
    })
    .await;
    images::buildx_index(&h.fake, REPO, "v1", 43, &BUILDX_PLATFORMS);
    images::buildx_index(&h.fake, "team/strict", "v1", 44, &BUILDX_PLATFORMS);
    let c = clients::docker_1706();
    let r = pull_get_first(&h, TAG_PATH, &c.with(&[("X-Meta-Platform", "linux/s390x")])).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_vary(&r, "no match for linux/s390x");
    let r = pull_get_first(&h, "/v2/team/strict/manifests/v1", &c.lines()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_vary(&r, "OCI rejected for Docker 17.06");
}

#[tokio::test]
async fn invalid_meta_platform_is_a_400_naming_the_header() {
    let h = Harness::start().await;
    images::buildx_index(&h.fake, REPO, "v1", 27, &BUILDX_PLATFORMS);
    let c = clients::docker_1706();
    for bad in ["not a platform!", "linux/amd64/v2/extra", "*"] {
        let r = pull_get_first(&h, TAG_PATH, &c.with(&[("X-Meta-Platform", bad)])).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let message = r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.contains("X-Meta-Platform") && message.contains(bad),
            "{bad}: {message}"
        );
    }
}

#[tokio::test]
async fn a_rewritten_hit_asks_upstream_nothing() {
    let h = Harness::start().await;
    let idx = images::buildx_index(&h.fake, REPO, "v1", 28, &BUILDX_PLATFORMS);
    let list = images::docker_list(&h.fake, REPO, "list", 29, &LIST_PLATFORMS);
    let list_path = format!("/v2/{REPO}/manifests/list");
    let docker = clients::docker_1706();
    let script = clients::schema2_only();
    let first = pull_get_first(&h, TAG_PATH, &docker.lines()).await;
    assert_converted(&first, idx.image("linux/amd64"), "first pull");
    let first_list = pull(&h, &list_path, &script.lines()).await;
    assert_child(&first_list, list.image("linux/amd64"), "first list pull");

    h.fake.reset_counts();
    let again = pull_get_first(&h, TAG_PATH, &docker.lines()).await;
    assert_answer(&again, &first.body, DOCKER_MANIFEST, "again");
    // Docker 1.9 takes neither OCI nor indexes and is amd64 too: the same answer.
    let r = pull_get_first(&h, TAG_PATH, &clients::docker_19().lines()).await;
    assert_answer(&r, &first.body, DOCKER_MANIFEST, "Docker 1.9");
    let digest = first.header("docker-content-digest").unwrap();
    let r = pull_get_first(
        &h,
        &format!("/v2/{REPO}/manifests/{digest}"),
        &docker.lines(),
    )
    .await;
    assert_answer(&r, &first.body, DOCKER_MANIFEST, "by converted digest");
    let r = pull(&h, &list_path, &script.lines()).await;
    assert_child(&r, list.image("linux/amd64"), "list again");
    assert_eq!(
        h.fake.total(),
        0,
        "rewritten hits went upstream: {:?}",
        h.fake
            .requests()
            .iter()
            .map(|q| &q.path)
            .collect::<Vec<_>>()
    );

    // Another platform of a cached index costs one child fetch, no tag or index request.
    let r = pull_get_first(&h, TAG_PATH, &clients::docker_1706_arm64().lines()).await;
    assert_converted(&r, idx.image("linux/arm64"), "arm64 after amd64");
    let asked: Vec<String> = h.fake.requests().iter().map(|q| q.path.clone()).collect();
    assert_eq!(
        asked,
        [format!(
            "/v2/{REPO}/manifests/{}",
            idx.image("linux/arm64").digest
        )],
        "only the arm64 child is fetched"
    );
}

// === route matching ===

#[tokio::test]
async fn client_cidr_route_matches_the_loopback_client() {
    let fake = FakeRegistry::start().await;
    let h = Harness::with(fake, |cfg| {
        for (cidr, platform) in [
            ("10.0.0.0/8", "linux/arm64"),
            ("127.0.0.0/8", "linux/arm/v7"),
        ] {
            cfg.routes.push(route(
                RouteMatch {
                    client_cidr: Some(cidr.parse().unwrap()),
                    ..Default::default()
                },
                Some(platform),
                RewriteMode::Always,
            ));
        }
    })
    .await;
    let idx = images::buildx_index(&h.fake, REPO, "v1", 30, &BUILDX_PLATFORMS);
    let r = pull(&h, TAG_PATH, &clients::docker_2010().lines()).await;
    assert_child(&r, idx.image("linux/arm/v7"), "client 127.0.0.1");
}

#[tokio::test]
async fn repository_glob_route_applies_to_matching_repositories_only() {
    let fake = FakeRegistry::start().await;
    let h = Harness::with(fake, |cfg| {
        cfg.routes.push(route(
            RouteMatch {
                repository: Some("team/arm-*".into()),
                ..Default::default()
            },
            Some("linux/arm64"),
            RewriteMode::Always,
        ))
    })
    .await;
    let arm = images::buildx_index(&h.fake, "team/arm-app", "v1", 31, &BUILDX_PLATFORMS);
    let plain = images::buildx_index(&h.fake, REPO, "v1", 32, &BUILDX_PLATFORMS);
    let c = clients::docker_2010();
    let r = pull(&h, "/v2/team/arm-app/manifests/v1", &c.lines()).await;
    assert_child(&r, arm.image("linux/arm64"), "team/arm-app");
    let r = pull(&h, TAG_PATH, &c.lines()).await;
    assert_answer(&r, &plain.bytes, OCI_INDEX, "team/app");
}

#[tokio::test]
async fn first_matching_route_wins() {
    let fake = FakeRegistry::start().await;
    let h = Harness::with(fake, |cfg| {
        cfg.routes.push(route(
            RouteMatch {
                user_agent: Some("docker/17.06".into()),
                ..Default::default()
            },
            None,
            RewriteMode::Never,
        ));
        cfg.routes.push(route(
            RouteMatch {
                user_agent: Some("skopeo/".into()),
                ..Default::default()
            },
            None,
            RewriteMode::Never,
        ));
        cfg.routes.push(route(
            RouteMatch {
                repository: Some("team/*".into()),
                ..Default::default()
            },
            Some("linux/arm64"),
            RewriteMode::Always,
        ));
        cfg.routes.push(route(
            RouteMatch {
                repository: Some("team/app".into()),
                ..Default::default()
            },
            Some("linux/arm/v7"),
            RewriteMode::Always,
        ));
    })
    .await;
    let idx = images::buildx_index(&h.fake, REPO, "v1", 33, &BUILDX_PLATFORMS);
    let r = pull(&h, TAG_PATH, &clients::docker_2010().lines()).await;
    assert_child(&r, idx.image("linux/arm64"), "team/* before team/app");
    let r = pull(&h, TAG_PATH, &clients::skopeo_19().lines()).await;
    assert_answer(&r, &idx.bytes, OCI_INDEX, "skopeo on a never route");
    // `never` passes the index even to a client that can't take it.
    let r = pull_get_first(&h, TAG_PATH, &clients::docker_1706().lines()).await;
    assert_answer(&r, &idx.bytes, OCI_INDEX, "Docker 17.06 on a never route");
    // Windows Docker EE's User-Agent is docker/17.06 too.
    let r = pull_get_first(&h, TAG_PATH, &clients::docker_1706_windows().lines()).await;
    assert_answer(
        &r,
        &idx.bytes,
        OCI_INDEX,
        "Windows Docker EE on a never route",
    );
}
