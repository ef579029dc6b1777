//! zstd layers for clients that cannot read them, in-process in front of the fake registry with
//! real clients' header sets: who gets tars (Docker < 23 by User-Agent, a route's `layers`,
//! `X-Meta-Layers`), that each converted layer is served under the digest it hashes to — its
//! `diff_id` — and is the zstd layer's tar, that the config is unchanged, that digest requests
//! are never rewritten, and that a bad layer (not zstd, not its diff_id, a bomb, too large) is a
//! clear error with nothing kept.

mod support;

use archway::config::RouteConfig;
use archway::digest::Digest;
use archway::route_policy::LayersMode;
use http::StatusCode;
use serde_json::{json, Value};
use support::clients::{self, ClientHeaders};
use support::fake_registry::{pseudo_random_bytes, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};
use support::images::{self, Image, OCI_LAYER_ZSTD};
use support::{sha256_digest, FakeRegistry, Harness, Reply};

const REPO: &str = "team/app";
const TAG: &str = "/v2/team/app/manifests/v1";
const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// How a client pulls a tag: HEAD, then GET (modern clients GET by digest next; the answer's
/// digest is what it asks for).
async fn pull(h: &Harness, c: &ClientHeaders) -> Reply {
    let headers = c.lines();
    let head = h
        .client
        .request(http::Method::HEAD, &h.url(TAG), &headers)
        .await;
    let get = h.get_with(TAG, &headers).await;
    assert_eq!(
        head.status,
        get.status,
        "HEAD and GET agree: {}",
        get.text()
    );
    assert_eq!(
        head.header("docker-content-digest"),
        get.header("docker-content-digest")
    );
    get
}

/// The answer is `source` with its zstd layers (positions from 0) replaced by their tars, and
/// everything it names is served: the config unchanged, each tar under its diff_id.
async fn assert_converted_from(
    h: &Harness,
    r: &Reply,
    source: &Image,
    zstd: &[usize],
    c: &ClientHeaders,
) {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let digest = sha256_digest(&r.body).to_string();
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    let got = r.json();
    let src: Value = serde_json::from_slice(&source.bytes).unwrap();
    assert_eq!(
        got["config"], src["config"],
        "the config is the image's own"
    );
    let layers = got["layers"].as_array().unwrap();
    assert_eq!(layers.len(), source.layers.len());
    let tar_type = if source.media_type == OCI_MANIFEST {
        OCI_LAYER
    } else {
        DOCKER_LAYER
    };
    for (i, l) in layers.iter().enumerate() {
        if zstd.contains(&i) {
            let (diff_id, tar) = &source.tars[i];
            assert_eq!(l["mediaType"], tar_type, "layer {i}");
            assert_eq!(l["digest"], diff_id.to_string(), "layer {i}");
            assert_eq!(l["size"], tar.len(), "layer {i}");
            assert!(l
                .get("annotations")
                .is_none_or(|a| !a.to_string().contains("zstd-chunked")));
            // The tar is served under its digest.
            let b = h
                .get_with(&format!("/v2/{REPO}/blobs/{diff_id}"), &c.lines())
                .await;
            assert_eq!(b.status, StatusCode::OK, "layer {i}: {}", b.text());
            assert!(b.body == *tar, "layer {i}: the zstd layer's tar");
            assert_eq!(sha256_digest(&b.body), *diff_id);
        } else {
            assert_eq!(l, &src["layers"][i], "layer {i} is as it was");
        }
    }
    // The converted manifest by its digest: the same bytes (a digest request is not rewritten).
    let by_digest = h
        .get_with(&format!("/v2/{REPO}/manifests/{digest}"), &c.lines())
        .await;
    assert_eq!(by_digest.status, StatusCode::OK);
    assert!(by_digest.body == r.body);
    // The config blob is the image's own.
    let config = h
        .get_with(&format!("/v2/{REPO}/blobs/{}", source.config), &c.lines())
        .await;
    assert!(config.body == source.config_bytes);
}

fn docker_2010_on(arch: &str) -> ClientHeaders {
    clients::docker_2010().with_user_agent(&format!(
        "docker/20.10.24+dfsg1 go/go1.19.8 git-commit/5d6db84 kernel/6.1.0 os/linux arch/{arch} UpstreamClient(Docker-Client/20.10.24+dfsg1 \\(linux\\))"
    ))
}

