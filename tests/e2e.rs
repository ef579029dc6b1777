//! End-to-end tier: real registries and clients through archway, on loopback only.
//!
//! Upstream is CNCF Distribution (`docker-registry`) filled by the fixture tool; the clients are
//! skopeo, containerd's ctr (hosts.toml mirror, `?ns=`) and dockerd (`--registry-mirror`). Every
//! test reads archway's JSON access log to prove the traffic went through archway: the clients
//! silently fall back to the upstream otherwise. The platform-rewriting tests run archway with a
//! per-port `[[route]]` and check both what the client ended up with and the log's `rewrite`.
//!
//! Runs when `ARCHWAY_E2E=1` or `CI=true` (then a missing tool fails the test); otherwise each
//! test prints that it was skipped. `scripts/test` installs the tools and sets `ARCHWAY_E2E=1`.

#[allow(dead_code)]
mod e2e {
    pub mod fixtures;
    pub mod http;
    pub mod layout;
    pub mod procs;
    pub mod tools;
}

use e2e::fixtures::{
    self, Blob, FixtureSet, Flavour, Image, LINUX_AMD64, LINUX_ARM64_V8, LINUX_ARM_V7, PLATFORMS,
};
use e2e::layout::OciLayout;
use e2e::procs::{run, run_ok};
use e2e::tools::{
    e2e_enabled, port_open, show, skopeo, temp_dir, write_hosts_toml, Access, Archway, Containerd,
    Dockerd, Registry,
};
use flate2::read::GzDecoder;
use serde_json::Value;
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The seed of the shared fixture set: fixed, so its digests are the same in every run.
const SHARED_SEED: u64 = 1;
const PULL_TIMEOUT: Duration = Duration::from_secs(300);
const ALL_MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// One upstream registry for the tests that never stop it, holding the seeded fixture set under
/// `multi` and (for the Docker Hub mirror paths) `library/multi`.
struct Shared {
    registry: Registry,
    fixtures: FixtureSet,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let started = Instant::now();
        let registry = Registry::start();
        let fixtures = FixtureSet::build(SHARED_SEED, true);
        fixtures.push(&registry.url(), &["multi", "library/multi"]);
        eprintln!(
            "shared upstream {} ready in {:?}",
            registry.url(),
            started.elapsed()
        );
        Shared { registry, fixtures }
    })
}

/// A registry of the test's own with fresh content under `repos`: for tests that stop their
/// upstream, or must see every request because a client would skip digests it already has.
fn own_upstream(repos: &[&str]) -> (Registry, FixtureSet) {
    let registry = Registry::start();
    let fixtures = push_fresh(&registry, repos);
    (registry, fixtures)
}

/// Content no client or cache has seen yet, pushed under `repos`; the seed is printed so a
/// failure can be reproduced with the same digests.
fn push_fresh(registry: &Registry, repos: &[&str]) -> FixtureSet {
    let fixtures = FixtureSet::build(fixtures::fresh_seed(), false);
    eprintln!(
        "fixture seed {} in {} {repos:?}",
        fixtures.seed,
        registry.url()
    );
    fixtures.push(&registry.url(), repos);
    fixtures
}

// === Access-log assertions ===

/// The entries for `/v2/<repo>/<kind>/<reference>` (any query).
fn requests<'a>(log: &'a [Access], repo: &str, kind: &str, reference: &str) -> Vec<&'a Access> {
    let path = format!("/v2/{repo}/{kind}/{reference}");
    log.iter().filter(|a| a.path() == path).collect()
}

fn has_query(a: &Access, query: Option<&str>) -> bool {
    match query {
        Some(q) => a.query().contains(q),
        None => true,
    }
}

/// Asserts archway answered a GET for `/v2/<repo>/<kind>/<reference>` with 200 (and, when
/// `query` is given, that the request carried it).
fn assert_got(log: &[Access], repo: &str, kind: &str, reference: &str, query: Option<&str>) {
    let found = requests(log, repo, kind, reference).into_iter().any(|a| {
        a.method == "GET" && a.status == 200 && a.complete != Some(false) && has_query(a, query)
    });
    assert!(
        found,
        "archway's log has no `GET /v2/{repo}/{kind}/{reference}{}` answered 200; it has:\n{}",
        query.map(|q| format!("?…{q}…")).unwrap_or_default(),
        show(log)
    );
}

/// Asserts some request (HEAD or GET) for the tag was answered 200.
fn assert_tag_resolved(log: &[Access], repo: &str, tag: &str, query: Option<&str>) {
    let found = requests(log, repo, "manifests", tag)
        .into_iter()
        .any(|a| a.status == 200 && has_query(a, query));
    assert!(
        found,
        "archway's log has no request for {repo}:{tag} answered 200; it has:\n{}",
        show(log)
    );
}

/// Asserts the image's manifest and every blob went through archway with 200.
fn assert_image_served(log: &[Access], repo: &str, image: &Image, query: Option<&str>) {
    assert_got(log, repo, "manifests", &image.manifest.digest, query);
    for b in image.blobs() {
        assert_got(log, repo, "blobs", &b.digest, query);
    }
}

/// Asserts no request on `repo` failed: a fresh pull of content that exists upstream has no
/// reason to see an error.
fn assert_no_errors(log: &[Access], repo: &str) {
    let prefix = format!("/v2/{repo}/");
    let bad: Vec<&Access> = log
        .iter()
        .filter(|a| a.path().starts_with(&prefix) && a.status >= 400)
        .collect();
    assert!(
        bad.is_empty(),
        "archway answered errors:\n{}\nfull log:\n{}",
        show(&bad.into_iter().cloned().collect::<Vec<_>>()),
        show(log)
    );
}

/// Asserts that, with the upstream gone, every request on `repo` was answered from the cache:
/// 2xx, `cache` = `hit` (digests) or `stale` (tags past their TTL), and that some tag request was
/// actually served stale.
fn assert_all_from_cache(log: &[Access], repo: &str) {
    let prefix = format!("/v2/{repo}/");
    let mine: Vec<&Access> = log
        .iter()
        .filter(|a| a.path().starts_with(&prefix))
        .collect();
    assert!(
        !mine.is_empty(),
        "no requests on {repo} after the upstream stopped:\n{}",
        show(log)
    );
    let bad: Vec<Access> = mine
        .iter()
        .filter(|a| {
            !(200..300).contains(&a.status)
                || !matches!(a.cache.as_deref(), Some("hit") | Some("stale"))
        })
        .map(|a| (*a).clone())
        .collect();
    assert!(
        bad.is_empty(),
        "with the upstream down these were not served from the cache:\n{}\nall after the stop:\n{}",
        show(&bad),
        show(log)
    );
    let stale_tag = mine.iter().any(|a| {
        a.path().contains("/manifests/")
            && !a.path().contains("/manifests/sha256:")
            && a.cache.as_deref() == Some("stale")
    });
    assert!(
        stale_tag,
        "no tag request was served `stale` although the tag TTL had expired and the upstream \
         was down:\n{}",
        show(log)
    );
}

