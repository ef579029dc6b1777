//! `archway explain`: the report says which upstream, route, platform (and where it came from),
//! whether a rewrite happens, what the index offers, what was chosen and why.

mod support;

use archway::config::{RouteConfig, UpstreamConfig};
use archway::explain::{explain, Hints};
use archway::image_ref::ImageRef;
use archway::route_policy::PlatformSource;
use archway::route_policy::{RewriteMode, RouteMatch};
use support::{config_for, FakeRegistry};

const DOCKER_1706_ARM64: &str = "docker/17.06.2-ee-19 go/go1.8.7 git-commit/6b5fb4d kernel/4.9.0 os/linux arch/arm64 UpstreamClient(Docker-Client/17.06.2-ee-19 \\(linux\\))";
const DOCKER_1706_ACCEPT: [&str; 4] = [
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

#[tokio::test]
async fn explains_a_legacy_rewrite_from_the_user_agent() {
    let fake = FakeRegistry::start().await;
    let index = fake.sample_index("app", "v1", 7, &["linux/amd64", "linux/arm64/v8"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_for(&fake, dir.path());
    let hints = Hints {
        user_agent: Some(DOCKER_1706_ARM64.into()),
        accept: DOCKER_1706_ACCEPT.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let image = ImageRef::parse("app:v1").unwrap();
    let report = explain(cfg, &image, "app:v1", &hints).await.unwrap();
    assert_eq!(report.status, 200);
    let d = report.decision.as_ref().unwrap();
    assert_eq!(d.upstream, "fake");
    assert_eq!(d.selected_by, "default");
    assert_eq!(d.manifest_digest, index.digest.to_string());
    assert!(d.rewrite, "{}", d.rewrite_reason);
    assert_eq!(d.platform.as_deref(), Some("linux/arm64"));
    assert_eq!(d.platform_source, Some(PlatformSource::UserAgent));
    assert_eq!(d.offered, vec!["linux/amd64", "linux/arm64/v8"]);
    let arm64 = &index.images[1].1;
    assert_eq!(d.steps[0].chosen_digest, arm64.manifest.to_string());
    // The fake's images are OCI, which Docker 17.06 does not accept: converted to schema2.
    assert!(d.converted);
    let converted = archway::conversion::convert_oci_to_docker(&arm64.manifest_bytes).unwrap();
    let converted_digest = archway::digest::Digest::sha256_of(&converted).to_string();
    assert_eq!(
        report.docker_content_digest.as_deref(),
        Some(converted_digest.as_str())
    );
    assert_eq!(
        report.content_type.as_deref(),
        Some("application/vnd.docker.distribution.manifest.v2+json")
    );
    let text = report.to_text();
    for needle in [
        "upstream      fake (selected by default)",
        "platform      linux/arm64 (from User-Agent)",
        "index offers  linux/amd64, linux/arm64/v8",
        "rewrite       yes (legacy client: Accept lacks this index type)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[tokio::test]
async fn explains_routes_namespaces_and_no_match() {
    let fake = FakeRegistry::start().await;
    fake.sample_index("team/app", "v1", 9, &["linux/amd64", "linux/arm/v7"]);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_for(&fake, dir.path());
    cfg.upstreams[0].default = false;
    let mut other = UpstreamConfig::from_url(Some("registry.example"), &fake.url()).unwrap();
    other.default = true;
    cfg.upstreams.push(other);
    cfg.routes.push(RouteConfig {
        matcher: RouteMatch {
            port: Some(5022),
            ..Default::default()
        },
        platform: Some("windows/amd64:10.0.20348".into()),
        rewrite: RewriteMode::Always,
        ..Default::default()
    });
    let image = ImageRef::parse("fake/team/app:v1").unwrap_or_else(|_| unreachable!());
    // `fake` has no dot: it is a repository component, not a registry. Name it with ns= instead.
    assert!(image.registry.is_none());
    let image = ImageRef {
        registry: Some("fake".into()),
        ..ImageRef::parse("team/app:v1").unwrap()
    };
    let hints = Hints {
        port: Some(5022),
        accept: vec!["application/vnd.oci.image.index.v1+json".into()],
        ..Default::default()
    };
    let report = explain(cfg, &image, "team/app:v1", &hints).await.unwrap();
    assert_eq!(report.status, 404);
    let d = report.decision.as_ref().unwrap();
    assert_eq!(d.selected_by, "namespace");
    assert_eq!(d.route, Some(0));
    assert_eq!(d.platform_source, Some(PlatformSource::RouteAlways));
    assert_eq!(d.platform.as_deref(), Some("windows(10.0.20348)/amd64"));
    let err = report.error.as_deref().unwrap();
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm/v7"),
        "the error lists what the index offers: {err}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["decision"]["platform_source"], "route-always");
    assert_eq!(json["status"], 404);
}

#[tokio::test]
async fn the_command_prints_json() {
    let fake = FakeRegistry::start().await;
    let index = fake.sample_index("cli", "v1", 11, &["linux/amd64", "linux/arm64/v8"]);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_archway"))
        .args([
            "explain",
            "--upstream",
            &fake.url(),
            "cli:v1",
            "--platform",
            "linux/arm64",
            "--json",
        ])
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"]["platform_source"], "x-meta-platform");
    assert_eq!(
        v["decision"]["rewrite_reason"],
        "legacy client: no Accept header"
    );
    assert_eq!(v["decision"]["converted"], true);
    assert_eq!(
        v["decision"]["steps"][0]["chosen_digest"],
        index.images[1].1.manifest.to_string()
    );
    let converted =
        archway::conversion::convert_oci_to_docker(&index.images[1].1.manifest_bytes).unwrap();
    assert_eq!(
        v["docker_content_digest"],
        archway::digest::Digest::sha256_of(&converted).to_string()
    );
}

/// When upstream fails, the report still says which upstream and route the request took (and the
/// error), as docs/legacy-clients.md promises.
#[tokio::test]
async fn explains_an_upstream_failure_with_its_upstream_and_route() {
    let fake = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_for(&fake, dir.path());
    cfg.routes.push(RouteConfig {
        matcher: RouteMatch {
            repository: Some("lib/*".into()),
            ..Default::default()
        },
        platform: Some("linux/arm64".into()),
        rewrite: RewriteMode::Always,
        ..Default::default()
    });
    // No such tag upstream (404), then upstream gone (502): each report names both.
    for stop in [false, true] {
        if stop {
            fake.stop().await;
        }
        let image = ImageRef::parse("lib/app:missing").unwrap();
        let report = explain(cfg.clone(), &image, "lib/app:missing", &Hints::default())
            .await
            .unwrap();
        assert!(report.status == 404 || report.status == 502, "{report:?}");
        let d = report
            .decision
            .as_ref()
            .expect("a decision even on failure");
        assert_eq!(d.upstream, "fake");
        assert_eq!(d.repository, "lib/app");
        assert_eq!(d.route, Some(0));
        let text = report.to_text();
        for needle in [
            "upstream      fake (selected by default)",
            "route         route[0]",
            "error",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
