use super::*;
use crate::error::Side;
use http::StatusCode;
use sha2::{Digest as _, Sha256};

const HUB: &str = include_str!("../../tests/data/index/docker-hub-list.json");
const BUILDX: &str = include_str!("../../tests/data/index/buildx-attestations.json");
const NESTED: &str = include_str!("../../tests/data/index/nested.json");

/// The fixtures' digests are sha256 of a name, so tests can say which entry won.
fn d(name: &str) -> Digest {
    format!("sha256:{}", hex::encode(Sha256::digest(name.as_bytes())))
        .parse()
        .unwrap()
}

fn p(s: &str) -> Platform {
    Platform::parse(s).unwrap()
}

fn select(index: &str, wanted: &str, mode: WindowsMatch) -> Result<Selection, SelectError> {
    select_child(index.as_bytes(), &p(wanted), mode)
}

/// A Docker-Hub-like list: 9 Linux platforms and Windows 2016, 2019 (two revisions), 2022 (two
/// revisions, `.2227` before `.10000`).
#[test]
fn docker_hub_list_table() {
    use WindowsMatch::{Hyperv, Process};
    #[rustfmt::skip]
    let cases: &[(&str, WindowsMatch, &str)] = &[
        ("linux/amd64", Process, "linux-amd64"),
        ("linux/x86_64", Process, "linux-amd64"),
        ("linux/amd64/v3", Process, "linux-amd64"),
        ("linux/arm64", Process, "linux-arm64-v8"),
        ("linux/arm64/v8", Process, "linux-arm64-v8"),
        ("linux/aarch64", Process, "linux-arm64-v8"),
        ("linux/arm64/v8.2", Process, "linux-arm64-v8"),
        ("linux/arm", Process, "linux-arm-v7"),
        ("linux/arm/v7", Process, "linux-arm-v7"),
        ("linux/armhf", Process, "linux-arm-v7"),
        ("linux/arm/v6", Process, "linux-arm-v6"),
        ("linux/armel", Process, "linux-arm-v6"),
        ("linux/arm/v5", Process, "linux-arm-v5"),
        ("linux/arm/v8", Process, "linux-arm-v7"),
        ("linux/386", Process, "linux-386"),
        ("linux/i386", Process, "linux-386"),
        ("linux/mips64le", Process, "linux-mips64le"),
        ("linux/ppc64le", Process, "linux-ppc64le"),
        ("linux/s390x", Process, "linux-s390x"),
        ("windows/amd64:10.0.14393", Process, "windows-14393.6452"),
        // Highest revision of the host's build, not the first entry of it.
        ("windows/amd64:10.0.17763", Process, "windows-17763.5830"),
        ("windows(10.0.17763.1)/amd64", Process, "windows-17763.5830"),
        // Numeric revisions: .10000 beats .2227 (a string compare would not).
        ("windows/amd64:10.0.20348", Process, "windows-20348.10000"),
        // No build wanted: the newest build and revision.
        ("windows/amd64", Process, "windows-20348.10000"),
        // Hyper-V: the host's build when offered, else the newest build below it.
        ("windows/amd64:10.0.17763", Hyperv, "windows-17763.5830"),
        ("windows/amd64:10.0.19041", Hyperv, "windows-17763.5830"),
        ("windows/amd64:10.0.26100", Hyperv, "windows-20348.10000"),
        ("windows/amd64:10.0.16299", Hyperv, "windows-14393.6452"),
    ];
    for &(wanted, mode, want) in cases {
        let s = select(HUB, wanted, mode).unwrap_or_else(|e| panic!("{wanted}: {e}"));
        assert_eq!(s.child.digest, d(want), "{wanted} ({mode:?}): {}", s.reason);
        assert_eq!(s.child.media_type, media_type::DOCKER_MANIFEST);
        assert!(!s.child.is_index());
    }
}

