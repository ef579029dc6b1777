//! The `archway` binary: embedded defaults, flags and environment, refusing bad config by key,
//! graceful SIGTERM, and the healthcheck probe.

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{FakeRegistry, Kind, TestClient};

fn archway() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_archway"));
    hermetic(&mut c);
    c
}

/// The binary with a hard open-file limit of `nofile` (util-linux's `prlimit`).
fn archway_with_open_files(nofile: u32) -> Command {
    let mut c = Command::new("prlimit");
    c.arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_archway"));
    hermetic(&mut c);
    c
}

fn hermetic(c: &mut Command) {
    // Nothing from the developer's environment; nothing may leave the machine.
    for (k, _) in std::env::vars() {
        if k.starts_with("ARCHWAY_") {
            c.env_remove(k);
        }
    }
    c.env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1,localhost,::1");
}

/// A config file for one upstream, `extra` appended.
fn config_file(
    dir: &std::path::Path,
    port: u16,
    upstream: &str,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join("archway.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{extra}\n[[upstream]]\nname = \"fake\"\nurl = \"{upstream}\"\ndefault = true\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "archway did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

async fn wait_ready(url: &str) {
    let client = TestClient::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.try_request(http::Method::GET, url, &[]).await {
            if r.status == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} never answered 200");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn bad_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[cache]\ntag_ttl = \"5 parsecs\"\n", "cache.tag_ttl"),
        ("listen = \"not an address\"\n", "listen"),
        (
            "[[upstream]]\nname = \"x\"\nurl = \"ftp://x\"\n",
            "upstream[0].url",
        ),
        (
            "[[route]]\nplatform = \"linux/not-an-arch/v9/x\"\n",
            "route[0].platform",
        ),
        ("[[route]]\nrewrite = \"always\"\n", "route[0].platform"),
        ("surprise = true\n", "surprise"),
    ];
    for (toml, key) in cases {
        let path = dir.path().join("archway.toml");
        std::fs::write(&path, toml).unwrap();
        let out = archway()
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml:?}: {stderr}");
        assert!(stderr.contains(key), "{toml:?}: {stderr}");
    }
    let out = archway()
        .args(["serve", "--cache-max-size", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cache-max-size"));
    let out = archway()
        .args(["serve", "--parent", "http://ok:5000,cluster:5000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--parent"));
}

/// `--upstream http://user:pass@host`: refused at start, pointing at the config keys, and the
/// password is printed nowhere (it used to be accepted, never sent, and logged at start).
#[test]
fn an_upstream_url_with_credentials_is_refused_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let child = archway()
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream"])
        .arg("http://bot:hunter2@127.0.0.1:9")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let status = running.wait_exit(Duration::from_secs(10));
    let mut out = String::new();
    for pipe in [
        running
            .0
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read>),
        running
            .0
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut pipe = pipe;
        std::io::Read::read_to_string(&mut pipe, &mut out).unwrap();
    }
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("--upstream"), "{out}");
    assert!(
        out.contains("username") && out.contains("password"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "{out}");
}

/// `archway serve` with nothing else: a Docker Hub mirror on 0.0.0.0:5000 caching in
/// ./archway-data. Only the ping is asked (it needs no upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_defaults_listen_on_5000_and_cache_in_cwd() {
    assert!(
        TcpListener::bind("0.0.0.0:5000").is_ok(),
        "port 5000 must be free for this test"
    );
    let cwd = tempfile::tempdir().unwrap();
    let mut run = Running(
        archway()
            .arg("serve")
            .current_dir(cwd.path())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_ready("http://127.0.0.1:5000/v2/").await;
    assert!(cwd.path().join("archway-data").is_dir());
    run.sigterm();
    let status = run.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    use std::io::Read;
    run.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("docker.io=https://registry-1.docker.io"),
        "{stderr}"
    );
}

