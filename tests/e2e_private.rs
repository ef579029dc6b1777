//! End-to-end tier for private registries: a real Distribution (`docker-registry`) with htpasswd
//! as the credentialed upstream `private`, another as the anonymous default, skopeo as the
//! client (and Docker 17.06's requests replayed, for a converted answer), moto for
//! `storage.redirect`. Content pulled through the private route is never served
//! under another upstream or repository, to another `[auth]` user, or redirected to the bucket
//! for a route that could not have pulled it. Same gate and helpers as `tests/e2e.rs`.

#[allow(dead_code)]
mod e2e {
    pub mod counting_proxy;
    pub mod fixtures;
    pub mod fleet;
    pub mod http;
    pub mod layout;
    pub mod procs;
    pub mod s3;
    pub mod tools;
}

use e2e::fixtures::{self, FixtureSet};
use e2e::fleet::{metric, moto, BUCKET};
use e2e::http;
use e2e::procs::{free_port, run, run_ok};
use e2e::s3::storage_toml;
use e2e::tools::{e2e_enabled, skopeo, temp_dir, Archway, Registry, Setup};
use std::path::Path;
use std::time::Duration;

const PULL_TIMEOUT: Duration = Duration::from_secs(300);
const UPSTREAM_USER: &str = "archway-bot";
const UPSTREAM_PASSWORD: &str = "upstream-pw-5150";

/// A Distribution registry that wants `UPSTREAM_USER` (htpasswd, bcrypt) for everything, holding
/// the fixtures under each of `repos` (copied in by skopeo from a staging registry).
fn private_upstream(dir: &Path, repos: &[&str]) -> (Registry, FixtureSet) {
    let htpasswd = dir.join("upstream-htpasswd");
    std::fs::write(
        &htpasswd,
        format!(
            "{UPSTREAM_USER}:{}\n",
            bcrypt::hash(UPSTREAM_PASSWORD, 5).unwrap()
        ),
    )
    .unwrap();
    let private = Registry::start_with(&format!(
        "auth:\n  htpasswd:\n    realm: private\n    path: {}\n",
        htpasswd.display()
    ));
    let staging = Registry::start();
    let fx = FixtureSet::build(fixtures::fresh_seed(), false);
    eprintln!("fixture seed {} into {} {repos:?}", fx.seed, private.url());
    fx.push(&staging.url(), &repos[..1]);
    let creds = format!("{UPSTREAM_USER}:{UPSTREAM_PASSWORD}");
    for repo in repos {
        run_ok(
            &mut skopeo(
                dir,
                &[
                    "copy",
                    "--all",
                    "--src-tls-verify=false",
                    "--dest-tls-verify=false",
                    "--dest-creds",
                    &creds,
                    &format!("docker://{}/{}:oci", host(&staging.url()), repos[0]),
                    &format!("docker://{}/{repo}:oci", host(&private.url())),
                ],
            ),
            PULL_TIMEOUT,
        );
    }
    (private, fx)
}

fn host(url: &str) -> &str {
    url.trim_start_matches("http://")
}

fn private_section(private: &Registry, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"private\"\nurl = \"{}\"\nusername = \"{UPSTREAM_USER}\"\n\
         password = \"{UPSTREAM_PASSWORD}\"\n{extra}\n",
        private.url()
    )
}

/// `skopeo copy --all` of `image` (through archway) into an OCI layout; the output.
fn pull(tmp: &Path, image: &str, name: &str, creds: Option<&str>) -> e2e::procs::Output {
    let dst = format!("oci:{}:x", tmp.join(name).display());
    let src = format!("docker://{image}");
    let mut args = vec!["copy", "--all", "--src-tls-verify=false"];
    if let Some(c) = creds {
        args.extend(["--src-creds", c]);
    }
    args.extend([src.as_str(), dst.as_str()]);
    run(&mut skopeo(tmp, &args), PULL_TIMEOUT)
}

fn scrape(admin: u16) -> String {
    let r = http::get(&format!("http://127.0.0.1:{admin}/metrics"), &[]).expect("metrics");
    assert_eq!(r.status, 200);
    r.text()
}