// === Pure checks of the fixture tool ===

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(data).read_to_end(&mut out).expect("gunzip");
    out
}

fn json(b: &Blob) -> Value {
    serde_json::from_slice(&b.data).expect("fixture JSON")
}

#[test]
fn fixture_set_is_deterministic_and_well_formed() {
    let a = FixtureSet::build(7, false);
    let b = FixtureSet::build(7, false);
    let c = FixtureSet::build(8, false);
    let digests = |f: &FixtureSet| -> Vec<String> {
        f.tags
            .values()
            .chain(f.images.iter().map(|i| &i.manifest))
            .chain(f.blobs())
            .map(|b| b.digest.clone())
            .collect()
    };
    assert_eq!(digests(&a), digests(&b), "same seed, same bytes");
    let (da, dc) = (digests(&a), digests(&c));
    assert!(
        da.iter().all(|d| !dc.contains(d)),
        "another seed shares no content"
    );
    assert_eq!(a.images.len(), 2 * PLATFORMS.len());
    assert_eq!(
        a.tags.keys().collect::<Vec<_>>(),
        ["docker", "oci", "oci-attest"]
    );

    for image in &a.images {
        let p = image.platform;
        let config = json(&image.config);
        assert_eq!(config["os"], p.os);
        assert_eq!(config["architecture"], p.architecture);
        assert_eq!(config["variant"].as_str(), p.variant);
        assert_eq!(config["os.version"].as_str(), p.os_version);
        // The diff_ids are what containerd and dockerd check after unpacking.
        let diff_ids: Vec<String> = image
            .layers
            .iter()
            .map(|l| fixtures::sha256(&gunzip(&l.data)))
            .collect();
        assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
        let manifest = json(&image.manifest);
        assert_eq!(manifest["mediaType"], image.flavour.manifest_type());
        assert_eq!(manifest["config"]["digest"], image.config.digest);
        assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(2));
    }

    for (tag, flavour) in [("docker", Flavour::Docker), ("oci", Flavour::Oci)] {
        let index = json(a.tag(tag));
        assert_eq!(index["mediaType"], flavour.index_type());
        let entries = index["manifests"].as_array().expect("entries");
        assert_eq!(entries.len(), PLATFORMS.len());
        for (entry, p) in entries.iter().zip(PLATFORMS) {
            let child = a.image(flavour, p);
            assert_eq!(entry["digest"], child.manifest.digest);
            assert_eq!(entry["size"], child.manifest.data.len());
            assert_eq!(entry["platform"], p.json());
        }
    }

    let attest = json(a.tag("oci-attest"));
    let entries = attest["manifests"].as_array().expect("entries");
    assert_eq!(entries.len(), 2 * PLATFORMS.len());
    for (entry, att) in entries[PLATFORMS.len()..].iter().zip(&a.attestations) {
        assert_eq!(entry["digest"], att.manifest.digest);
        assert_eq!(entry["platform"]["os"], "unknown");
        assert_eq!(entry["platform"]["architecture"], "unknown");
        assert_eq!(
            entry["annotations"]["vnd.docker.reference.type"],
            "attestation-manifest"
        );
        let subject = entry["annotations"]["vnd.docker.reference.digest"]
            .as_str()
            .expect("subject");
        assert!(entries[..PLATFORMS.len()]
            .iter()
            .any(|e| e["digest"] == subject));
        let m = json(&att.manifest);
        assert_eq!(m["layers"][0]["mediaType"], fixtures::IN_TOTO);
        let statement = json(&att.statement);
        assert_eq!(
            format!(
                "sha256:{}",
                statement["subject"][0]["digest"]["sha256"]
                    .as_str()
                    .unwrap()
            ),
            subject
        );
    }
}

#[test]
fn large_fixture_layer_is_incompressible_and_intact() {
    let f = FixtureSet::build(3, true);
    let large = f.large.as_ref().expect("large image");
    assert_eq!(f.tag("large").digest, large.manifest.digest);
    let layer = &large.layers[0];
    assert!(
        layer.data.len() > fixtures::LARGE_LAYER_BYTES,
        "stored, not compressed: {} bytes",
        layer.data.len()
    );
    let tar = gunzip(&layer.data);
    let config = json(&large.config);
    assert_eq!(config["rootfs"]["diff_ids"][0], fixtures::sha256(&tar));
    let mut archive = tar::Archive::new(tar.as_slice());
    let sizes: Vec<u64> = archive
        .entries()
        .expect("tar entries")
        .map(|e| e.expect("entry").header().size().expect("size"))
        .collect();
    assert_eq!(sizes, [0, fixtures::LARGE_LAYER_BYTES as u64]);
}

#[test]
fn upload_url_keeps_the_location_query() {
    let d = "sha256:abc";
    assert_eq!(
        fixtures::upload_url("http://127.0.0.1:5", "/v2/r/blobs/uploads/u?_state=x", d),
        "http://127.0.0.1:5/v2/r/blobs/uploads/u?_state=x&digest=sha256%3Aabc"
    );
    assert_eq!(
        fixtures::upload_url(
            "http://127.0.0.1:5",
            "http://127.0.0.1:5/v2/r/blobs/uploads/u",
            d
        ),
        "http://127.0.0.1:5/v2/r/blobs/uploads/u?digest=sha256%3Aabc"
    );
}

// === The registry itself ===

