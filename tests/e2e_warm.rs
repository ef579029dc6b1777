//! End to end: `archway warm` fills a real archway in front of a real Distribution with the
//! arm64/v8 child of a multi-platform image; then the registry is stopped. skopeo and
//! containerd's ctr (hosts.toml mirror) pull that platform from archway alone; the amd64 child,
//! not warmed, fails as it should. Loopback only; runs with `ARCHWAY_E2E=1`.

#[allow(dead_code)]
mod e2e {
    pub mod fixtures;
    pub mod http;
    pub mod layout;
    pub mod procs;
    pub mod tools;
}

use e2e::fixtures::{FixtureSet, Flavour, LINUX_ARM64_V8};
use e2e::procs::{command, run, run_ok};
use e2e::tools::{
    e2e_enabled, skopeo, temp_dir, write_hosts_toml, Archway, Containerd, Dockerd, Registry,
};
use std::time::Duration;

const T: Duration = Duration::from_secs(300);

#[test]
fn warmed_platforms_pull_with_the_upstream_down() {
    if !e2e_enabled("warmed_platforms_pull_with_the_upstream_down") {
        return;
    }
    let mut registry = Registry::start();
    let fx = FixtureSet::build(e2e::fixtures::fresh_seed(), false);
    fx.push(&registry.url(), &["library/warmed"]);
    let archway = Archway::start(&registry.url(), "5m");
    let tmp = temp_dir("warm");

    let out = run_ok(
        command(env!("CARGO_BIN_EXE_archway")).args([
            "warm",
            "--server",
            &archway.url(),
            "--platform",
            "linux/arm64/v8",
            "docker.io/library/warmed:oci",
        ]),
        T,
    );
    assert!(out.stdout.contains("linux/arm64/v8"), "{}", out.stdout);
    registry.stop();

    // skopeo: the warmed platform, from archway alone.
    let arm = tmp.path().join("arm");
    run_ok(
        &mut skopeo(
            tmp.path(),
            &[
                "copy",
                "--src-tls-verify=false",
                "--override-arch",
                "arm64",
                "--override-variant",
                "v8",
                &format!("docker://{}/library/warmed:oci", archway.host()),
                &format!("oci:{}:x", arm.display()),
            ],
        ),
        T,
    );
    let layout = e2e::layout::OciLayout::open(&arm);
    let want = fx.image(Flavour::Oci, LINUX_ARM64_V8);
    assert_eq!(layout.descriptor("x")["digest"], want.manifest.digest);
    // The amd64 child was not warmed: with the upstream down it cannot be had.
    let amd = run(
        &mut skopeo(
            tmp.path(),
            &[
                "copy",
                "--src-tls-verify=false",
                "--override-arch",
                "amd64",
                &format!("docker://{}/library/warmed:oci", archway.host()),
                &format!("oci:{}:x", tmp.path().join("amd").display()),
            ],
        ),
        T,
    );
    assert!(!amd.success(), "amd64 was never warmed:\n{}", amd.stdout);

    // ctr through archway as its hosts.toml mirror (the real server is down too).
    let hosts = tmp.path().join("certs.d");
    write_hosts_toml(&hosts, "docker.io", &registry.url(), &archway.url());
    let containerd = Containerd::start(&tmp.path().join("ctd"));
    run_ok(
        &mut containerd.ctr(&[
            "image",
            "pull",
            "--hosts-dir",
            &hosts.display().to_string(),
            "--platform",
            "linux/arm64/v8",
            "docker.io/library/warmed:oci",
        ]),
        T,
    );

    // dockerd with archway as its registry mirror (the real server still down).
    let before = archway.access_log().len();
    let dockerd = Dockerd::start(&tmp.path().join("dkd"), &containerd, &archway.host());
    let pull = run(
        &mut dockerd.docker(&["pull", "--platform", "linux/arm64/v8", "warmed:oci"]),
        T,
    );
    assert!(
        pull.success(),
        "docker pull failed:\n{}\n{}\n{}",
        pull.stdout,
        pull.stderr,
        dockerd.log_tail()
    );
    let arch = run_ok(
        &mut dockerd.docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Architecture}}",
            "warmed:oci",
        ]),
        T,
    );
    assert_eq!(arch.stdout.trim(), "arm64");
    // Through archway, every answer from its cache.
    let log = archway.access_log()[before..].to_vec();
    let served: Vec<_> = log
        .iter()
        .filter(|a| a.uri.starts_with("/v2/library/warmed/") && a.status == 200)
        .collect();
    assert!(
        served.iter().any(|a| a.uri.contains("/blobs/")),
        "docker did not pull through archway: {log:?}"
    );
}
