//! End to end: zstd images and the engines that cannot read them. Debian 12's own dockerd
//! (`docker.io` 20.10) pulls zstd images straight from a loopback Distribution and fails with
//! the tar error users report; through archway — as its `registry-mirrors` entry and as a
//! registry named directly — it gets the same images with tars in place of the zstd layers, and
//! the files in them are checked (`docker save`). containerd 1.6's ctr and skopeo, which read
//! OCI zstd, get the original layers byte for byte; Docker's zstd type, which neither reads,
//! they get as its tars (the config's diff_ids). Images: one pushed by skopeo
//! `--dest-compress-format zstd` (OCI type), one of Docker's zstd type and a two-platform OCI
//! index of zstd images, both pushed by the test's own tooling. `X-Meta-Layers` in the Docker
//! CLI's `HttpHeaders` reaches archway through dockerd and overrides a route's `layers = "as-is"`.
//! Loopback only; runs with
//! `ARCHWAY_E2E=1`.

#[allow(dead_code)]
mod e2e {
    pub mod fixtures;
    pub mod http;
    pub mod layout;
    pub mod procs;
    pub mod tools;
}

use e2e::fixtures::{push_blob, push_manifest, sha256, Blob};
use e2e::layout::OciLayout;
use e2e::procs::{run, run_ok};
use e2e::tools::{
    e2e_enabled, show, skopeo, temp_dir, write_hosts_toml, Access, Archway, Containerd, Dockerd,
    Registry,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const PULL: Duration = Duration::from_secs(300);
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";

type Files = Vec<(String, Vec<u8>)>;

/// A tar of `files` (directories first), as an image layer's diff.
fn tar_of(files: &Files) -> Vec<u8> {
    let files: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (p.as_str(), &d[..])).collect();
    e2e::fixtures::tar_of(&files)
}

/// Three layers of files: some text, 2 MiB of noise (a layer worth compressing), more text.
fn layer_files(name: &str, seed: u64) -> Vec<Files> {
    let mut rng = e2e::fixtures::Rng::new(seed);
    vec![
        vec![(
            format!("zstd/{name}/one.txt"),
            format!("first layer of {name}\n").into_bytes(),
        )],
        vec![(format!("zstd/{name}/noise.bin"), rng.bytes(2 << 20))],
        vec![
            (
                format!("zstd/{name}/three.txt"),
                format!("third layer of {name}\n").into_bytes(),
            ),
            (format!("zstd/{name}/arch"), b"amd64\n".to_vec()),
        ],
    ]
}

fn config_of(config_type: &str, arch: &str, tars: &[Vec<u8>]) -> Blob {
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256(t)).collect();
    let c = json!({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": tars.iter().map(|_| json!({"created_by": "archway e2e zstd fixture"})).collect::<Vec<_>>(),
    });
    Blob::new(config_type, serde_json::to_vec(&c).unwrap())
}