#[test]
fn pushed_fixtures_are_readable_from_the_registry() {
    if !e2e_enabled("pushed_fixtures_are_readable_from_the_registry") {
        return;
    }
    let s = shared();
    let base = s.registry.url();
    for repo in ["multi", "library/multi"] {
        let mut manifests: Vec<(&str, &Blob)> = s
            .fixtures
            .tags
            .iter()
            .map(|(t, b)| (t.as_str(), b))
            .collect();
        manifests.extend(
            s.fixtures
                .images
                .iter()
                .map(|i| (i.manifest.digest.as_str(), &i.manifest)),
        );
        manifests.extend(
            s.fixtures
                .attestations
                .iter()
                .map(|a| (a.manifest.digest.as_str(), &a.manifest)),
        );
        for (reference, m) in manifests {
            let url = format!("{base}/v2/{repo}/manifests/{reference}");
            let r = e2e::http::get(&url, &[("accept", ALL_MANIFEST_TYPES)]).expect("GET manifest");
            assert_eq!(r.status, 200, "GET {url}: {}", r.text());
            assert_eq!(r.body, m.data, "GET {url} returns the pushed bytes");
            assert_eq!(r.header("docker-content-digest"), Some(m.digest.as_str()));
            assert_eq!(r.header("content-type"), Some(m.media_type.as_str()));
        }
        for b in s.fixtures.blobs() {
            let url = format!("{base}/v2/{repo}/blobs/{}", b.digest);
            let r = e2e::http::get(&url, &[]).expect("GET blob");
            assert_eq!(r.status, 200, "GET {url}");
            assert_eq!(fixtures::sha256(&r.body), b.digest, "GET {url} is intact");
        }
    }
}

// === skopeo ===

/// `skopeo copy` from `source` (`host:port/repo:tag`) into a fresh OCI layout under `tmp`.
fn skopeo_copy(tmp: &Path, source: &str, out: &str, extra: &[&str]) -> OciLayout {
    let dir = tmp.join(out);
    let src = format!("docker://{source}");
    let dst = format!("oci:{}:x", dir.display());
    let mut args = vec!["copy", "--src-tls-verify=false"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[&src, &dst]);
    run_ok(&mut skopeo(tmp, &args), PULL_TIMEOUT);
    OciLayout::open(&dir)
}

/// The arm64/v8 child of `multi:oci`, checked in the layout skopeo wrote.
fn check_one_platform_layout(layout: &OciLayout, fx: &FixtureSet) -> Image {
    let want = fx.image(Flavour::Oci, LINUX_ARM64_V8).clone();
    let top = layout.descriptor("x");
    assert_eq!(
        top["digest"], want.manifest.digest,
        "skopeo picked the arm64/v8 child"
    );
    let manifest = layout.json(&want.manifest.digest);
    assert_eq!(manifest["config"]["digest"], want.config.digest);
    let all = layout.walk(&want.manifest.digest);
    for b in want.blobs() {
        assert!(all.contains(&b.digest), "layout lacks {}", b.digest);
    }
    want
}

#[test]
fn skopeo_copies_one_platform_through_archway() {
    if !e2e_enabled("skopeo_copies_one_platform_through_archway") {
        return;
    }
    let s = shared();
    let archway = Archway::start(&s.registry.url(), "5m");
    let tmp = temp_dir("skopeo1");
    let layout = skopeo_copy(
        tmp.path(),
        &format!("{}/multi:oci", archway.host()),
        "out",
        &["--override-arch", "arm64", "--override-variant", "v8"],
    );
    let child = check_one_platform_layout(&layout, &s.fixtures);

    let log = archway.access_log();
    assert_tag_resolved(&log, "multi", "oci", None);
    assert_image_served(&log, "multi", &child, None);
    assert_no_errors(&log, "multi");
}

#[test]
fn skopeo_copies_all_platforms_through_archway() {
    if !e2e_enabled("skopeo_copies_all_platforms_through_archway") {
        return;
    }
    let s = shared();
    let archway = Archway::start(&s.registry.url(), "5m");
    let tmp = temp_dir("skopeoall");

    // An OCI index with buildx attestations: every image and every attestation arrives intact.
    let index = s.fixtures.tag("oci-attest");
    let layout = skopeo_copy(
        tmp.path(),
        &format!("{}/multi:oci-attest", archway.host()),
        "attest",
        &["--all"],
    );
    assert_eq!(layout.descriptor("x")["digest"], index.digest);
    let all = layout.walk(&index.digest);
    let log = archway.access_log();
    assert_tag_resolved(&log, "multi", "oci-attest", None);
    for image in s.fixtures.images_of(Flavour::Oci) {
        assert_image_served(&log, "multi", image, None);
        assert!(all.contains(&image.manifest.digest));
    }
    for a in &s.fixtures.attestations {
        assert!(all.contains(&a.manifest.digest) && all.contains(&a.statement.digest));
        assert_got(&log, "multi", "manifests", &a.manifest.digest, None);
        assert_got(&log, "multi", "blobs", &a.statement.digest, None);
        assert_got(&log, "multi", "blobs", &a.config.digest, None);
    }

    // A Docker manifest list, every platform.
    let list = s.fixtures.tag("docker");
    let out = tmp.path().join("docker");
    run_ok(
        &mut skopeo(
            tmp.path(),
            &[
                "copy",
                "--src-tls-verify=false",
                "--all",
                &format!("docker://{}/multi:docker", archway.host()),
                &format!("dir:{}", out.display()),
            ],
        ),
        PULL_TIMEOUT,
    );
    let copied = std::fs::read(out.join("manifest.json")).expect("dir: manifest.json");
    assert_eq!(
        fixtures::sha256(&copied),
        list.digest,
        "the list arrives byte for byte"
    );
    let log = archway.access_log();
    assert_tag_resolved(&log, "multi", "docker", None);
    for image in s.fixtures.images_of(Flavour::Docker) {
        assert_image_served(&log, "multi", image, None);
        for b in image.blobs() {
            let file = std::fs::read(out.join(b.hex())).expect("dir: blob file");
            assert_eq!(fixtures::sha256(&file), b.digest);
        }
    }
    assert_no_errors(&log, "multi");
}

#[test]
fn skopeo_copies_the_large_layer_through_archway() {
    if !e2e_enabled("skopeo_copies_the_large_layer_through_archway") {
        return;
    }
    let s = shared();
    let large = s.fixtures.large.as_ref().expect("shared set has `large`");
    let archway = Archway::start(&s.registry.url(), "5m");
    let tmp = temp_dir("skopeolarge");
    let started = Instant::now();
    let layout = skopeo_copy(
        tmp.path(),
        &format!("{}/multi:large", archway.host()),
        "out",
        &[],
    );
    eprintln!("50 MB image through archway in {:?}", started.elapsed());
    assert_eq!(layout.descriptor("x")["digest"], large.manifest.digest);
    layout.walk(&large.manifest.digest);

    // A single-platform tag: its manifest comes by tag, no by-digest request needed.
    let log = archway.access_log();
    assert_tag_resolved(&log, "multi", "large", None);
    for b in large.blobs() {
        assert_got(&log, "multi", "blobs", &b.digest, None);
    }
    let layer = &large.layers[0];
    let sent: Vec<&Access> = requests(&log, "multi", "blobs", &layer.digest)
        .into_iter()
        .filter(|a| a.method == "GET" && a.status == 200)
        .collect();
    assert!(
        sent.iter()
            .all(|a| a.bytes == Some(layer.data.len() as u64)),
        "the layer's GET should report all {} bytes: {sent:?}",
        layer.data.len()
    );
    assert_no_errors(&log, "multi");
}

