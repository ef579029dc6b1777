//! The fault soak (issue 10): the real `archway` binary in front of a fault-injecting fake
//! registry, for a configurable time, under
//!
//! - 32 clients running real pull flows: tag HEAD → manifest by digest → the platform's manifest
//!   → config and layers (blob HEADs and ranges now and then), as Docker 20.10, containerd and
//!   skopeo; and Docker 17.06 (GET the tag, which is an OCI index: converted to schema2; GET by
//!   the converted digest; config and layers). Every body is verified by its client;
//! - a fault injector changing the fake's faults every few hundred milliseconds: resets before
//!   the headers and inside bodies, truncation, stalled headers and bodies, wrong bytes, 429 and
//!   5xx with Retry-After, slow bodies, missing and lying lengths, endless bodies, slow answers,
//!   and tags moving;
//! - h2 clients that open streams with a zero flow-control window and never read (reset by
//!   archway after `limits.stall_timeout`), half of them on blobs just cached, and h2 clients
//!   that reset each request 3 ms after sending it (issue 17);
//! - beside them a slow-header phase (request heads a byte at a time), an idle-connection phase
//!   (hundreds of connections that never send anything, keep-alive ones left idle, more than
//!   `max_connections`) and a header-flood phase (huge or very many headers, many distinct
//!   User-Agents).
//!
//! It prints a markdown table and fails if a complete 200/206 carried wrong bytes, if archway
//! exited or panicked, if it still serves wrongly once the faults stop, if a zero-window stream
//! was not reset within 4 × `stall_timeout`, if archway's RSS or open file descriptors ever went
//! past a fixed bound (`PEAK_RSS_BOUND`, `PEAK_FDS_BOUND`), or if it holds more open file
//! descriptors at the end than at the start (beyond a small margin).
//!
//! Run it with `scripts/soak [--seconds N | --minutes N] [--release]`; it is `#[ignore]`d in the
//! normal test run. `SOAK_SECONDS` is the duration (default 120), `SOAK_TABLE` a file to write
//! the table to.

mod support;

