//! The pieces of a fleet for the e2e tier: cluster replicas (`[storage]` on moto + `[fleet]`),
//! node archways whose `parent` lists the replicas, and a multi-arch fixture image whose
//! linux/amd64 child has three layers, the middle one ~50 MB.

use crate::e2e::counting_proxy::CountingProxy;
use crate::e2e::fixtures::{
    self, image, index, layer, platform_entry, push_blob, push_manifest, sha256, Blob, Flavour,
    Image, Rng, DOCKER_LAYER, DOCKER_LIST, LARGE_LAYER_BYTES, LINUX_AMD64, LINUX_ARM64_V8,
};
use crate::e2e::http;
use crate::e2e::procs::{command, free_port, run};
use crate::e2e::s3::{curl, storage_toml, Moto};
use crate::e2e::tools::{Archway, Registry, Setup};
use flate2::Compression;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

pub const BUCKET: &str = "archway-fleet-e2e";
/// `storage_toml` puts every key under this prefix.
pub const PREFIX: &str = "e2e/";
pub const SECRET: &str = "e2e-fleet-secret";
/// The repository the fleet image lives in upstream (Docker Hub style: `fleetimg` → library/).
pub const REPO: &str = "library/fleetimg";
pub const TAG: &str = "big";

/// The value of the series `name{labels}` (exactly as exposed), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

fn scrape(admin: u16) -> String {
    let url = format!("http://127.0.0.1:{admin}/metrics");
    let r = http::get(&url, &[]).expect("metrics");
    assert_eq!(r.status, 200, "{url}");
    r.text()
}

/// moto with the bucket created, after proving it refuses a second conditional create.
pub fn moto() -> Moto {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    moto.prove_conditional_create(BUCKET);
    moto
}

/// Writes the fleet secret file under `dir`.
pub fn secret_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("fleet-secret");
    std::fs::write(&path, format!("{SECRET}\n")).expect("write the fleet secret");
    path
}

/// A cluster replica: `[storage]` on moto's bucket, `[fleet]` with its own listener as peer_url,
/// its own (fresh, empty) data_dir, its admin listener on a free port.
pub struct Replica {
    pub archway: Archway,
    pub admin: u16,
}

impl Replica {
    pub fn start(upstream: &str, moto: &Moto, secret: &Path, lease_ttl: &str) -> Replica {
        let admin = free_port();
        let setup = Setup {
            top: format!("admin_listen = \"127.0.0.1:{admin}\"\n"),
            peer_url: true,
            ..Setup::default()
        };
        let storage = storage_toml(moto, BUCKET, "s3_part_size = \"5MiB\"\n");
        let extra = format!(
            "{storage}\n[fleet]\nsecret_file = \"{}\"\nlease_ttl = \"{lease_ttl}\"\n\
             peer_timeout = \"3s\"\n",
            secret.display()
        );
        let archway = Archway::start_set_up(upstream, "5m", &extra, &setup);
        Replica { archway, admin }
    }

    pub fn metrics(&self) -> String {
        scrape(self.admin)
    }

    pub fn url(&self) -> String {
        self.archway.url()
    }
}

/// The sum of `series` over `replicas`.
pub fn sum(replicas: &[&Replica], series: &str) -> f64 {
    replicas.iter().map(|r| metric(&r.metrics(), series)).sum()
}

/// A node archway: no storage, its own data_dir, `parent` = every replica, and its own upstream
/// URL a closed port (it must never go there: no `parent_fallback`). `extra` is appended to its
/// config (e.g. another `[[upstream]]`).
pub struct Node {
    pub archway: Archway,
    pub admin: u16,
}