// === containerd (ctr) ===

/// `ctr image pull` of `docker.io/library/<name>:oci` for linux/arm64 with archway as the
/// hosts.toml mirror.
fn ctr_pull(containerd: &Containerd, hosts: &Path, name: &str) {
    let image = format!("docker.io/library/{name}:oci");
    let hosts = hosts.display().to_string();
    run_ok(
        &mut containerd.ctr(&[
            "image",
            "pull",
            "--hosts-dir",
            &hosts,
            "--platform",
            "linux/arm64",
            &image,
        ]),
        PULL_TIMEOUT,
    );
}

/// Asserts containerd now holds the index and the arm64 child with all its blobs.
fn assert_ctr_has(containerd: &Containerd, fx: &FixtureSet, name: &str) {
    let images = run_ok(
        &mut containerd.ctr(&["image", "ls"]),
        Duration::from_secs(30),
    )
    .stdout;
    let want = format!("docker.io/library/{name}:oci");
    let line = images
        .lines()
        .find(|l| l.starts_with(&format!("{want} ")))
        .unwrap_or_else(|| panic!("ctr image ls lacks {want}:\n{images}"));
    assert!(line.contains(&fx.tag("oci").digest), "{line}");
    let content = run_ok(
        &mut containerd.ctr(&["content", "ls", "-q"]),
        Duration::from_secs(30),
    )
    .stdout;
    let child = fx.image(Flavour::Oci, LINUX_ARM64_V8);
    for d in std::iter::once(&child.manifest).chain(child.blobs()) {
        assert!(
            content.contains(&d.digest),
            "containerd lacks {}:\n{content}",
            d.digest
        );
    }
}

/// The requests ctr sends a mirror for the arm64 pull, all with `?ns=docker.io`.
fn assert_ctr_through(log: &[Access], fx: &FixtureSet, repo: &str) {
    let ns = Some("ns=docker.io");
    assert_tag_resolved(log, repo, "oci", ns);
    let index = &fx.tag("oci").digest;
    let index_fetched = requests(log, repo, "manifests", index)
        .into_iter()
        .chain(requests(log, repo, "manifests", "oci"))
        .any(|a| a.method == "GET" && a.status == 200 && a.query().contains("ns=docker.io"));
    assert!(
        index_fetched,
        "the index was never fetched through archway:\n{}",
        show(log)
    );
    assert_image_served(log, repo, fx.image(Flavour::Oci, LINUX_ARM64_V8), ns);
    assert_no_errors(log, repo);
}

#[test]
fn ctr_pulls_through_archway_as_hosts_toml_mirror() {
    if !e2e_enabled("ctr_pulls_through_archway_as_hosts_toml_mirror") {
        return;
    }
    let s = shared();
    // Fresh content under a name of its own: containerd must fetch every digest.
    let fx = push_fresh(&s.registry, &["library/ctrpull"]);
    let archway = Archway::start(&s.registry.url(), "5m");
    let tmp = temp_dir("ctr");
    let hosts = tmp.path().join("certs.d");
    write_hosts_toml(&hosts, "docker.io", &s.registry.url(), &archway.url());
    let containerd = Containerd::start(&tmp.path().join("ctd"));

    ctr_pull(&containerd, &hosts, "ctrpull");
    assert_ctr_has(&containerd, &fx, "ctrpull");
    assert_ctr_through(&archway.access_log(), &fx, "library/ctrpull");
}

// === dockerd ===

fn docker_pull(dockerd: &Dockerd, image: &str) {
    let out = run(&mut dockerd.docker(&["pull", image]), PULL_TIMEOUT);
    assert!(
        out.success(),
        "docker pull {image} failed:\n{}\n{}\ndockerd log:\n{}",
        out.stdout,
        out.stderr,
        dockerd.log_tail()
    );
}

/// Asserts dockerd holds `image` as the linux/amd64 child of the Docker list.
fn assert_docker_has(dockerd: &Dockerd, fx: &FixtureSet, image: &str) {
    let id = run_ok(
        &mut dockerd.docker(&["image", "inspect", "--format", "{{.Id}}", image]),
        Duration::from_secs(30),
    )
    .stdout;
    let want = fx.image(Flavour::Docker, LINUX_AMD64);
    assert_eq!(
        id.trim(),
        want.config.digest,
        "dockerd picked the linux/amd64 child"
    );
}

fn assert_docker_through(log: &[Access], fx: &FixtureSet, repo: &str) {
    assert_tag_resolved(log, repo, "docker", None);
    assert_image_served(log, repo, fx.image(Flavour::Docker, LINUX_AMD64), None);
    assert!(
        log.iter().all(|a| !a.query().contains("ns=")),
        "dockerd's mirror requests carry no ns=:\n{}",
        show(log)
    );
    assert_no_errors(log, repo);
}

#[test]
fn docker_pulls_through_archway_as_registry_mirror() {
    if !e2e_enabled("docker_pulls_through_archway_as_registry_mirror") {
        return;
    }
    let s = shared();
    let fx = push_fresh(&s.registry, &["library/dockerpull"]);
    let archway = Archway::start(&s.registry.url(), "5m");
    let tmp = temp_dir("docker");
    let containerd = Containerd::start(&tmp.path().join("ctd"));
    let dockerd = Dockerd::start(&tmp.path().join("dkd"), &containerd, &archway.host());

    docker_pull(&dockerd, "dockerpull:docker");
    assert_docker_has(&dockerd, &fx, "dockerpull:docker");
    assert_docker_through(&archway.access_log(), &fx, "library/dockerpull");
}

// === Upstream down: the same pulls from archway's cache ===

/// Tags expire after a second here, so the second pull must use stale-if-error.
const SHORT_TTL: &str = "1s";

/// Stops the upstream and waits out the tag TTL; returns how many log entries came before.
fn take_upstream_down(registry: &mut Registry, archway: &Archway) -> usize {
    let before = archway.access_log().len();
    let port = registry.port;
    registry.stop();
    assert!(!port_open(port));
    std::thread::sleep(Duration::from_millis(1500));
    before
}