#[test]
fn docker_hub_list_no_match_lists_what_is_offered() {
    let offered =
        "linux/amd64, linux/arm/v5, linux/arm/v6, linux/arm/v7, linux/arm64/v8, linux/386, \
linux/mips64le, linux/ppc64le, linux/s390x, windows(10.0.14393.6452)/amd64, \
windows(10.0.17763.5329)/amd64, windows(10.0.17763.5830)/amd64, windows(10.0.20348.2227)/amd64, \
windows(10.0.20348.10000)/amd64";
    for (wanted, mode) in [
        ("linux/riscv64", WindowsMatch::Process),
        ("windows/amd64:10.0.26100", WindowsMatch::Process),
        ("windows/amd64:10.0.19041", WindowsMatch::Process),
        ("windows/amd64:10.0.10240", WindowsMatch::Hyperv),
        ("windows/arm64", WindowsMatch::Process),
        ("linux/arm/v4", WindowsMatch::Process),
    ] {
        let e = select(HUB, wanted, mode).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("no image for {}: the index offers {offered}", p(wanted)),
            "{wanted}"
        );
        let SelectError::NoMatch { offered: list, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(list.len(), 14);
    }
}

#[test]
fn reasons_say_why() {
    let r = |wanted: &str, mode| select(HUB, wanted, mode).unwrap().reason;
    assert_eq!(
        r("linux/arm64", WindowsMatch::Process),
        "entry 5 of 14, linux/arm64/v8, matches linux/arm64"
    );
    assert_eq!(
        r("windows/amd64:10.0.17763", WindowsMatch::Process),
        "entry 12 of 14, windows(10.0.17763.5830)/amd64, matches windows(10.0.17763)/amd64; same build, highest revision"
    );
    assert!(r("windows/amd64:10.0.19041", WindowsMatch::Hyperv).contains("older build"));
    assert!(r("windows/amd64", WindowsMatch::Process).contains("newest build"));
    let only_v7 = list(&[("linux", "arm", Some("v7"), "v7")]);
    let s = select(&only_v7, "linux/arm64", WindowsMatch::Process).unwrap();
    assert_eq!(
        s.reason,
        "entry 1 of 1, linux/arm/v7, is the best linux/arm64 can run (fallback 2 of its list; nothing closer is offered)"
    );
}

/// (os, arch, variant, digest name)
type Row = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
);

/// A Docker manifest list from rows.
fn list(rows: &[Row]) -> String {
    let manifests: Vec<serde_json::Value> = rows
        .iter()
        .map(|(os, arch, variant, name)| {
            let mut platform = serde_json::json!({"os": os, "architecture": arch});
            if let Some(v) = variant {
                platform["variant"] = serde_json::json!(v);
            }
            serde_json::json!({
                "mediaType": media_type::DOCKER_MANIFEST,
                "size": 528,
                "digest": d(name).to_string(),
                "platform": platform,
            })
        })
        .collect();
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::DOCKER_MANIFEST_LIST,
        "manifests": manifests,
    })
    .to_string()
}

#[test]
fn fallbacks_and_ties() {
    #[rustfmt::skip]
    let cases: &[(&[Row], &str, &str)] = &[
        // arm64 host, only arm/v7 offered: fallback.
        (&[("linux", "arm", Some("v7"), "v7")], "linux/arm64", "v7"),
        // arm64 host: arm/v7 ranks above arm/v5 whatever the order.
        (&[("linux", "arm", Some("v5"), "v5"), ("linux", "arm", Some("v7"), "v7")], "linux/arm64", "v7"),
        // amd64 host on a 386-only list.
        (&[("linux", "386", None, "386")], "linux/amd64", "386"),
        // amd64 beats 386 even when 386 comes first.
        (&[("linux", "386", None, "386"), ("linux", "amd64", None, "amd64")], "linux/amd64", "amd64"),
        // Duplicate platforms: the first wins.
        (&[("linux", "amd64", None, "first"), ("linux", "amd64", None, "second")], "linux/amd64", "first"),
        // Spelled differently, same platform after normalising: still the first.
        (&[("linux", "x86_64", None, "first"), ("linux", "amd64", None, "second")], "linux/amd64", "first"),
        (&[("linux", "arm64", Some("v8"), "first"), ("linux", "aarch64", None, "second")], "linux/arm64", "first"),
        // An arm/v7 image whose list omits the variant is arm/v7.
        (&[("linux", "arm", None, "arm")], "linux/arm/v7", "arm"),
    ];
    for &(rows, wanted, want) in cases {
        let s = select(&list(rows), wanted, WindowsMatch::Process)
            .unwrap_or_else(|e| panic!("{wanted} on {rows:?}: {e}"));
        assert_eq!(s.child.digest, d(want), "{wanted} on {rows:?}");
    }
    // The reverse fallbacks do not exist.
    for (rows, wanted) in [
        (&[("linux", "amd64", None, "amd64")][..], "linux/386"),
        (&[("linux", "arm64", None, "arm64")][..], "linux/arm/v7"),
        (&[("linux", "arm", Some("v7"), "v7")][..], "linux/arm/v6"),
    ] {
        assert!(matches!(
            select(&list(rows), wanted, WindowsMatch::Process),
            Err(SelectError::NoMatch { .. })
        ));
    }
}

