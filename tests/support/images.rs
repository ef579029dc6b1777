//! Multi-platform fixtures stored in a [`FakeRegistry`]: buildx-style OCI indexes with
//! attestation manifests, Docker manifest lists, a Docker-Hub-like list of Windows builds, a
//! nested index and an image with a zstd layer. Every manifest and blob is really stored, so a
//! client can pull the whole image; digests are computed here with sha2.
#![allow(dead_code)]

use super::fake_registry::{
    pseudo_random_bytes, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX,
    OCI_LAYER, OCI_MANIFEST,
};
use super::FakeRegistry;
use archway::digest::Digest;
use bytes::Bytes;
use serde_json::{json, Value};

pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_NONDISTRIBUTABLE_LAYER: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const IN_TOTO: &str = "application/vnd.in-toto+json";

/// One stored image manifest with its blobs.
#[derive(Debug, Clone)]
pub struct Image {
    /// As given to the builder: `linux/arm/v7`, `windows/amd64:10.0.17763.5329`.
    pub label: String,
    pub digest: Digest,
    pub bytes: Bytes,
    pub media_type: String,
    pub config: Digest,
    pub config_bytes: Bytes,
    /// `(media type, digest, bytes)`; bytes are empty for a layer left out of the registry
    /// (a non-distributable layer).
    pub layers: Vec<(String, Digest, Bytes)>,
    /// Each layer's uncompressed tar (as the config's `diff_ids` name it): a zstd layer's is
    /// what it decompresses to; the others' is their own bytes (the fixture's simplification).
    pub tars: Vec<(Digest, Bytes)>,
}

/// One stored index (OCI index or Docker list) and what it points at.
#[derive(Debug, Clone)]
pub struct Index {
    pub digest: Digest,
    pub bytes: Bytes,
    pub media_type: String,
    /// The runnable images, by label.
    pub images: Vec<Image>,
    /// buildx attestation manifests, if any.
    pub attestations: Vec<Digest>,
}

impl Index {
    /// The image labelled `label`; panics when there is none.
    pub fn image(&self, label: &str) -> &Image {
        self.images
            .iter()
            .find(|i| i.label == label)
            .unwrap_or_else(|| panic!("no image {label} in the fixture"))
    }
}

/// `linux/arm/v7` → `{"architecture":"arm","os":"linux","variant":"v7"}`;
/// `windows/amd64:10.0.17763.5329` adds `"os.version"`.
pub fn platform_json(label: &str) -> Value {
    let (spec, version) = match label.split_once(':') {
        Some((s, v)) => (s, Some(v)),
        None => (label, None),
    };
    let mut parts = spec.split('/');
    let os = parts.next().unwrap();
    let arch = parts.next().unwrap();
    let mut p = json!({"architecture": arch, "os": os});
    if let Some(v) = parts.next() {
        p["variant"] = v.into();
    }
    if let Some(v) = version {
        p["os.version"] = v.into();
    }
    p
}

/// An OCI image for `label` whose layers have the given media types (small pseudo-random
/// blobs). A non-distributable layer gets `urls` and is not stored.
pub fn oci_image(
    fake: &FakeRegistry,
    repo: &str,
    seed: u64,
    label: &str,
    layer_types: &[&str],
) -> Image {
    image(
        fake,
        repo,
        seed,
        label,
        layer_types,
        OCI_MANIFEST,
        OCI_CONFIG,
    )
}

/// A Docker schema2 image for `label` with two gzip layers.
pub fn docker_image(fake: &FakeRegistry, repo: &str, seed: u64, label: &str) -> Image {
    image(
        fake,
        repo,
        seed,
        label,
        &[DOCKER_LAYER, DOCKER_LAYER],
        DOCKER_MANIFEST,
        DOCKER_CONFIG,
    )
}

