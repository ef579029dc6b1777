//! `deploy/monitoring/grafana-dashboard.json`, the Grafana dashboard of archway's metrics.
//!
//! - Always: it imports into any Grafana — a `datasource` variable every panel and target uses,
//!   no fixed uid or id, `job` and `instance` variables (multi, include-all) that every selector
//!   of every query filters on — and every metric it names is documented in operations.md.
//! - With `ARCHWAY_E2E=1` (or `CI=true`), where a missing tool fails it: a real Prometheus
//!   (Debian's `prometheus`) on loopback scrapes the admin listeners of a node archway with a
//!   parent archway in front of the fake registry (job `archway`) and of two fleet replicas on
//!   one moto bucket (job `archway-fleet`) while they serve real pulls (skopeo; the test client
//!   for the old-Docker conversion, failures, the fleet), a warm job, lease takeovers and a bucket
//!   outage. Then every panel's every query, its variables filled in as Grafana would, answers
//!   through Prometheus's HTTP API with a non-empty result, and each panel shows something that
//!   happened; with an instance that does not exist every query answers nothing (so every
//!   selector is filtered); the variables' own queries list the jobs and instances scraped; and
//!   every `archway_*` name in the dashboard is one Prometheus scraped from archway.

mod support;

#[allow(dead_code)]
mod e2e {
    pub mod fleet_kit;
    pub mod http;
    pub mod procs;
    pub mod s3;
    pub mod tools;
}

use archway::config::Config;
use archway::server::Archway;
use e2e::fleet_kit::{self, lease_json, list_keys, plant_sealed, replica_config};
use e2e::procs::{self, command, Daemon};
use e2e::tools::{find_tool, skopeo, temp_dir};
use http::StatusCode;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::fake_registry::pseudo_random_bytes;
use support::{clients, config_for, images, FakeRegistry, Fault, Kind, Reply, TestClient};