#[test]
fn upstream_down_skopeo_copies_from_the_cache() {
    if !e2e_enabled("upstream_down_skopeo_copies_from_the_cache") {
        return;
    }
    let (mut registry, fx) = own_upstream(&["multi", "library/multi"]);
    let archway = Archway::start(&registry.url(), SHORT_TTL);
    let tmp = temp_dir("downskopeo");
    let source = format!("{}/multi:oci", archway.host());
    let arm64 = ["--override-arch", "arm64", "--override-variant", "v8"];

    let layout = skopeo_copy(tmp.path(), &source, "first", &arm64);
    check_one_platform_layout(&layout, &fx);
    assert_image_served(
        &archway.access_log(),
        "multi",
        fx.image(Flavour::Oci, LINUX_ARM64_V8),
        None,
    );

    let before = take_upstream_down(&mut registry, &archway);
    let layout = skopeo_copy(tmp.path(), &source, "second", &arm64);
    let child = check_one_platform_layout(&layout, &fx);
    let after = archway.access_log()[before..].to_vec();
    assert_image_served(&after, "multi", &child, None);
    assert_all_from_cache(&after, "multi");
}

#[test]
fn upstream_down_ctr_pulls_from_the_cache() {
    if !e2e_enabled("upstream_down_ctr_pulls_from_the_cache") {
        return;
    }
    let (mut registry, fx) = own_upstream(&["library/multi"]);
    let archway = Archway::start(&registry.url(), SHORT_TTL);
    let tmp = temp_dir("downctr");
    let hosts = tmp.path().join("certs.d");
    write_hosts_toml(&hosts, "docker.io", &registry.url(), &archway.url());
    {
        let containerd = Containerd::start(&tmp.path().join("ctd1"));
        ctr_pull(&containerd, &hosts, "multi");
        assert_ctr_has(&containerd, &fx, "multi");
        assert_ctr_through(&archway.access_log(), &fx, "library/multi");
        run_ok(
            &mut containerd.ctr(&["image", "rm", "--sync", "docker.io/library/multi:oci"]),
            Duration::from_secs(60),
        );
    }

    let before = take_upstream_down(&mut registry, &archway);
    // A fresh content store: nothing of the first pull is left to skip fetches with.
    let containerd = Containerd::start(&tmp.path().join("ctd2"));
    ctr_pull(&containerd, &hosts, "multi");
    assert_ctr_has(&containerd, &fx, "multi");
    let after = archway.access_log()[before..].to_vec();
    assert_ctr_through(&after, &fx, "library/multi");
    assert_all_from_cache(&after, "library/multi");
}

#[test]
fn upstream_down_docker_pulls_from_the_cache() {
    if !e2e_enabled("upstream_down_docker_pulls_from_the_cache") {
        return;
    }
    let (mut registry, fx) = own_upstream(&["library/multi"]);
    let archway = Archway::start(&registry.url(), SHORT_TTL);
    let tmp = temp_dir("downdocker");
    let containerd = Containerd::start(&tmp.path().join("ctd"));
    let dockerd = Dockerd::start(&tmp.path().join("dkd"), &containerd, &archway.host());

    docker_pull(&dockerd, "multi:docker");
    assert_docker_has(&dockerd, &fx, "multi:docker");
    assert_docker_through(&archway.access_log(), &fx, "library/multi");
    run_ok(
        &mut dockerd.docker(&["rmi", "multi:docker"]),
        Duration::from_secs(60),
    );

    let before = take_upstream_down(&mut registry, &archway);
    docker_pull(&dockerd, "multi:docker");
    assert_docker_has(&dockerd, &fx, "multi:docker");
    let after = archway.access_log()[before..].to_vec();
    assert_docker_through(&after, &fx, "library/multi");
    assert_all_from_cache(&after, "library/multi");
}

// === Platform rewriting ===

/// A `[[route]]` that answers every tag on archway's `port` with `platform`'s manifest.
fn always_route(port: u16, platform: &str) -> String {
    format!(
        "[[route]]\nmatch = {{ port = {port} }}\nplatform = \"{platform}\"\nrewrite = \"always\"\n"
    )
}

/// Asserts a request for `repo:tag` (with `query`, when given) was answered 200 with exactly
/// `rewrite` in archway's log.
fn assert_rewritten(log: &[Access], repo: &str, tag: &str, query: Option<&str>, rewrite: &str) {
    let tag_requests = requests(log, repo, "manifests", tag);
    let found = tag_requests
        .iter()
        .any(|a| a.status == 200 && has_query(a, query) && a.rewrite.as_deref() == Some(rewrite));
    assert!(
        found,
        "archway's log has no request for {repo}:{tag} answered 200 with rewrite={rewrite:?}; \
         it has:\n{}",
        show(log)
    );
    let other: Vec<Access> = tag_requests
        .into_iter()
        .filter(|a| a.rewrite.as_deref() != Some(rewrite))
        .cloned()
        .collect();
    assert!(
        other.is_empty(),
        "every request for {repo}:{tag} should be answered for {rewrite:?}, these were not:\n{}",
        show(&other)
    );
}

/// Asserts the client never asked for `digest` (the index it must not see).
fn assert_never_fetched(log: &[Access], repo: &str, digest: &str) {
    let asked = requests(log, repo, "manifests", digest);
    assert!(
        asked.is_empty(),
        "the client fetched the index {digest} although the tag was answered with a child:\n{}",
        show(log)
    );
}

#[test]
fn ctr_pulls_the_arm64_manifest_through_an_always_route() {
    if !e2e_enabled("ctr_pulls_the_arm64_manifest_through_an_always_route") {
        return;
    }
    let s = shared();
    let fx = push_fresh(&s.registry, &["library/ctralways"]);
    // The main port is a plain mirror; only the second one pins linux/arm64.
    let archway = Archway::start_with(&s.registry.url(), "5m", 1, |ports| {
        always_route(ports[1], "linux/arm64")
    });
    let tmp = temp_dir("ctralways");
    let hosts = tmp.path().join("certs.d");
    let mirror = format!("http://{}", archway.host_of(1));
    write_hosts_toml(&hosts, "docker.io", &s.registry.url(), &mirror);
    let containerd = Containerd::start(&tmp.path().join("ctd"));

    ctr_pull(&containerd, &hosts, "ctralways");

    // The image's target is the arm64 manifest itself: ctr never saw an index.
    let child = fx.image(Flavour::Oci, LINUX_ARM64_V8);
    let images = run_ok(
        &mut containerd.ctr(&["image", "ls"]),
        Duration::from_secs(30),
    )
    .stdout;
    let want = "docker.io/library/ctralways:oci";
    let line = images
        .lines()
        .find(|l| l.split_whitespace().next() == Some(want))
        .unwrap_or_else(|| panic!("ctr image ls lacks {want}:\n{images}"));
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        columns.get(1..3),
        Some(&[fixtures::OCI_MANIFEST, child.manifest.digest.as_str()][..]),
        "ctr records the arm64 manifest (type, digest), not the index {}:\n{images}",
        fx.tag("oci").digest
    );
    assert!(line.contains("linux/arm64"), "platform column: {line}");
    let content = run_ok(
        &mut containerd.ctr(&["content", "ls", "-q"]),
        Duration::from_secs(30),
    )
    .stdout;
    for b in std::iter::once(&child.manifest).chain(child.blobs()) {
        assert!(
            content.contains(&b.digest),
            "containerd lacks {}:\n{content}",
            b.digest
        );
    }
    assert!(
        !content.contains(&fx.tag("oci").digest),
        "containerd holds the index although archway answered the tag with the child:\n{content}"
    );

    let log = archway.access_log();
    let repo = "library/ctralways";
    let ns = Some("ns=docker.io");
    assert_rewritten(
        &log,
        repo,
        "oci",
        ns,
        "linux/arm64 (route (rewrite = always))",
    );
    assert_image_served(&log, repo, child, ns);
    assert_never_fetched(&log, repo, &fx.tag("oci").digest);
    assert_no_errors(&log, repo);
}

