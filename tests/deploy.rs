//! The deployment files in `deploy/`: the example configs (always), and, where the tools are
//! (required with `ARCHWAY_E2E=1` or `CI=true`, like the e2e tier), the kustomize render of the
//! Kubernetes base and overlays (node-cache, fleet, node-cache-fleet) and the systemd unit's
//! `systemd-analyze` checks.
//!
//! Every archway config in `deploy/` is loaded with `Config::from_toml`, the parser `archway
//! serve` uses; its `password_file`s are pointed at placeholder files first, since the real
//! paths exist only where it is deployed. The container image is tested in `tests/e2e.rs`.

use archway::config::Config;
use archway::route_policy::{LayersMode, RequestFacts, RewriteMode};
use archway::upstream_choice;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: impl AsRef<Path>) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether a test that needs `tools` runs: with `ARCHWAY_E2E=1` or `CI=true` it must, and a
/// missing tool fails it; otherwise it says loudly that it was skipped.
fn tools_required(test: &str, tools: &[&str]) -> bool {
    let required = std::env::var("ARCHWAY_E2E").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true");
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| find_tool(t).is_none())
        .collect();
    if !required {
        let _ = writeln!(
            std::io::stderr(),
            "\n######## {test}: skipped: set ARCHWAY_E2E=1 to run it (scripts/test does) ########"
        );
        return false;
    }
    assert!(
        missing.is_empty(),
        "{test} is required (ARCHWAY_E2E=1 or CI=true) but these tools are missing: {}. \
         scripts/test installs them (apt-get install kubernetes-client systemd prometheus)",
        missing.join(", ")
    );
    true
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    found
}

struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// === archway configs ===

/// Replaces the file named by `table[key]`, if any, with a placeholder file of the same name
/// under `secrets`.
fn placeholder_file(table: &mut toml::Table, key: &str, secrets: &Path) {
    if let Some(toml::Value::String(file)) = table.get(key) {
        let name = Path::new(file)
            .file_name()
            .unwrap_or_else(|| panic!("{key} names a file"));
        let placeholder = secrets.join(name);
        std::fs::write(&placeholder, "placeholder\n").unwrap();
        table.insert(
            key.into(),
            toml::Value::String(placeholder.display().to_string()),
        );
    }
}

/// Loads an archway config as `archway serve` would, with each secret file (`password_file`,
/// `parent_password_file`, the `[storage]` key files, `fleet.secret_file`) replaced by a
/// placeholder file of the same name under `secrets`. Returns the config and its TOML table.
fn load_config(what: &str, text: &str, secrets: &Path) -> (Config, toml::Table) {
    let raw: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{what} is not TOML: {e}"));
    let mut patched = raw.clone();
    if let Some(toml::Value::Array(upstreams)) = patched.get_mut("upstream") {
        for u in upstreams.iter_mut().filter_map(toml::Value::as_table_mut) {
            placeholder_file(u, "password_file", secrets);
        }
    }
    placeholder_file(&mut patched, "parent_password_file", secrets);
    if let Some(toml::Value::Table(storage)) = patched.get_mut("storage") {
        placeholder_file(storage, "s3_access_key_id_file", secrets);
        placeholder_file(storage, "s3_secret_access_key_file", secrets);
    }
    if let Some(toml::Value::Table(fleet)) = patched.get_mut("fleet") {
        placeholder_file(fleet, "secret_file", secrets);
    }
    let text = toml::to_string(&patched).unwrap();
    let cfg = Config::from_toml(&text)
        .unwrap_or_else(|e| panic!("{what} is refused by archway's config loader: {e}"));
    (cfg, raw)
}

fn upstream_names(cfg: &Config) -> BTreeSet<String> {
    cfg.upstreams
        .iter()
        .flat_map(|u| u.names().map(str::to_owned))
        .collect()
}

/// The upstream (by name) a request for `name` reaches with containerd's `?ns=`, a path
/// prefix, or neither.
fn upstream_for(cfg: &Config, name: &str, ns: Option<&str>) -> String {
    let target = upstream_choice::resolve(&cfg.upstreams, cfg.default_upstream(), name, ns, None)
        .unwrap_or_else(|e| panic!("{name} (ns={ns:?}) reaches no upstream: {e:?}"));
    cfg.upstreams[target.upstream].name.clone()
}

/// The platform and rewrite mode of the first route that matches, as archway decides.
fn route_for(cfg: &Config, facts: &RequestFacts<'_>) -> Option<(String, RewriteMode)> {
    cfg.routes
        .iter()
        .find(|r| r.matcher.matches(facts))
        .map(|r| (r.platform.clone().unwrap_or_default(), r.rewrite))
}

const REGISTRIES: [&str; 4] = ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"];

