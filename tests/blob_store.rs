//! Blob store behaviour: verified, coalesced fills; streaming readers; ranges; LRU budget; restart.

use archway::body::{ResponseBody, UpstreamBody};
use archway::cache::blob::{
    Blob, BlobOrigin, BlobSource, BlobStore, FillError, IncomingBlob, SourceError,
};
use archway::digest::Digest;
use archway::error::{ErrorCode, ProxyError};
use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

type Chunk = Result<Bytes, io::Error>;
type FetchResult = Result<IncomingBlob, SourceError>;

/// Deterministic, seed-dependent content.
fn sample(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).rotate_left(3) ^ seed)
        .collect()
}

fn body_from(chunks: Vec<Chunk>) -> UpstreamBody {
    let stream = futures_util::stream::iter(chunks).map(|c| c.map(Frame::data));
    StreamBody::new(stream).boxed_unsync()
}

/// An upstream body the test feeds by hand; dropping the sender ends it.
fn channel_body() -> (mpsc::UnboundedSender<Chunk>, UpstreamBody) {
    let (tx, rx) = mpsc::unbounded_channel::<Chunk>();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((chunk.map(Frame::data), rx))
    });
    (tx, StreamBody::new(stream).boxed_unsync())
}

/// A fetch closure serving `body` once (later calls of clones get an error) and counting calls.
type Slot = Arc<Mutex<Option<UpstreamBody>>>;

fn slot(body: UpstreamBody) -> Slot {
    Arc::new(Mutex::new(Some(body)))
}

fn fetch_from(
    slot: Slot,
    size: Option<u64>,
    calls: Arc<AtomicUsize>,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = FetchResult> + Send>> + Send + 'static {
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        let body = slot.lock().unwrap().take();
        Box::pin(async move {
            match body {
                Some(body) => Ok(IncomingBlob {
                    size,
                    body,
                    from_parent: false,
                    on_settled: None,
                }),
                None => Err(SourceError::new(ProxyError::internal(
                    "test upstream already consumed",
                ))),
            }
        })
    }
}

/// A fetch closure serving `bytes` in chunks of `chunk` with the right Content-Length.
fn fetch_bytes(
    bytes: Vec<u8>,
    chunk: usize,
    calls: Arc<AtomicUsize>,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = FetchResult> + Send>> + Send + 'static {
    let size = bytes.len() as u64;
    let chunks = bytes
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    fetch_from(slot(body_from(chunks)), Some(size), calls)
}

async fn collect(body: ResponseBody) -> io::Result<Vec<u8>> {
    Ok(body.collect().await?.to_bytes().to_vec())
}

fn calls() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

fn blob_file(root: &Path, digest: &Digest) -> PathBuf {
    root.join("blobs")
        .join(digest.algorithm().as_str())
        .join(&digest.hex()[..2])
        .join(digest.hex())
}

fn tmp_count(root: &Path) -> usize {
    std::fs::read_dir(root.join("tmp")).unwrap().count()
}

/// Fills `bytes` into the store, reads it back through the fill's body and waits for the commit.
async fn fill(store: &Arc<BlobStore>, bytes: &[u8]) -> Digest {
    let digest = Digest::sha256_of(bytes);
    let blob = store
        .get_or_fill(&digest, fetch_bytes(bytes.to_vec(), 4096, calls()))
        .await
        .unwrap();
    assert_eq!(collect(blob.body(None)).await.unwrap(), bytes);
    committed(store).await;
    digest
}

/// A reader gets the last byte once the blob is verified; the commit (fsync, rename) follows.
async fn committed(store: &Arc<BlobStore>) {
    store.finish_commits(Duration::from_secs(10)).await;
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 5s");
}

/// Reads frames until exactly `n` bytes arrived (generous timeout for a loaded machine).
async fn read_n(body: &mut ResponseBody, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("bytes should have been released")
            .expect("body ended early")
            .unwrap();
        got.extend_from_slice(frame.data_ref().unwrap());
    }
    assert_eq!(got.len(), n, "more bytes released than expected");
    got
}

