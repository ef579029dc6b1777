//! End-to-end tier for the shared storage (`[storage]`): archway on a real S3-protocol server
//! (`moto_server`, on loopback), Distribution (`docker-registry`) as upstream, skopeo (and, for
//! `redirect = true`, containerd's ctr) as the clients. Same gate and helpers as `tests/e2e.rs`; moto_server and curl are required too.
//!
//! Before relying on the server, each test proves it refuses a second conditional create with
//! 412. archway runs with `HTTP_PROXY` pointing at a closed port and no `NO_PROXY`: its S3 client
//! must reach the loopback endpoint directly.

#[allow(dead_code)]
mod e2e {
    pub mod fixtures;
    pub mod http;
    pub mod layout;
    pub mod procs;
    pub mod s3;
    pub mod tools;
}

use e2e::fixtures::{self, Blob, FixtureSet, Flavour, Image, LINUX_ARM64_V8};
use e2e::layout::OciLayout;
use e2e::procs::{free_port, run_ok};
use e2e::s3::{storage_toml, Moto};
use e2e::tools::{
    e2e_enabled, show, skopeo, temp_dir, write_hosts_toml, Access, Archway, Containerd, Registry,
    Setup,
};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

const PULL_TIMEOUT: Duration = Duration::from_secs(300);
const BUCKET: &str = "archway-e2e";
/// The large fixture layer (~50 MB) goes up as a multipart upload of 5 MiB parts.
const PART_SIZE: &str = "s3_part_size = \"5MiB\"\n";

/// An archway with `[storage]` on `moto`, its admin listener on a free port, and no `NO_PROXY`
/// in its environment (`HTTP_PROXY` stays at a closed port).
struct Replica {
    archway: Archway,
    admin: u16,
}

impl Replica {
    fn start(upstream: &str, tag_ttl: &str, moto: &Moto) -> Replica {
        Self::start_with(upstream, tag_ttl, moto, "")
    }

    /// With `storage` appended to the `[storage]` section.
    fn start_with(upstream: &str, tag_ttl: &str, moto: &Moto, storage: &str) -> Replica {
        Self::start_on(upstream, tag_ttl, moto, storage, None)
    }

    /// `start_with`, on `data_dir` if given (a disk an earlier archway filled).
    fn start_on(
        upstream: &str,
        tag_ttl: &str,
        moto: &Moto,
        storage: &str,
        data_dir: Option<&Path>,
    ) -> Replica {
        let admin = free_port();
        let setup = Setup {
            top: format!("admin_listen = \"127.0.0.1:{admin}\"\n"),
            env_remove: vec!["NO_PROXY".into(), "no_proxy".into()],
            peer_url: true,
            data_dir: data_dir.map(Path::to_path_buf),
        };
        // Tag records are shared only within a fleet (issue 18: sealed with its key; without
        // [fleet] a bucket writer could repoint a tag): these replicas are one.
        let secret = temp_dir("s3fleet").keep().join("fleet-secret");
        std::fs::write(&secret, "e2e-storage-fleet-secret\n").expect("the fleet secret");
        let storage = format!(
            "{}\n[fleet]\nsecret_file = \"{}\"\n",
            storage_toml(moto, BUCKET, &format!("{PART_SIZE}{storage}")),
            secret.display()
        );
        let archway = Archway::start_set_up(upstream, tag_ttl, &storage, &setup);
        Replica { archway, admin }
    }

    fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin);
        let r = e2e::http::get(&url, &[]).expect("metrics");
        assert_eq!(r.status, 200, "{url}");
        r.text()
    }
}

/// The value of the series `name{labels}` (exactly as exposed), 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

fn moto() -> Moto {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    moto.prove_conditional_create(BUCKET);
    moto
}

fn upstream(repos: &[&str]) -> (Registry, FixtureSet) {
    let registry = Registry::start();
    let fx = FixtureSet::build(fixtures::fresh_seed(), true);
    eprintln!("fixture seed {} in {} {repos:?}", fx.seed, registry.url());
    fx.push(&registry.url(), repos);
    (registry, fx)
}

