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

/// The families a scrape shows: `# TYPE` lines, and those with at least one sample.
fn families(text: &str) -> (Vec<String>, Vec<String>) {
    let typed: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    let sampled = typed
        .iter()
        .filter(|f| {
            text.lines()
                .filter_map(|l| l.strip_prefix(f.as_str()))
                .any(|rest| {
                    let rest = ["_total", "_count", "_sum", "_bucket", "_created"]
                        .iter()
                        .find_map(|s| rest.strip_prefix(s))
                        .unwrap_or(rest);
                    rest.starts_with(['{', ' '])
                })
        })
        .cloned()
        .collect();
    (typed, sampled)
}

#[test]
fn families_at_start_are_those_configured_with_known_series_at_zero() {
    let plain = Metrics::new();
    plain.register_upstream("hub");
    let (typed, sampled) = families(&plain.encode());
    for f in &typed {
        assert!(
            !f.starts_with("archway_fleet_")
                && !f.starts_with("archway_storage_")
                && !f.starts_with("archway_parent_"),
            "{f} without [fleet], [storage] or parent"
        );
    }
    // Every family of the config is described from the first scrape...
    for f in [
        "archway_requests",
        "archway_request_duration_seconds",
        "archway_rewrites",
        "archway_upstream_requests",
        "archway_upstream_request_duration_seconds",
        "archway_upstream_ratelimit_remaining",
    ] {
        assert!(typed.iter().any(|t| t == f), "{f} missing at start");
    }
    assert_eq!(typed.len(), plain.described.len());
    // ...open label values (status, platform, method) have no made-up series; the rest are at 0.
    assert_eq!(
        sampled,
        [
            "archway_cache_results",
            "archway_served_bytes",
            "archway_upstream_bytes_saved",
            "archway_upstream_token_fetches",
            "archway_upstream_received_bytes",
            "archway_connections_open",
            "archway_connections_closed",
            "archway_responses_stalled",
            "archway_requests_in_flight",
            "archway_requests_refused_busy",
            "archway_pins",
            "archway_access_confirmations",
            "archway_blob_fills",
            "archway_cold_range_bytes",
            "archway_sendfile_bytes",
            "archway_foreign_layer_fetches",
            "archway_layer_conversions",
            "archway_layer_conversion_bytes",
            "archway_layer_conversion_seconds",
            "archway_warm_jobs",
            "archway_warm_jobs_running",
            "archway_warm_images",
            "archway_warm_bytes",
            "archway_refresh_ahead",
            "archway_refresh_ahead_in_flight",
        ]
    );
    let text = plain.encode();
    for line in [
        "archway_cache_results_total{kind=\"blob\",result=\"coalesced\"} 0",
        "archway_connections_closed_total{reason=\"stall\"} 0",
        "archway_foreign_layer_fetches_total{upstream=\"hub\",outcome=\"not_allowed\"} 0",
        "archway_layer_conversions_total{outcome=\"failed\"} 0",
        "archway_layer_conversion_bytes_total{what=\"tar\"} 0",
        "archway_upstream_received_bytes_total{upstream=\"hub\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }

    let all = Metrics::with(Features {
        storage: true,
        fleet: true,
        parent: true,
    });
    let (typed_all, sampled_all) = families(&all.encode());
    let mut extra: Vec<&str> = typed_all
        .iter()
        .filter(|f| !typed.contains(f))
        .map(String::as_str)
        .collect();
    extra.sort_unstable();
    assert_eq!(
        extra,
        [
            "archway_fleet_fetches",
            "archway_fleet_fills",
            "archway_fleet_lease_takeovers",
            "archway_fleet_leases_held",
            "archway_fleet_leases_swept",
            "archway_fleet_orphaned_uploads_aborted",
            "archway_fleet_peer_bytes",
            "archway_parent_failovers",
            "archway_parent_requests",
            "archway_storage_backfilled_blobs",
            "archway_storage_bypassed",
            "archway_storage_operation_duration_seconds",
            "archway_storage_operations",
            "archway_storage_records_rejected",
        ]
    );
    for f in [
        "archway_storage_bypassed",
        "archway_fleet_fills",
        "archway_fleet_fetches",
        "archway_fleet_lease_takeovers",
        "archway_fleet_peer_bytes",
    ] {
        assert!(
            sampled_all.iter().any(|s| s == f),
            "{f} has no series at start"
        );
    }

    // A replica joining another's fill relays cold ranges from it: at 0 from the start.
    let peer_ranges = "archway_cold_range_bytes_total{source=\"peer\"} 0";
    assert!(all.encode().lines().any(|l| l == peer_ranges));
    assert!(!text.contains("source=\"peer\""), "{text}");

    let storage_only = Metrics::with(Features {
        storage: true,
        ..Features::default()
    });
    let text = storage_only.encode();
    assert!(text.contains("archway_storage_bypassed_total{what=\"blob_read\"} 0"));
    assert!(text.contains("archway_storage_backfilled_blobs_total{outcome=\"copied\"} 0"));
    assert!(!text.contains("what=\"tag_read\""), "{text}");
    assert!(!text.contains("archway_fleet_"), "{text}");
}