#[test]
fn example_archway_toml_serves_the_mixed_fleet() {
    let secrets = tempfile::tempdir().unwrap();
    let (cfg, raw) = load_config(
        "deploy/examples/archway.toml",
        &read("deploy/examples/archway.toml"),
        secrets.path(),
    );
    assert_eq!(cfg.data_dir, Path::new("/var/lib/archway"));
    assert_eq!(raw["admin_listen"].as_str(), Some("0.0.0.0:9090"));
    let ports: BTreeSet<u16> = cfg.listen.iter().map(|a| a.port()).collect();
    assert_eq!(ports, BTreeSet::from([5000, 5019, 5022]));

    // Docker Hub is the default (what Docker's registry-mirrors reach) and the registries of
    // both Linux and Windows images are there.
    assert_eq!(upstream_for(&cfg, "alpine", None), "docker.io");
    for registry in REGISTRIES.iter().chain(&["mcr.microsoft.com"]) {
        assert_eq!(upstream_for(&cfg, "some/image", Some(registry)), *registry);
    }
    assert_eq!(
        upstream_for(&cfg, "mcr.microsoft.com/windows/servercore", None),
        "mcr.microsoft.com",
        "Windows hosts reach mcr.microsoft.com by path prefix"
    );
    let hub = &cfg.upstreams[cfg.default_upstream().unwrap()];
    assert!(hub.credentials.is_some(), "Docker Hub pulls authenticated");

    let facts = |host: Option<&'static str>, port: u16, ip: &str| RequestFacts {
        host,
        local_port: Some(port),
        client_ip: Some(ip.parse().unwrap()),
        repository: "library/alpine",
        user_agent: None,
    };
    let ltsc2019 = Some(("windows/amd64:10.0.17763".to_owned(), RewriteMode::Always));
    let ltsc2022 = Some(("windows/amd64:10.0.20348".to_owned(), RewriteMode::Always));
    let arm64 = Some(("linux/arm64".to_owned(), RewriteMode::Legacy));
    let amd64 = Some(("linux/amd64".to_owned(), RewriteMode::Legacy));
    let cases = [
        // Windows hosts by mirror name, by port, and ahead of a Linux pool's subnet.
        (
            facts(Some("ltsc2019.mirror.internal:5000"), 5000, "10.30.0.7"),
            &ltsc2019,
        ),
        (
            facts(Some("archway.internal:5019"), 5019, "10.30.0.7"),
            &ltsc2019,
        ),
        (
            facts(Some("LTSC2022.mirror.internal"), 5000, "10.20.0.9"),
            &ltsc2022,
        ),
        (
            facts(Some("archway.internal:5022"), 5022, "10.10.3.4"),
            &ltsc2022,
        ),
        // The Linux pools by subnet.
        (
            facts(Some("archway.internal:5000"), 5000, "10.20.1.5"),
            &arm64,
        ),
        (
            facts(Some("archway.internal:5000"), 5000, "10.10.200.1"),
            &amd64,
        ),
        // Anyone else: no route, the client's own hints.
        (
            facts(Some("archway.internal:5000"), 5000, "192.0.2.1"),
            &None,
        ),
    ];
    for (facts, want) in &cases {
        assert_eq!(&route_for(&cfg, facts), *want, "{facts:?}");
    }
    // The NAS subnet's route converts zstd layers for everyone on it; every other route keeps
    // the default (by User-Agent).
    let layers_for = |facts: &RequestFacts<'_>| {
        cfg.routes
            .iter()
            .find(|r| r.matcher.matches(facts))
            .map(|r| r.layers)
    };
    let nas = facts(Some("archway.internal:5000"), 5000, "192.168.50.7");
    assert_eq!(layers_for(&nas), Some(LayersMode::Compatible));
    for (facts, _) in &cases {
        assert!(
            matches!(layers_for(facts), None | Some(LayersMode::Auto)),
            "{facts:?}"
        );
    }
}

#[test]
fn example_client_configs_reach_archway_upstreams() {
    let secrets = tempfile::tempdir().unwrap();
    let (cfg, _) = load_config(
        "deploy/examples/archway.toml",
        &read("deploy/examples/archway.toml"),
        secrets.path(),
    );

    // containerd: one hosts.toml per registry, archway first for pull and resolve; the
    // directory name is the ?ns= containerd sends, which must select that upstream.
    let dir = repo().join("deploy/examples/certs.d");
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let registry = entry.unwrap().file_name().to_string_lossy().into_owned();
        let hosts: toml::Table = read(format!("deploy/examples/certs.d/{registry}/hosts.toml"))
            .parse()
            .unwrap_or_else(|e| panic!("certs.d/{registry}/hosts.toml: {e}"));
        check_hosts_toml(&registry, &hosts, "http://archway.internal:5000");
        assert_eq!(upstream_for(&cfg, "org/app", Some(&registry)), registry);
        seen.insert(registry);
    }
    let want: BTreeSet<String> = REGISTRIES.iter().map(|s| s.to_string()).collect();
    assert_eq!(seen, want);

    // CRI-O and podman: each mirror's path names the upstream of the registry it mirrors.
    let conf: toml::Table = read("deploy/examples/registries.conf").parse().unwrap();
    let mut prefixes = BTreeSet::new();
    for r in conf["registry"].as_array().unwrap() {
        let prefix = r["prefix"].as_str().unwrap();
        let mirrors = r["mirror"].as_array().unwrap();
        assert!(!mirrors.is_empty(), "{prefix} has no mirror");
        for m in mirrors {
            let location = m["location"].as_str().unwrap();
            let path = location
                .strip_prefix("archway.internal:5000/")
                .unwrap_or_else(|| panic!("{prefix}: mirror {location} is not archway"));
            assert_eq!(
                upstream_for(&cfg, &format!("{path}/org/app"), None),
                prefix,
                "{location}"
            );
            assert_eq!(
                m["insecure"].as_bool(),
                Some(true),
                "archway speaks plain HTTP"
            );
        }
        prefixes.insert(prefix.to_owned());
    }
    assert_eq!(prefixes, want);

    // Docker on Linux and Windows: a mirror that is archway, allowed over plain HTTP. The
    // Windows one is a Server 2019 host: its mirror name selects the 10.0.17763 route.
    for (file, host) in [
        ("daemon.json", "archway.internal:5000"),
        ("daemon.windows.json", "ltsc2019.mirror.internal:5000"),
    ] {
        let json: Value = serde_json::from_str(&read(format!("deploy/examples/{file}")))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            json["registry-mirrors"],
            serde_json::json!([format!("http://{host}")])
        );
        assert_eq!(json["insecure-registries"], serde_json::json!([host]));
    }
    let facts = RequestFacts {
        host: Some("ltsc2019.mirror.internal:5000"),
        local_port: Some(5000),
        ..Default::default()
    };
    assert_eq!(
        route_for(&cfg, &facts).map(|(p, _)| p).as_deref(),
        Some("windows/amd64:10.0.17763")
    );
}

