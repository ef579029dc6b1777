use super::*;

fn p(s: &str) -> Platform {
    Platform::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

// === parsing and normalising ===

/// input, os, arch, variant, os.version, os.features, display
type ParseCase = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static [&'static str],
    &'static str,
);

/// containerd's `TestParseSelector` facts (with archway's default architecture `amd64` and OS
/// `linux` where containerd would take the host's), plus the colon config form.
#[test]
fn parse_table() {
    #[rustfmt::skip]
    let cases: &[ParseCase] = &[
        // input, os, arch, variant, os.version, os.features, display
        ("linux/arm64", "linux", "arm64", None, None, &[], "linux/arm64"),
        ("linux/arm64/v8", "linux", "arm64", None, None, &[], "linux/arm64"),
        ("linux/aarch64/8", "linux", "arm64", None, None, &[], "linux/arm64"),
        ("linux/arm64/v8.0", "linux", "arm64", None, None, &[], "linux/arm64"),
        ("linux/arm64/v9.0", "linux", "arm64", Some("v9"), None, &[], "linux/arm64/v9"),
        ("linux/arm64/9", "linux", "arm64", Some("v9"), None, &[], "linux/arm64/v9"),
        ("linux/arm64/v8.2", "linux", "arm64", Some("v8.2"), None, &[], "linux/arm64/v8.2"),
        ("linux/arm", "linux", "arm", Some("v7"), None, &[], "linux/arm/v7"),
        ("linux/arm/v6", "linux", "arm", Some("v6"), None, &[], "linux/arm/v6"),
        ("linux/arm/7", "linux", "arm", Some("v7"), None, &[], "linux/arm/v7"),
        ("linux/arm/5", "linux", "arm", Some("v5"), None, &[], "linux/arm/v5"),
        ("linux/armhf", "linux", "arm", Some("v7"), None, &[], "linux/arm/v7"),
        ("linux/armel", "linux", "arm", Some("v6"), None, &[], "linux/arm/v6"),
        ("arm", "linux", "arm", Some("v7"), None, &[], "linux/arm/v7"),
        ("armel", "linux", "arm", Some("v6"), None, &[], "linux/arm/v6"),
        ("armhf", "linux", "arm", Some("v7"), None, &[], "linux/arm/v7"),
        ("Aarch64", "linux", "arm64", None, None, &[], "linux/arm64"),
        ("x86_64", "linux", "amd64", None, None, &[], "linux/amd64"),
        ("Linux/x86_64", "linux", "amd64", None, None, &[], "linux/amd64"),
        ("linux/x86-64/v3", "linux", "amd64", Some("v3"), None, &[], "linux/amd64/v3"),
        ("linux/amd64/v1", "linux", "amd64", None, None, &[], "linux/amd64"),
        ("linux/AMD64/V2", "linux", "amd64", Some("v2"), None, &[], "linux/amd64/v2"),
        ("i386", "linux", "386", None, None, &[], "linux/386"),
        ("linux/i386/v2", "linux", "386", None, None, &[], "linux/386"),
        ("linux", "linux", "amd64", None, None, &[], "linux/amd64"),
        ("s390x", "linux", "s390x", None, None, &[], "linux/s390x"),
        ("linux/s390x", "linux", "s390x", None, None, &[], "linux/s390x"),
        ("linux/riscv64", "linux", "riscv64", None, None, &[], "linux/riscv64"),
        ("macOS", "darwin", "amd64", None, None, &[], "darwin/amd64"),
        ("macos/arm64", "darwin", "arm64", None, None, &[], "darwin/arm64"),
        ("windows", "windows", "amd64", None, None, &[], "windows/amd64"),
        ("windows()", "windows", "amd64", None, None, &[], "windows/amd64"),
        ("windows/amd64", "windows", "amd64", None, None, &[], "windows/amd64"),
        ("windows(10.0.17763)", "windows", "amd64", None, Some("10.0.17763"), &[], "windows(10.0.17763)/amd64"),
        ("windows(10.0.17763)/amd64", "windows", "amd64", None, Some("10.0.17763"), &[], "windows(10.0.17763)/amd64"),
        ("Windows(10.0.20348.2227)/AMD64", "windows", "amd64", None, Some("10.0.20348.2227"), &[], "windows(10.0.20348.2227)/amd64"),
        ("windows/amd64:10.0.17763", "windows", "amd64", None, Some("10.0.17763"), &[], "windows(10.0.17763)/amd64"),
        ("windows/amd64:10.0.17763.5329", "windows", "amd64", None, Some("10.0.17763.5329"), &[], "windows(10.0.17763.5329)/amd64"),
        ("windows/arm64:10.0.26100", "windows", "arm64", None, Some("10.0.26100"), &[], "windows(10.0.26100)/arm64"),
        ("windows(10.0.17763+win32k)", "windows", "amd64", None, Some("10.0.17763"), &["win32k"], "windows(10.0.17763+win32k)/amd64"),
        ("linux(+gpu)", "linux", "amd64", None, None, &["gpu"], "linux(+gpu)/amd64"),
        ("linux(+gpu+simd)/arm64", "linux", "arm64", None, None, &["gpu", "simd"], "linux(+gpu+simd)/arm64"),
        ("linux(+unsorted+erofs)", "linux", "amd64", None, None, &["erofs", "unsorted"], "linux(+erofs+unsorted)/amd64"),
        ("linux(+gpu+gpu)/amd64", "linux", "amd64", None, None, &["gpu"], "linux(+gpu)/amd64"),
        ("windows(10.0.17763%2Bbuild.42)", "windows", "amd64", None, Some("10.0.17763+build.42"), &[], "windows(10.0.17763%2Bbuild.42)/amd64"),
        ("windows(10.0.17763%2Bbuild.42+win32k)", "windows", "amd64", None, Some("10.0.17763+build.42"), &["win32k"], "windows(10.0.17763%2Bbuild.42+win32k)/amd64"),
        ("windows(50%25done)", "windows", "amd64", None, Some("50%done"), &[], "windows(50%25done)/amd64"),
    ];
    for &(input, os, arch, variant, version, features, display) in cases {
        let got = p(input);
        assert_eq!(got.os, os, "{input}: os");
        assert_eq!(got.architecture, arch, "{input}: arch");
        assert_eq!(got.variant.as_deref(), variant, "{input}: variant");
        assert_eq!(got.os_version.as_deref(), version, "{input}: os.version");
        assert_eq!(got.os_features, features, "{input}: os.features");
        assert_eq!(got.to_string(), display, "{input}: display");
        // The display form parses back to the same platform.
        assert_eq!(p(display), got, "{input}: round trip");
    }
}

/// Found by the `platform` fuzz target (fuzz/regressions/platform/): an OS version or feature
/// that decodes to a character outside `[A-Za-z0-9_.-%+]` (`%26` is `&`, `%2A` is `*`, `%10` a
/// control character) was displayed raw, and the display form did not parse back.
#[test]
fn display_encodes_what_the_parser_refuses() {
    let cases = [
        (
            "windows(50%26100)/arm64",
            "50&100",
            "windows(50%26100)/arm64",
        ),
        ("windows(51%2A.1)", "51*.1", "windows(51%2A.1)/amd64"),
        (
            "windows(50%20%25done)",
            "50 %done",
            "windows(50%20%25done)/amd64",
        ),
        ("windows(50%c3%a9)", "50\u{e9}", "windows(50%C3%A9)/amd64"),
    ];
    for (input, version, display) in cases {
        let got = p(input);
        assert_eq!(got.os_version.as_deref(), Some(version), "{input}");
        assert_eq!(got.to_string(), display, "{input}");
        assert_eq!(p(display), got, "{input}: round trip");
    }
    let feature = p("windows(10.0+2%100.1)/amd64");
    assert_eq!(feature.os_features, ["2\u{10}0.1"]);
    assert_eq!(feature.to_string(), "windows(10.0+2%100.1)/amd64");
    assert_eq!(p(&feature.to_string()), feature);
}

#[test]
fn colon_and_parenthesis_forms_are_the_same_platform() {
    assert_eq!(
        p("windows/amd64:10.0.17763"),
        p("windows(10.0.17763)/amd64")
    );
    assert_eq!(
        "windows/amd64:10.0.17763".parse::<Platform>().unwrap(),
        p("windows(10.0.17763)/amd64")
    );
}

/// containerd's `TestParseSelectorInvalid` and more.
#[test]
fn parse_rejects() {
    for input in [
        "",
        "/linux/arm",
        "linux/arm/",
        "linux /arm",
        "linux/&arm",
        "linux/arm/foo/bar",
        "*",
        "linux/*",
        "windows/amd64:",
        "windows/amd64:10.0 17763",
        "windows(10.0.1)/amd64:10.0.2",
        "notanos",
        "linux(10.0",
        "linux(+)/amd64",
        "windows(%zz)/amd64",
        "windows(%+1)/amd64",
        "(10.0)/amd64",
        "linux//v7",
        "windows(10.0.17763)x/amd64",
    ] {
        assert!(
            Platform::parse(input).is_err(),
            "{input:?} should not parse"
        );
    }
    assert_eq!(Platform::parse(""), Err(PlatformError::Empty));
    let e = Platform::parse("notanos").unwrap_err().to_string();
    assert!(e.contains("notanos"), "{e}");
}

type NormalizeCase = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    Option<&'static str>,
);