const DASHBOARD: &str = "deploy/monitoring/grafana-dashboard.json";
/// What every panel and target names as its data source: the dashboard's `datasource` variable.
const DATASOURCE: &str = "${datasource}";
const FILTERS: [&str; 2] = [r#"job=~"$job""#, r#"instance=~"$instance""#];

fn repo_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&repo_file(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// One query of one panel.
struct Target {
    panel: String,
    ref_id: String,
    expr: String,
}

/// The panels that show data (rows hold others; a collapsed row keeps its own in `panels`).
fn data_panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

fn targets(d: &Value) -> Vec<Target> {
    let mut out = Vec::new();
    for p in data_panels(d) {
        let title = p["title"].as_str().expect("a panel title");
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(Target {
                panel: title.to_owned(),
                ref_id: t["refId"].as_str().unwrap_or_default().to_owned(),
                expr: t["expr"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
    out
}

/// Each `archway_*` metric an expression names, with the matchers of its selector (`None`
/// without braces).
fn selectors(expr: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("archway_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        let matchers = rest
            .strip_prefix('{')
            .and_then(|r| r.find('}').map(|end| r[..end].to_owned()));
        out.push((name, matchers));
    }
    out
}

fn variable<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no variable {name}"))
}

/// A query variable's query, in either form Grafana writes (a string, or `{query: …}`).
fn variable_query(v: &Value) -> String {
    v["query"]
        .as_str()
        .or_else(|| v["query"]["query"].as_str())
        .unwrap_or_else(|| panic!("variable without a query: {v}"))
        .to_owned()
}

/// Every value under `key` anywhere in `v`, with its JSON path.
fn all_under<'a>(v: &'a Value, key: &str, path: String, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let here = format!("{path}.{k}");
                if k == key {
                    out.push((here.clone(), child));
                }
                all_under(child, key, here, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                all_under(child, key, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The metric names docs/operations.md's metrics table documents.
fn documented_metrics() -> BTreeSet<String> {
    repo_file("docs/operations.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `archway_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("archway_{n}"))
        .collect()
}

/// The dashboard imports into any Grafana and is wired to its variables; see the module doc.
#[test]
fn the_dashboard_imports_anywhere_and_every_query_is_filtered() {
    let d = dashboard();
    assert!(d["id"].is_null(), "id: {}", d["id"]);
    assert!(
        d["uid"].is_null(),
        "a fixed dashboard uid ties it to one Grafana: {}",
        d["uid"]
    );
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));

    // The data source is chosen on import: a `datasource` variable of Prometheus data sources…
    let ds = variable(&d, "datasource");
    assert_eq!(ds["type"], "datasource", "{ds}");
    assert_eq!(ds["query"], "prometheus", "{ds}");
    // …which is the only data source anything names (the built-in annotations aside).
    let mut refs = Vec::new();
    all_under(&d, "datasource", String::new(), &mut refs);
    assert!(refs.len() > 30, "{} datasource references", refs.len());
    for (path, r) in &refs {
        if path.starts_with(".annotations") && r["type"] == "grafana" {
            continue;
        }
        assert_eq!(
            **r,
            json!({"type": "prometheus", "uid": DATASOURCE}),
            "{path}"
        );
    }
    let mut uids = Vec::new();
    all_under(&d, "uid", String::new(), &mut uids);
    for (path, uid) in uids {
        assert!(
            path == ".uid" || uid == DATASOURCE || uid == "-- Grafana --",
            "{path}: a fixed uid {uid}"
        );
    }

    // job and instance: multi, with All, from archway's own series.
    let job = variable(&d, "job");
    let instance = variable(&d, "instance");
    assert_eq!(
        variable_query(job),
        "label_values(archway_requests_total, job)"
    );
    assert_eq!(
        variable_query(instance),
        r#"label_values(archway_requests_total{job=~"$job"}, instance)"#
    );
    for v in [job, instance] {
        assert_eq!(v["type"], "query", "{v}");
        assert_eq!(v["multi"], true, "{v}");
        assert_eq!(v["includeAll"], true, "{v}");
        assert_eq!(v["allValue"], ".*", "{v}");
        assert_eq!(v["datasource"]["uid"], DATASOURCE, "{v}");
    }

    // Every panel has queries; every selector of every query filters on both variables.
    let panels = data_panels(&d);
    assert!(panels.len() >= 20, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "{title}");
        assert!(titles.insert(title), "two panels titled {title}");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: gridPos");
        let ts = p["targets"].as_array().map(Vec::len).unwrap_or(0);
        assert!(ts > 0, "{title} has no targets");
    }
    let documented = documented_metrics();
    let mut named = BTreeSet::new();
    for t in targets(&d) {
        assert!(
            !t.expr.trim().is_empty(),
            "{} {}: no expr",
            t.panel,
            t.ref_id
        );
        let sels = selectors(&t.expr);
        assert!(!sels.is_empty(), "{}: {} names no metric", t.panel, t.expr);
        for (name, matchers) in sels {
            let m = matchers.unwrap_or_default();
            for f in FILTERS {
                assert!(
                    m.contains(f),
                    "{}: {name} in {} is not filtered by {f}",
                    t.panel,
                    t.expr
                );
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name)
                .to_owned();
            assert!(
                documented.contains(&family),
                "{}: {name} is not in operations.md's metrics table",
                t.panel
            );
            named.insert(family);
        }
    }
    // What issue 22 asks the dashboard to show.
    for family in [
        "archway_requests_total",
        "archway_served_bytes_total",
        "archway_upstream_bytes_saved_total",
        "archway_upstream_received_bytes_total",
        "archway_upstream_requests_total",
        "archway_upstream_request_duration_seconds",
        "archway_upstream_ratelimit_remaining",
        "archway_blob_store_bytes",
        "archway_blob_store_evictions_total",
        "archway_blob_fills_total",
        "archway_fleet_fills_total",
        "archway_fleet_lease_takeovers_total",
        "archway_fleet_peer_bytes_total",
        "archway_storage_operations_total",
        "archway_parent_requests_total",
        "archway_layer_conversions_total",
        "archway_warm_images_total",
    ] {
        assert!(named.contains(family), "no panel shows {family}");
    }
}

// === The real Prometheus ===

/// Whether the Prometheus test runs: with `ARCHWAY_E2E=1` or `CI=true` it must, and a missing
/// tool fails it.
fn prometheus_required(test: &str) -> bool {
    if !fleet_kit::required() {
        let _ = writeln!(
            std::io::stderr(),
            "\n######## {test}: skipped: needs prometheus, skopeo and moto_server \
             (ARCHWAY_E2E=1; scripts/test installs them) ########"
        );
        return false;
    }
    for tool in ["prometheus", "skopeo", "curl"] {
        assert!(
            find_tool(tool).is_some(),
            "{test} is required (ARCHWAY_E2E=1 or CI=true) but {tool} is missing: \
             scripts/test installs it (apt-get install prometheus skopeo curl)"
        );
    }
    true
}

/// Prometheus on a free loopback port, scraping `jobs` (name, admin addresses) every second.
struct Prometheus {
    daemon: Daemon,
    base: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(jobs: &[(&str, Vec<SocketAddr>)]) -> Prometheus {
        let dir = temp_dir("prometheus");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n",
        );
        for (job, targets) in jobs {
            let list: Vec<String> = targets.iter().map(|a| format!("'{a}'")).collect();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ));
        }
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).expect("prometheus.yml");
        let (daemon, port, ()) = procs::start_on_free_port(
            |port| {
                let mut cmd = command(find_tool("prometheus").expect("prometheus"));
                cmd.arg(format!("--config.file={}", file.display()))
                    .arg(format!(
                        "--storage.tsdb.path={}",
                        dir.path().join("data").display()
                    ))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .current_dir(dir.path());
                let log = dir.path().join(format!("prometheus-{port}.log"));
                (Daemon::spawn("prometheus", &cmd, &log), ())
            },
            |port| {
                e2e::http::get(&format!("http://127.0.0.1:{port}/-/ready"), &[])
                    .is_ok_and(|r| r.status == 200)
            },
        );
        Prometheus {
            daemon,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// `GET /api/v1/<path>?<params>`: its `data`, the call failing the test unless it succeeds.
    async fn api(&self, client: &TestClient, path: &str, params: &[(&str, &str)]) -> Value {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let url = format!("{}/api/v1/{path}?{}", self.base, query.join("&"));
        let r = client.get(&url).await;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        assert!(
            r.status == StatusCode::OK && v["status"] == "success",
            "{path} {params:?}: {} {}\nprometheus log:\n{}",
            r.status,
            r.text(),
            self.daemon.log_tail(20)
        );
        v["data"].clone()
    }

    /// Waits (up to 30 s) until `targets` archways are up, each scraped at least `scrapes`
    /// times, the last scrape of each after `after` (Unix seconds).
    async fn wait_scraped(&self, client: &TestClient, targets: usize, scrapes: u32, after: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = self.query(client, "up").await;
            let seen = self.query(client, "min(count_over_time(up[1m]))").await;
            let last = self.query(client, "min(timestamp(up))").await;
            let value = |v: &[Value]| {
                v.first()
                    .and_then(|s| s["value"][1].as_str())
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let all_up = up.len() == targets && up.iter().all(|s| s["value"][1] == "1");
            if all_up && value(&seen) >= f64::from(scrapes) && value(&last) > after {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not scrape every archway {scrapes} times after {after}: \
                 up {up:?}, scrapes {seen:?}, last {last:?}\n{}",
                self.daemon.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// An instant query's result vector.
    async fn query(&self, client: &TestClient, expr: &str) -> Vec<Value> {
        let data = self.api(client, "query", &[("query", expr)]).await;
        assert_eq!(data["resultType"], "vector", "{expr}: {data}");
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// `label_values(<selector>, <label>)` as Grafana asks it.
    async fn label_values(&self, client: &TestClient, query: &str) -> BTreeSet<String> {
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not label_values(…): {query}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let data = self
            .api(
                client,
                &format!("label/{}/values", label.trim()),
                &[("match[]", selector.trim())],
            )
            .await;
        data.as_array()
            .expect("label values")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }
}

/// Percent-encodes everything but the unreserved characters (RFC 3986).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Regex-escapes a value as Grafana's Prometheus data source does for `=~` inside a PromQL
/// string: `127.0.0.1` becomes `127\\.0\\.0\\.1` (the string's `\\` is the regex's `\`).
fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\\\\\");
        } else if "^$.|?*+()[]{}'".contains(c) {
            out.push_str("\\\\");
            out.push(c);
        } else {
            out.push(c);
        }
    }
    out
}

/// Fills in an expression's variables as Grafana would for a dashboard showing the last 5
/// minutes; `job` and `instance` are the regexes of the selected values.
fn interpolate(expr: &str, job: &str, instance: &str) -> String {
    let filled = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("${job}", job)
        .replace("$job", job)
        .replace("${instance}", instance)
        .replace("$instance", instance);
    assert!(!filled.contains('$'), "a variable left in {filled}");
    filled
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

fn admin_config(c: &mut Config) {
    c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
}

fn admin(a: &Archway) -> SocketAddr {
    a.admin_addr().expect("an admin listener")
}

fn base(a: &Archway) -> String {
    format!("http://{}", a.local_addr())
}

fn assert_ok(r: &Reply, what: &str) {
    assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());
    assert!(r.complete(), "{what}: body broke off: {:?}", r.body_error);
}

/// A client's pull of a single-platform image by tag: the manifest, then its config and layers.
async fn pull(client: &TestClient, base: &str, repo: &str, tag: &str, headers: &[(&str, &str)]) {
    let r = client
        .get_with(&format!("{base}/v2/{repo}/manifests/{tag}"), headers)
        .await;
    assert_ok(&r, &format!("{repo}:{tag}"));
    let m = r.json();
    let blobs = std::iter::once(&m["config"]).chain(m["layers"].as_array().into_iter().flatten());
    for b in blobs {
        let digest = b["digest"].as_str().expect("a digest");
        let r = client
            .get_with(&format!("{base}/v2/{repo}/blobs/{digest}"), headers)
            .await;
        assert_ok(&r, &format!("{repo}@{digest}"));
    }
}

/// `skopeo copy` of `image` from archway at `host` to a fresh directory under `tmp`.
async fn skopeo_pull(tmp: &Path, host: &str, image: &str, to: &str) {
    let tmp = tmp.to_owned();
    let (src, dst) = (
        format!("docker://{host}/{image}"),
        format!("dir:{}", tmp.join(to).display()),
    );
    tokio::task::spawn_blocking(move || {
        procs::run_ok(
            &mut skopeo(&tmp, &["copy", "--src-tls-verify=false", &src, &dst]),
            Duration::from_secs(60),
        )
    })
    .await
    .expect("skopeo ran");
}

/// Runs a warm job on `archway`'s admin API and waits until it is done; its report.
async fn warm(client: &TestClient, archway: &Archway, images: &[&str]) -> Value {
    let url = format!("http://{}/warm", admin(archway));
    let body = json!({ "images": images }).to_string();
    let r = tokio::task::spawn_blocking(move || {
        e2e::http::send("POST", &url, &[("content-type", "application/json")], body)
    })
    .await
    .expect("the POST ran")
    .expect("admin answers");
    assert_eq!(r.status, 202, "{}", r.text());
    let id = serde_json::from_slice::<Value>(&r.body).expect("json")["id"]
        .as_str()
        .expect("a job id")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client
            .get(&format!("http://{}/warm/{id}", admin(archway)))
            .await;
        let v = r.json();
        if v["state"] == "done" {
            return v;
        }
        assert!(Instant::now() < deadline, "warm job not done: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An upstream failure the single archway's parent sees: one 503 for a manifest.
async fn upstream_503(client: &TestClient, fake: &FakeRegistry, node: &Archway) {
    fake.fault_times(Some(Kind::Manifest), Fault::status(503), 1);
    let r = client
        .get(&format!("{}/v2/lib/app/manifests/missing", base(node)))
        .await;
    assert_ne!(r.status, StatusCode::OK, "{}", r.text());
    fake.clear_faults();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_panel_query_answers_through_a_real_prometheus() {
    let test = "every_panel_query_answers_through_a_real_prometheus";
    if !prometheus_required(test) {
        return;
    }
    support::init_tracing();
    let started = Instant::now();
    let d = dashboard();
    let tmp = temp_dir("dashboard");
    let client = TestClient::new();
    let mut moto = tokio::task::spawn_blocking(fleet_kit::moto)
        .await
        .expect("moto started");

    // Job `archway`: a node archway whose parent archway is in front of the fake registry (a
    // second parent listed is down), with a small cache and an admin listener each. The fake
    // wants tokens, as Docker Hub does, and sends a rate limit.
    let fake = FakeRegistry::builder().auth(true).start().await;
    fake.set_response_header("ratelimit-remaining", "76;w=21600");
    let parent_dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config_for(&fake, parent_dir.path());
    admin_config(&mut cfg);
    let parent = Archway::start(cfg).await.expect("the parent starts");
    let node_dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config_for(&fake, node_dir.path());
    admin_config(&mut cfg);
    cfg.cache.max_size = 300_000;
    let down = format!("http://127.0.0.1:{}", procs::free_port());
    cfg.parent.urls = [base(&parent), down]
        .iter()
        .map(|u| u.parse().expect("a parent url"))
        .collect();
    cfg.parent.connect_timeout = Duration::from_secs(1);
    cfg.parent.read_timeout = Duration::from_secs(5);
    let node = Archway::start(cfg).await.expect("the node starts");

    // Job `archway-fleet`: two replicas on one moto bucket, in front of a fake of their own.
    let fleet_fake = FakeRegistry::start().await;
    let replica_dirs: Vec<_> = (0..2)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let mut replicas = Vec::new();
    for dir in &replica_dirs {
        let (mut cfg, _) =
            replica_config(&fleet_fake, dir.path(), &moto.url(), Duration::from_secs(5));
        admin_config(&mut cfg);
        replicas.push(Archway::start(cfg).await.expect("a replica starts"));
    }

    let single = vec![admin(&node), admin(&parent)];
    let fleet = vec![admin(&replicas[0]), admin(&replicas[1])];
    let jobs = [
        ("archway", single.clone()),
        ("archway-fleet", fleet.clone()),
    ];
    let prom = tokio::task::spawn_blocking(move || Prometheus::start(&jobs))
        .await
        .expect("prometheus started");

    // Prometheus applies its targets a few seconds after it starts: traffic before its first
    // scrapes would be in no rate().
    prom.wait_scraped(&client, 4, 2, 0.0).await;

    // === Traffic on the single archway ===
    upstream_503(&client, &fake, &node).await;
    let first_error = Instant::now();
    // skopeo pulls an image through the node twice: misses filled through the parent, then hits.
    fake.sample_image_sized("lib/app", Some("v1"), 1, &[3_000, 60_000]);
    let node_host = node.local_addr().to_string();
    skopeo_pull(tmp.path(), &node_host, "lib/app:v1", "first").await;
    skopeo_pull(tmp.path(), &node_host, "lib/app:v1", "second").await;
    // More than the node's 300 kB cache holds: evictions.
    for i in 0..5u64 {
        let repo = format!("lib/big{i}");
        fake.sample_image_sized(&repo, Some("v1"), 10 + i, &[80_000]);
        pull(&client, &base(&node), &repo, "v1", &[]).await;
    }
    // Docker 20.10 cannot read zstd: its layer is converted.
    images::zstd_index(&fake, "lib/zstd", "v1", 7);
    let docker = clients::docker_2010();
    pull(&client, &base(&node), "lib/zstd", "v1", &docker.lines()).await;
    // A warm job through the node's admin API.
    fake.sample_image("lib/warm", "v1", 30);
    let report = warm(&client, &node, &["lib/warm:v1"]).await;
    assert_eq!(report["failed"], 0, "{report}");

    // === Traffic on the fleet ===
    let r0 = base(&replicas[0]);
    let r1 = base(&replicas[1]);
    // Both replicas ask for a slow cold blob at once: one fills it, the other streams it from
    // that one (peer bytes).
    let slow = fleet_fake.add_blob("lib/app", pseudo_random_bytes(41, 2 << 20));
    fleet_fake.fault(
        Some(Kind::Blob),
        Fault::SlowBody {
            chunk: 64 << 10,
            every: Duration::from_millis(50),
        },
    );
    let urls = [&r0, &r1].map(|b| format!("{b}/v2/lib/app/blobs/{slow}"));
    let (a, b) = tokio::join!(client.get(&urls[0]), client.get(&urls[1]));
    assert_ok(&a, "replica 0");
    assert_ok(&b, "replica 1");
    fleet_fake.clear_faults();
    // An image through replica 0; once its blobs are in the bucket, replica 1 fills from there.
    let img = fleet_fake.sample_image("lib/fleet", "v1", 42);
    pull(&client, &r0, "lib/fleet", "v1", &[]).await;
    let layer_key = format!("fleet/blobs/sha256/{}", img.layers[1].hex());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !list_keys(&moto, "fleet/blobs/").contains(&layer_key) {
        assert!(
            Instant::now() < deadline,
            "{layer_key} never reached the bucket"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pull(&client, &r1, "lib/fleet", "v1", &[]).await;
    // A lease its owner left to expire (it died): taken over.
    let orphan = fleet_fake.add_blob("lib/app", pseudo_random_bytes(43, 100_000));
    let expired = archway::cache::bucket::now_ms() - 10_000;
    plant_sealed(
        &moto,
        &format!("fleet/fills/sha256/{}", orphan.hex()),
        &lease_json("http://127.0.0.1:9", expired),
    );
    assert_ok(
        &client.get(&format!("{r0}/v2/lib/app/blobs/{orphan}")).await,
        "the orphaned fill",
    );
    // The bucket goes away: the replicas serve from upstream and count the errors.
    tokio::task::block_in_place(|| moto.stop());
    for seed in [44, 45] {
        let blob = fleet_fake.add_blob("lib/app", pseudo_random_bytes(seed, 50_000));
        assert_ok(
            &client.get(&format!("{r1}/v2/lib/app/blobs/{blob}")).await,
            "a blob with the bucket down",
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // A second upstream error, a few scrapes after the first: its series rises, not just appears.
    let since = first_error.elapsed();
    if since < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_secs(3) - since).await;
    }
    upstream_503(&client, &fake, &node).await;
    let traffic_done = unix_now();

    // Every target scraped at least three times, the last more than a second after the traffic.
    prom.wait_scraped(&client, 4, 3, traffic_done + 1.0).await;

    // The variables' own queries list the jobs and instances scraped.
    let job_query = variable_query(variable(&d, "job"));
    let instance_query = variable_query(variable(&d, "instance"));
    let jobs = prom.label_values(&client, &job_query).await;
    assert_eq!(
        jobs,
        BTreeSet::from(["archway".to_owned(), "archway-fleet".to_owned()])
    );
    let names = |addrs: &[SocketAddr]| -> BTreeSet<String> {
        addrs.iter().map(ToString::to_string).collect()
    };
    let all_instances = prom
        .label_values(&client, &interpolate(&instance_query, ".*", ".*"))
        .await;
    assert_eq!(all_instances, &names(&single) | &names(&fleet));
    let fleet_instances = prom
        .label_values(
            &client,
            &interpolate(&instance_query, "archway-fleet", ".*"),
        )
        .await;
    assert_eq!(fleet_instances, names(&fleet));

    // Every archway_* name in the dashboard is one Prometheus scraped from archway.
    let scraped: BTreeSet<String> = prom
        .api(&client, "label/__name__/values", &[])
        .await
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let targets = targets(&d);
    for t in &targets {
        for (name, _) in selectors(&t.expr) {
            assert!(
                scraped.contains(&name),
                "{}: {name} is not a metric archway exports (scraped: {:?})",
                t.panel,
                scraped
                    .iter()
                    .filter(|n| n.starts_with("archway_"))
                    .collect::<Vec<_>>()
            );
        }
    }

    // Every query, variables as "All" and as every value selected, answers; each panel shows
    // something that happened. With an instance that does not exist, nothing answers.
    let multi = |values: &BTreeSet<String>| -> String {
        let escaped: Vec<String> = values.iter().map(|v| regex_escape(v)).collect();
        format!("({})", escaped.join("|"))
    };
    let selections = [
        ("All", ".*".to_owned(), ".*".to_owned()),
        ("each value", multi(&jobs), multi(&all_instances)),
    ];
    let mut shown: BTreeMap<String, f64> = BTreeMap::new();
    let mut failures = Vec::new();
    for (what, job, instance) in &selections {
        for t in &targets {
            let expr = interpolate(&t.expr, job, instance);
            let result = prom.query(&client, &expr).await;
            if result.is_empty() {
                failures.push(format!("{} {} ({what}): empty: {expr}", t.panel, t.ref_id));
            }
            let most = result
                .iter()
                .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .fold(0.0f64, f64::max);
            let entry = shown.entry(t.panel.clone()).or_insert(0.0);
            *entry = entry.max(most);
            eprintln!(
                "{:>44} {} ({what}): {} series, max {most}",
                t.panel,
                t.ref_id,
                result.len()
            );
        }
    }
    for t in &targets {
        let expr = interpolate(&t.expr, ".*", "no-such-instance:1");
        let result = prom.query(&client, &expr).await;
        if !result.is_empty() {
            failures.push(format!(
                "{} {}: answers for an instance that does not exist: {expr}",
                t.panel, t.ref_id
            ));
        }
    }
    for (panel, most) in &shown {
        if *most <= 0.0 {
            failures.push(format!("{panel}: nothing above 0 in any query"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The values are the traffic's: the rate limit the fake sent, as the parent read it.
    let rate_limit = targets
        .iter()
        .find(|t| t.expr.contains("archway_upstream_ratelimit_remaining"))
        .expect("a rate-limit query");
    let result = prom
        .query(&client, &interpolate(&rate_limit.expr, ".*", ".*"))
        .await;
    let parent_instance = admin(&parent).to_string();
    assert!(
        result
            .iter()
            .any(|s| s["metric"]["instance"] == parent_instance.as_str()
                && s["metric"]["upstream"] == "fake"
                && s["value"][1] == "76"),
        "{result:?}"
    );
    eprintln!(
        "{test}: {} queries of {} panels, {:.1} s",
        targets.len(),
        shown.len(),
        started.elapsed().as_secs_f64()
    );

    for r in replicas {
        r.shutdown().await;
    }
    node.shutdown().await;
    parent.shutdown().await;
}