/// Asserts the body releases nothing more (no data, no end) for a while.
async fn assert_quiet(body: &mut ResponseBody) {
    let next = tokio::time::timeout(Duration::from_millis(150), body.frame()).await;
    assert!(next.is_err(), "body released something it must hold back");
}

#[tokio::test]
async fn fill_then_get_serves_identical_bytes_from_blob_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().to_path_buf(), 10 << 20).unwrap();
    let src = sample(300_000, 1);
    let digest = Digest::sha256_of(&src);
    let n = calls();

    let blob = store
        .get_or_fill(&digest, fetch_bytes(src.clone(), 7_000, n.clone()))
        .await
        .unwrap();
    assert!(!blob.is_cached());
    assert_eq!(blob.size(), Some(src.len() as u64));
    assert_eq!(collect(blob.body(None)).await.unwrap(), src);
    committed(&store).await;

    let path = blob_file(dir.path(), &digest);
    assert_eq!(std::fs::read(&path).unwrap(), src);
    assert_eq!(tmp_count(dir.path()), 0);

    let cached = store.get(&digest).unwrap();
    assert_eq!(cached.size(), src.len() as u64);
    assert_eq!(cached.path(), path);
    assert_eq!(collect(cached.body(None)).await.unwrap(), src);

    // A second get_or_fill is a cache hit and never fetches.
    let again = store
        .get_or_fill(&digest, fetch_bytes(Vec::new(), 1, n.clone()))
        .await
        .unwrap();
    assert!(again.is_cached());
    assert_eq!(n.load(Ordering::SeqCst), 1);
    let stats = store.stats();
    assert_eq!((stats.entries, stats.bytes), (1, src.len() as u64));
    assert_eq!((stats.in_flight, stats.fills_started), (0, 1));
}

#[tokio::test]
async fn sha512_blob_lands_under_its_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
    let src = sample(1000, 2);
    // Any sha512 digest, re-hashed over `src` with the same algorithm.
    let any_sha512: Digest = format!("sha512:{}", "0".repeat(128)).parse().unwrap();
    let digest = any_sha512.of_same_algorithm(&src);
    let blob = store
        .get_or_fill(&digest, fetch_bytes(src.clone(), 100, calls()))
        .await
        .unwrap();
    assert_eq!(collect(blob.body(None)).await.unwrap(), src);
    committed(&store).await;
    let path = blob_file(dir.path(), &digest);
    assert!(path.starts_with(dir.path().join("blobs/sha512")));
    assert_eq!(std::fs::read(path).unwrap(), src);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_coalesce_into_one_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().to_path_buf(), 10 << 20).unwrap();
    let src = sample(40 * 1000, 3);
    let digest = Digest::sha256_of(&src);
    let (tx, body) = channel_body();
    let upstream = slot(body);
    let n = calls();

    let blobs = join_all((0..32).map(|_| {
        store.get_or_fill(
            &digest,
            fetch_from(upstream.clone(), Some(src.len() as u64), n.clone()),
        )
    }))
    .await;
    // One filled it (from upstream), the others joined that fill, and each is told which.
    let outcomes: Vec<_> = blobs
        .iter()
        .map(|b| b.as_ref().unwrap().outcome())
        .collect();
    let filled = BlobOrigin::Filled(BlobSource::Upstream);
    let joined = BlobOrigin::Joined(BlobSource::Upstream);
    assert_eq!(outcomes.iter().filter(|o| **o == filled).count(), 1);
    assert_eq!(outcomes.iter().filter(|o| **o == joined).count(), 31);
    let readers: Vec<_> = blobs
        .into_iter()
        .map(|blob| {
            let blob = blob.unwrap();
            assert!(!blob.is_cached());
            tokio::spawn(collect(blob.body(None)))
        })
        .collect();
    assert_eq!(store.stats().in_flight, 1);

    // A slow, chunked upstream.
    for chunk in src.chunks(1000) {
        tx.send(Ok(Bytes::copy_from_slice(chunk))).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(tx);

    for reader in readers {
        assert_eq!(reader.await.unwrap().unwrap(), src);
    }
    committed(&store).await;
    assert_eq!(n.load(Ordering::SeqCst), 1);
    let stats = store.stats();
    assert_eq!(
        (stats.fills_started, stats.in_flight, stats.entries),
        (1, 0, 1)
    );
    assert!(store.get(&digest).is_some());
    let hit = store.lookup(&digest).await.unwrap();
    assert_eq!(hit.outcome(), BlobOrigin::Hit);
}

