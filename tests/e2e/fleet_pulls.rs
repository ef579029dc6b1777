//! The checks of the fleet tests: skopeo's copy and what ctr, dockerd and the nodes ended up
//! with, each against the fixture's digests; and what upstream saw beyond "once".

use crate::e2e::counting_proxy::CountingProxy;
use crate::e2e::fixtures::sha256;
use crate::e2e::fleet::{BigIndex, Node, REPO, TAG};
use crate::e2e::procs::run_ok;
use crate::e2e::tools::{show, skopeo, Access, Containerd, Dockerd};
use std::path::Path;
use std::time::Duration;

pub const PULL_TIMEOUT: Duration = Duration::from_secs(300);

/// `skopeo copy` of the linux/amd64 child into a `dir:` (which keeps the manifest's bytes), then
/// checks the manifest and every blob against their digests.
pub fn skopeo_copy(tmp: &Path, source: &str, out: &str, big: &BigIndex) {
    let dir = tmp.join(out);
    let src = format!("docker://{source}");
    let dst = format!("dir:{}", dir.display());
    let args = [
        "copy",
        "--src-tls-verify=false",
        "--override-arch",
        "amd64",
        "--override-os",
        "linux",
        &src,
        &dst,
    ];
    run_ok(&mut skopeo(tmp, &args), PULL_TIMEOUT);
    let manifest = std::fs::read(dir.join("manifest.json")).expect("dir: manifest.json");
    assert_eq!(
        sha256(&manifest),
        big.amd64.manifest.digest,
        "skopeo got the amd64 manifest byte for byte"
    );
    for b in big.amd64.blobs() {
        let file = std::fs::read(dir.join(b.hex()))
            .unwrap_or_else(|e| panic!("skopeo's dir lacks {}: {e}", b.digest));
        assert_eq!(sha256(&file), b.digest, "skopeo's copy of {}", b.digest);
    }
}

pub fn check_ctr(containerd: &Containerd, big: &BigIndex) {
    let images = run_ok(
        &mut containerd.ctr(&["image", "ls"]),
        Duration::from_secs(30),
    )
    .stdout;
    let want = format!("docker.io/{REPO}:{TAG}");
    let line = images
        .lines()
        .find(|l| l.starts_with(&format!("{want} ")))
        .unwrap_or_else(|| panic!("ctr image ls lacks {want}:\n{images}"));
    assert!(line.contains(&big.index.digest), "{line}");
    let content = run_ok(
        &mut containerd.ctr(&["content", "ls", "-q"]),
        Duration::from_secs(30),
    )
    .stdout;
    for d in std::iter::once(&big.amd64.manifest).chain(big.amd64.blobs()) {
        assert!(content.contains(&d.digest), "containerd lacks {}", d.digest);
    }
    // containerd verified each digest on ingest; `check -q` lists an image only once all its
    // content is there and unpacked (the layers were whole tars).
    let ready = run_ok(
        &mut containerd.ctr(&["image", "check", "-q", &format!("name=={want}")]),
        Duration::from_secs(60),
    )
    .stdout;
    assert!(
        ready.lines().any(|l| l.trim() == want),
        "ctr image check: {ready:?}"
    );
}

pub fn check_docker(dockerd: &Dockerd, big: &BigIndex) {
    let id = run_ok(
        &mut dockerd.docker(&["image", "inspect", "--format", "{{.Id}}", "fleetimg:big"]),
        Duration::from_secs(30),
    )
    .stdout;
    assert_eq!(
        id.trim(),
        big.amd64.config.digest,
        "dockerd has the amd64 child"
    );
}

/// Asserts the node answered its client the tag and every amd64 blob with a whole 200.
pub fn check_node_served(node: &Node, big: &BigIndex, who: &str) {
    let log = node.archway.access_log();
    let served = |kind: &str, reference: &str| {
        let path = format!("/v2/{REPO}/{kind}/{reference}");
        log.iter().any(|a| {
            a.path() == path && a.method == "GET" && a.status == 200 && a.complete != Some(false)
        })
    };
    let tag_ok = log
        .iter()
        .any(|a| a.path() == format!("/v2/{REPO}/manifests/{TAG}") && a.status == 200);
    assert!(
        tag_ok,
        "{who}'s node never answered the tag:\n{}",
        show(&log)
    );
    for b in big.amd64.blobs() {
        assert!(
            served("blobs", &b.digest),
            "{who}'s node never served {}:\n{}",
            b.digest,
            show(&log)
        );
    }
    let bad: Vec<Access> = log.iter().filter(|a| a.status >= 400).cloned().collect();
    assert!(
        bad.is_empty(),
        "{who}'s node answered errors:\n{}",
        show(&bad)
    );
    node.assert_went_through_parents();
}

/// What upstream saw for the fleet image, beyond "once": each blob GET and each manifest GET.
/// Blob violations are returned first, manifest violations second.
/// `replicas`: how many replicas share the bucket. Each may confirm a blob it has no access
/// record for with one HEAD (the access rule: a copy in the bucket is not a route's proof), so a
/// blob path may see up to that many HEADs; its GET, exactly one.
pub fn upstream_excess(
    proxy: &CountingProxy,
    big: &BigIndex,
    replicas: usize,
) -> (Vec<String>, Vec<String>) {
    let mut blobs = Vec::new();
    for b in big.amd64.blobs() {
        let n = proxy.count("GET", &format!("/v2/{REPO}/blobs/{}", b.digest));
        if n != 1 {
            blobs.push(format!("GET blob {}: {n} times", b.digest));
        }
    }
    for ((method, path), n) in proxy.counts() {
        let most = if method == "HEAD" { replicas } else { 1 };
        if path.contains("/blobs/") && n > most {
            blobs.push(format!("{method} {path}: {n} times"));
        }
    }
    let mut manifests = Vec::new();
    let by_tag = proxy.count("GET", &format!("/v2/{REPO}/manifests/{TAG}"));
    if by_tag != 1 {
        manifests.push(format!("GET manifest by tag {TAG}: {by_tag} times"));
    }
    let child = proxy.count(
        "GET",
        &format!("/v2/{REPO}/manifests/{}", big.amd64.manifest.digest),
    );
    if child != 1 {
        manifests.push(format!(
            "GET manifest {} (amd64): {child} times",
            big.amd64.manifest.digest
        ));
    }
    for ((method, path), n) in proxy.counts() {
        // A manifest by digest, like a blob, may be confirmed once per replica.
        let by_digest = path.contains("/manifests/sha256:");
        let most = if method == "HEAD" && by_digest {
            replicas
        } else {
            1
        };
        if path.contains("/manifests/") && n > most {
            manifests.push(format!("{method} {path}: {n} times"));
        }
    }
    (blobs, manifests)
}