/// An image pushed by the test's own tooling: zstd layers of `layer_type` in a manifest of
/// `manifest_type`. Returns the manifest.
/// (manifest, config, layer) media types of one flavour.
type Flavour = (&'static str, &'static str, &'static str);
const OCI_FLAVOUR: Flavour = (OCI_MANIFEST, OCI_CONFIG, OCI_ZSTD);
const DOCKER_FLAVOUR: Flavour = (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_ZSTD);

fn push_zstd_image(
    base: &str,
    repo: &str,
    reference: Option<&str>,
    (manifest_type, config_type, layer_type): Flavour,
    arch: &str,
    files: &[Files],
) -> Blob {
    let tars: Vec<Vec<u8>> = files.iter().map(tar_of).collect();
    let layers: Vec<Blob> = tars
        .iter()
        .map(|t| Blob::new(layer_type, zstd::encode_all(&t[..], 3).unwrap()))
        .collect();
    let config = config_of(config_type, arch, &tars);
    for b in layers.iter().chain([&config]) {
        push_blob(base, repo, b, None).expect("push blob");
    }
    let m = json!({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let m = Blob::new(manifest_type, serde_json::to_vec(&m).unwrap());
    push_manifest(base, repo, reference.unwrap_or(&m.digest), &m).expect("push manifest");
    m
}

/// The OCI image with gzip layers written as an OCI layout, then pushed by skopeo with
/// `--dest-compress-format zstd` (skopeo recompresses every layer).
fn push_with_skopeo(tmp: &Path, registry: &Registry, repo: &str, files: &[Files]) {
    let dir = tmp.join("layout");
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let mut layers = Vec::new();
    let mut tars = Vec::new();
    for f in files {
        let tar = tar_of(f);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        layers.push(Blob::new(OCI_GZIP, gz.finish().unwrap()));
        tars.push(tar);
    }
    let config = config_of(OCI_CONFIG, "amd64", &tars);
    let m = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let m = Blob::new(OCI_MANIFEST, serde_json::to_vec(&m).unwrap());
    for b in layers.iter().chain([&config, &m]) {
        std::fs::write(dir.join("blobs/sha256").join(b.hex()), &b.data).unwrap();
    }
    let mut d = m.descriptor();
    d["annotations"] = json!({"org.opencontainers.image.ref.name": "v1"});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [d]})).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let src = format!("oci:{}:v1", dir.display());
    let dest = format!("docker://127.0.0.1:{}/{repo}:v1", registry.port);
    run_ok(
        &mut skopeo(
            tmp,
            &[
                "copy",
                "--dest-tls-verify=false",
                "--dest-compress-format",
                "zstd",
                "--dest-compress",
                &src,
                &dest,
            ],
        ),
        PULL,
    );
}

/// The manifest `repo:tag` as the registry holds it.
fn registry_manifest(registry: &Registry, repo: &str, tag: &str, accept: &str) -> Value {
    let r = e2e::http::get(
        &format!("{}/v2/{repo}/manifests/{tag}", registry.url()),
        &[("accept", accept)],
    )
    .expect("GET manifest");
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

/// Every file in the layers of `image` as dockerd holds it (`docker save`).
fn saved_files(dockerd: &Dockerd, tmp: &Path, image: &str) -> BTreeMap<String, Vec<u8>> {
    let out = tmp.join(format!("{}.tar", image.replace(['/', ':'], "_")));
    run_ok(
        &mut dockerd.docker(&["save", "-o", &out.display().to_string(), image]),
        PULL,
    );
    let mut files = BTreeMap::new();
    let mut outer = tar::Archive::new(std::fs::File::open(&out).unwrap());
    for entry in outer.entries().unwrap() {
        let entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if !path.ends_with("layer.tar") {
            continue;
        }
        let mut inner = tar::Archive::new(entry);
        for f in inner.entries().unwrap() {
            let mut f = f.unwrap();
            if f.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = f.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut data).unwrap();
            files.insert(name, data);
        }
    }
    files
}

#[track_caller]
fn assert_files(got: &BTreeMap<String, Vec<u8>>, want: &[Files], what: &str) {
    for (path, data) in want.iter().flatten() {
        let found = got
            .get(path)
            .unwrap_or_else(|| panic!("{what}: no {path} in the pulled image: {:?}", got.keys()));
        assert!(found == data, "{what}: {path} differs");
    }
}

/// The tag answer in archway's log: 200, with its zstd layers converted for this client.
#[track_caller]
fn assert_converted(log: &[Access], repo: &str, tag: &str) {
    let path = format!("/v2/{repo}/manifests/{tag}");
    let hit = log
        .iter()
        .any(|a| a.path() == path && a.status == 200 && a.converted.as_deref() == Some("zstd"));
    assert!(hit, "no converted answer to {path}:\n{}", show(log));
}