/// `server` is the registry itself over https, and the one host is `mirror`, for pull and
/// resolve (without resolve, tags would never reach archway).
fn check_hosts_toml(registry: &str, hosts: &toml::Table, mirror: &str) {
    let server = hosts["server"].as_str().unwrap();
    assert!(
        server.starts_with("https://"),
        "{registry}: server {server}"
    );
    let host = hosts["host"].as_table().unwrap();
    assert_eq!(
        host.keys().collect::<Vec<_>>(),
        [mirror],
        "{registry}: archway is the one mirror"
    );
    let caps = &host[mirror]["capabilities"];
    assert_eq!(
        caps,
        &toml::Value::Array(vec!["pull".into(), "resolve".into()]),
        "{registry}"
    );
}

#[test]
fn container_default_config_is_valid() {
    let secrets = tempfile::tempdir().unwrap();
    let (cfg, raw) = load_config(
        "deploy/container/archway.toml",
        &read("deploy/container/archway.toml"),
        secrets.path(),
    );
    // What the Dockerfile declares: the volume, the ports, the admin listener.
    let dockerfile = read("deploy/container/Dockerfile");
    assert_eq!(cfg.data_dir, Path::new("/var/lib/archway"));
    assert!(dockerfile.contains("VOLUME /var/lib/archway"));
    assert_eq!(cfg.listen, ["0.0.0.0:5000".parse().unwrap()]);
    assert_eq!(raw["admin_listen"].as_str(), Some("0.0.0.0:9090"));
    assert!(dockerfile.contains("EXPOSE 5000 9090"));
    assert!(dockerfile.contains("ENV ARCHWAY_CONFIG=/etc/archway/archway.toml"));
    assert!(dockerfile.contains("COPY archway.toml /etc/archway/archway.toml"));
}

// === Kubernetes ===

/// `kubectl kustomize <dir>`, every document parsed. kustomize 5 warns that `bases` is
/// deprecated (it is kept for Debian 12's kustomize 2.0.3); any other message fails the test.
fn kustomize(dir: &str) -> Vec<Value> {
    let out = run(Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join(dir)));
    assert!(
        out.success,
        "kubectl kustomize {dir} failed:\n{}",
        out.stderr
    );
    let unexpected: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("Warning: 'bases' is deprecated"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "kubectl kustomize {dir} complained:\n{}",
        unexpected.join("\n")
    );
    let docs: Vec<Value> = serde_norway::Deserializer::from_str(&out.stdout)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{dir}: {e}")))
        .collect();
    for d in &docs {
        assert!(
            d["kind"].is_string() && d["metadata"]["name"].is_string(),
            "{dir} rendered a document that is no resource: {d}"
        );
    }
    docs
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the render"))
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let all: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(all.len(), 1, "one {kind} expected");
    all[0]
}

fn list(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list: {v}"))
}

fn by_name<'a>(items: &'a Value, name: &str) -> &'a Value {
    list(items)
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {items}"))
}

