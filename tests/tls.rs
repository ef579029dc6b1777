//! TLS on the registry listener (ALPN h2 and http/1.1, certificate reload without dropping open
//! connections, start errors naming the file) and upstream `insecure_skip_verify`.

mod support;

use archway::config::{Config, TlsConfig};
use archway::Archway;
use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::certs::{ServerCert, TestCa};
use support::fake_registry::pseudo_random_bytes;
use support::{logs, FakeRegistry, Harness};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const H2: &[u8] = b"h2";
const H1: &[u8] = b"http/1.1";

/// The cert and key files of a test, written under `dir`.
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl CertFiles {
    fn write(dir: &Path, cert: &ServerCert) -> CertFiles {
        let files = CertFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        cert.write(&files.cert, &files.key);
        files
    }

    fn config(&self) -> TlsConfig {
        TlsConfig {
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
        }
    }
}

/// Opens a TLS connection trusting only `ca`, offering `alpn`.
async fn tls_connect(
    addr: SocketAddr,
    ca: &TestCa,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    TlsConnector::from(ca.client_config(alpn))
        .connect(name, tcp)
        .await
}

/// What the server negotiated and presented on a connection.
fn negotiated(s: &TlsStream<TcpStream>) -> (Option<Vec<u8>>, Vec<u8>) {
    let conn = s.get_ref().1;
    let alpn = conn.alpn_protocol().map(|p| p.to_vec());
    let leaf = conn.peer_certificates().unwrap()[0].to_vec();
    (alpn, leaf)
}

/// A request sender over an established TLS stream, HTTP/2 or HTTP/1.1 as ALPN decided.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn new(stream: TlsStream<TcpStream>) -> Sender {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(H2);
        let io = TokioIo::new(stream);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Sender::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Sender::H1(send)
        }
    }

    async fn get(&mut self, addr: SocketAddr, path: &str) -> http::Response<Incoming> {
        let uri = format!("https://{addr}{path}");
        let mut b = Request::get(&uri);
        if let Sender::H1(_) = self {
            b = b.version(Version::HTTP_11).header("host", addr.to_string());
        } else {
            b = b.version(Version::HTTP_2);
        }
        let req = b.body(Empty::new()).unwrap();
        let fut = async {
            match self {
                Sender::H1(s) => s.send_request(req).await,
                Sender::H2(s) => s.send_request(req).await,
            }
        };
        tokio::time::timeout(Duration::from_secs(20), fut)
            .await
            .expect("response head in time")
            .expect("response head")
    }
}

async fn read_all(body: &mut Incoming) -> Bytes {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            buf.extend_from_slice(d);
        }
    }
    buf.freeze()
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// archway with `[tls]` in front of a fresh fake; returns the harness, the CA and the files.
async fn tls_harness(dir: &Path) -> (Harness, TestCa, ServerCert, CertFiles) {
    let ca = TestCa::new("one");
    let cert = ca.server_cert();
    let files = CertFiles::write(dir, &cert);
    let tls = files.config();
    let h = Harness::with(FakeRegistry::start().await, |c| c.tls = Some(tls)).await;
    (h, ca, cert, files)
}