fn skopeo_copy(tmp: &Path, source: &str, out: &str, extra: &[&str]) -> OciLayout {
    let dir = tmp.join(out);
    let src = format!("docker://{source}");
    let dst = format!("oci:{}:x", dir.display());
    let mut args = vec!["copy", "--src-tls-verify=false"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[&src, &dst]);
    run_ok(&mut skopeo(tmp, &args), PULL_TIMEOUT);
    OciLayout::open(&dir)
}

const ARM64: [&str; 4] = ["--override-arch", "arm64", "--override-variant", "v8"];

/// Copies `multi:oci` (the arm64/v8 child) and `multi:large` through `archway`, and checks every
/// byte of both in the layouts skopeo wrote (each blob hashed again).
fn pull_both(archway: &Archway, fx: &FixtureSet, tmp: &Path, name: &str) -> Vec<Blob> {
    let oci = fx.image(Flavour::Oci, LINUX_ARM64_V8);
    let large = fx.large.as_ref().expect("the set has `large`");
    let started = Instant::now();
    let layout = skopeo_copy(
        tmp,
        &format!("{}/multi:oci", archway.host()),
        &format!("{name}-oci"),
        &ARM64,
    );
    assert_eq!(layout.descriptor("x")["digest"], oci.manifest.digest);
    check(&layout, oci);
    let layout = skopeo_copy(
        tmp,
        &format!("{}/multi:large", archway.host()),
        &format!("{name}-large"),
        &[],
    );
    assert_eq!(layout.descriptor("x")["digest"], large.manifest.digest);
    check(&layout, large);
    eprintln!("{name}: both images in {:?}", started.elapsed());
    oci.blobs().chain(large.blobs()).cloned().collect()
}

fn check(layout: &OciLayout, image: &Image) {
    let all = layout.walk(&image.manifest.digest);
    for b in image.blobs() {
        assert!(all.contains(&b.digest), "layout lacks {}", b.digest);
    }
}