/// The volume mounted at `path` in `container`, from the pod's `volumes`.
fn volume_at<'a>(pod: &'a Value, container: &Value, path: &str) -> &'a Value {
    let mount = list(&container["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == path)
        .unwrap_or_else(|| panic!("{} mounts nothing at {path}", container["name"]));
    by_name(&pod["volumes"], mount["name"].as_str().unwrap())
}

/// Checks the archway container of a pod spec (Deployment or DaemonSet) against what the
/// render also holds, and returns its config.
fn check_archway_pod(docs: &[Value], pod: &Value, secrets: &Path) -> (Config, toml::Table) {
    let c = by_name(&pod["containers"], "archway");
    assert_eq!(
        c["args"],
        serde_json::json!(["serve", "--config", "/etc/archway/archway.toml"])
    );

    // The probes: liveness and start-up on /healthz, readiness on /readyz, on the admin port.
    let admin = by_name(&c["ports"], "admin");
    assert_eq!(admin["containerPort"], 9090);
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "admin", "{probe}");
    }
    assert_eq!(by_name(&c["ports"], "registry")["containerPort"], 5000);

    for r in ["requests", "limits"] {
        for k in ["cpu", "memory"] {
            assert!(c["resources"][r][k].is_string(), "resources.{r}.{k} unset");
        }
    }

    // Non-root, read-only, nothing to escalate to.
    let psc = &pod["securityContext"];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["runAsGroup"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(sc["capabilities"]["add"].is_null());
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        psc["fsGroup"], 65532,
        "the Secret's files are readable by archway's group"
    );
    assert_eq!(pod["automountServiceAccountToken"], false);

    // The config comes from the ConfigMap in the render and loads.
    let config_volume = volume_at(pod, c, "/etc/archway");
    let cm_name = config_volume["configMap"]["name"].as_str().unwrap();
    let cm = find(docs, "ConfigMap", cm_name);
    let text = cm["data"]["archway.toml"].as_str().unwrap();
    let (cfg, raw) = load_config(&format!("ConfigMap {cm_name}"), text, secrets);
    assert_eq!(raw["admin_listen"].as_str(), Some("0.0.0.0:9090"));
    assert_eq!(cfg.listen, ["0.0.0.0:5000".parse().unwrap()]);
    assert_eq!(cfg.data_dir, Path::new("/var/lib/archway"));
    volume_at(pod, c, "/var/lib/archway");

    // Each password_file is a key of the Secret mounted where the config looks for it.
    let secret_volume = volume_at(pod, c, "/run/secrets/archway");
    let secret = find(
        docs,
        "Secret",
        secret_volume["secret"]["secretName"].as_str().unwrap(),
    );
    assert_eq!(secret_volume["secret"]["defaultMode"], 0o440);
    let files: Vec<&str> = raw["upstream"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u.get("password_file").and_then(|f| f.as_str()))
        .collect();
    assert!(
        !files.is_empty() || !cfg.parent.urls.is_empty(),
        "the config uses the Secret (a node with parents leaves upstream credentials to them)"
    );
    for f in files {
        let key = f
            .strip_prefix("/run/secrets/archway/")
            .unwrap_or_else(|| panic!("password_file {f} is not in the mounted Secret"));
        assert!(
            secret["stringData"][key].is_string(),
            "the Secret has no {key}"
        );
    }
    let upstreams = upstream_names(&cfg);
    for r in REGISTRIES {
        assert!(upstreams.contains(r), "no upstream {r}");
    }
    (cfg, raw)
}

/// The `archway` Service reaches the pods of `workload` on its named ports.
fn check_service(docs: &[Value], workload: &Value) {
    check_service_named(docs, "archway", workload);
}

/// The Service `name` reaches the pods of `workload` on its named ports.
fn check_service_named(docs: &[Value], name: &str, workload: &Value) {
    let svc = find(docs, "Service", name);
    let labels = &workload["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the Service selects the pods");
    }
    let c = by_name(
        &workload["spec"]["template"]["spec"]["containers"],
        "archway",
    );
    for p in list(&svc["spec"]["ports"]) {
        by_name(&c["ports"], p["targetPort"].as_str().unwrap());
    }
}

