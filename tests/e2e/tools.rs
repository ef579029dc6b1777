//! The real programs of the e2e tier, each started on loopback with every path under a temp dir:
//! Distribution (`docker-registry`), archway itself, containerd + ctr, dockerd + docker, skopeo.

use crate::e2e::http;
use crate::e2e::procs::{self, command, Daemon};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The Debian 20.10 client that matches the engine; another `docker` on PATH may be newer.
pub const DOCKER_CLI: &str = "/usr/bin/docker";

/// Every program the tier runs, as found on PATH (plus the sbin directories, where Debian puts
/// dockerd).
const TOOLS: [&str; 6] = [
    "docker-registry",
    "skopeo",
    "containerd",
    "ctr",
    "dockerd",
    DOCKER_CLI,
];

pub fn find_tool(name: &str) -> Option<PathBuf> {
    if name.starts_with('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    found
}

pub fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| panic!("{name} not found"))
}

/// Whether the e2e tier runs. With `ARCHWAY_E2E=1` or `CI=true` it must, and a missing tool is a
/// failure; otherwise the test says loudly that it was skipped (a developer convenience only).
pub fn e2e_enabled(test: &str) -> bool {
    let required = std::env::var("ARCHWAY_E2E").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true");
    if !required {
        // Straight to stderr: the test harness captures eprintln! of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n######## {test}: skipped: set ARCHWAY_E2E=1 to run the end-to-end tier \
             (scripts/test does) ########"
        );
        return false;
    }
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| find_tool(t).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "the e2e tier is required (ARCHWAY_E2E=1 or CI=true) but these tools are missing: {}. \
         scripts/test installs them; or: apt-get install docker-registry skopeo containerd docker.io",
        missing.join(", ")
    );
    true
}

pub fn temp_dir(prefix: &str) -> TempDir {
    // Short paths: containerd and dockerd put unix sockets under them (108-byte limit).
    tempfile::Builder::new()
        .prefix(&format!("aw-{prefix}-"))
        .tempdir_in("/tmp")
        .expect("temp dir under /tmp")
}

/// True if something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
        .is_ok()
}

fn ping_ok(base: &str) -> bool {
    http::get(&format!("{base}/v2/"), &[]).is_ok_and(|r| r.status == 200)
}

fn registry_answers(base: &str) -> bool {
    http::get(&format!("{base}/v2/"), &[]).is_ok_and(|r| matches!(r.status, 200 | 401))
}

// === Distribution ===

/// A CNCF Distribution registry (`docker-registry serve`) on a free loopback port.
pub struct Registry {
    daemon: Daemon,
    pub port: u16,
}

impl Registry {
    /// Starts a registry whose storage the watchdog removes when it exits, so that even the
    /// shared one, held in a static, leaves nothing behind.
    pub fn start() -> Registry {
        Self::start_with("")
    }