/// Checks the failure contract: every reader's body errors, nothing committed, tmp/ empty, and a
/// later request fetches again.
async fn assert_failed_fill(
    dir: &Path,
    store: &Arc<BlobStore>,
    digest: &Digest,
    readers: Vec<tokio::task::JoinHandle<io::Result<Vec<u8>>>>,
) {
    for reader in readers {
        assert!(
            reader.await.unwrap().is_err(),
            "a failed fill must break the body off"
        );
    }
    assert!(store.get(digest).is_none());
    assert!(!blob_file(dir, digest).exists());
    assert_eq!(tmp_count(dir), 0);
    let stats = store.stats();
    assert_eq!((stats.entries, stats.bytes, stats.in_flight), (0, 0, 0));

    let n = calls();
    let retry = store
        .get_or_fill(digest, fetch_bytes(b"still wrong".to_vec(), 4, n.clone()))
        .await;
    // A fill that fails before the caller wakes is reported as an error right away; one that
    // fails later breaks the body off. Either way no success.
    match retry {
        Ok(blob) => assert!(collect(blob.body(None)).await.is_err()),
        // The proxy answers this one 502 (`proxy::blobs` tests the mapping).
        Err(e) => assert!(matches!(e, FillError::Failed(_)), "{e:?}"),
    }
    assert_eq!(
        n.load(Ordering::SeqCst),
        1,
        "the next request fetches again"
    );
}

/// Starts `readers` readers on a fill fed from a channel.
async fn start_readers(
    store: &Arc<BlobStore>,
    digest: &Digest,
    size: Option<u64>,
    readers: usize,
) -> (
    mpsc::UnboundedSender<Chunk>,
    Vec<tokio::task::JoinHandle<io::Result<Vec<u8>>>>,
) {
    let (tx, body) = channel_body();
    let upstream = slot(body);
    let mut handles = Vec::new();
    for _ in 0..readers {
        let blob = store
            .get_or_fill(digest, fetch_from(upstream.clone(), size, calls()))
            .await
            .unwrap();
        handles.push(tokio::spawn(collect(blob.body(None))));
    }
    (tx, handles)
}

#[tokio::test]
async fn digest_mismatch_fails_every_reader_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
    let digest = Digest::sha256_of(b"the real content");
    let wrong = b"evil content!!!!".to_vec();
    let (tx, readers) = start_readers(&store, &digest, Some(wrong.len() as u64), 4).await;
    tx.send(Ok(Bytes::from(wrong))).unwrap();
    drop(tx);
    assert_failed_fill(dir.path(), &store, &digest, readers).await;
}

#[tokio::test]
async fn digest_mismatch_without_content_length_fails_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
    let digest = Digest::sha256_of(b"the real content");
    let (tx, readers) = start_readers(&store, &digest, None, 3).await;
    tx.send(Ok(Bytes::from_static(b"evil"))).unwrap();
    drop(tx);
    assert_failed_fill(dir.path(), &store, &digest, readers).await;
}

#[tokio::test]
async fn truncated_body_fails_every_reader() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
    let src = sample(10_000, 4);
    let digest = Digest::sha256_of(&src);
    let (tx, readers) = start_readers(&store, &digest, Some(src.len() as u64), 3).await;
    tx.send(Ok(Bytes::copy_from_slice(&src[..6000]))).unwrap();
    drop(tx);
    assert_failed_fill(dir.path(), &store, &digest, readers).await;
}