#[test]
fn kustomize_renders_and_is_checked() {
    if !tools_required("kustomize_renders_and_is_checked", &["kubectl"]) {
        return;
    }
    let secrets = tempfile::tempdir().unwrap();

    // The base: one Deployment with its cache on a claim.
    let base = kustomize("deploy/kubernetes/base");
    assert_eq!(
        kinds(&base),
        [
            "ConfigMap",
            "Deployment",
            "PersistentVolumeClaim",
            "Secret",
            "Service"
        ]
        .map(String::from)
        .into()
    );
    let deployment = one(&base, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    check_archway_pod(&base, pod, secrets.path());
    check_service(&base, deployment);
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let c = by_name(&pod["containers"], "archway");
    let cache = volume_at(pod, c, "/var/lib/archway");
    let claim = cache["persistentVolumeClaim"]["claimName"]
        .as_str()
        .unwrap();
    find(&base, "PersistentVolumeClaim", claim);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);

    // The node-cache overlay: a DaemonSet on every node instead, nothing of the Deployment.
    let overlay = kustomize("deploy/kubernetes/overlays/node-cache");
    let k = kinds(&overlay);
    assert!(k.contains("DaemonSet"), "{k:?}");
    assert!(
        !k.contains("Deployment") && !k.contains("PersistentVolumeClaim"),
        "{k:?}"
    );
    let ds = one(&overlay, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let (cfg, _) = check_archway_pod(&overlay, pod, secrets.path());
    check_service(&overlay, ds);
    let tolerations = list(&pod["tolerations"]);
    assert!(
        tolerations
            .iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null() && t["effect"].is_null()),
        "tolerates every taint: {tolerations:?}"
    );
    let c = by_name(&pod["containers"], "archway");
    let registry_port = by_name(&c["ports"], "registry");
    assert_eq!(registry_port["hostPort"], 5000);
    assert!(by_name(&c["ports"], "admin")["hostPort"].is_null());
    let cache = volume_at(pod, c, "/var/lib/archway");
    assert_eq!(cache["hostPath"]["path"], "/var/lib/archway");

    // The hostPath cache is made archway's before it starts.
    let init = &pod["initContainers"];
    let chown = by_name(init, "cache-dir");
    assert_eq!(
        chown["command"],
        serde_json::json!(["chown", "65532:65532", "/var/lib/archway"])
    );
    assert_eq!(volume_at(pod, chown, "/var/lib/archway"), cache);
    assert_eq!(
        chown["securityContext"]["capabilities"]["add"],
        serde_json::json!(["CHOWN"])
    );

    // The hosts.toml writer: the node's /etc/containerd/certs.d, one file per registry, each
    // pointing containerd at archway's hostPort on the node.
    let writer = by_name(init, "containerd-hosts");
    let certs_d = volume_at(pod, writer, "/certs.d");
    assert_eq!(certs_d["hostPath"]["path"], "/etc/containerd/certs.d");
    let hosts_cm = find(
        &overlay,
        "ConfigMap",
        volume_at(pod, writer, "/hosts")["configMap"]["name"]
            .as_str()
            .unwrap(),
    );
    let data = hosts_cm["data"].as_object().unwrap();
    let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, REGISTRIES.into());
    for (registry, text) in data {
        let hosts: toml::Table = text
            .as_str()
            .unwrap()
            .parse()
            .unwrap_or_else(|e| panic!("hosts.toml for {registry}: {e}"));
        check_hosts_toml(registry, &hosts, "http://127.0.0.1:5000");
        assert_eq!(upstream_for(&cfg, "org/app", Some(registry)), *registry);
    }
    for sc in [&writer["securityContext"], &chown["securityContext"]] {
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert!(sc["privileged"].is_null() || sc["privileged"] == false);
    }

    // Run the writer's script against a copy of the ConfigMap volume's real layout (each key a
    // symlink into ..data, which the script must skip) and an existing certs.d.
    let script = list(&writer["command"]);
    assert_eq!(script[..2], [Value::from("sh"), Value::from("-c")]);
    let script = script[2].as_str().unwrap();
    let sandbox = tempfile::tempdir().unwrap();
    let hosts_dir = sandbox.path().join("hosts");
    let certs_dir = sandbox.path().join("certs.d");
    let data_dir = hosts_dir.join("..2026_01_01_00_00_00.000000001");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::os::unix::fs::symlink(data_dir.file_name().unwrap(), hosts_dir.join("..data")).unwrap();
    for (registry, text) in data {
        std::fs::write(data_dir.join(registry), text.as_str().unwrap()).unwrap();
        std::os::unix::fs::symlink(Path::new("..data").join(registry), hosts_dir.join(registry))
            .unwrap();
    }
    std::fs::create_dir_all(certs_dir.join("docker.io")).unwrap();
    std::fs::write(certs_dir.join("docker.io/hosts.toml"), "server = \"old\"\n").unwrap();
    std::fs::create_dir_all(certs_dir.join("example.com")).unwrap();
    std::fs::write(certs_dir.join("example.com/hosts.toml"), "untouched\n").unwrap();
    let local = script
        .replace("/hosts/", &format!("{}/", hosts_dir.display()))
        .replace("/certs.d/", &format!("{}/", certs_dir.display()));
    assert_ne!(local, script);
    let out = run(Command::new("sh").arg("-c").arg(&local));
    assert!(
        out.success,
        "the writer failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    let mut written: Vec<String> = std::fs::read_dir(&certs_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written,
        [
            "docker.io",
            "example.com",
            "ghcr.io",
            "quay.io",
            "registry.k8s.io"
        ]
    );
    for (registry, text) in data {
        let dir = certs_dir.join(registry);
        assert_eq!(
            std::fs::read_to_string(dir.join("hosts.toml")).unwrap(),
            text.as_str().unwrap()
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left"
        );
    }
    assert_eq!(
        std::fs::read_to_string(certs_dir.join("example.com/hosts.toml")).unwrap(),
        "untouched\n"
    );
}

/// Bytes in a size as archway writes it (`40GiB`) or as Kubernetes does (`45Gi`).
fn size_bytes(s: &str) -> u64 {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("cannot read size {s:?}"));
    let unit = match &s[digits.len()..] {
        "" | "B" => 1,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        other => panic!("unit {other:?} in {s:?}"),
    };
    n * unit
}

/// The value of the env var `name` of `container`, with the variables before it (the ones
/// Kubernetes expands in `$(…)`).
fn env_var<'a>(container: &'a Value, name: &str) -> (&'a Value, Vec<&'a str>) {
    let env = list(&container["env"]);
    let i = env
        .iter()
        .position(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name}"));
    let before = env[..i].iter().filter_map(|e| e["name"].as_str()).collect();
    (&env[i], before)
}

/// The Secret key a file path refers to: the Secret volume mounted at the file's directory, and
/// the key named by its file name, present in the Secret in the render.
fn check_secret_file(docs: &[Value], pod: &Value, container: &Value, file: &str) {
    let path = Path::new(file);
    let dir = path.parent().unwrap().to_str().unwrap();
    let key = path.file_name().unwrap().to_str().unwrap();
    let volume = volume_at(pod, container, dir);
    let name = volume["secret"]["secretName"]
        .as_str()
        .unwrap_or_else(|| panic!("{dir} ({file}) is no Secret volume: {volume}"));
    assert_eq!(volume["secret"]["defaultMode"], 0o440, "{name}");
    let secret = find(docs, "Secret", name);
    let value = secret["stringData"][key]
        .as_str()
        .unwrap_or_else(|| panic!("the Secret {name} has no {key} ({file})"));
    assert!(
        value.starts_with("REPLACE-WITH-"),
        "{name}/{key} holds a placeholder, never a real value"
    );
}

