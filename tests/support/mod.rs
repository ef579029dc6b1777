//! Shared pieces of the in-process integration tests: the fake upstream registry, a test client,
//! and a harness that runs archway on 127.0.0.1:0 in front of a fake.
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod client;
pub mod clients;
pub mod fake_registry;
pub mod foreign_host;
pub mod images;
pub mod logs;
pub mod metrics;
pub mod multipart;

use archway::config::{CacheConfig, Config, LogFormat, UpstreamConfig};
use archway::Archway;
pub use client::{raw_request, Reply, TestClient};
pub use fake_registry::{sha256_digest, FakeRegistry, Fault, Kind, SampleImage};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Polls `cond` every 20 ms until it holds; fails the test with `what` after 10 s.
pub async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs go to the test's captured output; `RUST_LOG=archway=debug` shows them on failure.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// An upstream named `name` pointing at `fake`, with timeouts short enough for tests.
pub fn upstream_for(name: &str, fake: &FakeRegistry) -> UpstreamConfig {
    let mut u = UpstreamConfig::from_url(Some(name), &fake.url()).unwrap();
    u.connect_timeout = Duration::from_secs(2);
    u.read_timeout = Duration::from_secs(3);
    u
}

/// Config with one default upstream `fake` in front of `fake`, caching under `dir`.
pub fn config_for(fake: &FakeRegistry, dir: &Path) -> Config {
    let mut u = upstream_for("fake", fake);
    u.default = true;
    Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        admin_listen: None,
        admin_warm: true,
        data_dir: dir.to_path_buf(),
        // The test machine's disk may be small: no room is kept back for others.
        cache: CacheConfig {
            min_free_space: 0,
            ..CacheConfig::default()
        },
        upstreams: vec![u],
        routes: Vec::new(),
        log_format: LogFormat::Text,
        tls: None,
        auth: None,
        limits: Default::default(),
        storage: None,
        parent: Default::default(),
        fleet: None,
        conversion: Default::default(),
        pins: Vec::new(),
        admin_pins: true,
    }
}

/// archway running in front of a fake registry.
pub struct Harness {
    pub fake: FakeRegistry,
    pub archway: Option<Archway>,
    pub config: Config,
    pub client: TestClient,
    dir: tempfile::TempDir,
}

impl Harness {
    /// A default fake (no auth) and archway with default cache settings.
    pub async fn start() -> Harness {
        Self::with(FakeRegistry::start().await, |_| {}).await
    }

    /// archway in front of `fake`, with `tweak` applied to the config first.
    pub async fn with(fake: FakeRegistry, tweak: impl FnOnce(&mut Config)) -> Harness {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_for(&fake, dir.path());
        tweak(&mut config);
        let archway = Archway::start(config.clone()).await.unwrap();
        Harness {
            fake,
            archway: Some(archway),
            config,
            client: TestClient::new(),
            dir,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.archway.as_ref().unwrap().local_addr()
    }

    /// `http://<archway>{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.client.get(&self.url(path)).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.client.get_with(&self.url(path), headers).await
    }

    pub async fn head(&self, path: &str) -> Reply {
        self.client.head(&self.url(path)).await
    }

    pub async fn request(&self, method: http::Method, path: &str) -> Reply {
        self.client.request(method, &self.url(path), &[]).await
    }

    /// Graceful shutdown, then a new archway on the same data dir (and a fresh client, so no
    /// pooled connection to the old listener is reused).
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await
    }

    pub async fn restart_with(&mut self, tweak: impl FnOnce(&mut Config)) {
        if let Some(a) = self.archway.take() {
            a.shutdown().await;
        }
        tweak(&mut self.config);
        self.archway = Some(Archway::start(self.config.clone()).await.unwrap());
        self.client = TestClient::new();
    }
}

/// Total bytes of the files under `dir`, recursively (0 if it does not exist).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => dir_size(&p),
                Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => 0,
            }
        })
        .sum()
}

/// Files under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub const STALE_WARNING: &str = "110 - \"Response is Stale\"";
