//! `archway warm --server`: the archway binary fills a running archway (in process, in front of
//! the fake registry) through its registry API. The platforms asked for are then served with the
//! upstream failing; those not asked for are not in the cache; a failure is named and makes the
//! exit status non-zero; images come from arguments and from a file or standard input.

mod support;

use http::StatusCode;
use std::process::Stdio;
use support::{FakeRegistry, Fault, Harness};

async fn warm(h: &Harness, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_archway"));
    cmd.arg("warm")
        .arg("--server")
        .arg(format!("http://{}", h.addr()))
        .args(args)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("archway warm");
    if let Some(text) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("warm finishes")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warms_the_platforms_asked_for_and_they_are_served_with_upstream_down() {
    let h = Harness::start().await;
    let idx = h
        .fake
        .sample_index("lib/app", "v1", 7, &["linux/amd64", "linux/arm64"]);
    let single = h.fake.sample_image("lib/one", "v2", 8);
    let (code, out, err) = warm(
        &h,
        &["--platform", "linux/arm64", "-j", "2", "lib/app:v1"],
        None,
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("warm: lib/app:v1: linux/arm64 (2 manifests, 3 blobs"),
        "{out}"
    );
    // From a file on standard input: a single-platform image is warmed as it is.
    let (code, out, err) = warm(&h, &["-f", "-"], Some("# seed list\nlib/one:v2\n")).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("warm: lib/one:v2: - (1 manifests, 3 blobs"),
        "{out}"
    );

    // Upstream down: what was warmed is served, what was not is not.
    h.fake.fault(None, Fault::status(503));
    let arm64 = &idx.images[1].1;
    let amd64 = &idx.images[0].1;
    for d in std::iter::once(&arm64.config)
        .chain(&arm64.layers)
        .chain(&single.layers)
    {
        let r = h
            .get(&format!(
                "/v2/{}/blobs/{d}",
                if single.layers.contains(d) {
                    "lib/one"
                } else {
                    "lib/app"
                }
            ))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{d}: {}", r.text());
    }
    let r = h
        .get(&format!("/v2/lib/app/manifests/{}", arm64.manifest))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for d in &amd64.layers {
        let r = h.get(&format!("/v2/lib/app/blobs/{d}")).await;
        assert_ne!(r.status, StatusCode::OK, "amd64 was not warmed: {d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_is_named_and_the_exit_status_says_so() {
    let h = Harness::with(FakeRegistry::start().await, |_| {}).await;
    h.fake.sample_image("lib/ok", "v1", 9);
    let (code, out, err) = warm(&h, &["--json", "lib/ok:v1", "lib/missing:v1"], None).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("1 of 2 failed: lib/missing:v1"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("--json is JSON");
    assert_eq!(v[0]["error"], serde_json::Value::Null, "{v}");
    assert!(v[1]["error"].as_str().unwrap_or("").contains("404"), "{v}");
    // A platform the index lacks fails that image, naming why.
    h.fake.sample_index("lib/multi", "v1", 10, &["linux/amd64"]);
    let (code, _, err) = warm(&h, &["--platform", "linux/s390x", "lib/multi:v1"], None).await;
    assert_eq!(code, 1);
    assert!(err.contains("lib/multi:v1"), "{err}");
    // No images: a usage error (2), naming what is missing.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_archway"))
        .args(["warm", "--server", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no images"));
    // A server that is not a URL of ours: a usage error too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_archway"))
        .args(["warm", "--server", "ftp://127.0.0.1:9", "alpine"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--server"));
}

/// Registry names map to the configured upstreams as containerd's `ns=` does: `ghcr.io/…` (by
/// digest too) reaches the upstream named ghcr.io, a bare name the default one, and a registry
/// that is not configured fails that image, named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_names_reach_their_upstreams() {
    let ghcr = FakeRegistry::start().await;
    let ghcr_url = ghcr.url();
    let h = Harness::with(FakeRegistry::start().await, |c| {
        let mut u = archway::config::UpstreamConfig::from_url(Some("ghcr.io"), &ghcr_url).unwrap();
        u.connect_timeout = std::time::Duration::from_secs(2);
        c.upstreams.push(u);
    })
    .await;
    let app = ghcr.sample_image("org/app", "v1", 11);
    let local = h.fake.sample_image("lib/local", "v1", 12);
    let by_digest = format!("ghcr.io/org/app@{}", app.manifest);
    let (code, out, err) = warm(&h, &[&by_digest, "lib/local:v1", "quay.io/x/y:1"], None).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("1 of 3 failed: quay.io/x/y:1"), "{err}");
    assert!(out.contains("not configured"), "{out}");
    for d in &app.layers {
        assert_eq!(
            ghcr.count_path("GET", &format!("/v2/org/app/blobs/{d}")),
            1,
            "{d}"
        );
        assert_eq!(
            h.fake.count_path("GET", &format!("/v2/org/app/blobs/{d}")),
            0
        );
    }
    for d in &local.layers {
        assert_eq!(
            h.fake
                .count_path("GET", &format!("/v2/lib/local/blobs/{d}")),
            1
        );
    }
}
