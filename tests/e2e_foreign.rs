//! End to end: a Windows-style image whose base layer is foreign (in no registry; its manifest's
//! `urls` name a host on loopback), in a real Distribution, pulled through archway the way
//! Docker on Windows pulls: ping, tag HEAD and GET with Docker's Accept lines, the config, every
//! layer. Then upstream and the foreign host are stopped and the pull replayed: all from cache.
//!
//! Distribution takes the manifest without the foreign blob (it never checks a foreign layer's
//! presence) as long as its urls pass `validation.manifests.urls.allow`.

#[allow(dead_code)]
mod e2e {
    pub mod fixtures;
    pub mod http;
    pub mod layout;
    pub mod procs;
    pub mod tools;
}
#[path = "support/foreign_host.rs"]
mod foreign_host;

use e2e::fixtures::{push_blob, push_manifest, sha256, Blob};
use e2e::http;
use e2e::tools::{e2e_enabled, show, Archway, Registry};
use foreign_host::ForeignHost;
use serde_json::json;

const UA: &str = "docker/20.10.24 go/go1.19.7 git-commit/5d6db84 os/windows arch/amd64 UpstreamClient(Docker-Client/20.10.24 \\(windows\\))";
/// Docker 18.06–20.10 sends one Accept line per type (http.Header.Add).
const ACCEPTS: [&str; 6] = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/json",
];
const FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Docker on Windows pulling `repo:tag` from `base`; every blob's bytes checked against its
/// digest. Returns the manifest's bytes.
fn pull_like_docker_on_windows(base: &str, repo: &str, tag: &str, blobs: &[&Blob]) -> Vec<u8> {
    let mut headers = vec![("user-agent", UA)];
    let ping = http::get(&format!("{base}/v2/"), &headers).unwrap();
    assert_eq!(ping.status, 200, "ping: {}", ping.text());
    for a in ACCEPTS {
        headers.push(("accept", a));
    }
    let url = format!("{base}/v2/{repo}/manifests/{tag}");
    let head = http::send("HEAD", &url, &headers, bytes::Bytes::new()).unwrap();
    assert_eq!(head.status, 200, "HEAD {url}");
    let m = http::get(&url, &headers).unwrap();
    assert_eq!(m.status, 200, "GET {url}: {}", m.text());
    assert_eq!(
        head.header("docker-content-digest"),
        m.header("docker-content-digest")
    );
    let ua = [("user-agent", UA)];
    for b in blobs {
        let r = http::get(&format!("{base}/v2/{repo}/blobs/{}", b.digest), &ua).unwrap();
        assert_eq!(
            r.status,
            200,
            "blob {} ({}): {}",
            b.digest,
            b.media_type,
            r.text()
        );
        assert_eq!(sha256(&r.body), b.digest, "{}", b.media_type);
    }
    m.body.to_vec()
}

#[test]
fn docker_on_windows_pulls_a_foreign_layer_through_archway_and_again_with_everything_down() {
    if !e2e_enabled("docker_on_windows_pulls_a_foreign_layer") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let host = rt.block_on(ForeignHost::start());
    let origin = host.origin();

    let mut registry = Registry::start_with(
        "validation: {manifests: {urls: {allow: ['^http://127\\.0\\.0\\.1:']}}}\n",
    );
    let repo = "windows/app";
    let foreign = Blob::new(FOREIGN, e2e::fixtures::Rng::new(41).bytes(300_000));
    let foreign_path = format!("/v2/windows/servercore/blobs/{}", foreign.digest);
    let foreign_url = host.put(&foreign_path, &foreign.data);
    let layer = Blob::new(
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        e2e::fixtures::Rng::new(42).bytes(50_000),
    );
    let config = Blob::new(
        "application/vnd.docker.container.image.v1+json",
        serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "windows", "os.version": "10.0.17763.5576",
            "rootfs": {"type": "layers", "diff_ids": [sha256(b"base"), sha256(b"app")]},
        }))
        .unwrap(),
    );
    let mut foreign_desc = foreign.descriptor();
    foreign_desc["urls"] = json!([foreign_url]);
    let manifest = Blob::new(
        "application/vnd.docker.distribution.manifest.v2+json",
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": config.descriptor(),
            "layers": [foreign_desc, layer.descriptor()],
        }))
        .unwrap(),
    );
    for b in [&config, &layer] {
        push_blob(&registry.url(), repo, b, None).unwrap();
    }
    push_manifest(&registry.url(), repo, "ltsc2019", &manifest).unwrap();
    let direct = http::get(
        &format!("{}/v2/{repo}/blobs/{}", registry.url(), foreign.digest),
        &[],
    )
    .unwrap();
    assert_eq!(direct.status, 404, "the registry has no foreign blob");

    let archway = Archway::start_with(&registry.url(), "5m", 0, |_| {
        format!("foreign_layer_hosts = [\"{origin}\"]\n")
    });
    let blobs = [&config, &foreign, &layer];
    let got = pull_like_docker_on_windows(&archway.url(), repo, "ltsc2019", &blobs);
    assert_eq!(got, manifest.data.to_vec(), "the manifest is never changed");
    assert_eq!(host.requests(), 1, "{:?}", host.paths());
    let log = archway.log();
    let foreign_lines = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["target"] == "archway::access" && v["fields"]["foreign"] == foreign_url.as_str()
        })
        .count();
    assert_eq!(
        foreign_lines, 1,
        "one access line with foreign={foreign_url}:\n{log}"
    );

    registry.stop();
    host.stop();
    let again = pull_like_docker_on_windows(&archway.url(), repo, "ltsc2019", &blobs);
    assert_eq!(again, manifest.data.to_vec());
    assert_eq!(host.requests(), 1, "the foreign host was not asked again");
    // A line is written when its body is done, a moment after the client read it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut log = archway.access_log();
    while log.iter().filter(|a| a.path().contains("/blobs/")).count() < 2 * blobs.len()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
        log = archway.access_log();
    }
    let replayed: Vec<_> = log.iter().rev().take(blobs.len()).collect();
    for a in &replayed {
        assert!(a.path().contains("/blobs/"), "{}", show(&log));
        assert_eq!(
            (a.status, a.cache.as_deref()),
            (200, Some("hit")),
            "{}",
            show(&log)
        );
    }
    drop(rt);
}