#[tokio::test]
async fn https_speaks_h2_and_http11_by_alpn() {
    logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let (h, ca, cert, _files) = tls_harness(dir.path()).await;
    let img = h.fake.sample_image("lib/app", "v1", 7);
    let addr = h.addr();
    let manifest_path = "/v2/lib/app/manifests/v1";

    // A client offering both gets HTTP/2, and the certificate is the configured one.
    let stream = tls_connect(addr, &ca, &[H2, H1]).await.unwrap();
    let (alpn, leaf) = negotiated(&stream);
    assert_eq!(alpn.as_deref(), Some(H2));
    assert_eq!(leaf, cert.der.to_vec());
    let mut s = Sender::new(stream).await;
    let mut r = s.get(addr, "/v2/").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), Version::HTTP_2);
    read_all(r.body_mut()).await;
    let mut r = s.get(addr, manifest_path).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        sha256(&read_all(r.body_mut()).await),
        img.manifest.to_string()
    );

    // HTTP/1.1 only: negotiated as such, same answers.
    let stream = tls_connect(addr, &ca, &[H1]).await.unwrap();
    assert_eq!(negotiated(&stream).0.as_deref(), Some(H1));
    let mut s = Sender::new(stream).await;
    let mut r = s.get(addr, manifest_path).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), Version::HTTP_11);
    assert_eq!(
        sha256(&read_all(r.body_mut()).await),
        img.manifest.to_string()
    );

    // No ALPN at all (old clients): HTTP/1.1 still works.
    let stream = tls_connect(addr, &ca, &[]).await.unwrap();
    assert_eq!(negotiated(&stream).0, None);
    let mut s = Sender::new(stream).await;
    let mut r = s
        .get(addr, &format!("/v2/lib/app/blobs/{}", img.config))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(read_all(r.body_mut()).await, img.config_bytes);

    // A client that does not trust the CA is refused: the certificate is really checked.
    let stranger = TestCa::new("stranger");
    let err = tls_connect(addr, &stranger, &[H2, H1]).await.unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // Plain HTTP on the TLS port gets no registry answer.
    let plain = h.client.clone().with_timeout(Duration::from_secs(5));
    let r = plain
        .try_request(http::Method::GET, &h.url("/v2/"), &[])
        .await;
    assert!(
        r.as_ref().map_or(true, |r| r.status != StatusCode::OK),
        "{r:?}"
    );
}

#[tokio::test]
async fn reload_serves_new_certificate_while_a_download_continues() {
    logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let (h, ca1, cert1, files) = tls_harness(dir.path()).await;
    let addr = h.addr();
    let blob = Bytes::from(pseudo_random_bytes(42, 24 << 20));
    let digest = h.fake.add_blob("lib/big", blob.clone());
    let archway = h.archway.as_ref().unwrap();

    // Start the download over HTTP/2 and take only its first part: the rest waits in flight,
    // held back by flow control.
    let stream = tls_connect(addr, &ca1, &[H2, H1]).await.unwrap();
    assert_eq!(negotiated(&stream).1, cert1.der.to_vec());
    let mut s = Sender::new(stream).await;
    let mut download = s.get(addr, &format!("/v2/lib/big/blobs/{digest}")).await;
    assert_eq!(download.status(), StatusCode::OK);
    let mut got = BytesMut::new();
    while got.len() < 256 << 10 {
        let frame = download.body_mut().frame().await.unwrap().unwrap();
        if let Some(d) = frame.data_ref() {
            got.extend_from_slice(d);
        }
    }
    assert!(got.len() < blob.len(), "the download is still in flight");

    // A new certificate from another CA, then the reload.
    let ca2 = TestCa::new("two");
    let cert2 = ca2.server_cert();
    cert2.write(&files.cert, &files.key);
    archway.reload_tls().unwrap();

    // New connections see the new certificate; the old CA no longer works.
    let fresh = tls_connect(addr, &ca2, &[H2, H1]).await.unwrap();
    assert_eq!(negotiated(&fresh).1, cert2.der.to_vec());
    let mut s2 = Sender::new(fresh).await;
    let mut r = s2.get(addr, "/v2/").await;
    assert_eq!(r.status(), StatusCode::OK);
    read_all(r.body_mut()).await;
    let err = tls_connect(addr, &ca1, &[H2, H1]).await.unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // The download started before the reload finishes, every byte right.
    got.extend_from_slice(&read_all(download.body_mut()).await);
    assert_eq!(got.len(), blob.len());
    assert_eq!(sha256(&got), digest.to_string());

    // A broken new certificate is refused and the current one stays.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    let err = archway.reload_tls().unwrap_err().to_string();
    assert!(err.contains("tls.crt"), "{err}");
    let still = tls_connect(addr, &ca2, &[H2, H1]).await.unwrap();
    assert_eq!(negotiated(&still).1, cert2.der.to_vec());
    // So is a key that does not belong to the certificate.
    let cert3 = ca2.server_cert();
    std::fs::write(&files.cert, &cert3.cert_pem).unwrap();
    let err = archway.reload_tls().unwrap_err().to_string();
    assert!(
        err.contains("tls.key") && err.contains("does not belong"),
        "{err}"
    );
    let still = tls_connect(addr, &ca2, &[H2, H1]).await.unwrap();
    assert_eq!(negotiated(&still).1, cert2.der.to_vec());
}

