//! Replicas on one moto bucket for the in-process fleet tests (`tests/fleet_fill.rs`,
//! `tests/fleet_fetch.rs`): their config, the bucket's keys, their fleet metrics.

use super::s3::{Moto, ACCESS_KEY, REGION, SECRET_KEY};
use crate::support::metrics::Scrape;
use crate::support::{config_for, FakeRegistry};
use archway::config::{Config, FleetConfig, S3Keys, Secret, StorageConfig};
use archway::server::Archway;
use std::time::Duration;

pub const BUCKET: &str = "archway-fleet";
pub const SECRET: &str = "fleet-test-secret";

pub fn required() -> bool {
    std::env::var("ARCHWAY_E2E").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true")
}

pub fn skip(test: &str) -> bool {
    if required() {
        return false;
    }
    // Straight to stderr: the harness swallows eprintln! of a passing test, and a skip that
    // passes silently reads as a test that ran.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n######## {test}: skipped: needs moto_server (ARCHWAY_E2E=1) ########"
    );
    true
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A replica's config: its own data dir and port, `[storage]` at `endpoint`, `[fleet]` naming
/// its own address as peer_url.
pub fn replica_config(
    fake: &FakeRegistry,
    dir: &std::path::Path,
    endpoint: &str,
    lease_ttl: Duration,
) -> (Config, u16) {
    let port = free_port();
    let mut c = config_for(fake, dir);
    c.listen = vec![format!("127.0.0.1:{port}").parse().unwrap()];
    let mut s = StorageConfig::new(BUCKET);
    s.s3_prefix = "fleet/".into();
    s.s3_endpoint = Some(endpoint.to_owned());
    s.s3_region = REGION.into();
    s.s3_path_style = true;
    s.s3_timeout = Duration::from_secs(3);
    s.credentials = Some(S3Keys {
        access_key_id: Secret::new(ACCESS_KEY),
        secret_access_key: Secret::new(SECRET_KEY),
    });
    c.storage = Some(s);
    let mut f = FleetConfig::new(
        Some(format!("http://127.0.0.1:{port}")),
        Secret::new(SECRET),
    );
    f.lease_ttl = lease_ttl;
    f.peer_timeout = Duration::from_secs(3);
    c.fleet = Some(f);
    (c, port)
}

pub fn moto() -> Moto {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    moto.prove_conditional_create(BUCKET);
    moto
}

/// The keys under `prefix` in the bucket.
pub fn list_keys(moto: &Moto, prefix: &str) -> Vec<String> {
    moto.list_keys(BUCKET, prefix)
}

/// The keys of the open multipart uploads under `prefix`.
pub fn open_uploads(moto: &Moto, prefix: &str) -> Vec<String> {
    moto.open_uploads(BUCKET, prefix)
}

pub fn fleet_value(archway: &Archway, name: &str, labels: &[(&str, &str)]) -> f64 {
    Scrape::parse(archway.proxy().metrics().encode())
        .get(name, labels)
        .unwrap_or(0.0)
}

/// The fleet's record key for the test secret: what a replica seals its records with (a test
/// that plays a replica of the fleet; an attacker without the secret cannot make one).
pub fn record_key() -> archway::record_key::RecordKey {
    archway::record_key::RecordKey::derive(SECRET.as_bytes(), "bucket records")
}

/// Puts `body` at `key` (under the bucket) as it is: a bucket writer's object.
pub fn plant(moto: &Moto, key: &str, body: &[u8]) {
    let body = std::str::from_utf8(body).expect("a text record");
    let put = moto.request(
        "PUT",
        &format!("{BUCKET}/{key}"),
        &[
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ],
    );
    assert_eq!(put, 200, "{key} planted");
}

/// Puts `body` at `key` sealed with the fleet's key, as a replica would.
pub fn plant_sealed(moto: &Moto, key: &str, body: &str) {
    plant(moto, key, &record_key().seal(key, body.as_bytes()));
}

/// What a test listener saw: connections, and each request's head.
#[derive(Clone, Default)]
pub struct Seen {
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Seen {
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// A listener on 127.0.0.1 standing in for a lease's owner: it records what it is sent and
/// answers `reply` (status 200 and these bytes) or, with `None`, closes the connection.
pub async fn fake_owner(reply: Option<Vec<u8>>) -> (u16, Seen) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Seen::default();
    let out = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            seen.accepted
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let seen = seen.clone();
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.heads
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                if let Some(body) = reply {
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                    let _ = conn.write_all(&body).await;
                }
                let _ = conn.shutdown().await;
            });
        }
    });
    (port, out)
}

/// GETs `url` up to four times until the body is `data`, whole; never accepts other bytes as a
/// complete body. Returns how many answers were broken off (or not 200) before the right one.
pub async fn broken_before_right(
    client: &crate::support::TestClient,
    url: &str,
    data: &[u8],
) -> usize {
    for attempt in 0..4 {
        // A small blob's answer can break off before its head was sent: broken too.
        let Ok(r) = client.try_request(http::Method::GET, url, &[]).await else {
            continue;
        };
        let whole = r.status == http::StatusCode::OK && r.complete();
        if whole && r.body.as_ref() == data {
            return attempt;
        }
        assert!(
            !whole,
            "attempt {attempt}: wrong bytes served as a complete body"
        );
    }
    panic!("{url}: no right body in 4 attempts");
}

/// A lease record's JSON.
pub fn lease_json(owner: &str, expires_at_ms: u64) -> String {
    format!(r#"{{"owner":"{owner}","expires_at_ms":{expires_at_ms}}}"#)
}
