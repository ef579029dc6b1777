use super::*;
use std::path::PathBuf;
use std::time::Duration;

#[test]
fn embedded_defaults_are_a_hub_mirror() {
    let c = Config::default();
    assert_eq!(c.listen, vec!["0.0.0.0:5000".parse().unwrap()]);
    assert_eq!(c.data_dir, PathBuf::from("./archway-data"));
    assert_eq!(c.upstreams.len(), 1);
    let hub = &c.upstreams[0];
    assert!(hub.default && hub.library_prefix);
    assert_eq!(hub.name, "docker.io");
    assert!(hub.names().any(|n| n == "index.docker.io"));
    c.validate().unwrap();
}

#[test]
fn design_doc_example_parses() {
    let c = Config::from_toml(
        r#"
listen = "0.0.0.0:5000"
data_dir = "/var/lib/archway"
[cache]
max_size = "50GiB"
tag_ttl = "5m"
stale_if_error = "24h"
[[upstream]]
name = "docker.io"
url = "https://registry-1.docker.io"
aliases = ["docker.io", "index.docker.io", "registry-1.docker.io"]
default = true
[[upstream]]
name = "ghcr.io"
url = "https://ghcr.io"
username = "bot"
password = "hunter2"
"#,
    )
    .unwrap();
    assert_eq!(c.cache.max_size, 50 << 30);
    assert_eq!(c.cache.write_buffer, 64 << 20, "the default");
    assert_eq!(c.cache.tag_memory, 32 << 20, "the default");
    assert_eq!(c.cache.tag_ttl, Duration::from_secs(300));
    assert_eq!(c.upstreams.len(), 2);
    assert_eq!(c.default_upstream(), Some(0));
    let creds = c.upstreams[1].credentials.as_ref().unwrap();
    assert_eq!(creds.password.expose(), "hunter2");
    assert!(!format!("{c:?}").contains("hunter2"), "secrets never print");
}