fn status(url: &str, headers: &[(&str, &str)]) -> u16 {
    http::get(url, headers)
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .status
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[test]
fn private_content_stays_on_its_route_with_real_clients() {
    if !e2e_enabled("private_content_stays_on_its_route_with_real_clients") {
        return;
    }
    let tmp = temp_dir("private");
    let (private, fx) = private_upstream(tmp.path(), &["team/app", "team/base2"]);
    let public = Registry::start();
    // [auth]: alice may use the private upstream, bob may not.
    let htpasswd = tmp.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!(
            "alice:{}\nbob:{}\n",
            bcrypt::hash("alice-pw", 5).unwrap(),
            bcrypt::hash("bob-pw", 5).unwrap()
        ),
    )
    .unwrap();
    let admin = free_port();
    let setup = Setup {
        top: format!("admin_listen = \"127.0.0.1:{admin}\"\n"),
        ..Setup::default()
    };
    let extra = format!(
        "{}\n[auth]\nhtpasswd_file = \"{}\"\n",
        private_section(&private, "clients = [\"alice\"]"),
        htpasswd.display()
    );
    let archway = Archway::start_set_up(&public.url(), "5m", &extra, &setup);
    let base = archway.url();
    let image = |repo: &str| format!("{}/private/{repo}:oci", archway.host());

    // bob is refused the private upstream; alice pulls through it.
    let out = pull(tmp.path(), &image("team/app"), "bob", Some("bob:bob-pw"));
    assert!(!out.success(), "bob pulled from the private upstream");
    let out = pull(
        tmp.path(),
        &image("team/app"),
        "alice",
        Some("alice:alice-pw"),
    );
    assert!(out.success(), "alice's pull failed:\n{}", out.stderr);
    let m = scrape(admin);
    assert!(
        metric(&m, "archway_cache_results_total{result=\"miss\"}") > 0.0
            || m.contains("result=\"miss\""),
        "the pull went through archway:\n{m}"
    );

    // Every object of the image, under every other name: never served.
    let alice = basic("alice", "alice-pw");
    let bob = basic("bob", "bob-pw");
    let objects = fx.tag_objects("oci");
    let mut refused = 0;
    for (kind, d) in &objects {
        for (path, who) in [
            (format!("/v2/library/anything/{kind}/{d}"), &alice),
            (format!("/v2/team/app/{kind}/{d}"), &bob),
            (format!("/v2/x/{kind}/{d}?ns=docker.io"), &bob),
            (format!("/v2/private/team/other/{kind}/{d}"), &alice),
        ] {
            let s = status(&format!("{base}{path}"), &[("authorization", who.as_str())]);
            assert_eq!(s, 404, "{path} answered {s}");
            refused += 1;
        }
        // bob, on the private route itself: 403 before anything.
        let path = format!("/v2/private/team/app/{kind}/{d}");
        let s = status(&format!("{base}{path}"), &[("authorization", bob.as_str())]);
        assert_eq!(s, 403, "{path} as bob");
    }
    eprintln!(
        "{refused} cross-route reads of {} objects refused",
        objects.len()
    );

    // A second image of the private upstream sharing every layer: one HEAD per shared object.
    let before = scrape(admin);
    let allowed = |m: &str| metric(m, "archway_access_confirmations_total{result=\"allowed\"}");
    let out = pull(
        tmp.path(),
        &image("team/base2"),
        "second",
        Some("alice:alice-pw"),
    );
    assert!(out.success(), "second pull:\n{}", out.stderr);
    let after = scrape(admin);
    let heads = allowed(&after) - allowed(&before);
    // team/base2 is a byte-identical copy of team/app: every object is shared. The index comes
    // with base2's own tag answer; each other object is confirmed by one HEAD.
    let (blobs, manifests) = (
        objects.iter().filter(|(k, _)| *k == "blobs").count(),
        objects.iter().filter(|(k, _)| *k == "manifests").count() - 1,
    );
    eprintln!(
        "private costs: {heads} HEADs for a second image sharing every object of the first ({blobs} blobs, {manifests} platform manifests and the index, all cached)"
    );
    assert_eq!(
        heads,
        (blobs + manifests) as f64,
        "one HEAD per shared object but the index"
    );
    // And the third time, nothing.
    let out = pull(
        tmp.path(),
        &image("team/base2"),
        "third",
        Some("alice:alice-pw"),
    );
    assert!(out.success());
    assert_eq!(allowed(&scrape(admin)), allowed(&after), "recorded once");
}