#[tokio::test]
async fn upstream_body_error_midway_fails_every_reader() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
    let src = sample(10_000, 5);
    let digest = Digest::sha256_of(&src);
    let (tx, readers) = start_readers(&store, &digest, Some(src.len() as u64), 3).await;
    tx.send(Ok(Bytes::copy_from_slice(&src[..4000]))).unwrap();
    // What the upstream client's read timeout produces for a stalled body.
    tx.send(Err(io::Error::new(io::ErrorKind::TimedOut, "read timeout")))
        .unwrap();
    assert_failed_fill(dir.path(), &store, &digest, readers).await;
}

#[tokio::test]
async fn overlong_body_fails_every_reader() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
    let src = sample(1000, 6);
    let digest = Digest::sha256_of(&src);
    let (tx, readers) = start_readers(&store, &digest, Some(500), 2).await;
    tx.send(Ok(Bytes::from(src))).unwrap();
    drop(tx);
    assert_failed_fill(dir.path(), &store, &digest, readers).await;
}

#[tokio::test]
async fn last_byte_is_released_only_after_verification() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
    // Success: all but the last byte stream early; the last one follows the verified end.
    let src = sample(5000, 7);
    let digest = Digest::sha256_of(&src);
    let (tx, body) = channel_body();
    let blob = store
        .get_or_fill(&digest, fetch_from(slot(body), Some(5000), calls()))
        .await
        .unwrap();
    let mut reader = blob.body(None);
    tx.send(Ok(Bytes::copy_from_slice(&src))).unwrap();
    assert_eq!(read_n(&mut reader, 4999).await, src[..4999]);
    assert_quiet(&mut reader).await;
    drop(tx);
    let rest = collect(reader).await.unwrap();
    assert_eq!(rest, src[4999..]);

    // Failure: every byte arrived, but the content is wrong; the reader never sees the last byte
    // and gets an error instead of an end.
    let digest = Digest::sha256_of(b"something else entirely");
    let (tx, body) = channel_body();
    let blob = store
        .get_or_fill(&digest, fetch_from(slot(body), Some(5000), calls()))
        .await
        .unwrap();
    let mut reader = blob.body(None);
    tx.send(Ok(Bytes::copy_from_slice(&src))).unwrap();
    assert_eq!(read_n(&mut reader, 4999).await, src[..4999]);
    assert_quiet(&mut reader).await;
    drop(tx);
    let end = reader.frame().await.unwrap();
    assert!(end.is_err());

    // Unknown length: bytes stream, but the end of stream waits for verification.
    let digest = Digest::sha256_of(&src);
    let dir2 = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir2.path().to_path_buf(), 1 << 20).unwrap();
    let (tx, body) = channel_body();
    let blob = store
        .get_or_fill(&digest, fetch_from(slot(body), None, calls()))
        .await
        .unwrap();
    assert_eq!(blob.size(), None);
    let mut reader = blob.body(None);
    tx.send(Ok(Bytes::copy_from_slice(&src))).unwrap();
    assert_eq!(read_n(&mut reader, 5000).await, src);
    assert_quiet(&mut reader).await;
    drop(tx);
    assert!(reader.frame().await.is_none());
    committed(&store).await;
    assert!(store.get(&digest).is_some());
}

#[tokio::test]
async fn client_disconnect_does_not_cancel_the_fill() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
    let src = sample(20_000, 8);
    let digest = Digest::sha256_of(&src);
    let (tx, body) = channel_body();
    let blob = store
        .get_or_fill(&digest, fetch_from(slot(body), Some(20_000), calls()))
        .await
        .unwrap();
    let mut reader = blob.body(None);
    tx.send(Ok(Bytes::copy_from_slice(&src[..8000]))).unwrap();
    let first = reader.frame().await.unwrap().unwrap();
    assert!(!first.data_ref().unwrap().is_empty());
    // The only client goes away mid-stream.
    drop(reader);
    drop(blob);

    tx.send(Ok(Bytes::copy_from_slice(&src[8000..]))).unwrap();
    drop(tx);
    wait_until(|| store.stats().in_flight == 0).await;
    let cached = store
        .get(&digest)
        .expect("fill committed without any client");
    assert_eq!(collect(cached.body(None)).await.unwrap(), src);
    assert_eq!(tmp_count(dir.path()), 0);
}

