//! Deterministic test images and a pusher that speaks the plain distribution API.
//!
//! Everything is derived from one seed, so a seed names a set of digests: the same seed gives the
//! same bytes on every machine, a fresh seed gives content no cache has seen. Digests are computed
//! here with `sha2` directly, independent of the code under test.

use crate::e2e::http;
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const IN_TOTO: &str = "application/vnd.in-toto+json";

/// Size of the file inside the `large` image's only layer.
pub const LARGE_LAYER_BYTES: usize = 50 << 20;

/// A fixed timestamp keeps configs byte-identical across runs.
const CREATED: &str = "2024-01-01T00:00:00Z";

// === Randomness ===

/// splitmix64: tiny, fast, and good enough to make incompressible bytes from a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(&mut v);
        v
    }

    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo) as u64) as usize
    }
}

/// A seed no earlier run used: for tests that must see every request reach archway, because
/// clients and their content stores skip digests they already hold.
pub fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut rng = Rng::new(
        nanos ^ (u64::from(std::process::id()) << 32) ^ COUNTER.fetch_add(1, Ordering::Relaxed),
    );
    rng.next_u64()
}

/// Docker 17.06's manifest Accept lines (moby 17.06 `distribution/pull_v2.go`): no OCI type.
pub const DOCKER_1706_ACCEPT: [&str; 4] = [
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Docker EE 17.06's User-Agent on a Linux host of architecture `arch`.
pub fn docker_1706_user_agent(arch: &str) -> String {
    format!(
        "docker/17.06.2-ee-19 go/go1.8.7 git-commit/6b5fb4d kernel/3.10.0-1062.el7.x86_64 \
         os/linux arch/{arch} UpstreamClient(Docker-Client/17.06.2-ee-19 \\(linux\\))"
    )
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

// === Content ===

/// One piece of content addressed by digest: a layer, a config or a manifest.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub data: Bytes,
}

impl Blob {
    pub fn new(media_type: &str, data: impl Into<Bytes>) -> Blob {
        let data = data.into();
        Blob {
            media_type: media_type.to_owned(),
            digest: sha256(&data),
            data,
        }
    }

    fn json(media_type: &str, value: &Value) -> Blob {
        Blob::new(media_type, serde_json::to_vec(value).expect("json encodes"))
    }

    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.data.len()})
    }

    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: &'static str,
    pub architecture: &'static str,
    pub variant: Option<&'static str>,
    pub os_version: Option<&'static str>,
}

pub const LINUX_AMD64: Platform = Platform::new("linux", "amd64", None, None);
pub const LINUX_ARM64_V8: Platform = Platform::new("linux", "arm64", Some("v8"), None);
pub const LINUX_ARM_V7: Platform = Platform::new("linux", "arm", Some("v7"), None);
pub const WINDOWS_LTSC2019: Platform =
    Platform::new("windows", "amd64", None, Some("10.0.17763.5820"));
pub const WINDOWS_LTSC2022: Platform =
    Platform::new("windows", "amd64", None, Some("10.0.20348.2461"));

/// The platforms every multi-platform fixture carries, in index order.
pub const PLATFORMS: [Platform; 5] = [
    LINUX_AMD64,
    LINUX_ARM64_V8,
    LINUX_ARM_V7,
    WINDOWS_LTSC2019,
    WINDOWS_LTSC2022,
];

impl Platform {
    pub const fn new(
        os: &'static str,
        architecture: &'static str,
        variant: Option<&'static str>,
        os_version: Option<&'static str>,
    ) -> Platform {
        Platform {
            os,
            architecture,
            variant,
            os_version,
        }
    }

    /// The `platform` object of an index entry.
    pub fn json(&self) -> Value {
        let mut p = json!({"architecture": self.architecture, "os": self.os});
        if let Some(v) = self.variant {
            p["variant"] = json!(v);
        }
        if let Some(v) = self.os_version {
            p["os.version"] = json!(v);
        }
        p
    }

    pub fn slug(&self) -> String {
        let mut s = format!("{}-{}", self.os, self.architecture);
        for part in [self.variant, self.os_version].into_iter().flatten() {
            s.push('-');
            s.push_str(part);
        }
        s
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Docker,
    Oci,
}

impl Flavour {
    pub fn manifest_type(self) -> &'static str {
        match self {
            Flavour::Docker => DOCKER_MANIFEST,
            Flavour::Oci => OCI_MANIFEST,
        }
    }