#[test]
fn a_private_blob_in_the_bucket_is_never_redirected_across_routes() {
    if !e2e_enabled("a_private_blob_in_the_bucket_is_never_redirected_across_routes") {
        return;
    }
    let tmp = temp_dir("privredir");
    let (private, fx) = private_upstream(tmp.path(), &["team/app"]);
    let public = Registry::start();
    let moto = moto();
    let extra = format!(
        "{}\n{}",
        private_section(&private, ""),
        storage_toml(&moto, BUCKET, "redirect = true\n")
    );
    let archway = Archway::start_set_up(&public.url(), "5m", &extra, &Setup::default());
    let out = pull(
        tmp.path(),
        &format!("{}/private/team/app:oci", archway.host()),
        "pulled",
        None,
    );
    assert!(out.success(), "pull:\n{}", out.stderr);
    // The blobs the pull fetched reach the bucket (the copies run in the background).
    let mut blobs = Vec::new();
    for _ in 0..50 {
        blobs = moto
            .list_keys(BUCKET, "e2e/blobs/")
            .iter()
            .filter_map(|k| k.strip_prefix("e2e/blobs/sha256/"))
            .map(|hex| format!("sha256:{hex}"))
            .collect::<Vec<_>>();
        if blobs.len() >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!blobs.is_empty(), "nothing reached the bucket");
    let _ = &fx;
    let base = archway.url();
    let mut redirected = 0;
    for d in &blobs {
        // Its own route may be redirected to the bucket.
        let own = http::get(&format!("{base}/v2/private/team/app/blobs/{d}"), &[]).unwrap();
        assert!(matches!(own.status, 200 | 307), "{d}: {}", own.status);
        if own.status == 307 {
            redirected += 1;
        }
        // Another route: neither the bytes nor a presigned URL.
        for path in [
            format!("/v2/library/x/blobs/{d}"),
            format!("/v2/private/team/other/blobs/{d}"),
        ] {
            let r = http::get(&format!("{base}{path}"), &[]).unwrap();
            assert_eq!(r.status, 404, "{path}: {}", r.status);
            assert!(r.header("location").is_none(), "{path} was redirected");
        }
    }
    assert!(
        redirected > 0,
        "storage.redirect redirected nothing on the own route"
    );
}

/// Docker 17.06 cannot read OCI, so archway answers its tag GET with a schema2 manifest it
/// converted: a digest that upstream never had. Against a real Distribution with htpasswd, that
/// answer stays on the route that asked: by digest there, served; under the default upstream or
/// another private repository, not — until that repository's own tag answer makes it its own.
#[test]
fn a_converted_answer_of_private_content_stays_on_its_route() {
    if !e2e_enabled("a_converted_answer_of_private_content_stays_on_its_route") {
        return;
    }
    let tmp = temp_dir("privconv");
    let (private, fx) = private_upstream(tmp.path(), &["team/app", "team/base2"]);
    let public = Registry::start();
    let admin = free_port();
    let setup = Setup {
        top: format!("admin_listen = \"127.0.0.1:{admin}\"\n"),
        ..Setup::default()
    };
    let archway =
        Archway::start_set_up(&public.url(), "5m", &private_section(&private, ""), &setup);
    let base = archway.url();
    let ua = fixtures::docker_1706_user_agent("amd64");
    let mut legacy: Vec<(&str, &str)> = fixtures::DOCKER_1706_ACCEPT
        .iter()
        .map(|t| ("accept", *t))
        .collect();
    legacy.push(("user-agent", &ua));
    let get = |path: &str| {
        http::get(&format!("{base}{path}"), &legacy).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    };

    let tag = get("/v2/private/team/app/manifests/oci");
    assert_eq!(tag.status, 200, "{}", tag.text());
    assert_eq!(tag.header("content-type"), Some(fixtures::DOCKER_MANIFEST));
    let converted = fixtures::sha256(&tag.body);
    assert_eq!(
        tag.header("docker-content-digest"),
        Some(converted.as_str())
    );
    let upstream_has = std::iter::once(fx.tag("oci"))
        .chain(fx.child_manifests())
        .any(|m| m.digest == converted);
    assert!(!upstream_has, "{converted}: not a conversion");
    let m = scrape(admin);
    assert!(
        m.contains("archway_rewrites_total{"),
        "the answer was archway's:\n{m}"
    );

    // Its own route, by digest: the same bytes.
    let own = get(&format!("/v2/private/team/app/manifests/{converted}"));
    assert_eq!(own.status, 200, "{}", own.text());
    assert_eq!(own.body, tag.body);
    // Any other name: not there (each such route asks its own upstream, which has no such digest).
    for path in [
        format!("/v2/library/x/manifests/{converted}"),
        format!("/v2/private/team/other/manifests/{converted}"),
        format!("/v2/private/team/base2/manifests/{converted}"),
        format!("/v2/library/x/manifests/{}", fx.tag("oci").digest),
    ] {
        let r = get(&path);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    // team/base2 holds the same image: its own tag answer is the same conversion, and from then
    // on the digest is served there too.
    let second = get("/v2/private/team/base2/manifests/oci");
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(fixtures::sha256(&second.body), converted);
    let r = get(&format!("/v2/private/team/base2/manifests/{converted}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&format!("/v2/library/x/manifests/{converted}"));
    assert_eq!(r.status, 404, "still not public: {}", r.text());
}