    /// Like [`Registry::start`], with `extra` (YAML, top-level keys) appended to its config.
    pub fn start_with(extra: &str) -> Registry {
        let (daemon, port, ()) = procs::start_on_free_port(
            |port| {
                let dir = temp_dir("registry").keep();
                let config = dir.join("config.yml");
                std::fs::write(
                    &config,
                    format!(
                        "version: 0.1\nlog: {{level: warn}}\nstorage:\n  \
                         cache: {{blobdescriptor: inmemory}}\n  \
                         filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\n\
                         http: {{addr: 127.0.0.1:{port}, secret: not-a-secret}}\n{extra}",
                        dir.join("storage").display()
                    ),
                )
                .expect("write registry config");
                let mut cmd = command(tool("docker-registry"));
                cmd.arg("serve").arg(&config);
                let log = dir.join("registry.log");
                let daemon = Daemon::spawn_owning("docker-registry", &cmd, &log, Some(&dir));
                (daemon, ())
            },
            // With `auth:` in `extra`, /v2/ answers 401: any answer means it is up.
            |port| registry_answers(&format!("http://127.0.0.1:{port}")),
        );
        Registry { daemon, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the registry and makes sure nothing answers on its port any more.
    pub fn stop(&mut self) {
        self.daemon.stop(Duration::from_secs(10));
        assert!(
            !port_open(self.port),
            "the upstream port {} still accepts connections after stopping the registry",
            self.port
        );
    }
}

// === archway ===

/// One line of archway's access log (`target: archway::access`).
#[derive(Debug, Clone)]
pub struct Access {
    pub method: String,
    /// Path and, when the request had one, `?query`.
    pub uri: String,
    pub status: u16,
    pub bytes: Option<u64>,
    pub upstream: Option<String>,
    pub cache: Option<String>,
    /// Where the body's bytes came from (`cache`, `upstream`, `bucket`, `peer`, `parent`).
    #[allow(dead_code)] // read by the e2e_storage binary, which shares this module
    pub source: Option<String>,
    /// How a blob answer was had (`hit`, `joined`, `upstream`, `relayed`, …).
    pub origin: Option<String>,
    /// Whether the whole body reached the client (archway logs when the body ends or drops).
    pub complete: Option<bool>,
    pub error: Option<String>,
    /// The platform a tag answer was resolved for and why, e.g.
    /// `linux/arm64 (route (rewrite = always))`, with `, converted` for an OCI→schema2 answer.
    pub rewrite: Option<String>,
    /// The parts of a `multipart/byteranges` answer.
    pub ranges: Option<u64>,
    /// `zstd` on a tag answer whose zstd layers were replaced by tars for this client.
    #[allow(dead_code)] // read by tests/e2e_zstd.rs
    pub converted: Option<String>,
}

impl Access {
    /// One line of archway's JSON log, if it is an access-log line.
    pub fn parse(line: &str) -> Option<Access> {
        let v: Value = serde_json::from_str(line).ok()?;
        if v.get("target")?.as_str()? != "archway::access" {
            return None;
        }
        let f = v.get("fields")?;
        let s = |k: &str| f.get(k).and_then(Value::as_str).map(str::to_owned);
        let mut uri = s("path")?;
        if let Some(q) = s("query").filter(|q| !q.is_empty()) {
            if !uri.contains('?') {
                uri = format!("{uri}?{q}");
            }
        }
        Some(Access {
            method: s("method")?,
            uri,
            status: f.get("status")?.as_u64()? as u16,
            bytes: f.get("bytes").and_then(Value::as_u64),
            upstream: s("upstream"),
            cache: s("cache"),
            source: s("source"),
            origin: s("origin"),
            complete: f.get("complete").and_then(Value::as_bool),
            error: s("error"),
            rewrite: s("rewrite"),
            ranges: f.get("ranges").and_then(Value::as_u64),
            converted: s("converted"),
        })
    }

    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> &str {
        self.uri.split_once('?').map(|(_, q)| q).unwrap_or("")
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} -> {} cache={} upstream={} bytes={}{}{}{}{}",
            self.method,
            self.uri,
            self.status,
            self.cache.as_deref().unwrap_or("-"),
            self.upstream.as_deref().unwrap_or("-"),
            self.bytes.map_or("-".into(), |b| b.to_string()),
            self.origin
                .as_deref()
                .map(|o| format!(" origin={o}"))
                .unwrap_or_default(),
            self.rewrite
                .as_deref()
                .map(|r| format!(" rewrite={r:?}"))
                .unwrap_or_default(),
            self.ranges
                .map(|n| format!(" ranges={n}"))
                .unwrap_or_default(),
            match (self.complete, &self.error) {
                (Some(false), _) => " INCOMPLETE".to_owned(),
                (_, Some(e)) => format!(" error={e:?}"),
                _ => String::new(),
            }
        )
    }
}