impl Node {
    pub fn start(parents: &[&Replica], extra: &str) -> Node {
        let admin = free_port();
        let list: Vec<String> = parents.iter().map(|r| format!("\"{}\"", r.url())).collect();
        let setup = Setup {
            top: format!(
                "parent = [{}]\nadmin_listen = \"127.0.0.1:{admin}\"\n",
                list.join(", ")
            ),
            ..Setup::default()
        };
        let nowhere = format!("http://127.0.0.1:{}", free_port());
        let archway = Archway::start_set_up(&nowhere, "5m", extra, &setup);
        Node { archway, admin }
    }

    pub fn metrics(&self) -> String {
        scrape(self.admin)
    }

    /// Asserts the node reached its parents (200s counted) and never an upstream itself.
    pub fn assert_went_through_parents(&self) {
        let m = self.metrics();
        let ok: f64 = m
            .lines()
            .filter(|l| {
                l.starts_with("archway_parent_requests_total{") && l.contains("status=\"200\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(ok > 0.0, "the node never got a 200 from a parent:\n{m}");
        assert!(
            !m.lines()
                .any(|l| l.starts_with("archway_upstream_requests_total{")),
            "the node asked an upstream itself:\n{m}"
        );
    }
}

/// A Docker manifest list (linux/amd64, linux/arm64/v8) whose amd64 image has three layers, the
/// middle one ~50 MB of incompressible bytes.
pub struct BigIndex {
    pub index: Blob,
    pub amd64: Image,
    pub arm64: Image,
}

impl BigIndex {
    pub fn build(seed: u64) -> BigIndex {
        let mut rng = Rng::new(seed);
        let id = format!("fleet seed={seed}\n");
        let small = |rng: &mut Rng, name: &str| {
            let n = rng.range(512, 4096);
            let noise = rng.bytes(n);
            layer(
                DOCKER_LAYER,
                &[("fixture/id", id.as_bytes()), (name, &noise)],
                Compression::default(),
            )
        };
        let base = small(&mut rng, "fixture/base");
        let top = small(&mut rng, "fixture/top");
        let arm = small(&mut rng, "fixture/arm");
        let data = rng.bytes(LARGE_LAYER_BYTES);
        // Random bytes don't compress: store them.
        let big = layer(
            DOCKER_LAYER,
            &[("fixture/large.bin", &data)],
            Compression::none(),
        );
        let labels = json!({"archway.e2e.seed": seed.to_string(), "archway.e2e.fleet": "true"});
        let amd64 = image(
            LINUX_AMD64,
            Flavour::Docker,
            vec![base, big, top],
            labels.clone(),
        );
        let arm64 = image(LINUX_ARM64_V8, Flavour::Docker, vec![arm], labels);
        let index = index(
            DOCKER_LIST,
            vec![platform_entry(&amd64), platform_entry(&arm64)],
        );
        BigIndex {
            index,
            amd64,
            arm64,
        }
    }

    /// The ~50 MB layer.
    pub fn big_layer(&self) -> &Blob {
        &self.amd64.layers[1]
    }

    /// Pushes both images and the list, tagged [`TAG`], into [`REPO`].
    pub fn push(&self, base: &str) {
        for b in self.amd64.blobs().chain(self.arm64.blobs()) {
            push_blob(base, REPO, b, None).unwrap_or_else(|e| panic!("push {}: {e}", b.digest));
        }
        for m in [&self.amd64.manifest, &self.arm64.manifest] {
            push_manifest(base, REPO, &m.digest, m).unwrap_or_else(|e| panic!("push: {e}"));
        }
        push_manifest(base, REPO, TAG, &self.index).unwrap_or_else(|e| panic!("push: {e}"));
    }
}

/// Distribution holding a fresh [`BigIndex`], behind a counting proxy (upstream's URL for the
/// replicas is the proxy's).
pub fn upstream_with_big_index() -> (Registry, BigIndex, CountingProxy) {
    let registry = Registry::start();
    let big = BigIndex::build(fixtures::fresh_seed());
    big.push(&registry.url());
    eprintln!(
        "fleet image {REPO}:{TAG} = {} (amd64 {}, layer {} bytes) in {}",
        big.index.digest,
        big.amd64.manifest.digest,
        big.big_layer().data.len(),
        registry.url()
    );
    let proxy = CountingProxy::start(&registry.url());
    (registry, big, proxy)
}

/// Waits until every key is in the bucket (copies run in the background after a fill).
pub fn wait_in_bucket(moto: &Moto, keys: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for key in keys {
        while moto.head(BUCKET, key) != 200 {
            assert!(
                Instant::now() < deadline,
                "{key} never appeared in the bucket; it holds {:?}",
                moto.list_keys(BUCKET, PREFIX)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The bucket keys of everything a pull of `image` through the fleet leaves: its blobs, its
/// manifest and the list, and the tag record.
pub fn keys_of(big: &BigIndex) -> Vec<String> {
    let mut keys: Vec<String> = big
        .amd64
        .blobs()
        .map(|b| format!("{PREFIX}blobs/sha256/{}", b.hex()))
        .collect();
    for m in [&big.index, &big.amd64.manifest] {
        keys.push(format!("{PREFIX}manifests/sha256/{}", m.hex()));
    }
    keys.push(format!("{PREFIX}tags/docker.io/{REPO}/{TAG}"));
    keys
}

/// Asserts every object under `blobs/sha256/` hashes to its name: nothing partial or wrong.
pub fn assert_bucket_blobs_whole(moto: &Moto) -> usize {
    let prefix = format!("{PREFIX}blobs/sha256/");
    let keys = moto.list_keys(BUCKET, &prefix);
    for key in &keys {
        let data = moto
            .get_object(BUCKET, key)
            .unwrap_or_else(|| panic!("{key} is listed but cannot be read"));
        let hex = key.trim_start_matches(&prefix);
        assert_eq!(
            sha256(&data),
            format!("sha256:{hex}"),
            "{key} in the bucket does not hash to its name ({} bytes)",
            data.len()
        );
    }
    keys.len()
}

/// What `curl` made of one GET: its exit code, the status and the bytes it wrote.
pub struct Fetch {
    pub exit: Option<i32>,
    pub status: u16,
    pub body: Vec<u8>,
}

impl Fetch {
    /// A 200 whose whole body arrived and hashes to `digest`.
    pub fn verified(&self, digest: &str) -> bool {
        self.exit == Some(0) && self.status == 200 && fixtures::sha256(&self.body) == digest
    }
}

/// `curl` GETs `url` into a file under `dir`, as a client streaming a blob would.
pub fn curl_get(url: &str, dir: &Path, name: &str) -> Fetch {
    let out = dir.join(name);
    let mut cmd = command(curl());
    cmd.args(["-s", "-o"])
        .arg(&out)
        .args(["-w", "%{http_code}", "--max-time", "120"])
        .arg(url);
    let r = run(&mut cmd, Duration::from_secs(150));
    Fetch {
        exit: r.status.code(),
        status: r.stdout.trim().parse().unwrap_or(0),
        body: std::fs::read(&out).unwrap_or_default(),
    }
}

/// The owner of the fill of `digest`, read from its lease in the bucket; waits for the lease.
pub fn lease_owner(moto: &Moto, hex: &str) -> String {
    let key = format!("{PREFIX}fills/sha256/{hex}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(sealed) = moto.get_object(BUCKET, &key) {
            // Sealed with the fleet's record key (issue 18): opened as a replica would.
            let body = archway::record_key::RecordKey::derive(SECRET.as_bytes(), "bucket records")
                .open(&key, &sealed)
                .unwrap_or_else(|e| panic!("lease {key} is not sealed by the fleet: {e}"))
                .to_vec();
            let v: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("lease {key} is not JSON ({e}): {body:?}"));
            return v["owner"].as_str().expect("lease owner").to_owned();
        }
        assert!(Instant::now() < deadline, "nobody took the lease {key}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