#[tokio::test]
async fn fetch_error_reaches_every_waiter_and_next_call_retries() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
    let src = sample(100, 9);
    let digest = Digest::sha256_of(&src);
    let n = calls();
    let (release, gate) = tokio::sync::watch::channel(false);

    let waiters = join_all((0..8).map(|_| {
        let n = n.clone();
        let mut gate = gate.clone();
        store.get_or_fill(&digest, move || async move {
            n.fetch_add(1, Ordering::SeqCst);
            let _ = gate.wait_for(|open| *open).await;
            Err(SourceError::new(ProxyError::upstream(
                ErrorCode::BlobUnknown,
                "blob unknown to registry",
            )))
        })
    }));
    let opener = async {
        wait_until(|| n.load(Ordering::SeqCst) == 1).await;
        release.send(true).unwrap();
    };
    let (results, ()) = tokio::join!(waiters, opener);
    for result in results {
        let err = match result.unwrap_err() {
            FillError::Source(source) => source.downcast_ref::<ProxyError>().unwrap().clone(),
            other => panic!("not the source's error: {other:?}"),
        };
        assert_eq!(err.code, ErrorCode::BlobUnknown);
        assert_eq!(err.status, http::StatusCode::NOT_FOUND);
    }
    assert_eq!(n.load(Ordering::SeqCst), 1);
    assert_eq!(store.stats().in_flight, 0);
    assert_eq!(tmp_count(dir.path()), 0);

    let blob = store
        .get_or_fill(&digest, fetch_bytes(src.clone(), 10, n.clone()))
        .await
        .unwrap();
    assert_eq!(collect(blob.body(None)).await.unwrap(), src);
    assert_eq!(n.load(Ordering::SeqCst), 2);
    assert_eq!(store.stats().fills_started, 2);
}

#[tokio::test]
async fn panicking_fetch_fails_waiters_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
    let digest = Digest::sha256_of(b"x");
    let result = store
        .get_or_fill(&digest, || async {
            if true {
                panic!("bug in fetch");
            }
            Err(SourceError::new(ProxyError::internal("unreachable")))
        })
        .await;
    assert!(result.is_err());
    assert_eq!(store.stats().in_flight, 0);
}

#[tokio::test]
async fn ranges_on_cached_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().to_path_buf(), 10 << 20).unwrap();
    let src = sample(400_000, 10);
    let digest = fill(&store, &src).await;
    let blob = Blob::Cached(store.get(&digest).unwrap());
    for (start, end) in [
        (0, 0),
        (10, 19),
        (131_000, 270_000),
        (399_999, 399_999),
        (0, 399_999),
    ] {
        let got = collect(blob.body(Some((start, end)))).await.unwrap();
        assert_eq!(got, src[start as usize..=end as usize], "{start}-{end}");
    }
}

