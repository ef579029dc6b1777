//! Request loops: an upstream that is archway itself (`--upstream http://127.0.0.1:5000` on
//! archway's own port), or two archways each the other's upstream. archway marks what it sends
//! upstream with `Via: 1.1 archway-<instance id>`; a request that comes back carrying its own
//! marker is refused at once (508, LOOP_DETECTED) instead of being forwarded again (which hung the
//! request until the timeouts ran out). An upstream on archway's own listener is also warned
//! about at start. A node → parent chain is no loop.

mod support;

use archway::config::UpstreamConfig;
use archway::Archway;
use http::StatusCode;
use std::time::{Duration, Instant};
use support::{config_for, FakeRegistry, Kind, TestClient};

/// Well within the upstream's 30 s read timeout (the default): a loop must be answered at once.
const PROMPT: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An upstream named `name` at `url` with the default timeouts, as `--upstream` makes it.
fn upstream(name: &str, url: &str) -> UpstreamConfig {
    let mut u = UpstreamConfig::from_url(Some(name), url).unwrap();
    u.default = true;
    u
}

async fn get_promptly(client: &TestClient, url: &str) -> support::Reply {
    let started = Instant::now();
    let r = tokio::time::timeout(PROMPT, client.get(url))
        .await
        .unwrap_or_else(|_| panic!("{url}: no answer within {PROMPT:?} (a request loop hangs)"));
    assert!(started.elapsed() < PROMPT);
    r
}