fn image(
    fake: &FakeRegistry,
    repo: &str,
    seed: u64,
    label: &str,
    layer_types: &[&str],
    manifest_type: &str,
    config_type: &str,
) -> Image {
    let mut layers = Vec::new();
    let mut tars = Vec::new();
    let mut descriptors = Vec::new();
    for (i, t) in layer_types.iter().enumerate() {
        let tar = Bytes::from(pseudo_random_bytes(
            seed.wrapping_mul(97).wrapping_add(i as u64),
            1_000 + 500 * i,
        ));
        tars.push((super::sha256_digest(&tar), tar.clone()));
        // A zstd layer is really zstd: it decompresses to the tar its diff_id names.
        let bytes = if t.ends_with("zstd") {
            Bytes::from(zstd::encode_all(&tar[..], 3).unwrap())
        } else {
            tar
        };
        let mut d = json!({"mediaType": t, "size": bytes.len()});
        let digest = if *t == OCI_NONDISTRIBUTABLE_LAYER {
            let digest = super::sha256_digest(&bytes);
            d["urls"] = json!([format!(
                "https://mcr.microsoft.com/v2/windows/servercore/blobs/{digest}"
            )]);
            layers.push(((*t).to_owned(), digest.clone(), Bytes::new()));
            digest
        } else {
            let digest = fake.add_blob(repo, bytes.clone());
            layers.push(((*t).to_owned(), digest.clone(), bytes));
            digest
        };
        d["digest"] = digest.to_string().into();
        descriptors.push(d);
    }
    let mut config = platform_json(label);
    config["config"] = json!({"Env": [format!("FIXTURE_SEED={seed}")]});
    config["rootfs"] = json!({
        "type": "layers",
        "diff_ids": tars.iter().map(|(d, _)| d.to_string()).collect::<Vec<_>>(),
    });
    let config_bytes = Bytes::from(serde_json::to_vec(&config).unwrap());
    let config_digest = fake.add_blob(repo, config_bytes.clone());
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest.to_string(), "size": config_bytes.len()},
        "layers": descriptors,
        "annotations": {"org.opencontainers.image.created": "2024-01-15T10:00:00Z"},
    });
    if manifest_type == DOCKER_MANIFEST {
        // Docker schema2 has no annotations.
        manifest.as_object_mut().unwrap().remove("annotations");
    }
    let bytes = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap());
    let digest = fake.add_manifest(repo, None, manifest_type, bytes.clone());
    Image {
        label: label.to_owned(),
        digest,
        bytes,
        media_type: manifest_type.to_owned(),
        config: config_digest,
        config_bytes,
        layers,
        tars,
    }
}

/// A buildx attestation manifest (in-toto provenance); its index entry names the image.
fn attestation(fake: &FakeRegistry, repo: &str, seed: u64) -> (Digest, usize) {
    let statement = Bytes::from(format!(
        r#"{{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://slsa.dev/provenance/v0.2","predicate":{{"seed":{seed}}}}}"#
    ));
    let layer = fake.add_blob(repo, statement.clone());
    let config = Bytes::from(
        r#"{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#,
    );
    let config_digest = fake.add_blob(repo, config.clone());
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{
            "mediaType": IN_TOTO,
            "digest": layer.to_string(),
            "size": statement.len(),
            "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
        }],
    });
    let bytes = serde_json::to_vec(&m).unwrap();
    let len = bytes.len();
    (fake.add_manifest(repo, None, OCI_MANIFEST, bytes), len)
}

fn descriptor(img: &Image) -> Value {
    json!({
        "mediaType": img.media_type,
        "digest": img.digest.to_string(),
        "size": img.bytes.len(),
        "platform": platform_json(&img.label),
    })
}

/// Stores an index of `media_type` over `entries` (compact JSON, as buildx writes it).
pub fn store_index(
    fake: &FakeRegistry,
    repo: &str,
    tag: Option<&str>,
    media_type: &str,
    entries: Vec<Value>,
) -> (Digest, Bytes) {
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": entries,
    });
    let bytes = Bytes::from(serde_json::to_vec(&index).unwrap());
    let digest = fake.add_manifest(repo, tag, media_type, bytes.clone());
    (digest, bytes)
}

/// What `docker buildx build --platform … --provenance=true --push` makes: an OCI index with one
/// OCI image per platform, then one attestation manifest per image (`unknown/unknown`,
/// `vnd.docker.reference.type: attestation-manifest`, `vnd.docker.reference.digest`).
pub fn buildx_index(
    fake: &FakeRegistry,
    repo: &str,
    tag: &str,
    seed: u64,
    platforms: &[&str],
) -> Index {
    let images: Vec<Image> = platforms
        .iter()
        .enumerate()
        .map(|(i, p)| {
            oci_image(
                fake,
                repo,
                seed * 100 + i as u64,
                p,
                &[OCI_LAYER, OCI_LAYER],
            )
        })
        .collect();
    let mut entries: Vec<Value> = images.iter().map(descriptor).collect();
    let mut attestations = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let (d, size) = attestation(fake, repo, seed * 100 + 50 + i as u64);
        entries.push(json!({
            "mediaType": OCI_MANIFEST,
            "digest": d.to_string(),
            "size": size,
            "annotations": {
                "vnd.docker.reference.digest": img.digest.to_string(),
                "vnd.docker.reference.type": "attestation-manifest",
            },
            "platform": {"architecture": "unknown", "os": "unknown"},
        }));
        attestations.push(d);
    }
    let (digest, bytes) = store_index(fake, repo, Some(tag), OCI_INDEX, entries);
    Index {
        digest,
        bytes,
        media_type: OCI_INDEX.to_owned(),
        images,
        attestations,
    }
}

