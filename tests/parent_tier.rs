//! The parent tier, in-process on loopback: the fake registry as the only upstream, three parent
//! archways in front of it, and node archways with `parent = [...]` in front of those. What the
//! node sends a parent, how requests spread (rendezvous by digest), failover, what happens when
//! every parent is down, a parent's `[auth]`, and that a parent reaches only what it names.

mod support;

use archway::config::{AuthConfig, Config, Credentials, ParentFallback, Secret};
use archway::conversion::convert_oci_to_docker;
use archway::parent_choice;
use archway::Archway;
use http::{Method, StatusCode};
use std::time::Duration;
use support::clients;
use support::fake_registry::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use support::images::{self, DOCKER_LIST};
use support::metrics::Scrape;
use support::{config_for, sha256_digest, FakeRegistry, Kind, Reply, TestClient};

const REPO: &str = "team/app";

/// The fake registry, parent archways in front of it, and the nodes started in front of those.
struct Fleet {
    fake: FakeRegistry,
    parents: Vec<Option<Archway>>,
    /// `http://127.0.0.1:<port>` of each parent, in start order.
    urls: Vec<String>,
    dirs: Vec<tempfile::TempDir>,
    client: TestClient,
}

impl Fleet {
    async fn start(n: usize) -> Fleet {
        Self::start_with(FakeRegistry::start().await, n, |_| {}).await
    }

    /// `n` parents in front of `fake` (upstream `fake`, the default), `tweak` applied to each.
    async fn start_with(fake: FakeRegistry, n: usize, tweak: impl Fn(&mut Config)) -> Fleet {
        support::logs::capture();
        let mut fleet = Fleet {
            fake,
            parents: Vec::new(),
            urls: Vec::new(),
            dirs: Vec::new(),
            client: TestClient::new(),
        };
        for _ in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let mut config = config_for(&fleet.fake, dir.path());
            tweak(&mut config);
            let parent = Archway::start(config).await.unwrap();
            fleet.urls.push(format!("http://{}", parent.local_addr()));
            fleet.parents.push(Some(parent));
            fleet.dirs.push(dir);
        }
        fleet
    }

    /// A node whose upstream `fake` (still pointing at the fake, for `parent_fallback`) is
    /// reached through `parents` (indexes into `urls`, in that configured order).
    async fn node_of(&mut self, parents: &[usize], tweak: impl FnOnce(&mut Config)) -> Archway {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_for(&self.fake, dir.path());
        config.parent.urls = parents
            .iter()
            .map(|i| self.urls[*i].parse().unwrap())
            .collect();
        config.parent.connect_timeout = Duration::from_secs(1);
        config.parent.read_timeout = Duration::from_secs(5);
        tweak(&mut config);
        self.dirs.push(dir);
        Archway::start(config).await.unwrap()
    }

    async fn node(&mut self) -> Archway {
        let all: Vec<usize> = (0..self.urls.len()).collect();
        self.node_of(&all, |_| {}).await
    }

    fn parent(&self, i: usize) -> &Archway {
        self.parents[i].as_ref().unwrap()
    }

    async fn stop_parent(&mut self, i: usize) {
        if let Some(p) = self.parents[i].take() {
            p.shutdown().await;
        }
    }

    /// The parent (index into `urls`) a request keyed `key` goes to first.
    fn first_choice(&self, key: &str) -> usize {
        parent_choice::order(&self.urls, key)[0]
    }

    async fn get(&self, at: &Archway, path: &str, headers: &[(&str, &str)]) -> Reply {
        let url = format!("http://{}{path}", at.local_addr());
        self.client.request(Method::GET, &url, headers).await
    }

    async fn head(&self, at: &Archway, path: &str) -> Reply {
        let url = format!("http://{}{path}", at.local_addr());
        self.client.request(Method::HEAD, &url, &[]).await
    }
}

fn scrape(a: &Archway) -> Scrape {
    Scrape::parse(a.proxy().metrics().encode())
}