#[test]
fn docker_pull_through_an_arm_v7_route_inspects_as_arm_v7() {
    if !e2e_enabled("docker_pull_through_an_arm_v7_route_inspects_as_arm_v7") {
        return;
    }
    let s = shared();
    let fx = push_fresh(&s.registry, &["library/dockerarm"]);
    let archway = Archway::start_with(&s.registry.url(), "5m", 1, |ports| {
        always_route(ports[1], "linux/arm/v7")
    });
    let tmp = temp_dir("dockerarm");
    let containerd = Containerd::start(&tmp.path().join("ctd"));
    let dockerd = Dockerd::start(&tmp.path().join("dkd"), &containerd, &archway.host_of(1));

    // Both flavours: a Docker list gives a schema2 child, an OCI index an OCI child (dockerd
    // 20.10 accepts OCI, so nothing is converted). No --platform: the route alone decides.
    for (tag, flavour) in [("docker", Flavour::Docker), ("oci", Flavour::Oci)] {
        let image = format!("dockerarm:{tag}");
        docker_pull(&dockerd, &image);
        let inspect = run_ok(
            &mut dockerd.docker(&[
                "image",
                "inspect",
                "--format",
                "{{.Os}} {{.Architecture}} {{.Variant}} {{.Id}}",
                &image,
            ]),
            Duration::from_secs(30),
        )
        .stdout;
        let want = fx.image(flavour, LINUX_ARM_V7);
        assert_eq!(
            inspect.trim(),
            format!("linux arm v7 {}", want.config.digest),
            "docker image inspect {image}"
        );

        let log = archway.access_log();
        let repo = "library/dockerarm";
        assert_rewritten(
            &log,
            repo,
            tag,
            None,
            "linux/arm/v7 (route (rewrite = always))",
        );
        assert_image_served(&log, repo, want, None);
        assert_never_fetched(&log, repo, &fx.tag(tag).digest);
        assert_no_errors(&log, repo);
    }
}

/// Replays Docker 17.06's pull of `repo:tag` against `base` with archway's own HTTP client and
/// checks that what comes back is `want` as a complete, verifiable schema2 image. Returns the
/// digest of the manifest archway answered with.
fn replay_docker_1706_pull(base: &str, repo: &str, tag: &str, arch: &str, want: &Image) -> String {
    let ua = fixtures::docker_1706_user_agent(arch);
    let ping = e2e::http::get(&format!("{base}/v2/"), &[("user-agent", &ua)]).expect("GET /v2/");
    assert_eq!(ping.status, 200, "GET /v2/: {}", ping.text());

    // Four separate Accept lines, as Go's Header.Add writes them.
    let mut headers: Vec<(&str, &str)> = fixtures::DOCKER_1706_ACCEPT
        .iter()
        .map(|t| ("accept", *t))
        .collect();
    headers.push(("user-agent", &ua));
    let url = format!("{base}/v2/{repo}/manifests/{tag}");
    let r = e2e::http::get(&url, &headers).expect("GET manifest by tag");
    assert_eq!(
        r.status,
        200,
        "GET {url} as Docker 17.06 arch/{arch}: {}",
        r.text()
    );
    assert_eq!(
        r.header("content-type"),
        Some(fixtures::DOCKER_MANIFEST),
        "GET {url} as Docker 17.06 arch/{arch}: the answer must be schema2: {}",
        r.text()
    );
    let digest = fixtures::sha256(&r.body);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.as_str()),
        "GET {url}: Docker-Content-Digest must be the sha256 of the body"
    );
    let manifest: Value = serde_json::from_slice(&r.body).expect("manifest JSON");
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], fixtures::DOCKER_MANIFEST);
    // The same blobs as the OCI image for this platform, under schema2's media types.
    let config = &manifest["config"];
    assert_eq!(config["mediaType"], fixtures::DOCKER_CONFIG);
    assert_eq!(config["digest"], want.config.digest, "{}", r.text());
    assert_eq!(config["size"], want.config.data.len());
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), want.layers.len());
    for (l, w) in layers.iter().zip(&want.layers) {
        assert_eq!(l["mediaType"], fixtures::DOCKER_LAYER);
        assert_eq!(l["digest"], w.digest);
        assert_eq!(l["size"], w.data.len());
    }

    // Docker verifies the manifest by digest; fetch it that way too: the same bytes.
    let by_digest = format!("{base}/v2/{repo}/manifests/{digest}");
    let r2 = e2e::http::get(&by_digest, &headers).expect("GET manifest by digest");
    assert_eq!(r2.status, 200, "GET {by_digest}: {}", r2.text());
    assert_eq!(r2.body, r.body, "GET {by_digest} returns the tag's bytes");
    assert_eq!(r2.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(r2.header("content-type"), Some(fixtures::DOCKER_MANIFEST));

    // Blobs as Docker fetches them: no Accept.
    let blob = |d: &Value, size: &Value| -> Vec<u8> {
        let d = d.as_str().expect("digest");
        let url = format!("{base}/v2/{repo}/blobs/{d}");
        let r = e2e::http::get(&url, &[("user-agent", &ua)]).expect("GET blob");
        assert_eq!(r.status, 200, "GET {url}: {}", r.text());
        assert_eq!(fixtures::sha256(&r.body), d, "GET {url} is intact");
        assert_eq!(Some(r.body.len() as u64), size.as_u64(), "GET {url} size");
        r.body.to_vec()
    };
    let config_bytes = blob(&config["digest"], &config["size"]);
    let image_config: Value = serde_json::from_slice(&config_bytes).expect("config JSON");
    let p = want.platform;
    assert_eq!(image_config["os"], p.os);
    assert_eq!(image_config["architecture"], p.architecture);
    assert_eq!(image_config["variant"].as_str(), p.variant);
    let mut diff_ids = Vec::new();
    for l in layers {
        let tar = gunzip(&blob(&l["digest"], &l["size"]));
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut files = Vec::new();
        for entry in archive.entries().expect("tar entries") {
            let mut entry = entry.expect("tar entry");
            let path = entry.path().expect("entry path").display().to_string();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("entry data");
            files.push((path, data));
        }
        assert!(!files.is_empty(), "an empty layer");
        if let Some((_, id)) = files.iter().find(|(p, _)| p == "fixture/platform") {
            // The base layer names the image it belongs to.
            assert!(
                String::from_utf8_lossy(id).starts_with(&format!("{} oci ", p.slug())),
                "layer of the wrong image: {}",
                String::from_utf8_lossy(id)
            );
        }
        diff_ids.push(fixtures::sha256(&tar));
    }
    assert_eq!(
        image_config["rootfs"]["diff_ids"],
        serde_json::json!(diff_ids),
        "the config's diff_ids are the uncompressed layers"
    );
    digest
}

