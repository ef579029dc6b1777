//! End-to-end tier for a fleet: cluster replicas (`[storage]` on a real S3-protocol server,
//! `moto_server`, plus `[fleet]`) on one bucket, node archways whose `parent` lists them, CNCF
//! Distribution as upstream behind a counting proxy (tests/e2e/counting_proxy.rs), and real
//! clients (skopeo, containerd's ctr, dockerd). Everything on loopback.
//!
//! Clients silently fall back to other hosts, so every check that traffic went through archway
//! reads archway's own access log and metrics, and what upstream saw is counted per method and
//! path by the proxy. Same gate as `tests/e2e.rs`: `ARCHWAY_E2E=1` (or `CI=true`).
//!
//! The tests run one at a time: each starts a fleet, and CI machines have few cores.

#[allow(dead_code)]
mod e2e {
    pub mod canary;
    pub mod counting_proxy;
    pub mod fixtures;
    pub mod fleet;
    pub mod fleet_pulls;
    pub mod http;
    pub mod layout;
    pub mod procs;
    pub mod s3;
    pub mod tools;
}

use e2e::canary::Canary;
use e2e::counting_proxy::CountingProxy;
use e2e::fixtures::{self, sha256, FixtureSet};
use e2e::fleet::{
    self, assert_bucket_blobs_whole, curl_get, keys_of, lease_owner, metric, secret_file, sum,
    upstream_with_big_index, wait_in_bucket, Node, Replica, BUCKET, PREFIX, REPO, SECRET, TAG,
};
use e2e::fleet_pulls::{
    check_ctr, check_docker, check_node_served, skopeo_copy, upstream_excess, PULL_TIMEOUT,
};
use e2e::procs::{free_port, run, run_ok};
use e2e::tools::{
    e2e_enabled, show, temp_dir, write_hosts_toml, Access, Containerd, Dockerd, Registry,
};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const ALL_MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pulling through a fleet, then S3 as the only copy.
///
/// 3 replicas on one bucket, 3 nodes listing all of them; skopeo, ctr and dockerd pull the same
/// multi-arch image (amd64: 3 layers, one ~50 MB) at the same time, each through its own node.
/// Upstream sees each blob GET and each manifest GET once. Then every replica is replaced by one
/// with an empty disk, upstream stops, and the image is pulled again from the bucket.
#[test]
fn three_clients_through_three_nodes_fetch_once_and_s3_alone_serves_it_again() {
    if !e2e_enabled("three_clients_through_three_nodes_fetch_once_and_s3_alone_serves_it_again") {
        return;
    }
    let _one = one_at_a_time();
    let moto = fleet::moto();
    let (mut registry, big, proxy) = upstream_with_big_index();
    let tmp = temp_dir("fleet");
    let secret = secret_file(tmp.path());
    let replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::start(&proxy.url(), &moto, &secret, "5s"))
        .collect();
    let parents: Vec<&Replica> = replicas.iter().collect();
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&parents, "")).collect();

    // ctr through node 1 (its hosts.toml server is a closed port: no silent fallback), dockerd
    // through node 2, each with a containerd of its own.
    let hosts = tmp.path().join("certs.d");
    let closed = format!("http://127.0.0.1:{}", free_port());
    write_hosts_toml(&hosts, "docker.io", &closed, &nodes[1].archway.url());
    let ctd = Containerd::start(&tmp.path().join("ctd"));
    let dkd_ctd = Containerd::start(&tmp.path().join("dctd"));
    let dockerd = Dockerd::start(&tmp.path().join("dkd"), &dkd_ctd, &nodes[2].archway.host());
    assert_eq!(
        proxy.total(),
        0,
        "nothing asked upstream yet:\n{}",
        proxy.show()
    );

    let started = Instant::now();
    let skopeo_src = format!("{}/{REPO}:{TAG}", nodes[0].archway.host());
    let image = format!("docker.io/{REPO}:{TAG}");
    let hosts_arg = hosts.display().to_string();
    std::thread::scope(|s| {
        let sk = s.spawn(|| skopeo_copy(tmp.path(), &skopeo_src, "skopeo", &big));
        let ct = s.spawn(|| {
            run_ok(
                &mut ctd.ctr(&[
                    "image",
                    "pull",
                    "--hosts-dir",
                    &hosts_arg,
                    "--platform",
                    "linux/amd64",
                    &image,
                ]),
                PULL_TIMEOUT,
            )
        });
        // And, as a Service spreading connections over the replicas would, the tag, the amd64
        // manifest and the big layer straight at each replica: they meet the nodes' fetches of
        // them in the fleet (the nodes send each digest to one replica).
        let manifests: Vec<_> = replicas
            .iter()
            .flat_map(|r| {
                [
                    (r.url(), TAG.to_owned(), big.index.digest.clone()),
                    (
                        r.url(),
                        big.amd64.manifest.digest.clone(),
                        big.amd64.manifest.digest.clone(),
                    ),
                ]
            })
            .map(|(base, reference, want)| {
                s.spawn(move || {
                    let url = format!("{base}/v2/{REPO}/manifests/{reference}");
                    let r = e2e::http::get(&url, &[("accept", ALL_MANIFEST_TYPES)]).expect("GET");
                    assert_eq!(r.status, 200, "{url}: {}", r.text());
                    assert_eq!(sha256(&r.body), want, "{url}");
                })
            })
            .collect();
        let direct: Vec<_> = replicas
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let url = format!("{}/v2/{REPO}/blobs/{}", r.url(), big.big_layer().digest);
                let dir = tmp.path();
                s.spawn(move || curl_get(&url, dir, &format!("direct-{i}")))
            })
            .collect();
        let dk = s.spawn(|| {
            let out = run(&mut dockerd.docker(&["pull", "fleetimg:big"]), PULL_TIMEOUT);
            assert!(
                out.success(),
                "docker pull failed:\n{}\n{}\ndockerd log:\n{}",
                out.stdout,
                out.stderr,
                dockerd.log_tail()
            );
        });
        for m in manifests {
            m.join().expect("manifest GET at a replica");
        }
        for (i, d) in direct.into_iter().enumerate() {
            let f = d.join().expect("curl at a replica");
            assert!(
                f.verified(&big.big_layer().digest),
                "curl at replica {i}: exit {:?}, status {}, {} bytes",
                f.exit,
                f.status,
                f.body.len()
            );
        }
        ct.join().expect("ctr pull");
        dk.join().expect("docker pull");
        sk.join().expect("skopeo copy")
    });
    eprintln!(
        "three concurrent pulls through the fleet in {:?}",
        started.elapsed()
    );

    check_ctr(&ctd, &big);
    check_docker(&dockerd, &big);
    for (node, who) in nodes.iter().zip(["skopeo", "ctr", "dockerd"]) {
        check_node_served(node, &big, who);
    }
    let (blob_excess, manifest_excess) = upstream_excess(&proxy, &big, replicas.len());
    assert!(
        blob_excess.is_empty(),
        "upstream must see each blob GET exactly once:\n{}\nall upstream requests:\n{}",
        blob_excess.join("\n"),
        proxy.show()
    );
    // What each replica answered for manifests, to tell a fleet-wide miss from a local one.
    let replica_manifests: Vec<String> = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let log: Vec<Access> = r
                .archway
                .access_log()
                .into_iter()
                .filter(|a| a.path().contains("/manifests/"))
                .collect();
            format!("replica {i} ({}):\n{}", r.url(), show(&log))
        })
        .collect();
    let all: Vec<&Replica> = replicas.iter().collect();
    let outcomes: Vec<String> = [
        "owned",
        "joined_local",
        "joined_peer",
        "taken_over",
        "lease_error",
    ]
    .iter()
    .map(|o| {
        let v = sum(
            &all,
            &format!("archway_fleet_fills_total{{outcome=\"{o}\"}}"),
        );
        format!("{o}={v}")
    })
    .collect();
    let fetches: Vec<String> = ["owned", "taken_over", "waited", "lease_error"]
        .iter()
        .flat_map(|o| ["manifest", "tag"].map(|w| (w, o)))
        .map(|(w, o)| {
            let series = format!("archway_fleet_fetches_total{{what=\"{w}\",outcome=\"{o}\"}}");
            format!("{w}/{o}={}", sum(&all, &series))
        })
        .collect();
    eprintln!(
        "fleet fills: {}; fetches: {}; peer bytes {}; upstream requests:\n{}",
        outcomes.join(" "),
        fetches.join(" "),
        sum(&all, "archway_fleet_peer_bytes_total"),
        proxy.show()
    );

    // S3 as the only copy: everything in the bucket, then replicas with empty disks, no upstream.
    wait_in_bucket(&moto, &keys_of(&big));
    drop(nodes);
    drop(replicas);
    registry.stop();
    proxy.refuse();
    let before = proxy.total();
    let fresh: Vec<Replica> = (0..3)
        .map(|_| Replica::start(&proxy.url(), &moto, &secret, "5s"))
        .collect();
    let parents: Vec<&Replica> = fresh.iter().collect();
    let node = Node::start(&parents, "");
    let started = Instant::now();
    skopeo_copy(
        tmp.path(),
        &format!("{}/{REPO}:{TAG}", node.archway.host()),
        "again-node",
        &big,
    );
    check_node_served(&node, &big, "skopeo (fresh node)");
    // And straight at a replica, which another replica may have just read into its L1.
    skopeo_copy(
        tmp.path(),
        &format!("{}/{REPO}:{TAG}", fresh[2].archway.host()),
        "again-replica",
        &big,
    );
    eprintln!(
        "both pulls from the bucket alone in {:?}",
        started.elapsed()
    );
    assert_eq!(
        proxy.total(),
        before,
        "with the tags confirmed within their TTL, nothing may even try upstream:\n{}",
        proxy.show()
    );
    let fresh_all: Vec<&Replica> = fresh.iter().collect();
    let from_bucket = sum(&fresh_all, "archway_blob_fills_total{source=\"bucket\"}");
    assert!(
        from_bucket >= big.amd64.blobs().count() as f64,
        "every blob came from the bucket: {from_bucket}"
    );
    assert_eq!(
        sum(&fresh_all, "archway_blob_fills_total{source=\"upstream\"}"),
        0.0
    );
    for r in &fresh {
        let log = r.archway.access_log();
        let bad: Vec<Access> = log.iter().filter(|a| a.status >= 400).cloned().collect();
        assert!(
            bad.is_empty(),
            "a fresh replica answered errors:\n{}",
            show(&bad)
        );
    }

    // Last, so that the rest is checked even before manifest leases exist.
    assert!(
        manifest_excess.is_empty(),
        "upstream must see each manifest GET (by tag and by digest) once:\n{}\nall upstream \
         requests:\n{}\nmanifest requests the replicas answered:\n{}",
        manifest_excess.join("\n"),
        proxy.show(),
        replica_manifests.join("\n")
    );
}