#[tokio::test]
async fn bad_certificate_files_stop_the_start_naming_the_file() {
    logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRegistry::start().await;
    let ca = TestCa::new("start");
    let good = CertFiles::write(dir.path(), &ca.server_cert());
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, ca.server_cert().key_pem).unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();

    let cases = [
        (
            dir.path().join("missing.crt"),
            good.key.clone(),
            "missing.crt",
        ),
        (
            good.cert.clone(),
            dir.path().join("missing.key"),
            "missing.key",
        ),
        (
            garbage.clone(),
            good.key.clone(),
            "garbage.pem: no PEM certificate",
        ),
        (
            good.cert.clone(),
            garbage.clone(),
            "garbage.pem: no PEM private key",
        ),
        (
            good.cert.clone(),
            other_key.clone(),
            "other.key: the key does not belong",
        ),
    ];
    for (cert_file, key_file, want) in cases {
        let mut cfg: Config = support::config_for(&fake, &dir.path().join("data"));
        cfg.tls = Some(TlsConfig {
            cert_file,
            key_file,
        });
        let err = match Archway::start(cfg).await {
            Ok(_) => panic!("started with {want}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "want {want:?} in {err}");
    }
}

/// A TLS front for `backend` (plain TCP): what an https upstream looks like to archway.
async fn tls_front(backend: SocketAddr, cert: &ServerCert) -> SocketAddr {
    let chain = vec![cert.der.clone()];
    let key = rustls_pemfile::private_key(&mut cert.key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn insecure_skip_verify_reaches_an_upstream_nobody_vouches_for() {
    let logs = logs::capture();
    let fake = FakeRegistry::start().await;
    let img = fake.sample_image("lib/app", "v1", 3);
    let ca = TestCa::new("upstream");
    let front = tls_front(fake.addr(), &ca.server_cert()).await;
    let url = format!("https://{front}");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path());
    let path = "/v2/lib/app/manifests/v1";

    let with = |name: &'static str, tweak: fn(&mut archway::config::UpstreamConfig, &Path)| {
        let url = url.clone();
        let ca_file = ca_file.clone();
        move |c: &mut Config| {
            let u = &mut c.upstreams[0];
            let mut fresh = archway::config::UpstreamConfig::from_url(Some(name), &url).unwrap();
            fresh.default = true;
            fresh.connect_timeout = u.connect_timeout;
            fresh.read_timeout = u.read_timeout;
            tweak(&mut fresh, &ca_file);
            *u = fresh;
        }
    };

    // Verified against the system roots only: the upstream's certificate is unknown → 502.
    let h = Harness::with(FakeRegistry::start().await, with("strict-up", |_, _| {})).await;
    let r = h.get(path).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(
        r.text().to_lowercase().contains("certificate"),
        "{}",
        r.text()
    );

    // Its CA as ca_file: verified, served.
    let h = Harness::with(
        FakeRegistry::start().await,
        with("ca-up", |u, ca| u.ca_file = Some(ca.to_owned())),
    )
    .await;
    let r = h.get(path).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.sha256(), img.manifest.to_string());

    // insecure_skip_verify: served too, and the start said so loudly, naming the upstream.
    let h = Harness::with(
        FakeRegistry::start().await,
        with("skip-verify-up", |u, _| u.insecure_skip_verify = true),
    )
    .await;
    let r = h.get(path).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.sha256(), img.manifest.to_string());
    let text = logs.text();
    let warning = text
        .lines()
        .find(|l| l.contains("insecure_skip_verify") && l.contains("skip-verify-up"))
        .unwrap_or_else(|| panic!("no warning naming the upstream in:\n{text}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        !text
            .lines()
            .any(|l| l.contains("insecure_skip_verify") && l.contains("ca-up")),
        "only the insecure upstream is warned about"
    );
}