#[test]
fn debian_dockerd_pulls_zstd_images_through_archway_and_fails_without() {
    if !e2e_enabled("debian_dockerd_pulls_zstd_images_through_archway_and_fails_without") {
        return;
    }
    let registry = Registry::start();
    let tmp = temp_dir("zstd");
    let base = registry.url();
    let oci_files = layer_files("oci", 1);
    push_with_skopeo(tmp.path(), &registry, "library/zstdoci", &oci_files);
    let pushed = registry_manifest(&registry, "library/zstdoci", "v1", OCI_MANIFEST);
    assert!(
        pushed["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["mediaType"] == OCI_ZSTD),
        "skopeo pushed zstd layers: {pushed}"
    );
    let docker_files = layer_files("docker", 2);
    push_zstd_image(
        &base,
        "library/zstddocker",
        Some("v1"),
        DOCKER_FLAVOUR,
        "amd64",
        &docker_files,
    );
    // A two-platform index of zstd images.
    let amd64_files = layer_files("amd64", 3);
    let arm64_files = layer_files("arm64", 4);
    let children: Vec<Value> = [("amd64", &amd64_files), ("arm64", &arm64_files)]
        .into_iter()
        .map(|(arch, files)| {
            let m = push_zstd_image(&base, "library/zstdindex", None, OCI_FLAVOUR, arch, files);
            let mut d = m.descriptor();
            d["platform"] = json!({"architecture": arch, "os": "linux"});
            d
        })
        .collect();
    let index = Blob::new(
        OCI_INDEX,
        serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}),
        )
        .unwrap(),
    );
    push_manifest(&base, "library/zstdindex", "v1", &index).unwrap();

    let archway = Archway::start(&base, "5m");
    let containerd = Containerd::start(&tmp.path().join("ctd"));
    let dockerd = Dockerd::start(&tmp.path().join("dkd"), &containerd, &archway.host());

    // Straight from Distribution: the bug as users see it.
    let direct = format!("127.0.0.1:{}/library/zstdoci:v1", registry.port);
    let out = run(&mut dockerd.docker(&["pull", &direct]), PULL);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        !out.success(),
        "Docker 20.10 read zstd without archway?\n{said}"
    );
    assert!(
        said.contains("unexpected EOF")
            || said.contains("invalid tar header")
            || said.contains("failed to register layer"),
        "the failure users report: {said}"
    );

    // Through archway as the Docker Hub mirror: the OCI-type image skopeo pushed.
    let pull = |image: &str| {
        let out = run(&mut dockerd.docker(&["pull", image]), PULL);
        assert!(
            out.success(),
            "docker pull {image}:\n{}\n{}\n{}",
            out.stdout,
            out.stderr,
            dockerd.log_tail()
        );
    };
    pull("zstdoci:v1");
    assert_files(
        &saved_files(&dockerd, tmp.path(), "zstdoci:v1"),
        &oci_files,
        "mirror, OCI type",
    );
    // Named directly: Docker's zstd type.
    let named = format!("{}/library/zstddocker:v1", archway.host());
    pull(&named);
    assert_files(
        &saved_files(&dockerd, tmp.path(), &named),
        &docker_files,
        "direct, Docker type",
    );
    // The index: the amd64 child, through the platform answer.
    pull("zstdindex:v1");
    let got = saved_files(&dockerd, tmp.path(), "zstdindex:v1");
    assert_files(&got, &amd64_files, "index, amd64 child");
    assert!(
        !got.keys().any(|k| k.contains("arm64")),
        "only the amd64 child"
    );

    let log = archway.access_log();
    assert_converted(&log, "library/zstdoci", "v1");
    assert_converted(&log, "library/zstddocker", "v1");
    assert_converted(&log, "library/zstdindex", "v1");
    // No zstd layer was sent to dockerd: every blob it got was a tar or a config.
    for l in pushed["layers"].as_array().unwrap() {
        let digest = l["digest"].as_str().unwrap();
        assert!(
            !log.iter()
                .any(|a| a.method == "GET" && a.path().ends_with(digest)),
            "dockerd was sent the zstd layer {digest}:\n{}",
            show(&log)
        );
    }
}