#[test]
fn windows_equal_revisions_keep_index_order() {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": media_type::DOCKER_MANIFEST, "size": 1, "digest": d("a").to_string(),
             "platform": {"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.5830"}},
            {"mediaType": media_type::DOCKER_MANIFEST, "size": 1, "digest": d("b").to_string(),
             "platform": {"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.5830"}},
        ]
    })
    .to_string();
    let s = select(&index, "windows/amd64:10.0.17763", WindowsMatch::Process).unwrap();
    assert_eq!(s.child.digest, d("a"));
    assert_eq!(s.position, 0);
}

#[test]
fn buildx_attestations_are_skipped() {
    let s = select(BUILDX, "linux/amd64", WindowsMatch::Process).unwrap();
    assert_eq!(s.child.digest, d("buildx-linux-amd64"));
    assert_eq!(s.position, 1);
    assert_eq!(s.child.media_type, media_type::OCI_MANIFEST);
    assert_eq!(s.child.size, 1051);
    assert_eq!(
        s.child.platform,
        Some(Platform::new("linux", "amd64", None))
    );
    let s = select(BUILDX, "linux/arm64", WindowsMatch::Process).unwrap();
    assert_eq!(s.child.digest, d("buildx-linux-arm64"));

    let e = select(BUILDX, "linux/arm/v7", WindowsMatch::Process).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no image for linux/arm/v7: the index offers linux/amd64, linux/arm64"
    );
    // Asking for unknown/unknown never yields an attestation.
    assert!(select(BUILDX, "unknown/unknown", WindowsMatch::Process).is_err());

    let index = ImageIndex::parse(BUILDX.as_bytes()).unwrap();
    let skips: Vec<_> = index.entries.iter().map(IndexEntry::skip_reason).collect();
    assert_eq!(
        skips,
        [
            Some(SkipReason::Attestation),
            None,
            None,
            Some(SkipReason::Attestation),
            Some(SkipReason::Attestation)
        ]
    );
    assert_eq!(
        index.entries[0].annotations[REFERENCE_TYPE_ANNOTATION],
        "attestation-manifest"
    );
}

#[test]
fn only_attestations_is_no_match() {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": [{
            "mediaType": media_type::OCI_MANIFEST, "size": 839, "digest": d("att").to_string(),
            "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
            "platform": {"os": "unknown", "architecture": "unknown"}
        }]
    })
    .to_string();
    let e = select(&index, "linux/amd64", WindowsMatch::Process).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no image for linux/amd64: the index offers no platform images"
    );
}

#[test]
fn nested_indexes_are_returned_for_the_caller_to_follow() {
    assert_eq!(MAX_INDEX_DEPTH, 4);
    let s = select(NESTED, "linux/amd64", WindowsMatch::Process).unwrap();
    assert_eq!(s.child.digest, d("nested-linux-amd64-index"));
    assert!(s.child.is_index());
    let s = select(NESTED, "linux/arm64", WindowsMatch::Process).unwrap();
    assert_eq!(s.child.digest, d("nested-arm64"));
    assert!(!s.child.is_index());
    // Nothing names s390x: the platform-less entry is the last resort (containerd sorts
    // platform-less entries last but keeps them).
    let s = select(NESTED, "linux/s390x", WindowsMatch::Process).unwrap();
    assert_eq!(s.child.digest, d("nested-unplatformed-index"));
    assert!(s.child.is_index());
    assert_eq!(s.child.platform, None);
    assert!(s.reason.contains("names no platform"), "{}", s.reason);
}