pub fn show(entries: &[Access]) -> String {
    entries
        .iter()
        .map(|a| format!("  {a}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a test adds to archway's start: top-level config lines (before any table) and
/// environment variables removed from archway's process.
#[derive(Debug, Default, Clone)]
pub struct Setup {
    pub top: String,
    pub env_remove: Vec<String>,
    /// Sets `ARCHWAY_PEER_URL` to this archway's own listener (`[fleet]` replicas).
    pub peer_url: bool,
    /// `data_dir` (kept by the caller, e.g. for a restart on the same disk); else one in the
    /// archway's own temporary directory.
    pub data_dir: Option<PathBuf>,
}

/// archway, built by cargo for this test run, configured with one default upstream named
/// `docker.io` (so it also answers the Docker Hub mirror paths).
pub struct Archway {
    daemon: Daemon,
    pub port: u16,
    /// Every listen port, the main one first.
    pub ports: Vec<u16>,
    _dir: TempDir,
    scheme: &'static str,
}

impl Archway {
    pub fn start(upstream_url: &str, tag_ttl: &str) -> Archway {
        Self::start_full(
            upstream_url,
            tag_ttl,
            0,
            |_| String::new(),
            "",
            false,
            &Setup::default(),
        )
    }

    /// Like [`Archway::start`], with `setup`'s top-level keys and environment, and `extra`
    /// appended to the config file.
    #[allow(dead_code)] // used by the e2e_storage binary, which shares this module
    pub fn start_set_up(upstream_url: &str, tag_ttl: &str, extra: &str, setup: &Setup) -> Archway {
        Self::start_full(
            upstream_url,
            tag_ttl,
            0,
            |_| String::new(),
            extra,
            false,
            setup,
        )
    }

    /// Like [`Archway::start`], listening on `extra_listen` more free ports besides the main one
    /// (for per-port routes), with `routes(&ports)` appended to the config: `ports[0]` is the
    /// main port, then the extras in order.
    pub fn start_with(
        upstream_url: &str,
        tag_ttl: &str,
        extra_listen: usize,
        routes: impl Fn(&[u16]) -> String,
    ) -> Archway {
        Self::start_full(
            upstream_url,
            tag_ttl,
            extra_listen,
            routes,
            "",
            false,
            &Setup::default(),
        )
    }

    /// Like [`Archway::start`], with `extra` appended to the config file (e.g. `[tls]`, `[auth]`
    /// sections); `tls` says whether the listener speaks HTTPS. With either, readiness is the
    /// port accepting: archway reads certificates and auth files before it binds.
    #[allow(dead_code)] // used by the e2e_tls binary, which shares this module
    pub fn start_with_extra(upstream_url: &str, tag_ttl: &str, extra: &str, tls: bool) -> Archway {
        Self::start_full(
            upstream_url,
            tag_ttl,
            0,
            |_| String::new(),
            extra,
            tls,
            &Setup::default(),
        )
    }

    fn start_full(
        upstream_url: &str,
        tag_ttl: &str,
        extra_listen: usize,
        routes: impl Fn(&[u16]) -> String,
        extra: &str,
        tls: bool,
        setup: &Setup,
    ) -> Archway {
        let plain = extra.is_empty() && !tls;
        let (daemon, port, (dir, ports)) = procs::start_on_free_port(
            |port| {
                let dir = temp_dir("archway");
                let config = dir.path().join("archway.toml");
                let mut ports = vec![port];
                while ports.len() <= extra_listen {
                    let p = procs::free_port();
                    if !ports.contains(&p) {
                        ports.push(p);
                    }
                }
                let listen: Vec<String> =
                    ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
                std::fs::write(
                    &config,
                    format!(
                        "{}listen = [{}]\ndata_dir = \"{}\"\nlog_format = \"json\"\n\n\
                         [cache]\ntag_ttl = \"{tag_ttl}\"\nstale_if_error = \"24h\"\nmin_free_space = \"0B\"\n\n\
                         [[upstream]]\nname = \"docker.io\"\nurl = \"{upstream_url}\"\n\
                         default = true\n\n{}\n{extra}",
                        setup.top,
                        listen.join(", "),
                        setup
                            .data_dir
                            .clone()
                            .unwrap_or_else(|| dir.path().join("data"))
                            .display(),
                        routes(&ports),
                    ),
                )
                .expect("write archway config");
                let mut cmd = command(env!("CARGO_BIN_EXE_archway"));
                cmd.arg("serve")
                    .arg("--config")
                    .arg(&config)
                    .arg("--log-format")
                    .arg("json")
                    .env_remove("RUST_LOG");
                for name in &setup.env_remove {
                    cmd.env_remove(name);
                }
                if setup.peer_url {
                    cmd.env("ARCHWAY_PEER_URL", format!("http://127.0.0.1:{port}"));
                }
                let log = dir.path().join("archway.log");
                (Daemon::spawn("archway", &cmd, &log), (dir, ports))
            },
            |port| {
                if plain {
                    ping_ok(&format!("http://127.0.0.1:{port}"))
                } else {
                    port_open(port)
                }
            },
        );
        // The main port answering says the config loaded; the extras are bound at the same time,
        // but check each so a test never talks to a port nobody listens on.
        for p in &ports[1..] {
            daemon.wait_ready(Duration::from_secs(10), || {
                ping_ok(&format!("http://127.0.0.1:{p}"))
            });
        }
        Archway {
            daemon,
            port,
            ports,
            _dir: dir,
            scheme: if tls { "https" } else { "http" },
        }
    }

    /// `127.0.0.1:<port>` of the `i`th listen address (0 = the main one).
    pub fn host_of(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// Everything archway logged so far.
    #[allow(dead_code)] // Used by tests/e2e_tls.rs only.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// True while the archway process exists and is not a zombie.
    #[allow(dead_code)] // Used by tests/e2e_fleet.rs only.
    pub fn is_running(&self) -> bool {
        self.daemon.is_running()
    }

    /// Sends the archway process a signal (`kill -<name> <pid>`), e.g. `HUP`.
    #[allow(dead_code)] // Used by tests/e2e_tls.rs only.
    pub fn signal(&self, name: &str) {
        let pid = self.daemon.pid().to_string();
        procs::run_ok(
            Command::new("kill").args([&format!("-{name}"), pid.as_str()]),
            Duration::from_secs(10),
        );
    }

    /// The access log so far. archway writes a line when a response body ends, a moment after
    /// the client has its bytes: wait until no new line has come for a little while.
    pub fn access_log(&self) -> Vec<Access> {
        let read = || -> Vec<Access> {
            self.daemon
                .log()
                .lines()
                .filter_map(Access::parse)
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = read();
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let now = read();
            if now.len() == last.len() || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }
}

// === containerd ===

pub struct Containerd {
    daemon: Daemon,
    pub socket: PathBuf,
    dir: PathBuf,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.daemon.stop(Duration::from_secs(20));
        procs::unmount_under(&self.dir);
    }
}

impl Containerd {
    /// Starts containerd with root, state, sockets and opt under `dir`; CRI disabled.
    pub fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).expect("containerd dir");
        let socket = dir.join("c.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{s}.ttrpc\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n",
                d = dir.display(),
                s = socket.display()
            ),
        )
        .expect("write containerd config");
        let mut cmd = command(tool("containerd"));
        cmd.arg("--config").arg(&config);
        let daemon = Daemon::spawn("containerd", &cmd, &dir.join("containerd.log"));
        let c = Containerd {
            daemon,
            socket,
            dir: dir.to_owned(),
        };
        c.daemon.wait_ready(Duration::from_secs(30), || {
            c.socket.exists()
                && procs::run(&mut c.ctr(&["version"]), Duration::from_secs(10)).success()
        });
        c
    }

    /// `ctr --address <socket> <args>`, with no way off the machine.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = command(tool("ctr"));
        cmd.arg("--address").arg(&self.socket).args(args);
        cmd
    }
}

