//! End-to-end tier for TLS and client authentication: skopeo and ctr trusting a CA the test
//! generates, skopeo with and without credentials, and SIGHUP certificate reload of the real
//! binary while a download is in flight. Same gate and helpers as `tests/e2e.rs`.

#[allow(dead_code)]
mod e2e {
    pub mod fixtures;
    pub mod http;
    pub mod layout;
    pub mod procs;
    pub mod tools;
}
#[path = "support/certs.rs"]
mod certs;

use bytes::{Bytes, BytesMut};
use certs::{ServerCert, TestCa};
use e2e::fixtures::{self, FixtureSet, Flavour, LINUX_ARM64_V8};
use e2e::layout::OciLayout;
use e2e::procs::{run, run_ok};
use e2e::tools::{e2e_enabled, show, skopeo, temp_dir, Access, Archway, Containerd, Registry};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const PULL_TIMEOUT: Duration = Duration::from_secs(300);

/// A registry of the test's own holding fresh fixtures under `repos`.
fn upstream(repos: &[&str], with_large: bool) -> (Registry, FixtureSet) {
    let registry = Registry::start();
    let fixtures = FixtureSet::build(fixtures::fresh_seed(), with_large);
    eprintln!(
        "fixture seed {} in {} {repos:?}",
        fixtures.seed,
        registry.url()
    );
    fixtures.push(&registry.url(), repos);
    (registry, fixtures)
}

/// A CA and a server certificate, written as `<dir>/ca/ca.crt`, `<dir>/tls.crt`, `<dir>/tls.key`.
struct Pki {
    ca: TestCa,
    cert: ServerCert,
    ca_dir: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca = TestCa::new("e2e");
        let cert = ca.server_cert();
        let ca_dir = dir.join("ca");
        ca.write_ca(&ca_dir);
        let cert_file = dir.join("tls.crt");
        let key_file = dir.join("tls.key");
        cert.write(&cert_file, &key_file);
        Pki {
            ca,
            cert,
            ca_dir,
            cert_file,
            key_file,
        }
    }

    fn tls_section(&self) -> String {
        format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.cert_file.display(),
            self.key_file.display()
        )
    }

    fn ca_crt(&self) -> PathBuf {
        self.ca_dir.join("ca.crt")
    }
}

fn entries_for<'a>(log: &'a [Access], repo: &str) -> Vec<&'a Access> {
    let prefix = format!("/v2/{repo}/");
    log.iter()
        .filter(|a| a.path().starts_with(&prefix))
        .collect()
}

/// Asserts the arm64/v8 child of `oci` and its blobs were served 200 through archway.
fn assert_pulled_through(log: &[Access], repo: &str, fx: &FixtureSet, query: Option<&str>) {
    let child = fx.image(Flavour::Oci, LINUX_ARM64_V8);
    let mine = entries_for(log, repo);
    for want in std::iter::once(&child.manifest).chain(child.blobs()) {
        let served = mine.iter().any(|a| {
            a.method == "GET"
                && a.status == 200
                && a.path().ends_with(&want.digest)
                && query.is_none_or(|q| a.query().contains(q))
        });
        assert!(
            served,
            "archway never served {} for {repo}:\n{}",
            want.digest,
            show(log)
        );
    }
}

fn skopeo_copy_arm64(tmp: &Path, source: &str, out: &str, extra: &[&str]) -> OciLayout {
    let dir = tmp.join(out);
    let src = format!("docker://{source}");
    let dst = format!("oci:{}:x", dir.display());
    let mut args = vec![
        "copy",
        "--override-arch",
        "arm64",
        "--override-variant",
        "v8",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[&src, &dst]);
    run_ok(&mut skopeo(tmp, &args), PULL_TIMEOUT);
    OciLayout::open(&dir)
}

fn assert_layout_is_arm64(layout: &OciLayout, fx: &FixtureSet) {
    let want = fx.image(Flavour::Oci, LINUX_ARM64_V8);
    assert_eq!(layout.descriptor("x")["digest"], want.manifest.digest);
    let all = layout.walk(&want.manifest.digest);
    for b in want.blobs() {
        assert!(all.contains(&b.digest), "layout lacks {}", b.digest);
    }
}

