//! End to end: podman pulls a zstd:chunked image through archway with partial pulls enabled
//! (containers/storage `enable_partial_images`), so it asks for the chunks of the layer it lacks
//! with multi-range GETs. The image is built from files here, pushed with `podman push
//! --compression-format zstd:chunked` to a loopback Distribution, and pulled twice through
//! archway into fresh storages: cold (the layer is not cached yet: archway sends the whole
//! layer for a list of ranges, and podman takes it), then warm (the access log must show the
//! multi-range GETs answered 206 in parts). The files of the pulled image are compared with the
//! originals. Loopback only; runs with `ARCHWAY_E2E=1` and needs `podman` (Debian's package).

#[allow(dead_code)]
mod e2e {
    pub mod fixtures;
    pub mod http;
    pub mod layout;
    pub mod procs;
    pub mod tools;
}

use e2e::procs::{command, run, run_ok, unmount_under};
use e2e::tools::{e2e_enabled, find_tool, show, temp_dir, Archway, Registry, Setup};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(300);

/// A podman with its own storage, registries.conf marking the loopback registries insecure,
/// and storage.conf enabling partial pulls. (Signature policy: the system's, which Debian's
/// package sets to accept anything.)
struct Podman {
    dir: PathBuf,
    name: &'static str,
}

impl Podman {
    fn new(dir: &Path, name: &'static str, registries: &[String]) -> Podman {
        let root = dir.join(name);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(
            root.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\nrunroot = \"{0}/run\"\ngraphroot = \"{0}/graph\"\n\
                 [storage.options]\npull_options = {{enable_partial_images = \"true\", \
                 use_hard_links = \"false\", ostree_repos = \"\"}}\n",
                root.display()
            ),
        )
        .unwrap();
        let mut conf = String::from("unqualified-search-registries = []\n");
        for r in registries {
            conf.push_str(&format!(
                "[[registry]]\nlocation = \"{r}\"\ninsecure = true\n"
            ));
        }
        std::fs::write(root.join("registries.conf"), conf).unwrap();
        Podman { dir: root, name }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = command(find_tool("podman").expect("podman"));
        cmd.env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.dir.join("registries.conf"),
            )
            .env("REGISTRIES_CONFIG_PATH", self.dir.join("registries.conf"))
            .env("TMPDIR", &self.dir)
            .args(args);
        cmd
    }

    /// Drops the storage and its overlay mounts, so the temp dir can go.
    fn reset(&self) {
        let _ = run(&mut self.cmd(&["system", "reset", "--force"]), TIMEOUT);
        unmount_under(&self.dir);
    }

    fn run_ok(&self, args: &[&str]) -> String {
        let out = run(&mut self.cmd(args), TIMEOUT);
        assert!(
            out.success(),
            "podman ({}) {args:?} failed:\n{}\n{}",
            self.name,
            out.stdout,
            out.stderr
        );
        out.stdout
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.reset();
    }
}

/// Deterministic file contents: incompressible enough that the layer has many chunks.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The image's files: name → contents.
fn files() -> Vec<(String, Vec<u8>)> {
    (0..80u64)
        .map(|i| {
            let len = 3_000 + (i as usize * 7_919) % 60_000;
            (format!("data/f{i:02}.bin"), bytes(i + 1, len))
        })
        .chain([("hello.txt".to_owned(), b"through archway\n".to_vec())])
        .collect()
}

/// `podman pull` of `image` through `archway`; podman's debug log.
fn pull_from(podman: &Podman, image: &str, archway: &Archway) -> String {
    let out = run(
        &mut podman.cmd(&["--log-level=debug", "pull", "--tls-verify=false", image]),
        TIMEOUT,
    );
    assert!(
        out.success(),
        "podman pull through archway failed:\n{}\n{}\narchway:\n{}",
        out.stdout,
        out.stderr,
        show(&archway.access_log())
    );
    out.stderr
}