    pub fn index_type(self) -> &'static str {
        match self {
            Flavour::Docker => DOCKER_LIST,
            Flavour::Oci => OCI_INDEX,
        }
    }

    fn config_type(self) -> &'static str {
        match self {
            Flavour::Docker => DOCKER_CONFIG,
            Flavour::Oci => OCI_CONFIG,
        }
    }

    fn layer_type(self) -> &'static str {
        match self {
            Flavour::Docker => DOCKER_LAYER,
            Flavour::Oci => OCI_LAYER,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Flavour::Docker => "docker",
            Flavour::Oci => "oci",
        }
    }
}

/// A single-platform image: its manifest and every blob the manifest names.
#[derive(Clone, Debug)]
pub struct Image {
    pub platform: Platform,
    pub flavour: Flavour,
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Blob,
}

impl Image {
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }
}

/// A buildx-style attestation manifest and the image it attests.
#[derive(Clone, Debug)]
pub struct Attestation {
    pub subject: String,
    pub config: Blob,
    pub statement: Blob,
    pub manifest: Blob,
}

/// A gzip'd tar holding `files`, and the digest of the uncompressed tar (the config's diff_id).
pub fn layer(media_type: &str, files: &[(&str, &[u8])], level: Compression) -> (Blob, String) {
    let tar = tar_of(files);
    let diff_id = sha256(&tar);
    let mut gz = GzEncoder::new(Vec::with_capacity(tar.len() / 2 + 1024), level);
    std::io::Write::write_all(&mut gz, &tar).expect("gzip");
    (Blob::new(media_type, gz.finish().expect("gzip")), diff_id)
}

/// An uncompressed layer tar holding `files`, each file's parent directories first.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs: Vec<&str> = Vec::new();
    for (path, data) in files {
        // Parents first, so every unpacker (containerd, dockerd) sees a complete tree.
        if let Some((dir, _)) = path.rsplit_once('/') {
            if !dirs.contains(&dir) {
                dirs.push(dir);
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_mtime(0);
                h.set_size(0);
                tar.append_data(&mut h, format!("{dir}/"), std::io::empty())
                    .expect("tar dir");
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, path, *data).expect("tar file");
    }
    tar.into_inner().expect("tar finishes")
}

pub fn image(
    platform: Platform,
    flavour: Flavour,
    layers: Vec<(Blob, String)>,
    labels: Value,
) -> Image {
    let diff_ids: Vec<&str> = layers.iter().map(|(_, d)| d.as_str()).collect();
    let mut config = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "created": CREATED,
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/fixture/run"], "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| json!({"created": CREATED, "created_by": "archway e2e fixture"})).collect::<Vec<_>>(),
    });
    if let Some(v) = platform.variant {
        config["variant"] = json!(v);
    }
    if let Some(v) = platform.os_version {
        config["os.version"] = json!(v);
    }
    let config = Blob::json(flavour.config_type(), &config);
    let layers: Vec<Blob> = layers.into_iter().map(|(b, _)| b).collect();
    let manifest = Blob::json(
        flavour.manifest_type(),
        &json!({
            "schemaVersion": 2,
            "mediaType": flavour.manifest_type(),
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        }),
    );
    Image {
        platform,
        flavour,
        config,
        layers,
        manifest,
    }
}

fn platform_image(rng: &mut Rng, seed: u64, platform: Platform, flavour: Flavour) -> Image {
    let id = format!("{} {} seed={seed}\n", platform.slug(), flavour.name());
    let n = rng.range(512, 4096);
    let noise = rng.bytes(n);
    let base = layer(
        flavour.layer_type(),
        &[
            ("fixture/platform", id.as_bytes()),
            ("fixture/noise", &noise),
        ],
        Compression::default(),
    );
    let n = rng.range(256, 2048);
    let extra = rng.bytes(n);
    let top = layer(
        flavour.layer_type(),
        &[("fixture/extra", &extra)],
        Compression::default(),
    );
    image(
        platform,
        flavour,
        vec![base, top],
        json!({"archway.e2e.seed": seed.to_string(), "archway.e2e.platform": platform.slug()}),
    )
}

fn attestation(rng: &mut Rng, subject: &Image) -> Attestation {
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{
            "name": format!("pkg:docker/archway-e2e@{}", subject.platform.slug()),
            "digest": {"sha256": subject.manifest.hex()},
        }],
        "predicate": {"builder": {"id": "archway-e2e-fixtures"}, "nonce": rng.next_u64().to_string()},
    });
    let statement = Blob::json(IN_TOTO, &statement);
    let config = Blob::json(
        OCI_CONFIG,
        &json!({
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [statement.digest]},
        }),
    );
    let mut layer = statement.descriptor();
    layer["annotations"] = json!({"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"});
    let manifest = Blob::json(
        OCI_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": [layer],
        }),
    );
    Attestation {
        subject: subject.manifest.digest.clone(),
        config,
        statement,
        manifest,
    }
}

