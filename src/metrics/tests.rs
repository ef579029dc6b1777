use super::*;

#[test]
fn ratelimit_values() {
    let cases = [
        ("76;w=21600", Some(76)),
        ("0;w=21600", Some(0)),
        (" 100 ; w=21600", Some(100)),
        ("42", Some(42)),
        ("", None),
        ("-1;w=60", None),
        ("many;w=60", None),
        ("18446744073709551615", Some(i64::MAX)),
    ];
    for (value, want) in cases {
        assert_eq!(parse_ratelimit_remaining(value), want, "{value:?}");
    }
}

#[test]
fn methods_are_bounded() {
    assert_eq!(method_label(&http::Method::GET), "GET");
    assert_eq!(method_label(&http::Method::HEAD), "HEAD");
    let odd = http::Method::from_bytes(b"BREW").unwrap();
    assert_eq!(method_label(&odd), "other");
}

#[test]
fn platform_labels_are_capped() {
    let m = Metrics::new();
    for i in 0..MAX_PLATFORM_LABELS + 5 {
        m.rewrite(&format!("linux/arch{i}"), "no-match");
    }
    m.rewrite("linux/arch0", "no-match");
    let text = m.encode();
    assert!(
        text.contains("archway_rewrites_total{platform=\"linux/arch0\",reason=\"no-match\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("archway_rewrites_total{platform=\"other\",reason=\"no-match\"} 5\n"),
        "{text}"
    );
    assert!(!text.contains(&format!("linux/arch{MAX_PLATFORM_LABELS}\"")));
}

#[test]
fn encodes_counters_histograms_and_gauges() {
    let m = Metrics::new();
    m.request_done("blob", &http::Method::GET, 200, Duration::from_millis(3));
    m.request_done("blob", &http::Method::GET, 200, Duration::from_millis(700));
    m.upstream_request(
        "hub",
        UpstreamOutcome::Status(401),
        Duration::from_millis(20),
    );
    m.upstream_request("hub", UpstreamOutcome::Timeout, Duration::from_secs(40));
    m.ratelimit_remaining("hub", 76);
    m.bytes_served("cache", 1000);
    m.bytes_served("cache", 24);
    let text = m.encode();
    for line in [
        "archway_requests_total{kind=\"blob\",method=\"GET\",status=\"200\"} 2",
        "archway_request_duration_seconds_count{kind=\"blob\",method=\"GET\"} 2",
        "archway_request_duration_seconds_bucket{le=\"0.005\",kind=\"blob\",method=\"GET\"} 1",
        "archway_request_duration_seconds_bucket{le=\"1.0\",kind=\"blob\",method=\"GET\"} 2",
        "archway_upstream_requests_total{upstream=\"hub\",status=\"401\"} 1",
        "archway_upstream_requests_total{upstream=\"hub\",status=\"timeout\"} 1",
        "archway_upstream_request_duration_seconds_count{upstream=\"hub\"} 2",
        "archway_upstream_ratelimit_remaining{upstream=\"hub\"} 76",
        "archway_served_bytes_total{source=\"cache\"} 1024",
        "# EOF",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    // No store attached: no blob store series rather than made-up zeros.
    assert!(!text.contains("archway_blob_store_bytes"), "{text}");
}