#[test]
fn kustomize_fleet_overlays_are_checked() {
    if !tools_required("kustomize_fleet_overlays_are_checked", &["kubectl"]) {
        return;
    }
    let secrets = tempfile::tempdir().unwrap();

    // The fleet: the cluster Deployment three times on one bucket, its L1 on an emptyDir.
    let fleet = kustomize("deploy/kubernetes/overlays/fleet");
    assert_eq!(
        kinds(&fleet),
        [
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "Secret",
            "Service"
        ]
        .map(String::from)
        .into(),
        "no PersistentVolumeClaim"
    );
    let deployment = one(&fleet, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let (cfg, raw) = check_archway_pod(&fleet, pod, secrets.path());
    check_service(&fleet, deployment);
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    let c = by_name(&pod["containers"], "archway");
    for v in list(&pod["volumes"]) {
        assert!(v["persistentVolumeClaim"].is_null(), "a claim: {v}");
    }

    // L1: an emptyDir bounded a little above cache.max_size (room for downloads in flight).
    let cache = volume_at(pod, c, "/var/lib/archway");
    let limit = size_bytes(
        cache["emptyDir"]["sizeLimit"]
            .as_str()
            .unwrap_or_else(|| panic!("the cache is no bounded emptyDir: {cache}")),
    );
    let max_size = size_bytes(raw["cache"]["max_size"].as_str().unwrap());
    assert!(
        max_size < limit && limit <= max_size + max_size / 4,
        "cache.max_size {max_size} in step with the emptyDir's sizeLimit {limit}"
    );
    let ephemeral = c["resources"]["requests"]["ephemeral-storage"]
        .as_str()
        .expect("the emptyDir's room is requested");
    assert!(size_bytes(ephemeral) >= limit);

    // The disruption budget and the anti-affinity select these pods.
    let pdb = one(&fleet, "PodDisruptionBudget");
    assert!(
        pdb["spec"]["maxUnavailable"] == 1 || pdb["spec"]["minAvailable"] == 2,
        "{pdb}"
    );
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the PodDisruptionBudget selects the pods");
    }
    let preferred = list(
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"],
    );
    let term = &preferred[0]["podAffinityTerm"];
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
    for (k, v) in term["labelSelector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the anti-affinity selects the replicas");
    }

    // The headless Service besides the ClusterIP one, on the same pods.
    let peers = find(&fleet, "Service", "archway-peers");
    assert_eq!(peers["spec"]["clusterIP"], "None");
    check_service_named(&fleet, "archway-peers", deployment);
    assert_eq!(
        find(&fleet, "Service", "archway")["spec"]["type"],
        "ClusterIP"
    );

    // peer_url from the pod IP (downward API), defined after POD_IP so that $(POD_IP) expands.
    let (pod_ip, _) = env_var(c, "POD_IP");
    assert_eq!(pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    let (peer_url, before) = env_var(c, "ARCHWAY_PEER_URL");
    assert_eq!(peer_url["value"], "http://$(POD_IP):5000");
    assert!(before.contains(&"POD_IP"), "POD_IP comes first: {before:?}");
    assert_eq!(by_name(&c["ports"], "registry")["containerPort"], 5000);

    // [storage] and [fleet], their secret files each a key of a Secret mounted there.
    let storage = cfg.storage.as_ref().expect("[storage]");
    assert!(!storage.s3_bucket.is_empty());
    assert!(
        storage.credentials.is_some(),
        "the keys come from the mounted Secret"
    );
    let fleet_cfg = cfg.fleet.as_ref().expect("[fleet]");
    assert_eq!(
        fleet_cfg.peer_url, None,
        "peer_url comes from ARCHWAY_PEER_URL, one per pod"
    );
    let raw_storage = raw["storage"].as_table().unwrap();
    assert!(raw_storage["s3_bucket"].is_str());
    assert!(
        raw_storage
            .get("redirect")
            .is_none_or(|r| r.as_bool() == Some(false)),
        "presigned redirects are not there yet"
    );
    for file in [
        raw_storage["s3_access_key_id_file"].as_str().unwrap(),
        raw_storage["s3_secret_access_key_file"].as_str().unwrap(),
        raw["fleet"]["secret_file"].as_str().unwrap(),
    ] {
        check_secret_file(&fleet, pod, c, file);
    }
    let fleet_upstreams = upstream_names(&cfg);

    // The node tier with the fleet as its parent: the node-cache DaemonSet, its config naming
    // the fleet's Service.
    let node = kustomize("deploy/kubernetes/overlays/node-cache-fleet");
    let k = kinds(&node);
    assert!(k.contains("DaemonSet"), "{k:?}");
    assert!(
        !k.contains("Deployment") && !k.contains("PersistentVolumeClaim"),
        "{k:?}"
    );
    let ds = one(&node, "DaemonSet");
    let (node_cfg, node_raw) =
        check_archway_pod(&node, &ds["spec"]["template"]["spec"], secrets.path());
    check_service(&node, ds);
    let parents: Vec<String> = node_cfg.parent.urls.iter().map(|u| u.to_string()).collect();
    assert!(!parents.is_empty(), "the node config has parent");
    let svc_port = by_name(
        &find(&fleet, "Service", "archway")["spec"]["ports"],
        "registry",
    )["port"]
        .as_u64()
        .unwrap();
    for p in &node_raw["parent"].as_array().unwrap()[..] {
        let p = p.as_str().unwrap();
        assert!(
            p.starts_with("http://archway.") && p.ends_with(&format!(":{svc_port}")),
            "the parent {p} is the fleet's Service"
        );
    }
    assert!(node_cfg.storage.is_none() && node_cfg.fleet.is_none());
    // One parent: marking it down after one failed connection would fail every cold pull for
    // parent_down_for, while the Service already sends only to ready replicas.
    assert_eq!(parents.len(), 1);
    assert!(node_cfg.parent.down_for.is_zero());
    // Every name the node asks for (?ns=) is an upstream of the fleet, and the node holds no
    // upstream credentials.
    for name in upstream_names(&node_cfg) {
        assert!(fleet_upstreams.contains(&name), "the fleet has no {name}");
    }
    assert!(node_cfg.upstreams.iter().all(|u| u.credentials.is_none()));
}