#[test]
fn normalize_table() {
    #[rustfmt::skip]
    // arch, os, variant → arch, variant
    let cases: &[NormalizeCase] = &[
        ("x86_64", "linux", None, "amd64", None),
        ("x86-64", "linux", Some("v1"), "amd64", None),
        ("amd64", "linux", Some("v2"), "amd64", Some("v2")),
        ("i386", "linux", Some("v7"), "386", None),
        ("aarch64", "linux", None, "arm64", None),
        ("arm64", "linux", Some("8"), "arm64", None),
        ("arm64", "linux", Some("v8"), "arm64", None),
        ("arm64", "linux", Some("v8.0"), "arm64", None),
        ("arm64", "linux", Some("9"), "arm64", Some("v9")),
        ("arm64", "linux", Some("9.0"), "arm64", Some("v9")),
        ("arm64", "linux", Some("v9.0"), "arm64", Some("v9")),
        ("arm64", "linux", Some("v8.1"), "arm64", Some("v8.1")),
        ("armhf", "linux", None, "arm", Some("v7")),
        ("armel", "linux", None, "arm", Some("v6")),
        ("arm", "linux", None, "arm", Some("v7")),
        ("arm", "linux", Some("7"), "arm", Some("v7")),
        ("arm", "linux", Some("5"), "arm", Some("v5")),
        ("arm", "linux", Some("6"), "arm", Some("v6")),
        ("arm", "linux", Some("8"), "arm", Some("v8")),
        ("ARM", "linux", Some("V6"), "arm", Some("v6")),
        ("ppc64le", "linux", Some(""), "ppc64le", None),
    ];
    for &(arch, os, variant, want_arch, want_variant) in cases {
        let got = Platform::new(os, arch, variant);
        assert_eq!(got.architecture, want_arch, "{arch}/{variant:?}");
        assert_eq!(got.variant.as_deref(), want_variant, "{arch}/{variant:?}");
    }
    let mac = Platform {
        os: "MacOS".into(),
        architecture: "arm64".into(),
        os_features: vec!["b".into(), "a".into(), "b".into(), String::new()],
        os_version: Some(String::new()),
        ..Platform::default()
    }
    .normalize();
    assert_eq!(mac.os, "darwin");
    assert_eq!(mac.os_features, ["a", "b"]);
    assert_eq!(mac.os_version, None);
}