#[test]
fn skopeo_over_https_trusting_a_generated_ca() {
    if !e2e_enabled("skopeo_over_https_trusting_a_generated_ca") {
        return;
    }
    let (registry, fx) = upstream(&["library/tlsrepo"], false);
    let tmp = temp_dir("tlsskopeo");
    let pki = Pki::new(tmp.path());
    let archway = Archway::start_with_extra(&registry.url(), "5m", &pki.tls_section(), true);
    let image = format!("{}/tlsrepo:oci", archway.host());
    let ca_dir = pki.ca_dir.display().to_string();

    // Without the CA, skopeo (verifying, its default) refuses archway's certificate.
    let out = run(
        &mut skopeo(
            tmp.path(),
            &["inspect", "--raw", &format!("docker://{image}")],
        ),
        PULL_TIMEOUT,
    );
    assert!(
        !out.success(),
        "skopeo trusted an unknown CA:\n{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("certificate"),
        "not refused for the certificate:\n{}",
        out.stderr
    );

    // With the CA in --cert-dir: the index, byte for byte.
    let out = run_ok(
        &mut skopeo(
            tmp.path(),
            &[
                "inspect",
                "--raw",
                "--cert-dir",
                &ca_dir,
                &format!("docker://{image}"),
            ],
        ),
        PULL_TIMEOUT,
    );
    assert_eq!(
        fixtures::sha256(out.stdout.as_bytes()),
        fx.tag("oci").digest
    );

    // And a whole copy, with --src-cert-dir and without --src-tls-verify=false.
    let layout = skopeo_copy_arm64(tmp.path(), &image, "out", &["--src-cert-dir", &ca_dir]);
    assert_layout_is_arm64(&layout, &fx);
    let log = archway.access_log();
    assert_pulled_through(&log, "tlsrepo", &fx, None);
    assert!(
        entries_for(&log, "tlsrepo").iter().all(|a| a.status < 400),
        "{}",
        show(&log)
    );
}

#[test]
fn ctr_pulls_over_https_with_hosts_toml_ca() {
    if !e2e_enabled("ctr_pulls_over_https_with_hosts_toml_ca") {
        return;
    }
    let (registry, fx) = upstream(&["library/tlsctr"], false);
    let tmp = temp_dir("tlsctr");
    let pki = Pki::new(tmp.path());
    let archway = Archway::start_with_extra(&registry.url(), "5m", &pki.tls_section(), true);
    let hosts = tmp.path().join("certs.d");
    let host_dir = hosts.join("docker.io");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"{}\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
            registry.url(),
            archway.url(),
            pki.ca_crt().display()
        ),
    )
    .unwrap();
    assert!(archway.url().starts_with("https://"));
    let containerd = Containerd::start(&tmp.path().join("ctd"));
    let hosts = hosts.display().to_string();
    run_ok(
        &mut containerd.ctr(&[
            "image",
            "pull",
            "--hosts-dir",
            &hosts,
            "--platform",
            "linux/arm64",
            "docker.io/library/tlsctr:oci",
        ]),
        PULL_TIMEOUT,
    );
    let content = run_ok(
        &mut containerd.ctr(&["content", "ls", "-q"]),
        Duration::from_secs(30),
    )
    .stdout;
    let child = fx.image(Flavour::Oci, LINUX_ARM64_V8);
    for d in std::iter::once(&child.manifest).chain(child.blobs()) {
        assert!(content.contains(&d.digest), "containerd lacks {}", d.digest);
    }
    // Through archway (containerd would otherwise fall back to `server`), over TLS.
    assert_pulled_through(
        &archway.access_log(),
        "library/tlsctr",
        &fx,
        Some("ns=docker.io"),
    );
}

#[test]
fn skopeo_needs_credentials_when_auth_is_on() {
    if !e2e_enabled("skopeo_needs_credentials_when_auth_is_on") {
        return;
    }
    let (registry, fx) = upstream(&["library/authrepo"], false);
    let tmp = temp_dir("authskopeo");
    let pki = Pki::new(tmp.path());
    let password = "pull-secret-4242";
    let token = "ci-token-0b7e";
    let htpasswd = tmp.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("puller:{}\n", bcrypt::hash(password, 5).unwrap()),
    )
    .unwrap();
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, format!("# CI\n{token}\n")).unwrap();
    let extra = format!(
        "{}\n[auth]\nhtpasswd_file = \"{}\"\ntokens_file = \"{}\"\n",
        pki.tls_section(),
        htpasswd.display(),
        tokens.display()
    );
    let archway = Archway::start_with_extra(&registry.url(), "5m", &extra, true);
    let image = format!("{}/authrepo:oci", archway.host());
    let ca_dir = pki.ca_dir.display().to_string();

    // No credentials: refused with 401.
    let dst = format!("oci:{}:x", tmp.path().join("denied").display());
    let out = run(
        &mut skopeo(
            tmp.path(),
            &[
                "copy",
                "--src-cert-dir",
                &ca_dir,
                &format!("docker://{image}"),
                &dst,
            ],
        ),
        PULL_TIMEOUT,
    );
    assert!(
        !out.success(),
        "copied without credentials:\n{}",
        out.stdout
    );
    let err = out.stderr.to_lowercase();
    assert!(
        err.contains("401")
            || err.contains("unauthorized")
            || err.contains("authentication required"),
        "not refused for authentication:\n{}",
        out.stderr
    );
    // Wrong password: refused too.
    let out = run(
        &mut skopeo(
            tmp.path(),
            &[
                "copy",
                "--src-cert-dir",
                &ca_dir,
                "--src-creds",
                "puller:not-the-password",
                &format!("docker://{image}"),
                &dst,
            ],
        ),
        PULL_TIMEOUT,
    );
    assert!(!out.success(), "copied with a wrong password");

    // The htpasswd user: copied.
    let creds = format!("puller:{password}");
    let layout = skopeo_copy_arm64(
        tmp.path(),
        &image,
        "withcreds",
        &["--src-cert-dir", &ca_dir, "--src-creds", &creds],
    );
    assert_layout_is_arm64(&layout, &fx);

    // The bearer token, as scripts send it (skopeo, Docker and containerd answer archway's
    // Basic challenge with Basic only).
    let index = &fx.tag("oci").digest;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let get = |auth: &str| {
        let path = format!("/v2/authrepo/manifests/{index}");
        rt.block_on(https_get(archway.port, &pki.ca, &path, auth))
    };
    let (status, body) = get(&format!("Bearer {token}"));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fixtures::sha256(&body), *index);
    let (status, _) = get("Bearer not-the-token");
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let log = archway.access_log();
    assert!(
        log.iter().any(|a| a.status == 401),
        "the refusals are logged:\n{}",
        show(&log)
    );
    assert_pulled_through(&log, "authrepo", &fx, None);
    let text = archway.log();
    for secret in [password, token, "not-the-password"] {
        assert!(!text.contains(secret), "`{secret}` is in archway's log");
    }
}