/// Client-request counters are written when the response body ends: wait for them.
async fn scrape_until(a: &Archway, done: impl Fn(&Scrape) -> bool) -> Scrape {
    for _ in 0..100 {
        let s = scrape(a);
        if done(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    scrape(a)
}

/// Blob GETs a parent answered with 200 (its own client-request counter).
fn blob_gets(s: &Scrape) -> f64 {
    s.get(
        "archway_requests_total",
        &[("kind", "blob"), ("method", "GET"), ("status", "200")],
    )
    .unwrap_or(0.0)
}

#[track_caller]
fn assert_verified(r: &Reply, digest: &archway::digest::Digest, what: &str) {
    assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());
    assert!(r.complete(), "{what} broke off");
    assert_eq!(r.sha256(), digest.to_string(), "{what}: wrong bytes");
}

// === (a) a pull through the node ===

#[tokio::test]
async fn a_pull_through_the_node_verifies_and_upstream_sees_each_blob_once() {
    let mut fleet = Fleet::start(3).await;
    let img = fleet.fake.sample_image(REPO, "v1", 1);
    let first = fleet.node().await;
    // A second node lists the parents in another order: the choice must not depend on it.
    let second = fleet.node_of(&[2, 0, 1], |_| {}).await;
    for (node, name) in [(&first, "first node"), (&second, "second node")] {
        let head = fleet.head(node, "/v2/team/app/manifests/v1").await;
        assert_eq!(head.status, StatusCode::OK, "{name}: tag HEAD");
        let digest = img.manifest.to_string();
        assert_eq!(head.header("docker-content-digest"), Some(digest.as_str()));
        let tag = fleet.get(node, "/v2/team/app/manifests/v1", &[]).await;
        assert_verified(&tag, &img.manifest, &format!("{name}: tag GET"));
        let by_digest = fleet
            .get(
                node,
                &format!("/v2/team/app/manifests/{}", img.manifest),
                &[],
            )
            .await;
        assert_verified(&by_digest, &img.manifest, &format!("{name}: manifest"));
        let config = fleet
            .get(node, &format!("/v2/team/app/blobs/{}", img.config), &[])
            .await;
        assert_verified(&config, &img.config, &format!("{name}: config"));
        for layer in &img.layers {
            let r = fleet
                .get(node, &format!("/v2/team/app/blobs/{layer}"), &[])
                .await;
            assert_verified(&r, layer, &format!("{name}: layer"));
        }
    }
    // Two nodes, three parents: upstream saw each blob GET once.
    let blobs: Vec<_> = std::iter::once(&img.config).chain(&img.layers).collect();
    for d in &blobs {
        let path = format!("/v2/{REPO}/blobs/{d}");
        assert_eq!(fleet.fake.count_path("GET", &path), 1, "{path}");
    }
    assert_eq!(fleet.fake.count("GET", Kind::Blob), blobs.len());
    // Every upstream request came from a parent: each carries ?ns= only on its way to a parent,
    // never to upstream.
    for q in fleet.fake.requests() {
        assert!(
            !q.query.as_deref().unwrap_or("").contains("ns="),
            "{} {:?}",
            q.path,
            q.query
        );
    }
}

/// A blob the node filled through a parent is counted as the parent's bytes, not upstream's;
/// the node's next request is its own hit; the parent itself filled from upstream.
#[tokio::test]
async fn a_fill_through_a_parent_is_labelled_parent() {
    let mut fleet = Fleet::start(1).await;
    let digest = fleet.fake.add_blob(REPO, vec![7u8; 30_000]);
    let node = fleet.node().await;
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let first = fleet.get(&node, &path, &[]).await;
    assert_verified(&first, &digest, "through the parent");
    node.proxy()
        .blob_store()
        .finish_commits(Duration::from_secs(10))
        .await;
    let again = fleet.get(&node, &path, &[]).await;
    assert_verified(&again, &digest, "from the node's cache");
    let s = scrape_until(&node, |s| {
        s.get("archway_served_bytes_total", &[("source", "cache")]) == Some(30_000.0)
    })
    .await;
    let served = |s: &Scrape, source| s.value("archway_served_bytes_total", &[("source", source)]);
    assert_eq!(served(&s, "parent"), 30_000.0);
    assert_eq!(served(&s, "cache"), 30_000.0);
    assert_eq!(served(&s, "upstream"), 0.0);
    // The parent may have fetched it from upstream: only the node's own hit saved anything.
    assert_eq!(s.value("archway_upstream_bytes_saved_total", &[]), 30_000.0);
    for result in ["miss", "hit"] {
        let labels = [("kind", "blob"), ("result", result)];
        assert_eq!(s.value("archway_cache_results_total", &labels), 1.0);
    }
    let p = scrape_until(fleet.parent(0), |s| {
        s.get("archway_served_bytes_total", &[("source", "upstream")]) == Some(30_000.0)
    })
    .await;
    assert_eq!(
        p.value("archway_served_bytes_total", &[("source", "upstream")]),
        30_000.0
    );
    assert_eq!(
        p.get("archway_served_bytes_total", &[("source", "parent")]),
        None
    );
}

// === (b) rendezvous ===

#[tokio::test]
async fn the_same_digest_goes_to_the_same_parent_and_digests_spread() {
    let mut fleet = Fleet::start(3).await;
    let digests: Vec<_> = (0..48u8)
        .map(|i| fleet.fake.add_blob(REPO, vec![i; 1000 + usize::from(i)]))
        .collect();
    let node = fleet.node().await;
    let other = fleet.node_of(&[1, 2, 0], |_| {}).await;
    let mut expected = [0.0f64; 3];
    for d in &digests {
        expected[fleet.first_choice(&d.to_string())] += 1.0;
    }
    assert!(
        expected.iter().all(|n| *n >= 2.0),
        "48 digests spread over all three parents: {expected:?}"
    );
    for round in 0..2 {
        for (at, name) in [(&node, "node"), (&other, "other node")] {
            for d in &digests {
                let r = fleet.get(at, &format!("/v2/{REPO}/blobs/{d}"), &[]).await;
                assert_verified(&r, d, &format!("{name} round {round}"));
            }
        }
    }
    // The nodes cached what they fetched: each parent saw each of its digests once per node,
    // and nothing of another parent's.
    for (i, want) in expected.iter().enumerate() {
        let s = scrape_until(fleet.parent(i), |s| blob_gets(s) >= want * 2.0).await;
        assert_eq!(blob_gets(&s), want * 2.0, "parent {i}");
    }
    let s = scrape(&node);
    for (i, want) in expected.iter().enumerate() {
        let labels = [("parent", fleet.urls[i].as_str()), ("status", "200")];
        assert_eq!(s.value("archway_parent_requests_total", &labels), *want);
    }
    assert_eq!(
        s.sum("archway_upstream_requests_total"),
        0.0,
        "a node's exchanges are with its parents, counted as such"
    );
    assert_eq!(s.series("archway_parent_requests_total").len(), 3);
    for d in &digests {
        assert_eq!(
            fleet
                .fake
                .count_path("GET", &format!("/v2/{REPO}/blobs/{d}")),
            1
        );
    }
}

// === (c) failover ===

#[tokio::test]
async fn a_stopped_parent_fails_over_to_the_next_and_is_skipped_while_down() {
    let mut fleet = Fleet::start(3).await;
    let digests: Vec<_> = (0..30u8)
        .map(|i| fleet.fake.add_blob(REPO, vec![i; 2000]))
        .collect();
    let node = fleet.node().await;
    let first = digests[0].clone();
    let chosen = fleet.first_choice(&first.to_string());
    let chosen_url = fleet.urls[chosen].clone();
    fleet.stop_parent(chosen).await;

    let r = fleet
        .get(&node, &format!("/v2/{REPO}/blobs/{first}"), &[])
        .await;
    assert_verified(&r, &first, "via the next parent");
    let next = parent_choice::order(&fleet.urls, &first.to_string())[1];
    let s = scrape(&node);
    let url = chosen_url.as_str();
    assert_eq!(
        s.value(
            "archway_parent_requests_total",
            &[("parent", url), ("status", "error")]
        ),
        1.0
    );
    assert_eq!(
        s.value("archway_parent_failovers_total", &[("parent", url)]),
        1.0
    );
    assert_eq!(
        s.value(
            "archway_parent_requests_total",
            &[("parent", fleet.urls[next].as_str()), ("status", "200")]
        ),
        1.0
    );

    // Other digests the stopped parent owned go to their second choice without asking it
    // again while it is marked down.
    let owned: Vec<_> = digests[1..]
        .iter()
        .filter(|d| fleet.first_choice(&d.to_string()) == chosen)
        .collect();
    assert!(!owned.is_empty(), "fixture: the stopped parent owns more");
    for d in &owned {
        let r = fleet
            .get(&node, &format!("/v2/{REPO}/blobs/{d}"), &[])
            .await;
        assert_verified(&r, d, "owned by the stopped parent");
    }
    let s = scrape(&node);
    assert_eq!(
        s.value(
            "archway_parent_requests_total",
            &[("parent", url), ("status", "error")]
        ),
        1.0,
        "a parent marked down is not asked again"
    );
    assert_eq!(
        s.value("archway_parent_failovers_total", &[("parent", url)]),
        1.0
    );
}

#[tokio::test]
async fn a_parent_answering_5xx_fails_over_without_being_marked_down() {
    let mut fleet = Fleet::start(2).await;
    let d = fleet.fake.add_blob(REPO, vec![7u8; 3000]);
    let node = fleet.node().await;
    let chosen = fleet.first_choice(&d.to_string());
    // The chosen parent cannot reach upstream once (a 503 it answers as 502); the other can.
    fleet
        .fake
        .fault_times(Some(Kind::Blob), support::Fault::status(503), 1);
    let r = fleet
        .get(&node, &format!("/v2/{REPO}/blobs/{d}"), &[])
        .await;
    assert_verified(&r, &d, "via the other parent");
    let s = scrape(&node);
    let url = fleet.urls[chosen].as_str();
    assert_eq!(
        s.value(
            "archway_parent_requests_total",
            &[("parent", url), ("status", "502")]
        ),
        1.0
    );
    assert_eq!(
        s.value("archway_parent_failovers_total", &[("parent", url)]),
        1.0
    );
    // Not marked down: the next digest it owns is asked of it.
    let again = (0..50u8)
        .map(|i| fleet.fake.add_blob(REPO, vec![i; 3001]))
        .find(|d| fleet.first_choice(&d.to_string()) == chosen)
        .unwrap();
    let r = fleet
        .get(&node, &format!("/v2/{REPO}/blobs/{again}"), &[])
        .await;
    assert_verified(&r, &again, "from the first choice again");
    let s = scrape(&node);
    assert_eq!(
        s.value(
            "archway_parent_requests_total",
            &[("parent", url), ("status", "200")]
        ),
        1.0
    );
}

// === (d) every parent down ===

#[tokio::test]
async fn with_every_parent_down_a_cached_tag_is_stale_and_a_cold_blob_a_clear_error() {
    let mut fleet = Fleet::start(2).await;
    let img = fleet.fake.sample_image(REPO, "v1", 4);
    let cold = fleet.fake.add_blob(REPO, vec![9u8; 5000]);
    let node = fleet
        .node_of(&[0, 1], |c| {
            c.cache.tag_ttl = Duration::from_millis(100);
            c.cache.stale_if_error = Duration::from_secs(3600);
        })
        .await;
    let r = fleet.get(&node, "/v2/team/app/manifests/v1", &[]).await;
    assert_verified(&r, &img.manifest, "warm");
    fleet.stop_parent(0).await;
    fleet.stop_parent(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = fleet.fake.requests_seen();

    let r = fleet.get(&node, "/v2/team/app/manifests/v1", &[]).await;
    assert_verified(&r, &img.manifest, "stale");
    assert_eq!(r.header("warning"), Some(support::STALE_WARNING));

    let r = fleet
        .get(&node, &format!("/v2/{REPO}/blobs/{cold}"), &[])
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(r.error_code(), "UNAVAILABLE");
    let text = r.text();
    for url in &fleet.urls {
        assert!(text.contains(url.as_str()), "names {url}: {text}");
    }
    assert!(text.contains("no parent answered"), "{text}");
    assert_eq!(
        fleet.fake.requests_seen(),
        seen,
        "without parent_fallback the node never goes to upstream itself"
    );
}

#[tokio::test]
async fn parent_fallback_direct_goes_to_upstream_when_no_parent_answers() {
    let mut fleet = Fleet::start(2).await;
    let cold = fleet.fake.add_blob(REPO, vec![3u8; 5000]);
    let img = fleet.fake.sample_image(REPO, "v1", 6);
    let node = fleet
        .node_of(&[0, 1], |c| c.parent.fallback = ParentFallback::Direct)
        .await;
    fleet.stop_parent(0).await;
    fleet.stop_parent(1).await;
    let r = fleet
        .get(&node, &format!("/v2/{REPO}/blobs/{cold}"), &[])
        .await;
    assert_verified(&r, &cold, "from upstream directly");
    let r = fleet.get(&node, "/v2/team/app/manifests/v1", &[]).await;
    assert_verified(&r, &img.manifest, "tag from upstream directly");
    assert_eq!(
        fleet
            .fake
            .count_path("GET", &format!("/v2/{REPO}/blobs/{cold}")),
        1
    );
    let s = scrape(&node);
    for url in &fleet.urls {
        assert!(
            s.value(
                "archway_parent_failovers_total",
                &[("parent", url.as_str())]
            ) >= 1.0,
            "{url}"
        );
    }
}

// === (e) no client hints: the node makes the platform answer ===

#[tokio::test]
async fn a_docker_1706_client_gets_the_nodes_conversion_while_the_parent_passes_the_index() {
    let mut fleet = Fleet::start(2).await;
    let idx = images::buildx_index(
        &fleet.fake,
        REPO,
        "v1",
        11,
        &["linux/amd64", "linux/arm64", "linux/arm/v7"],
    );
    let node = fleet.node().await;
    let c = clients::docker_1706();
    let r = fleet
        .get(
            &node,
            "/v2/team/app/manifests/v1",
            &c.with(&[("X-Meta-Platform", "linux/arm64")]),
        )
        .await;
    let child = idx.image("linux/arm64");
    let expected = convert_oci_to_docker(&child.bytes).unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("content-type"), Some(DOCKER_MANIFEST));
    assert!(r.body.as_ref() == &expected[..], "the node's conversion");
    assert_eq!(r.sha256(), sha256_digest(&expected).to_string());

    // What reached upstream came from a parent asked with every manifest type, archway's own
    // User-Agent and no platform hint: the node forwarded none of the client's headers.
    let asked: Vec<_> = fleet
        .fake
        .requests()
        .into_iter()
        .filter(|q| q.kind == Kind::Manifest)
        .collect();
    assert!(!asked.is_empty());
    for q in &asked {
        let accept: Vec<String> = q
            .headers
            .get_all("accept")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let accept = accept.join(",");
        for t in [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST] {
            assert!(accept.contains(t), "{} asked with Accept {accept}", q.path);
        }
        let ua = q.headers.get("user-agent").unwrap().to_str().unwrap();
        assert!(ua.starts_with("archway/"), "{ua}");
        assert!(q.headers.get("x-meta-platform").is_none());
    }
    // The parent answered the node with the index untouched: it rewrote nothing, the node did.
    let parent_rewrites: f64 = (0..2)
        .map(|i| scrape(fleet.parent(i)).sum("archway_rewrites_total"))
        .sum();
    assert_eq!(parent_rewrites, 0.0, "the parents passed the index through");
    assert!(scrape(&node).sum("archway_rewrites_total") >= 1.0);
    let s = scrape(&node);
    let tag_answers: f64 = fleet
        .urls
        .iter()
        .map(|u| {
            s.get(
                "archway_parent_requests_total",
                &[("parent", u.as_str()), ("status", "200")],
            )
            .unwrap_or(0.0)
        })
        .sum();
    assert!(tag_answers >= 1.0);
    // The index itself, asked of the node by a client that takes indexes, is byte for byte
    // upstream's.
    let r = fleet
        .get(
            &node,
            &format!("/v2/team/app/manifests/{}", idx.digest),
            &[("Accept", OCI_INDEX)],
        )
        .await;
    assert_verified(&r, &idx.digest, "the index by digest");
}

// === (f) a parent with [auth] ===

const PARENT_USER: &str = "node";
const PARENT_PASSWORD: &str = "correct horse";

async fn fleet_with_auth() -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash(PARENT_PASSWORD, 4).unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("{PARENT_USER}:{hash}\n")).unwrap();
    let mut fleet = Fleet::start_with(FakeRegistry::start().await, 2, |c| {
        c.auth = Some(AuthConfig {
            htpasswd_file: Some(htpasswd.clone()),
            ..AuthConfig::default()
        });
    })
    .await;
    fleet.dirs.push(dir);
    fleet
}