// === matching: containerd compare_test.go facts ===

fn check_matches(matcher: &Matcher, wanted: &str, yes: &[&str], no: &[&str]) {
    for c in yes {
        assert!(matcher.matches(&p(c)), "{wanted} should run {c}");
    }
    for c in no {
        assert!(!matcher.matches(&p(c)), "{wanted} should not run {c}");
    }
}

/// containerd/platforms `TestOnly`.
#[test]
fn only_matches_containerd_table() {
    #[rustfmt::skip]
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("linux/amd64",
         &["linux/amd64", "linux/386"],
         &["linux/amd64/v2", "linux/arm/v7", "linux/arm64", "windows/amd64", "windows/arm"]),
        ("linux/amd64/v2",
         &["linux/amd64", "linux/amd64/v1", "linux/amd64/v2", "linux/386"],
         &["linux/amd64/v3", "linux/amd64/v4", "linux/arm/v7", "linux/arm64", "windows/amd64", "windows/arm"]),
        ("linux/386",
         &["linux/386"],
         &["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/amd64", "windows/arm"]),
        ("windows/amd64",
         &["windows/amd64", "windows(10.0.17763)/amd64"],
         &["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/arm"]),
        ("linux/arm/v8",
         &["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm/v8"],
         &["linux/amd64", "linux/arm/v4", "linux/arm64", "windows/amd64", "windows/arm"]),
        ("linux/arm/v7",
         &["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7"],
         &["linux/amd64", "linux/arm/v4", "linux/arm/v8", "linux/arm64", "windows/amd64", "windows/arm"]),
        ("linux/arm/v6",
         &["linux/arm/v5", "linux/arm/v6"],
         &["linux/amd64", "linux/arm", "linux/arm/v4", "linux/arm/v7", "linux/arm/v8", "linux/arm64", "windows/amd64", "windows/arm"]),
        ("linux/arm/v5",
         &["linux/arm/v5"],
         &["linux/amd64", "linux/arm", "linux/arm/v4", "linux/arm/v6", "linux/arm/v7", "linux/arm/v8", "linux/arm64", "windows/amd64", "windows/arm"]),
        ("linux/arm/v4",
         &["linux/arm/v4"],
         &["linux/amd64", "linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm/v8", "linux/arm64", "windows/amd64", "windows/arm"]),
        ("linux/arm64/v9",
         &["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm/v8", "linux/arm64", "linux/arm64/v8",
           "linux/arm64/v8.1", "linux/arm64/v8.2", "linux/arm64/v8.3", "linux/arm64/v8.4", "linux/arm64/v8.5",
           "linux/arm64/v9", "linux/arm64/v9.0"],
         &["linux/amd64", "linux/arm/v4", "windows/amd64", "windows/arm", "linux/arm64/v8.6"]),
        ("linux/arm64/v8.1",
         &["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm/v8", "linux/arm64", "linux/arm64/v8", "linux/arm64/v8.1"],
         &["linux/amd64", "linux/arm/v4", "linux/arm/v9", "linux/arm64/v9", "windows/amd64", "windows/arm"]),
        ("linux/arm64",
         &["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm/v8", "linux/arm64", "linux/arm64/v8"],
         &["linux/amd64", "linux/arm/v4", "linux/arm/v9", "linux/arm64/v9", "windows/amd64", "windows/arm"]),
    ];
    for &(wanted, yes, no) in cases {
        let m = Matcher::only(&p(wanted), WindowsMatch::Process);
        check_matches(&m, wanted, yes, no);
    }
}

