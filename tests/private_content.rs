//! Serve nothing the asker could not have pulled. archway in front of two registries: `private`,
//! which archway reaches with credentials, and the default `fake`, anonymous. An image pulled
//! once through the private route must not then be served under another repository, another
//! upstream, or to an `[auth]` client the private upstream's `clients` does not name — unless
//! that route's own upstream confirms it has it.

mod support;

use archway::access_rule::Visibility;
use archway::config::{AuthConfig, Config, Credentials, Secret};
use http::Method;
use std::path::Path;
use support::images::{self, Image};
use support::{clients, upstream_for, FakeRegistry, Harness, Kind};

const USER: &str = "archway-bot";
const PASS: &str = "s3cret-upstream-pw";

async fn private_registry() -> FakeRegistry {
    FakeRegistry::builder()
        .credentials(USER, PASS)
        .start()
        .await
}

/// archway with the default anonymous upstream `fake` (the harness's) and `private`.
async fn two_upstreams(private: &FakeRegistry, tweak: impl FnOnce(&mut Config)) -> Harness {
    let mut p = upstream_for("private", private);
    p.credentials = Some(Credentials {
        username: USER.into(),
        password: Secret::new(PASS),
    });
    Harness::with(FakeRegistry::start().await, move |c| {
        c.upstreams.push(p);
        tweak(c);
    })
    .await
}

fn objects(img: &Image) -> Vec<(&'static str, String)> {
    let mut v = vec![("manifests", img.digest.to_string())];
    v.push(("blobs", img.config.to_string()));
    for (_, d, _) in &img.layers {
        v.push(("blobs", d.to_string()));
    }
    v
}

/// Pulls `repo:tag` through `?ns=private` as a modern client would.
async fn pull_private(h: &Harness, repo: &str, tag: &str, img: &Image) {
    let r = h
        .get(&format!("/v2/{repo}/manifests/{tag}?ns=private"))
        .await;
    assert_eq!(r.status, 200, "the private route pulls: {}", r.text());
    for (kind, d) in objects(img) {
        let r = h.get(&format!("/v2/{repo}/{kind}/{d}?ns=private")).await;
        assert_eq!(r.status, 200, "{kind} {d} through the private route");
    }
}

#[tokio::test]
async fn credentialed_content_is_served_only_under_the_route_it_was_fetched_under() {
    let private = private_registry().await;
    let img = images::docker_image(&private, "team/app", 1, "linux/amd64");
    private.set_tag("team/app", "v1", &img.digest);
    let h = two_upstreams(&private, |_| {}).await;
    pull_private(&h, "team/app", "v1", &img).await;
    let private_before = private.requests().len();
    let public_before = h.fake.requests().len();

    // Under the anonymous default upstream, by any name, and by ?ns=: it is not there.
    for (kind, d) in objects(&img) {
        for path in [
            format!("/v2/library/anything/{kind}/{d}"),
            format!("/v2/x/{kind}/{d}?ns=fake"),
            format!("/v2/team/app/{kind}/{d}"),
        ] {
            for method in [Method::GET, Method::HEAD] {
                let r = h.request(method.clone(), &path).await;
                assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
            }
        }
    }
    // Under another repository of the private upstream, which does not have it: 404 too.
    for (kind, d) in objects(&img) {
        let path = format!("/v2/team/other/{kind}/{d}?ns=private");
        let r = h.get(&path).await;
        assert_eq!(r.status, 404, "{path}");
    }
    // Each refusal was the upstream's own answer to that route, asked with a HEAD.
    assert!(
        h.fake.requests().len() > public_before,
        "the public upstream was asked"
    );
    assert!(private.requests().len() > private_before);
    // The route it came from is still served, without asking upstream again.
    let before = private.count_kind(Kind::Blob);
    for (kind, d) in objects(&img) {
        let r = h.get(&format!("/v2/team/app/{kind}/{d}?ns=private")).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        private.count_kind(Kind::Blob),
        before,
        "served from the cache"
    );
}