#[tokio::test]
async fn docker_2010_gets_the_platform_child_with_tars_and_others_get_zstd() {
    let h = Harness::start().await;
    let idx = images::zstd_index(&h.fake, REPO, "v1", 7);
    let amd64 = idx.image("linux/amd64");

    // Docker 20.10 takes indexes, but not zstd: the amd64 child, its zstd layer as its tar.
    let docker = clients::docker_2010();
    let r = pull(&h, &docker).await;
    assert_converted_from(&h, &r, amd64, &[1], &docker).await;
    let vary = r.header_all("vary").join(",").to_ascii_lowercase();
    assert!(vary.contains("user-agent"), "vary: {vary}");
    // The zstd layer came from upstream once, whatever asked for its tar since.
    let zstd_digest = &amd64.layers[1].1;
    let path = format!("/v2/{REPO}/blobs/{zstd_digest}");
    assert_eq!(h.fake.count_path("GET", &path), 1);

    // Its arm64 child has no zstd layer: an arm64 Docker 20.10 gets the index as it is.
    let r = pull(&h, &docker_2010_on("arm64")).await;
    assert!(r.body == idx.bytes, "{}", r.text());

    // Clients that read zstd get the index, byte for byte.
    for c in [clients::containerd_16(), clients::skopeo_19()] {
        let r = pull(&h, &c).await;
        assert!(r.body == idx.bytes, "{:?}: {}", c.user_agent(), r.text());
        assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    }
    // A digest request is never rewritten, even for Docker 20.10.
    let r = h
        .get_with(
            &format!("/v2/{REPO}/manifests/{}", amd64.digest),
            &docker.lines(),
        )
        .await;
    assert!(r.body == amd64.bytes);
}