#[tokio::test]
async fn ranges_on_filling_blob_wait_for_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
    let src = sample(10_000, 11);
    let digest = Digest::sha256_of(&src);
    let (tx, body) = channel_body();
    let blob = store
        .get_or_fill(&digest, fetch_from(slot(body), Some(10_000), calls()))
        .await
        .unwrap();
    let mut middle = blob.body(Some((3000, 5999)));
    let tail = tokio::spawn(collect(blob.body(Some((9000, 9999)))));

    tx.send(Ok(Bytes::copy_from_slice(&src[..2000]))).unwrap();
    assert_quiet(&mut middle).await;
    tx.send(Ok(Bytes::copy_from_slice(&src[2000..4500])))
        .unwrap();
    let mut got = read_n(&mut middle, 1500).await;
    assert_eq!(got, src[3000..4500]);
    tx.send(Ok(Bytes::copy_from_slice(&src[4500..8000])))
        .unwrap();
    // The range's last byte waits for the whole blob to verify.
    got.extend(read_n(&mut middle, 1499).await);
    assert_eq!(got, src[3000..5999]);
    assert_quiet(&mut middle).await;
    tx.send(Ok(Bytes::copy_from_slice(&src[8000..]))).unwrap();
    drop(tx);
    got.extend(collect(middle).await.unwrap());
    assert_eq!(got, src[3000..6000]);
    assert_eq!(tail.await.unwrap().unwrap(), src[9000..]);
}

#[tokio::test]
async fn late_joiner_reads_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
    let src = sample(9000, 12);
    let digest = Digest::sha256_of(&src);
    let (tx, body) = channel_body();
    let n = calls();
    let first = store
        .get_or_fill(&digest, fetch_from(slot(body), Some(9000), n.clone()))
        .await
        .unwrap();
    let early = tokio::spawn(collect(first.body(None)));
    tx.send(Ok(Bytes::copy_from_slice(&src[..6000]))).unwrap();
    wait_until(|| tmp_count(dir.path()) == 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let late = store
        .get_or_fill(&digest, fetch_bytes(Vec::new(), 1, n.clone()))
        .await
        .unwrap();
    assert!(!late.is_cached());
    let late_reader = tokio::spawn(collect(late.body(None)));
    tx.send(Ok(Bytes::copy_from_slice(&src[6000..]))).unwrap();
    drop(tx);
    assert_eq!(early.await.unwrap().unwrap(), src);
    assert_eq!(late_reader.await.unwrap().unwrap(), src);
    assert_eq!(n.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn cached_body_streams_in_bounded_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().to_path_buf(), 10 << 20).unwrap();
    let src = sample(1_000_000, 13);
    let digest = fill(&store, &src).await;
    let mut body = store.get(&digest).unwrap().body(None);
    let mut frames = 0;
    let mut got = Vec::new();
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        assert!(!data.is_empty() && data.len() <= 256 * 1024);
        got.extend_from_slice(&data);
        frames += 1;
    }
    assert!(frames >= 4, "{frames} frames");
    assert_eq!(got, src);
}

#[tokio::test]
async fn lru_eviction_keeps_recently_used_blobs_within_budget() {
    let dir = tempfile::tempdir().unwrap();
    let n = 1000;
    let store = BlobStore::open(dir.path().to_path_buf(), 3 * n as u64).unwrap();
    let a = fill(&store, &sample(n, 20)).await;
    let b = fill(&store, &sample(n, 21)).await;
    let c = fill(&store, &sample(n, 22)).await;
    drop(store.get(&a).unwrap()); // a is now more recent than b and c
    let d = fill(&store, &sample(n, 23)).await;
    let e = fill(&store, &sample(n, 24)).await;

    let stats = store.stats();
    assert!(stats.bytes <= 3 * n as u64);
    assert_eq!((stats.entries, stats.evictions), (3, 2));
    for gone in [&b, &c] {
        assert!(store.get(gone).is_none());
        assert!(!blob_file(dir.path(), gone).exists());
    }
    for kept in [&a, &d, &e] {
        assert!(store.get(kept).is_some());
        assert!(blob_file(dir.path(), kept).exists());
    }
}

