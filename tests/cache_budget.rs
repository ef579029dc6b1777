//! Issue 17: one disk budget. Manifests and tag records on disk count against `cache.max_size`
//! with the blobs, and leave with them, least recently used first.

mod support;

use http::StatusCode;
use std::path::Path;
use support::{dir_size, sha256_digest, FakeRegistry, Harness};

const MIB: u64 = 1 << 20;
const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const MAX_SIZE: u64 = 8 * MIB;

/// A valid OCI manifest of about `len` bytes (the bulk in an annotation), distinct per `n`.
fn big_manifest(n: u64, len: u64) -> Vec<u8> {
    let pad = "x".repeat(len as usize);
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256_digest(&n.to_be_bytes()).to_string(),
            "size": 8,
        },
        "layers": [],
        "annotations": {"n": n.to_string(), "pad": pad},
    }))
    .unwrap()
}

fn cache_bytes(dir: &Path) -> u64 {
    ["blobs", "manifests", "tags"]
        .iter()
        .map(|d| dir_size(&dir.join(d)))
        .sum()
}

fn manifest_file(dir: &Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    dir.join("manifests/sha256").join(&hex[..2]).join(hex)
}

/// The red-team's reproduction, in-process: 40 distinct manifests of 0.5–3.5 MiB pushed to an
/// upstream and pulled by tag through archway made 133 MiB under `data_dir/manifests` with
/// `max_size = "8MiB"`. Now the cache's files stay within `max_size` (no slack: eviction runs
/// as each file is kept), the manifest in use survives, the oldest goes, and an evicted one is
/// fetched again from upstream.
#[tokio::test]
async fn manifests_and_tags_on_disk_share_max_size_with_the_blobs() {
    let mut h = Harness::with(FakeRegistry::start().await, |c| {
        c.cache.max_size = MAX_SIZE;
        // Smaller than any of them: every read goes to the disk (and touches it).
        c.cache.memory_size = 64 << 10;
    })
    .await;
    let dir = h.data_dir();
    let mut digests = Vec::new();
    // The one used all along: half a MiB.
    let hot = big_manifest(1000, MIB / 2);
    let hot_digest = h.fake.add_manifest(
        "lib/big",
        Some("hot"),
        "application/vnd.oci.image.manifest.v1+json",
        hot.clone(),
    );
    let mut most = 0;
    for n in 0..40u64 {
        let len = MIB / 2 + (n * 7919 % 7) * MIB / 2; // 0.5 – 3.5 MiB
        let body = big_manifest(n, len);
        let d = h.fake.add_manifest(
            "lib/big",
            Some(&format!("t{n}")),
            "application/vnd.oci.image.manifest.v1+json",
            body.clone(),
        );
        let r = h
            .get_with(&format!("/v2/lib/big/manifests/t{n}"), &[("accept", OCI)])
            .await;
        assert_eq!(r.status, StatusCode::OK, "t{n}");
        assert!(r.body == body, "t{n}: the exact bytes");
        let r = h
            .get_with("/v2/lib/big/manifests/hot", &[("accept", OCI)])
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body == hot, "hot: the exact bytes");
        digests.push(d);
        most = most.max(cache_bytes(&dir));
    }
    assert!(
        most <= MAX_SIZE,
        "at most {most} bytes under blobs/, manifests/, tags/ with max_size {MAX_SIZE}"
    );
    assert!(
        manifest_file(&dir, &hot_digest.to_string()).exists(),
        "the manifest in use is kept"
    );
    assert!(
        !manifest_file(&dir, &digests[0].to_string()).exists(),
        "the least recently used is evicted"
    );
    assert!(
        manifest_file(&dir, &digests[39].to_string()).exists(),
        "the newest is kept"
    );

    // An evicted manifest is fetched again by digest.
    let before = h.fake.total();
    let r = h
        .get_with(
            &format!("/v2/lib/big/manifests/{}", digests[0]),
            &[("accept", OCI)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body == big_manifest(0, MIB / 2), "t0: the exact bytes");
    assert!(h.fake.total() > before, "from upstream");

    // Start-up counts them too: a smaller budget trims what is on disk.
    h.restart_with(|c| c.cache.max_size = 2 * MIB).await;
    let after = cache_bytes(&dir);
    assert!(after <= 2 * MIB, "{after} bytes after a restart with 2 MiB");
    let r = h
        .get_with("/v2/lib/big/manifests/hot", &[("accept", OCI)])
        .await;
    assert_eq!(r.status, StatusCode::OK);
}