#[tokio::test]
async fn docker_1706_gets_schema2_with_tars_in_one_answer() {
    let h = Harness::start().await;
    let idx = images::zstd_index(&h.fake, REPO, "v1", 8);
    let c = clients::docker_1706();
    let r = h.get_with(TAG, &c.lines()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let got = r.json();
    assert_eq!(
        got["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let amd64 = idx.image("linux/amd64");
    let (diff_id, tar) = &amd64.tars[1];
    assert_eq!(got["layers"][1]["mediaType"], DOCKER_LAYER);
    assert_eq!(got["layers"][1]["digest"], diff_id.to_string());
    assert_eq!(got["layers"][1]["size"], tar.len());
    assert_eq!(got["config"]["digest"], amd64.config.to_string());
}

/// A single-platform image of Docker's zstd flavour (BuildKit 0.10-0.11): containerd 1.6 reads
/// OCI zstd but not this type, containerd 2.0 reads both.
#[tokio::test]
async fn dockers_zstd_type_is_converted_for_containerd_before_2() {
    let h = Harness::start().await;
    let img = docker_zstd_image(&h.fake, "v1", 9);
    let c16 = clients::containerd_16();
    let r = pull(&h, &c16).await;
    assert_converted_from(&h, &r, &img, &[0, 2], &c16).await;
    let c20 = clients::containerd_16().with_user_agent("containerd/2.0.0");
    let r = pull(&h, &c20).await;
    assert!(r.body == img.bytes, "{}", r.text());
}

#[tokio::test]
async fn the_route_and_x_meta_layers_decide_over_the_user_agent() {
    let h = Harness::with(FakeRegistry::start().await, |cfg| {
        cfg.routes.push(RouteConfig {
            matcher: archway::route_policy::RouteMatch {
                user_agent: Some("containerd".into()),
                ..Default::default()
            },
            layers: LayersMode::Compatible,
            ..Default::default()
        });
        cfg.routes.push(RouteConfig {
            matcher: archway::route_policy::RouteMatch {
                user_agent: Some("docker/20.10".into()),
                ..Default::default()
            },
            layers: LayersMode::AsIs,
            ..Default::default()
        });
    })
    .await;
    let img = oci_zstd_image(&h.fake, "v1", 10);
    // compatible: containerd 2.0 (reads zstd) gets tars.
    let c = clients::containerd_16().with_user_agent("containerd/2.0.0");
    let r = pull(&h, &c).await;
    assert_converted_from(&h, &r, &img, &[0], &c).await;
    // as-is: Docker 20.10 (cannot) gets zstd.
    let r = pull(&h, &clients::docker_2010()).await;
    assert!(r.body == img.bytes, "{}", r.text());
    // X-Meta-Layers beats both routes, and the User-Agent.
    let forced = clients::docker_2010().with_header("X-Meta-Layers", "compatible");
    let r = pull(&h, &forced).await;
    assert_converted_from(&h, &r, &img, &[0], &forced).await;
    let kept = c.with_header("X-Meta-Layers", "as-is");
    let r = pull(&h, &kept).await;
    assert!(r.body == img.bytes);
    let curl = ClientHeaders {
        name: "curl".into(),
        headers: vec![
            ("User-Agent".into(), "curl/8.5.0".into()),
            ("Accept".into(), format!("{OCI_MANIFEST}, {OCI_INDEX}")),
        ],
    };
    let forced = curl.with_header("X-Meta-Layers", "compatible");
    let r = pull(&h, &forced).await;
    assert_converted_from(&h, &r, &img, &[0], &forced).await;
    let r = pull(&h, &curl.with_header("X-Meta-Layers", "gzip")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    // Without a header, curl reads zstd: as it is.
    let r = pull(&h, &curl).await;
    assert!(r.body == img.bytes);
}

/// What must never become a converted image: each is a clear error naming the layer, and no
/// blob is kept under the diff_id.
#[tokio::test]
async fn bad_layers_are_clear_errors_and_leave_nothing_cached() {
    let h = Harness::with(FakeRegistry::start().await, |cfg| {
        cfg.conversion.max_layer_size = 100_000;
        cfg.conversion.max_ratio = 20;
        cfg.cache.negative_ttl = std::time::Duration::from_millis(50);
    })
    .await;
    let c = clients::docker_2010();
    let tar = pseudo_random_bytes(1, 5000);
    let zeros = vec![0u8; 70 << 20];
    let cases: Vec<(&str, Vec<u8>, Digest, &str)> = vec![
        (
            "not zstd",
            tar.clone(),
            sha256_digest(b"the tar it claims"),
            "not a valid zstd stream",
        ),
        (
            "a diff_id it does not decompress to",
            zstd::encode_all(&tar[..], 3).unwrap(),
            sha256_digest(b"another tar"),
            "does not decompress to its diff_id",
        ),
        (
            "a decompression bomb",
            zstd::encode_all(&zeros[..], 3).unwrap(),
            sha256_digest(&zeros),
            "decompression bomb",
        ),
        (
            "over conversion.max_layer_size",
            pseudo_random_bytes(2, 200_000),
            sha256_digest(b"big"),
            "max_layer_size",
        ),
    ];
    let mut asked = Vec::new();
    for (i, (what, layer, diff_id, want)) in cases.into_iter().enumerate() {
        asked.push(diff_id.clone());
        let tag = format!("bad{i}");
        let img = image_of(
            &h.fake,
            &tag,
            OCI_MANIFEST,
            &[(OCI_LAYER_ZSTD, layer, diff_id.clone())],
        );
        let r = h
            .get_with(&format!("/v2/{REPO}/manifests/{tag}"), &c.lines())
            .await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{what}: {}", r.text());
        let text = r.text();
        assert!(text.contains(want), "{what}: {text}");
        assert!(text.contains("layer 1"), "{what} names the layer: {text}");
        assert!(
            text.contains(&img.layers[0].1.to_string()),
            "{what}: {text}"
        );
        // Nothing under the diff_id, on disk or served.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let hex = diff_id.hex().to_owned();
        let kept = support::files_under(&h.data_dir())
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(&hex))
            .collect::<Vec<_>>();
        assert!(kept.is_empty(), "{what}: kept {kept:?}");
        let b = h
            .get_with(&format!("/v2/{REPO}/blobs/{diff_id}"), &c.lines())
            .await;
        // Asked for by its digest, it is converted again (and fails again): never whole.
        assert!(
            b.status != StatusCode::OK || !b.complete(),
            "{what}: the diff_id is not served whole"
        );
    }
    // A diff_id is archway's to make: upstream was never asked for one.
    for diff_id in asked {
        let path = format!("/v2/{REPO}/blobs/{diff_id}");
        assert_eq!(h.fake.count_path("GET", &path), 0, "{path}");
        assert_eq!(h.fake.count_path("HEAD", &path), 0, "{path}");
    }
}

/// A config whose diff_ids do not match the manifest's layers is refused too.
#[tokio::test]
async fn an_inconsistent_config_is_refused() {
    let h = Harness::start().await;
    let tar = pseudo_random_bytes(3, 2000);
    let z = zstd::encode_all(&tar[..], 3).unwrap();
    let layer = h.fake.add_blob(REPO, z.clone());
    let config = serde_json::to_vec(
        &json!({"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}),
    )
    .unwrap();
    let config_digest = h.fake.add_blob(REPO, config.clone());
    let m = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER_ZSTD, "digest": layer.to_string(), "size": z.len()}],
    });
    h.fake.add_manifest(
        REPO,
        Some("v1"),
        OCI_MANIFEST,
        serde_json::to_vec(&m).unwrap(),
    );
    let r = h.get_with(TAG, &clients::docker_2010().lines()).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(
        r.text().contains("lists 0 diff_ids for 1 layers"),
        "{}",
        r.text()
    );
}

/// A config or zstd layer upstream does not have (404), or cannot send (503), is an error
/// naming that blob and the cause: never the manifest's 404 BLOB_UNKNOWN, never an image.
#[tokio::test]
async fn a_missing_config_or_zstd_layer_is_a_clear_error_naming_it() {
    let h = Harness::start().await;
    let c = clients::docker_2010();
    let code = |r: &Reply| {
        r.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };

    // The config is gone upstream.
    let img = oci_zstd_image(&h.fake, "noconfig", 41);
    h.fake.remove_blob(REPO, &img.config);
    let r = h
        .get_with(&format!("/v2/{REPO}/manifests/noconfig"), &c.lines())
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(code(&r), "MANIFEST_BLOB_UNKNOWN", "{}", r.text());
    let text = r.text();
    assert!(text.contains("image config"), "{text}");
    assert!(text.contains(&img.config.to_string()), "{text}");
    assert!(text.contains("upstream does not have it"), "{text}");

    // The zstd layer is gone upstream.
    let img = oci_zstd_image(&h.fake, "nolayer", 42);
    let zstd_layer = img.layers[0].1.clone();
    h.fake.remove_blob(REPO, &zstd_layer);
    let r = h
        .get_with(&format!("/v2/{REPO}/manifests/nolayer"), &c.lines())
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(code(&r), "MANIFEST_BLOB_UNKNOWN", "{}", r.text());
    let text = r.text();
    assert!(text.contains("layer 1"), "{text}");
    assert!(text.contains(&zstd_layer.to_string()), "{text}");
    assert!(text.contains("upstream does not have it"), "{text}");
    let diff_id = &img.tars[0].0;
    let b = h
        .get_with(&format!("/v2/{REPO}/blobs/{diff_id}"), &c.lines())
        .await;
    assert_ne!(b.status, StatusCode::OK, "no tar without its zstd layer");

    // The zstd layer fails upstream (503): the status says retry, the text names the layer.
    let img = oci_zstd_image(&h.fake, "failing", 43);
    let zstd_layer = img.layers[0].1.clone();
    // The config is fetched first, then the layer: only the layer's GET fails.
    h.get_with(&format!("/v2/{REPO}/blobs/{}", img.config), &c.lines())
        .await;
    h.fake
        .fault(Some(support::Kind::Blob), support::Fault::status(503));
    let r = h
        .get_with(&format!("/v2/{REPO}/manifests/failing"), &c.lines())
        .await;
    h.fake.clear_faults();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    let text = r.text();
    assert!(text.contains("layer 1"), "{text}");
    assert!(text.contains(&zstd_layer.to_string()), "{text}");
    assert!(text.contains("503"), "the cause: {text}");
}

/// The conversion metrics: a good conversion counts `converted` with its bytes in and out and
/// its seconds; a layer that does not decompress to its diff_id counts `failed`, never
/// `converted`.
#[tokio::test]
async fn conversions_are_counted_by_outcome_with_bytes_and_seconds() {
    use support::metrics::Scrape;
    let h = Harness::start().await;
    let scrape = || Scrape::parse(h.archway.as_ref().unwrap().proxy().metrics().encode());
    let outcome =
        |s: &Scrape, o: &str| s.value("archway_layer_conversions_total", &[("outcome", o)]);
    let bytes =
        |s: &Scrape, w: &str| s.value("archway_layer_conversion_bytes_total", &[("what", w)]);
    let seconds = |s: &Scrape| s.value("archway_layer_conversion_seconds_total", &[]);
    let s = scrape();
    assert_eq!(outcome(&s, "converted"), 0.0);
    assert_eq!(seconds(&s), 0.0);

    let c = clients::docker_2010();
    let img = oci_zstd_image(&h.fake, "v1", 44);
    let r = pull(&h, &c).await;
    assert_converted_from(&h, &r, &img, &[0], &c).await;
    let s = scrape();
    assert_eq!(outcome(&s, "converted"), 1.0, "{}", s.text);
    assert_eq!(outcome(&s, "failed"), 0.0);
    assert_eq!(outcome(&s, "abandoned"), 0.0);
    let zstd_len = img.layers[0].2.len() as f64;
    let tar_len = img.tars[0].1.len() as f64;
    assert_eq!(bytes(&s, "zstd"), zstd_len);
    assert_eq!(bytes(&s, "tar"), tar_len);
    let took = seconds(&s);
    assert!(took > 0.0 && took < 30.0, "seconds: {took}");

    // A whole zstd stream whose tar is not the config's diff_id.
    let tar = pseudo_random_bytes(45, 5000);
    let z = zstd::encode_all(&tar[..], 3).unwrap();
    image_of(
        &h.fake,
        "mismatch",
        OCI_MANIFEST,
        &[(OCI_LAYER_ZSTD, z.clone(), sha256_digest(b"another tar"))],
    );
    let r = h
        .get_with(&format!("/v2/{REPO}/manifests/mismatch"), &c.lines())
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    let s = scrape();
    assert_eq!(
        outcome(&s, "converted"),
        1.0,
        "a mismatch is no conversion: {}",
        s.text
    );
    assert_eq!(outcome(&s, "failed"), 1.0, "{}", s.text);
    assert_eq!(bytes(&s, "zstd"), zstd_len + z.len() as f64);
    assert_eq!(bytes(&s, "tar"), tar_len + tar.len() as f64);
    assert!(seconds(&s) > took, "seconds: {}", seconds(&s));
}

/// A real zstd stream, damaged (bytes flipped, or cut off) but served under its own digest:
/// it passes the blob's digest check and fails decompression. A clear error naming the layer,
/// and nothing left in the data dir: no tar, no temp file.
#[tokio::test]
async fn a_damaged_zstd_layer_is_a_clear_error_and_leaves_no_file() {
    let h = Harness::start().await;
    let c = clients::docker_2010();
    // Compressible, so its blocks are compressed ones (a flipped byte in a raw block would
    // decode to another tar: the diff_id mismatch case).
    let tar: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("line {} of a tar\n", i % 977).into_bytes())
        .collect();
    let z = zstd::encode_all(&tar[..], 3).unwrap();
    let mut flipped = z.clone();
    for b in flipped.iter_mut().skip(z.len() / 3).step_by(7).take(64) {
        *b ^= 0xa5;
    }
    let cut = z[..z.len() / 2].to_vec();
    let diff_id = sha256_digest(&tar);
    for (what, layer) in [("bytes flipped", flipped), ("cut off", cut)] {
        let tag = if what == "cut off" { "cut" } else { "flipped" };
        let img = image_of(
            &h.fake,
            tag,
            OCI_MANIFEST,
            &[(OCI_LAYER_ZSTD, layer.clone(), diff_id.clone())],
        );
        let r = h
            .get_with(&format!("/v2/{REPO}/manifests/{tag}"), &c.lines())
            .await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{what}: {}", r.text());
        let text = r.text();
        assert!(text.contains("layer 1"), "{what}: {text}");
        assert!(
            text.contains(&img.layers[0].1.to_string()),
            "{what}: {text}"
        );
        assert!(text.contains("not a valid zstd stream"), "{what}: {text}");
        // The damaged zstd blob itself is upstream's, whole and verified: it may be kept.
        // Its tar may not, nor any temp file of it.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let data = h.data_dir();
        let left: Vec<_> = support::files_under(&data)
            .into_iter()
            .filter(|p| {
                let rel = p.strip_prefix(&data).unwrap_or(p);
                rel.to_string_lossy().contains(diff_id.hex())
                    || rel.components().any(|c| c.as_os_str() == "tmp")
            })
            .collect();
        assert!(left.is_empty(), "{what}: left {left:?}");
        let b = h
            .get_with(&format!("/v2/{REPO}/blobs/{diff_id}"), &c.lines())
            .await;
        assert!(
            b.status != StatusCode::OK || !b.complete(),
            "{what}: never served whole"
        );
    }
}