// === systemd ===

/// The unit's `[Service]` settings, in order (a key may repeat).
fn service_settings(unit: &str) -> Vec<(String, String)> {
    let mut section = "";
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" {
            let (k, v) = line.split_once('=').expect("key=value");
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}

#[test]
fn systemd_unit_is_hardened() {
    let unit = read("deploy/systemd/archway.service");
    let settings = service_settings(&unit);
    let get = |k: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (k, v) in [
        (
            "ExecStart",
            "/usr/local/bin/archway serve --config /etc/archway/archway.toml",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
        ("LimitNOFILE", "65536"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "archway"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(get(k), [v], "{k}");
    }
    assert_eq!(
        get("SystemCallFilter"),
        ["@system-service", "~@privileged @resources"]
    );
    // StateDirectory=archway is /var/lib/archway: the example config caches there.
    let secrets = tempfile::tempdir().unwrap();
    let (cfg, _) = load_config(
        "deploy/examples/archway.toml",
        &read("deploy/examples/archway.toml"),
        secrets.path(),
    );
    assert_eq!(cfg.data_dir, Path::new("/var/lib/archway"));
}

#[test]
fn systemd_unit_verifies() {
    if !tools_required("systemd_unit_verifies", &["systemd-analyze"]) {
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("archway.service");
    let text = read("deploy/systemd/archway.service")
        .replace("/usr/local/bin/archway", env!("CARGO_BIN_EXE_archway"));
    std::fs::write(&unit, text).unwrap();

    let out = run(Command::new("systemd-analyze").arg("verify").arg(&unit));
    assert!(
        out.success,
        "systemd-analyze verify failed:\n{}{}",
        out.stdout, out.stderr
    );
    let ours: Vec<&str> = out
        .stderr
        .lines()
        .chain(out.stdout.lines())
        .filter(|l| l.contains("archway"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify warns about the unit:\n{}",
        ours.join("\n")
    );

    // The exposure score systemd computes from the sandboxing settings: 1.1 ("OK") when
    // written; 1.5 leaves room for systemd versions that weigh settings differently.
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager", "--threshold=15"])
        .arg(&unit));
    let overall = out
        .stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level:\n{}{}", out.stdout, out.stderr));
    let score: f64 = overall
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {overall:?}"));
    assert!(score <= 1.5, "{overall}");
    assert!(
        overall.contains(" OK") || overall.contains("PERFECT"),
        "{overall}"
    );
    assert!(out.success, "above the threshold:\n{}", out.stdout);
}

/// deploy/kubernetes/warm: a CronJob whose init container lists the cluster's images with
/// read-only RBAC (list pods, nothing else) and whose main container's arguments are ones the
/// real `archway warm` takes (it runs them against a dead server: exit 1 naming the image, not
/// 2, a usage error).
#[test]
fn warm_cronjob_renders_and_its_arguments_are_archways() {
    if !tools_required(
        "warm_cronjob_renders_and_its_arguments_are_archways",
        &["kubectl"],
    ) {
        return;
    }
    let docs = kustomize("deploy/kubernetes/warm");
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CronJob",
            "ServiceAccount"
        ]
        .map(String::from)
        .into_iter()
        .collect()
    );
    let role = one(&docs, "ClusterRole");
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}])
    );
    let cron = one(&docs, "CronJob");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "archway-warm");
    let list = &pod["initContainers"][0];
    assert!(list["args"][0]
        .as_str()
        .unwrap()
        .contains("kubectl get pods -A -o jsonpath='{..image}'"));
    let warm = &pod["containers"][0];
    let args: Vec<String> = warm["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(args[0], "warm");
    let server = args.iter().position(|a| a == "--server").unwrap();
    assert_eq!(args[server + 1], "http://archway:5000");
    // The same arguments, with the list and the server swapped for local ones.
    let dir = tempfile::tempdir().unwrap();
    let list_file = dir.path().join("images.txt");
    std::fs::write(&list_file, "docker.io/library/alpine:3.20\n").unwrap();
    let mut local = args.clone();
    local[server + 1] = "http://127.0.0.1:9".into();
    let f = local.iter().position(|a| a == "-f").unwrap();
    local[f + 1] = list_file.to_string_lossy().into_owned();
    let out = run(Command::new(env!("CARGO_BIN_EXE_archway"))
        .args(&local)
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("ARCHWAY_SERVER"));
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("1 of 1 failed: docker.io/library/alpine:3.20"),
        "{}",
        out.stderr
    );
}