pub fn index(media_type: &str, entries: Vec<Value>) -> Blob {
    Blob::json(
        media_type,
        &json!({"schemaVersion": 2, "mediaType": media_type, "manifests": entries}),
    )
}

pub fn platform_entry(image: &Image) -> Value {
    let mut e = image.manifest.descriptor();
    e["platform"] = image.platform.json();
    e
}

// === The fixture set ===

/// Every image the e2e tier pulls, built from one seed.
pub struct FixtureSet {
    pub seed: u64,
    /// One image per (platform, flavour), in `PLATFORMS` order, Docker flavour first.
    pub images: Vec<Image>,
    pub attestations: Vec<Attestation>,
    pub large: Option<Image>,
    /// Tag → manifest: `docker`, `oci`, `oci-attest`, and `large` when built.
    pub tags: BTreeMap<String, Blob>,
}

impl FixtureSet {
    /// Builds the set; `with_large` adds the ~50 MB `large` image.
    pub fn build(seed: u64, with_large: bool) -> FixtureSet {
        let mut rng = Rng::new(seed);
        let mut images = Vec::new();
        for flavour in [Flavour::Docker, Flavour::Oci] {
            for platform in PLATFORMS {
                images.push(platform_image(&mut rng, seed, platform, flavour));
            }
        }
        let of = |f: Flavour| images.iter().filter(move |i| i.flavour == f);
        let attestations: Vec<Attestation> =
            of(Flavour::Oci).map(|i| attestation(&mut rng, i)).collect();

        let mut tags = BTreeMap::new();
        tags.insert(
            "docker".to_owned(),
            index(
                DOCKER_LIST,
                of(Flavour::Docker).map(platform_entry).collect(),
            ),
        );
        tags.insert(
            "oci".to_owned(),
            index(OCI_INDEX, of(Flavour::Oci).map(platform_entry).collect()),
        );
        // buildx puts the attestation manifests after every image, one per image.
        let mut entries: Vec<Value> = of(Flavour::Oci).map(platform_entry).collect();
        for a in &attestations {
            let mut e = a.manifest.descriptor();
            e["annotations"] = json!({
                "vnd.docker.reference.digest": a.subject,
                "vnd.docker.reference.type": "attestation-manifest",
            });
            e["platform"] = json!({"architecture": "unknown", "os": "unknown"});
            entries.push(e);
        }
        tags.insert("oci-attest".to_owned(), index(OCI_INDEX, entries));

        let large = with_large.then(|| {
            let data = rng.bytes(LARGE_LAYER_BYTES);
            // Random bytes don't compress: store them, and don't spend seconds trying.
            let l = layer(
                OCI_LAYER,
                &[("fixture/large.bin", &data)],
                Compression::none(),
            );
            image(
                LINUX_AMD64,
                Flavour::Oci,
                vec![l],
                json!({"archway.e2e.seed": seed.to_string(), "archway.e2e.large": "true"}),
            )
        });
        if let Some(l) = &large {
            tags.insert("large".to_owned(), l.manifest.clone());
        }
        FixtureSet {
            seed,
            images,
            attestations,
            large,
            tags,
        }
    }

    pub fn tag(&self, tag: &str) -> &Blob {
        self.tags
            .get(tag)
            .unwrap_or_else(|| panic!("fixture has no tag {tag}"))
    }

    pub fn image(&self, flavour: Flavour, platform: Platform) -> &Image {
        self.images
            .iter()
            .find(|i| i.flavour == flavour && i.platform == platform)
            .unwrap_or_else(|| panic!("fixture has no {flavour:?} {platform:?} image"))
    }

    pub fn images_of(&self, flavour: Flavour) -> impl Iterator<Item = &Image> {
        self.images.iter().filter(move |i| i.flavour == flavour)
    }