// === fixtures ===

/// An image of `manifest_type` whose layers are `(media type, stored bytes, diff_id)`.
fn image_of(
    fake: &FakeRegistry,
    tag: &str,
    manifest_type: &str,
    layers: &[(&str, Vec<u8>, Digest)],
) -> Image {
    let mut stored = Vec::new();
    let mut descriptors = Vec::new();
    for (t, bytes, _) in layers {
        let d = fake.add_blob(REPO, bytes.clone());
        descriptors.push(
            json!({"mediaType": t, "digest": d.to_string(), "size": bytes.len(),
            "annotations": {"io.github.containers.zstd-chunked.manifest-checksum": "sha256:00"}}),
        );
        stored.push(((*t).to_owned(), d, bytes::Bytes::from(bytes.clone())));
    }
    let config_type = if manifest_type == OCI_MANIFEST {
        OCI_CONFIG
    } else {
        "application/vnd.docker.container.image.v1+json"
    };
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(_, _, d)| d.to_string()).collect::<Vec<_>>()}
    }))
    .unwrap();
    let config_digest = fake.add_blob(REPO, config.clone());
    let m = json!({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest.to_string(), "size": config.len()},
        "layers": descriptors,
    });
    let bytes = bytes::Bytes::from(serde_json::to_vec(&m).unwrap());
    let digest = fake.add_manifest(REPO, Some(tag), manifest_type, bytes.clone());
    Image {
        label: "linux/amd64".into(),
        digest,
        bytes,
        media_type: manifest_type.into(),
        config: config_digest,
        config_bytes: config.into(),
        layers: stored,
        tars: Vec::new(),
    }
}