#[tokio::test]
async fn a_parent_with_auth_takes_the_nodes_credentials_and_never_the_clients() {
    let mut fleet = fleet_with_auth().await;
    let d = fleet.fake.add_blob(REPO, vec![5u8; 4000]);
    let with = fleet
        .node_of(&[0, 1], |c| {
            c.parent.credentials = Some(Credentials {
                username: PARENT_USER.into(),
                password: Secret::new(PARENT_PASSWORD),
            });
        })
        .await;
    let without = fleet.node_of(&[0, 1], |_| {}).await;

    // The client's own Authorization (the parent's credentials, even) is not passed on.
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{PARENT_USER}:{PARENT_PASSWORD}")
        )
    );
    let r = fleet
        .get(
            &without,
            &format!("/v2/{REPO}/blobs/{d}"),
            &[("Authorization", basic.as_str())],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(fleet.fake.count("GET", Kind::Blob), 0);
    let s = scrape(&without);
    let chosen = fleet.urls[fleet.first_choice(&d.to_string())].as_str();
    assert_eq!(
        s.value(
            "archway_parent_requests_total",
            &[("parent", chosen), ("status", "401")]
        ),
        1.0,
        "a 401 is an answer: no failover"
    );

    let r = fleet
        .get(&with, &format!("/v2/{REPO}/blobs/{d}"), &[])
        .await;
    assert_verified(&r, &d, "with the node's credentials");
    // The operator is told which parent refused which node; no secret is logged.
    let logs = support::logs::capture().text();
    assert!(
        logs.lines()
            .any(|l| l.contains("[auth] refused this node")
                && l.contains(&format!("parent={chosen}"))),
        "{logs}"
    );
    let encoded = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{PARENT_USER}:{PARENT_PASSWORD}"),
    );
    assert!(!logs.contains(PARENT_PASSWORD) && !logs.contains(&encoded));
    let r = fleet.get(&with, "/v2/team/app/tags/list", &[]).await;
    assert_ne!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
}