#[test]
fn podman_partial_pull_of_a_zstd_chunked_image_is_answered_in_parts() {
    if !e2e_enabled("podman_partial_pull_of_a_zstd_chunked_image_is_answered_in_parts") {
        return;
    }
    assert!(
        find_tool("podman").is_some(),
        "the e2e tier needs podman for partial pulls: apt-get install podman"
    );
    let tmp = temp_dir("partial-pull");
    let dir = tmp.path().to_path_buf();
    let mut registry = Registry::start();
    let archway = Archway::start(&registry.url(), "5m");
    let upstream = format!("127.0.0.1:{}", registry.port);
    let mirror = archway.host();
    let registries = [upstream.clone(), mirror.clone()];

    // Build the image from files and push it zstd:chunked.
    let rootfs = dir.join("rootfs");
    for (name, data) in files() {
        let path = rootfs.join(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    let tar = dir.join("rootfs.tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        TIMEOUT,
    );
    let builder = Podman::new(&dir, "builder", &registries);
    builder.run_ok(&["import", tar.to_str().unwrap(), "localhost/chunky:1"]);
    builder.run_ok(&[
        "push",
        "--tls-verify=false",
        "--compression-format",
        "zstd:chunked",
        "localhost/chunky:1",
        &format!("{upstream}/e2e/chunky:1"),
    ]);

    let image = format!("{mirror}/e2e/chunky:1");
    let pull = |podman: &Podman| pull_from(podman, &image, &archway);

    // Cold: the layer's first request (one range, its table of contents) starts archway's
    // download. A list of ranges that arrives while it runs gets the whole layer (200); on
    // loopback the download is usually done by then and the list is answered in parts.
    let cold = Podman::new(&dir, "cold", &registries);
    pull(&cold);
    let store = archway.access_log();
    eprintln!("cold pull:\n{}", show(&store));

    // Warm: every range of the layer comes from archway's cache, the lists as multipart.
    let warm = Podman::new(&dir, "warm", &registries);
    let before = store.len();
    let warm_log = pull(&warm);
    let log = archway.access_log();
    let warm_lines = &log[before..];
    eprintln!("warm pull:\n{}", show(warm_lines));
    assert!(
        warm_log.contains("Retrieved partial blob"),
        "podman did not pull the layer partially:\n{warm_log}"
    );
    let multi: Vec<_> = warm_lines
        .iter()
        .filter(|a| a.path().contains("/blobs/") && a.ranges.is_some_and(|n| n >= 2))
        .collect();
    assert!(
        !multi.is_empty(),
        "no multi-range GET answered in parts on the warm pull:\n{}",
        show(warm_lines)
    );
    for a in &multi {
        assert_eq!(a.status, 206, "{a}");
        assert_eq!(a.cache.as_deref(), Some("hit"), "{a}");
        assert_eq!(a.complete, Some(true), "{a}");
    }
    assert!(
        warm_lines
            .iter()
            .all(|a| a.cache.as_deref() != Some("miss")),
        "the warm pull reached upstream:\n{}",
        show(warm_lines)
    );

    // Past limits.max_ranges the whole layer is sent (200), and podman still pulls it.
    let capped_archway = Archway::start_set_up(
        &registry.url(),
        "5m",
        "[limits]\nmax_ranges = 4\n",
        &Setup::default(),
    );
    let capped_image = format!("{}/e2e/chunky:1", capped_archway.host());
    let capped = Podman::new(&dir, "capped", &[upstream.clone(), capped_archway.host()]);
    // Warm it first, so the list of ranges meets a cached layer.
    pull_from(&capped, &capped_image, &capped_archway);
    let capped2 = Podman::new(&dir, "capped2", &[upstream.clone(), capped_archway.host()]);
    let before = capped_archway.access_log().len();
    pull_from(&capped2, &capped_image, &capped_archway);
    let log = capped_archway.access_log();
    let lines = &log[before..];
    eprintln!("capped pull:\n{}", show(lines));
    assert!(
        lines.iter().all(|a| a.ranges.is_none()),
        "past max_ranges nothing is multipart:\n{}",
        show(lines)
    );
    assert!(
        lines.iter().any(|a| a.path().contains("/blobs/")
            && a.status == 200
            && a.bytes.is_some_and(|b| b > 1_000_000)),
        "the list of ranges got the whole layer:\n{}",
        show(lines)
    );

    // The files of the pulled image are the originals.
    for (podman, image) in [(&cold, &image), (&warm, &image), (&capped2, &capped_image)] {
        let mnt = podman.run_ok(&["image", "mount", image]);
        let mnt = PathBuf::from(mnt.trim());
        for (name, data) in files() {
            let got = std::fs::read(mnt.join(&name))
                .unwrap_or_else(|e| panic!("{} {name}: {e}", podman.name));
            assert!(got == data, "{}: {name} differs", podman.name);
        }
        podman.run_ok(&["image", "unmount", image]);
    }

    registry.stop();
}