#[tokio::test]
async fn another_route_that_upstream_confirms_is_served_from_the_cache() {
    let private = private_registry().await;
    let img = images::docker_image(&private, "team/app", 2, "linux/amd64");
    private.set_tag("team/app", "v1", &img.digest);
    let h = two_upstreams(&private, |_| {}).await;
    pull_private(&h, "team/app", "v1", &img).await;
    // The second image shares the base layers: team/other has them too upstream.
    let (_, layer, bytes) = img.layers[0].clone();
    private.add_blob("team/other", bytes.clone());
    let gets = private.count("GET", Kind::Blob);
    let heads = authorized_heads(&private);
    let r = h
        .get(&format!("/v2/team/other/blobs/{layer}?ns=private"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, bytes);
    assert_eq!(
        authorized_heads(&private),
        heads + 1,
        "one HEAD confirms it"
    );
    assert_eq!(
        private.count("GET", Kind::Blob),
        gets,
        "the bytes come from the cache"
    );
    // Confirmed once: the route is recorded.
    let r = h
        .get(&format!("/v2/team/other/blobs/{layer}?ns=private"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(authorized_heads(&private), heads + 1);
}

#[tokio::test]
async fn anonymous_content_is_public_and_visibility_public_makes_credentialed_content_public() {
    let private = private_registry().await;
    let shared = images::docker_image(&private, "team/app", 3, "linux/amd64");
    let h = two_upstreams(&private, |c| {
        c.upstreams[1].visibility = Some(Visibility::Public);
    })
    .await;
    // What archway fetched anonymously (the default upstream) is served under any route.
    let public_img = images::docker_image(&h.fake, "library/alpine", 4, "linux/amd64");
    let (_, layer, _) = &public_img.layers[0];
    assert_eq!(
        h.get(&format!("/v2/library/alpine/blobs/{layer}"))
            .await
            .status,
        200
    );
    let before = private.requests().len();
    let r = h
        .get(&format!("/v2/team/app/blobs/{layer}?ns=private"))
        .await;
    assert_eq!(r.status, 200, "public content, under another route");
    assert_eq!(private.requests().len(), before, "nothing to confirm");
    // visibility = "public" on the credentialed upstream: a Docker Hub account for its limit.
    let (_, layer, _) = &shared.layers[0];
    assert_eq!(
        h.get(&format!("/v2/team/app/blobs/{layer}?ns=private"))
            .await
            .status,
        200
    );
    let before = h.fake.requests().len();
    assert_eq!(
        h.get(&format!("/v2/library/x/blobs/{layer}")).await.status,
        200
    );
    assert_eq!(h.fake.requests().len(), before);
}

#[tokio::test]
async fn converted_answers_and_indexes_follow_their_source() {
    let private = private_registry().await;
    let idx = images::buildx_index(
        &private,
        "team/app",
        "v1",
        5,
        &["linux/amd64", "linux/arm64"],
    );
    let h = two_upstreams(&private, |_| {}).await;
    let c = clients::docker_1706();
    let tag = h
        .get_with("/v2/team/app/manifests/v1?ns=private", &c.lines())
        .await;
    assert_eq!(tag.status, 200, "{}", tag.text());
    let converted = tag.header("docker-content-digest").unwrap().to_owned();
    assert_ne!(converted, idx.image("linux/amd64").digest.to_string());
    // The converted answer, by its digest, under its route: served (archway made it).
    let r = h
        .get_with(
            &format!("/v2/team/app/manifests/{converted}?ns=private"),
            &c.lines(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Elsewhere: not.
    for path in [
        format!("/v2/library/x/manifests/{converted}"),
        format!("/v2/team/other/manifests/{converted}?ns=private"),
        format!("/v2/library/x/manifests/{}", idx.digest),
    ] {
        let r = h.get_with(&path, &c.lines()).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
}

#[tokio::test]
async fn records_survive_a_restart_and_a_cache_without_records_is_confirmed() {
    let private = private_registry().await;
    let img = images::docker_image(&private, "team/app", 6, "linux/amd64");
    private.set_tag("team/app", "v1", &img.digest);
    let mut h = two_upstreams(&private, |_| {}).await;
    pull_private(&h, "team/app", "v1", &img).await;
    h.restart().await;
    let (_, layer, _) = img.layers[0].clone();
    assert_eq!(
        h.get(&format!("/v2/library/x/blobs/{layer}")).await.status,
        404,
        "still not public after a restart"
    );
    let heads = authorized_heads(&private);
    assert_eq!(
        h.get(&format!("/v2/team/app/blobs/{layer}?ns=private"))
            .await
            .status,
        200
    );
    assert_eq!(
        authorized_heads(&private),
        heads,
        "the record on the file allows its route with no question"
    );
    // A file without a record (a cache from before records): confirmed with upstream first.
    h.restart().await;
    for f in support::files_under(&h.data_dir().join("blobs")) {
        strip_record(&f);
    }
    let r = h.get(&format!("/v2/library/x/blobs/{layer}")).await;
    assert_eq!(r.status, 404, "a file without a record is not public");
    let r = h
        .get(&format!("/v2/team/app/blobs/{layer}?ns=private"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(authorized_heads(&private), heads + 1, "confirmed once");
}

/// Blob HEADs that carried a token (the fake also records the 401 challenge before each).
fn authorized_heads(fake: &FakeRegistry) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == Method::HEAD && r.kind == Kind::Blob)
        .filter(|r| r.headers.contains_key("authorization"))
        .count()
}

fn strip_record(file: &Path) {
    let out = std::process::Command::new("setfattr")
        .args(["-x", "user.archway.access"])
        .arg(file)
        .output();
    if let Ok(out) = out {
        if out.status.success() {
            return;
        }
    }
    // Without setfattr: copy the bytes to a new file (no attributes) in its place.
    let bytes = std::fs::read(file).unwrap();
    std::fs::remove_file(file).unwrap();
    std::fs::write(file, bytes).unwrap();
}

fn auth(dir: &Path) -> AuthConfig {
    let htpasswd = dir.join("htpasswd");
    let hash = |pw: &str| bcrypt::hash(pw, 4).unwrap();
    std::fs::write(
        &htpasswd,
        format!("alice:{}\nbob:{}\n", hash("alice-pw"), hash("bob-pw")),
    )
    .unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "ci tok-ci-1\ntok-unnamed-2\n").unwrap();
    AuthConfig {
        htpasswd_file: Some(htpasswd),
        tokens_file: Some(tokens),
        ..AuthConfig::default()
    }
}

fn basic(user: &str, pw: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

#[tokio::test]
async fn clients_names_who_may_use_an_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let private = private_registry().await;
    let img = images::docker_image(&private, "team/app", 7, "linux/amd64");
    private.set_tag("team/app", "v1", &img.digest);
    let auth = auth(dir.path());
    let h = two_upstreams(&private, |c| {
        c.auth = Some(auth);
        c.upstreams[1].clients = Some(vec!["alice".into(), "ci".into()]);
    })
    .await;
    let alice = basic("alice", "alice-pw");
    let bob = basic("bob", "bob-pw");
    let tag = "/v2/team/app/manifests/v1?ns=private";
    let r = h.get_with(tag, &[("authorization", &alice)]).await;
    assert_eq!(r.status, 200, "alice is named");
    let r = h
        .get_with(tag, &[("authorization", "Bearer tok-ci-1")])
        .await;
    assert_eq!(r.status, 200, "the token named ci is named");
    for who in [bob.as_str(), "Bearer tok-unnamed-2"] {
        let r = h.get_with(tag, &[("authorization", who)]).await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.error_code(), "DENIED");
    }
    // Bob, logged in, under the public upstream: the private content is not there either.
    let (_, layer, _) = &img.layers[0];
    let r = h
        .get_with(
            &format!("/v2/team/app/blobs/{layer}?ns=private"),
            &[("authorization", &alice)],
        )
        .await;
    assert_eq!(r.status, 200);
    let r = h
        .get_with(
            &format!("/v2/library/x/blobs/{layer}"),
            &[("authorization", &bob)],
        )
        .await;
    assert_eq!(r.status, 404);
    // The public upstream has no `clients`: every [auth] client reaches it.
    let r = h.get_with("/v2/", &[("authorization", &bob)]).await;
    assert_eq!(r.status, 200);
}

/// Asking first under a route that cannot pull it records nothing: a request answered 404 must
/// not leave a record that later lets that route read what another route fetched.
#[tokio::test]
async fn a_refused_request_records_nothing_for_its_route() {
    let private = private_registry().await;
    let img = images::docker_image(&private, "team/app", 8, "linux/amd64");
    private.set_tag("team/app", "v1", &img.digest);
    let h = two_upstreams(&private, |_| {}).await;
    for (kind, d) in objects(&img) {
        let r = h.get(&format!("/v2/library/x/{kind}/{d}")).await;
        assert_eq!(r.status, 404, "not on the public upstream");
    }
    pull_private(&h, "team/app", "v1", &img).await;
    for (kind, d) in objects(&img) {
        let r = h.get(&format!("/v2/library/x/{kind}/{d}")).await;
        assert_eq!(r.status, 404, "{kind} {d}: still not the public route's");
    }
}

/// Requests under two routes for the same cold objects at once: the one that cannot pull them
/// never joins the other's download.
#[tokio::test]
async fn a_concurrent_request_under_another_route_does_not_join_the_download() {
    let private = private_registry().await;
    let img = images::docker_image(&private, "team/app", 9, "linux/amd64");
    let h = two_upstreams(&private, |_| {}).await;
    for (kind, d) in objects(&img) {
        let own = format!("/v2/team/app/{kind}/{d}?ns=private");
        let other = format!("/v2/library/x/{kind}/{d}");
        let mut others = Vec::new();
        let (mine, a, b, c) =
            tokio::join!(h.get(&own), h.get(&other), h.get(&other), h.get(&other));
        others.extend([a, b, c]);
        assert_eq!(mine.status, 200, "{own}");
        for r in others {
            assert_eq!(r.status, 404, "{other}: {}", r.text());
        }
    }
}

/// Referrers follow their source: the signature list of a private image, cached under its
/// route, is not served under another route, and neither are the signature's own manifest
/// and payload.
#[tokio::test]
async fn referrers_of_private_content_are_served_only_under_their_route() {
    const SIG_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
    let private = private_registry().await;
    let img = images::docker_image(&private, "team/app", 10, "linux/amd64");
    private.set_tag("team/app", "v1", &img.digest);
    let sig = private.add_referrer("team/app", &img.digest, SIG_TYPE, 10);
    let h = two_upstreams(&private, |_| {}).await;
    pull_private(&h, "team/app", "v1", &img).await;
    let own = format!("/v2/team/app/referrers/{}?ns=private", img.digest);
    let r = h.get(&own).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(&sig.to_string()), "the route's own list");
    let r = h
        .get(&format!("/v2/team/app/manifests/{sig}?ns=private"))
        .await;
    assert_eq!(r.status, 200, "the signature, under its route");
    let sig_manifest = r.json();
    let payload = sig_manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = h
        .get(&format!("/v2/team/app/blobs/{payload}?ns=private"))
        .await;
    assert_eq!(r.status, 200);

    // Anonymously under the public upstream, by the same or another name, and under another
    // repository of the private upstream: neither the list nor what it names.
    let private_gets = private.count("GET", Kind::Referrers);
    for repo_query in ["team/app", "library/x", "x/y?ns=fake"] {
        let (repo, query) = repo_query.split_once('?').unwrap_or((repo_query, ""));
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let r = h
            .get(&format!("/v2/{repo}/referrers/{}{q}", img.digest))
            .await;
        assert!(
            !r.text().contains(&sig.to_string()),
            "{repo_query}: {} {}",
            r.status,
            r.text()
        );
        for path in [
            format!("/v2/{repo}/manifests/{sig}{q}"),
            format!("/v2/{repo}/blobs/{payload}{q}"),
        ] {
            let r = h.get(&path).await;
            assert_eq!(r.status, 404, "{path}: {}", r.text());
        }
    }
    let r = h
        .get(&format!(
            "/v2/team/other/referrers/{}?ns=private",
            img.digest
        ))
        .await;
    assert!(
        !r.text().contains(&sig.to_string()),
        "team/other: {}",
        r.text()
    );
    assert!(
        private.count("GET", Kind::Referrers) > private_gets,
        "team/other's own list is asked of the private upstream, not taken from team/app's"
    );
}