    /// Every config, layer and in-toto blob, once each.
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut seen = BTreeMap::new();
        let images = self.images.iter().chain(self.large.iter());
        for b in images.flat_map(Image::blobs) {
            seen.entry(b.digest.clone()).or_insert(b);
        }
        for a in &self.attestations {
            seen.entry(a.config.digest.clone()).or_insert(&a.config);
            seen.entry(a.statement.digest.clone())
                .or_insert(&a.statement);
        }
        seen.into_values().collect()
    }

    /// Manifests pushed by digest before any tag, so every index's children exist.
    pub fn child_manifests(&self) -> impl Iterator<Item = &Blob> {
        self.images
            .iter()
            .map(|i| &i.manifest)
            .chain(self.attestations.iter().map(|a| &a.manifest))
    }

    /// The objects of the index tagged `tag`, as `skopeo copy --all` pulls them: its children's
    /// blobs (once each), its children, then the index itself.
    pub fn tag_objects(&self, tag: &str) -> Vec<(&'static str, String)> {
        let index: serde_json::Value = serde_json::from_slice(&self.tag(tag).data).unwrap();
        let mut blobs = std::collections::BTreeSet::new();
        let mut manifests = Vec::new();
        for entry in index["manifests"].as_array().unwrap() {
            let d = entry["digest"].as_str().unwrap().to_owned();
            let child = self
                .child_manifests()
                .find(|m| m.digest == d)
                .unwrap_or_else(|| panic!("{d}: not a fixture manifest"));
            let child: serde_json::Value = serde_json::from_slice(&child.data).unwrap();
            let named = std::iter::once(&child["config"])
                .chain(child["layers"].as_array().into_iter().flatten())
                .filter_map(|b| b["digest"].as_str());
            blobs.extend(named.map(str::to_owned));
            manifests.push(d);
        }
        let mut out: Vec<_> = blobs.into_iter().map(|d| ("blobs", d)).collect();
        out.extend(manifests.into_iter().map(|d| ("manifests", d)));
        out.push(("manifests", self.tag(tag).digest.clone()));
        out
    }

    /// Pushes everything into each repository of `repos` on the registry at `base`
    /// (`http://127.0.0.1:<port>`). Later repositories mount blobs from the first.
    pub fn push(&self, base: &str, repos: &[&str]) {
        for (i, repo) in repos.iter().enumerate() {
            let from = if i == 0 { None } else { Some(repos[0]) };
            for blob in self.blobs() {
                push_blob(base, repo, blob, from)
                    .unwrap_or_else(|e| panic!("push blob {} to {repo}: {e}", blob.digest));
            }
            for m in self.child_manifests() {
                push_manifest(base, repo, &m.digest, m)
                    .unwrap_or_else(|e| panic!("push manifest {} to {repo}: {e}", m.digest));
            }
            for (tag, m) in &self.tags {
                push_manifest(base, repo, tag, m)
                    .unwrap_or_else(|e| panic!("push {repo}:{tag}: {e}"));
            }
        }
    }
}

// === Pushing ===

/// Uploads one blob: an existing one is skipped, a cross-repository mount is tried when
/// `mount_from` is given, else POST + monolithic PUT.
pub fn push_blob(
    base: &str,
    repo: &str,
    blob: &Blob,
    mount_from: Option<&str>,
) -> Result<(), String> {
    let head = http::send(
        "HEAD",
        &format!("{base}/v2/{repo}/blobs/{}", blob.digest),
        &[],
        Bytes::new(),
    )?;
    if head.status == 200 {
        return Ok(());
    }
    let start = match mount_from {
        Some(from) => format!(
            "{base}/v2/{repo}/blobs/uploads/?mount={}&from={from}",
            blob.digest
        ),
        None => format!("{base}/v2/{repo}/blobs/uploads/"),
    };
    let resp = http::send("POST", &start, &[], Bytes::new())?;
    match resp.status {
        201 => return Ok(()),
        202 => {}
        s => return Err(format!("POST {start}: {s} {}", resp.text())),
    }
    let location = resp
        .header("location")
        .ok_or_else(|| format!("POST {start}: 202 without Location"))?;
    let url = upload_url(base, location, &blob.digest);
    let resp = http::send(
        "PUT",
        &url,
        &[
            ("content-type", "application/octet-stream"),
            ("content-length", &blob.data.len().to_string()),
        ],
        blob.data.clone(),
    )?;
    if resp.status != 201 {
        return Err(format!("PUT {url}: {} {}", resp.status, resp.text()));
    }
    Ok(())
}

/// The URL that completes an upload: `Location` may be absolute or relative to the registry,
/// and usually already carries a query (Distribution's `_state`).
pub fn upload_url(base: &str, location: &str, digest: &str) -> String {
    let abs = if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    };
    let sep = if abs.contains('?') { '&' } else { '?' };
    format!("{abs}{sep}digest={}", digest.replace(':', "%3A"))
}

pub fn push_manifest(base: &str, repo: &str, reference: &str, m: &Blob) -> Result<(), String> {
    let url = format!("{base}/v2/{repo}/manifests/{reference}");
    let resp = http::send(
        "PUT",
        &url,
        &[("content-type", &m.media_type)],
        m.data.clone(),
    )?;
    if resp.status != 201 {
        return Err(format!("PUT {url}: {} {}", resp.status, resp.text()));
    }
    match resp.header("docker-content-digest") {
        Some(d) if d == m.digest => Ok(()),
        other => Err(format!(
            "PUT {url}: registry says digest {other:?}, expected {}",
            m.digest
        )),
    }
}