#[test]
fn docker_1706_request_sequence_pulls_a_buildx_image() {
    if !e2e_enabled("docker_1706_request_sequence_pulls_a_buildx_image") {
        return;
    }
    let s = shared();
    // No routes: a legacy client is recognised by its Accept alone.
    let archway = Archway::start(&s.registry.url(), "5m");
    let base = archway.url();
    // `arch/arm` says nothing of the variant: arm means arm/v7.
    for (arch, platform, rewrite) in [
        ("amd64", LINUX_AMD64, "linux/amd64 (User-Agent), converted"),
        (
            "arm64",
            LINUX_ARM64_V8,
            "linux/arm64 (User-Agent), converted",
        ),
        ("arm", LINUX_ARM_V7, "linux/arm/v7 (User-Agent), converted"),
    ] {
        let before = archway.access_log().len();
        let want = s.fixtures.image(Flavour::Oci, platform);
        let digest = replay_docker_1706_pull(&base, "multi", "oci-attest", arch, want);
        assert_ne!(
            digest, want.manifest.digest,
            "an OCI manifest for a client without OCI must be converted"
        );

        let log = archway.access_log()[before..].to_vec();
        assert_rewritten(&log, "multi", "oci-attest", None, rewrite);
        assert_got(&log, "multi", "manifests", &digest, None);
        for b in want.blobs() {
            assert_got(&log, "multi", "blobs", &b.digest, None);
        }
        assert_never_fetched(&log, "multi", &s.fixtures.tag("oci-attest").digest);
        assert_no_errors(&log, "multi");
    }
}

#[test]
fn skopeo_inspect_raw_sees_the_route_platform_or_the_untouched_index() {
    if !e2e_enabled("skopeo_inspect_raw_sees_the_route_platform_or_the_untouched_index") {
        return;
    }
    let s = shared();
    let archway = Archway::start_with(&s.registry.url(), "5m", 1, |ports| {
        always_route(ports[1], "linux/arm64")
    });
    let tmp = temp_dir("skopeoinspect");
    let raw = |host: &str, tag: &str, extra: &[&str]| -> String {
        let image = format!("docker://{host}/multi:{tag}");
        let mut args = vec!["inspect", "--tls-verify=false", "--raw"];
        args.extend_from_slice(extra);
        args.push(&image);
        run_ok(&mut skopeo(tmp.path(), &args), PULL_TIMEOUT).stdout
    };

    // The default route: a modern client gets every index byte for byte.
    for tag in ["oci", "oci-attest", "docker"] {
        let got = raw(&archway.host_of(0), tag, &[]);
        assert_eq!(
            got.as_bytes(),
            &s.fixtures.tag(tag).data[..],
            "skopeo inspect --raw multi:{tag} through the default route"
        );
    }
    let log = archway.access_log();
    let before = log.len();
    for tag in ["oci", "oci-attest", "docker"] {
        assert_tag_resolved(&log, "multi", tag, None);
        let rewritten: Vec<Access> = requests(&log, "multi", "manifests", tag)
            .into_iter()
            .filter(|a| a.rewrite.is_some())
            .cloned()
            .collect();
        assert!(
            rewritten.is_empty(),
            "rewritten on the default route:\n{}",
            show(&rewritten)
        );
    }

    // The always route: the arm64 manifest by tag, whatever the client would pick itself.
    let arm64 = ["--override-arch", "arm64", "--override-variant", "v8"];
    for (tag, flavour) in [
        ("oci", Flavour::Oci),
        ("oci-attest", Flavour::Oci),
        ("docker", Flavour::Docker),
    ] {
        let got = raw(&archway.host_of(1), tag, &arm64);
        let want = s.fixtures.image(flavour, LINUX_ARM64_V8);
        assert_eq!(
            got.as_bytes(),
            &want.manifest.data[..],
            "skopeo inspect --raw multi:{tag} through the always route"
        );
    }
    // Even a client that asks for another platform: the route decides.
    let got = raw(&archway.host_of(1), "oci", &["--override-arch", "amd64"]);
    assert_eq!(
        got.as_bytes(),
        &s.fixtures.image(Flavour::Oci, LINUX_ARM64_V8).manifest.data[..]
    );
    let log = archway.access_log()[before..].to_vec();
    for tag in ["oci", "oci-attest", "docker"] {
        assert_rewritten(
            &log,
            "multi",
            tag,
            None,
            "linux/arm64 (route (rewrite = always))",
        );
    }
    assert_no_errors(&log, "multi");
}

// === The container image (deploy/container) ===

/// Builds deploy/container's image as `tag` into `dockerd` with build.sh: a static release build
/// of archway (in `<target>/static`, so later runs only rebuild what changed) and `docker
/// build` of the FROM scratch Dockerfile, which pulls nothing.
fn build_image(dockerd: &Dockerd, tag: &str) {
    let bin = Path::new(env!("CARGO_BIN_EXE_archway"));
    let target_dir = bin
        .parent()
        .and_then(Path::parent)
        .expect("cargo's target dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/container/build.sh");
    let mut cmd = e2e::procs::command(&script);
    // The dependencies are those of the build that made this test: nothing to download.
    cmd.arg(tag)
        .env("CARGO_TARGET_DIR", target_dir)
        .env("CARGO_NET_OFFLINE", "true");
    dockerd.client_env(&mut cmd);
    let started = Instant::now();
    let out = run(&mut cmd, Duration::from_secs(45 * 60));
    assert!(
        out.success(),
        "deploy/container/build.sh failed:\n{}\n{}\ndockerd log:\n{}",
        out.stdout,
        out.stderr,
        dockerd.log_tail()
    );
    eprintln!("image {tag} built in {:?}", started.elapsed());
}

