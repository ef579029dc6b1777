//! Every log line a request causes — the proxy's, the upstream client's, the blob download's
//! (which runs as its own task) and the access-log line written when the body ends — carries
//! that request's span, `request{id kind upstream}`, so one request's lines can be tied together.
//! A connection's own lines (closed, a handshake failed) name its `peer`.

mod support;

use http::StatusCode;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use support::{logs, Fault, Harness, Kind};

/// The `request` span's fields of a JSON log line, if it has one.
fn request_span(line: &serde_json::Value) -> Option<&serde_json::Value> {
    line.get("spans")?
        .as_array()?
        .iter()
        .find(|s| s.get("name").and_then(|n| n.as_str()) == Some("request"))
}

fn message(line: &serde_json::Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_of_a_request_carries_its_id() {
    let logs = logs::capture_json();
    // Wrong bytes are remembered for `negative_ttl`: keep it short, the good download follows.
    let h = Harness::with(support::FakeRegistry::start().await, |c| {
        c.cache.negative_ttl = Duration::from_millis(100);
    })
    .await;
    // Start-up lines belong to no request.
    let before = logs.json_lines().len();
    let img = h.fake.sample_image("lib/app", "v1", 7);
    // A blob download that fails verification logs from the download task; a good one after it
    // logs its start and commit; a manifest by tag and a ping log only their access lines.
    h.fake.fault_times(Some(Kind::Blob), Fault::WrongBytes, 1);
    let blob = format!("/v2/lib/app/blobs/{}", img.layers[0]);
    // The download may fail verification before the response head is out: then the connection
    // closes with no head at all (seen under load in CI) — not served whole either way.
    let bad = h
        .client
        .try_request(http::Method::GET, &h.url(&blob), &[])
        .await;
    let whole = match &bad {
        Ok(r) => r.status == StatusCode::OK && r.complete(),
        Err(e) => !e.contains("IncompleteMessage"),
    };
    assert!(
        !whole,
        "a download that fails verification is never served whole: {bad:?}"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let good = h.get(&blob).await;
    assert!(good.complete());
    assert_eq!(
        h.get("/v2/lib/app/manifests/v1").await.status,
        StatusCode::OK
    );
    assert_eq!(h.get("/v2/").await.status, StatusCode::OK);
    let store = h.archway.as_ref().unwrap().proxy().blob_store().clone();
    store.finish_commits(Duration::from_secs(10)).await;

    // Access lines come when each body is dropped: wait for all four.
    let mut lines = Vec::new();
    for _ in 0..200 {
        lines = logs.json_lines();
        let access = lines
            .iter()
            .filter(|l| l["target"] == "archway::access")
            .count();
        if access >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let archway: Vec<_> = lines[before..]
        .iter()
        .filter(|l| l["target"].as_str().unwrap_or("").starts_with("archway"))
        .collect();
    // Lines by request id; none of a request's lines is without one.
    let mut by_id: BTreeMap<u64, Vec<&serde_json::Value>> = BTreeMap::new();
    for line in &archway {
        let Some(span) = request_span(line) else {
            // Only a connection's own lines (it ended, a handshake failed) are outside a request,
            // and they name the connection's peer.
            assert_eq!(line["target"], "archway::server", "no request span: {line}");
            assert!(line["fields"]["peer"].is_string(), "{line}");
            continue;
        };
        by_id
            .entry(span["id"].as_u64().expect("numeric id"))
            .or_default()
            .push(line);
    }
    assert_eq!(by_id.len(), 4, "four requests, four ids: {by_id:#?}");
    for (id, lines) in &by_id {
        let access: Vec<_> = lines
            .iter()
            .filter(|l| l["target"] == "archway::access")
            .collect();
        assert_eq!(access.len(), 1, "request {id}: one access line");
        let kind = access[0]["fields"]["path"].as_str().unwrap();
        let span = request_span(access[0]).unwrap();
        // kind and upstream are known for every request but the ping.
        if kind != "/v2/" {
            assert_eq!(span["upstream"], "fake", "{}", access[0]);
            assert!(span["kind"].is_string(), "{}", access[0]);
        }
    }
    // The failed download's warning and the good download's commit are each in the span of the
    // request that started it, beside that request's access line.
    let with = |needle: &str| -> BTreeSet<u64> {
        by_id
            .iter()
            .filter(|(_, ls)| ls.iter().any(|l| message(l).contains(needle)))
            .map(|(id, _)| *id)
            .collect()
    };
    let failed = with("blob fill failed");
    let committed = with("blob committed");
    assert_eq!(failed.len(), 1, "{archway:#?}");
    assert_eq!(committed.len(), 1, "{archway:#?}");
    assert_ne!(failed, committed, "two downloads, two requests");
    for id in failed.iter().chain(&committed) {
        let access = by_id[id]
            .iter()
            .find(|l| l["target"] == "archway::access")
            .unwrap();
        assert_eq!(access["fields"]["path"], blob.as_str());
        assert_eq!(request_span(access).unwrap()["kind"], "blob");
    }
    // Durations are whole microseconds, printed as milliseconds: no float noise.
    for line in logs
        .text()
        .lines()
        .filter(|l| l.contains("archway::access"))
    {
        let raw = line
            .split("\"duration_ms\":")
            .nth(1)
            .and_then(|rest| rest.split([',', '}']).next())
            .unwrap_or_else(|| panic!("no duration_ms in {line}"));
        let decimals = raw.split('.').nth(1).map_or(0, str::len);
        assert!(decimals <= 3, "duration_ms={raw} in {line}");
    }
}
