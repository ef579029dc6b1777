//! Responses whose client never takes the bytes (issue 17, item 1): an h2 stream opened with a
//! zero flow-control window, an HTTP/1.1 GET whose socket is never read. Each is dropped after
//! `limits.stall_timeout`, holds no file meanwhile, and cannot lock other clients out.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::metrics::Scrape;
use support::{FakeRegistry, Harness};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const STALL: Duration = Duration::from_millis(1500);
/// Large enough that neither the kernel's socket buffers nor hyper's take it whole.
const BLOB_BYTES: usize = 48 << 20;

async fn harness(tweak: impl FnOnce(&mut archway::config::Config)) -> (Harness, String) {
    let fake = FakeRegistry::start().await;
    let bytes = support::fake_registry::pseudo_random_bytes(17, BLOB_BYTES);
    let digest = fake.add_blob("library/big", bytes);
    let h = Harness::with(fake, |c| {
        c.limits.stall_timeout = STALL;
        // Longer than the test: only the stall rule may close anything.
        c.limits.idle_timeout = Duration::from_secs(120);
        tweak(c);
    })
    .await;
    let path = format!("/v2/library/big/blobs/{digest}");
    // Cached before the test: the stalled responses read the committed file.
    for _ in 0..2 {
        let r = h.get(&path).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), BLOB_BYTES);
    }
    (h, path)
}

fn scrape(h: &Harness) -> Scrape {
    Scrape::parse(h.archway.as_ref().unwrap().proxy().metrics().encode())
}