/// `docker inspect` of one object, as JSON.
fn inspect(dockerd: &Dockerd, what: &str) -> Value {
    let out = run_ok(
        &mut dockerd.docker(&["inspect", what]),
        Duration::from_secs(30),
    );
    let all: Value = serde_json::from_str(&out.stdout).expect("docker inspect JSON");
    all[0].clone()
}

/// archway's WARN and ERROR lines in `logs` (JSON lines), for a failure's message.
fn warnings(logs: &str) -> String {
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .collect();
    if lines.is_empty() {
        "(none)".to_owned()
    } else {
        lines.join("\n")
    }
}

/// Removes the container (and its anonymous volume) even when the test fails.
struct Container<'a> {
    dockerd: &'a Dockerd,
    name: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = run(
            &mut self
                .dockerd
                .docker(&["rm", "--force", "--volumes", &self.name]),
            Duration::from_secs(60),
        );
    }
}

impl Container<'_> {
    fn logs(&self) -> String {
        let out = run(
            &mut self.dockerd.docker(&["logs", &self.name]),
            Duration::from_secs(30),
        );
        format!("{}{}", out.stdout, out.stderr)
    }

    fn access_log(&self) -> Vec<Access> {
        // archway logs when a response body ends, a moment after the client has its bytes.
        std::thread::sleep(Duration::from_millis(500));
        self.logs().lines().filter_map(Access::parse).collect()
    }
}

#[test]
fn container_image_serves_a_pull() {
    if !e2e_enabled("container_image_serves_a_pull") {
        return;
    }
    let (registry, fx) = own_upstream(&["library/imagepull"]);
    let port = e2e::procs::free_port();
    let admin_port = e2e::procs::free_port();
    let mirror = format!("127.0.0.1:{port}");
    let tmp = temp_dir("image");
    let containerd = Containerd::start(&tmp.path().join("ctd"));
    // dockerd builds and runs the image, and pulls through the container as its mirror.
    let dockerd = Dockerd::start(&tmp.path().join("dkd"), &containerd, &mirror);
    let tag = "archway:test";
    build_image(&dockerd, tag);

    // Upstream by a name only the container's /etc/hosts knows: the static binary resolves
    // names in an image with no libc files. Host networking (dockerd runs without a bridge):
    // everything stays on 127.0.0.1. No free-space reserve: the volume shares a disk the release
    // build beside it can leave under the default 1 GiB, and then nothing is cached (the reserve
    // has its own test, integrity.rs).
    let config = tmp.path().join("archway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{mirror}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
             data_dir = \"/var/lib/archway\"\nlog_format = \"json\"\n\n\
             [cache]\nmin_free_space = \"0B\"\n\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"http://upstream.archway.test:{}\"\n\
             default = true\n",
            registry.port
        ),
    )
    .expect("write archway.toml");
    let name = format!("aw-image-{}", std::process::id());
    let mount = format!("{}:/etc/archway/archway.toml:ro", config.display());
    run_ok(
        &mut dockerd.docker(&[
            "run",
            "--detach",
            "--name",
            &name,
            "--network",
            "host",
            "--add-host",
            "upstream.archway.test:127.0.0.1",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--volume",
            &mount,
            tag,
        ]),
        Duration::from_secs(60),
    );
    let container = Container {
        dockerd: &dockerd,
        name: name.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ping = e2e::http::get(&format!("http://{mirror}/v2/"), &[]);
        if let Ok(r) = ping {
            assert_eq!(r.status, 200, "GET /v2/: {}", r.text());
            assert_eq!(
                r.header("docker-distribution-api-version"),
                Some("registry/2.0")
            );
            break;
        }
        let state = inspect(&dockerd, &name);
        assert!(
            state["State"]["Running"] == true && Instant::now() < deadline,
            "the container does not answer on {mirror}: {}\nlogs:\n{}",
            state["State"],
            container.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // What the image declares, and that it holds at run time.
    let c = inspect(&dockerd, &name);
    assert_eq!(c["Config"]["User"], "65532:65532");
    assert_eq!(
        c["Config"]["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/archway", "healthcheck"])
    );
    assert!(c["Config"]["Volumes"]["/var/lib/archway"].is_object());
    let volume = c["Mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["Destination"] == "/var/lib/archway")
        .unwrap_or_else(|| panic!("no volume at /var/lib/archway: {}", c["Mounts"]));
    assert_eq!(volume["Type"], "volume");
    let pid = c["State"]["Pid"].as_u64().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let ids = |key: &str| -> Vec<String> {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
        line.split_whitespace().skip(1).map(str::to_owned).collect()
    };
    assert_eq!(ids("Uid:"), ["65532"; 4], "archway runs as 65532");
    assert_eq!(ids("Gid:"), ["65532"; 4]);
    assert_eq!(ids("CapEff:"), ["0000000000000000"]);

    // A pull through the container: dockerd's Docker Hub mirror is the container.
    docker_pull(&dockerd, "imagepull:docker");
    assert_docker_has(&dockerd, &fx, "imagepull:docker");
    assert_docker_through(&container.access_log(), &fx, "library/imagepull");

    // The blobs were written to the volume as 65532: asked again, they come from the cache.
    let layer = &fx.image(Flavour::Docker, LINUX_AMD64).layers[0];
    let url = format!(
        "http://{mirror}/v2/library/imagepull/blobs/{}",
        layer.digest
    );
    let r = e2e::http::get(&url, &[]).expect("GET blob");
    assert_eq!(r.status, 200);
    assert_eq!(fixtures::sha256(&r.body), layer.digest);
    let log = container.access_log();
    let again = requests(&log, "library/imagepull", "blobs", &layer.digest);
    assert_eq!(
        again.last().and_then(|a| a.cache.as_deref()),
        Some("hit"),
        "{}\nwhat archway warned of:\n{}",
        show(&log),
        warnings(&container.logs())
    );

    // The image's HEALTHCHECK (`archway healthcheck` against admin_listen) turns healthy.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let health = &inspect(&dockerd, &name)["State"]["Health"];
        if health["Status"] == "healthy" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the container never became healthy: {health}\nlogs:\n{}",
            container.logs()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}