/// kill -9 of the replica that owns an in-flight fill of the ~50 MB layer (slowed to 4 MiB/s
/// upstream): its clients break off, a retry after the lease TTL takes the fill over, and the
/// bucket never holds a partial object.
#[test]
fn kill_9_of_the_fill_owner_breaks_its_clients_off_and_a_takeover_completes_the_fill() {
    if !e2e_enabled(
        "kill_9_of_the_fill_owner_breaks_its_clients_off_and_a_takeover_completes_the_fill",
    ) {
        return;
    }
    let _one = one_at_a_time();
    let moto = fleet::moto();
    let (_registry, big, proxy) = upstream_with_big_index();
    let layer = big.big_layer().clone();
    let blob_path = format!("/v2/{REPO}/blobs/{}", layer.digest);
    proxy.throttle(&layer.digest, 4 << 20, 1);
    let tmp = temp_dir("fleetkill");
    let secret = secret_file(tmp.path());
    let ttl = Duration::from_secs(2);
    let mut replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::start(&proxy.url(), &moto, &secret, "2s"))
        .collect();
    let parents: Vec<&Replica> = replicas.iter().collect();
    let node = Node::start(&parents, "");
    drop(parents);

    // A client through the node: the node's parent for this digest takes the lease.
    let via_node = format!("{}{blob_path}", node.archway.url());
    let (broken_node, broken_joiner, owner) = std::thread::scope(|s| {
        let first = s.spawn(|| curl_get(&via_node, tmp.path(), "via-node"));
        let owner_url = lease_owner(&moto, layer.hex());
        let owner = replicas
            .iter()
            .position(|r| r.url() == owner_url)
            .unwrap_or_else(|| panic!("the lease names {owner_url}, no replica"));
        // A second client straight at another replica: it joins the owner's fill as a peer.
        let joiner = &replicas[(owner + 1) % 3];
        let at_joiner = format!("{}{blob_path}", joiner.url());
        let dir = tmp.path();
        let second = s.spawn(move || curl_get(&at_joiner, dir, "at-joiner"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric(&joiner.metrics(), "archway_fleet_peer_bytes_total") == 0.0 {
            assert!(
                Instant::now() < deadline,
                "the joiner never streamed from the owner"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let both clients get well into the body, then kill -9 the owner mid-fill.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            moto.head(BUCKET, &format!("{PREFIX}blobs/sha256/{}", layer.hex())),
            404,
            "the fill was meant to be in flight"
        );
        replicas[owner].archway.signal("KILL");
        (
            first.join().expect("client via the node"),
            second.join().expect("client at the joiner"),
            owner,
        )
    });
    let len = layer.data.len();
    for (what, f) in [
        ("via the node", &broken_node),
        ("at the joiner", &broken_joiner),
    ] {
        eprintln!(
            "client {what}: curl exit {:?}, status {}, {} of {len} bytes",
            f.exit,
            f.status,
            f.body.len()
        );
        assert!(
            f.exit != Some(0) && !f.verified(&layer.digest),
            "a client {what} streaming from the killed owner must see a broken-off response, \
             not a clean {} with {} of {len} bytes (curl exit {:?})",
            f.status,
            f.body.len(),
            f.exit
        );
    }
    let killed = replicas.remove(owner);
    assert!(!killed.archway.is_running(), "the owner survived kill -9");

    // Once the lease has expired, a retry through the node (its first parent for this digest
    // is gone: it fails over) and one straight at a survivor both succeed.
    std::thread::sleep(ttl + Duration::from_millis(500));
    let retry = curl_get(&via_node, tmp.path(), "retry-node");
    assert!(
        retry.verified(&layer.digest),
        "retry through the node: exit {:?}, status {}, {} bytes",
        retry.exit,
        retry.status,
        retry.body.len()
    );
    let retry = curl_get(
        &format!("{}{blob_path}", replicas[1].url()),
        tmp.path(),
        "retry-replica",
    );
    assert!(
        retry.verified(&layer.digest),
        "retry at a survivor: exit {:?}, status {}, {} bytes",
        retry.exit,
        retry.status,
        retry.body.len()
    );
    let survivors: Vec<&Replica> = replicas.iter().collect();
    let takeovers = sum(&survivors, "archway_fleet_lease_takeovers_total");
    assert!(
        takeovers >= 1.0,
        "a survivor took the lease over: {takeovers}"
    );
    let gets = proxy.count("GET", &blob_path);
    eprintln!("takeovers {takeovers}, upstream GETs of the layer {gets}");
    assert!(
        gets <= 2,
        "upstream GETs of the layer: the killed fill and the takeover's, no more: {gets}\n{}",
        proxy.show()
    );

    // The bucket ends with the whole blob and no lease; nothing partial under blobs/.
    let key = format!("{PREFIX}blobs/sha256/{}", layer.hex());
    let lease = format!("{PREFIX}fills/sha256/{}", layer.hex());
    wait_in_bucket(&moto, std::slice::from_ref(&key));
    let deadline = Instant::now() + Duration::from_secs(30);
    while moto.head(BUCKET, &lease) != 404 {
        assert!(
            Instant::now() < deadline,
            "the lease {lease} was never released"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let n = assert_bucket_blobs_whole(&moto);
    assert!(n >= 1, "the layer is in the bucket");
    eprintln!(
        "bucket after the takeover: {:?}",
        moto.list_keys(BUCKET, PREFIX)
    );
    drop(killed);
}

/// The peer endpoint wants the fleet secret and a digest; a node cannot make its parent, nor a
/// client a replica, connect to a host the replica's config does not name.
#[test]
fn the_peer_endpoint_wants_the_secret_and_no_request_reaches_an_unnamed_host() {
    if !e2e_enabled("the_peer_endpoint_wants_the_secret_and_no_request_reaches_an_unnamed_host") {
        return;
    }
    let _one = one_at_a_time();
    let moto = fleet::moto();
    let registry = Registry::start();
    let fx = FixtureSet::build(fixtures::fresh_seed(), false);
    fx.push(&registry.url(), &["library/multi"]);
    let proxy = CountingProxy::start(&registry.url());
    let tmp = temp_dir("fleetguard");
    let secret = secret_file(tmp.path());
    let replica = Replica::start(&proxy.url(), &moto, &secret, "5s");
    let canary = Canary::start();
    let canary_host = format!("127.0.0.1:{}", canary.port);
    // The node names the canary as an upstream of its own (used only by parent_fallback =
    // "direct", which it does not have): asking for it makes the node ask its parent for it.
    let node = Node::start(
        &[&replica],
        &format!("[[upstream]]\nname = \"canary.example\"\nurl = \"http://{canary_host}\"\n"),
    );

    // A blob through the node: the replica has it afterwards.
    let blobs = fx.blobs();
    let known = blobs[0];
    let r = e2e::http::get(
        &format!(
            "{}/v2/library/multi/blobs/{}",
            node.archway.url(),
            known.digest
        ),
        &[],
    )
    .expect("GET through the node");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sha256(&r.body), known.digest);
    let upstream_before = proxy.total();

    let peer = |path: &str, auth: Option<&str>| {
        let url = format!("{}/_archway/fleet/blobs/{path}", replica.url());
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        e2e::http::get(&url, &headers).expect("peer GET")
    };
    let bearer = format!("Bearer {SECRET}");
    let signed = |digest: &str| {
        archway::fleet::PeerSigner::new(SECRET.as_bytes(), archway::clock::Clock::system())
            .authorization("GET", &digest.parse().expect("a digest"))
    };
    for (auth, what) in [
        (None, "no Authorization"),
        // Issue 18: the secret itself never travels, and opens nothing.
        (Some(&*bearer), "the secret as a bearer token"),
        (Some("Bearer not-the-secret"), "a wrong bearer"),
        (Some(&*format!("Basic {SECRET}")), "Basic, not Bearer"),
        (Some("Bearer "), "an empty bearer"),
    ] {
        let r = peer(&known.digest, auth);
        assert!(
            r.status == 401 || r.status == 403,
            "{what}: the peer endpoint answered {}",
            r.status
        );
        assert!(
            !r.text().contains(SECRET),
            "{what}: the answer shows the secret"
        );
    }
    let auth = signed(&known.digest);
    let r = peer(&known.digest, Some(&auth));
    assert_eq!(r.status, 200, "signed: {}", r.text());
    assert_eq!(sha256(&r.body), known.digest, "the peer endpoint's bytes");
    let r = peer(&known.digest, Some(&auth));
    assert_eq!(r.status, 401, "the same signature replayed");
    let unknown = sha256(b"no such blob anywhere");
    let r = peer(&unknown, Some(&signed(&unknown)));
    assert_eq!(r.status, 404, "an unknown digest, signed");
    for path in [
        "latest",
        "sha256:abc",
        "sha512:00",
        "",
        "../../v2/library/multi/manifests/oci",
        &format!("{}/../x", known.digest),
    ] {
        let r = peer(path, Some(&bearer));
        assert!(
            r.status == 404 || r.status == 400,
            "peer path {path:?} with the secret answered {}",
            r.status
        );
    }
    let r = e2e::http::get(
        &format!(
            "{}/_archway/fleet/manifests/{}",
            replica.url(),
            fx.tag("oci").digest
        ),
        &[("authorization", &bearer)],
    )
    .expect("peer manifests GET");
    assert!(
        r.status == 404 || r.status == 400,
        "manifests over the peer endpoint: {}",
        r.status
    );
    // A node has no peer endpoint and passes none on.
    let r = e2e::http::get(
        &format!(
            "{}/_archway/fleet/blobs/{}",
            node.archway.url(),
            known.digest
        ),
        &[("authorization", &bearer)],
    )
    .expect("peer GET at the node");
    assert_ne!(r.status, 200, "a node answered the peer endpoint");
    assert_eq!(
        proxy.total(),
        upstream_before,
        "the peer endpoint never makes a replica fetch:\n{}",
        proxy.show()
    );

    // Names the replica's config does not have: through the node and straight at the replica,
    // as ?ns= and as a path prefix, for a manifest and for a blob nobody has fetched.
    let cold = blobs[1];
    let mut tried = Vec::new();
    for base in [node.archway.url(), replica.url()] {
        for ns in [canary_host.as_str(), "canary.example"] {
            tried.push(format!("{base}/v2/library/multi/manifests/oci?ns={ns}"));
            tried.push(format!(
                "{base}/v2/library/multi/blobs/{}?ns={ns}",
                cold.digest
            ));
            tried.push(format!("{base}/v2/{ns}/library/multi/manifests/oci"));
            tried.push(format!(
                "{base}/v2/{ns}/library/multi/blobs/{}",
                cold.digest
            ));
        }
    }
    for url in &tried {
        let r = e2e::http::get(url, &[]).expect("GET");
        assert!(r.status >= 400, "{url} answered {}: {}", r.status, r.text());
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        canary.accepted(),
        0,
        "something connected to the canary at {canary_host}"
    );
    let m = node.metrics();
    assert!(
        m.contains("archway_parent_requests_total{"),
        "the node asked its parent:\n{m}"
    );
    eprintln!(
        "{} requests for unnamed hosts refused; the canary saw none",
        tried.len()
    );
}

/// Issue 18 on a real S3 protocol server and Distribution: what a bucket writer puts in the
/// bucket — a tag record repointing a tag to another image's manifest, dated ten years ahead,
/// and a blob lease naming a listener of theirs, expiring in ten years — changes nothing. The
/// replica asks upstream for the tag and serves its real manifest, fills the blob from upstream
/// after taking the lease over, and the listener sees no connection at all.
#[test]
fn a_forged_tag_record_and_a_forged_lease_in_the_bucket_change_nothing() {
    if !e2e_enabled("a_forged_tag_record_and_a_forged_lease_in_the_bucket_change_nothing") {
        return;
    }
    let _one = one_at_a_time();
    let moto = fleet::moto();
    let registry = Registry::start();
    let fx = FixtureSet::build(fixtures::fresh_seed(), false);
    fx.push(&registry.url(), &["library/multi"]);
    let proxy = CountingProxy::start(&registry.url());
    let tmp = temp_dir("fleetforged");
    let secret = secret_file(tmp.path());
    let canary = Canary::start();
    let ten_years: u64 = 10 * 365 * 24 * 3600 * 1000;
    let now = archway::cache::bucket::now_ms();
    let plant = |key: &str, body: &str| {
        let put = moto.request(
            "PUT",
            &format!("{BUCKET}/{key}"),
            &[
                "-H",
                "content-type: application/json",
                "--data-binary",
                body,
            ],
        );
        assert_eq!(put, 200, "{key} planted");
    };
    let real = fx.tag("oci");
    let other = fx.tag("docker");
    plant(
        &format!("{PREFIX}tags/docker.io/library/multi/oci"),
        &format!(
            r#"{{"digest":"{}","media_type":"application/vnd.docker.distribution.manifest.list.v2+json","size":{},"confirmed_at_ms":{}}}"#,
            other.digest,
            other.data.len(),
            now + ten_years
        ),
    );
    let blobs = fx.blobs();
    let blob = blobs[0];
    plant(
        &format!("{PREFIX}fills/sha256/{}", blob.hex()),
        &format!(
            r#"{{"owner":"http://127.0.0.1:{}","expires_at_ms":{}}}"#,
            canary.port,
            now + ten_years
        ),
    );
    let replica = Replica::start(&proxy.url(), &moto, &secret, "5s");
    let r = e2e::http::get(
        &format!("{}/v2/library/multi/manifests/oci", replica.url()),
        &[("accept", ALL_MANIFEST_TYPES)],
    )
    .expect("GET the tag");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        sha256(&r.body),
        real.digest,
        "the tag's real manifest, not the forged record's ({})",
        other.digest
    );
    assert!(
        proxy.count("GET", "/v2/library/multi/manifests/oci") >= 1,
        "upstream was asked for the tag:\n{}",
        proxy.show()
    );
    let started = Instant::now();
    let r = e2e::http::get(
        &format!("{}/v2/library/multi/blobs/{}", replica.url(), blob.digest),
        &[],
    )
    .expect("GET the blob");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sha256(&r.body), blob.digest);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        canary.accepted(),
        0,
        "the forged lease's owner was contacted"
    );
    let m = replica.metrics();
    for series in [
        "archway_storage_records_rejected_total{kind=\"tag\",reason=\"unsealed\"}",
        "archway_storage_records_rejected_total{kind=\"lease\",reason=\"unsealed\"}",
        "archway_fleet_fills_total{outcome=\"taken_over\"}",
    ] {
        assert!(metric(&m, series) >= 1.0, "{series}:\n{m}");
    }
}