#[tokio::test]
async fn pinned_blobs_survive_eviction_pressure() {
    let dir = tempfile::tempdir().unwrap();
    let n = 1000;
    let store = BlobStore::open(dir.path().to_path_buf(), 2 * n as u64).unwrap();
    let a_src = sample(n, 30);
    let a = fill(&store, &a_src).await;
    let b_src = sample(n, 31);
    let b = fill(&store, &b_src).await;
    let handle = store.get(&a).unwrap();
    // b is pinned only by a body being served (its handle is gone).
    let b_body = store.get(&b).unwrap().body(None);

    // Both oldest blobs are pinned, so each newcomer is the one evicted.
    let c = fill(&store, &sample(n, 32)).await;
    let d = fill(&store, &sample(n, 33)).await;
    assert!(store.get(&c).is_none() && store.get(&d).is_none());
    assert_eq!(store.stats().bytes, 2 * n as u64);
    assert_eq!(collect(handle.body(None)).await.unwrap(), a_src);
    assert_eq!(collect(b_body).await.unwrap(), b_src);

    // Unpinned, a (least recently used) goes first.
    drop(handle);
    let e = fill(&store, &sample(n, 34)).await;
    assert!(store.get(&a).is_none());
    assert!(!blob_file(dir.path(), &a).exists());
    assert!(store.get(&b).is_some() && store.get(&e).is_some());
}

#[tokio::test]
async fn blob_larger_than_budget_is_served_but_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().to_path_buf(), 1000).unwrap();
    let small = fill(&store, &sample(600, 40)).await;
    let big_src = sample(5000, 41);
    let digest = Digest::sha256_of(&big_src);
    let blob = store
        .get_or_fill(&digest, fetch_bytes(big_src.clone(), 700, calls()))
        .await
        .unwrap();
    let (r1, r2) = tokio::join!(collect(blob.body(None)), collect(blob.body(None)));
    assert_eq!(r1.unwrap(), big_src);
    assert_eq!(r2.unwrap(), big_src);
    committed(&store).await;
    assert!(store.get(&digest).is_none());
    assert!(!blob_file(dir.path(), &digest).exists());
    assert_eq!(tmp_count(dir.path()), 0);
    // It did not flush the cache either.
    assert!(store.get(&small).is_some());
    assert_eq!(store.stats().bytes, 600);
}

#[tokio::test]
async fn open_clears_tmp_reindexes_blobs_and_ignores_strays() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let srcs: Vec<Vec<u8>> = (0..3)
        .map(|i| sample(1000 + i * 10, 50 + i as u8))
        .collect();
    let mut digests = Vec::new();
    {
        let store = BlobStore::open(root.clone(), 1 << 20).unwrap();
        for src in &srcs {
            digests.push(fill(&store, src).await);
        }
    }
    // Crash leftovers and strays.
    std::fs::write(root.join("tmp/123-456-0.part"), b"half a blob").unwrap();
    std::fs::create_dir_all(root.join("tmp/somedir/nested")).unwrap();
    let stray_files = [
        root.join("blobs/README"),
        root.join("blobs/sha256/ab/not-a-digest"),
        root.join("blobs/md5/d4/d41d8cd98f00b204e9800998ecf8427e"),
        // A valid digest name in the wrong prefix directory.
        root.join("blobs/sha256/00").join(digests[0].hex()),
    ];
    for stray in &stray_files {
        std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
        std::fs::write(stray, b"stray").unwrap();
    }

    let store = BlobStore::open(root.clone(), 1 << 20).unwrap();
    assert_eq!(tmp_count(&root), 0);
    let stats = store.stats();
    assert_eq!(stats.entries, 3);
    assert_eq!(
        stats.bytes,
        srcs.iter().map(|s| s.len() as u64).sum::<u64>()
    );
    for (digest, src) in digests.iter().zip(&srcs) {
        let blob = store.get(digest).unwrap();
        assert_eq!(collect(blob.body(None)).await.unwrap(), *src);
    }
    for stray in &stray_files {
        assert!(stray.exists(), "strays are left alone: {}", stray.display());
    }
}