/// Layers whose tars are known: `(media type, tar)`; zstd types are stored compressed.
fn image_with_tars(
    fake: &FakeRegistry,
    tag: &str,
    manifest_type: &str,
    layers: &[(&str, Vec<u8>)],
) -> Image {
    let spec: Vec<(&str, Vec<u8>, Digest)> = layers
        .iter()
        .map(|(t, tar)| {
            let stored = if t.ends_with("zstd") {
                zstd::encode_all(&tar[..], 3).unwrap()
            } else {
                tar.clone()
            };
            (*t, stored, sha256_digest(tar))
        })
        .collect();
    let mut img = image_of(fake, tag, manifest_type, &spec);
    img.tars = layers
        .iter()
        .map(|(_, tar)| (sha256_digest(tar), bytes::Bytes::from(tar.clone())))
        .collect();
    img
}

fn oci_zstd_image(fake: &FakeRegistry, tag: &str, seed: u64) -> Image {
    image_with_tars(
        fake,
        tag,
        OCI_MANIFEST,
        &[
            (OCI_LAYER_ZSTD, pseudo_random_bytes(seed, 3000)),
            (
                support::fake_registry::OCI_LAYER,
                pseudo_random_bytes(seed + 1, 2000),
            ),
        ],
    )
}

fn docker_zstd_image(fake: &FakeRegistry, tag: &str, seed: u64) -> Image {
    image_with_tars(
        fake,
        tag,
        "application/vnd.docker.distribution.manifest.v2+json",
        &[
            (DOCKER_LAYER_ZSTD, pseudo_random_bytes(seed, 3000)),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                pseudo_random_bytes(seed + 1, 2000),
            ),
            (DOCKER_LAYER_ZSTD, pseudo_random_bytes(seed + 2, 4000)),
        ],
    )
}