// === SIGHUP ===

async fn tls_connect(port: u16, ca: &TestCa) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    tokio_rustls::TlsConnector::from(ca.client_config(&[b"http/1.1"]))
        .connect(name, tcp)
        .await
}

/// One HTTP/1.1 GET over TLS with an `Authorization` header: status and body.
async fn https_get(port: u16, ca: &TestCa, path: &str, authorization: &str) -> (StatusCode, Bytes) {
    let stream = tls_connect(port, ca).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", format!("127.0.0.1:{port}"))
        .header("authorization", authorization)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

fn leaf(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().expect("peer certificate")[0].to_vec()
}

/// Waits until archway's log has a line containing `needle` (after `skip` bytes).
fn wait_for_log(archway: &Archway, skip: usize, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = archway.log();
        if let Some(line) = log
            .get(skip..)
            .and_then(|l| l.lines().find(|l| l.contains(needle)))
        {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "archway never logged {needle:?}:\n{}",
            log.get(skip..).unwrap_or("")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sighup_reloads_the_certificate_while_a_download_is_in_flight() {
    if !e2e_enabled("sighup_reloads_the_certificate_while_a_download_is_in_flight") {
        return;
    }
    let (registry, fx) = upstream(&["library/bigrepo"], true);
    let large = fx.large.as_ref().expect("built with the large image");
    let layer = &large.layers[0];
    let tmp = temp_dir("sighup");
    let pki = Pki::new(tmp.path());
    let archway = Archway::start_with_extra(&registry.url(), "5m", &pki.tls_section(), true);
    let port = archway.port;
    let rt = tokio::runtime::Runtime::new().unwrap();

    rt.block_on(async {
        // Start the 50 MB download and read only its first MiB.
        let stream = tls_connect(port, &pki.ca).await.unwrap();
        assert_eq!(leaf(&stream), pki.cert.der.to_vec());
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("/v2/bigrepo/blobs/{}", layer.digest))
            .header("host", format!("127.0.0.1:{port}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let mut resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut got = BytesMut::new();
        while got.len() < 1 << 20 {
            let frame = resp.body_mut().frame().await.unwrap().unwrap();
            if let Some(d) = frame.data_ref() {
                got.extend_from_slice(d);
            }
        }
        assert!(got.len() < layer.data.len());

        // New certificate from a new CA, then SIGHUP to the process.
        let ca2 = TestCa::new("e2e-two");
        let cert2 = ca2.server_cert();
        cert2.write(&pki.cert_file, &pki.key_file);
        let before = archway.log().len();
        archway.signal("HUP");
        wait_for_log(&archway, before, "TLS certificate reloaded");

        // A new connection gets the new certificate; the old CA is no longer enough.
        let fresh = tls_connect(port, &ca2).await.unwrap();
        assert_eq!(leaf(&fresh), cert2.der.to_vec());
        assert!(tls_connect(port, &pki.ca).await.is_err());

        // The download that began before the reload completes, intact.
        while let Some(frame) = resp.body_mut().frame().await {
            if let Some(d) = frame.unwrap().data_ref() {
                got.extend_from_slice(d);
            }
        }
        assert_eq!(got.len(), layer.data.len());
        assert_eq!(fixtures::sha256(&got), layer.digest);

        // A broken certificate on the next SIGHUP: logged, and the working one stays.
        std::fs::write(&pki.cert_file, "not a certificate\n").unwrap();
        let before = archway.log().len();
        archway.signal("HUP");
        let line = wait_for_log(&archway, before, "TLS reload failed");
        assert!(line.contains("tls.crt"), "{line}");
        let still = tls_connect(port, &ca2).await.unwrap();
        assert_eq!(leaf(&still), cert2.der.to_vec());
    });

    let log = archway.access_log();
    let served = log.iter().any(|a| {
        a.method == "GET"
            && a.path() == format!("/v2/bigrepo/blobs/{}", layer.digest)
            && a.status == 200
            && a.complete == Some(true)
    });
    assert!(served, "the download is logged complete:\n{}", show(&log));
}