#[test]
fn admin_listen() {
    assert_eq!(Config::default().admin_listen, None, "off unless asked for");
    let c = Config::from_toml(r#"admin_listen = "127.0.0.1:9091""#).unwrap();
    assert_eq!(c.admin_listen, Some("127.0.0.1:9091".parse().unwrap()));
    let c = Config::from_toml(r#"admin_listen = "off""#).unwrap();
    assert_eq!(c.admin_listen, None);
    for bad in [
        r#"admin_listen = "localhost""#,
        "listen = \"127.0.0.1:5000\"\nadmin_listen = \"127.0.0.1:5000\"",
    ] {
        let err = Config::from_toml(bad).unwrap_err().to_string();
        assert!(err.contains("admin_listen"), "{bad:?} -> {err}");
    }
    // Port 0 (tests) may appear in both: each bind gets its own port.
    Config::from_toml("listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"").unwrap();
}

#[test]
fn listen_takes_a_list() {
    let c = Config::from_toml(r#"listen = ["127.0.0.1:5000", "127.0.0.1:5001"]"#).unwrap();
    assert_eq!(c.listen.len(), 2);
}

#[test]
fn bad_config_names_the_key() {
    let cases = [
        (r#"listen = "nope""#, "listen"),
        ("[cache]\nmax_size = \"lots\"", "cache.max_size"),
        ("[cache]\ntag_ttl = \"5 parsecs\"", "cache.tag_ttl"),
        ("[cache]\nwrite_buffer = \"0\"", "cache.write_buffer"),
        ("[limits]\nmax_ranges = 0", "limits.max_ranges"),
        ("[limits]\nstall_timeout = \"0s\"", "limits.stall_timeout"),
        ("[limits]\nmax_streams_per_connection = 0", "limits.max_streams_per_connection"),
        ("[limits]\nmax_requests = 0", "limits.max_requests"),
        ("[cache]\nanswer_memo = \"0\"", "cache.answer_memo"),
        ("[cache]\nforeign_memo = \"0\"", "cache.foreign_memo"),
        ("[cache]\nverify_reads_ttl = \"soon\"", "cache.verify_reads_ttl"),
        ("[cache]\ncold_ranges = \"fast\"", "cache.cold_ranges"),
        ("[cache]\nmax_pins = 0", "cache.max_pins"),
        ("[storage]\ns3_bucket = \"b\"\npin_sync_interval = \"0s\"", "storage.pin_sync_interval"),
        ("[storage]\ns3_bucket = \"b\"\npin_sync_interval = \"often\"", "storage.pin_sync_interval"),
        ("[cache]\ntag_memory = \"0\"", "cache.tag_memory"),
        ("[cache]\ntag_memory = \"lots\"", "cache.tag_memory"),
        (
            "[[upstream]]\nname = \"x\"\nurl = \"http://x\"\nforeign_layer_hosts = [\"host:8080\"]",
            "upstream[0].foreign_layer_hosts",
        ),
        ("[cache]\nreferrers_memory = \"0\"", "cache.referrers_memory"),
        ("[cache]\nselection_memo = \"lots\"", "cache.selection_memo"),
        ("[cache]\nwrite_buffer = \"a lot\"", "cache.write_buffer"),
        ("[[upstream]]\nname = \"x\"\nurl = \"ftp://x\"", "upstream[0].url"),
        ("[[upstream]]\nname = \"x\"\nurl = \"http://x/path\"", "upstream[0].url"),
        (
            "[[upstream]]\nname = \"a\"\nurl = \"http://a\"\ndefault = true\n[[upstream]]\nname = \"b\"\nurl = \"http://b\"\ndefault = true",
            "upstream.default",
        ),
        ("[[upstream]]\nname = \"x\"\nurl = \"http://x\"\nusername = \"u\"", "upstream[0].password"),
        ("bogus = 1", "bogus"),
        (r#"parent = ["archway:5000"]"#, "parent"),
        (r#"parent = "http://archway:5000/v2""#, "parent"),
        (r#"parent = "http://node:pw@archway:5000""#, "parent"),
        (
            r#"parent = ["http://a:5000", "http://a:5000"]"#,
            "parent",
        ),
        (
            "parent = \"http://a\"\nparent_down_for = \"soon\"",
            "parent_down_for",
        ),
        (
            "parent = \"http://a\"\nparent_read_timeout = \"0s\"",
            "parent_read_timeout",
        ),
        (
            "parent = \"http://a\"\nparent_connect_timeout = \"0s\"",
            "parent_connect_timeout",
        ),
        (
            "parent = \"http://a\"\nparent_fallback = \"upstream\"",
            "parent_fallback",
        ),
        (
            "parent = \"http://a\"\nparent_username = \"node\"",
            "parent_password",
        ),
        (
            "parent = \"http://a\"\nparent_password = \"x\"\nparent_password_env = \"X\"",
            "parent_password",
        ),
        (
            "parent_username = \"node\"\nparent_password = \"x\"",
            "parent_username",
        ),
        ("parent_fallback = \"direct\"", "parent_fallback"),
        (
            "parent = \"http://a\"\nparent_username = \"n\"\nparent_password = \"x\"\nparent_token = \"t\"",
            "parent_token",
        ),
        ("parent = \"http://a\"\nparent_token = \"a b\"", "parent_token"),
        (
            "parent = \"http://a\"\nparent_token = \"t\"\nparent_token_env = \"T\"",
            "parent_token",
        ),
        (
            "parent = \"http://a\"\n[[upstream]]\nname = \"a&b\"\nurl = \"http://x\"",
            "upstream[0].name",
        ),
        ("[cache]\nttl = \"5m\"", "ttl"),
        (
            "[[route]]\nmatch = { repository = \"library/[\" }",
            "route[0].match.repository",
        ),
        ("[storage]\ns3_region = \"eu-west-1\"", "storage.s3_bucket"),
        ("[storage]\ns3_bucket = \"a/b\"", "storage.s3_bucket"),
        ("[storage]\ns3_bucket = \"b\"\ns3_prefix = \"prod\"", "storage.s3_prefix"),
        ("[storage]\ns3_bucket = \"b\"\ns3_prefix = \"../x/\"", "storage.s3_prefix"),
        ("[storage]\ns3_bucket = \"b\"\ns3_endpoint = \"ftp://x\"", "storage.s3_endpoint"),
        ("[storage]\ns3_bucket = \"b\"\ns3_timeout = \"0s\"", "storage.s3_timeout"),
        ("[storage]\ns3_bucket = \"b\"\ns3_upload_timeout = \"soon\"", "storage.s3_upload_timeout"),
        ("[storage]\ns3_bucket = \"b\"\ns3_max_uploads = 0", "storage.s3_max_uploads"),
        ("[storage]\ns3_bucket = \"b\"\ns3_part_size = \"1MiB\"", "storage.s3_part_size"),
        ("[storage]\ns3_bucket = \"b\"\ns3_access_key_id = \"AKIA\"", "storage.s3_secret_access_key"),
        (
            "[storage]\ns3_bucket = \"b\"\ns3_access_key_id = \"k\"\ns3_secret_access_key = \"s\"\ns3_secret_access_key_file = \"/x\"",
            "storage.s3_secret_access_key",
        ),
        (
            "[storage]\ns3_bucket = \"b\"\ns3_access_key_id = \"k\"\ns3_secret_access_key_file = \"/nonexistent/archway-secret\"",
            "storage.s3_secret_access_key_file",
        ),
        ("[storage]\ns3_bucket = \"b\"\nredirect_expiry = \"0s\"", "storage.redirect_expiry"),
        ("[storage]\ns3_bucket = \"b\"\nredirect_expiry = \"8d\"", "storage.redirect_expiry"),
        ("[storage]\ns3_bucket = \"b\"\nredirect_expiry = \"soon\"", "storage.redirect_expiry"),
        ("[storage]\ns3_bucket = \"b\"\nredirect_memo = \"lots\"", "storage.redirect_memo"),
        ("[storage]\nredirect = true", "storage.s3_bucket"),
        ("[storage]\ns3_bucket = \"b\"\nbogus_key = 1", "bogus_key"),
    ];
    for (toml, key) in cases {
        let err = Config::from_toml(toml).unwrap_err().to_string();
        assert!(err.contains(key), "{toml:?} -> {err}");
    }
}

#[test]
fn tls_auth_and_insecure_upstreams_parse() {
    let c = Config::from_toml(
        r#"
[tls]
cert_file = "/etc/archway/tls.crt"
key_file = "/etc/archway/tls.key"
[auth]
htpasswd_file = "/etc/archway/htpasswd"
[[upstream]]
name = "lab"
url = "https://registry.lab:5000"
insecure_skip_verify = true
"#,
    )
    .unwrap();
    let tls = c.tls.unwrap();
    assert_eq!(tls.cert_file, PathBuf::from("/etc/archway/tls.crt"));
    assert_eq!(tls.key_file, PathBuf::from("/etc/archway/tls.key"));
    let auth = c.auth.unwrap();
    assert_eq!(
        auth.htpasswd_file,
        Some(PathBuf::from("/etc/archway/htpasswd"))
    );
    assert_eq!(auth.tokens_file, None);
    assert_eq!(auth.failure_burst, 10);
    assert_eq!(auth.failure_refill, Duration::from_secs(6));
    assert_eq!(auth.tracked_clients, 10_000);
    assert!(c.upstreams[0].insecure_skip_verify);

    let plain = Config::from_toml("").unwrap();
    assert!(plain.tls.is_none() && plain.auth.is_none());
    assert!(!plain.upstreams[0].insecure_skip_verify);
}

#[test]
fn auth_failure_budget_is_configurable() {
    let c = Config::from_toml(
        "[auth]\ntokens_file = \"t\"\nfailure_burst = 3\nfailure_refill = \"1m\"\ntracked_clients = 500",
    )
    .unwrap();
    let auth = c.auth.unwrap();
    assert_eq!(auth.failure_burst, 3);
    assert_eq!(auth.failure_refill, Duration::from_secs(60));
    assert_eq!(auth.tracked_clients, 500);
}

#[test]
fn bad_tls_and_auth_name_the_key() {
    let cases = [
        ("[tls]\nkey_file = \"k.pem\"", "tls.cert_file"),
        ("[tls]\ncert_file = \"c.pem\"", "tls.key_file"),
        ("[tls]\ncert = \"c.pem\"", "cert"),
        ("[auth]", "`auth`"),
        ("[auth]\nhtpasswd = \"h\"", "htpasswd"),
        (
            "[auth]\ntokens_file = \"t\"\nfailure_burst = 0",
            "auth.failure_burst",
        ),
        (
            "[auth]\ntokens_file = \"t\"\nfailure_refill = \"0s\"",
            "auth.failure_refill",
        ),
        (
            "[auth]\ntokens_file = \"t\"\nfailure_refill = \"soon\"",
            "auth.failure_refill",
        ),
        (
            "[auth]\ntokens_file = \"t\"\ntracked_clients = 0",
            "auth.tracked_clients",
        ),
        (
            "[[upstream]]\nname = \"x\"\nurl = \"https://x\"\nca_file = \"ca.pem\"\ninsecure_skip_verify = true",
            "upstream[0].insecure_skip_verify",
        ),
        (
            "[[upstream]]\nname = \"x\"\nurl = \"https://x\"\ninsecure_skip_verify = \"yes\"",
            "insecure_skip_verify",
        ),
    ];
    for (toml, key) in cases {
        let err = Config::from_toml(toml).unwrap_err().to_string();
        assert!(err.contains(key), "{toml:?} -> {err}");
    }
}

#[test]
fn write_buffer_is_configurable() {
    let c = Config::from_toml("[cache]\nwrite_buffer = \"16MiB\"").unwrap();
    assert_eq!(c.cache.write_buffer, 16 << 20);
    let c =
        Config::from_toml("[cache]\nanswer_memo = \"1MiB\"\nselection_memo = \"2MiB\"").unwrap();
    assert_eq!(
        (c.cache.answer_memo, c.cache.selection_memo),
        (1 << 20, 2 << 20)
    );
    let d = Config::default().cache;
    assert_eq!((d.answer_memo, d.selection_memo), (16 << 20, 16 << 20));
    assert_eq!(d.referrers_memory, 16 << 20);
    let c = Config::from_toml("[cache]\nreferrers_memory = \"1MiB\"").unwrap();
    assert_eq!(c.cache.referrers_memory, 1 << 20);
}

#[test]
fn foreign_layer_hosts_default_to_microsofts_and_can_be_replaced_or_emptied() {
    let c = Config::from_toml("[[upstream]]\nname = \"mcr\"\nurl = \"https://mcr.microsoft.com\"\n[[upstream]]\nname = \"lab\"\nurl = \"http://127.0.0.1:5001\"\nforeign_layer_hosts = [\"http://127.0.0.1:8080\"]\n[[upstream]]\nname = \"off\"\nurl = \"http://127.0.0.1:5002\"\nforeign_layer_hosts = []").unwrap();
    let url = |u: &str| u.parse::<http::Uri>().unwrap();
    let mcr = &c.upstreams[0].foreign_layer_hosts;
    assert_eq!(mcr.len(), crate::foreign::DEFAULT_FOREIGN_LAYER_HOSTS.len());
    assert!(crate::foreign::allowed(
        mcr,
        &url("https://mcr.microsoft.com/v2/w/blobs/x")
    ));
    assert!(!crate::foreign::allowed(
        mcr,
        &url("http://127.0.0.1:8080/x")
    ));
    let lab = &c.upstreams[1].foreign_layer_hosts;
    assert!(crate::foreign::allowed(
        lab,
        &url("http://127.0.0.1:8080/x")
    ));
    assert!(!crate::foreign::allowed(
        lab,
        &url("https://mcr.microsoft.com/x")
    ));
    assert!(c.upstreams[2].foreign_layer_hosts.is_empty());
    assert_eq!(Config::default().cache.foreign_memo, 4 << 20);
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("k", "1000").unwrap(), 1000);
    assert_eq!(parse_size("k", "2MiB").unwrap(), 2 << 20);
    assert_eq!(parse_size("k", "10GB").unwrap(), 10_000_000_000);
    assert!(parse_size("k", "-1").is_err());
    let sizes: &[(&str, Option<u64>)] = &[
        ("50GiB", Some(50 << 30)),
        ("512MiB", Some(512 << 20)),
        ("16MiB", Some(16 << 20)),
        ("64kib", Some(64 << 10)),
        ("1k", Some(1_000)),
        ("1kb", Some(1_000)),
        ("3m", Some(3_000_000)),
        ("3Mb", Some(3_000_000)),
        ("2g", Some(2_000_000_000)),
        ("2T", Some(2_000_000_000_000)),
        ("2tb", Some(2_000_000_000_000)),
        ("1TiB", Some(1 << 40)),
        // bytesize also takes fractions and the short IEC forms.
        ("1.5GiB", Some(3 << 29)),
        ("4Mi", Some(4 << 20)),
        ("7b", Some(7)),
        ("7B", Some(7)),
        ("10 GB", Some(10_000_000_000)),
        (" 10GB ", Some(10_000_000_000)),
        ("0", Some(0)),
        ("18446744073709551615", Some(u64::MAX)),
        ("18446744073709551615B", Some(u64::MAX)),
        ("", None),
        ("GB", None),
        ("10 parsecs", None),
        ("10GBs", None),
        ("1e3", None),
        ("0x10", None),
        ("-1GB", None),
        ("18446744073709551616", None),
        ("20000000TB", None),
        ("99999999999999999999GiB", None),
    ];
    for (input, want) in sizes {
        assert_eq!(parse_size("k", input).ok(), *want, "{input:?}");
    }
    assert_eq!(
        parse_duration("k", "1h30m").unwrap(),
        Duration::from_secs(5400)
    );
    assert_eq!(
        parse_duration("k", "500ms").unwrap(),
        Duration::from_millis(500)
    );
    assert!(parse_duration("k", "5").is_err());
    assert!(parse_duration("k", "m").is_err());
    let secs = Duration::from_secs;
    let durations: &[(&str, Option<Duration>)] = &[
        ("5m", Some(secs(300))),
        ("24h", Some(secs(86_400))),
        ("30s", Some(secs(30))),
        ("2d", Some(secs(172_800))),
        ("1h30m", Some(secs(5400))),
        ("1d12h", Some(secs(129_600))),
        ("0s", Some(Duration::ZERO)),
        (" 10s ", Some(secs(10))),
        // humantime's wider grammar.
        ("1h 30m", Some(secs(5400))),
        ("5min", Some(secs(300))),
        ("1.5h", Some(secs(5400))),
        ("0", Some(Duration::ZERO)),
        ("", None),
        ("5", None),
        ("m", None),
        ("5 parsecs", None),
        ("-5s", None),
        ("5s-", None),
        ("1h30", None),
        // Months in humantime; refused rather than read as 5 months.
        ("5M", None),
        ("1h5M", None),
        ("99999999999999999999s", None),
        // Deadlines are now + the duration: 300 billion years overflowed one (a panic).
        ("100y", Some(secs(3_155_760_000))),
        ("101y", None),
        ("300000000000y", None),
    ];
    for (input, want) in durations {
        assert_eq!(parse_duration("k", input).ok(), *want, "{input:?}");
    }
}

#[test]
fn upstream_from_url_names_by_host() {
    let u = UpstreamConfig::from_url(None, "http://127.0.0.1:5000").unwrap();
    assert_eq!(u.name, "127.0.0.1:5000");
    assert!(!u.library_prefix);
}

#[test]
fn storage_is_off_unless_configured() {
    assert_eq!(Config::default().storage, None);
    assert_eq!(Config::from_toml("").unwrap().storage, None);
}

#[test]
fn storage_parses_with_defaults_and_keeps_secrets_out_of_debug() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "s3cr3t-from-file\n").unwrap();
    let c = Config::from_toml(&format!(
        r#"
[storage]
s3_bucket = "archway"
s3_prefix = "prod/"
s3_endpoint = "http://127.0.0.1:9000/"
s3_region = "eu-west-1"
s3_path_style = true
s3_access_key_id = "AKIDEXAMPLE"
s3_secret_access_key_file = "{}"
redirect = false
"#,
        secret_file.display()
    ))
    .unwrap();
    let s = c.storage.clone().unwrap();
    assert_eq!(s.s3_bucket, "archway");
    assert_eq!(s.s3_prefix, "prod/");
    assert_eq!(s.s3_endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(s.s3_region, "eu-west-1");
    assert!(s.s3_path_style);
    let keys = s.credentials.unwrap();
    assert_eq!(keys.access_key_id.expose(), "AKIDEXAMPLE");
    assert_eq!(keys.secret_access_key.expose(), "s3cr3t-from-file");
    assert_eq!(s.s3_timeout, Duration::from_secs(5), "the default");
    assert_eq!(s.s3_upload_timeout, Duration::from_secs(60), "the default");
    assert_eq!(
        (s.s3_max_uploads, s.s3_upload_queue),
        (4, 256),
        "the defaults"
    );
    assert_eq!(s.s3_part_size, 16 << 20, "the default");
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("s3cr3t") && !debug.contains("AKIDEXAMPLE"),
        "{debug}"
    );

    let aws = Config::from_toml("[storage]\ns3_bucket = \"b\"").unwrap();
    let s = aws.storage.unwrap();
    assert_eq!(
        (s.s3_endpoint, s.credentials),
        (None, None),
        "AWS, standard chain"
    );
    assert_eq!(s.s3_region, "us-east-1");
    assert!(!s.s3_path_style);
}

#[test]
fn storage_redirect_is_accepted_with_its_expiry_and_memo() {
    let off = Config::from_toml("[storage]\ns3_bucket = \"b\"").unwrap();
    let s = off.storage.unwrap();
    assert!(!s.redirect, "off unless asked for");
    assert_eq!(
        s.redirect_expiry,
        Duration::from_secs(15 * 60),
        "the default"
    );
    assert_eq!(s.redirect_memo, 1 << 20, "the default");

    let on = Config::from_toml(
        "[storage]\ns3_bucket = \"b\"\nredirect = true\nredirect_expiry = \"2m\"\nredirect_memo = \"64KiB\"",
    )
    .unwrap();
    let s = on.storage.unwrap();
    assert!(s.redirect);
    assert_eq!(s.redirect_expiry, Duration::from_secs(120));
    assert_eq!(s.redirect_memo, 64 << 10);

    // The bounds: a second, and S3's seven days; a memo of 0 asks the bucket every time.
    for (expiry, ok) in [
        ("1s", true),
        ("7d", true),
        ("999ms", false),
        ("169h", false),
    ] {
        let c = Config::from_toml(&format!(
            "[storage]\ns3_bucket = \"b\"\nredirect = true\nredirect_expiry = \"{expiry}\""
        ));
        assert_eq!(c.is_ok(), ok, "{expiry}: {c:?}");
    }
    let c =
        Config::from_toml("[storage]\ns3_bucket = \"b\"\nredirect = true\nredirect_memo = \"0\"");
    assert_eq!(c.unwrap().storage.unwrap().redirect_memo, 0);
}

#[test]
fn storage_backfill_is_on_unless_switched_off() {
    let s = Config::from_toml("[storage]\ns3_bucket = \"b\"").unwrap();
    assert!(s.storage.unwrap().backfill, "the default");
    let s = Config::from_toml("[storage]\ns3_bucket = \"b\"\nbackfill = false").unwrap();
    assert!(!s.storage.unwrap().backfill);
    let bad = Config::from_toml("[storage]\ns3_bucket = \"b\"\nbackfill = \"yes\"");
    assert!(bad.is_err(), "{bad:?}");
}

#[test]
fn parent_keys_parse() {
    let plain = Config::from_toml("").unwrap();
    assert!(plain.parent.urls.is_empty(), "no parent unless configured");
    assert_eq!(plain.parent.fallback, ParentFallback::None);

    let c = Config::from_toml(
        r#"
parent = ["http://archway-0.archway:5000", "https://archway-1.archway:5443/"]
parent_username = "node"
parent_password = "s3cret"
parent_down_for = "3s"
parent_connect_timeout = "1s"
parent_read_timeout = "2m"
parent_fallback = "direct"
"#,
    )
    .unwrap();
    let p = &c.parent;
    let urls: Vec<String> = p
        .urls
        .iter()
        .map(|u| format!("{}://{}", u.scheme_str().unwrap(), u.authority().unwrap()))
        .collect();
    assert_eq!(
        urls,
        [
            "http://archway-0.archway:5000",
            "https://archway-1.archway:5443"
        ]
    );
    assert_eq!(p.down_for, Duration::from_secs(3));
    assert_eq!(p.connect_timeout, Duration::from_secs(1));
    assert_eq!(p.read_timeout, Duration::from_secs(120));
    assert_eq!(p.fallback, ParentFallback::Direct);
    let creds = p.credentials.as_ref().unwrap();
    assert_eq!(creds.username, "node");
    assert_eq!(creds.password.expose(), "s3cret");
    assert!(!format!("{c:?}").contains("s3cret"), "secrets never print");

    let one = Config::from_toml(r#"parent = "http://cluster:5000""#).unwrap();
    assert_eq!(one.parent.urls.len(), 1);
    assert_eq!(one.parent.down_for, Duration::from_secs(10), "the default");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("parent-password");
    std::fs::write(&file, "from-file\n").unwrap();
    let c = Config::from_toml(&format!(
        "parent = \"http://cluster:5000\"\nparent_username = \"n\"\nparent_password_file = {:?}",
        file.display().to_string()
    ))
    .unwrap();
    assert_eq!(c.parent.credentials.unwrap().password.expose(), "from-file");

    // Or a bearer token of the parents' tokens_file, from a file too; never printed.
    std::fs::write(&file, "tok-3n\n").unwrap();
    let c = Config::from_toml(&format!(
        "parent = \"http://cluster:5000\"\nparent_token_file = {:?}",
        file.display().to_string()
    ))
    .unwrap();
    assert_eq!(c.parent.token.as_ref().map(|t| t.expose()), Some("tok-3n"));
    assert!(c.parent.credentials.is_none());
    assert!(!format!("{c:?}").contains("tok-3n"));
}

#[test]
fn fleet_parses_needs_storage_and_keeps_its_secret_out_of_debug() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("fleet-secret");
    std::fs::write(&secret_file, "fl33t-secret\n").unwrap();
    let file = secret_file.display();
    let c = Config::from_toml(&format!(
        "[storage]\ns3_bucket = \"b\"\n[fleet]\npeer_url = \"http://10.1.2.3:5000/\"\nsecret_file = \"{file}\"\n"
    ))
    .unwrap();
    let f = c.fleet.clone().unwrap();
    assert_eq!(f.peer_url.as_deref(), Some("http://10.1.2.3:5000"));
    assert_eq!(f.secret.expose(), "fl33t-secret");
    assert_eq!(f.lease_ttl, Duration::from_secs(30), "the default");
    assert_eq!(f.peer_timeout, Duration::from_secs(10), "the default");
    assert_eq!(f.sweep_interval, Duration::from_secs(600), "the default");
    assert_eq!(
        f.orphaned_upload_age,
        Duration::from_secs(86_400),
        "the default"
    );
    assert_eq!(f.max_clock_skew, Duration::from_secs(5), "the default");
    assert!(!format!("{c:?}").contains("fl33t"));
    assert_eq!(Config::from_toml("").unwrap().fleet, None);

    // peer_url may come from ARCHWAY_PEER_URL later: not required by the file.
    let c = Config::from_toml(&format!(
        "[storage]\ns3_bucket = \"b\"\n[fleet]\nsecret_file = \"{file}\"\nlease_ttl = \"2s\"\nsweep_interval = \"0s\"\n"
    ))
    .unwrap();
    let f = c.fleet.unwrap();
    assert_eq!((f.peer_url, f.lease_ttl), (None, Duration::from_secs(2)));
    assert_eq!(f.sweep_interval, Duration::ZERO, "0s: no sweep");

    let cases = [
        (format!("[fleet]\nsecret_file = \"{file}\""), "`fleet`"),
        (
            "[storage]\ns3_bucket = \"b\"\n[fleet]\nsecret = \"x\"".to_owned(),
            "fleet.secret",
        ),
        (
            "[storage]\ns3_bucket = \"b\"\n[fleet]\npeer_url = \"http://a\"".to_owned(),
            "fleet.secret_file",
        ),
        (
            format!("[storage]\ns3_bucket = \"b\"\n[fleet]\nsecret_file = \"{file}\"\npeer_url = \"ftp://a\""),
            "fleet.peer_url",
        ),
        (
            format!("[storage]\ns3_bucket = \"b\"\n[fleet]\nsecret_file = \"{file}\"\nlease_ttl = \"100ms\""),
            "fleet.lease_ttl",
        ),
        (
            format!("[storage]\ns3_bucket = \"b\"\n[fleet]\nsecret_file = \"{file}\"\npeer_timeout = \"0s\""),
            "fleet.peer_timeout",
        ),
        (
            format!("[storage]\ns3_bucket = \"b\"\n[fleet]\nsecret_file = \"{file}\"\nmax_clock_skew = \"2m\""),
            "fleet.max_clock_skew",
        ),
    ];
    for (toml, key) in cases {
        let err = Config::from_toml(&toml).unwrap_err().to_string();
        assert!(err.contains(key), "{toml:?} -> {err}");
        assert!(!err.contains("fl33t"), "{err}");
    }
}

#[test]
fn max_ranges_defaults_to_what_containers_storage_asks_for() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(c.limits.max_ranges, 1024);
    let c = Config::from_toml("[limits]\nmax_ranges = 16").unwrap();
    assert_eq!(c.limits.max_ranges, 16);
}

#[test]
fn stall_timeout_and_stream_bounds_have_defaults_and_keys() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(c.limits.stall_timeout, std::time::Duration::from_secs(30));
    assert_eq!(c.limits.max_streams_per_connection, 32);
    assert_eq!(c.limits.max_requests, None, "sized to the open-file limit");
    let c = Config::from_toml(
        "[limits]\nstall_timeout = \"5s\"\nmax_streams_per_connection = 8\nmax_requests = 64",
    )
    .unwrap();
    assert_eq!(c.limits.stall_timeout, std::time::Duration::from_secs(5));
    assert_eq!(c.limits.max_streams_per_connection, 8);
    assert_eq!(c.limits.max_requests, Some(64));
}

/// `http://user:pass@host` as an upstream URL: the user-info would never be sent (credentials
/// have their own keys) and the URL is a log field, so it is refused — naming the keys to use
/// and never echoing the password.
#[test]
fn an_upstream_url_with_credentials_is_refused() {
    let toml = "[[upstream]]\nname = \"x\"\nurl = \"http://bot:hunter2@registry.lab:5000\"";
    let err = Config::from_toml(toml).unwrap_err().to_string();
    assert!(err.contains("upstream[0].url"), "{err}");
    assert!(
        err.contains("username") && err.contains("password"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    let err = UpstreamConfig::from_url(None, "https://bot:hunter2@ghcr.io")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("username") && !err.contains("hunter2"),
        "{err}"
    );
    // A user name alone is user-info too.
    assert!(UpstreamConfig::from_url(None, "https://bot@ghcr.io").is_err());

    // Built by hand (as `main` and the tests do): validation refuses it too.
    let mut c = Config::default();
    c.upstreams[0].url = "http://bot:hunter2@registry.lab".parse().unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("upstream[0].url"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn verify_reads_ttl() {
    assert_eq!(
        Config::default().cache.verify_reads_ttl,
        Duration::from_secs(3600)
    );
    let c = Config::from_toml("[cache]\nverify_reads = true\nverify_reads_ttl = \"10m\"").unwrap();
    assert_eq!(c.cache.verify_reads_ttl, Duration::from_secs(600));
    let c = Config::from_toml("[cache]\nverify_reads_ttl = \"0s\"").unwrap();
    assert!(
        c.cache.verify_reads_ttl.is_zero(),
        "0s: every range read hashes the blob"
    );
}

#[test]
fn cold_ranges() {
    assert_eq!(Config::default().cache.cold_ranges, ColdRanges::Wait);
    let c = Config::from_toml("[cache]\ncold_ranges = \"wait\"").unwrap();
    assert_eq!(c.cache.cold_ranges, ColdRanges::Wait);
    let c = Config::from_toml("[cache]\ncold_ranges = \"relay\"").unwrap();
    assert_eq!(c.cache.cold_ranges, ColdRanges::Relay);
    assert_eq!(Config::default().cache.cold_ranges_relay_max, 16 << 20);
    let c = Config::from_toml("[cache]\ncold_ranges_relay_max = \"1MiB\"").unwrap();
    assert_eq!(c.cache.cold_ranges_relay_max, 1 << 20);
    let c = Config::from_toml("[cache]\ncold_ranges_relay_max = \"0\"").unwrap();
    assert_eq!(c.cache.cold_ranges_relay_max, 0);
}

#[test]
fn sendfile_key() {
    assert!(Config::default().cache.sendfile, "on by default");
    let c = Config::from_toml("[cache]\nsendfile = false").unwrap();
    assert!(!c.cache.sendfile);
}

#[test]
fn refresh_ahead_keys() {
    let d = Config::default().cache;
    assert!(d.refresh_ahead, "on by default");
    assert_eq!(d.refresh_ahead_concurrency, 4);
    assert_eq!(d.refresh_ahead_window, None);
    let c = Config::from_toml(
        "[cache]\nrefresh_ahead = false\nrefresh_ahead_concurrency = 1\nrefresh_ahead_window = \"20s\"",
    )
    .unwrap();
    assert!(!c.cache.refresh_ahead);
    assert_eq!(c.cache.refresh_ahead_concurrency, 1);
    assert_eq!(c.cache.refresh_ahead_window, Some(Duration::from_secs(20)));
    for (doc, key) in [
        (
            "[cache]\nrefresh_ahead_concurrency = 0",
            "cache.refresh_ahead_concurrency",
        ),
        (
            "[cache]\nrefresh_ahead_window = \"0s\"",
            "cache.refresh_ahead_window",
        ),
        (
            "[cache]\nrefresh_ahead_window = \"soon\"",
            "cache.refresh_ahead_window",
        ),
    ] {
        let err = Config::from_toml(doc).unwrap_err().to_string();
        assert!(err.contains(key), "{doc}: {err}");
    }
}

#[test]
fn pins_parse_with_platforms_and_admin_pins_defaults_on() {
    let cfg = Config::from_toml(
        "[[pin]]\nimage = \"docker.io/library/alpine:3.20\"\nplatforms = [\"linux/amd64\", \"linux/arm64/v8\"]\n[[pin]]\nimage = \"busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000\"",
    )
    .unwrap();
    assert!(cfg.admin_pins);
    assert_eq!(cfg.pins.len(), 2);
    assert_eq!(cfg.pins[0].image, "docker.io/library/alpine:3.20");
    assert_eq!(cfg.pins[0].parsed.registry.as_deref(), Some("docker.io"));
    assert_eq!(cfg.pins[0].platforms.len(), 2);
    assert!(cfg.pins[1].platforms.is_empty(), "default: every platform");
    let off = Config::from_toml("admin_pins = false").unwrap();
    assert!(!off.admin_pins && off.pins.is_empty());
}

#[test]
fn bad_pins_name_the_key() {
    let cases = [
        ("[[pin]]\nplatforms = []", "pin[0].image", "required"),
        (
            "[[pin]]\nimage = \"Not An Image!\"",
            "pin[0].image",
            "not an image reference",
        ),
        (
            "[[pin]]\nimage = \"alpine@sha256:short\"",
            "pin[0].image",
            "not an image reference",
        ),
        (
            "[[pin]]\nimage = \"alpine\"\nplatforms = [\"\"]",
            "pin[0].platforms",
            "``",
        ),
        (
            "[[pin]]\nimage = \"quay.io/org/app:1\"",
            "pin[0].image",
            "registry `quay.io`",
        ),
        (
            "[[pin]]\nimage = \"alpine\"\n[[pin]]\nimage = \"alpine\"",
            "pin[1].image",
            "pinned twice",
        ),
        (
            // Two upstreams, neither the default (a sole upstream would be).
            "[[upstream]]\nname = \"r\"\nurl = \"http://r\"\n[[upstream]]\nname = \"s\"\nurl = \"http://s\"\n[[pin]]\nimage = \"alpine\"",
            "pin[0].image",
            "no upstream is the default",
        ),
    ];
    for (text, key, says) in cases {
        match Config::from_toml(text) {
            Err(ConfigError::Invalid { key: k, message }) => {
                assert_eq!(k, key, "{text}");
                assert!(message.contains(says), "{text}: {message}");
            }
            other => panic!("{text}: {other:?}"),
        }
    }
    // More pins than cache.max_pins.
    match Config::from_toml("[cache]\nmax_pins = 1\n[[pin]]\nimage = \"a\"\n[[pin]]\nimage = \"b\"")
    {
        Err(ConfigError::Invalid { key, message }) => {
            assert_eq!(key, "pin[1].image");
            assert!(message.contains("cache.max_pins"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // A field [[pin]] does not know is refused by the parser, naming it.
    let e = Config::from_toml("[[pin]]\nimage = \"alpine\"\ntag = \"x\"").unwrap_err();
    assert!(e.to_string().contains("tag"), "{e}");
}

#[test]
fn clients_without_auth_is_refused_at_load() {
    // Without [auth] no client has a name, so `clients` would refuse every request (403).
    let toml = "[[upstream]]\nname = \"private\"\nurl = \"https://private.example\"\nclients = [\"alice\"]";
    let err = Config::from_toml(toml).unwrap_err().to_string();
    assert!(err.contains("upstream[0].clients"), "{err}");
    assert!(err.contains("[auth]"), "{err}");
    let with_auth = format!("[auth]\ntokens_file = \"t\"\n{toml}");
    let c = Config::from_toml(&with_auth).unwrap();
    assert_eq!(c.upstreams[0].clients, Some(vec!["alice".to_owned()]));
}

#[test]
fn a_sole_upstream_is_the_default_without_saying_so() {
    let one =
        Config::from_toml("[[upstream]]\nname = \"local\"\nurl = \"http://127.0.0.1:5001\"\n")
            .unwrap();
    assert_eq!(one.default_upstream(), Some(0));
    // A plain request (no ns=, prefix or Host match) reaches it instead of NAME_UNKNOWN.
    let target = crate::upstream_choice::resolve(
        &one.upstreams,
        one.default_upstream(),
        "library/alpine",
        None,
        None,
    )
    .unwrap();
    assert_eq!(
        (target.upstream, target.selected_by),
        (0, crate::upstream_choice::SelectedBy::Default)
    );
    // Two and none marked: no guess.
    let two = Config::from_toml(
        "[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:5001\"\n[[upstream]]\nname = \"b\"\nurl = \"http://127.0.0.1:5002\"\n",
    )
    .unwrap();
    assert_eq!(two.default_upstream(), None);
}