/// `X-Meta-Layers` as a real dockerd sends it: on a route whose `layers = "as-is"` hands
/// Docker 20.10 the zstd layers it cannot read, the pull fails; with the header in the CLI's
/// `HttpHeaders` (dockerd forwards `X-Meta-*` headers to the registry), the same dockerd gets
/// tars and the files are right.
#[test]
fn dockerd_forwards_x_meta_layers_from_the_cli_config() {
    if !e2e_enabled("dockerd_forwards_x_meta_layers_from_the_cli_config") {
        return;
    }
    let registry = Registry::start();
    let tmp = temp_dir("zstdhdr");
    let files = layer_files("hdr", 6);
    push_with_skopeo(tmp.path(), &registry, "library/zstdhdr", &files);
    let route = "[[route]]\nmatch = { client_cidr = \"127.0.0.0/8\" }\nlayers = \"as-is\"\n";
    let archway = Archway::start_with(&registry.url(), "5m", 0, |_| route.to_owned());
    let containerd = Containerd::start(&tmp.path().join("ctd"));
    let dockerd = Dockerd::start(&tmp.path().join("dkd"), &containerd, &archway.host());
    let converted = |log: &[Access]| {
        log.iter().any(|a| {
            a.path() == "/v2/library/zstdhdr/manifests/v1" && a.converted.as_deref() == Some("zstd")
        })
    };

    // As-is: the zstd layers, which Docker 20.10 cannot read.
    let out = run(&mut dockerd.docker(&["pull", "zstdhdr:v1"]), PULL);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(!out.success(), "Docker 20.10 read zstd?\n{said}");
    let log = archway.access_log();
    assert!(
        log.iter()
            .any(|a| a.path() == "/v2/library/zstdhdr/manifests/v1" && a.status == 200),
        "the pull went through archway:\n{}",
        show(&log)
    );
    assert!(!converted(&log), "nothing converted as-is:\n{}", show(&log));

    // The header from the CLI's config: tars.
    dockerd.write_cli_config(r#"{"HttpHeaders": {"X-Meta-Layers": "compatible"}}"#);
    let out = run(&mut dockerd.docker(&["pull", "zstdhdr:v1"]), PULL);
    assert!(
        out.success(),
        "docker pull with X-Meta-Layers:\n{}\n{}\n{}",
        out.stdout,
        out.stderr,
        dockerd.log_tail()
    );
    assert_files(
        &saved_files(&dockerd, tmp.path(), "zstdhdr:v1"),
        &files,
        "X-Meta-Layers: compatible",
    );
    assert!(converted(&archway.access_log()), "converted for the header");
}

#[test]
fn ctr_and_skopeo_get_the_original_zstd_layers() {
    if !e2e_enabled("ctr_and_skopeo_get_the_original_zstd_layers") {
        return;
    }
    let registry = Registry::start();
    let tmp = temp_dir("zstdkeep");
    let files = layer_files("kept", 5);
    push_with_skopeo(tmp.path(), &registry, "library/zstdkeep", &files);
    let pushed = registry_manifest(&registry, "library/zstdkeep", "v1", OCI_MANIFEST);
    let archway = Archway::start(&registry.url(), "5m");

    // skopeo (containers/image reads OCI zstd) copies the image as it is.
    let out = tmp.path().join("copied");
    run_ok(
        &mut skopeo(
            tmp.path(),
            &[
                "copy",
                "--src-tls-verify=false",
                &format!("docker://{}/library/zstdkeep:v1", archway.host()),
                &format!("oci:{}:v1", out.display()),
            ],
        ),
        PULL,
    );
    let layout = OciLayout::open(&out);
    let got = layout.descriptor("v1");
    let raw = std::fs::read(
        out.join("blobs/sha256").join(
            got["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:"),
        ),
    )
    .unwrap();
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        manifest["layers"], pushed["layers"],
        "skopeo got the zstd layers"
    );
    for l in pushed["layers"].as_array().unwrap() {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let blob = std::fs::read(out.join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(
            sha256(&blob),
            l["digest"].as_str().unwrap(),
            "byte for byte"
        );
    }

    // ctr (containerd 1.6 reads OCI zstd) through archway as its hosts.toml mirror.
    let hosts = tmp.path().join("certs.d");
    write_hosts_toml(&hosts, "docker.io", &registry.url(), &archway.url());
    let containerd = Containerd::start(&tmp.path().join("ctd"));
    run_ok(
        &mut containerd.ctr(&[
            "image",
            "pull",
            "--hosts-dir",
            &hosts.display().to_string(),
            "docker.io/library/zstdkeep:v1",
        ]),
        PULL,
    );
    let content = run_ok(&mut containerd.ctr(&["content", "ls", "-q"]), PULL).stdout;
    for l in pushed["layers"].as_array().unwrap() {
        let digest = l["digest"].as_str().unwrap();
        assert!(
            content.contains(digest),
            "ctr holds the zstd layer {digest}:\n{content}"
        );
    }
    let log = archway.access_log();
    assert!(
        log.iter().all(|a| a.converted.is_none()),
        "nothing converted for skopeo or ctr:\n{}",
        show(&log)
    );
    for l in pushed["layers"].as_array().unwrap() {
        let digest = l["digest"].as_str().unwrap();
        let served = log
            .iter()
            .filter(|a| a.method == "GET" && a.status == 200 && a.path().ends_with(digest))
            .count();
        assert!(
            served >= 2,
            "both clients got {digest} from archway:\n{}",
            show(&log)
        );
    }

    // Docker's zstd type is read by neither (containerd only from 2.0, containers/image not
    // in schema2): under "auto" both get its tars, which are the config's diff_ids, byte for
    // byte; the config is the image's own.
    let docker_files = layer_files("keptdocker", 6);
    let tars: Vec<Vec<u8>> = docker_files.iter().map(tar_of).collect();
    let pushed = push_zstd_image(
        &registry.url(),
        "library/zstdkeepdocker",
        Some("v1"),
        DOCKER_FLAVOUR,
        "amd64",
        &docker_files,
    );
    let pushed: Value = serde_json::from_slice(&pushed.data).unwrap();
    let out = tmp.path().join("copied-docker");
    run_ok(
        &mut skopeo(
            tmp.path(),
            &[
                "copy",
                "--src-tls-verify=false",
                &format!("docker://{}/library/zstdkeepdocker:v1", archway.host()),
                &format!("dir:{}", out.display()),
            ],
        ),
        PULL,
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["config"], pushed["config"],
        "skopeo: the image's config"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), tars.len());
    for (l, tar) in layers.iter().zip(&tars) {
        assert_eq!(
            l["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar"
        );
        assert_eq!(l["digest"], sha256(tar), "skopeo: the layer is its diff_id");
        let hex = sha256(tar).trim_start_matches("sha256:").to_owned();
        let blob = std::fs::read(out.join(&hex)).unwrap();
        assert!(blob == *tar, "skopeo: the tar byte for byte");
    }
    run_ok(
        &mut containerd.ctr(&[
            "image",
            "pull",
            "--hosts-dir",
            &hosts.display().to_string(),
            "docker.io/library/zstdkeepdocker:v1",
        ]),
        PULL,
    );
    let content = run_ok(&mut containerd.ctr(&["content", "ls", "-q"]), PULL).stdout;
    for tar in &tars {
        let digest = sha256(tar);
        assert!(
            content.contains(&digest),
            "ctr holds the tar {digest}:\n{content}"
        );
    }
    for l in pushed["layers"].as_array().unwrap() {
        let digest = l["digest"].as_str().unwrap();
        assert!(
            !content.contains(digest),
            "ctr got no Docker zstd layer {digest}"
        );
    }
    let log = archway.access_log();
    let answers = log
        .iter()
        .filter(|a| a.path() == "/v2/library/zstdkeepdocker/manifests/v1" && a.status == 200)
        .collect::<Vec<_>>();
    assert!(
        answers.len() >= 2
            && answers
                .iter()
                .all(|a| a.converted.as_deref() == Some("zstd")),
        "both tag answers (skopeo's GET, ctr's HEAD) converted:\n{}",
        show(&log)
    );
}