/// `archway explain` says which zstd types the client reads, why, and that the answer converted.
#[tokio::test]
async fn explain_says_when_and_why_it_converts() {
    use archway::explain::{explain, Hints};
    let fake = FakeRegistry::start().await;
    let img = oci_zstd_image(&fake, "v1", 11);
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::config_for(&fake, dir.path());
    let docker = clients::docker_2010();
    let hints = Hints {
        user_agent: docker.user_agent().map(str::to_owned),
        accept: docker
            .accept_lines()
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..Default::default()
    };
    let image = archway::image_ref::ImageRef::parse("team/app:v1").unwrap();
    let report = explain(cfg, &image, "team/app:v1", &hints).await.unwrap();
    assert_eq!(report.status, 200, "{:?}", report.error);
    let d = report.decision.as_ref().unwrap();
    assert_eq!(d.manifest_digest, img.digest.to_string());
    let layers = d.layers.as_deref().unwrap_or("");
    assert!(layers.contains("Docker Engine before 23.0"), "{layers}");
    assert!(d.layers_converted);
    let text = report.to_text();
    assert!(text.contains("layers converted"), "{text}");
    assert_ne!(
        report.docker_content_digest.as_deref(),
        Some(img.digest.to_string().as_str()),
        "the answer is the converted manifest"
    );
}