/// An h2c connection whose client grants no flow-control window to any stream.
async fn zero_window_h2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_whose_client_takes_no_bytes_are_reset_and_hold_no_file() {
    let (h, path) = harness(|_| {}).await;
    // Files under the data dir only: other tests of this binary open descriptors meanwhile.
    let data = h.data_dir();
    no_files_open_under(&data).await;
    let mut send = zero_window_h2(h.addr()).await;
    let mut bodies = Vec::new();
    for _ in 0..20 {
        send.ready().await.unwrap();
        let req = http::Request::get(h.url(&path))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = send.send_request(req).await.unwrap();
        assert_eq!(response.status(), 200);
        bodies.push(response.into_body());
    }
    // Every stream has been answered and polled by now; none may hold the blob's file.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = files_open_under(&data);
    println!("20 zero-window h2 streams: {held} files held");
    // A stream waiting on its window holds no file (each read opens and closes it); a file per
    // stream would be 20.
    assert!(held <= 1, "20 stalled streams hold {held} files");
    // The client never opens a window: each stream must end (reset) within the stall timeout.
    let started = Instant::now();
    for mut body in bodies {
        let left = (STALL * 4).saturating_sub(started.elapsed());
        let frame = tokio::time::timeout(left, body.frame()).await;
        match frame {
            Err(_) => panic!("a stalled h2 stream was still open {:?} after", STALL * 4),
            Ok(Some(Ok(f))) => panic!(
                "a zero-window stream got data ({:?} bytes)",
                f.data_ref().map(|d| d.len())
            ),
            Ok(Some(Err(_))) | Ok(None) => {}
        }
    }
    let s = scrape(&h);
    assert!(s.value("archway_responses_stalled_total", &[]) >= 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_responses_never_read_are_dropped_and_do_not_lock_others_out() {
    let (mut h, path) = harness(|c| c.limits.max_connections = Some(4)).await;
    // The warm-up's pooled connection holds a slot: close it.
    h.client = support::TestClient::new();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(h.addr()).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        stalled.push(s);
    }
    // Every slot is taken by a client that reads nothing. A fifth client is served once the
    // stalled ones are dropped, well within a few stall timeouts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let r = tokio::time::timeout(STALL * 4, h.get("/v2/"))
        .await
        .expect("a new client was locked out by responses nobody reads");
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() >= STALL / 2,
        "served before any slot freed?"
    );
    // The others follow within the same stall timeout (give or take the supervisor's tick).
    let deadline = Instant::now() + STALL * 2;
    loop {
        let closed = scrape(&h)
            .get("archway_connections_closed_total", &[("reason", "stall")])
            .unwrap_or(0.0);
        if closed == 4.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{closed} of 4 stalled connections closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        scrape(&h).value("archway_responses_stalled_total", &[]),
        4.0
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_that_keeps_taking_bytes_is_not_dropped() {
    let (h, path) = harness(|_| {}).await;
    // 1 MiB/s: slow, but far above one chunk per stall timeout.
    let mut s = TcpStream::connect(h.addr()).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-3145727\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    while got < (3 << 20) {
        use tokio::io::AsyncReadExt;
        tokio::time::sleep(Duration::from_millis(60)).await;
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => got += n,
            Ok(Err(e)) => panic!("dropped while reading: {e}"),
            Err(_) => panic!("no bytes for 5 s"),
        }
    }
    assert!(got > 0);
    let s = scrape(&h);
    assert_eq!(
        s.get("archway_connections_closed_total", &[("reason", "stall")])
            .unwrap_or(0.0),
        0.0
    );
    assert_eq!(s.value("archway_responses_stalled_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_requests_a_request_waits_then_gets_503_with_retry_after() {
    let fake = FakeRegistry::start().await;
    let digest = fake.add_blob("library/slow", vec![7u8; 100_000]);
    let h = Harness::with(fake, |c| {
        c.limits.max_requests = Some(2);
        c.limits.stall_timeout = Duration::from_millis(800);
    })
    .await;
    h.fake
        .set_delay(Some(support::Kind::Blob), Duration::from_secs(2));
    let url = h.url(&format!("/v2/library/slow/blobs/{digest}"));
    let mut busy = Vec::new();
    for _ in 0..2 {
        let c = support::TestClient::new();
        let url = url.clone();
        busy.push(tokio::spawn(async move { c.get(&url).await }));
    }
    // Both reach archway well inside upstream's 2 s delay, however loaded the machine.
    let deadline = Instant::now() + Duration::from_secs(1);
    while scrape(&h).value("archway_requests_in_flight", &[]) < 2.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(scrape(&h).value("archway_requests_in_flight", &[]), 2.0);
    let started = Instant::now();
    let r = support::TestClient::new().get(&h.url("/v2/")).await;
    assert_eq!(r.status, 503);
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(String::from_utf8_lossy(&r.body).contains("TOOMANYREQUESTS"));
    for b in busy {
        assert_eq!(b.await.unwrap().status, 200);
    }
    let s = scrape(&h);
    assert_eq!(s.value("archway_requests_refused_busy_total", &[]), 1.0);
    assert_eq!(s.value("archway_requests_in_flight", &[]), 0.0);
    // Slots came back: a request is answered again.
    assert_eq!(h.get("/v2/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_h2_connection_runs_at_most_max_streams_per_connection_at_once() {
    let fake = FakeRegistry::start().await;
    let digest = fake.add_blob("library/slow", vec![7u8; 10_000]);
    let h = Harness::with(fake, |c| c.limits.max_streams_per_connection = 4).await;
    h.fake
        .set_delay(Some(support::Kind::Blob), Duration::from_millis(300));
    let io = TokioIo::new(TcpStream::connect(h.addr()).await.unwrap());
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut send = send.clone();
        // One fill; every request waits on it, in flight.
        let _ = i;
        let url = h.url(&format!("/v2/library/slow/blobs/{digest}"));
        tasks.push(tokio::spawn(async move {
            send.ready().await.unwrap();
            let req = http::Request::get(url).body(Empty::<Bytes>::new()).unwrap();
            match send.send_request(req).await {
                Ok(r) => r.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        }));
    }
    let mut peak = 0.0f64;
    let sampler_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < sampler_until {
        peak = peak.max(scrape(&h).value("archway_requests_in_flight", &[]));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in tasks {
        // Past the limit the client waits (SETTINGS_MAX_CONCURRENT_STREAMS) or is refused.
        let _ = t.await;
    }
    println!("peak requests in flight on one h2 connection: {peak}");
    assert!(peak >= 1.0, "nothing was in flight");
    assert!(
        peak <= 4.0,
        "{peak} streams at once past max_streams_per_connection = 4"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_whose_streams_all_make_no_progress_is_closed() {
    let (h, path) = harness(|_| {}).await;
    let io = TokioIo::new(TcpStream::connect(h.addr()).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake::<_, Empty<Bytes>>(io)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut bodies = Vec::new();
    for _ in 0..4 {
        send.ready().await.unwrap();
        let req = http::Request::get(h.url(&path))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = send.send_request(req).await.unwrap();
        assert_eq!(response.status(), 200);
        bodies.push(response.into_body());
    }
    // No stream ever gets a window: archway must close the connection itself, not only reset the
    // streams and leave it to the idle timeout (120 s here).
    let started = Instant::now();
    let ended = tokio::time::timeout(STALL * 4, conn).await;
    assert!(
        ended.is_ok(),
        "an h2 connection with no progress on any stream was still open {:?} after",
        STALL * 4
    );
    assert!(
        started.elapsed() >= STALL / 2,
        "closed after {:?}, before the stall timeout",
        started.elapsed()
    );
    // archway counts the close once its connection task has ended.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let closed = scrape(&h)
            .get("archway_connections_closed_total", &[("reason", "stall")])
            .unwrap_or(0.0);
        if closed == 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{closed} connections closed as stalled, want 1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(bodies);
}

/// Waits until nothing holds a file under `dir`: the warm-up's fill commits (fsync, rename)
/// after its last byte went out, and a closed connection's end is noticed asynchronously; on a
/// loaded machine either takes a while.
async fn no_files_open_under(dir: &std::path::Path) {
    support::wait_for(|| files_open_under(dir) == 0, "files open before the test").await;
}

/// Open descriptors of this process (archway runs in it) on files under `dir`.
fn files_open_under(dir: &std::path::Path) -> usize {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.starts_with(&dir))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_cached_blob_responses_never_read_hold_at_most_one_file_each_until_the_stall() {
    const STALLED: usize = 8;
    let (mut h, path) = harness(|_| {}).await;
    assert!(h.config.cache.sendfile, "the default is sendfile on");
    // The warm-up's pooled connection is closed: only the stalled ones are left.
    h.client = support::TestClient::new();
    let data = h.data_dir();
    no_files_open_under(&data).await;
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let mut s = TcpStream::connect(h.addr()).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        stalled.push(s);
    }
    // Every response has started and filled the socket buffers by now.
    tokio::time::sleep(STALL / 3).await;
    let held = files_open_under(&data);
    println!("{STALLED} never-read HTTP/1.1 GETs of a cached blob hold {held} files");
    // With sendfile a response keeps its blob's file open while it waits on the client: at most
    // one each, never a file per read.
    assert!(
        held <= STALLED,
        "{STALLED} stalled responses hold {held} files"
    );
    // Dropped at the stall timeout (the supervisor ticks at a quarter of it): every file goes
    // with its response, while this client still holds its end of each socket.
    let deadline = Instant::now() + STALL * 3;
    loop {
        let held = files_open_under(&data);
        let closed = scrape(&h)
            .get("archway_connections_closed_total", &[("reason", "stall")])
            .unwrap_or(0.0);
        if held == 0 && closed == STALLED as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{:?} after the stall timeout: {held} files still open, {closed} of {STALLED} \
             connections closed as stalled",
            STALL * 2
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stalled);
}