#[tokio::test]
async fn a_parent_with_only_a_tokens_file_takes_the_nodes_parent_token() {
    const TOKEN: &str = "node-token-5f1c";
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("# nodes\n{TOKEN}\n")).unwrap();
    let mut fleet = Fleet::start_with(FakeRegistry::start().await, 2, |c| {
        c.auth = Some(AuthConfig {
            tokens_file: Some(tokens.clone()),
            ..AuthConfig::default()
        });
    })
    .await;
    fleet.dirs.push(dir);
    let d = fleet.fake.add_blob(REPO, vec![6u8; 5000]);
    let with = fleet
        .node_of(&[0, 1], |c| c.parent.token = Some(Secret::new(TOKEN)))
        .await;
    let wrong = fleet
        .node_of(&[0, 1], |c| c.parent.token = Some(Secret::new("not-it")))
        .await;
    let r = fleet
        .get(&wrong, &format!("/v2/{REPO}/blobs/{d}"), &[])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(fleet.fake.count("GET", Kind::Blob), 0);
    let r = fleet
        .get(&with, &format!("/v2/{REPO}/blobs/{d}"), &[])
        .await;
    assert_verified(&r, &d, "with the node's parent_token");
    let logs = support::logs::capture().text();
    assert!(!logs.contains(TOKEN), "the token is never logged");
}