fn assert_loop_error(r: &support::Reply) {
    assert_eq!(r.status, StatusCode::LOOP_DETECTED, "{}", r.text());
    assert_eq!(r.error_code(), "LOOP_DETECTED", "{}", r.text());
    let message = r.json()["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("loop"), "{message}");
    assert!(
        message.contains("upstream"),
        "names the config to check: {message}"
    );
}

#[tokio::test]
async fn an_upstream_that_is_archway_itself_is_refused_as_a_loop() {
    let logs = support::logs::capture();
    let fake = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = config_for(&fake, dir.path());
    config.listen = vec![format!("127.0.0.1:{port}").parse().unwrap()];
    config.upstreams = vec![upstream("self", &format!("http://127.0.0.1:{port}"))];
    let archway = Archway::start(config).await.unwrap();
    let client = TestClient::new();
    let base = format!("http://{}", archway.local_addr());
    let blob = format!("sha256:{}", "ab".repeat(32));
    for path in [
        "/v2/lib/app/manifests/latest".to_owned(),
        format!("/v2/lib/app/blobs/{blob}"),
    ] {
        let r = get_promptly(&client, &format!("{base}{path}")).await;
        assert_loop_error(&r);
    }
    assert!(
        logs.text()
            .lines()
            .any(|l| l.contains("request loop") && l.contains("via=")),
        "the refusal is logged"
    );
    assert_eq!(fake.total(), 0);
    let text = logs.text();
    assert!(
        text.lines().any(|l| l.contains("WARN")
            && l.contains("upstream=self")
            && l.contains("own listener")),
        "a start-up warning: {text}"
    );
}

/// A's upstream is B and B's is A: the loop passes two archways. B carries A's marker on, so A
/// recognises its own request when it comes back.
#[tokio::test]
async fn two_archways_each_the_others_upstream_are_a_loop() {
    support::logs::capture();
    let fake = FakeRegistry::start().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = config_for(&fake, dir_a.path());
    a.listen = vec![format!("127.0.0.1:{port_a}").parse().unwrap()];
    a.upstreams = vec![upstream("b", &format!("http://127.0.0.1:{port_b}"))];
    let mut b = config_for(&fake, dir_b.path());
    b.listen = vec![format!("127.0.0.1:{port_b}").parse().unwrap()];
    b.upstreams = vec![upstream("a", &format!("http://127.0.0.1:{port_a}"))];
    let a = Archway::start(a).await.unwrap();
    let _b = Archway::start(b).await.unwrap();
    let client = TestClient::new();
    let r = get_promptly(
        &client,
        &format!("http://{}/v2/lib/app/manifests/latest", a.local_addr()),
    )
    .await;
    assert_loop_error(&r);
    let blob = format!("sha256:{}", "cd".repeat(32));
    let r = get_promptly(
        &client,
        &format!("http://{}/v2/lib/app/blobs/{blob}", a.local_addr()),
    )
    .await;
    assert!(r.status.is_server_error(), "{}", r.text());
    assert!(r.text().contains("loop"), "{}", r.text());
}

/// What archway sends upstream carries `Via: 1.1 archway-<id>`; through a parent the upstream
/// sees both hops (node, then parent), and the pull works: a parent is no loop.
#[tokio::test]
async fn requests_upstream_carry_via_and_a_parent_chain_is_no_loop() {
    support::logs::capture();
    let fake = FakeRegistry::builder().record_requests(true).start().await;
    let img = fake.sample_image("lib/app", "v1", 3);
    let (dir_p, dir_n) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let parent = Archway::start(config_for(&fake, dir_p.path()))
        .await
        .unwrap();
    let mut node = config_for(&fake, dir_n.path());
    node.parent.urls = vec![format!("http://{}", parent.local_addr()).parse().unwrap()];
    let node = Archway::start(node).await.unwrap();
    let client = TestClient::new();
    let base = format!("http://{}", node.local_addr());
    let r = get_promptly(&client, &format!("{base}/v2/lib/app/manifests/v1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = get_promptly(
        &client,
        &format!("{base}/v2/lib/app/blobs/{}", img.layers[0]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.body, img.layer_bytes[0]);

    let seen = fake.requests();
    for kind in [Kind::Manifest, Kind::Blob] {
        let request = seen
            .iter()
            .find(|q| q.kind == kind)
            .unwrap_or_else(|| panic!("a {kind:?} request upstream"));
        let via: Vec<&str> = request
            .headers
            .get_all("via")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        assert_eq!(via.len(), 2, "node, then parent: {via:?}");
        for hop in &via {
            assert!(hop.starts_with("1.1 archway-"), "{via:?}");
        }
        assert_ne!(via[0], via[1], "each archway its own marker: {via:?}");
    }
}

/// A parent that is this archway's own listener, by address or as `localhost`: refused at
/// start with an ERROR naming it, and never asked (a request to it would come back as a parent
/// request, again and again).
#[tokio::test]
async fn a_parent_on_archways_own_listener_is_refused_at_start_with_an_error() {
    let logs = support::logs::capture();
    let fake = FakeRegistry::start().await;
    let digest = fake.add_blob("lib/app", vec![5u8; 100]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = config_for(&fake, dir.path());
    config.listen = vec![format!("127.0.0.1:{port}").parse().unwrap()];
    config.parent.urls = vec![
        format!("http://127.0.0.1:{port}").parse().unwrap(),
        format!("http://localhost:{port}").parse().unwrap(),
    ];
    let archway = Archway::start(config).await.unwrap();
    let text = logs.text();
    for host in ["127.0.0.1", "localhost"] {
        let parent = format!("{host}:{port}");
        assert!(
            text.lines().any(|l| l.contains("ERROR")
                && l.contains("parent refused")
                && l.contains("it is this archway")
                && l.contains(&parent)),
            "a start-up error for the parent {parent}: {text}"
        );
    }
    // Never asked: with no parent to ask and `parent_fallback = "none"`, a cold blob is a clear
    // error at once, naming why, and not a loop through itself.
    let r = get_promptly(
        &TestClient::new(),
        &format!("http://{}/v2/lib/app/blobs/{digest}", archway.local_addr()),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(r.text().contains("own listener"), "{}", r.text());
    assert_eq!(
        fake.total(),
        0,
        "parent_fallback = \"none\": upstream is not asked"
    );
}
