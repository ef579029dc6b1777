//! `archway warm` beyond plain HTTP: seeding a data_dir with no server (then served with the
//! upstream down), a server with TLS and `[auth]`, `--for` a legacy client (its converted answer,
//! and the tars of zstd layers for old Docker, are hits afterwards), `--pin`, Ctrl-C (exit 130, no
//! partial file), and progress as plain lines and as bars in a pseudo-terminal (`script`).

mod support;

use archway::config::{AuthConfig, TlsConfig};
use archway::Archway;
use http::StatusCode;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use support::{clients, config_for, FakeRegistry, Fault, Harness, Kind, TestClient};

const BIN: &str = env!("CARGO_BIN_EXE_archway");

async fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("warm")
        .args(args)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("ARCHWAY_SERVER")
        .env_remove("ARCHWAY_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("warm finishes")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn parts_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("tmp"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_a_data_dir_without_a_server_then_serves_it_with_upstream_down() {
    let fake = FakeRegistry::start().await;
    let idx = fake.sample_index("lib/app", "v1", 21, &["linux/amd64", "linux/arm64"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = run(
        &[
            "--data-dir",
            d,
            "--upstream",
            &fake.url(),
            "--progress",
            "lines",
            "--progress-interval",
            "0",
            "lib/app:v1",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    // The table: a row for the image (both platforms, 6 blobs, all fetched) and the total.
    let row = out
        .lines()
        .find(|l| l.starts_with("lib/app:v1"))
        .unwrap_or_else(|| panic!("no row: {out}"));
    assert!(
        row.contains("linux/arm64,linux/amd64") || row.contains("linux/amd64,linux/arm64"),
        "{row}"
    );
    assert!(row.contains("0 (0 B)") && row.ends_with("ok"), "{row}");
    assert!(
        out.lines().any(|l| l.starts_with("total (1 images)")),
        "{out}"
    );
    // Plain progress lines, not bars.
    assert!(err.contains("warm: 0/1 images,"), "{err}");
    assert!(!err.contains("ETA"), "{err}");
    assert!(parts_in(dir.path()).is_empty());

    // archway on that directory, the upstream answering 503 to everything: every platform is
    // served from what warm put there.
    fake.fault(None, Fault::status(503));
    let archway = Archway::start(config_for(&fake, dir.path())).await.unwrap();
    let client = TestClient::new();
    let base = format!("http://{}", archway.local_addr());
    for (platform, img) in &idx.images {
        let r = client
            .get(&format!("{base}/v2/lib/app/manifests/{}", img.manifest))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{platform}: {}", r.text());
        for (digest, bytes) in img.layers.iter().zip(&img.layer_bytes) {
            let r = client
                .get(&format!("{base}/v2/lib/app/blobs/{digest}"))
                .await;
            assert_eq!(r.status, StatusCode::OK, "{platform} {digest}");
            assert!(r.body == *bytes);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warms_through_tls_and_auth_with_the_ca_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::certs::TestCa::new("warm");
    let cert = ca.server_cert();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    cert.write(&cert_file, &key_file);
    let ca_file = ca.write_ca(&dir.path().join("ca"));
    let hash = bcrypt::hash("s3cret-pw", 4).unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("ops:{hash}\n")).unwrap();
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.tls = Some(TlsConfig {
            cert_file,
            key_file,
        });
        c.auth = Some(AuthConfig {
            htpasswd_file: Some(htpasswd),
            ..AuthConfig::default()
        });
    })
    .await;
    let img = h.fake.sample_image("lib/secure", "v1", 22);
    let server = format!("https://127.0.0.1:{}", h.addr().port());
    let ca = ca_file.to_str().unwrap();
    // Without the CA: the certificate is refused, and said so.
    let (code, _, err) = run(&["--server", &server, "lib/secure:v1"], &[]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("lib/secure:v1"), "{err}");
    // With the CA but no credentials: 401, named.
    let (code, out, err) = run(&["--server", &server, "--ca", ca, "lib/secure:v1"], &[]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("401"), "{out}");
    // Wrong password: the same.
    let env = [("ARCHWAY_PASSWORD", "wrong")];
    let (code, out, _) = run(
        &[
            "--server",
            &server,
            "--ca",
            ca,
            "--username",
            "ops",
            "lib/secure:v1",
        ],
        &env,
    )
    .await;
    assert_eq!(code, 1);
    assert!(out.contains("401"), "{out}");
    // CA and credentials (from a file): warmed; the password is in no output.
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret-pw\n").unwrap();
    let (code, out, err) = run(
        &[
            "--server",
            &server,
            "--ca",
            ca,
            "--username",
            "ops",
            "--password-file",
            pw.to_str().unwrap(),
            "--progress",
            "none",
            "lib/secure:v1",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!out.contains("s3cret") && !err.contains("s3cret"));
    let row = out
        .lines()
        .find(|l| l.starts_with("lib/secure:v1"))
        .unwrap();
    assert!(row.ends_with("ok"), "{row}");
    // The blobs were fetched from upstream once, by warm.
    for d in &img.layers {
        assert_eq!(
            h.fake
                .count_path("GET", &format!("/v2/lib/secure/blobs/{d}")),
            1
        );
    }
    // Again: everything is already cached, and the table says so.
    let (code, out, _) = run(
        &[
            "--server",
            &server,
            "--ca",
            ca,
            "--username",
            "ops",
            "--progress",
            "none",
            "lib/secure:v1",
        ],
        &[("ARCHWAY_PASSWORD", "s3cret-pw")],
    )
    .await;
    assert_eq!(code, 0);
    let row = out
        .lines()
        .find(|l| l.starts_with("lib/secure:v1"))
        .unwrap();
    assert!(
        row.contains(&format!("{} (", img.layers.len() + 1)) && row.contains(" 0 (0 B)"),
        "{row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_for_a_legacy_client_makes_the_answer_it_will_get() {
    let h = Harness::start().await;
    let idx = h
        .fake
        .sample_index("lib/win", "v1", 23, &["linux/amd64", "windows/amd64"]);
    let server = format!("http://{}", h.addr());
    let (code, out, err) = run(
        &[
            "--server",
            &server,
            "--for",
            "docker/17.06 (windows)",
            "--progress",
            "none",
            "lib/win:v1",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    // Only the client's platform was warmed: the answer it gets is the Windows child.
    let row = out.lines().find(|l| l.starts_with("lib/win:v1")).unwrap();
    assert!(row.contains("  -  ") || row.contains(" - "), "{row}");
    let windows = &idx.images[1].1;
    let linux = &idx.images[0].1;
    // Upstream down: the legacy client's first pull is a hit, answered as it needs (schema2).
    h.fake.fault(None, Fault::status(503));
    let ee = clients::docker_1706_windows();
    let r = h.get_with("/v2/lib/win/manifests/v1", &ee.lines()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.docker.distribution.manifest.v2+json")
    );
    assert_eq!(r.header("x-archway-cache"), Some("hit"), "{:?}", r.headers);
    for d in &windows.layers {
        let r = h.get(&format!("/v2/lib/win/blobs/{d}")).await;
        assert_eq!(r.status, StatusCode::OK, "{d}");
    }
    for d in &linux.layers {
        let r = h.get(&format!("/v2/lib/win/blobs/{d}")).await;
        assert_ne!(r.status, StatusCode::OK, "linux was not warmed: {d}");
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_cleanly_and_leaves_no_partial_blob() {
    let fake = FakeRegistry::start().await;
    let img = fake.sample_image_sized("lib/big", Some("v1"), 24, &[4 << 20]);
    // The layer's body stops after 1 MiB and never ends.
    fake.fault(Some(Kind::Blob), Fault::StallBody { sent: 1 << 20 });
    let dir = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(BIN)
        .args([
            "warm",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--upstream",
            &fake.url(),
            "--progress",
            "none",
            "lib/big:v1",
        ])
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("ARCHWAY_SERVER")
        .env_remove("ARCHWAY_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the download to be under way: a partial file in tmp/.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while parts_in(dir.path()).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no download started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("warm stops on SIGINT")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted: 0 of 1 images done"), "{err}");
    assert!(
        parts_in(dir.path()).is_empty(),
        "{:?}",
        parts_in(dir.path())
    );
    // No blob file for the stalled layer anywhere under the data dir.
    let layer = img.layers[0].to_string();
    let hex = layer.trim_start_matches("sha256:");
    let found = walk(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(hex))
        .collect::<Vec<_>>();
    assert!(found.is_empty(), "partial blob kept: {found:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// In a pseudo-terminal (util-linux `script`), auto progress draws bars: bytes done / total, a
/// rate and an ETA per image, and an overall bar counting images.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bars_in_a_terminal() {
    let h = Harness::start().await;
    h.fake
        .sample_index_sized("lib/tty", "v1", 25, &["linux/amd64"], &[3 << 20, 2 << 20]);
    // Slow enough that the bars are drawn while bytes arrive.
    h.fake.fault(
        Some(Kind::Blob),
        Fault::SlowBody {
            chunk: 256 << 10,
            every: Duration::from_millis(40),
        },
    );
    let cmd = format!(
        "NO_PROXY=127.0.0.1 {BIN} warm --server http://{} lib/tty:v1",
        h.addr()
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("script")
            .args(["-qfec", &cmd, "/dev/null"])
            .env("TERM", "xterm")
            .env("COLUMNS", "160")
            .output(),
    )
    .await
    .expect("script finishes")
    .expect("script (util-linux) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ETA"), "{text}");
    assert!(text.contains("MiB/s") || text.contains("KiB/s"), "{text}");
    assert!(
        text.contains("5.00 MiB") || text.contains("5 MiB"),
        "{text}"
    );
    assert!(text.contains("1/1 images"), "{text}");
    assert!(text.contains("lib/tty:v1"), "{text}");
    // Not the plain lines.
    assert!(!text.contains("warm: 0/1 images,"), "{text}");
}

/// `--pin`: with `--server`, each image is pinned through `--admin`'s /pins before it is warmed
/// (so the pin holds what warm pulls); seeding, in the data_dir's own pins, which the archway
/// later serving it lists and holds. Without `--admin`, `--server --pin` is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pin_pins_what_it_warms() {
    let h = Harness::with(FakeRegistry::start().await, |c| {
        c.admin_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let img = h.fake.sample_image("lib/pinned", "v1", 26);
    let server = format!("http://{}", h.addr());
    let admin = format!(
        "http://{}",
        h.archway.as_ref().unwrap().admin_addr().unwrap()
    );
    let (code, _, err) = run(&["--server", &server, "--pin", "lib/pinned:v1"], &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--admin"), "{err}");
    let (code, out, err) = run(
        &[
            "--server",
            &server,
            "--admin",
            &admin,
            "--pin",
            "--progress",
            "none",
            "lib/pinned:v1",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let pins = TestClient::new().get(&format!("{admin}/pins")).await.json();
    let pin = &pins.as_array().unwrap()[0];
    assert_eq!(pin["image"], "lib/pinned:v1", "{pins}");
    assert_eq!(pin["digest"], img.manifest.to_string(), "{pins}");
    assert_eq!(
        pin["blobs"].as_array().unwrap().len(),
        img.layers.len() + 1,
        "{pins}"
    );

    // Seeding with --pin: the pins live in the data_dir.
    let fake = FakeRegistry::start().await;
    let img = fake.sample_image("lib/seed", "v1", 27);
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(
        &[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--upstream",
            &fake.url(),
            "--pin",
            "--progress",
            "none",
            "lib/seed:v1",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let mut cfg = config_for(&fake, dir.path());
    cfg.admin_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let archway = Archway::start(cfg).await.unwrap();
    let admin = format!("http://{}", archway.admin_addr().unwrap());
    let pins = TestClient::new().get(&format!("{admin}/pins")).await.json();
    let pin = &pins.as_array().unwrap()[0];
    assert_eq!(pin["image"], "lib/seed:v1", "{pins}");
    assert_eq!(pin["digest"], img.manifest.to_string(), "{pins}");
    assert!(pin["bytes"].as_u64().unwrap() > 0, "{pins}");
}

/// `--for 'docker/20.10 (linux)'` on an image with a zstd layer: warm asks as Docker 20.10 does,
/// archway answers the amd64 child with that layer's tar, and warm pulls the tar, so Docker's
/// first pull is whole from the cache with the upstream down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_for_old_docker_makes_the_tars_of_zstd_layers() {
    let h = Harness::start().await;
    let idx = support::images::zstd_index(&h.fake, "lib/z", "v1", 28);
    let amd64 = &idx.images[0];
    let server = format!("http://{}", h.addr());
    let (code, out, err) = run(
        &[
            "--server",
            &server,
            "--for",
            "docker/20.10 (linux)",
            "--progress",
            "none",
            "lib/z:v1",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    h.fake.fault(None, Fault::status(503));
    let docker = clients::docker_2010();
    let r = h.get_with("/v2/lib/z/manifests/v1", &docker.lines()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let m = r.json();
    let layers = m["layers"].as_array().unwrap();
    let (diff_id, tar) = &amd64.tars[1];
    assert_eq!(layers[1]["digest"], diff_id.to_string(), "{m}");
    let b = h
        .get_with(&format!("/v2/lib/z/blobs/{diff_id}"), &docker.lines())
        .await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.text());
    assert_eq!(b.header("x-archway-cache"), Some("hit"));
    assert!(b.body == *tar, "the zstd layer's tar");
    let plain = &amd64.layers[0].1;
    let b = h.get(&format!("/v2/lib/z/blobs/{plain}")).await;
    assert_eq!(b.status, StatusCode::OK);
}