#[tokio::test]
async fn open_evicts_least_recent_blobs_when_over_budget() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let n = 1000;
    let mut digests = Vec::new();
    {
        let store = BlobStore::open(root.clone(), 1 << 20).unwrap();
        for i in 0..4 {
            digests.push(fill(&store, &sample(n, 60 + i)).await);
        }
    }
    // Recency on disk: digests[2] oldest, then 0, 3, 1.
    let base = SystemTime::now() - Duration::from_secs(3600);
    for (rank, i) in [2usize, 0, 3, 1].into_iter().enumerate() {
        let t = base + Duration::from_secs(60 * rank as u64);
        let file = std::fs::File::options()
            .write(true)
            .open(blob_file(&root, &digests[i]))
            .unwrap();
        file.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
            .unwrap();
    }

    let store = BlobStore::open(root.clone(), 2 * n as u64).unwrap();
    let stats = store.stats();
    assert_eq!(
        (stats.entries, stats.bytes, stats.evictions),
        (2, 2 * n as u64, 2)
    );
    for gone in [2usize, 0] {
        assert!(store.get(&digests[gone]).is_none());
        assert!(!blob_file(&root, &digests[gone]).exists());
    }
    for kept in [3usize, 1] {
        assert!(store.get(&digests[kept]).is_some());
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn any_chunking_yields_identical_bytes(
            data in proptest::collection::vec(any::<u8>(), 0..20_000),
            cuts in proptest::collection::vec(0usize..20_000, 0..12),
            known_length in any::<bool>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let store = BlobStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
                let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
                cuts.push(0);
                cuts.push(data.len());
                cuts.sort_unstable();
                let chunks = cuts
                    .windows(2)
                    .map(|w| Ok(Bytes::copy_from_slice(&data[w[0]..w[1]])))
                    .collect();
                let digest = Digest::sha256_of(&data);
                let size = known_length.then_some(data.len() as u64);
                let blob = store
                    .get_or_fill(&digest, fetch_from(slot(body_from(chunks)), size, calls()))
                    .await
                    .unwrap();
                assert_eq!(collect(blob.body(None)).await.unwrap(), data);
                committed(&store).await;
                let cached = store.get(&digest).unwrap();
                let on_disk = std::fs::read(cached.path()).unwrap();
                assert!(digest.verifies(&on_disk));
                assert_eq!(collect(cached.body(None)).await.unwrap(), data);
            });
        }
    }
}

/// What downloads have received but not yet written waits in memory, bounded store-wide by
/// the write buffer: never more than it (a chunk larger than the whole buffer takes all of it
/// alone), back to zero once written. Two downloads at once share the one bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_buffer_bounds_what_waits_for_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let budget: u64 = 64 << 10;
    let store =
        BlobStore::open_with_write_buffer(dir.path().to_path_buf(), 64 << 20, budget).unwrap();
    let a = sample(3 << 20, 60);
    let b = sample(2 << 20, 61);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let store = store.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut max = 0;
            while !done.load(Ordering::SeqCst) {
                max = max.max(store.stats().write_buffered);
                tokio::task::yield_now().await;
            }
            max
        })
    };
    let fetch = |src: &[u8], chunk: usize| {
        let digest = Digest::sha256_of(src);
        let store = store.clone();
        let src = src.to_vec();
        async move {
            let blob = store
                .get_or_fill(&digest, fetch_bytes(src.clone(), chunk, calls()))
                .await
                .unwrap();
            assert_eq!(collect(blob.body(None)).await.unwrap(), src);
        }
    };
    tokio::join!(fetch(&a, 16 << 10), fetch(&b, 8 << 10));
    done.store(true, Ordering::SeqCst);
    let max = sampler.await.unwrap();
    assert!(
        max <= budget,
        "{max} bytes waited for the disk, budget {budget}"
    );
    committed(&store).await;
    assert_eq!(store.stats().write_buffered, 0);
    assert_eq!(store.stats().entries, 2);

    // One chunk larger than the whole buffer still gets through (alone).
    let big = sample(300 << 10, 62);
    fetch(&big, 300 << 10).await;
    committed(&store).await;
    assert_eq!(store.stats().write_buffered, 0);
    assert!(store.get(&Digest::sha256_of(&big)).is_some());
}