/// containerd/platforms `TestOnlyStrict`.
#[test]
fn strict_matches_containerd_table() {
    #[rustfmt::skip]
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("linux/amd64", &["linux/amd64"], &["linux/386", "linux/arm/v7", "linux/arm64", "windows/amd64", "windows/arm"]),
        ("windows/amd64", &["windows/amd64", "windows(10.0.17763)/amd64"], &["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/arm"]),
        ("windows(10.0.17763)/amd64", &["windows/amd64", "windows(10.0.17763)/amd64"], &["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/arm"]),
        ("linux/arm/v8", &["linux/arm/v8"], &["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm64"]),
        ("linux/arm/v7", &["linux/arm", "linux/arm/v7"], &["linux/arm/v5", "linux/arm/v6", "linux/arm/v8", "linux/arm64"]),
        ("linux/arm64/v9", &["linux/arm64/v9", "linux/arm64/v9.0"], &["linux/arm/v8", "linux/arm64/v8", "linux/arm64/v8.1"]),
        ("linux/arm64/v8.1", &["linux/arm64/v8.1"], &["linux/arm64/v8", "linux/arm64/v9"]),
        ("linux/arm64", &["linux/arm64", "linux/arm64/v8"], &["linux/arm/v8", "linux/arm64/v9"]),
    ];
    for &(wanted, yes, no) in cases {
        let m = Matcher::strict(&p(wanted), WindowsMatch::Process);
        check_matches(&m, wanted, yes, no);
    }
}