/// deploy/monitoring/alerts.yaml: `promtool check rules` accepts it, `promtool test rules`
/// passes its unit tests (each alert fires on a sick series and stays silent on a healthy one),
/// every `archway_*` metric it names is in docs/operations.md's metrics table, and
/// operations.md has a runbook line for each alert.
#[test]
fn alert_rules_check_and_pass_their_unit_tests() {
    if !tools_required("alert_rules_check_and_pass_their_unit_tests", &["promtool"]) {
        return;
    }
    let dir = repo().join("deploy/monitoring");
    let check = run(Command::new("promtool")
        .args(["check", "rules", "alerts.yaml"])
        .current_dir(&dir));
    assert!(check.success, "{}\n{}", check.stdout, check.stderr);
    let test = run(Command::new("promtool")
        .args(["test", "rules", "alerts.test.yaml"])
        .current_dir(&dir));
    assert!(test.success, "{}\n{}", test.stdout, test.stderr);

    let rules = read("deploy/monitoring/alerts.yaml");
    let ops = read("docs/operations.md");
    let documented: BTreeSet<String> = ops
        .lines()
        .filter_map(|l| l.strip_prefix("| `archway_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("archway_{n}"))
        .collect();
    let mut named = BTreeSet::new();
    for (i, _) in rules.match_indices("archway_") {
        let name: String = rules[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        named.insert(name);
    }
    assert!(named.len() > 10, "{named:?}");
    for n in &named {
        assert!(
            documented.contains(n),
            "alerts.yaml names {n}, which archway does not document"
        );
    }
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 14);
    let operations = read("docs/operations.md");
    let runbook = &operations[operations
        .find("### Alerts")
        .expect("docs/operations.md has an Alerts section")..];
    let runbook = &runbook[..runbook.find("\n## ").unwrap_or(runbook.len())];
    for a in alerts {
        assert!(
            runbook.contains(&format!("| `{a}` |")),
            "no runbook line for {a} in docs/operations.md's Alerts section"
        );
    }
}

/// deploy/kubernetes/monitoring: the PrometheusRule is alerts.yaml's groups word for word, and
/// the PodMonitor (and the pods' scrape annotations) reach the admin listener of every archway
/// pod the base and overlays run, as job="archway" (ArchwayDown's selector).
#[test]
fn monitoring_kustomization_scrapes_every_archway_pod_and_carries_the_alerts() {
    if !tools_required(
        "monitoring_kustomization_scrapes_every_archway_pod_and_carries_the_alerts",
        &["kubectl"],
    ) {
        return;
    }
    let docs = kustomize("deploy/kubernetes/monitoring");
    assert_eq!(
        kinds(&docs),
        ["PodMonitor", "PrometheusRule"].map(String::from).into()
    );
    let rule = one(&docs, "PrometheusRule");
    let alerts: Value = serde_norway::from_str(&read("deploy/monitoring/alerts.yaml")).unwrap();
    assert_eq!(
        rule["spec"]["groups"], alerts["groups"],
        "deploy/kubernetes/monitoring/prometheusrule.yaml differs from deploy/monitoring/alerts.yaml: regenerate it"
    );
    assert!(rule["spec"]["groups"][0]["rules"]
        .as_array()
        .is_some_and(|r| r.len() == 14));

    let monitor = one(&docs, "PodMonitor");
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    let port = endpoint["port"].as_str().unwrap();
    let job_label = monitor["spec"]["jobLabel"].as_str().unwrap();
    for (dir, kind) in [
        ("deploy/kubernetes/base", "Deployment"),
        ("deploy/kubernetes/overlays/fleet", "Deployment"),
        ("deploy/kubernetes/overlays/node-cache", "DaemonSet"),
    ] {
        let rendered = kustomize(dir);
        let workload = one(&rendered, kind);
        let template = &workload["spec"]["template"];
        let labels = &template["metadata"]["labels"];
        for (k, v) in selector {
            assert_eq!(
                &labels[k], v,
                "{dir}: the PodMonitor does not select its pods"
            );
        }
        assert_eq!(labels[job_label], "archway", "{dir}: job label");
        let container = by_name(&template["spec"]["containers"], "archway");
        let admin = by_name(&container["ports"], port);
        let annotations = &template["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{dir}");
        assert_eq!(
            annotations["prometheus.io/port"],
            admin["containerPort"].to_string(),
            "{dir}: the scrape annotation names another port"
        );
        assert_eq!(annotations["prometheus.io/path"], "/metrics", "{dir}");
        // And that port is the admin listener the config binds.
        let config =
            &rendered.iter().find(|d| d["kind"] == "ConfigMap").unwrap()["data"]["archway.toml"];
        assert!(
            config
                .as_str()
                .unwrap()
                .contains(&format!(":{}\"", admin["containerPort"])),
            "{dir}: admin_listen is not on port {}",
            admin["containerPort"]
        );
    }
}