use bytes::Bytes;
use http::{Method, StatusCode};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::clients::{self, ClientHeaders};
use support::fake_registry::DOCKER_MANIFEST;
use support::metrics::Scrape;
use support::{FakeRegistry, Fault, Kind, Reply, TestClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

// === the setup ===

const PULL_CLIENTS: usize = 32;
/// archway's `[limits]`: short, so the phases' connections are reaped during the run.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Below what the idle phase opens at once, so the cap is hit.
const MAX_CONNECTIONS: usize = 256;
const SILENT_CONNECTIONS: usize = 300;
const IDLE_KEEP_ALIVE: usize = 40;
const TOO_SLOW_HEADS: usize = 16;
const SLOW_HEADS_IN_TIME: usize = 4;
const FLOODERS: usize = 2;
/// h2 connections at a time whose streams never get a window, streams on each, and the stall
/// timeout that resets them; h2 clients resetting every request just after sending it.
const H2_STALLERS: usize = 4;
const H2_STALLED_STREAMS: usize = 16;
const STALL_TIMEOUT: Duration = Duration::from_secs(2);
const H2_RESETTERS: usize = 2;
/// archway's upstream `read_timeout`: a stalled upstream is given up on after this.
const UPSTREAM_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The fake closes a stalled connection after this (archway gives up first).
const STALL_LIMIT: Duration = Duration::from_secs(5);
/// A client gives up on a whole exchange after this.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pooled client connections are dropped before archway's idle timeout closes them.
const CLIENT_POOL_IDLE: Duration = Duration::from_secs(1);
/// How much a connection phase waits for archway to close a connection it should close.
const REAP_WAIT: Duration = Duration::from_secs(60);
/// The length `Fault::ClaimLength` announces (the blobs are smaller, the manifest limit too).
const LYING_LENGTH: u64 = 10 << 20;
/// Open file descriptors archway may hold at the end beyond those at the start.
const FD_MARGIN: usize = 16;
/// archway's peak RSS (VmHWM, the kernel's own high-water mark) must stay under this. Recent
/// 2-minute debug runs peaked at 72-85 MiB and the 30-minute release run at 104 MiB; 256 MiB
/// leaves room for a slow shared machine, while a leak per stalled stream or connection (the
/// issue-17 finding: 1 GiB from 20 connections) goes far past it.
const PEAK_RSS_BOUND: u64 = 256 << 20;
/// archway's open descriptors must stay under this throughout. At most `MAX_CONNECTIONS` are
/// client sockets; the rest are upstream connections, cache files being written or served,
/// listeners and logs. Recent runs peaked at 302-311; a descriptor held per stalled h2 stream
/// (thousands of them are reset in a run) would go far past 4 × `MAX_CONNECTIONS`.
const PEAK_FDS_BOUND: usize = 4 * MAX_CONNECTIONS;
/// The blobs a zero-window staller asks for are among the last this many verified by the pull
/// clients, so most are still in archway's cache (it holds a third of upstream) and on disk.
const RECENT_CACHED_BLOBS: usize = 32;
/// Blobs above this are served from a file (smaller ones from archway's memory).
const ON_DISK_BLOB_BYTES: usize = 64 << 10;
/// Counted per zero-window stream that archway did not reset in time; must stay 0.
const NOT_RESET_IN_TIME: &str = "h2 zero-window streams not reset within 4 × stall_timeout";
/// Counted per zero-window stream that asked for a recently cached blob.
const STALLED_ON_BLOB: &str = "h2 zero-window streams on a recently cached blob";

/// Layer sizes: small ones live in archway's memory, the rest on disk; some take a while.
const SIZES: [usize; 9] = [
    512, 3_000, 24_000, 60_000, 150_000, 400_000, 900_000, 1_800_000, 3_500_000,
];
const INDEX_REPOS: usize = 8;
const IMAGE_REPOS: usize = 12;
const VERSIONS: usize = 2;
const PLATFORMS: [&str; 3] = ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"];

fn soak_duration() -> Duration {
    let secs = std::env::var("SOAK_SECONDS")
        .ok()
        .map(|s| {
            s.parse::<u64>()
                .unwrap_or_else(|_| panic!("SOAK_SECONDS={s:?} is not a number of seconds"))
        })
        .unwrap_or(120);
    Duration::from_secs(secs.max(1))
}

/// splitmix64: deterministic per client, no `rand` dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x9e37_79b9_7f4a_7c15)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

// === what upstream holds: the oracle ===

struct Repo {
    name: String,
    tag: String,
    /// The manifests the tag is moved between.
    versions: Vec<String>,
}

/// Everything the fake serves, by digest, so that clients verify against the fake's own bytes.
struct Content {
    repos: Vec<Repo>,
    /// Every manifest upstream holds (indexes and images).
    manifests: HashMap<String, Bytes>,
    /// Per repository: the manifests it holds.
    repo_manifests: HashMap<String, HashSet<String>>,
    blobs: HashMap<String, Bytes>,
}

impl Content {
    fn build(fake: &FakeRegistry) -> Content {
        let mut c = Content {
            repos: Vec::new(),
            manifests: HashMap::new(),
            repo_manifests: HashMap::new(),
            blobs: HashMap::new(),
        };
        for k in 0..INDEX_REPOS {
            let name = format!("soak/multi{k}");
            let sizes = [SIZES[k % SIZES.len()], SIZES[(k * 5 + 3) % SIZES.len()]];
            let mut versions = Vec::new();
            for v in 0..VERSIONS {
                let seed = 100 + (k * VERSIONS + v) as u64;
                let idx = fake.sample_index_sized(&name, "v1", seed, &PLATFORMS, &sizes);
                c.add_manifest(&name, &idx.digest.to_string(), idx.bytes.clone());
                for (_, img) in &idx.images {
                    c.add_image(img);
                }
                versions.push(idx.digest.to_string());
            }
            c.repos.push(Repo {
                name,
                tag: "v1".to_owned(),
                versions,
            });
        }
        for k in 0..IMAGE_REPOS {
            let name = format!("soak/plain{k}");
            let sizes = [
                SIZES[(k + 1) % SIZES.len()],
                SIZES[(k * 3 + 2) % SIZES.len()],
                SIZES[(k * 7 + 5) % SIZES.len()],
            ];
            let mut versions = Vec::new();
            for v in 0..VERSIONS {
                let seed = 10_000 + (k * VERSIONS + v) as u64;
                let img = fake.sample_image_sized(&name, Some("latest"), seed, &sizes);
                c.add_image(&img);
                versions.push(img.manifest.to_string());
            }
            c.repos.push(Repo {
                name,
                tag: "latest".to_owned(),
                versions,
            });
        }
        c
    }

    fn add_manifest(&mut self, repo: &str, digest: &str, bytes: Bytes) {
        self.manifests.insert(digest.to_owned(), bytes);
        self.repo_manifests
            .entry(repo.to_owned())
            .or_default()
            .insert(digest.to_owned());
    }

    fn add_image(&mut self, img: &support::SampleImage) {
        self.add_manifest(
            &img.repo,
            &img.manifest.to_string(),
            img.manifest_bytes.clone(),
        );
        self.blobs
            .insert(img.config.to_string(), img.config_bytes.clone());
        for (d, b) in img.layers.iter().zip(&img.layer_bytes) {
            self.blobs.insert(d.to_string(), b.clone());
        }
    }

    fn total_bytes(&self) -> u64 {
        self.blobs.values().map(|b| b.len() as u64).sum::<u64>()
            + self.manifests.values().map(|b| b.len() as u64).sum::<u64>()
    }
}

/// What a manifest names.
enum Parsed {
    Index(Vec<String>),
    Image { config: String, layers: Vec<String> },
}

fn parse_manifest(body: &[u8]) -> Option<(String, Parsed)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let media_type = v["mediaType"].as_str().unwrap_or_default().to_owned();
    if let Some(children) = v["manifests"].as_array() {
        let digests = children
            .iter()
            .map(|m| m["digest"].as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()?;
        return Some((media_type, Parsed::Index(digests)));
    }
    let config = v["config"]["digest"].as_str()?.to_owned();
    let layers = v["layers"]
        .as_array()?
        .iter()
        .map(|l| l["digest"].as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()?;
    Some((media_type, Parsed::Image { config, layers }))
}

// === counting ===

#[derive(Default)]
struct Stats {
    /// `(section, row) -> count`.
    counts: Mutex<BTreeMap<(&'static str, String), u64>>,
    /// The first few wrong answers, in words.
    wrong_examples: Mutex<Vec<String>>,
    /// The first few exchanges that brought no response head, in words.
    failure_examples: Mutex<Vec<String>>,
    bytes_verified: AtomicU64,
}

const REQUESTS: &str = "requests";
const ERRORS: &str = "errors";
const ERRORS_BY_STEP: &str = "errors by step";
const WRONG: &str = "wrong";
const PHASES: &str = "phases";
const PULLS: &str = "pulls";

impl Stats {
    fn add(&self, section: &'static str, row: impl Into<String>) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry((section, row.into()))
            .or_default() += 1;
    }

    fn get(&self, section: &'static str, row: &str) -> u64 {
        self.counts
            .lock()
            .unwrap()
            .get(&(section, row.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    fn section(&self, section: &'static str) -> Vec<(String, u64)> {
        self.counts
            .lock()
            .unwrap()
            .iter()
            .filter(|((s, _), _)| *s == section)
            .map(|((_, r), n)| (r.clone(), *n))
            .collect()
    }

    fn total(&self, section: &'static str) -> u64 {
        self.section(section).iter().map(|(_, n)| n).sum()
    }

    fn wrong(&self, what: &str, detail: String) {
        self.add(WRONG, what);
        let mut ex = self.wrong_examples.lock().unwrap();
        if ex.len() < 20 {
            ex.push(format!("{what}: {detail}"));
        }
    }

    fn verified(&self, n: usize) {
        self.bytes_verified.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// An exchange that brought no response head, in a few words.
fn classify_failure(e: &str) -> &'static str {
    if e.starts_with("timed out") {
        "timeout"
    } else if e.contains("ConnectionRefused") {
        "connection refused"
    } else if e.contains("kind: Connect") {
        "connect failed"
    } else if e.contains("ConnectionReset") {
        "reset before the response head"
    } else if e.contains("IncompleteMessage") || e.contains("connection closed") {
        "closed before the response head"
    } else {
        "other failure before the response head"
    }
}

// === the run ===

struct Ctx {
    addr: SocketAddr,
    content: Content,
    fake: FakeRegistry,
    stats: Stats,
    deadline: Instant,
    stop: watch::Receiver<bool>,
    /// archway exited during the run.
    exited: AtomicBool,
    /// Paths of on-disk-sized blobs a pull client got whole and verified, the newest last: the
    /// zero-window stallers ask for these, so that they stall archway's cached-file path.
    recent_blobs: Mutex<std::collections::VecDeque<String>>,
}

impl Ctx {
    fn stopping(&self) -> bool {
        *self.stop.borrow() || Instant::now() >= self.deadline
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// One counted exchange; `None` (counted as an error) when no response head came.
    async fn exchange(
        &self,
        client: &TestClient,
        step: &str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<Reply> {
        self.stats.add(REQUESTS, step);
        let started = Instant::now();
        match client.try_request(method, &self.url(path), headers).await {
            Ok(r) => Some(r),
            Err(e) => {
                let kind = classify_failure(&e);
                let mut examples = self.stats.failure_examples.lock().unwrap();
                if examples.len() < 10 {
                    examples.push(format!(
                        "{step} {path}: after {:.1} s: {e}",
                        started.elapsed().as_secs_f64()
                    ));
                }
                drop(examples);
                self.stats.add(ERRORS_BY_STEP, format!("{step}: {kind}"));
                self.stats.add(ERRORS, kind);
                None
            }
        }
    }

    /// The reply if its status is one of `ok` and its body is complete; otherwise counts the
    /// error by kind.
    fn accept(&self, step: &str, r: Reply, ok: &[StatusCode]) -> Option<Reply> {
        let kind = if !ok.contains(&r.status) {
            format!("status {}", r.status.as_u16())
        } else if !r.complete() {
            format!("{} broken off before its end", r.status.as_u16())
        } else {
            return Some(r);
        };
        self.stats.add(ERRORS_BY_STEP, format!("{step}: {kind}"));
        self.stats.add(ERRORS, kind);
        None
    }

    /// A manifest by digest: a complete 200 must hash to `digest` (and match upstream's bytes
    /// when upstream has that digest).
    async fn manifest_by_digest(
        &self,
        client: &TestClient,
        step: &str,
        repo: &str,
        digest: &str,
        headers: &[(&str, &str)],
    ) -> Option<Bytes> {
        let path = format!("/v2/{repo}/manifests/{digest}");
        let r = self
            .exchange(client, step, Method::GET, &path, headers)
            .await?;
        let r = self.accept(step, r, &[StatusCode::OK])?;
        if r.sha256() != digest {
            self.stats.wrong(
                "manifest by digest: bytes do not hash to the digest",
                format!("{path}: got {} ({} bytes)", r.sha256(), r.body.len()),
            );
            return None;
        }
        if let Some(h) = r.header("docker-content-digest") {
            if h != digest {
                self.stats.wrong(
                    "manifest by digest: Docker-Content-Digest names another digest",
                    format!("{path}: {h}"),
                );
                return None;
            }
        }
        self.stats.verified(r.body.len());
        Some(r.body)
    }

    /// A blob: sometimes a HEAD first, sometimes a range; every complete 200/206 is checked
    /// against upstream's bytes.
    async fn blob(
        &self,
        client: &TestClient,
        rng: &mut Rng,
        step: &str,
        repo: &str,
        digest: &str,
        ua: &str,
    ) -> bool {
        let Some(expected) = self.content.blobs.get(digest) else {
            self.stats.wrong(
                "a manifest names a blob upstream never had",
                format!("{repo} {digest}"),
            );
            return false;
        };
        let path = format!("/v2/{repo}/blobs/{digest}");
        let headers = [("user-agent", ua)];
        if rng.one_in(4) {
            let Some(r) = self
                .exchange(client, "blob HEAD", Method::HEAD, &path, &headers)
                .await
            else {
                return false;
            };
            let Some(r) = self.accept("blob HEAD", r, &[StatusCode::OK]) else {
                return false;
            };
            let len = expected.len().to_string();
            let claimed = r.header("content-length");
            if claimed == Some(LYING_LENGTH.to_string().as_str()) {
                // While a download is in flight, a HEAD is answered with the length upstream
                // announced for it, unverified, as upstream's own HEAD would be: a lying length
                // reaches the client (whose GET then breaks off). Counted, not a wrong body.
                self.stats.add(
                    ERRORS,
                    "blob HEAD with upstream's lying length (download in flight)",
                );
                return false;
            }
            if claimed != Some(len.as_str()) {
                self.stats.wrong(
                    "blob HEAD: wrong Content-Length",
                    format!("{path}: {claimed:?}, want {len}"),
                );
                return false;
            }
        }
        let total = expected.len() as u64;
        if step == "layer GET" && total > 1 && rng.one_in(8) {
            let first = rng.below(total);
            let last = first + rng.below(total - first);
            let range = format!("bytes={first}-{last}");
            let Some(r) = self
                .exchange(
                    client,
                    "layer range GET",
                    Method::GET,
                    &path,
                    &[("user-agent", ua), ("range", range.as_str())],
                )
                .await
            else {
                return false;
            };
            let Some(r) = self.accept(
                "layer range GET",
                r,
                &[StatusCode::OK, StatusCode::PARTIAL_CONTENT],
            ) else {
                return false;
            };
            if r.status == StatusCode::PARTIAL_CONTENT {
                let want = expected.slice(first as usize..=last as usize);
                let content_range = format!("bytes {first}-{last}/{total}");
                if r.body != want || r.header("content-range") != Some(content_range.as_str()) {
                    self.stats.wrong(
                        "complete 206 with wrong bytes",
                        format!(
                            "{path} {range}: {} bytes, Content-Range {:?}",
                            r.body.len(),
                            r.header("content-range")
                        ),
                    );
                    return false;
                }
                self.stats.verified(r.body.len());
                return true;
            }
            return self.check_blob(&r, &path, digest, expected);
        }
        let Some(r) = self
            .exchange(client, step, Method::GET, &path, &headers)
            .await
        else {
            return false;
        };
        let Some(r) = self.accept(step, r, &[StatusCode::OK]) else {
            return false;
        };
        self.check_blob(&r, &path, digest, expected)
    }

    fn check_blob(&self, r: &Reply, path: &str, digest: &str, expected: &Bytes) -> bool {
        if r.sha256() != digest || r.body.len() != expected.len() {
            self.stats.wrong(
                "complete 200 with wrong bytes",
                format!("{path}: {} bytes hashing to {}", r.body.len(), r.sha256()),
            );
            return false;
        }
        self.stats.verified(r.body.len());
        if expected.len() > ON_DISK_BLOB_BYTES {
            let mut recent = self.recent_blobs.lock().unwrap();
            if !recent.iter().any(|p| p == path) {
                if recent.len() == RECENT_CACHED_BLOBS {
                    recent.pop_front();
                }
                recent.push_back(path.to_owned());
            }
        }
        true
    }

    /// A tag answer to a client that takes every manifest type: upstream's manifest, byte for
    /// byte, under its digest.
    fn check_modern_tag_answer(&self, repo: &str, r: &Reply, what: &str) -> bool {
        let digest = r.sha256();
        let known = self
            .content
            .repo_manifests
            .get(repo)
            .is_some_and(|m| m.contains(&digest));
        if !known {
            self.stats.wrong(
                "complete 200 with wrong bytes",
                format!(
                    "{what} {repo}: {} bytes hashing to {digest}, not a manifest of the repository",
                    r.body.len()
                ),
            );
            return false;
        }
        if r.header("docker-content-digest") != Some(digest.as_str()) {
            self.stats.wrong(
                "tag answer: Docker-Content-Digest is not the body's sha256",
                format!("{what} {repo}: {:?}", r.header("docker-content-digest")),
            );
            return false;
        }
        self.stats.verified(r.body.len());
        true
    }

    /// A tag answer to Docker 17.06: schema2 (the OCI index's child converted, or upstream's
    /// schema2 as it is) whose Docker-Content-Digest is the body's sha256, naming upstream's
    /// config and layers. Returns the digest, config and layers.
    fn check_legacy_tag_answer(
        &self,
        repo: &str,
        r: &Reply,
        what: &str,
    ) -> Option<(String, String, Vec<String>)> {
        let digest = r.sha256();
        if r.header("docker-content-digest") != Some(digest.as_str()) {
            self.stats.wrong(
                "tag answer: Docker-Content-Digest is not the body's sha256",
                format!(
                    "{what} {repo}: header {:?}, body {digest}",
                    r.header("docker-content-digest")
                ),
            );
            return None;
        }
        let parsed = parse_manifest(&r.body);
        let Some((media_type, Parsed::Image { config, layers })) = parsed else {
            self.stats.wrong(
                "legacy tag answer is not an image manifest",
                format!("{what} {repo}: {}", String::from_utf8_lossy(&r.body)),
            );
            return None;
        };
        if media_type != DOCKER_MANIFEST {
            self.stats.wrong(
                "legacy tag answer is not Docker schema2",
                format!("{what} {repo}: {media_type}"),
            );
            return None;
        }
        let unknown: Vec<&String> = std::iter::once(&config)
            .chain(&layers)
            .filter(|d| !self.content.blobs.contains_key(*d))
            .collect();
        if !unknown.is_empty() {
            self.stats.wrong(
                "a manifest names a blob upstream never had",
                format!("{what} {repo}: {unknown:?}"),
            );
            return None;
        }
        self.stats.verified(r.body.len());
        Some((digest, config, layers))
    }

    async fn blobs(
        &self,
        client: &TestClient,
        rng: &mut Rng,
        repo: &str,
        config: &str,
        layers: &[String],
        ua: &str,
    ) -> bool {
        if !self.blob(client, rng, "config GET", repo, config, ua).await {
            return false;
        }
        for l in layers {
            if self.stopping() {
                return false;
            }
            if !self.blob(client, rng, "layer GET", repo, l, ua).await {
                return false;
            }
        }
        true
    }
}

// === pull flows ===

/// Docker 20.10, containerd, skopeo: HEAD the tag, GET it by digest, the platform's manifest,
/// the config and the layers.
async fn modern_pull(ctx: &Ctx, client: &TestClient, c: &ClientHeaders, rng: &mut Rng) -> bool {
    let repo = rng.pick(&ctx.content.repos);
    let headers = c.lines();
    let ua = c.user_agent().unwrap_or("soak");
    let tag_path = format!("/v2/{}/manifests/{}", repo.name, repo.tag);
    let Some(r) = ctx
        .exchange(client, "tag HEAD", Method::HEAD, &tag_path, &headers)
        .await
    else {
        return false;
    };
    let Some(r) = ctx.accept("tag HEAD", r, &[StatusCode::OK]) else {
        return false;
    };
    let Some(digest) = r.header("docker-content-digest").map(str::to_owned) else {
        ctx.stats
            .wrong("tag HEAD without Docker-Content-Digest", tag_path.clone());
        return false;
    };
    let Some(known) = ctx.content.manifests.get(&digest).filter(|_| {
        ctx.content
            .repo_manifests
            .get(&repo.name)
            .is_some_and(|m| m.contains(&digest))
    }) else {
        ctx.stats.wrong(
            "tag HEAD names a manifest upstream never had",
            format!("{tag_path}: {digest}"),
        );
        return false;
    };
    if r.header("content-length") != Some(known.len().to_string().as_str()) {
        ctx.stats.wrong(
            "tag HEAD: wrong Content-Length",
            format!("{tag_path}: {:?}", r.header("content-length")),
        );
        return false;
    }
    if ctx.stopping() {
        return false;
    }
    let Some(body) = ctx
        .manifest_by_digest(client, "manifest by digest", &repo.name, &digest, &headers)
        .await
    else {
        return false;
    };
    let (config, layers) = match parse_manifest(&body) {
        Some((_, Parsed::Index(children))) => {
            let child = rng.pick(&children).clone();
            let Some(body) = ctx
                .manifest_by_digest(
                    client,
                    "platform manifest by digest",
                    &repo.name,
                    &child,
                    &headers,
                )
                .await
            else {
                return false;
            };
            match parse_manifest(&body) {
                Some((_, Parsed::Image { config, layers })) => (config, layers),
                _ => {
                    ctx.stats.wrong("an index names a non-image", child.clone());
                    return false;
                }
            }
        }
        Some((_, Parsed::Image { config, layers })) => (config, layers),
        None => {
            ctx.stats.wrong("manifest does not parse", digest.clone());
            return false;
        }
    };
    ctx.blobs(client, rng, &repo.name, &config, &layers, ua)
        .await
}

/// Docker 17.06: GET the tag (an OCI index is converted to schema2 for it), GET the converted
/// manifest by its digest, then the config and the layers.
async fn legacy_pull(ctx: &Ctx, client: &TestClient, c: &ClientHeaders, rng: &mut Rng) -> bool {
    let repo = rng.pick(&ctx.content.repos);
    let headers = c.lines();
    let ua = c.user_agent().unwrap_or("soak");
    let tag_path = format!("/v2/{}/manifests/{}", repo.name, repo.tag);
    let Some(r) = ctx
        .exchange(
            client,
            "tag GET (Docker 17.06)",
            Method::GET,
            &tag_path,
            &headers,
        )
        .await
    else {
        return false;
    };
    let Some(r) = ctx.accept("tag GET (Docker 17.06)", r, &[StatusCode::OK]) else {
        return false;
    };
    let Some((digest, config, layers)) =
        ctx.check_legacy_tag_answer(&repo.name, &r, "Docker 17.06 tag GET")
    else {
        return false;
    };
    if ctx.stopping() {
        return false;
    }
    let Some(body) = ctx
        .manifest_by_digest(
            client,
            "converted manifest by digest (Docker 17.06)",
            &repo.name,
            &digest,
            &headers,
        )
        .await
    else {
        return false;
    };
    if body != r.body {
        ctx.stats.wrong(
            "manifest by digest differs from the tag answer of that digest",
            format!("{} {digest}", repo.name),
        );
        return false;
    }
    ctx.blobs(client, rng, &repo.name, &config, &layers, ua)
        .await
}

async fn pull_client(ctx: Arc<Ctx>, i: usize) {
    let mut rng = Rng::new(1 + i as u64);
    let client = TestClient::new()
        .with_pool_idle_timeout(CLIENT_POOL_IDLE)
        .with_timeout(CLIENT_TIMEOUT);
    let (legacy, headers) = match i % 4 {
        0 => (
            true,
            match (i / 4) % 3 {
                0 => clients::docker_1706(),
                1 => clients::docker_1706_arm64(),
                _ => clients::docker_1706_arm(),
            },
        ),
        1 => (false, clients::docker_2010()),
        2 => (false, clients::containerd_16()),
        _ => (false, clients::skopeo_19()),
    };
    while !ctx.stopping() {
        ctx.stats.add(PULLS, "started");
        let ok = if legacy {
            legacy_pull(&ctx, &client, &headers, &mut rng).await
        } else {
            modern_pull(&ctx, &client, &headers, &mut rng).await
        };
        if ok {
            ctx.stats.add(PULLS, "completed, every body verified");
        } else {
            tokio::time::sleep(rng.millis(50, 250)).await;
        }
    }
}

// === the fault injector ===

fn pick_fault(rng: &mut Rng) -> Fault {
    let sent = *rng.pick(&[0usize, 100, 1_000, 20_000, 200_000]);
    let weighted: [(u64, Fault); 15] = [
        (3, Fault::Reset),
        (3, Fault::ResetBody { sent }),
        (3, Fault::Truncate { sent }),
        (2, Fault::StallHeaders),
        (2, Fault::StallBody { sent }),
        (4, Fault::WrongBytes),
        (2, Fault::NoLengthWrongBytes),
        (2, Fault::NoLength),
        (1, Fault::ClaimLength(LYING_LENGTH)),
        (3, Fault::too_many_requests("1")),
        (2, Fault::status(500)),
        (2, Fault::status(502)),
        (
            2,
            Fault::Status {
                status: 503,
                retry_after: Some("1".to_owned()),
            },
        ),
        (
            3,
            Fault::SlowBody {
                chunk: 32 << 10,
                every: Duration::from_millis(20),
            },
        ),
        (1, Fault::Endless),
    ];
    let total: u64 = weighted.iter().map(|(w, _)| w).sum();
    let mut x = rng.below(total);
    for (w, f) in weighted {
        if x < w {
            return f;
        }
        x -= w;
    }
    unreachable!("the weights add up")
}

async fn fault_injector(ctx: Arc<Ctx>) {
    let mut rng = Rng::new(0xfa017);
    let mut next_move = Instant::now() + Duration::from_secs(5);
    while !ctx.stopping() {
        tokio::time::sleep(rng.millis(150, 450)).await;
        let kind = if rng.one_in(3) {
            Kind::Manifest
        } else {
            Kind::Blob
        };
        let times = 1 + rng.below(3) as usize;
        ctx.fake
            .fault_times(Some(kind), pick_fault(&mut rng), times);
        if rng.one_in(60) {
            // A slow upstream for a moment: every answer waits before its headers.
            ctx.stats
                .add(PHASES, "upstream slow periods (400 ms before every answer)");
            ctx.fake.set_delay(None, Duration::from_millis(400));
            tokio::time::sleep(Duration::from_millis(1500)).await;
            ctx.fake.set_delay(None, Duration::ZERO);
        }
        if Instant::now() >= next_move {
            next_move = Instant::now() + Duration::from_secs(5);
            let repo = rng.pick(&ctx.content.repos);
            let to = rng.pick(&repo.versions);
            ctx.fake
                .set_tag(&repo.name, &repo.tag, &to.parse().unwrap());
            ctx.stats.add(PHASES, "tags moved upstream");
        }
    }
}

// === slow heads, idle connections, header floods ===

/// Waits until archway closes `s` (EOF or an error), at most `limit` or until the run stops.
/// `Some(true)`: closed; `Some(false)`: not within `limit`; `None`: the run stopped first.
async fn wait_closed(
    s: &mut TcpStream,
    limit: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Option<bool> {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(true),
                Ok(_) => continue,
            },
            _ = tokio::time::sleep_until(deadline) => return Some(false),
            _ = stop.wait_for(|s| *s) => return None,
        }
    }
}

/// A request head sent a byte at a time, far slower than the header timeout allows: archway
/// must close the connection.
async fn too_slow_head(ctx: Arc<Ctx>, n: u64) {
    ctx.stats
        .add(REQUESTS, "slow-header connections (too slow)");
    let Ok(mut s) = TcpStream::connect(ctx.addr).await else {
        ctx.stats.add(ERRORS, "connect failed (phases)");
        return;
    };
    let head = format!(
        "GET /v2/ HTTP/1.1\r\nHost: {}\r\nUser-Agent: slowloris/{n}\r\nX-Pad: {}\r\n\r\n",
        ctx.addr,
        "p".repeat(200)
    );
    let mut stop = ctx.stop.clone();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    for b in head.as_bytes() {
        if s.write_all(&[*b]).await.is_err() {
            ctx.stats.add(PHASES, "too-slow heads closed by archway");
            return;
        }
        tokio::select! {
            r = s.read(&mut buf) => {
                match r {
                    Ok(n) if n > 0 => ctx.stats.add(PHASES, "too-slow heads answered (not reaped)"),
                    _ => ctx.stats.add(PHASES, "too-slow heads closed by archway"),
                }
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(150)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if started.elapsed() > REAP_WAIT {
            break;
        }
    }
    ctx.stats.add(PHASES, "too-slow heads not reaped");
}

/// A request head sent slowly but within the header timeout: archway must answer it.
async fn slow_head_in_time(ctx: Arc<Ctx>, n: u64) {
    ctx.stats.add(REQUESTS, "slow-header connections (in time)");
    let Ok(mut s) = TcpStream::connect(ctx.addr).await else {
        ctx.stats.add(ERRORS, "connect failed (phases)");
        return;
    };
    let head = format!(
        "GET /v2/ HTTP/1.1\r\nHost: {}\r\nUser-Agent: slow/{n}\r\nConnection: close\r\n\r\n",
        ctx.addr
    );
    // About a third of the header timeout in all.
    let gap = HEADER_READ_TIMEOUT / 3 / head.len() as u32;
    for b in head.as_bytes() {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(gap).await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(CLIENT_TIMEOUT, s.read_to_end(&mut out)).await;
    if out.starts_with(b"HTTP/1.1 200") {
        ctx.stats.add(PHASES, "slow heads in time answered 200");
    } else {
        ctx.stats.add(
            PHASES,
            "slow heads in time not answered (queued at the cap, or cut)",
        );
    }
}

async fn slow_header_phase(ctx: Arc<Ctx>) {
    let mut n = 0u64;
    while !ctx.stopping() {
        let mut set = JoinSet::new();
        for _ in 0..TOO_SLOW_HEADS {
            n += 1;
            set.spawn(too_slow_head(ctx.clone(), n));
        }
        for _ in 0..SLOW_HEADS_IN_TIME {
            n += 1;
            set.spawn(slow_head_in_time(ctx.clone(), n));
        }
        while set.join_next().await.is_some() {}
    }
}

/// A connection that never sends a byte: closed by the header timeout.
async fn silent_connection(ctx: Arc<Ctx>) {
    ctx.stats.add(REQUESTS, "silent connections");
    let Ok(mut s) = TcpStream::connect(ctx.addr).await else {
        ctx.stats.add(ERRORS, "connect failed (phases)");
        return;
    };
    let mut stop = ctx.stop.clone();
    match wait_closed(&mut s, REAP_WAIT, &mut stop).await {
        Some(true) => ctx
            .stats
            .add(PHASES, "silent connections closed by archway"),
        Some(false) => ctx
            .stats
            .add(PHASES, "silent connections not closed within 60 s"),
        None => {}
    }
}

/// An h2c connection to archway; its streams get `window` bytes of flow control each.
async fn h2_connection(
    ctx: &Ctx,
    window: u32,
) -> Option<hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>> {
    let tcp = TcpStream::connect(ctx.addr).await.ok()?;
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(window)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .ok()?;
    tokio::spawn(conn);
    Some(send)
}

fn h2_get(ctx: &Ctx, path: &str) -> http::Request<http_body_util::Empty<Bytes>> {
    let mut req = http::Request::new(http_body_util::Empty::new());
    *req.uri_mut() = ctx.url(path).parse().expect("a URL of ours");
    req
}

/// Streams whose client grants no window and reads nothing: archway must reset each after
/// `limits.stall_timeout`, holding no file meanwhile. Every other stream asks for a blob a pull
/// client just got whole (so most likely cached, on disk), the rest for a tag's manifest.
async fn h2_staller(ctx: Arc<Ctx>, id: u64) {
    use http_body_util::BodyExt;
    let mut rng = Rng::new(0x57a11 + id);
    let mut stop = ctx.stop.clone();
    while !ctx.stopping() {
        ctx.stats.add(REQUESTS, "h2 zero-window connections");
        let Some(mut send) = h2_connection(&ctx, 0).await else {
            ctx.stats.add(ERRORS, "connect failed (phases)");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut bodies = Vec::new();
        for k in 0..H2_STALLED_STREAMS {
            if send.ready().await.is_err() {
                break;
            }
            let blob = if k % 2 == 0 {
                let recent = ctx.recent_blobs.lock().unwrap();
                (!recent.is_empty())
                    .then(|| recent[rng.below(recent.len() as u64) as usize].clone())
            } else {
                None
            };
            let path = match blob {
                Some(path) => {
                    ctx.stats.add(PHASES, STALLED_ON_BLOB);
                    path
                }
                None => {
                    let repo = rng.pick(&ctx.content.repos);
                    format!("/v2/{}/manifests/{}", repo.name, repo.tag)
                }
            };
            match send.send_request(h2_get(&ctx, &path)).await {
                Ok(r) => bodies.push(r.into_body()),
                Err(_) => break,
            }
        }
        for mut body in bodies {
            tokio::select! {
                f = tokio::time::timeout(STALL_TIMEOUT * 4, body.frame()) => match f {
                    Ok(Some(Ok(frame))) if frame.data_ref().is_some_and(|d| !d.is_empty()) => {
                        ctx.stats.add(WRONG, "h2 zero-window stream got data")
                    }
                    Ok(_) => ctx.stats.add(PHASES, "h2 zero-window streams reset by archway"),
                    Err(_) => ctx.stats.add(PHASES, NOT_RESET_IN_TIME),
                },
                _ = stop.changed() => return,
            }
        }
    }
}

/// Requests reset 3 ms after they were sent (h2 rapid reset at a polite pace): the work they
/// started must not outlive them without a bound.
async fn h2_resetter(ctx: Arc<Ctx>, id: u64) {
    let mut rng = Rng::new(0x4e5e7 + id);
    while !ctx.stopping() {
        let Some(mut send) = h2_connection(&ctx, 65_535).await else {
            ctx.stats.add(ERRORS, "connect failed (phases)");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        for _ in 0..200 {
            if ctx.stopping() || send.ready().await.is_err() {
                break;
            }
            let repo = rng.pick(&ctx.content.repos);
            let path = format!("/v2/{}/manifests/{}", repo.name, repo.tag);
            ctx.stats
                .add(REQUESTS, "h2 requests reset 3 ms after sending");
            let _ = tokio::time::timeout(
                Duration::from_millis(3),
                send.send_request(h2_get(&ctx, &path)),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// One request, then nothing: closed by the idle timeout.
async fn idle_keep_alive(ctx: Arc<Ctx>, n: u64) {
    ctx.stats.add(REQUESTS, "keep-alive connections left idle");
    let Ok(mut s) = TcpStream::connect(ctx.addr).await else {
        ctx.stats.add(ERRORS, "connect failed (phases)");
        return;
    };
    let req = format!(
        "GET /v2/ HTTP/1.1\r\nHost: {}\r\nUser-Agent: idle/{n}\r\n\r\n",
        ctx.addr
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        ctx.stats.add(PHASES, "keep-alive requests not answered");
        return;
    }
    // `GET /v2/` answers `{}` with a Content-Length: the answer is complete once it is there.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = tokio::time::timeout(CLIENT_TIMEOUT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
            if got.starts_with(b"HTTP/1.1 200") && got.ends_with(b"{}") {
                return true;
            }
        }
    })
    .await
    .unwrap_or(false);
    if !answered {
        ctx.stats.add(PHASES, "keep-alive requests not answered");
        return;
    }
    let mut stop = ctx.stop.clone();
    match wait_closed(&mut s, REAP_WAIT, &mut stop).await {
        Some(true) => ctx
            .stats
            .add(PHASES, "idle keep-alive connections closed by archway"),
        Some(false) => ctx
            .stats
            .add(PHASES, "idle keep-alive connections not closed within 60 s"),
        None => {}
    }
}

async fn idle_phase(ctx: Arc<Ctx>) {
    let mut n = 0u64;
    while !ctx.stopping() {
        let mut set = JoinSet::new();
        for _ in 0..SILENT_CONNECTIONS {
            set.spawn(silent_connection(ctx.clone()));
        }
        for _ in 0..IDLE_KEEP_ALIVE {
            n += 1;
            set.spawn(idle_keep_alive(ctx.clone(), n));
        }
        while set.join_next().await.is_some() {}
        // A breather, so the pull clients are not held at the cap all the time.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// A raw request whose head is over hyper's limits: archway must refuse it (431) or close.
async fn oversized_head(ctx: &Ctx, what: &str, head: String) {
    ctx.stats.add(REQUESTS, what);
    let Ok(mut s) = TcpStream::connect(ctx.addr).await else {
        ctx.stats.add(ERRORS, "connect failed (phases)");
        return;
    };
    // archway may close before the whole head is written.
    let _ = s.write_all(head.as_bytes()).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(CLIENT_TIMEOUT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(k) => out.extend_from_slice(&buf[..k]),
            }
        }
    })
    .await;
    let status = String::from_utf8_lossy(out.get(9..12).unwrap_or_default()).into_owned();
    let outcome = match status.as_str() {
        "" => "closed without an answer".to_owned(),
        s => format!("answered {s}"),
    };
    ctx.stats
        .add(PHASES, format!("header flood over the limits: {outcome}"));
}

async fn header_flood(ctx: Arc<Ctx>, id: u64) {
    let mut rng = Rng::new(0xf100d + id);
    let client = TestClient::new()
        .with_pool_idle_timeout(CLIENT_POOL_IDLE)
        .with_timeout(CLIENT_TIMEOUT);
    let modern = clients::docker_2010();
    let legacy = clients::docker_1706();
    let mut n = 0u64;
    while !ctx.stopping() {
        n += 1;
        let repo = rng.pick(&ctx.content.repos);
        let path = format!("/v2/{}/manifests/{}", repo.name, repo.tag);
        // Platforms the indexes hold (Docker 17.06 on another gets a 404: no manifest for it).
        let arch = *rng.pick(&["amd64", "arm64", "arm"]);
        match n % 5 {
            // A huge, distinct User-Agent on a modern client: the tag answer is memoised by a
            // hash of the hints, never by the headers themselves.
            0 | 1 => {
                let is_legacy = n % 5 == 1;
                let base = if is_legacy { &legacy } else { &modern };
                let ua = format!(
                    "docker/17.06.2-ee-19 go/go1.8.7 os/linux arch/{arch} flood/{id}-{n} {}",
                    "u".repeat(60_000)
                );
                let headers: Vec<(&str, &str)> = base
                    .lines()
                    .into_iter()
                    .filter(|(k, _)| !k.eq_ignore_ascii_case("user-agent"))
                    .chain([("user-agent", ua.as_str())])
                    .collect();
                let step = if is_legacy {
                    "header flood: 60 KB User-Agent (Docker 17.06 Accept)"
                } else {
                    "header flood: 60 KB User-Agent"
                };
                let Some(r) = ctx
                    .exchange(&client, step, Method::GET, &path, &headers)
                    .await
                else {
                    continue;
                };
                let Some(r) = ctx.accept(step, r, &[StatusCode::OK]) else {
                    continue;
                };
                if is_legacy {
                    ctx.check_legacy_tag_answer(&repo.name, &r, step);
                } else {
                    ctx.check_modern_tag_answer(&repo.name, &r, step);
                }
            }
            // Ninety headers of a kilobyte each.
            2 => {
                let ua = format!("flood/{id}-{n} arch/{arch}");
                let values: Vec<(String, String)> = (0..90)
                    .map(|i| (format!("x-flood-{i}"), format!("{i}-{}", "v".repeat(1_000))))
                    .collect();
                let headers: Vec<(&str, &str)> = modern
                    .lines()
                    .into_iter()
                    .filter(|(k, _)| !k.eq_ignore_ascii_case("user-agent"))
                    .chain([("user-agent", ua.as_str())])
                    .chain(values.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .collect();
                let step = "header flood: 90 headers of 1 KB";
                let Some(r) = ctx
                    .exchange(&client, step, Method::GET, &path, &headers)
                    .await
                else {
                    continue;
                };
                if let Some(r) = ctx.accept(step, r, &[StatusCode::OK]) {
                    ctx.check_modern_tag_answer(&repo.name, &r, step);
                }
            }
            // Over the limits: 150 header lines; a 600 KB head.
            3 => {
                let mut head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", ctx.addr);
                for i in 0..150 {
                    let _ = write!(head, "X-Many-{i}: {n}\r\n");
                }
                head.push_str("\r\n");
                oversized_head(&ctx, "header flood: 150 header lines", head).await;
            }
            _ => {
                let head = format!(
                    "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\n\r\n",
                    ctx.addr,
                    "h".repeat(600_000)
                );
                oversized_head(&ctx, "header flood: 600 KB head", head).await;
            }
        }
    }
}

// === archway, the process ===

struct Archway {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Archway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn two_free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

fn start_archway(dir: &Path, upstream: &str) -> Archway {
    let (port, admin_port) = two_free_ports();
    let config = format!(
        r#"listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
data_dir = "{data}"

[cache]
# Far less than upstream holds: blobs are evicted and fetched again all the time.
max_size = "32MiB"
memory_size = "8MiB"
max_blob_size = "16MiB"
min_free_space = "0B"
tag_ttl = "2s"
negative_ttl = "5s"

[limits]
header_read_timeout = "{header}ms"
idle_timeout = "{idle}ms"
max_connections = {max_connections}
stall_timeout = "{stall}ms"

[[upstream]]
name = "fake"
url = "{upstream}"
default = true
connect_timeout = "2s"
read_timeout = "{read}ms"
"#,
        data = dir.join("data").display(),
        header = HEADER_READ_TIMEOUT.as_millis(),
        idle = IDLE_TIMEOUT.as_millis(),
        max_connections = MAX_CONNECTIONS,
        stall = STALL_TIMEOUT.as_millis(),
        read = UPSTREAM_READ_TIMEOUT.as_millis(),
    );
    let path = dir.join("archway.toml");
    std::fs::write(&path, config).unwrap();
    let log = dir.join("archway.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_archway"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ARCHWAY_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["serve", "--config"])
        .arg(&path)
        .env("ARCHWAY_LOG", "warn")
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1,localhost,::1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("archway.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap());
    Archway {
        child: cmd.spawn().unwrap(),
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        admin: format!("127.0.0.1:{admin_port}").parse().unwrap(),
        log,
    }
}

async fn wait_ready(url: &str, archway: &Mutex<Archway>) {
    let client = TestClient::new().with_timeout(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.try_request(Method::GET, url, &[]).await {
            if r.status == 200 {
                return;
            }
        }
        if let Some(status) = archway.lock().unwrap().child.try_wait().unwrap() {
            panic!("archway exited at start ({status})");
        }
        assert!(Instant::now() < deadline, "{url} never answered 200");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(VmRSS, VmHWM)` in bytes.
fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The kernel's TCP counters of this network namespace (`/proc/net/netstat`, `TcpExt:`) that say
/// when connections beyond `max_connections` overflowed the listen queue: those the kernel
/// dropped never reach archway.
fn listen_queue_counters() -> BTreeMap<String, u64> {
    const WANTED: [&str; 3] = ["ListenOverflows", "ListenDrops", "SyncookiesSent"];
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let mut out = BTreeMap::new();
    if let [names, values] = rows.as_slice() {
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if WANTED.contains(&n) {
                out.insert(n.to_owned(), v.parse().unwrap_or(0));
            }
        }
    }
    out
}

fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

#[derive(Debug, Clone, Copy, Default)]
struct Resources {
    rss: u64,
    fds: usize,
}

#[derive(Default)]
struct Samples {
    start: Resources,
    peak: Resources,
    /// Highest VmHWM seen (the kernel's own peak RSS).
    hwm: u64,
    end: Resources,
    count: u64,
    /// Highest `archway_connections_open` seen (read every second from the admin listener).
    peak_open_connections: f64,
}

fn sample(pid: u32) -> Option<(Resources, u64)> {
    let (rss, hwm) = memory(pid)?;
    let fds = open_fds(pid)?;
    Some((Resources { rss, fds }, hwm))
}

/// Every 200 ms: archway's RSS and open descriptors, and whether it still runs.
async fn sampler(
    ctx: Arc<Ctx>,
    archway: Arc<Mutex<Archway>>,
    admin: SocketAddr,
    samples: Arc<Mutex<Samples>>,
) {
    let pid = archway.lock().unwrap().child.id();
    let mut stop = ctx.stop.clone();
    let metrics_url = format!("http://{admin}/metrics");
    let metrics_client = TestClient::new().with_timeout(Duration::from_secs(1));
    for tick in 0u64.. {
        if tick % 5 == 0 {
            if let Ok(r) = metrics_client
                .try_request(Method::GET, &metrics_url, &[])
                .await
            {
                if let Some(open) = Scrape::parse(r.text()).get("archway_connections_open", &[]) {
                    let mut s = samples.lock().unwrap();
                    s.peak_open_connections = s.peak_open_connections.max(open);
                }
            }
        }
        if archway.lock().unwrap().child.try_wait().unwrap().is_some() {
            ctx.exited.store(true, Ordering::SeqCst);
            return;
        }
        if let Some((r, hwm)) = sample(pid) {
            let mut s = samples.lock().unwrap();
            s.peak.rss = s.peak.rss.max(r.rss);
            s.peak.fds = s.peak.fds.max(r.fds);
            s.hwm = s.hwm.max(hwm);
            s.count += 1;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// After the run, with every fault cleared: each repository pulls cleanly again (a failed blob
/// is remembered for `cache.negative_ttl`, so a few tries).
async fn pull_everything_cleanly(ctx: &Ctx) -> Vec<String> {
    let client = TestClient::new()
        .with_pool_idle_timeout(CLIENT_POOL_IDLE)
        .with_timeout(CLIENT_TIMEOUT);
    let modern = clients::docker_2010();
    let legacy = clients::docker_1706();
    let mut failed = Vec::new();
    for (i, repo) in ctx.content.repos.iter().enumerate() {
        let c = if i % 2 == 0 { &modern } else { &legacy };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut ok = false;
        while !ok && Instant::now() < deadline {
            ok = clean_pull(ctx, &client, repo, c).await;
            if !ok {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        if !ok {
            failed.push(repo.name.clone());
        }
    }
    failed
}

/// Every manifest and blob of `repo`'s current tag, with no randomness, verified.
async fn clean_pull(ctx: &Ctx, client: &TestClient, repo: &Repo, c: &ClientHeaders) -> bool {
    let headers = c.lines();
    let legacy = c.name.contains("17.06");
    let path = format!("/v2/{}/manifests/{}", repo.name, repo.tag);
    let step = "clean pulls after the run";
    let Some(r) = ctx
        .exchange(client, step, Method::GET, &path, &headers)
        .await
    else {
        return false;
    };
    let Some(r) = ctx.accept(step, r, &[StatusCode::OK]) else {
        return false;
    };
    let mut images = Vec::new();
    if legacy {
        let Some((_, config, layers)) = ctx.check_legacy_tag_answer(&repo.name, &r, step) else {
            return false;
        };
        images.push((config, layers));
    } else {
        if !ctx.check_modern_tag_answer(&repo.name, &r, step) {
            return false;
        }
        match parse_manifest(&r.body) {
            Some((_, Parsed::Image { config, layers })) => images.push((config, layers)),
            Some((_, Parsed::Index(children))) => {
                for child in children {
                    let Some(body) = ctx
                        .manifest_by_digest(client, step, &repo.name, &child, &headers)
                        .await
                    else {
                        return false;
                    };
                    match parse_manifest(&body) {
                        Some((_, Parsed::Image { config, layers })) => {
                            images.push((config, layers))
                        }
                        _ => return false,
                    }
                }
            }
            None => return false,
        }
    }
    let ua = c.user_agent().unwrap_or("soak");
    for (config, layers) in images {
        for d in std::iter::once(&config).chain(&layers) {
            let Some(expected) = ctx.content.blobs.get(d) else {
                return false;
            };
            let path = format!("/v2/{}/blobs/{d}", repo.name);
            let Some(r) = ctx
                .exchange(client, step, Method::GET, &path, &[("user-agent", ua)])
                .await
            else {
                return false;
            };
            let Some(r) = ctx.accept(step, r, &[StatusCode::OK]) else {
                return false;
            };
            if !ctx.check_blob(&r, &path, d, expected) {
                return false;
            }
        }
    }
    true
}

// === the report ===

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

struct Report<'a> {
    ran: Duration,
    content: &'a Content,
    stats: &'a Stats,
    faults: BTreeMap<&'static str, u64>,
    samples: &'a Samples,
    upstream_saw: u64,
    /// Growth of the kernel's listen-queue counters over the run.
    kernel: Vec<(String, u64)>,
    /// Rows from archway's own `/metrics`.
    archway_rows: Vec<(String, String)>,
    exited: Option<String>,
    panics: usize,
    warnings: usize,
    clean_failed: &'a [String],
    sigterm: String,
}

impl Report<'_> {
    fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |what: &str, value: String| {
            let _ = writeln!(t, "| {what} | {value} |");
        };
        let s = self.stats;
        let wrong = s.total(WRONG);
        row("what", "value".to_owned());
        row("---", "---".to_owned());
        row(
            "duration",
            format!(
                "{} s; {PULL_CLIENTS} pull clients, {} repositories, {} blobs ({}) upstream, archway's cache 32 MiB",
                self.ran.as_secs(),
                self.content.repos.len(),
                self.content.blobs.len(),
                mib(self.content.total_bytes())
            ),
        );
        row(
            "pulls completed, every body verified / started",
            format!(
                "{} / {}",
                s.get(PULLS, "completed, every body verified"),
                s.get(PULLS, "started")
            ),
        );
        row("requests", format!("{}", s.total(REQUESTS)));
        for (step, n) in s.section(REQUESTS) {
            row(&format!("requests: {step}"), n.to_string());
        }
        let faults: u64 = self.faults.values().sum();
        row(
            "faults injected (into requests upstream saw)",
            faults.to_string(),
        );
        for (kind, n) in &self.faults {
            row(&format!("faults injected: {kind}"), n.to_string());
        }
        row(
            "bytes verified",
            gib(s.bytes_verified.load(Ordering::Relaxed)),
        );
        row(
            "**complete 200/206 with wrong bytes (must be 0)**",
            format!("**{wrong}**"),
        );
        for (what, n) in s.section(WRONG) {
            row(&format!("wrong: {what}"), n.to_string());
        }
        row("errors", s.total(ERRORS).to_string());
        // These always show, 0 or not.
        let mut errors: BTreeMap<String, u64> = [
            "timeout",
            "connection refused",
            "reset before the response head",
            "closed before the response head",
        ]
        .iter()
        .map(|k| (k.to_string(), 0))
        .collect();
        errors.extend(s.section(ERRORS));
        for (kind, n) in errors {
            row(&format!("errors: {kind}"), n.to_string());
        }
        for (what, n) in s.section(PHASES) {
            row(&what, n.to_string());
        }
        row(
            "requests upstream saw (archway → fake registry)",
            self.upstream_saw.to_string(),
        );
        for (what, value) in &self.archway_rows {
            row(what, value.clone());
        }
        row(
            "kernel (loopback's network namespace, whole machine): listen queue overflows, drops, SYN cookies sent",
            self.kernel
                .iter()
                .map(|(_, n)| n.to_string())
                .collect::<Vec<_>>()
                .join(" / "),
        );
        let sm = self.samples;
        row(
            "archway RSS: start / peak / end",
            format!(
                "{} / {} (VmHWM {}) / {}",
                mib(sm.start.rss),
                mib(sm.peak.rss),
                mib(sm.hwm),
                mib(sm.end.rss)
            ),
        );
        row(
            "archway open fds: start / peak / end",
            format!("{} / {} / {}", sm.start.fds, sm.peak.fds, sm.end.fds),
        );
        row("samples (every 200 ms)", sm.count.to_string());
        row(
            "archway: open client connections, peak (sampled every second)",
            format!(
                "{} (max_connections {MAX_CONNECTIONS})",
                sm.peak_open_connections
            ),
        );
        row(
            "clean pulls of every repository after the run",
            if self.clean_failed.is_empty() {
                "all verified".to_owned()
            } else {
                format!("failed: {:?}", self.clean_failed)
            },
        );
        row(
            "archway exited during the run",
            self.exited.clone().unwrap_or_else(|| "no".to_owned()),
        );
        row(
            "archway log: panics / warnings",
            format!("{} / {}", self.panics, self.warnings),
        );
        row("archway after SIGTERM", self.sigterm.clone());
        t
    }
}

/// Sums of `name`'s samples grouped by the value of `label` (`"a 1, b 2"`).
fn by_label(scrape: &Scrape, name: &str, label: &str, filter: &[(&str, &str)]) -> String {
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    for labels in scrape.series(name) {
        if filter
            .iter()
            .any(|(k, v)| labels.get(*k).map(String::as_str) != Some(*v))
        {
            continue;
        }
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let value = scrape.get(name, &pairs).unwrap_or(0.0);
        *sums
            .entry(labels.get(label).cloned().unwrap_or_default())
            .or_default() += value;
    }
    sums.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What archway counted itself: connections ended by reason (the reaping), cache answers, evictions
/// and its upstream exchanges.
fn metric_rows(scrape: &Scrape) -> Vec<(String, String)> {
    let mut rows = vec![(
        "archway: connections ended, by reason".to_owned(),
        by_label(scrape, "archway_connections_closed_total", "reason", &[]),
    )];
    let kinds: std::collections::BTreeSet<String> = scrape
        .series("archway_cache_results_total")
        .iter()
        .filter_map(|l| l.get("kind").cloned())
        .collect();
    for kind in kinds {
        rows.push((
            format!("archway: {kind} answers, by cache result"),
            by_label(
                scrape,
                "archway_cache_results_total",
                "result",
                &[("kind", kind.as_str())],
            ),
        ));
    }
    rows.push((
        "archway: cached blob bytes sent by sendfile".to_owned(),
        format!("{}", scrape.sum("archway_sendfile_bytes_total")),
    ));
    rows.push((
        "archway: blobs evicted from its cache".to_owned(),
        format!("{}", scrape.sum("archway_blob_store_evictions_total")),
    ));
    rows.push((
        "archway: upstream exchanges, by status".to_owned(),
        by_label(scrape, "archway_upstream_requests_total", "status", &[]),
    ));
    rows
}

// === the soak ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the fault soak runs for minutes: scripts/soak"]
async fn fault_soak() {
    let duration = soak_duration();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRegistry::builder()
        .record_requests(false)
        .stall_limit(STALL_LIMIT)
        .start()
        .await;
    let content = Content::build(&fake);
    eprintln!(
        "soak: {} repositories, {} blobs, {} upstream; running {} s",
        content.repos.len(),
        content.blobs.len(),
        mib(content.total_bytes()),
        duration.as_secs()
    );
    let archway = start_archway(dir.path(), &fake.url());
    let (addr, admin, log, pid) = (
        archway.addr,
        archway.admin,
        archway.log.clone(),
        archway.child.id(),
    );
    let archway = Arc::new(Mutex::new(archway));
    wait_ready(&format!("http://{addr}/v2/"), &archway).await;
    wait_ready(&format!("http://{admin}/healthz"), &archway).await;
    // The readiness checks' connections close with their clients.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = Arc::new(Mutex::new(Samples::default()));
    {
        let (start, hwm) = sample(pid).expect("archway's /proc entry");
        let mut s = samples.lock().unwrap();
        s.start = start;
        s.peak = start;
        s.hwm = hwm;
    }

    let kernel_before = listen_queue_counters();
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let ctx = Arc::new(Ctx {
        addr,
        content,
        fake,
        stats: Stats::default(),
        deadline: started + duration,
        stop: stop_rx,
        exited: AtomicBool::new(false),
        recent_blobs: Mutex::default(),
    });

    let sampling = tokio::spawn(sampler(
        ctx.clone(),
        archway.clone(),
        admin,
        samples.clone(),
    ));
    let mut load = JoinSet::new();
    load.spawn(fault_injector(ctx.clone()));
    for i in 0..PULL_CLIENTS {
        load.spawn(pull_client(ctx.clone(), i));
    }
    load.spawn(slow_header_phase(ctx.clone()));
    load.spawn(idle_phase(ctx.clone()));
    for id in 0..FLOODERS {
        load.spawn(header_flood(ctx.clone(), id as u64));
    }
    for id in 0..H2_STALLERS {
        load.spawn(h2_staller(ctx.clone(), id as u64));
    }
    for id in 0..H2_RESETTERS {
        load.spawn(h2_resetter(ctx.clone(), id as u64));
    }

    // Progress now and then, and an early end if archway exits.
    let mut last_report = Instant::now();
    while Instant::now() < ctx.deadline && !ctx.exited.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if last_report.elapsed() >= Duration::from_secs(60) {
            last_report = Instant::now();
            let s = samples.lock().unwrap();
            eprintln!(
                "soak: {} s, {} requests, {} verified, {} wrong, {} errors, RSS {}, fds {}",
                started.elapsed().as_secs(),
                ctx.stats.total(REQUESTS),
                gib(ctx.stats.bytes_verified.load(Ordering::Relaxed)),
                ctx.stats.total(WRONG),
                ctx.stats.total(ERRORS),
                mib(s.peak.rss),
                s.peak.fds
            );
        }
    }
    let ran = started.elapsed();
    let kernel: Vec<(String, u64)> = ["ListenOverflows", "ListenDrops", "SyncookiesSent"]
        .iter()
        .map(|k| {
            let grew = listen_queue_counters()
                .get(*k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(kernel_before.get(*k).copied().unwrap_or(0));
            (k.to_string(), grew)
        })
        .collect();
    // The run is over: connection phases let go of their sockets at once; pulls finish the
    // exchange they are in (bounded by the client timeout).
    let _ = stop_tx.send(true);
    let wind_down = tokio::time::timeout(CLIENT_TIMEOUT * 2, async {
        while load.join_next().await.is_some() {}
    })
    .await;
    assert!(wind_down.is_ok(), "the load did not wind down");
    ctx.fake.clear_faults();
    ctx.fake.set_delay(None, Duration::ZERO);
    let exited_during_run = ctx.exited.load(Ordering::SeqCst);

    let mut clean_failed = Vec::new();
    if !exited_during_run {
        clean_failed = pull_everything_cleanly(&ctx).await;
    }
    // Everything idle is reaped by now, even what the clean pulls left open.
    tokio::time::sleep(HEADER_READ_TIMEOUT + IDLE_TIMEOUT + Duration::from_secs(2)).await;
    // archway keeps idle upstream connections pooled for 90 s: close them from the fake's side,
    // so that "end" counts what archway itself holds on to.
    ctx.fake.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alive_at_end = archway.lock().unwrap().child.try_wait().unwrap().is_none();
    if let Some((end, hwm)) = sample(pid).filter(|_| alive_at_end) {
        let mut s = samples.lock().unwrap();
        s.end = end;
        s.hwm = s.hwm.max(hwm);
    }
    let _ = sampling.await;

    let mut archway_rows = Vec::new();
    if alive_at_end {
        let r = TestClient::new()
            .with_timeout(Duration::from_secs(10))
            .try_request(Method::GET, &format!("http://{admin}/metrics"), &[])
            .await;
        if let Ok(r) = r {
            archway_rows = metric_rows(&Scrape::parse(r.text()));
        }
    }

    // A graceful stop, as a service manager would ask for it.
    let sigterm = {
        let mut a = archway.lock().unwrap();
        if alive_at_end {
            let _ = Command::new("kill")
                .args(["-TERM", &a.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(40);
            loop {
                if let Some(status) = a.child.try_wait().unwrap() {
                    break format!("exited ({status})");
                }
                if Instant::now() > deadline {
                    break "still running 40 s after SIGTERM".to_owned();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        } else {
            "(had exited)".to_owned()
        }
    };
    let exited = if exited_during_run || !alive_at_end {
        let status = archway.lock().unwrap().child.try_wait().unwrap();
        Some(format!("yes ({status:?})"))
    } else {
        None
    };

    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let panics = log_text.matches("panicked").count();
    let warnings = log_text
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count();

    let samples = samples.lock().unwrap();
    let report = Report {
        ran,
        content: &ctx.content,
        stats: &ctx.stats,
        faults: ctx.fake.faults_injected(),
        samples: &samples,
        upstream_saw: ctx.fake.requests_seen(),
        kernel,
        archway_rows,
        exited: exited.clone(),
        panics,
        warnings,
        clean_failed: &clean_failed,
        sigterm: sigterm.clone(),
    };
    let table = report.table();
    println!("\n## Fault soak\n\n{table}");
    println!("| errors by step | count |\n| --- | --- |");
    for (what, n) in ctx.stats.section(ERRORS_BY_STEP) {
        println!("| {what} | {n} |");
    }
    println!();
    let kept_log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("soak-archway.log");
    if std::fs::copy(&log, &kept_log).is_ok() {
        println!("archway's log (warnings and up): {}", kept_log.display());
    }
    let wrong_examples = ctx.stats.wrong_examples.lock().unwrap().clone();
    for w in &wrong_examples {
        println!("wrong: {w}");
    }
    for e in ctx.stats.failure_examples.lock().unwrap().iter() {
        println!("no response head: {e}");
    }
    if let Ok(path) = std::env::var("SOAK_TABLE") {
        std::fs::write(&path, &table).unwrap();
    }
    let log_tail = || {
        let lines: Vec<&str> = log_text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };

    assert_eq!(
        ctx.stats.total(WRONG),
        0,
        "complete answers with wrong bytes: {wrong_examples:#?}"
    );
    assert!(
        exited.is_none(),
        "archway exited: {exited:?}\n{}",
        log_tail()
    );
    assert_eq!(panics, 0, "archway panicked:\n{}", log_tail());
    assert!(
        clean_failed.is_empty(),
        "after the faults stopped, these did not pull cleanly: {clean_failed:?}\n{}",
        log_tail()
    );
    assert_eq!(
        ctx.stats.get(PHASES, NOT_RESET_IN_TIME),
        0,
        "zero-window h2 streams that archway did not reset within 4 × stall_timeout"
    );
    assert!(
        ctx.stats.get(PHASES, STALLED_ON_BLOB) > 0,
        "no zero-window stream asked for a cached blob"
    );
    assert!(
        samples.hwm.max(samples.peak.rss) <= PEAK_RSS_BOUND,
        "archway's RSS peaked at {} (VmHWM {}), over the bound of {}",
        mib(samples.peak.rss),
        mib(samples.hwm),
        mib(PEAK_RSS_BOUND)
    );
    assert!(
        samples.peak.fds <= PEAK_FDS_BOUND,
        "archway held {} open fds at its peak, over the bound of {PEAK_FDS_BOUND}",
        samples.peak.fds
    );
    assert!(
        samples.end.fds <= samples.start.fds + FD_MARGIN,
        "archway holds {} open fds at the end, {} at the start",
        samples.end.fds,
        samples.start.fds
    );
    assert!(
        sigterm.starts_with("exited (exit status: 0)"),
        "SIGTERM: {sigterm}"
    );
    assert!(
        ctx.stats.get(PULLS, "completed, every body verified") > 0,
        "no pull completed"
    );
}
