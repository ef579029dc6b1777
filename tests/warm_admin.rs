//! The admin API's warm jobs: `POST /warm` starts one through archway's own pipeline and answers
//! 202 with its id; `GET /warm/<id>` reports progress and the outcome; `archway_warm_*` count
//! them; bad bodies get 400; `admin_warm = false` refuses with 403.

mod support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;
use support::{FakeRegistry, Fault, Harness};

async fn call(addr: SocketAddr, method: Method, path: &str, body: &str) -> (StatusCode, String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("admin answers")
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn admin_harness(warm: bool) -> Harness {
    Harness::with(FakeRegistry::start().await, |c| {
        c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.admin_warm = warm;
    })
    .await
}

fn admin(h: &Harness) -> SocketAddr {
    h.archway.as_ref().unwrap().admin_addr().unwrap()
}

/// Polls `GET /warm/<id>` until the job is done; its report.
async fn wait_done(addr: SocketAddr, id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = call(addr, Method::GET, &format!("/warm/{id}"), "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["state"] == "done" {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "job not done: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_warms_reports_and_is_counted() {
    let h = admin_harness(true).await;
    let idx = h
        .fake
        .sample_index("lib/app", "v1", 31, &["linux/amd64", "linux/arm64"]);
    let addr = admin(&h);
    let (status, body) = call(
        addr,
        Method::POST,
        "/warm",
        r#"{"images": ["lib/app:v1", "lib/missing:v1"], "platforms": ["linux/arm64"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let report = wait_done(addr, &id).await;
    assert_eq!(report["images"], 2, "{report}");
    assert_eq!(report["images_done"], 2, "{report}");
    assert_eq!(report["failed"], 1, "{report}");
    let outcomes = report["outcomes"].as_array().unwrap();
    assert_eq!(outcomes[0]["image"], "lib/app:v1");
    assert_eq!(outcomes[0]["platforms"], serde_json::json!(["linux/arm64"]));
    assert_eq!(outcomes[0]["error"], serde_json::Value::Null, "{report}");
    assert!(
        outcomes[1]["error"].as_str().unwrap().contains("404"),
        "{report}"
    );
    assert!(report["done_bytes"].as_u64().unwrap() > 0, "{report}");
    // The job's list has it.
    let (_, list) = call(addr, Method::GET, "/warm", "").await;
    assert!(list.contains(&id), "{list}");

    // Warmed: served with the upstream down.
    h.fake.fault(None, Fault::status(503));
    let arm64 = &idx.images[1].1;
    for d in std::iter::once(&arm64.config).chain(&arm64.layers) {
        let r = h.get(&format!("/v2/lib/app/blobs/{d}")).await;
        assert_eq!(r.status, StatusCode::OK, "{d}");
    }
    // Counted.
    let (_, metrics) = call(addr, Method::GET, "/metrics", "").await;
    for line in [
        "archway_warm_jobs_total{outcome=\"failed\"} 1",
        "archway_warm_jobs_running 0",
        "archway_warm_images_total{outcome=\"ok\"} 1",
        "archway_warm_images_total{outcome=\"failed\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    let fetched = metrics
        .lines()
        .find(|l| l.starts_with("archway_warm_bytes_total{source=\"fetched\"}"))
        .unwrap();
    assert!(!fetched.ends_with(" 0"), "{fetched}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_unknown_jobs_are_refused_clearly() {
    let h = admin_harness(true).await;
    let addr = admin(&h);
    for (body, want) in [
        ("not json", "body"),
        (r#"{"images": []}"#, "images"),
        (r#"{"images": ["UPPER/Case::x"]}"#, "images"),
        (r#"{"images": ["a"], "platforms": ["nope/"]}"#, "platforms"),
        (r#"{"images": ["a"], "for": "firefox"}"#, "--for"),
        (r#"{"images": ["a"], "surprise": 1}"#, "unknown field"),
    ] {
        let (status, text) = call(addr, Method::POST, "/warm", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
        assert!(text.contains(want), "{body}: {text}");
    }
    let big = format!(r#"{{"images": ["{}"]}}"#, "a".repeat(2 << 20));
    let (status, _) = call(addr, Method::POST, "/warm", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = call(addr, Method::GET, "/warm/ffff", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(addr, Method::DELETE, "/warm", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_warm_false_switches_it_off() {
    let h = admin_harness(false).await;
    h.fake.sample_image("lib/app", "v1", 32);
    let addr = admin(&h);
    let (status, body) = call(addr, Method::POST, "/warm", r#"{"images": ["lib/app:v1"]}"#).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("admin_warm = false"), "{body}");
    assert_eq!(h.fake.total(), 0, "nothing was fetched");
    let (_, metrics) = call(addr, Method::GET, "/metrics", "").await;
    assert!(
        metrics.contains("archway_warm_jobs_total{outcome=\"refused\"} 1"),
        "{metrics}"
    );
}

/// The jobs' bounds: at most 1,000 images a job, 4 jobs running at once (the fifth is 429 until
/// one ends), and 64 jobs remembered (the oldest finished one is forgotten first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_jobs_images_and_remembered_jobs_are_bounded() {
    let h = admin_harness(true).await;
    let addr = admin(&h);
    let id_of = |body: &str| {
        serde_json::from_str::<serde_json::Value>(body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    let images: Vec<String> = (0..1001).map(|i| format!("\"lib/a{i}:v1\"")).collect();
    let (status, text) = call(
        addr,
        Method::POST,
        "/warm",
        &format!(r#"{{"images": [{}]}}"#, images.join(",")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("1 to 1000"), "{text}");

    // Four slow jobs run; a fifth is refused until one of them ends.
    h.fake.set_delay(None, Duration::from_secs(2));
    let mut running = Vec::new();
    for i in 0..4 {
        let (status, body) = call(
            addr,
            Method::POST,
            "/warm",
            &format!(r#"{{"images": ["lib/slow{i}:v1"]}}"#),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        running.push(id_of(&body));
    }
    let (status, text) = call(addr, Method::POST, "/warm", r#"{"images": ["lib/x:v1"]}"#).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    let (_, metrics) = call(addr, Method::GET, "/metrics", "").await;
    assert!(metrics.contains("archway_warm_jobs_running 4"), "{metrics}");
    for id in &running {
        wait_done(addr, id).await;
    }
    h.fake.set_delay(None, Duration::ZERO);

    // 64 more (quick: the images do not exist) push the first four out of memory.
    let mut last = String::new();
    for i in 0..64 {
        let (status, body) = call(
            addr,
            Method::POST,
            "/warm",
            &format!(r#"{{"images": ["lib/none{i}:v1"]}}"#),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        last = id_of(&body);
        wait_done(addr, &last).await;
    }
    for id in &running {
        let (status, _) = call(addr, Method::GET, &format!("/warm/{id}"), "").await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "job {id} is still remembered"
        );
    }
    let (status, _) = call(addr, Method::GET, &format!("/warm/{last}"), "").await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = call(addr, Method::GET, "/warm", "").await;
    let listed: serde_json::Value = serde_json::from_str(&list).unwrap();
    let n = listed
        .as_array()
        .or_else(|| listed["jobs"].as_array())
        .map_or(0, Vec::len);
    assert_eq!(n, 64, "{list}");
}