/// Flags and environment override; SIGTERM lets an in-flight request finish, then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_overrides_and_sigterm_drains() {
    let fake = FakeRegistry::start().await;
    let img = fake.sample_image("app", "v1", 3);
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let mut run = Running(
        archway()
            .arg("serve")
            .env("ARCHWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("ARCHWAY_DATA_DIR", data.path())
            .env("ARCHWAY_UPSTREAM", fake.url())
            .env("ARCHWAY_LOG_FORMAT", "json")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{base}/v2/")).await;

    // A blob the upstream answers only after a second: SIGTERM arrives while it is in flight.
    fake.set_delay(Some(Kind::Blob), Duration::from_millis(1000));
    let url = format!("{base}/v2/app/blobs/{}", img.layers[1]);
    let pending = tokio::spawn(async move { TestClient::new().get(&url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    run.sigterm();
    let reply = pending.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, img.layer_bytes[1]);
    let status = run.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    // The blob went to the data dir the environment named.
    let hex = img.layers[1].to_string()["sha256:".len()..].to_owned();
    assert!(data
        .path()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .is_file());
    let mut stderr = String::new();
    use std::io::Read;
    run.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    // JSON logs, one access line for the blob.
    let access: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "archway::access")
        .collect();
    assert!(access.iter().any(|v| v["fields"]["path"]
        .as_str()
        .is_some_and(|p| p.contains("/blobs/"))
        && v["fields"]["status"] == 200
        && v["fields"]["cache"] == "miss"));
}

// The blocking child wait must not starve the fake registry: it runs on another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_probe_exit_codes() {
    let fake = FakeRegistry::start().await;
    let ok = archway()
        .args(["healthcheck", "--url", &format!("{}/v2/", fake.url())])
        .status()
        .unwrap();
    assert!(ok.success());
    let closed = archway()
        .args([
            "healthcheck",
            "--url",
            &format!("http://127.0.0.1:{}/healthz", free_port()),
            "--timeout",
            "2",
        ])
        .status()
        .unwrap();
    assert_eq!(closed.code(), Some(1));
}

/// Without --url the probe reads `admin_listen` from the config (0.0.0.0 probed via loopback),
/// as the container image's HEALTHCHECK does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_probes_the_configured_admin_listener() {
    let fake = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = dir.path().join("archway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"0.0.0.0:{admin}\"\ndata_dir = \"{}\"\n\
             [[upstream]]\nname = \"fake\"\nurl = \"{}\"\ndefault = true\n",
            dir.path().join("data").display(),
            fake.url()
        ),
    )
    .unwrap();
    let _run = Running(
        archway()
            .args(["serve", "--config"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready(&format!("http://127.0.0.1:{admin}/healthz")).await;
    let ok = archway()
        .args(["healthcheck", "--config"])
        .arg(&config)
        .status()
        .unwrap();
    assert!(ok.success());
    let no_admin = dir.path().join("no-admin.toml");
    std::fs::write(&no_admin, format!("listen = \"127.0.0.1:{port}\"\n")).unwrap();
    let out = archway()
        .args(["healthcheck", "--config"])
        .arg(&no_admin)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin_listen"));
}

/// Under a 256 open-file limit, 300 connections that never send a byte lock nobody out: archway
/// caps its connections below the limit and closes silent ones after the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_under_a_small_file_limit_lock_nobody_out() {
    let fake = FakeRegistry::start().await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        port,
        &fake.url(),
        "[limits]\nheader_read_timeout = \"1s\"",
    );
    let _run = Running(
        archway_with_open_files(256)
            .args(["serve", "--config"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .expect("prlimit (util-linux) runs archway"),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{base}/v2/")).await;
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(20),
        TestClient::new().get(&format!("{base}/v2/")),
    )
    .await
    .expect("a real client was locked out");
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(silent);
}

/// SIGTERM does not wait on idle keep-alive connections, on ones that never sent a byte, nor on
/// one whose request head never ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_on_idle_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = FakeRegistry::start().await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), port, &fake.url(), "");
    let mut run = Running(
        archway()
            .args(["serve", "--config"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready(&format!("http://127.0.0.1:{port}/v2/")).await;
    let _silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // A request head that never ends.
    let mut lingering = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    lingering
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    idle.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(idle.read(&mut buf).await.unwrap() > 0);
    let started = Instant::now();
    run.sigterm();
    let status = run.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SIGTERM waited {:?}",
        started.elapsed()
    );
}

/// `[storage]` with no credentials anywhere and instance metadata turned off is refused at
/// start, naming the keys to set; with keys in the AWS shared credentials file (`$HOME/.aws/
/// credentials`, profile `default`) the same config starts.
#[tokio::test]
async fn storage_credentials_from_the_shared_file_or_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config_file(
        dir.path(),
        port,
        "http://127.0.0.1:9",
        "[storage]\ns3_bucket = \"archway\"\ns3_endpoint = \"http://127.0.0.1:9\"\ns3_path_style = true\n",
    );
    let serve = || {
        let mut cmd = archway();
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HOME", dir.path())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(["serve", "--config"])
            .arg(&config);
        cmd
    };
    let out = serve().output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("storage.s3_access_key_id"), "{stderr}");

    std::fs::create_dir_all(dir.path().join(".aws")).unwrap();
    std::fs::write(
        dir.path().join(".aws/credentials"),
        "[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = from-the-file\n",
    )
    .unwrap();
    let mut run = Running(serve().stderr(Stdio::piped()).spawn().unwrap());
    wait_ready(&format!("http://127.0.0.1:{port}/v2/")).await;
    run.sigterm();
    assert!(run.wait_exit(Duration::from_secs(10)).success());
    let mut stderr = String::new();
    use std::io::Read;
    run.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("shared credentials file"), "{stderr}");
    assert!(
        !stderr.contains("from-the-file"),
        "no secret in the log: {stderr}"
    );
}

#[test]
fn config_print_defaults_prints_every_key_with_its_default() {
    let out = archway()
        .args(["config", "--print-defaults"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, archway::config::keys::reference());
    assert!(text.contains("[storage]\n"));
    assert!(text.contains("s3_timeout = \"5s\""));
    assert!(text.contains("\n[[upstream]]\n"));
}