/// containerd's `platformVector` order: the first matcher that matches decides the rank.
#[test]
fn fallback_order() {
    let order = |wanted: &str| -> Vec<String> {
        Matcher::only(&p(wanted), WindowsMatch::Process)
            .fallbacks()
            .iter()
            .map(Platform::to_string)
            .collect()
    };
    assert_eq!(order("linux/amd64"), ["linux/amd64", "linux/386"]);
    assert_eq!(
        order("linux/amd64/v3"),
        [
            "linux/amd64/v3",
            "linux/amd64/v2",
            "linux/amd64",
            "linux/386"
        ]
    );
    assert_eq!(
        order("linux/arm64"),
        [
            "linux/arm64",
            "linux/arm/v8",
            "linux/arm/v7",
            "linux/arm/v6",
            "linux/arm/v5"
        ]
    );
    assert_eq!(
        order("linux/arm64/v8.2"),
        [
            "linux/arm64/v8.2",
            "linux/arm64/v8.1",
            "linux/arm64",
            "linux/arm/v8",
            "linux/arm/v7",
            "linux/arm/v6",
            "linux/arm/v5"
        ]
    );
    assert_eq!(
        order("linux/arm64/v9.2"),
        [
            "linux/arm64/v9.2",
            "linux/arm64/v9.1",
            "linux/arm64/v9",
            "linux/arm64/v8.7",
            "linux/arm64/v8.6",
            "linux/arm64/v8.5",
            "linux/arm64/v8.4",
            "linux/arm64/v8.3",
            "linux/arm64/v8.2",
            "linux/arm64/v8.1",
            "linux/arm64",
            "linux/arm/v8",
            "linux/arm/v7",
            "linux/arm/v6",
            "linux/arm/v5"
        ]
    );
    assert_eq!(
        order("linux/arm/v7"),
        ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
    );
    assert_eq!(order("linux/s390x"), ["linux/s390x"]);

    let m = Matcher::only(&p("linux/arm64"), WindowsMatch::Process);
    let r = |c: &str| m.rank(&p(c)).unwrap();
    assert!(r("linux/arm64/v8") < r("linux/arm/v7"));
    assert!(r("linux/arm/v7") < r("linux/arm/v5"));
    assert_eq!(r("linux/aarch64").fallback(), 0);
    assert_eq!(r("linux/arm/v7").fallback(), 2);
}

/// Found by the `platform` fuzz target (fuzz/regressions/platform/hang-*): a huge variant level
/// (`linux/arm64/v9.4444444`, from a client's X-Meta-Platform) made a fallback list of millions
/// of platforms (seconds and gigabytes for one request; v9.4000000000 would exhaust memory). The
/// levels are capped: such a variant falls back as if it were v32.
#[test]
fn huge_variant_levels_give_a_short_fallback_list() {
    for wanted in [
        "linux/arm64/v9.4444444",
        "linux/arm64/v8.4294967295",
        "linux/arm64/v4294967295.4294967295",
        "linux/amd64/v4294967295",
        "linux/arm/v4294967295",
    ] {
        let m = Matcher::only(&p(wanted), WindowsMatch::Process);
        assert!(
            m.fallbacks().len() < 200,
            "{wanted}: {}",
            m.fallbacks().len()
        );
        assert_eq!(
            m.rank(&p(wanted)).map(|r| r.fallback()),
            Some(0),
            "{wanted}"
        );
    }
    let m = Matcher::only(&p("linux/arm64/v9.4000000000"), WindowsMatch::Process);
    assert!(m.matches(&p("linux/arm64/v9.31")));
    assert!(m.matches(&p("linux/arm64/v9")));
    assert!(m.matches(&p("linux/arm64/v8.36")));
    assert!(m.matches(&p("linux/arm/v7")));
    assert!(!m.matches(&p("linux/arm64/v9.32")));
    let m = Matcher::only(&p("linux/amd64/v4000000000"), WindowsMatch::Process);
    assert!(m.matches(&p("linux/amd64/v4")) && m.matches(&p("linux/386")));
}

#[test]
fn os_features_must_be_offered_by_the_host() {
    let plain = Matcher::only(&p("linux/amd64"), WindowsMatch::Process);
    assert!(!plain.matches(&p("linux(+gpu)/amd64")));
    let gpu = Matcher::only(&p("linux(+gpu+simd)/amd64"), WindowsMatch::Process);
    assert!(gpu.matches(&p("linux(+gpu)/amd64")));
    assert!(gpu.matches(&p("linux/amd64")));
    assert!(!gpu.matches(&p("linux(+erofs)/amd64")));
    // Every Windows host has win32k (containerd's DefaultSpec on Windows).
    let win = Matcher::only(&p("windows/amd64:10.0.17763"), WindowsMatch::Process);
    assert!(win.matches(&p("windows(10.0.17763.5329+win32k)/amd64")));
}

// === Windows ===