/// Waits until every key is in the bucket (uploads run in the background after the commit).
fn wait_in_bucket(moto: &Moto, keys: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for key in keys {
        while moto.head(BUCKET, key) != 200 {
            assert!(
                Instant::now() < deadline,
                "{key} never appeared in the bucket"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn on_repo<'a>(log: &'a [Access], repo: &str) -> Vec<&'a Access> {
    let prefix = format!("/v2/{repo}/");
    log.iter()
        .filter(|a| a.path().starts_with(&prefix))
        .collect()
}

fn assert_no_errors(log: &[Access], repo: &str) {
    let bad: Vec<Access> = on_repo(log, repo)
        .into_iter()
        .filter(|a| a.status >= 400 || a.complete == Some(false))
        .cloned()
        .collect();
    assert!(
        bad.is_empty(),
        "archway answered errors:\n{}\nfull log:\n{}",
        show(&bad),
        show(log)
    );
}

/// The cache result archway logged for the tag requests of `repo:tag`.
fn tag_results(log: &[Access], repo: &str, tag: &str) -> Vec<String> {
    let path = format!("/v2/{repo}/manifests/{tag}");
    log.iter()
        .filter(|a| a.path() == path && a.status == 200)
        .map(|a| {
            format!(
                "{}/{}",
                a.cache.as_deref().unwrap_or_default(),
                a.source.as_deref().unwrap_or_default()
            )
        })
        .collect()
}

#[test]
fn s3_is_the_only_copy_for_a_replica_with_an_empty_disk_and_no_upstream() {
    if !e2e_enabled("s3_is_the_only_copy_for_a_replica_with_an_empty_disk_and_no_upstream") {
        return;
    }
    let moto = moto();
    // The upstream is named docker.io: one-component names live under library/.
    let (mut registry, fx) = upstream(&["library/multi"]);
    let tmp = temp_dir("s3only");

    // Replica A pulls both images from upstream; they go to its disk and to the bucket.
    let a = Replica::start(&registry.url(), "5m", &moto);
    let blobs = pull_both(&a.archway, &fx, tmp.path(), "a");
    let oci = fx.image(Flavour::Oci, LINUX_ARM64_V8);
    let large = fx.large.as_ref().expect("large");
    let mut keys: Vec<String> = blobs
        .iter()
        .map(|b| format!("e2e/blobs/sha256/{}", b.hex()))
        .collect();
    for m in [fx.tag("oci"), &oci.manifest, &large.manifest] {
        keys.push(format!("e2e/manifests/sha256/{}", m.hex()));
    }
    keys.push("e2e/tags/docker.io/library/multi/oci".into());
    keys.push("e2e/tags/docker.io/library/multi/large".into());
    wait_in_bucket(&moto, &keys);
    let a_metrics = a.metrics();
    assert_eq!(
        metric(&a_metrics, "archway_blob_fills_total{source=\"upstream\"}"),
        blobs.len() as f64,
        "{a_metrics}"
    );
    assert!(
        metric(
            &a_metrics,
            "archway_storage_operations_total{op=\"CompleteMultipartUpload\",status=\"ok\"}"
        ) >= 1.0,
        "the 50 MB layer went up in parts: {a_metrics}"
    );
    assert_no_errors(&a.archway.access_log(), "multi");

    // Upstream gone. Replica B: same bucket, empty disk, tag TTL 5m.
    registry.stop();
    let b = Replica::start(&registry.url(), "5m", &moto);
    pull_both(&b.archway, &fx, tmp.path(), "b");
    let log = b.archway.access_log();
    assert_no_errors(&log, "multi");
    // The tags were confirmed (by A) within the TTL: fresh answers, upstream never asked; the
    // manifest itself read from the bucket the first time (an L1 miss), then from L1.
    for tag in ["oci", "large"] {
        let results = tag_results(&log, "multi", tag);
        assert!(
            !results.is_empty()
                && results
                    .iter()
                    .all(|r| r == "hit/cache" || r == "miss/bucket")
                && results.iter().any(|r| r == "miss/bucket"),
            "multi:{tag} should be a fresh answer from the bucket's record: {results:?}\n{}",
            show(&log)
        );
    }
    let b_metrics = b.metrics();
    assert_eq!(
        metric(&b_metrics, "archway_blob_fills_total{source=\"bucket\"}"),
        blobs.len() as f64,
        "every blob from the bucket: {b_metrics}"
    );
    assert_eq!(
        metric(&b_metrics, "archway_blob_fills_total{source=\"upstream\"}"),
        0.0,
        "{b_metrics}"
    );
    assert!(
        !b_metrics
            .lines()
            .any(|l| l.starts_with("archway_upstream_requests_total{")),
        "B never asked the (stopped) upstream: {b_metrics}"
    );

    // Replica C, tag TTL 1s: the bucket's records are older than that, upstream is down, so
    // stale-if-error answers from them.
    std::thread::sleep(Duration::from_millis(1100));
    let c = Replica::start(&registry.url(), "1s", &moto);
    let layout = skopeo_copy(
        tmp.path(),
        &format!("{}/multi:oci", c.archway.host()),
        "c-oci",
        &ARM64,
    );
    check(&layout, oci);
    let log = c.archway.access_log();
    assert_no_errors(&log, "multi");
    let results = tag_results(&log, "multi", "oci");
    assert!(
        !results.is_empty() && results.iter().all(|r| r == "stale/cache"),
        "multi:oci past its TTL with upstream down: stale from the bucket's record: {results:?}\n{}",
        show(&log)
    );
}

/// A node cache that ran without `[storage]` gets a bucket: what its disk holds is copied there
/// at the next start (`storage.backfill`), from the disk, and a replica with an empty disk then
/// takes every blob from the bucket, not from upstream.
#[test]
fn blobs_cached_before_the_bucket_are_copied_at_the_next_start() {
    if !e2e_enabled("blobs_cached_before_the_bucket_are_copied_at_the_next_start") {
        return;
    }
    let moto = moto();
    let (registry, fx) = upstream(&["library/multi"]);
    let tmp = temp_dir("s3backfill");
    let data_dir = tmp.path().join("node-data");
    let oci = fx.image(Flavour::Oci, LINUX_ARM64_V8);

    // No [storage]: the pull fills the disk only.
    let setup = Setup {
        data_dir: Some(data_dir.clone()),
        ..Setup::default()
    };
    let node = Archway::start_set_up(&registry.url(), "5m", "", &setup);
    let layout = skopeo_copy(
        tmp.path(),
        &format!("{}/multi:oci", node.host()),
        "node-oci",
        &ARM64,
    );
    check(&layout, oci);
    drop(node); // SIGTERM, and a graceful stop waits for the commits.
    let keys: Vec<String> = oci
        .blobs()
        .map(|b| format!("e2e/blobs/sha256/{}", b.hex()))
        .collect();
    assert!(
        keys.iter().all(|k| moto.head(BUCKET, k) == 404),
        "nothing in the bucket yet"
    );

    // The same disk, now with [storage]: every blob on it goes to the bucket, read from the disk.
    let node = Replica::start_on(&registry.url(), "5m", &moto, "", Some(&data_dir));
    wait_in_bucket(&moto, &keys);
    let deadline = Instant::now() + Duration::from_secs(60);
    let m = loop {
        let m = node.metrics();
        let copied = metric(
            &m,
            "archway_storage_backfilled_blobs_total{outcome=\"copied\"}",
        );
        if copied >= keys.len() as f64 {
            break m;
        }
        assert!(Instant::now() < deadline, "not all counted: {m}");
        std::thread::sleep(Duration::from_millis(200));
    };
    for outcome in ["damaged", "failed"] {
        let series = format!("archway_storage_backfilled_blobs_total{{outcome=\"{outcome}\"}}");
        assert_eq!(metric(&m, &series), 0.0, "{m}");
    }
    assert!(
        !m.lines()
            .any(|l| l.starts_with("archway_upstream_requests_total{")),
        "upstream never asked: {m}"
    );
    let marker = std::fs::read_to_string(data_dir.join("storage-backfill"));
    assert!(
        marker
            .as_deref()
            .is_ok_and(|t| t.starts_with(&format!("s3://{BUCKET}/e2e/ at "))),
        "the pass is marked done: {marker:?}"
    );

    // A replica with an empty disk: every blob from the bucket, the exact bytes. (Upstream is
    // still asked once per object whether this route may have it: a copy in the bucket is not
    // a route's proof, docs/operations.md.)
    let empty = Replica::start(&registry.url(), "5m", &moto);
    for b in oci.blobs() {
        let url = format!(
            "{}/v2/library/multi/blobs/{}",
            empty.archway.url(),
            b.digest
        );
        let r = e2e::http::get(&url, &[]).expect("a blob GET");
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        assert!(r.body == b.data, "{url}: the exact bytes");
    }
    let m = empty.metrics();
    let from = |source: &str| {
        metric(
            &m,
            &format!("archway_blob_fills_total{{source=\"{source}\"}}"),
        )
    };
    assert_eq!(from("bucket"), keys.len() as f64, "{m}");
    assert_eq!(from("upstream"), 0.0, "{m}");
}

#[test]
fn s3_down_l1_hits_are_served_and_misses_come_from_upstream_counted() {
    if !e2e_enabled("s3_down_l1_hits_are_served_and_misses_come_from_upstream_counted") {
        return;
    }
    let mut moto = moto();
    let (registry, fx) = upstream(&["library/multi", "library/other"]);
    let tmp = temp_dir("s3down");
    let a = Replica::start(&registry.url(), "5m", &moto);
    let oci = fx.image(Flavour::Oci, LINUX_ARM64_V8);
    let layout = skopeo_copy(
        tmp.path(),
        &format!("{}/multi:oci", a.archway.host()),
        "first",
        &ARM64,
    );
    check(&layout, oci);

    moto.stop();
    let before = a.archway.access_log().len();
    let started = Instant::now();
    // L1 hits: the same image again.
    let layout = skopeo_copy(
        tmp.path(),
        &format!("{}/multi:oci", a.archway.host()),
        "again",
        &ARM64,
    );
    check(&layout, oci);
    // Misses: an image whose manifest and blobs this replica has not seen.
    let layout = skopeo_copy(
        tmp.path(),
        &format!("{}/other:large", a.archway.host()),
        "miss",
        &[],
    );
    let large = fx.large.as_ref().expect("large");
    check(&layout, large);
    eprintln!("with storage down: both pulls in {:?}", started.elapsed());

    let log = a.archway.access_log()[before..].to_vec();
    assert_no_errors(&log, "multi");
    assert_no_errors(&log, "other");
    let hits: Vec<&Access> = on_repo(&log, "multi")
        .into_iter()
        .filter(|a| a.path().contains("/blobs/"))
        .collect();
    assert!(
        !hits.is_empty() && hits.iter().all(|a| a.cache.as_deref() == Some("hit")),
        "the second pull's blobs are L1 hits:\n{}",
        show(&log)
    );
    let m = a.metrics();
    let misses = large.blobs().count() as f64;
    assert_eq!(
        metric(&m, "archway_storage_bypassed_total{what=\"blob_read\"}"),
        misses,
        "each miss read upstream without the bucket, counted: {m}"
    );
    // The tag was looked up in the bucket (failed), fetched from upstream, and its record and
    // manifest could not be copied: each counted.
    for what in ["tag_read", "tag_write", "manifest_write"] {
        assert!(
            metric(
                &m,
                &format!("archway_storage_bypassed_total{{what=\"{what}\"}}")
            ) >= 1.0,
            "{what}: {m}"
        );
    }
    assert!(
        metric(
            &m,
            "archway_storage_operations_total{op=\"GetObject\",status=\"error\"}"
        ) + metric(
            &m,
            "archway_storage_operations_total{op=\"GetObject\",status=\"timeout\"}"
        ) >= misses,
        "{m}"
    );
}

/// The blob keys moto served to a presigned GET (`X-Amz-Signature` in the query: archway's own
/// requests sign with a header), from its request log (werkzeug's
/// `"GET /<bucket>/<key>?<query> HTTP/1.1" <status>`), with the status.
fn presigned_gets(moto_log: &str) -> Vec<(String, u16)> {
    let prefix = format!("\"GET /{BUCKET}/");
    moto_log
        .lines()
        .filter_map(|l| {
            let start = l.find(&prefix)? + prefix.len();
            let rest = &l[start..];
            let (target, after) = rest.split_once(" HTTP/1.1\" ")?;
            let (key, query) = target.split_once('?')?;
            if !query.contains("X-Amz-Signature=") {
                return None;
            }
            let status = after.split_whitespace().next()?.parse().ok()?;
            Some((key.to_owned(), status))
        })
        .collect()
}

#[test]
fn redirect_sends_skopeo_and_ctr_to_the_bucket_and_they_verify() {
    if !e2e_enabled("redirect_sends_skopeo_and_ctr_to_the_bucket_and_they_verify") {
        return;
    }
    let moto = moto();
    let (mut registry, fx) = upstream(&["library/multi"]);
    let tmp = temp_dir("redirect");

    // Replica A (redirect = false) pulls both images from upstream and fills the bucket.
    let a = Replica::start(&registry.url(), "5m", &moto);
    let blobs = pull_both(&a.archway, &fx, tmp.path(), "a");
    let oci = fx.image(Flavour::Oci, LINUX_ARM64_V8);
    let large = fx.large.as_ref().expect("large");
    let mut keys: Vec<String> = blobs
        .iter()
        .map(|b| format!("e2e/blobs/sha256/{}", b.hex()))
        .collect();
    for m in [fx.tag("oci"), &oci.manifest, &large.manifest] {
        keys.push(format!("e2e/manifests/sha256/{}", m.hex()));
    }
    keys.push("e2e/tags/docker.io/library/multi/oci".into());
    keys.push("e2e/tags/docker.io/library/multi/large".into());
    wait_in_bucket(&moto, &keys);
    assert_no_errors(&a.archway.access_log(), "multi");
    // Upstream gone: a client that fell back to it (ctr's hosts.toml `server`) would fail, so
    // every byte the clients get below comes from the bucket.
    registry.stop();

    // Replica B: redirect = true, an empty disk.
    let b = Replica::start_with(&registry.url(), "5m", &moto, "redirect = true\n");
    let moto_seen = moto.log().len();
    pull_both(&b.archway, &fx, tmp.path(), "b");

    let hosts = tmp.path().join("certs.d");
    write_hosts_toml(&hosts, "docker.io", &registry.url(), &b.archway.url());
    let containerd = Containerd::start(&tmp.path().join("ctd"));
    let hosts_dir = hosts.display().to_string();
    run_ok(
        &mut containerd.ctr(&[
            "image",
            "pull",
            "--hosts-dir",
            &hosts_dir,
            "--platform",
            "linux/arm64",
            "docker.io/library/multi:oci",
        ]),
        PULL_TIMEOUT,
    );
    // ctr verified every digest it fetched; it holds the arm64 child and all its blobs.
    let content = run_ok(
        &mut containerd.ctr(&["content", "ls", "-q"]),
        Duration::from_secs(30),
    )
    .stdout;
    for d in std::iter::once(&oci.manifest).chain(oci.blobs()) {
        assert!(
            content.contains(&d.digest),
            "containerd lacks {}:\n{content}",
            d.digest
        );
    }

    // Every blob GET B answered was a 307 to the bucket; it served no blob bytes itself.
    // skopeo asks for `multi`, ctr (a mirror) for `library/multi?ns=docker.io`.
    let log = b.archway.access_log();
    assert_no_errors(&log, "multi");
    assert_no_errors(&log, "library/multi");
    let blobs_of = |repo: &str, method: &str| -> Vec<Access> {
        on_repo(&log, repo)
            .into_iter()
            .filter(|a| a.path().contains("/blobs/") && a.method == method)
            .cloned()
            .collect()
    };
    let ctr_gets = blobs_of("library/multi", "GET");
    assert!(
        ctr_gets.len() >= oci.blobs().count(),
        "ctr's blob GETs:\n{}",
        show(&log)
    );
    let blob_gets: Vec<Access> = blobs_of("multi", "GET")
        .into_iter()
        .chain(ctr_gets)
        .collect();
    assert!(
        !blob_gets.is_empty()
            && blob_gets
                .iter()
                .all(|a| a.status == 307 && a.cache.as_deref() == Some("redirect")),
        "every blob GET redirected:\n{}",
        show(&log)
    );
    let redirected: BTreeSet<String> = blob_gets
        .iter()
        .filter_map(|a| a.path().rsplit('/').next())
        .map(str::to_owned)
        .collect();
    let wanted: BTreeSet<String> = blobs.iter().map(|b| b.digest.clone()).collect();
    assert_eq!(redirected, wanted, "each blob of both images redirected");
    for a in blobs_of("multi", "HEAD")
        .into_iter()
        .chain(blobs_of("library/multi", "HEAD"))
    {
        assert_eq!(a.status, 200, "a HEAD is answered here: {a}");
    }
    let m = b.metrics();
    assert_eq!(
        metric(
            &m,
            "archway_cache_results_total{kind=\"blob\",result=\"redirect\"}"
        ),
        blob_gets.len() as f64,
        "{m}"
    );
    for source in ["bucket", "upstream", "peer"] {
        assert_eq!(
            metric(
                &m,
                &format!("archway_blob_fills_total{{source=\"{source}\"}}")
            ),
            0.0,
            "B fetched no blob itself: {m}"
        );
    }
    // The signature never reaches archway's log.
    let b_log = b.archway.log();
    assert!(
        !b_log.contains("X-Amz-Signature") && !b_log.contains("x-amz-signature"),
        "a presigned URL in archway's log"
    );

    // The clients fetched each blob from moto through a presigned URL.
    let gets = presigned_gets(&moto.log()[moto_seen..]);
    let fetched: BTreeSet<String> = gets
        .iter()
        .filter(|(_, status)| *status == 200 || *status == 206)
        .filter_map(|(key, _)| key.strip_prefix("e2e/blobs/sha256/"))
        .map(|hex| format!("sha256:{hex}"))
        .collect();
    assert_eq!(fetched, wanted, "presigned GETs moto answered: {gets:?}");
    assert!(
        gets.iter()
            .all(|(_, status)| *status == 200 || *status == 206),
        "{gets:?}"
    );
}
