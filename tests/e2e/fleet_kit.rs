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
    eprintln!(
        "\n######## {test}: skipped: set ARCHWAY_E2E=1 to run it (needs moto_server) ########"
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