// === (g) a parent reaches only the upstreams its config names ===

#[tokio::test]
async fn a_node_cannot_make_its_parent_contact_a_host_the_parent_does_not_name() {
    let mut fleet = Fleet::start(2).await;
    let secret = FakeRegistry::start().await;
    let d = secret.add_blob(REPO, vec![1u8; 100]);
    secret.sample_image(REPO, "v1", 2);
    // The node names the other registry as an upstream; the parents do not.
    let secret_url = secret.url();
    let node = fleet
        .node_of(&[0, 1], |c| {
            c.upstreams.push(support::upstream_for("secret", &secret));
        })
        .await;
    for path in [
        format!("/v2/{REPO}/blobs/{d}?ns=secret"),
        format!("/v2/{REPO}/manifests/v1?ns=secret"),
        format!("/v2/secret/{REPO}/manifests/v1"),
    ] {
        let r = fleet.get(&node, &path, &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text());
    }
    // A client talking to a parent directly cannot name a host either.
    let host = secret_url.trim_start_matches("http://");
    for path in [
        format!("/v2/{REPO}/blobs/{d}?ns={host}"),
        format!("/v2/{host}/{REPO}/manifests/v1"),
        format!("/v2/{REPO}/manifests/v1?ns=secret"),
    ] {
        let r = fleet.get(fleet.parent(0), &path, &[]).await;
        assert!(
            r.status.is_client_error(),
            "{path}: {} {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(
        secret.requests_seen(),
        0,
        "nobody reached the other registry"
    );
}

// === nothing from a parent is trusted unverified ===

/// The fake registry stands in for a parent (it ignores `?ns=`), so the test sees exactly what
/// the node sends a parent, and can make the "parent" lie.
#[tokio::test]
async fn what_a_node_sends_a_parent_and_that_a_lying_parent_is_not_believed() {
    support::logs::capture();
    let upstream = FakeRegistry::start().await;
    let liar = FakeRegistry::start().await;
    let img = liar.sample_image(REPO, "v1", 21);
    let other = liar.sample_image(REPO, "v2", 22);
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&upstream, dir.path());
    config.parent.urls = vec![liar.url().parse().unwrap()];
    let node = Archway::start(config).await.unwrap();
    let client = TestClient::new();
    let url = |path: &str| format!("http://{}{path}", node.local_addr());

    // A client's headers stay at the node.
    let c = clients::docker_1706();
    let r = client
        .request(
            Method::GET,
            &url("/v2/team/app/manifests/v1"),
            &c.with(&[
                ("Authorization", "Basic Y2xpZW50OnNlY3JldA=="),
                ("X-Meta-Platform", "linux/arm64"),
            ]),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let asked = liar.requests();
    let q = asked.iter().find(|q| q.kind == Kind::Manifest).unwrap();
    assert_eq!(q.query.as_deref(), Some("ns=fake"));
    assert_eq!(q.path, "/v2/team/app/manifests/v1");
    let accept: Vec<String> = q
        .headers
        .get_all("accept")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let accept = accept.join(",");
    for t in [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST] {
        assert!(accept.contains(t), "Accept {accept}");
    }
    let ua = q.headers.get("user-agent").unwrap().to_str().unwrap();
    assert!(ua.starts_with("archway/"), "{ua}");
    assert!(q.headers.get("authorization").is_none());
    assert!(q.headers.get("x-meta-platform").is_none());
    assert_eq!(upstream.requests_seen(), 0, "upstream itself never asked");

    // Wrong bytes under a digest: never a complete 200, never kept.
    liar.fault_times(Some(Kind::Blob), support::Fault::WrongBytes, 2);
    let path = format!("/v2/{REPO}/blobs/{}", img.layers[0]);
    for _ in 0..2 {
        let r = client.request(Method::GET, &url(&path), &[]).await;
        assert!(
            !(r.status == StatusCode::OK && r.complete()),
            "{}",
            r.status
        );
    }
    liar.fault_times(Some(Kind::Manifest), support::Fault::WrongBytes, 1);
    let by_digest = url(&format!("/v2/{REPO}/manifests/{}", other.manifest));
    let r = client.request(Method::GET, &by_digest, &[]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    // Once the parent tells the truth, the right bytes are served.
    let r = client.request(Method::GET, &by_digest, &[]).await;
    assert_verified(&r, &other.manifest, "manifest by digest");
}

// === a stalled parent, and a parent that is the node itself ===

#[tokio::test]
async fn a_parent_that_does_not_answer_in_time_fails_over_and_is_not_waited_on_again() {
    let mut fleet = Fleet::start(1).await;
    // The second "parent" accepts connections and never answers.
    let stalled = FakeRegistry::start().await;
    stalled.fault(None, support::Fault::StallHeaders);
    fleet.urls.push(stalled.url());
    let digests: Vec<_> = (0..40u8)
        .map(|i| fleet.fake.add_blob(REPO, vec![i; 1500]))
        .collect();
    let node = fleet
        .node_of(&[0, 1], |c| {
            c.parent.read_timeout = Duration::from_millis(400)
        })
        .await;
    let owned: Vec<_> = digests
        .iter()
        .filter(|d| fleet.first_choice(&d.to_string()) == 1)
        .collect();
    assert!(owned.len() >= 2, "fixture: the stalled parent owns some");
    let started = std::time::Instant::now();
    let r = fleet
        .get(&node, &format!("/v2/{REPO}/blobs/{}", owned[0]), &[])
        .await;
    assert_verified(&r, owned[0], "after the timeout");
    assert!(started.elapsed() >= Duration::from_millis(400));
    // Marked down: the next one it owns does not wait for it.
    let started = std::time::Instant::now();
    let r = fleet
        .get(&node, &format!("/v2/{REPO}/blobs/{}", owned[1]), &[])
        .await;
    assert_verified(&r, owned[1], "without waiting");
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    let s = scrape(&node);
    let url = stalled.url();
    assert_eq!(
        s.value(
            "archway_parent_requests_total",
            &[("parent", url.as_str()), ("status", "timeout")]
        ),
        1.0
    );
    assert_eq!(
        s.value(
            "archway_parent_failovers_total",
            &[("parent", url.as_str())]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_node_listed_as_its_own_parent_is_never_asked() {
    let mut fleet = Fleet::start(0).await;
    let d = fleet.fake.add_blob(REPO, vec![4u8; 100]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    fleet.urls.push(format!("http://127.0.0.1:{port}"));
    let node = fleet
        .node_of(&[0], |c| {
            c.listen = vec![format!("127.0.0.1:{port}").parse().unwrap()];
        })
        .await;
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        fleet.get(&node, &format!("/v2/{REPO}/blobs/{d}"), &[]),
    )
    .await
    .expect("no request loop");
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(r.text().contains("own listener"), "{}", r.text());
    assert_eq!(
        scrape(&node).sum("archway_requests_total"),
        1.0,
        "the node never asked itself"
    );
}

// === listings ===

/// A parent points its pagination links back through itself, with the `ns=` the node sent; the
/// node's client gets the link it would get without parents.
#[tokio::test]
async fn tags_list_pagination_through_a_parent_leads_back_through_the_node() {
    let mut fleet = Fleet::start(2).await;
    fleet.fake.add_tags(REPO, &["a", "b", "c", "d", "e"]);
    let node = fleet.node().await;
    for (first, want_link) in [
        (
            "/v2/team/app/tags/list?n=2",
            "</v2/team/app/tags/list?n=2&last=b>; rel=\"next\"",
        ),
        (
            "/v2/fake/team/app/tags/list?n=2",
            "</v2/fake/team/app/tags/list?n=2&last=b>; rel=\"next\"",
        ),
        (
            "/v2/team/app/tags/list?ns=fake&n=2",
            "</v2/team/app/tags/list?n=2&last=b&ns=fake>; rel=\"next\"",
        ),
    ] {
        let p1 = fleet.get(&node, first, &[]).await;
        assert_eq!(p1.status, StatusCode::OK, "{first}: {}", p1.text());
        assert_eq!(p1.json()["tags"], serde_json::json!(["a", "b"]), "{first}");
        assert_eq!(p1.header("link"), Some(want_link), "{first}");
        let next = want_link
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .map(|(t, _)| t)
            .unwrap();
        let p2 = fleet.get(&node, next, &[]).await;
        assert_eq!(p2.json()["tags"], serde_json::json!(["c", "d"]), "{next}");
    }
}

/// Without `parent`, nothing changes: upstream is asked directly and no parent series exist.
#[tokio::test]
async fn without_parent_upstream_is_asked_directly() {
    // Before the harness's own subscriber: the parent tests read the captured logs.
    support::logs::capture();
    let h = support::Harness::start().await;
    let d = h.fake.add_blob(REPO, vec![8u8; 100]);
    let r = h.get(&format!("/v2/{REPO}/blobs/{d}")).await;
    assert_verified(&r, &d, "direct");
    let q = h.fake.requests().pop().unwrap();
    assert_eq!(q.query, None, "no ns= to an upstream");
    let s = scrape(h.archway.as_ref().unwrap());
    assert!(s.series("archway_parent_requests_total").is_empty());
    assert!(s.series("archway_parent_failovers_total").is_empty());
    assert_eq!(
        s.value(
            "archway_upstream_requests_total",
            &[("upstream", "fake"), ("status", "200")]
        ),
        1.0
    );
}

/// A parent behind a token service (the fake stands in for it): the node answers the Bearer
/// challenge with its parent credentials through the upstream auth code, and follows the
/// parent's blob redirect under the egress policy (loopback is allowed: the parent lives there),
/// without taking the token to the redirect's other origin.
#[tokio::test]
async fn a_parents_bearer_challenge_and_blob_redirect_are_handled_like_an_upstreams() {
    support::logs::capture();
    let upstream = FakeRegistry::start().await;
    let parent = FakeRegistry::builder()
        .credentials(PARENT_USER, PARENT_PASSWORD)
        .redirect_blobs(true)
        .start()
        .await;
    let img = parent.sample_image(REPO, "v1", 31);
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&upstream, dir.path());
    config.parent.urls = vec![parent.url().parse().unwrap()];
    config.parent.credentials = Some(Credentials {
        username: PARENT_USER.into(),
        password: Secret::new(PARENT_PASSWORD),
    });
    let node = Archway::start(config).await.unwrap();
    let client = TestClient::new();
    let url = |path: &str| format!("http://{}{path}", node.local_addr());
    let r = client
        .request(Method::GET, &url("/v2/team/app/manifests/v1"), &[])
        .await;
    assert_verified(&r, &img.manifest, "tag through a token-protected parent");
    let r = client
        .request(
            Method::GET,
            &url(&format!("/v2/{REPO}/blobs/{}", img.layers[0])),
            &[],
        )
        .await;
    assert_verified(&r, &img.layers[0], "redirected blob");
    let tokens = parent.token_requests();
    assert!(!tokens.is_empty());
    for t in &tokens {
        assert_eq!(
            t.basic,
            Some((PARENT_USER.to_owned(), PARENT_PASSWORD.to_owned()))
        );
    }
    assert!(
        parent.count_kind(Kind::Cdn) >= 1,
        "the redirect was followed"
    );
    assert!(
        parent.cdn_authorizations().iter().all(Option::is_none),
        "no token to another origin"
    );
    assert_eq!(upstream.requests_seen(), 0);
}

/// A parent marked down is asked again once `parent_down_for` has passed: its keys come back.
#[tokio::test]
async fn a_parent_back_after_parent_down_for_gets_its_keys_again() {
    let mut fleet = Fleet::start(2).await;
    let digests: Vec<_> = (0..30u8)
        .map(|i| fleet.fake.add_blob(REPO, vec![i; 1200]))
        .collect();
    let node = fleet
        .node_of(&[0, 1], |c| c.parent.down_for = Duration::from_millis(300))
        .await;
    let owned: Vec<_> = digests
        .iter()
        .filter(|d| fleet.first_choice(&d.to_string()) == 0)
        .collect();
    assert!(owned.len() >= 2, "fixture: parent 0 owns some");
    let addr = fleet.parent(0).local_addr();
    fleet.stop_parent(0).await;
    let r = fleet
        .get(&node, &format!("/v2/{REPO}/blobs/{}", owned[0]), &[])
        .await;
    assert_verified(&r, owned[0], "while parent 0 is down");

    // Parent 0 comes back on its address (with an empty cache).
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&fleet.fake, dir.path());
    config.listen = vec![addr];
    fleet.parents[0] = Some(Archway::start(config).await.unwrap());
    fleet.dirs.push(dir);
    tokio::time::sleep(Duration::from_millis(400)).await;

    let r = fleet
        .get(&node, &format!("/v2/{REPO}/blobs/{}", owned[1]), &[])
        .await;
    assert_verified(&r, owned[1], "parent 0 again");
    let url = fleet.urls[0].as_str();
    let s = scrape(&node);
    assert_eq!(
        s.value(
            "archway_parent_requests_total",
            &[("parent", url), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        s.value(
            "archway_parent_requests_total",
            &[("parent", url), ("status", "error")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_parent_ca_file_that_cannot_be_read_stops_the_start_naming_the_parent() {
    support::logs::capture();
    let fake = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&fake, dir.path());
    config.parent.urls = vec!["https://cluster.invalid:5443".parse().unwrap()];
    config.parent.ca_file = Some(dir.path().join("missing-ca.pem"));
    let err = match Archway::start(config).await {
        Ok(_) => panic!("started with an unreadable parent_ca_file"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("https://cluster.invalid:5443"), "{err}");
    assert!(err.contains("missing-ca.pem"), "{err}");
}

/// A node's upstream has no credentials of its own, but its parent may have: what the parent
/// fetched with them must not become public on the node. Without `visibility`, an upstream
/// reached through parents is private: served under the route that got it, and elsewhere only
/// once that route's answer (through the parent) confirms it. `visibility = "public"` opts out.
#[tokio::test]
async fn what_a_node_fetched_through_a_parent_stays_on_its_route_unless_visibility_is_public() {
    const USER: &str = "parent-bot";
    const PASS: &str = "parent-upstream-pw";
    let private = FakeRegistry::builder()
        .credentials(USER, PASS)
        .start()
        .await;
    let mut fleet = Fleet::start_with(private, 1, |c| {
        c.upstreams[0].credentials = Some(Credentials {
            username: USER.into(),
            password: Secret::new(PASS),
        });
    })
    .await;
    let d = fleet.fake.add_blob(REPO, vec![7u8; 5000]);
    let node = fleet.node_of(&[0], |_| {}).await;
    let open = fleet
        .node_of(&[0], |c| {
            c.upstreams[0].visibility = Some(archway::access_rule::Visibility::Public)
        })
        .await;
    for n in [&node, &open] {
        let r = fleet.get(n, &format!("/v2/{REPO}/blobs/{d}"), &[]).await;
        assert_verified(&r, &d, "the route that has it, through the parent");
    }
    for path in [
        format!("/v2/team/other/blobs/{d}"),
        format!("/v2/library/x/blobs/{d}"),
    ] {
        let r = fleet.get(&node, &path, &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text());
        let r = fleet.head(&node, &path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "HEAD {path}");
        let r = fleet.get(&open, &path, &[]).await;
        assert_verified(&r, &d, "visibility = \"public\" says anyone may");
    }
    // Its own route is still served from the node's cache.
    let r = fleet
        .get(&node, &format!("/v2/{REPO}/blobs/{d}"), &[])
        .await;
    assert_verified(&r, &d, "again");
}