#[test]
fn entries_that_are_not_manifests_are_skipped() {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 1, "digest": d("layer").to_string(),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"size": 1, "digest": d("no-media-type").to_string(),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": "application/vnd.example.sbom+json", "size": 1, "digest": d("artifact").to_string(),
             "artifactType": "application/spdx+json"},
            {"mediaType": media_type::OCI_MANIFEST, "size": 1, "digest": d("image").to_string(),
             "platform": {"os": "linux", "architecture": "amd64", "features": ["sse4"]},
             "unknownField": {"nested": [1, 2, 3]}},
        ],
        "unknownTopLevel": true
    })
    .to_string();
    let s = select(&index, "linux/amd64", WindowsMatch::Process).unwrap();
    assert_eq!(s.child.digest, d("image"));
    let parsed = ImageIndex::parse(index.as_bytes()).unwrap();
    assert_eq!(
        parsed.entries[2].artifact_type.as_deref(),
        Some("application/spdx+json")
    );
    let skips: Vec<_> = parsed.entries.iter().map(IndexEntry::skip_reason).collect();
    assert_eq!(
        skips,
        [
            Some(SkipReason::NotAManifest),
            Some(SkipReason::NotAManifest),
            Some(SkipReason::NotAManifest),
            None
        ]
    );
    // A platform-less SBOM stored as an image manifest is an artifact, never the last resort.
    let with_sbom = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": media_type::OCI_MANIFEST, "size": 1, "digest": d("image").to_string(),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": media_type::OCI_MANIFEST, "size": 1, "digest": d("sbom").to_string(),
             "artifactType": "application/spdx+json"},
        ]
    })
    .to_string();
    let parsed = ImageIndex::parse(with_sbom.as_bytes()).unwrap();
    assert_eq!(parsed.entries[1].skip_reason(), Some(SkipReason::Artifact));
    let e = select(&with_sbom, "linux/arm64", WindowsMatch::Process).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no image for linux/arm64: the index offers linux/amd64"
    );
    assert_eq!(parsed.offered(), [Platform::new("linux", "amd64", None)]);
}

#[test]
fn empty_platform_object_counts_as_none() {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": media_type::OCI_MANIFEST, "size": 1, "digest": d("empty").to_string(), "platform": {}},
            {"mediaType": media_type::OCI_MANIFEST, "size": 1, "digest": d("amd64").to_string(),
             "platform": {"os": "linux", "architecture": "amd64", "variant": ""}},
        ]
    })
    .to_string();
    let parsed = ImageIndex::parse(index.as_bytes()).unwrap();
    assert_eq!(parsed.entries[0].descriptor.platform, None);
    assert_eq!(
        parsed.entries[1]
            .descriptor
            .platform
            .as_ref()
            .unwrap()
            .variant,
        None
    );
    let s = select(&index, "linux/amd64", WindowsMatch::Process).unwrap();
    assert_eq!(s.child.digest, d("amd64"));
    let s = select(&index, "linux/arm64", WindowsMatch::Process).unwrap();
    assert_eq!(s.child.digest, d("empty"));
}

#[test]
fn malformed_and_wrong_documents() {
    let good_digest = d("x").to_string();
    for bad in [
        "".to_owned(),
        "not json".to_owned(),
        "{\"manifests\": [".to_owned(),
        "[]".to_owned(),
        "[[\"x\", \"sha256:00\", 1]]".to_owned(),
        "{\"manifests\": [[\"application/vnd.oci.image.manifest.v1+json\", \"sha256:0000000000000000000000000000000000000000000000000000000000000000\", 1]]}".to_owned(),
        "{\"manifests\": {}}".to_owned(),
        "{\"manifests\": [{\"mediaType\": \"x\"}]}".to_owned(),
        format!("{{\"manifests\": [{{\"digest\": \"{good_digest}\", \"size\": -1}}]}}"),
        format!("{{\"manifests\": [{{\"digest\": \"{good_digest}\", \"size\": \"12\"}}]}}"),
        "{\"manifests\": [{\"digest\": \"sha256:abc\", \"size\": 1}]}".to_owned(),
        "{\"manifests\": [{\"digest\": \"md5:d41d8cd98f00b204e9800998ecf8427e\", \"size\": 1}]}".to_owned(),
        format!("{{\"manifests\": [{{\"digest\": \"{good_digest}\", \"size\": 1, \"platform\": \"linux\"}}]}}"),
    ] {
        let e = select(&bad, "linux/amd64", WindowsMatch::Process).unwrap_err();
        assert!(matches!(e, SelectError::Malformed(_)), "{bad}: {e:?}");
    }
    // A manifest is not an index.
    let manifest = include_str!("../../tests/data/manifest/buildx-oci-manifest.json");
    assert_eq!(
        select(manifest, "linux/amd64", WindowsMatch::Process).unwrap_err(),
        SelectError::NotAnIndex(media_type::OCI_MANIFEST.into())
    );
    let no_type = r#"{"schemaVersion": 2, "config": {}, "layers": []}"#;
    assert!(matches!(
        select(no_type, "linux/amd64", WindowsMatch::Process),
        Err(SelectError::NotAnIndex(_))
    ));
}