#[test]
fn windows_version_parse() {
    let v = WindowsVersion::parse("10.0.17763.5329").unwrap();
    assert_eq!(
        (v.major, v.minor, v.build, v.revision),
        (10, 0, 17763, Some(5329))
    );
    assert_eq!(v.release_name(), Some("Windows Server 2019"));
    let v = WindowsVersion::parse("10.0.20348").unwrap();
    assert_eq!((v.build, v.revision), (20348, None));
    assert_eq!(v.release_name(), Some("Windows Server 2022"));
    assert_eq!(
        WindowsVersion::parse("10.0.14393.1")
            .unwrap()
            .release_name(),
        Some("Windows Server 2016")
    );
    assert_eq!(
        WindowsVersion::parse("10.0.26100.1742")
            .unwrap()
            .release_name(),
        Some("Windows Server 2025")
    );
    for bad in [
        "",
        "10",
        "10.0",
        "10.0.x",
        "10.0.17763.",
        "10.0.17763.1.2",
        "a.b.c",
        "10.0.-1",
        "10.0.+5",
    ] {
        assert_eq!(WindowsVersion::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn windows_same_build_highest_revision_as_a_number() {
    let m = Matcher::only(&p("windows/amd64:10.0.17763"), WindowsMatch::Process);
    let r = |c: &str| m.rank(&p(c));
    assert!(r("windows(10.0.17763.1000)/amd64") < r("windows(10.0.17763.999)/amd64"));
    assert!(r("windows(10.0.17763.5830)/amd64") < r("windows(10.0.17763.5329)/amd64"));
    // A revision-less image of the build counts as revision 0.
    assert!(r("windows(10.0.17763.1)/amd64") < r("windows(10.0.17763)/amd64"));
    // Other builds are refused in process isolation, older and newer.
    assert_eq!(r("windows(10.0.14393.6452)/amd64"), None);
    assert_eq!(r("windows(10.0.20348.2227)/amd64"), None);
    // A different major/minor, or a version that does not parse, never matches.
    assert_eq!(r("windows(6.3.17763.1)/amd64"), None);
    assert_eq!(r("windows(garbage)/amd64"), None);
    // No os.version: accepted (as containerd does) but after every versioned image.
    let unversioned = r("windows/amd64").unwrap();
    assert!(unversioned.is_unversioned_windows());
    assert!(r("windows(10.0.17763.1)/amd64").unwrap() < unversioned);
    // The host's own revision does not narrow anything.
    let m2 = Matcher::only(&p("windows/amd64:10.0.17763.9999"), WindowsMatch::Process);
    assert!(m2.matches(&p("windows(10.0.17763.1)/amd64")));
}

#[test]
fn windows_hyperv_accepts_newest_build_not_above_host() {
    let m = Matcher::only(&p("windows(10.0.20348)/amd64"), WindowsMatch::Hyperv);
    let r = |c: &str| m.rank(&p(c));
    let same = r("windows(10.0.20348.1)/amd64").unwrap();
    let older = r("windows(10.0.17763.5830)/amd64").unwrap();
    let oldest = r("windows(10.0.14393.9999)/amd64").unwrap();
    assert!(same < older && older < oldest);
    assert!(older.is_older_windows_build() && !same.is_older_windows_build());
    assert!(r("windows(10.0.17763.5830)/amd64") < r("windows(10.0.17763.5329)/amd64"));
    assert_eq!(r("windows(10.0.26100.1)/amd64"), None);
    assert!(older < r("windows/amd64").unwrap());
}

#[test]
fn windows_without_version_wanted_prefers_newest_build() {
    let m = Matcher::only(&p("windows/amd64"), WindowsMatch::Process);
    let r = |c: &str| m.rank(&p(c)).unwrap();
    assert!(r("windows(10.0.20348.2227)/amd64") < r("windows(10.0.17763.5830)/amd64"));
    assert!(r("windows(10.0.20348.10000)/amd64") < r("windows(10.0.20348.2227)/amd64"));
    assert!(r("windows(10.0.14393.1)/amd64") < r("windows(odd)/amd64"));
    assert!(r("windows(odd)/amd64") < r("windows/amd64"));
    // An unparsable wanted version counts as none, as in containerd.
    let m = Matcher::only(&p("windows(10.0)/amd64"), WindowsMatch::Process);
    assert!(m.windows_version().is_none());
    assert!(m.matches(&p("windows(10.0.17763.1)/amd64")));
}

#[test]
fn linux_ignores_os_version() {
    let m = Matcher::only(&p("linux/amd64"), WindowsMatch::Process);
    assert!(m.matches(&p("linux(5.10)/amd64")));
}

// === client hints ===

const DOCKER_20_10: &str = "docker/20.10.24+dfsg1 go/go1.19.8 git-commit/5d6db84 kernel/6.18.44-fc-v657 os/linux arch/amd64 UpstreamClient(Docker-Client/20.10.24+dfsg1 \\(linux\\))";

#[test]
fn user_agent_table() {
    #[rustfmt::skip]
    let cases: &[(&str, Option<&str>)] = &[
        (DOCKER_20_10, Some("linux/amd64")),
        // Docker EE 17.06 with a hostile upstream part: only what precedes UpstreamClient( counts.
        ("docker/17.06.2-ee-19 go/go1.8.7 git-commit/a7d2d46 kernel/4.4.0-1013-aws os/linux arch/amd64 UpstreamClient(Docker-Client/17.06.2-ee-19 \\(linux\\) os/windows arch/arm64)", Some("linux/amd64")),
        ("docker/17.06.2-ee-19 go/go1.8.7 git-commit/a7d2d46 kernel/4.4.0 os/linux arch/amd64 UpstreamClient(os/windows \\(x\\) arch/arm64 \\; \\\\)", Some("linux/amd64")),
        // Docker on Windows: no kernel/ token, no build number.
        ("docker/18.03.0-ce go/go1.9.4 git-commit/0520e24 os/windows arch/amd64 UpstreamClient(Docker-Client/18.03.0-ce \\(windows\\))", Some("windows/amd64")),
        ("docker/1.9.1 go/go1.4.3 git-commit/a34a1d5 kernel/4.1.13-boot2docker os/linux arch/amd64", Some("linux/amd64")),
        ("docker/24.0.7 go/go1.20.10 git-commit/311b9ff kernel/6.1.0-13-arm64 os/linux arch/arm64 UpstreamClient(Docker-Client/24.0.7 \\(linux\\))", Some("linux/arm64")),
        ("docker/19.03.13 go/go1.13.15 git-commit/4484c46 kernel/5.4.51-v7l+ os/linux arch/arm UpstreamClient(Docker-Client/19.03.13 \\(linux\\))", Some("linux/arm/v7")),
        ("cri-o/1.28.1 go/go1.20.10 os/linux arch/arm64", Some("linux/arm64")),
        ("cri-o/1.25.0 go/go1.19.1 os/linux arch/ppc64le", Some("linux/ppc64le")),
        ("containerd/1.6.20~ds1", None),
        ("containerd/v2.0.0", None),
        ("skopeo/1.9.3", None),
        ("libpod/4.3.1", None),
        ("Buildah/1.28.2", None),
        ("containers/5.24.0 (github.com/containers/image)", None),
        ("", None),
        // Tokens only inside UpstreamClient( do not count.
        ("docker/1 go/x UpstreamClient(os/linux arch/amd64)", None),
        // One of the two is not enough.
        ("cri-o/1.28.1 go/go1.20.10 os/linux", None),
        // Values that are not GOOS/GOARCH names are noise.
        ("docker/1 os/linux arch/<script>", None),
        ("docker/1 os/beos arch/amd64", None),
        ("docker/1 os/linux arch/", None),
    ];
    for &(ua, want) in cases {
        let got = platform_from_user_agent(ua);
        assert_eq!(
            got.as_ref().map(Platform::to_string).as_deref(),
            want,
            "{ua}"
        );
    }
}

#[test]
fn meta_header() {
    assert_eq!(
        platform_from_meta_header("linux/arm64").unwrap(),
        p("linux/arm64")
    );
    assert_eq!(
        platform_from_meta_header(" windows(10.0.17763)/amd64 ").unwrap(),
        p("windows/amd64:10.0.17763")
    );
    assert_eq!(
        platform_from_meta_header("windows/amd64:10.0.20348")
            .unwrap()
            .os_version
            .as_deref(),
        Some("10.0.20348")
    );
    assert!(platform_from_meta_header("linux/&").is_err());
    assert!(platform_from_meta_header("").is_err());
}

#[test]
fn combine_table() {
    #[rustfmt::skip]
    let cases: &[(&str, Option<&str>, &str)] = &[
        // hint, route, result
        ("windows/amd64", Some("windows/amd64:10.0.17763"), "windows(10.0.17763)/amd64"),
        ("windows/amd64", None, "windows/amd64"),
        ("windows/amd64:10.0.20348", Some("windows/amd64:10.0.17763"), "windows(10.0.20348)/amd64"),
        ("linux/arm", Some("linux/arm/v6"), "linux/arm/v6"),
        ("linux/arm/v5", Some("linux/arm/v6"), "linux/arm/v5"),
        ("linux/arm64", Some("linux/arm64/v8.2"), "linux/arm64/v8.2"),
        ("linux/arm64/v9", Some("linux/arm64/v8.2"), "linux/arm64/v9"),
        ("linux/amd64", Some("linux/arm64/v8.2"), "linux/amd64"),
        ("linux/amd64", Some("windows/amd64:10.0.17763"), "linux/amd64"),
        ("linux/amd64", Some("linux(+gpu)/amd64"), "linux(+gpu)/amd64"),
        ("linux/amd64", Some("linux/amd64"), "linux/amd64"),
    ];
    for &(hint, route, want) in cases {
        let route = route.map(p);
        let got = combine(&p(hint), route.as_ref());
        assert_eq!(got.to_string(), want, "{hint} + {route:?}");
    }
    // A Windows User-Agent never erases a route's build.
    let ua = platform_from_user_agent(
        "docker/18.03.0-ce go/go1.9.4 git-commit/0520e24 os/windows arch/amd64 UpstreamClient(Docker-Client/18.03.0-ce \\(windows\\))",
    )
    .unwrap();
    let route = p("windows/amd64:10.0.17763");
    assert_eq!(
        combine(&ua, Some(&route)).os_version.as_deref(),
        Some("10.0.17763")
    );
}

// === properties ===

mod props {
    use super::*;
    use proptest::prelude::*;

    fn platform_strategy() -> impl Strategy<Value = Platform> {
        let os = prop::sample::select(vec![
            "linux", "windows", "darwin", "freebsd", "Linux", "macos",
        ]);
        let arch = prop::sample::select(vec![
            "amd64", "x86_64", "386", "i386", "arm", "armhf", "armel", "arm64", "aarch64", "s390x",
            "ppc64le", "riscv64",
        ]);
        let variant = prop::option::of(prop::sample::select(vec![
            "v5", "v6", "v7", "v8", "8", "v8.1", "v9", "9.0", "v1", "v2", "v3",
        ]));
        let version = prop::option::of((
            0u32..20,
            0u32..3,
            0u32..30000,
            prop::option::of(0u64..20000),
        ));
        let features = prop::collection::vec(
            prop::sample::select(vec!["win32k", "gpu", "a+b", "x%y"]),
            0..3,
        );
        (os, arch, variant, version, features).prop_map(|(os, arch, variant, version, features)| {
            Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(str::to_owned),
                os_version: version.map(|(a, b, c, d)| match d {
                    Some(d) => format!("{a}.{b}.{c}.{d}"),
                    None => format!("{a}.{b}.{c}"),
                }),
                os_features: features.into_iter().map(str::to_owned).collect(),
            }
            .normalize()
        })
    }

    proptest! {
        /// Display is containerd's FormatAll and always parses back to the same platform.
        #[test]
        fn display_round_trips(pl in platform_strategy()) {
            let shown = pl.to_string();
            prop_assert_eq!(Platform::parse(&shown).unwrap(), pl);
        }

        /// Normalising twice changes nothing.
        #[test]
        fn normalize_is_idempotent(pl in platform_strategy()) {
            prop_assert_eq!(pl.clone().normalize(), pl);
        }

        /// A platform always runs its own images, and nothing of another OS.
        #[test]
        fn matches_itself_only_within_its_os(pl in platform_strategy(), other in platform_strategy()) {
            let m = Matcher::only(&pl, WindowsMatch::Process);
            prop_assert!(m.matches(&pl));
            prop_assert_eq!(m.rank(&pl).unwrap().fallback(), 0);
            if other.os != pl.os {
                prop_assert!(!m.matches(&other));
            }
        }

        /// Parsing never panics, whatever the input.
        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = Platform::parse(&s);
            let _ = platform_from_user_agent(&s);
        }
    }
}

/// The User-Agents of the captured requests: Docker says linux/amd64, ctr and skopeo nothing.
#[test]
fn captured_user_agents() {
    for line in include_str!("../../tests/data/client-requests.jsonl").lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let ua = v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == "User-Agent")
            .and_then(|h| h[1].as_str())
            .unwrap();
        let want = if v["name"].as_str().unwrap().starts_with("docker") {
            Some(p("linux/amd64"))
        } else {
            None
        };
        assert_eq!(platform_from_user_agent(ua), want, "{ua}");
    }
}

#[test]
fn default_for_clients_is_linux_amd64() {
    assert_eq!(
        Platform::default_for_clients(),
        Platform::parse(crate::route_policy::DEFAULT_PLATFORM).unwrap()
    );
}
