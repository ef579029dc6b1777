use super::*;
use bytes::Bytes;

fn d(n: u8) -> Digest {
    Digest::sha256_of(&[n])
}

fn spec(image: &str, reference: &str, platforms: &[&str]) -> PinSpec {
    PinSpec {
        image: image.into(),
        upstream: "docker.io".into(),
        repository: "library/alpine".into(),
        reference: reference.into(),
        platforms: platforms.iter().map(|p| p.to_string()).collect(),
    }
}

fn manifest(media_type: &str, json: String) -> Manifest {
    let bytes = Bytes::from(json);
    Manifest {
        digest: Digest::sha256_of(&bytes),
        media_type: media_type.into(),
        bytes,
    }
}

fn image(config: u8, layers: &[u8]) -> Manifest {
    let layers: Vec<String> = layers
        .iter()
        .map(|l| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}"#, d(*l), 1000 + *l as u64))
        .collect();
    manifest(
        media_type::OCI_MANIFEST,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":10}},"layers":[{}]}}"#,
            media_type::OCI_MANIFEST,
            d(config),
            layers.join(",")
        ),
    )
}

fn index(children: &[(&Manifest, &str)]) -> Manifest {
    let entries: Vec<String> = children
        .iter()
        .map(|(m, p)| {
            let (os, arch) = p.split_once('/').unwrap();
            format!(
                r#"{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"os":"{os}","architecture":"{arch}"}}}}"#,
                m.media_type,
                m.digest,
                m.bytes.len()
            )
        })
        .collect();
    manifest(
        media_type::OCI_INDEX,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#,
            media_type::OCI_INDEX,
            entries.join(",")
        ),
    )
}

#[test]
fn a_tag_pin_fills_as_its_manifests_pass_and_keeps_only_its_platforms() {
    let amd = image(1, &[2, 3]);
    let arm = image(4, &[5, 3]);
    let unknown = image(6, &[]);
    let idx = index(&[
        (&amd, "linux/amd64"),
        (&arm, "linux/arm64"),
        (&unknown, "unknown/unknown"),
    ]);
    let mut set = PinSet::default();
    assert!(set.add(
        spec("alpine:3.20", "3.20", &["linux/amd64"]),
        Origin::Config
    ));
    assert_eq!(
        set.held(),
        (vec![], vec![]),
        "nothing until the tag answers"
    );
    // Another tag, another repository: not this pin.
    assert!(!set.tag_resolved("docker.io", "library/alpine", "3.19", &idx.digest));
    assert!(!set.tag_resolved("ghcr.io", "library/alpine", "3.20", &idx.digest));
    assert!(set.tag_resolved("docker.io", "library/alpine", "3.20", &idx.digest));
    assert!(set.holds_manifest(&idx.digest));
    // The index: only the amd64 child (attestations never).
    let (children, changed) = set.manifest_seen(&idx);
    assert!(changed);
    assert_eq!(children, vec![amd.digest.clone()]);
    // A manifest no pin holds changes nothing.
    assert_eq!(set.manifest_seen(&arm), (vec![], false));
    let (children, changed) = set.manifest_seen(&amd);
    assert!(changed && children.is_empty());
    let (blobs, manifests) = set.held();
    let mut want_blobs = vec![d(1), d(2), d(3)];
    want_blobs.sort();
    let mut want_manifests = vec![idx.digest.clone(), amd.digest.clone()];
    want_manifests.sort();
    assert_eq!((blobs, manifests), (want_blobs, want_manifests));
    let pin = &set.pins()[0];
    assert_eq!(
        pin.bytes(),
        idx.bytes.len() as u64 + amd.bytes.len() as u64 + 10 + 1002 + 1003
    );
    // Seen again: nothing new.
    assert_eq!(set.manifest_seen(&amd), (vec![], false));
}

#[test]
fn the_pin_follows_its_tag_and_releases_the_old_digest() {
    let old = image(1, &[2, 3]);
    let new = image(4, &[3, 5]);
    let mut set = PinSet::default();
    set.add(spec("alpine", "latest", &[]), Origin::Runtime);
    set.tag_resolved("docker.io", "library/alpine", "latest", &old.digest);
    set.manifest_seen(&old);
    assert!(set.held().0.contains(&d(2)));
    // Same answer again: no change.
    assert!(!set.tag_resolved("docker.io", "library/alpine", "latest", &old.digest));
    assert!(set.tag_resolved("docker.io", "library/alpine", "latest", &new.digest));
    assert_eq!(set.held(), (vec![], vec![new.digest.clone()]));
    set.manifest_seen(&new);
    let (blobs, manifests) = set.held();
    assert!(
        !blobs.contains(&d(2)) && !blobs.contains(&d(1)),
        "old-only blobs released"
    );
    assert!(blobs.contains(&d(3)) && blobs.contains(&d(5)) && blobs.contains(&d(4)));
    assert_eq!(manifests, vec![new.digest.clone()]);
    assert!(!set.holds_manifest(&old.digest));
}

#[test]
fn digest_pins_hold_their_digest_at_once_and_same_targets_are_one_pin() {
    let m = image(1, &[2]);
    let mut set = PinSet::default();
    let by_digest = spec("alpine@x", &m.digest.to_string(), &[]);
    assert!(set.add(by_digest.clone(), Origin::Runtime));
    assert_eq!(set.held().1, vec![m.digest.clone()]);
    // The same target under another spelling is the same pin; config wins over runtime.
    let mut again = by_digest.clone();
    again.image = "docker.io/library/alpine@x".into();
    assert!(!set.add(again, Origin::Config));
    assert_eq!(set.len(), 1);
    assert_eq!(set.pins()[0].origin, Origin::Config);
    assert_eq!(set.runtime().count(), 0);
    assert!(set.holds_manifest(&m.digest));
    assert!(set.remove(&by_digest).is_some());
    assert!(set.is_empty());
    assert!(!set.holds_manifest(&m.digest), "released");
    assert_eq!(set.held(), (vec![], vec![]));
}

#[test]
fn restore_keeps_what_was_known_for_the_same_pins() {
    let m = image(1, &[2]);
    let mut before = PinSet::default();
    before.add(spec("alpine", "latest", &[]), Origin::Config);
    before.tag_resolved("docker.io", "library/alpine", "latest", &m.digest);
    before.manifest_seen(&m);
    let json = serde_json::to_vec(&before).unwrap();
    let read: PinSet = serde_json::from_slice(&json).unwrap();
    // The lookups every request makes are rebuilt from what was read.
    assert!(read.holds_manifest(&m.digest));
    assert!(read.is_pinned_tag("docker.io", "library/alpine", "latest"));
    assert!(!read.is_pinned_tag("docker.io", "library/alpine", "edge"));
    assert!(
        !json.windows(8).any(|w| w == b"held_man"),
        "only the pins are written"
    );
    let mut now = PinSet::default();
    now.add(spec("alpine", "latest", &[]), Origin::Config);
    now.add(spec("busybox", "1", &[]), Origin::Config);
    now.restore(&read);
    assert_eq!(now.held(), before.held());
    // Other platforms than before: chosen again.
    let mut other = PinSet::default();
    other.add(spec("alpine", "latest", &["linux/arm64"]), Origin::Config);
    other.restore(&read);
    assert_eq!(other.held(), (vec![], vec![]));
}