/// A conversion slower than `conversion.max_wait`: the manifest request gets 503 saying so,
/// the conversion goes on, and the next request finds it done. Meanwhile other images are
/// answered: a conversion holds no request but its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_conversion_is_503_then_done_and_blocks_no_other_pull() {
    let h = Harness::with(FakeRegistry::start().await, |cfg| {
        cfg.conversion.max_wait = std::time::Duration::from_millis(300);
        cfg.conversion.max_concurrent = 1;
    })
    .await;
    let img = image_with_tars(
        &h.fake,
        "slow",
        OCI_MANIFEST,
        &[(OCI_LAYER_ZSTD, pseudo_random_bytes(31, 1 << 20))],
    );
    let other = images::zstd_index(&h.fake, REPO, "other", 12);
    // Every blob from upstream takes about 1.6 s (its zstd layer's body crawls).
    h.fake.fault(
        Some(support::Kind::Blob),
        support::Fault::SlowBody {
            chunk: 64 << 10,
            every: std::time::Duration::from_millis(100),
        },
    );
    let docker = clients::docker_2010();
    let path = format!("/v2/{REPO}/manifests/slow");
    let slow = {
        let client = h.client.clone();
        let url = h.url(&path);
        let headers: Vec<(String, String)> = docker.headers.clone();
        tokio::spawn(async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            client.get_with(&url, &headers).await
        })
    };
    // Another image's tag, for a client that reads zstd: answered while the conversion runs.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let r = h
        .get_with(
            &format!("/v2/{REPO}/manifests/other"),
            &clients::containerd_16().lines(),
        )
        .await;
    assert!(r.body == other.bytes, "{}", r.text());
    assert!(
        !slow.is_finished(),
        "answered while the conversion still ran"
    );
    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(r.text().contains("still being converted"), "{}", r.text());
    // The conversion went on: a later request gets the converted manifest.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = h.get_with(&path, &docker.lines()).await;
        if r.status == StatusCode::OK {
            assert_converted_from(&h, &r, &img, &[0], &docker).await;
            break;
        }
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        assert!(std::time::Instant::now() < deadline, "never converted");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `conversion.max_concurrent = 1`: while one conversion holds the permit (its zstd layer's
/// body crawls from upstream), a second image's conversion waits — its zstd layer is already
/// downloaded, its tar not begun — and a pull that converts nothing is served meanwhile. The
/// second ends only after the first is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_conversion_waits_for_the_permit_while_other_pulls_are_served() {
    use support::metrics::Scrape;
    let h = Harness::with(FakeRegistry::start().await, |cfg| {
        cfg.conversion.max_concurrent = 1;
    })
    .await;
    let converted = |h: &Harness| {
        Scrape::parse(h.archway.as_ref().unwrap().proxy().metrics().encode()).value(
            "archway_layer_conversions_total",
            &[("outcome", "converted")],
        )
    };
    let first = image_with_tars(
        &h.fake,
        "first",
        OCI_MANIFEST,
        &[(OCI_LAYER_ZSTD, pseudo_random_bytes(51, 1 << 20))],
    );
    let second = image_with_tars(
        &h.fake,
        "second",
        OCI_MANIFEST,
        &[(OCI_LAYER_ZSTD, pseudo_random_bytes(52, 3000))],
    );
    let other = images::zstd_index(&h.fake, REPO, "other", 53);
    // Only the first image's zstd layer is slow: about 1.6 s.
    h.fake.fault_path(
        &format!("/v2/{REPO}/blobs/{}", first.layers[0].1),
        support::Fault::SlowBody {
            chunk: 64 << 10,
            every: std::time::Duration::from_millis(100),
        },
    );
    let docker = clients::docker_2010();
    let spawn_pull = |tag: &str| {
        let client = h.client.clone();
        let url = h.url(&format!("/v2/{REPO}/manifests/{tag}"));
        let headers: Vec<(String, String)> = docker.headers.clone();
        tokio::spawn(async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            client.get_with(&url, &headers).await
        })
    };
    let started = std::time::Instant::now();
    let a = spawn_pull("first");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let b = spawn_pull("second");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    // A pull that converts nothing is answered meanwhile.
    let r = h
        .get_with(
            &format!("/v2/{REPO}/manifests/other"),
            &clients::containerd_16().lines(),
        )
        .await;
    assert!(r.body == other.bytes, "{}", r.text());
    // The second image's zstd layer is here (fetched before the permit is asked for); its
    // conversion, a few KiB, would be done in milliseconds if it had a permit.
    let second_layer = format!("/v2/{REPO}/blobs/{}", second.layers[0].1);
    assert_eq!(h.fake.count_path("GET", &second_layer), 1);
    assert!(!a.is_finished(), "the first conversion still runs");
    assert!(
        !b.is_finished(),
        "the second conversion waits for the permit"
    );
    assert_eq!(converted(&h), 0.0);
    assert!(started.elapsed() < std::time::Duration::from_millis(1400));
    let rb = b.await.unwrap();
    assert_eq!(rb.status, StatusCode::OK, "{}", rb.text());
    assert!(
        a.is_finished() || converted(&h) == 2.0,
        "the second ended only after the first"
    );
    let ra = a.await.unwrap();
    assert_converted_from(&h, &ra, &first, &[0], &docker).await;
    assert_converted_from(&h, &rb, &second, &[0], &docker).await;
    assert_eq!(converted(&h), 2.0);
}