/// Writes `<hosts_dir>/<registry>/hosts.toml`: `server` is the real upstream (loopback too),
/// archway the one mirror, for pull and resolve.
pub fn write_hosts_toml(hosts_dir: &Path, registry: &str, server: &str, mirror: &str) {
    let dir = hosts_dir.join(registry);
    std::fs::create_dir_all(&dir).expect("hosts dir");
    std::fs::write(
        dir.join("hosts.toml"),
        format!("server = \"{server}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )
    .expect("write hosts.toml");
}

// === dockerd ===

pub struct Dockerd {
    daemon: Daemon,
    socket: PathBuf,
    cli_config: PathBuf,
    dir: PathBuf,
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.daemon.stop(Duration::from_secs(30));
        procs::unmount_under(&self.dir);
    }
}

impl Dockerd {
    /// Starts dockerd without networking (vfs, no iptables, no bridge) on its own socket, data and
    /// exec roots, using `containerd`, with archway at `mirror` (`127.0.0.1:<port>`) as its Docker
    /// Hub mirror. The mirror is read once at start: start archway first.
    pub fn start(dir: &Path, containerd: &Containerd, mirror: &str) -> Dockerd {
        std::fs::create_dir_all(dir).expect("dockerd dir");
        let socket = dir.join("d.sock");
        let daemon_json = dir.join("daemon.json");
        std::fs::write(&daemon_json, "{}\n").expect("daemon.json");
        let cli_config = dir.join("cli");
        std::fs::create_dir_all(&cli_config).expect("docker cli config dir");
        let mut cmd = command(tool("dockerd"));
        cmd.arg("--config-file")
            .arg(&daemon_json)
            .args([
                "--storage-driver=vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
            ])
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--containerd")
            .arg(&containerd.socket)
            .arg("--registry-mirror")
            .arg(format!("http://{mirror}"))
            .arg("--insecure-registry")
            .arg(mirror);
        let daemon = Daemon::spawn("dockerd", &cmd, &dir.join("dockerd.log"));
        let d = Dockerd {
            daemon,
            socket,
            cli_config,
            dir: dir.to_owned(),
        };
        d.daemon.wait_ready(Duration::from_secs(60), || {
            d.socket.exists()
                && procs::run(&mut d.docker(&["version"]), Duration::from_secs(10)).success()
        });
        d
    }

    /// Writes the CLI's `config.json` (e.g. its `HttpHeaders`, which the CLI sends with every
    /// API request and dockerd forwards to registries when they start with `X-Meta-`).
    #[allow(dead_code)] // used by the e2e_zstd binary, which shares this module
    pub fn write_cli_config(&self, json: &str) {
        std::fs::write(self.cli_config.join("config.json"), json).expect("docker cli config.json");
    }

    /// `/usr/bin/docker -H unix://<socket> <args>` with its own client config (empty unless
    /// [`Dockerd::write_cli_config`] wrote one).
    pub fn docker(&self, args: &[&str]) -> Command {
        let mut cmd = command(DOCKER_CLI);
        cmd.env("DOCKER_CONFIG", &self.cli_config)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args);
        cmd
    }

    pub fn log_tail(&self) -> String {
        self.daemon.log_tail(40)
    }

    /// Points a program that runs the docker CLI as `$DOCKER` (deploy/container/build.sh) at
    /// this daemon, with this daemon's client config.
    pub fn client_env(&self, cmd: &mut Command) {
        cmd.env("DOCKER", DOCKER_CLI)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", &self.cli_config)
            .env_remove("DOCKER_CONTEXT");
    }
}

// === skopeo ===

/// `skopeo --insecure-policy <args>` with an empty registries.conf, so only the named loopback
/// registry is ever contacted, and big-file temp space under `tmp`.
pub fn skopeo(tmp: &Path, args: &[&str]) -> Command {
    let conf = tmp.join("registries.conf");
    if !conf.exists() {
        std::fs::write(&conf, "").expect("registries.conf");
        std::fs::write(tmp.join("auth.json"), "{\"auths\":{}}\n").expect("auth.json");
    }
    let mut cmd = command(tool("skopeo"));
    cmd.env("CONTAINERS_REGISTRIES_CONF", &conf)
        .env("REGISTRY_AUTH_FILE", tmp.join("auth.json"))
        .env("TMPDIR", tmp)
        .arg("--insecure-policy")
        .args(args);
    cmd
}
