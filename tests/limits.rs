//! Client connections under their limits: a header-read timeout (slow or silent clients), an idle
//! timeout (keep-alive connections nobody uses), a cap on open connections, and a shutdown that
//! does not wait on idle connections.

mod support;

use http::StatusCode;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::metrics::Scrape;
use support::{wait_for, FakeRegistry, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_TIMEOUT: Duration = Duration::from_millis(800);
const IDLE_TIMEOUT: Duration = Duration::from_millis(1500);

async fn harness(max_connections: Option<u32>) -> Harness {
    Harness::with(FakeRegistry::start().await, |c| {
        c.limits.header_read_timeout = HEADER_TIMEOUT;
        c.limits.idle_timeout = IDLE_TIMEOUT;
        c.limits.max_connections = max_connections;
    })
    .await
}

/// Waits until the server closes `s` (EOF or reset); returns how long that took.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), s.read(&mut buf)).await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

fn closed(h: &Harness, reason: &str) -> f64 {
    let s = Scrape::parse(h.archway.as_ref().unwrap().proxy().metrics().encode());
    s.get("archway_connections_closed_total", &[("reason", reason)])
        .unwrap_or(0.0)
}

fn open_connections(h: &Harness) -> f64 {
    let s = Scrape::parse(h.archway.as_ref().unwrap().proxy().metrics().encode());
    s.value("archway_connections_open", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_header_connections_are_closed() {
    let h = harness(None).await;
    let addr = h.addr();
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // Slowloris: a request head that never ends, a byte at a time.
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let dripping = {
        let mut slow = std::mem::take(&mut slow);
        tokio::spawn(async move {
            let mut alive = slow.len();
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                alive = 0;
                for s in &mut slow {
                    if s.write_all(b"X-Drip: 1\r\n").await.is_ok() {
                        alive += 1;
                    }
                }
            }
            (slow, alive)
        })
    };
    for s in &mut silent {
        let took = closed_within(s, Duration::from_secs(5))
            .await
            .expect("a silent connection stays open");
        assert!(took < HEADER_TIMEOUT * 3, "{took:?}");
    }
    let (mut slow, _) = dripping.await.unwrap();
    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(1)).await.is_some(),
            "a slow head keeps its connection"
        );
    }
    wait_for(
        || closed(&h, "header_timeout") >= 80.0,
        "80 header timeouts",
    )
    .await;
    // A normal client is served throughout.
    assert_eq!(h.get("/v2/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let h = harness(None).await;
    let mut s = TcpStream::connect(h.addr()).await.unwrap();
    let req = format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\n\r\n", h.addr());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive after the answer, then closed once idle for the idle timeout.
    let started = Instant::now();
    let took = closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive connection stays open");
    assert!(
        took >= IDLE_TIMEOUT - Duration::from_millis(200),
        "{took:?}"
    );
    assert!(started.elapsed() < IDLE_TIMEOUT * 3, "{took:?}");
    wait_for(|| closed(&h, "idle_timeout") >= 1.0, "one idle timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_holds_new_clients_until_a_slot_frees() {
    const CAP: u32 = 8;
    let h = harness(Some(CAP)).await;
    let addr = h.addr();
    let mut hogs = Vec::new();
    for _ in 0..CAP + 4 {
        hogs.push(TcpStream::connect(addr).await.unwrap());
    }
    wait_for(|| open_connections(&h) == CAP as f64, "the cap filled").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(open_connections(&h), CAP as f64, "never more than the cap");
    // A real client queues behind the hogs, which the header timeout clears: it is served.
    let started = Instant::now();
    let r = h.get("/v2/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        started.elapsed() >= HEADER_TIMEOUT / 2,
        "{:?}",
        started.elapsed()
    );
    drop(hogs);
}

#[tokio::test]
async fn shutdown_does_not_wait_on_idle_or_silent_connections() {
    let mut h = Harness::with(FakeRegistry::start().await, |c| {
        // Long limits: shutdown must not wait for them.
        c.limits.header_read_timeout = Duration::from_secs(60);
        c.limits.idle_timeout = Duration::from_secs(120);
    })
    .await;
    let addr: SocketAddr = h.addr();
    let _silent = TcpStream::connect(addr).await.unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(idle.read(&mut buf).await.unwrap() > 0);
    let started = Instant::now();
    h.archway.take().unwrap().shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?} on idle connections",
        started.elapsed()
    );
    assert!(closed_within(&mut idle, Duration::from_secs(2))
        .await
        .is_some());
}