/// A restart (an upgrade) mid-pull: the tag was answered with tars, archway restarts on the
/// same data dir, and the tar the client has yet to GET was evicted meanwhile. The GET by its
/// digest converts it again from its zstd layer (which one is read back from the data dir).
#[tokio::test]
async fn after_a_restart_an_evicted_tar_is_converted_again_on_its_get() {
    let mut h = Harness::start().await;
    let docker = clients::docker_2010();
    let img = oci_zstd_image(&h.fake, "v1", 61);
    let r = pull(&h, &docker).await;
    assert_converted_from(&h, &r, &img, &[0], &docker).await;
    let (diff_id, tar) = img.tars[0].clone();

    // Stopped; the tar evicted (its file gone); started again on the same data dir.
    if let Some(a) = h.archway.take() {
        a.shutdown().await;
    }
    let data = h.data_dir();
    let tars: Vec<_> = support::files_under(&data)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(diff_id.hex()))
        .collect();
    assert!(!tars.is_empty(), "the tar was cached");
    for p in &tars {
        std::fs::remove_file(p).unwrap();
    }
    h.restart().await;

    // The client goes on with the manifest it had: the converted one, by digest...
    let digest = sha256_digest(&r.body);
    let m = h
        .get_with(&format!("/v2/{REPO}/manifests/{digest}"), &docker.lines())
        .await;
    assert_eq!(m.status, StatusCode::OK, "{}", m.text());
    assert!(m.body == r.body);
    // ...and its layers by digest: the tar made again, byte for byte.
    let b = h
        .get_with(&format!("/v2/{REPO}/blobs/{diff_id}"), &docker.lines())
        .await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.text());
    assert!(b.body == tar, "the zstd layer's tar");
    // Upstream was never asked for the diff_id: it was archway's to make.
    let path = format!("/v2/{REPO}/blobs/{diff_id}");
    assert_eq!(h.fake.count_path("GET", &path), 0);
    assert_eq!(h.fake.count_path("HEAD", &path), 0);
}

/// `X-Meta-Layers` changes the answer under every route's `layers`, so every answer that could
/// be converted says it varies on it: `as-is` and `compatible` routes too, Docker's manifest
/// type too.
#[tokio::test]
async fn answers_that_x_meta_layers_can_change_vary_on_it() {
    let h = Harness::with(FakeRegistry::start().await, |cfg| {
        for (ua, layers) in [
            ("docker/20.10", LayersMode::AsIs),
            ("containerd", LayersMode::Compatible),
        ] {
            cfg.routes.push(RouteConfig {
                matcher: archway::route_policy::RouteMatch {
                    user_agent: Some(ua.into()),
                    ..Default::default()
                },
                layers,
                ..Default::default()
            });
        }
    })
    .await;
    let img = docker_zstd_image(&h.fake, "v1", 71);
    let vary = |r: &Reply| r.header_all("vary").join(",").to_ascii_lowercase();
    let curl = ClientHeaders {
        name: "curl".into(),
        headers: vec![("User-Agent".into(), "curl/8.5.0".into())],
    };
    let c20 = clients::containerd_16().with_user_agent("containerd/2.0.0");
    for (what, c, converted) in [
        ("as-is route", clients::docker_2010(), false),
        ("compatible route", c20.clone(), true),
        ("auto, reads zstd", curl.clone(), false),
        (
            "auto, forced",
            curl.with_header("X-Meta-Layers", "compatible"),
            true,
        ),
        (
            "as-is route, forced",
            clients::docker_2010().with_header("X-Meta-Layers", "compatible"),
            true,
        ),
        (
            "compatible route, kept",
            c20.with_header("X-Meta-Layers", "as-is"),
            false,
        ),
    ] {
        let r = pull(&h, &c).await;
        assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());
        assert_eq!(r.body != img.bytes, converted, "{what}");
        let v = vary(&r);
        for hint in ["accept", "user-agent", "x-meta-layers"] {
            assert!(v.contains(hint), "{what}: vary {v:?} lacks {hint}");
        }
    }
    // A digest request is never rewritten: no Vary.
    let r = h
        .get_with(
            &format!("/v2/{REPO}/manifests/{}", img.digest),
            &clients::docker_2010().lines(),
        )
        .await;
    assert!(r.body == img.bytes);
    assert!(!vary(&r).contains("x-meta-layers"), "{}", vary(&r));
}
