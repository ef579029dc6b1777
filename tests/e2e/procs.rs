//! Processes the tests start: daemons that die with the test, and commands with a deadline.
//!
//! A daemon runs under a tiny `sh` watchdog that holds a pipe from the test process: when the
//! test drops the daemon, or the whole test binary exits or is killed (statics are never dropped),
//! the pipe closes and the watchdog sends the daemon SIGTERM, and can then remove the daemon's
//! directory. Nothing outlives the test run.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

const WATCHDOG: &str = r#"
exec 3<&0
"$@" </dev/null >>"$ARCHWAY_E2E_LOG" 2>&1 3<&- &
child=$!
echo "$child"
read -r _ <&3 || true
kill -TERM "$child" 2>/dev/null
wait "$child"
if [ -n "$ARCHWAY_E2E_CLEANUP" ]; then rm -rf -- "$ARCHWAY_E2E_CLEANUP"; fi
"#;

/// Proxy settings for every child: any attempt to reach a public registry fails fast at a closed
/// loopback port instead of leaving the machine; loopback itself is exempt.
pub const NO_EGRESS_ENV: [(&str, &str); 6] = [
    ("HTTP_PROXY", "http://127.0.0.1:9"),
    ("HTTPS_PROXY", "http://127.0.0.1:9"),
    ("NO_PROXY", "127.0.0.1,localhost,::1"),
    ("http_proxy", "http://127.0.0.1:9"),
    ("https_proxy", "http://127.0.0.1:9"),
    ("no_proxy", "127.0.0.1,localhost,::1"),
];

pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.envs(NO_EGRESS_ENV);
    cmd.env_remove("ALL_PROXY").env_remove("all_proxy");
    cmd
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Starts a daemon on a free port, trying again with another port when something else took the
/// port between [`free_port`] and the daemon's bind.
pub fn start_on_free_port<T>(
    mut start: impl FnMut(u16) -> (Daemon, T),
    ready: impl Fn(u16) -> bool,
) -> (Daemon, u16, T) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = free_port();
        let (daemon, extra) = start(port);
        match daemon.try_wait_ready(Duration::from_secs(30), || ready(port)) {
            Ok(()) => return (daemon, port, extra),
            Err(e) if attempt < 3 && e.to_lowercase().contains("address already in use") => {
                eprintln!("port {port} was taken, trying another: {e}");
            }
            Err(e) => panic!("{e}"),
        }
    }
}

pub struct Daemon {
    name: String,
    pid: u32,
    watchdog: Child,
    pipe: Option<ChildStdin>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` (program, args, env, cwd are kept) with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &Command, log: &Path) -> Daemon {
        Self::spawn_owning(name, cmd, log, None)
    }

    /// Like [`Daemon::spawn`], and `dir` is removed once the daemon has exited: for daemons held
    /// in statics, whose `TempDir` is never dropped.
    pub fn spawn_owning(name: &str, cmd: &Command, log: &Path, dir: Option<&Path>) -> Daemon {
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(WATCHDOG).arg("sh").arg(cmd.get_program());
        sh.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            sh.current_dir(dir);
        }
        if let Some(dir) = dir {
            sh.env("ARCHWAY_E2E_CLEANUP", dir);
        }
        sh.env("ARCHWAY_E2E_LOG", log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut watchdog = sh
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{name}: watchdog: {e}"));
        let pid = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: watchdog printed {line:?}"));
        Daemon {
            name: name.to_owned(),
            pid,
            pipe: watchdog.stdin.take(),
            watchdog,
            log: log.to_owned(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's own process id (not the watchdog's), e.g. to signal it.
    #[allow(dead_code)] // Used by tests/e2e_tls.rs only.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// True while the process exists and is not a zombie.
    pub fn is_running(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            // The state follows the parenthesised command name.
            Ok(stat) => !matches!(
                stat.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().chars().next()),
                Some(Some('Z' | 'X')) | None
            ),
            Err(_) => false,
        }
    }

    /// Polls `ready` until it holds; panics with the log tail if the daemon dies or time runs out.
    pub fn wait_ready(&self, timeout: Duration, ready: impl FnMut() -> bool) {
        if let Err(e) = self.try_wait_ready(timeout, ready) {
            panic!("{e}");
        }
    }

    /// Polls `ready` until it holds; the error carries the log tail.
    pub fn try_wait_ready(
        &self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            let failure = if !self.is_running() {
                "exited during start-up"
            } else if Instant::now() > deadline {
                "did not get ready in time"
            } else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            return Err(format!(
                "{} {failure} ({timeout:?}); log {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(40)
            ));
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Idempotent.
    pub fn stop(&mut self, grace: Duration) {
        if self.pipe.take().is_none() {
            return;
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.watchdog.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{} ignored SIGTERM for {grace:?}; killing pid {}",
            self.name, self.pid
        );
        // The shell's builtin: a minimal system may have no kill binary.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -KILL {}", self.pid))
            .status();
        let _ = self.watchdog.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(20));
    }
}

/// Unmounts whatever a daemon left mounted under `dir` (dockerd bind-mounts its data root onto
/// itself and does not always undo it), deepest first, so the temp dir can be removed.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes space, tab, newline and backslash as octal.
        .map(|p| {
            p.replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\")
        })
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let ok = Command::new("umount")
            .arg(&p)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&p).status();
        }
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Runs `cmd` to completion, killing it after `timeout` so a hung client fails the test instead
/// of the CI job.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                s = String::from_utf8_lossy(&buf).into_owned();
            }
            s
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{shown} did not finish in {timeout:?}; stderr so far:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Like [`run`], but a failure panics with everything the command printed.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let out = run(cmd, timeout);
    assert!(
        out.success(),
        "{shown} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out
}