#[test]
fn errors_at_the_proxy_boundary() {
    let e: ProxyError = select(HUB, "linux/riscv64", WindowsMatch::Process)
        .unwrap_err()
        .into();
    assert_eq!(e.status, StatusCode::NOT_FOUND);
    assert_eq!(e.code, ErrorCode::ManifestUnknown);
    assert_eq!(e.side, Side::Downstream);
    assert!(e.message.contains("linux/arm64/v8"), "{}", e.message);
    let e: ProxyError = select("nope", "linux/amd64", WindowsMatch::Process)
        .unwrap_err()
        .into();
    assert_eq!(e.status, StatusCode::BAD_GATEWAY);
    assert_eq!(e.side, Side::Upstream);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn row() -> impl Strategy<Value = (String, String, Option<String>, Option<String>)> {
        (
            prop::sample::select(vec!["linux", "windows", "unknown"]),
            prop::sample::select(vec!["amd64", "386", "arm", "arm64", "s390x", "unknown"]),
            prop::option::of(prop::sample::select(vec!["v5", "v6", "v7", "v8"])),
            prop::option::of((
                prop::sample::select(vec![14393u32, 17763, 20348]),
                0u32..12000,
            )),
        )
            .prop_map(|(os, arch, variant, version)| {
                (
                    os.to_owned(),
                    arch.to_owned(),
                    variant.map(str::to_owned),
                    version.map(|(b, r)| format!("10.0.{b}.{r}")),
                )
            })
    }

    proptest! {
        /// The chosen entry runs on the wanted platform, and no entry ranks better; among
        /// equal ranks the earliest wins.
        #[test]
        fn selection_is_the_first_best(
            rows in prop::collection::vec(row(), 0..12),
            wanted_os in prop::sample::select(vec!["linux", "windows"]),
            wanted_arch in prop::sample::select(vec!["amd64", "arm64", "arm/v6", "386"]),
            hyperv in any::<bool>(),
        ) {
            let manifests: Vec<serde_json::Value> = rows.iter().enumerate().map(|(i, (os, arch, variant, version))| {
                let mut platform = serde_json::json!({"os": os, "architecture": arch});
                if let Some(v) = variant { platform["variant"] = serde_json::json!(v); }
                if let Some(v) = version { platform["os.version"] = serde_json::json!(v); }
                serde_json::json!({"mediaType": media_type::OCI_MANIFEST, "size": i,
                                   "digest": d(&i.to_string()).to_string(), "platform": platform})
            }).collect();
            let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests}).to_string();
            let wanted = p(&format!("{wanted_os}/{wanted_arch}:10.0.17763"));
            let mode = if hyperv { WindowsMatch::Hyperv } else { WindowsMatch::Process };
            let matcher = Matcher::only(&wanted, mode);
            let parsed = ImageIndex::parse(index.as_bytes()).unwrap();
            match parsed.select(&wanted, mode) {
                Ok(s) => {
                    let chosen = s.child.platform.as_ref().unwrap();
                    let best = matcher.rank(chosen).unwrap();
                    prop_assert!(!chosen.is_unknown());
                    for (i, e) in parsed.entries.iter().enumerate() {
                        if e.skip_reason().is_some() { continue; }
                        if let Some(r) = e.descriptor.platform.as_ref().and_then(|p| matcher.rank(p)) {
                            prop_assert!(r >= best);
                            if i < s.position { prop_assert!(r > best); }
                        }
                    }
                }
                Err(SelectError::NoMatch { .. }) => {
                    for e in &parsed.entries {
                        if e.skip_reason().is_some() { continue; }
                        prop_assert!(!matcher.matches(e.descriptor.platform.as_ref().unwrap()));
                    }
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }

        /// Arbitrary bytes never panic the parser.
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = select_child(&bytes, &p("linux/amd64"), WindowsMatch::Process);
        }
    }
}