/// A Docker manifest list over one Docker schema2 image per label, in the order given.
pub fn docker_list(
    fake: &FakeRegistry,
    repo: &str,
    tag: &str,
    seed: u64,
    labels: &[&str],
) -> Index {
    let images: Vec<Image> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| docker_image(fake, repo, seed * 100 + i as u64, l))
        .collect();
    let (digest, bytes) = store_index(
        fake,
        repo,
        Some(tag),
        DOCKER_LIST,
        images.iter().map(descriptor).collect(),
    );
    Index {
        digest,
        bytes,
        media_type: DOCKER_LIST.to_owned(),
        images,
        attestations: Vec::new(),
    }
}

/// The Windows builds of [`windows_list`], in index order. For 17763 the highest revision is
/// .5830 (a string compare would pick .999; first entry is .5329, last .1000); for 20348 it is
/// .10000 (a string compare and the first entry both give .2227).
pub const WINDOWS_BUILDS: [&str; 6] = [
    "windows/amd64:10.0.17763.5329",
    "windows/amd64:10.0.17763.999",
    "windows/amd64:10.0.20348.2227",
    "windows/amd64:10.0.17763.5830",
    "windows/amd64:10.0.17763.1000",
    "windows/amd64:10.0.20348.10000",
];
pub const LTSC2019_NEWEST: &str = "windows/amd64:10.0.17763.5830";
pub const LTSC2022_NEWEST: &str = "windows/amd64:10.0.20348.10000";

/// Like a Docker Hub multi-OS image (golang, python…): a Docker manifest list with linux/amd64
/// first, then the Windows builds of [`WINDOWS_BUILDS`].
pub fn windows_list(fake: &FakeRegistry, repo: &str, tag: &str, seed: u64) -> Index {
    let mut labels = vec!["linux/amd64"];
    labels.extend(WINDOWS_BUILDS);
    docker_list(fake, repo, tag, seed, &labels)
}

/// An OCI index of Windows OCI images as Windows builds push them: each has a
/// non-distributable base layer (with `urls`, not in the registry) and a gzip layer.
pub fn windows_oci_index(fake: &FakeRegistry, repo: &str, tag: &str, seed: u64) -> Index {
    let images: Vec<Image> = WINDOWS_BUILDS
        .iter()
        .enumerate()
        .map(|(i, l)| {
            oci_image(
                fake,
                repo,
                seed * 100 + i as u64,
                l,
                &[OCI_NONDISTRIBUTABLE_LAYER, OCI_LAYER],
            )
        })
        .collect();
    let (digest, bytes) = store_index(
        fake,
        repo,
        Some(tag),
        OCI_INDEX,
        images.iter().map(descriptor).collect(),
    );
    Index {
        digest,
        bytes,
        media_type: OCI_INDEX.to_owned(),
        images,
        attestations: Vec::new(),
    }
}

/// A two-level OCI index: the top level offers linux/arm64 directly and linux/amd64 through an
/// inner buildx-style index (amd64 image, 386 image, attestation). `images` holds the arm64, the
/// inner amd64 and the inner 386 images; `inner` is the inner index.
pub fn nested_index(fake: &FakeRegistry, repo: &str, tag: &str, seed: u64) -> (Index, Index) {
    let inner = buildx_index(
        fake,
        repo,
        "inner-only",
        seed * 10 + 1,
        &["linux/amd64", "linux/386"],
    );
    fake.remove_tag(repo, "inner-only");
    let arm64 = oci_image(fake, repo, seed * 10 + 2, "linux/arm64", &[OCI_LAYER]);
    let entries = vec![
        descriptor(&arm64),
        json!({
            "mediaType": OCI_INDEX,
            "digest": inner.digest.to_string(),
            "size": inner.bytes.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
        }),
    ];
    let (digest, bytes) = store_index(fake, repo, Some(tag), OCI_INDEX, entries);
    let mut images = vec![arm64];
    images.extend(inner.images.iter().cloned());
    (
        Index {
            digest,
            bytes,
            media_type: OCI_INDEX.to_owned(),
            images,
            attestations: inner.attestations.clone(),
        },
        inner,
    )
}

/// An OCI index whose linux/amd64 image has a gzip and a zstd layer (`buildx
/// --output compression=zstd`), plus a linux/arm64 image with gzip only.
pub fn zstd_index(fake: &FakeRegistry, repo: &str, tag: &str, seed: u64) -> Index {
    let amd64 = oci_image(
        fake,
        repo,
        seed * 10,
        "linux/amd64",
        &[OCI_LAYER, OCI_LAYER_ZSTD],
    );
    let arm64 = oci_image(fake, repo, seed * 10 + 1, "linux/arm64", &[OCI_LAYER]);
    let images = vec![amd64, arm64];
    let (digest, bytes) = store_index(
        fake,
        repo,
        Some(tag),
        OCI_INDEX,
        images.iter().map(descriptor).collect(),
    );
    Index {
        digest,
        bytes,
        media_type: OCI_INDEX.to_owned(),
        images,
        attestations: Vec::new(),
    }
}
