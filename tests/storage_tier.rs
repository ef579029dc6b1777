//! The shared storage tier's logic, in process: the blob store, manifest store and tag store over
//! `object_store::memory::InMemory` (the same `ObjectStore` trait the S3 client implements), and
//! over an S3 endpoint nobody listens on (storage down). The real S3 protocol (moto_server) is
//! exercised by `tests/e2e_storage.rs`.

use archway::body::UpstreamBody;
use archway::cache::blob::{
    Blob, BlobOrigin, BlobSource, BlobStore, BlobStoreLimits, IncomingBlob, SourceError,
};
use archway::cache::bucket::{Bucket, BucketSettings, StorageObserver, RECORD_PURPOSE};
use archway::cache::manifest_store::{Manifest, ManifestStore};
use archway::cache::tag_store::{now_ms, TagEntry, TagKey, TagStore};
use archway::clock::Clock;
use archway::digest::Digest;
use archway::error::ProxyError;
use archway::record_key::RecordKey;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, ObjectStoreExt, PutPayload};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PART: u64 = 5 << 20;

/// Counts what the bucket reports, by label.
#[derive(Default)]
struct Seen {
    counts: Mutex<HashMap<String, u64>>,
}

impl Seen {
    fn count(&self, key: &str) -> u64 {
        self.counts.lock().unwrap().get(key).copied().unwrap_or(0)
    }
    fn add(&self, key: String) {
        *self.counts.lock().unwrap().entry(key).or_default() += 1;
    }
}

impl StorageObserver for Seen {
    fn operation(&self, op: &'static str, status: &'static str, _: Duration) {
        self.add(format!("{op}/{status}"));
    }
    fn blob_fill(&self, source: &'static str) {
        self.add(format!("fill/{source}"));
    }
    fn bypassed(&self, what: &'static str) {
        self.add(format!("bypassed/{what}"));
    }
    fn record_rejected(&self, kind: &'static str, reason: &'static str) {
        self.add(format!("rejected/{kind}/{reason}"));
    }
    fn backfilled(&self, outcome: &'static str) {
        self.add(format!("backfill/{outcome}"));
    }
}

const FLEET_SECRET: &[u8] = b"storage-tier-fleet-secret";

fn record_key() -> RecordKey {
    RecordKey::derive(FLEET_SECRET, RECORD_PURPOSE)
}

/// With `[fleet]`'s record key (tag records are shared only with it).
fn with_key(bucket: Bucket) -> Bucket {
    bucket.with_records(record_key(), Clock::system(), Duration::from_secs(5))
}

fn sample(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

type FetchFuture = Pin<Box<dyn Future<Output = Result<IncomingBlob, SourceError>> + Send>>;

/// An upstream that serves `bytes` in 64 KiB chunks, counting its calls.
fn upstream(
    bytes: Vec<u8>,
    calls: Arc<AtomicUsize>,
) -> impl FnOnce() -> FetchFuture + Send + 'static {
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        let size = bytes.len() as u64;
        let chunks: Vec<Result<Bytes, std::io::Error>> = bytes
            .chunks(64 << 10)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let body: UpstreamBody =
            StreamBody::new(futures_util::stream::iter(chunks).map(|c| c.map(Frame::data)))
                .boxed_unsync();
        Box::pin(async move {
            Ok(IncomingBlob {
                size: Some(size),
                body,
                from_parent: false,
                on_settled: None,
            })
        })
    }
}

/// An upstream that must not be asked.
fn no_upstream() -> impl FnOnce() -> FetchFuture + Send + 'static {
    || -> FetchFuture {
        Box::pin(async {
            Err(SourceError::new(ProxyError::internal(
                "upstream asked although the bucket has the blob",
            )))
        })
    }
}

async fn read_all(blob: &Blob) -> Result<Vec<u8>, std::io::Error> {
    let mut body = blob.body(None);
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

fn bucket_over(store: Arc<InMemory>, seen: Arc<Seen>) -> Arc<Bucket> {
    Arc::new(with_key(Bucket::over(
        store,
        "prod/",
        Duration::from_secs(5),
        PART,
        seen,
    )))
}

/// `[storage]` without `[fleet]`: no record key.
fn bucket_without_fleet(store: Arc<InMemory>, seen: Arc<Seen>) -> Arc<Bucket> {
    Arc::new(Bucket::over(
        store,
        "prod/",
        Duration::from_secs(5),
        PART,
        seen,
    ))
}

/// A bucket at a loopback S3 endpoint nobody listens on: every request is refused at once.
fn bucket_nobody_answers(seen: Arc<Seen>) -> Bucket {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    bucket_at(port, Duration::from_secs(2), seen)
}

/// A bucket at a loopback S3 endpoint on `port`, every request bounded by `timeout`.
fn bucket_at(port: u16, timeout: Duration, seen: Arc<Seen>) -> Bucket {
    let settings = BucketSettings {
        bucket: "archway".into(),
        prefix: String::new(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: "us-east-1".into(),
        path_style: true,
        keys: Some(("test".into(), "test".into())),
        s3_timeout: timeout,
        s3_upload_timeout: timeout,
        max_uploads: 2,
        upload_queue: 8,
        part_size: PART,
    };
    Bucket::open(&settings, seen).unwrap()
}

fn open_store(dir: &std::path::Path, bucket: Option<Arc<Bucket>>) -> Arc<BlobStore> {
    BlobStore::open_with_bucket(
        dir.to_path_buf(),
        BlobStoreLimits::with_max_bytes(1 << 30),
        bucket,
    )
    .unwrap()
}

fn blob_key(digest: &Digest) -> ObjectPath {
    ObjectPath::from(format!("prod/blobs/sha256/{}", digest.hex()))
}

/// Waits (at most 10 s) until `key` is in the store; its bytes.
async fn wait_for_object(store: &InMemory, key: &ObjectPath) -> Bytes {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(got) = store.get(key).await {
            return got.bytes().await.unwrap();
        }
        assert!(Instant::now() < deadline, "{key} never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_fills_are_copied_and_a_replica_with_an_empty_disk_reads_the_bucket() {
    let s3 = Arc::new(InMemory::new());
    let seen = Arc::new(Seen::default());
    // One blob below the part size (one PUT), one above it (multipart: 3 parts).
    let small = sample(300 << 10, 1);
    let large = sample((12 << 20) + 12345, 2);
    let a_dir = tempfile::tempdir().unwrap();
    let a = open_store(a_dir.path(), Some(bucket_over(s3.clone(), seen.clone())));
    for data in [&small, &large] {
        let digest = Digest::sha256_of(data);
        let calls = Arc::new(AtomicUsize::new(0));
        let blob = a
            .get_or_fill(&digest, upstream(data.clone(), calls.clone()))
            .await
            .unwrap();
        assert_eq!(blob.outcome(), BlobOrigin::Filled(BlobSource::Upstream));
        assert_eq!(read_all(&blob).await.unwrap(), *data);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
    // A shutdown waits for the commits and then for the copies they started.
    a.finish_commits(Duration::from_secs(30)).await;
    for data in [&small, &large] {
        let key = blob_key(&Digest::sha256_of(data));
        let copied = s3.get(&key).await.expect("copied before shutdown");
        assert!(
            copied.bytes().await.unwrap() == data.as_slice(),
            "the exact bytes"
        );
    }
    assert_eq!(seen.count("fill/upstream"), 2);
    assert_eq!(seen.count("PutObject/ok"), 1, "the small blob: one PUT");
    assert_eq!(seen.count("CompleteMultipartUpload/ok"), 1);
    assert_eq!(seen.count("UploadPart/ok"), 3, "12 MiB in 5 MiB parts");

    // Another replica, its disk empty: every blob from the bucket, verified, kept in its L1.
    let b_dir = tempfile::tempdir().unwrap();
    let b = open_store(b_dir.path(), Some(bucket_over(s3.clone(), seen.clone())));
    // A HEAD there is answered from the bucket without a download.
    assert_eq!(
        b.head_in_bucket(&Digest::sha256_of(&large)).await,
        Some(large.len() as u64)
    );
    assert_eq!(b.head_in_bucket(&Digest::sha256_of(b"absent")).await, None);
    assert_eq!(b.stats().fills_started, 0);
    for data in [&small, &large] {
        let digest = Digest::sha256_of(data);
        let blob = b.get_or_fill(&digest, no_upstream()).await.unwrap();
        // The store tells the proxy where the bytes came from: the bucket, not upstream.
        assert_eq!(blob.outcome(), BlobOrigin::Filled(BlobSource::Bucket));
        assert_eq!(blob.size(), Some(data.len() as u64));
        assert_eq!(read_all(&blob).await.unwrap(), *data);
        drop(blob);
        wait_until("the commit", || b.lookup_is_cached(&digest)).await;
    }
    assert_eq!(seen.count("fill/bucket"), 2);
    // Not copied back: the bucket already had them.
    assert_eq!(seen.count("PutObject/ok"), 1);
}

/// `BlobStore::get` (sync) as a predicate.
trait Cached {
    fn lookup_is_cached(&self, digest: &Digest) -> bool;
}

impl Cached for Arc<BlobStore> {
    fn lookup_is_cached(&self, digest: &Digest) -> bool {
        self.get(digest).is_some()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_bucket_object_is_never_served_whole_nor_kept_and_the_retry_goes_upstream() {
    let s3 = Arc::new(InMemory::new());
    let seen = Arc::new(Seen::default());
    let data = sample(200 << 10, 3);
    let digest = Digest::sha256_of(&data);
    let mut wrong = data.clone();
    wrong[1000] ^= 0xff;
    s3.put(&blob_key(&digest), PutPayload::from(wrong))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), Some(bucket_over(s3.clone(), seen.clone())));

    // Either the fill failed before this caller saw its head (an error, as for any fill that
    // breaks that fast), or the body breaks off: never a complete answer.
    match store.get_or_fill(&digest, no_upstream()).await {
        Ok(blob) => assert!(
            read_all(&blob).await.is_err(),
            "the body breaks off: never a complete answer"
        ),
        Err(e) => assert!(e.to_string().contains("digest mismatch"), "{e}"),
    }
    assert!(store.get(&digest).is_none(), "not kept in L1");
    let deleted = async {
        while s3.head(&blob_key(&digest)).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), deleted)
        .await
        .expect("the damaged object is deleted from the bucket");

    // The failure is not remembered as upstream's: the retry goes upstream at once.
    let calls = Arc::new(AtomicUsize::new(0));
    let blob = store
        .get_or_fill(&digest, upstream(data.clone(), calls.clone()))
        .await
        .unwrap();
    assert_eq!(read_all(&blob).await.unwrap(), data);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(seen.count("fill/bucket"), 1);
    assert_eq!(seen.count("fill/upstream"), 1);
    assert!(wait_for_object(&s3, &blob_key(&digest)).await == data.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_down_blobs_come_from_upstream_uncopied_and_counted() {
    let seen = Arc::new(Seen::default());
    // With the fleet's key, so that tag records are read from the bucket too.
    let bucket = Arc::new(with_key(bucket_nobody_answers(seen.clone())));
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), Some(bucket.clone()));
    let data = sample(100 << 10, 4);
    let digest = Digest::sha256_of(&data);
    let calls = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let blob = store
        .get_or_fill(&digest, upstream(data.clone(), calls.clone()))
        .await
        .unwrap();
    assert_eq!(read_all(&blob).await.unwrap(), data);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by s3_timeout"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(seen.count("fill/upstream"), 1);
    assert_eq!(seen.count("bypassed/blob_read"), 1);
    assert_eq!(seen.count("GetObject/error"), 1);
    drop(blob);
    wait_until("the commit", || store.get(&digest).is_some()).await;
    // L1 serves it now, the bucket untouched; no upload was tried.
    let hit = store.lookup(&digest).await.expect("an L1 hit");
    assert_eq!(read_all(&hit).await.unwrap(), data);
    assert_eq!(seen.count("GetObject/error"), 1);
    assert_eq!(bucket.pending_writes(), 0);
    assert_eq!(
        seen.count("PutObject/error") + seen.count("HeadObject/error"),
        0
    );

    // Manifests and tags: a miss with the bucket down is a miss, counted.
    let mdir = tempfile::tempdir().unwrap();
    let manifests = ManifestStore::open(mdir.path().into(), 1 << 20)
        .unwrap()
        .with_bucket(Some(bucket.clone()));
    assert!(manifests.get(&Digest::sha256_of(b"{}")).await.is_none());
    assert_eq!(seen.count("bypassed/manifest_read"), 1);
    let tdir = tempfile::tempdir().unwrap();
    let tags = TagStore::open(tdir.path().into())
        .unwrap()
        .with_bucket(Some(bucket));
    tags.adopt_from_bucket(&tag_key(), Duration::from_secs(60))
        .await;
    assert_eq!(tags.get(&tag_key()).await, None);
    assert_eq!(seen.count("bypassed/tag_read"), 1);
}

/// A store with no bucket, filled with `blobs` from upstream and committed, then closed.
async fn disk_cache_without_bucket(dir: &std::path::Path, blobs: &[&Vec<u8>]) {
    let store = open_store(dir, None);
    for data in blobs {
        let digest = Digest::sha256_of(data);
        let calls = Arc::new(AtomicUsize::new(0));
        let blob = store
            .get_or_fill(&digest, upstream((*data).clone(), calls))
            .await
            .unwrap();
        assert_eq!(read_all(&blob).await.unwrap(), **data);
    }
    store.finish_commits(Duration::from_secs(30)).await;
    for data in blobs {
        assert!(store.get(&Digest::sha256_of(data)).is_some(), "committed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_cached_before_the_bucket_are_copied_once_verified_and_a_damaged_one_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let present = sample(300 << 10, 11);
    let large = sample((12 << 20) + 7, 12);
    let damaged = sample(100 << 10, 13);
    disk_cache_without_bucket(dir.path(), &[&present, &large, &damaged]).await;
    let damaged_digest = Digest::sha256_of(&damaged);
    let path = open_store(dir.path(), None).file_path(&damaged_digest);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[5000] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    // [storage] is set now; the bucket already has one of the three (another replica's copy).
    let s3 = Arc::new(InMemory::new());
    let present_key = blob_key(&Digest::sha256_of(&present));
    s3.put(&present_key, PutPayload::from(present.clone()))
        .await
        .unwrap();
    let seen = Arc::new(Seen::default());
    let store = open_store(
        dir.path(),
        Some(bucket_without_fleet(s3.clone(), seen.clone())),
    );
    let marker = dir.path().join("storage-backfill");
    let pass = store
        .start_backfill(marker.clone(), "s3://a/prod/ at test".into())
        .expect("a bucket");
    tokio::time::timeout(Duration::from_secs(30), pass)
        .await
        .expect("the pass ends")
        .unwrap();

    // The large blob copied whole (multipart, completed only once the file hashed right).
    let copied = s3.get(&blob_key(&Digest::sha256_of(&large))).await.unwrap();
    assert!(copied.bytes().await.unwrap() == large.as_slice());
    assert_eq!(seen.count("CompleteMultipartUpload/ok"), 1);
    assert_eq!(seen.count("PutObject/ok"), 0, "the one present is not sent");
    // The damaged file is neither copied nor kept: the next request downloads it again.
    assert!(s3.get(&blob_key(&damaged_digest)).await.is_err());
    assert!(
        store.get(&damaged_digest).is_none(),
        "dropped from the disk"
    );
    assert!(store.get(&Digest::sha256_of(&large)).is_some());
    for (outcome, n) in [("copied", 1), ("present", 1), ("damaged", 1), ("failed", 0)] {
        assert_eq!(seen.count(&format!("backfill/{outcome}")), n, "{outcome}");
    }
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "s3://a/prod/ at test\n"
    );
    drop(store);

    // The next start finds the marker: not a single request to the bucket.
    let again = Arc::new(Seen::default());
    let store = open_store(
        dir.path(),
        Some(bucket_without_fleet(s3.clone(), again.clone())),
    );
    let pass = store.start_backfill(marker.clone(), "s3://a/prod/ at test".into());
    pass.unwrap().await.unwrap();
    assert!(
        again.counts.lock().unwrap().is_empty(),
        "{:?}",
        again.counts
    );

    // Another bucket or prefix is copied to afresh.
    let pass = store.start_backfill(marker.clone(), "s3://b/ at test".into());
    pass.unwrap().await.unwrap();
    assert_eq!(again.count("backfill/present"), 2, "both there already");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "s3://b/ at test\n"
    );
}

/// A file that cannot be read says nothing of its bytes (too many open files, say): it is not
/// dropped as damaged, only not copied this time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_file_that_cannot_be_read_is_kept_not_copied_and_counted_failed() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample(80 << 10, 30);
    disk_cache_without_bucket(dir.path(), &[&data]).await;
    let s3 = Arc::new(InMemory::new());
    let seen = Arc::new(Seen::default());
    let store = open_store(
        dir.path(),
        Some(bucket_without_fleet(s3.clone(), seen.clone())),
    );
    let digest = Digest::sha256_of(&data);
    // Indexed at open; now a directory where the file was: opened, but every read fails.
    let path = store.file_path(&digest);
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let marker = dir.path().join("storage-backfill");
    let pass = store.start_backfill(marker.clone(), "s3://a/ at test".into());
    pass.unwrap().await.unwrap();
    assert_eq!(seen.count("backfill/failed"), 1);
    assert_eq!(seen.count("backfill/damaged"), 0);
    assert!(store.head(&digest).is_some(), "still indexed: not dropped");
    assert!(s3.get(&blob_key(&digest)).await.is_err(), "not copied");
    assert!(!marker.exists(), "the next start tries again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_the_bucket_breaks_off_stops_after_three_failures_in_a_row_and_is_not_marked_done(
) {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<Vec<u8>> = (0..5).map(|i| sample(50 << 10, 20 + i)).collect();
    disk_cache_without_bucket(dir.path(), &blobs.iter().collect::<Vec<_>>()).await;
    let seen = Arc::new(Seen::default());
    let bucket = Arc::new(bucket_nobody_answers(seen.clone()));
    let store = open_store(dir.path(), Some(bucket));
    let marker = dir.path().join("storage-backfill");
    let pass = store.start_backfill(marker.clone(), "s3://archway/ at down".into());
    tokio::time::timeout(Duration::from_secs(30), pass.unwrap())
        .await
        .expect("bounded by s3_timeout")
        .unwrap();
    assert_eq!(seen.count("backfill/failed"), 3, "then the pass ends");
    assert_eq!(
        seen.count("backfill/copied") + seen.count("backfill/present"),
        0
    );
    assert!(!marker.exists(), "not done: the next start tries again");
    for data in &blobs {
        assert!(
            store.get(&Digest::sha256_of(data)).is_some(),
            "still served from disk"
        );
    }
}

fn tag_key() -> TagKey {
    TagKey {
        upstream: "docker.io".into(),
        repository: "library/alpine".into(),
        tag: "3.20".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_keep_exact_bytes_and_media_type_and_are_verified_on_read() {
    let s3 = Arc::new(InMemory::new());
    let seen = Arc::new(Seen::default());
    // Odd spacing on purpose: the bytes are kept, never re-serialised.
    let bytes = Bytes::from_static(
        b"{ \"schemaVersion\" : 2,\n  \"mediaType\":\"application/vnd.oci.image.manifest.v1+json\" }",
    );
    let m = Arc::new(Manifest {
        digest: Digest::sha256_of(&bytes),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        bytes: bytes.clone(),
    });
    let a_dir = tempfile::tempdir().unwrap();
    let a = ManifestStore::open(a_dir.path().into(), 1 << 20)
        .unwrap()
        .with_bucket(Some(bucket_over(s3.clone(), seen.clone())));
    a.put(m.clone()).await.unwrap();
    let key = ObjectPath::from(format!("prod/manifests/sha256/{}", m.digest.hex()));
    assert_eq!(wait_for_object(&s3, &key).await, bytes);
    let stored = s3.get(&key).await.unwrap();
    assert_eq!(
        stored
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string()),
        Some(m.media_type.clone())
    );

    let b_dir = tempfile::tempdir().unwrap();
    let b = ManifestStore::open(b_dir.path().into(), 1 << 20)
        .unwrap()
        .with_bucket(Some(bucket_over(s3.clone(), seen.clone())));
    assert_eq!(b.get(&m.digest).await, Some(m.clone()));
    // Kept on disk: found again without the bucket.
    let c = ManifestStore::open(b_dir.path().into(), 1 << 20).unwrap();
    assert_eq!(c.get(&m.digest).await, Some(m.clone()));

    // An object that does not hash to its key is never served under it.
    let other = Digest::sha256_of(b"{\"other\":1}");
    let tampered = ObjectPath::from(format!("prod/manifests/sha256/{}", other.hex()));
    s3.put(&tampered, PutPayload::from_static(b"{\"tampered\":1}"))
        .await
        .unwrap();
    assert_eq!(b.get(&other).await, None);
}

/// A bucket writer's object: `bytes` at `key` with `content_type`.
async fn plant_typed(s3: &InMemory, key: &ObjectPath, bytes: &'static [u8], content_type: &str) {
    let mut attributes = object_store::Attributes::new();
    attributes.insert(Attribute::ContentType, content_type.to_owned().into());
    let opts = object_store::PutOptions {
        attributes,
        ..Default::default()
    };
    object_store::ObjectStore::put_opts(s3, key, PutPayload::from_static(bytes), opts)
        .await
        .unwrap();
}

/// The bytes are digest-verified, but the media type beside them is only the bucket's
/// Content-Type: it is served only when the bytes prove it (their `mediaType`, else their
/// shape), else the copy is a miss, counted and logged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifests_media_type_from_the_bucket_is_served_only_when_its_bytes_prove_it() {
    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let s3 = Arc::new(InMemory::new());
    let seen = Arc::new(Seen::default());
    let key = |d: &Digest| ObjectPath::from(format!("prod/manifests/sha256/{}", d.hex()));
    let typed: &'static [u8] =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
    let untyped: &'static [u8] = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
    let list: &'static [u8] = br#"{"schemaVersion":2,"manifests":[]}"#;
    let (typed_d, untyped_d, list_d) = (
        Digest::sha256_of(typed),
        Digest::sha256_of(untyped),
        Digest::sha256_of(list),
    );
    // Retyped by a bucket writer: an image manifest said to be an index, twice over.
    plant_typed(&s3, &key(&typed_d), typed, OCI_INDEX).await;
    plant_typed(&s3, &key(&untyped_d), untyped, OCI_INDEX).await;
    // Proven by its shape alone.
    plant_typed(&s3, &key(&list_d), list, OCI_INDEX).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ManifestStore::open(dir.path().into(), 1 << 20)
        .unwrap()
        .with_bucket(Some(bucket_over(s3.clone(), seen.clone())));
    for d in [&typed_d, &untyped_d] {
        assert_eq!(store.get(d).await, None, "{d}: a type the bytes contradict");
        assert_eq!(store.get(d).await, None, "{d}: and again");
    }
    assert_eq!(
        seen.count("rejected/manifest/media_type"),
        4,
        "each read counted"
    );
    let got = store.get(&list_d).await.expect("a type the bytes prove");
    assert_eq!(got.media_type, OCI_INDEX);
    // Put back with its true type: served, as its type.
    plant_typed(&s3, &key(&typed_d), typed, OCI_MANIFEST).await;
    let got = store.get(&typed_d).await.expect("its own type");
    assert_eq!(got.media_type, OCI_MANIFEST);
    assert_eq!(got.bytes.as_ref(), typed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_records_are_shared_and_the_newest_confirmation_wins() {
    let s3 = Arc::new(InMemory::new());
    let seen = Arc::new(Seen::default());
    let entry = |seed: &[u8], at: u64| TagEntry {
        digest: Digest::sha256_of(seed),
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        size: 123,
        validated_at_ms: at,
    };
    let a_dir = tempfile::tempdir().unwrap();
    let a = TagStore::open(a_dir.path().into())
        .unwrap()
        .with_bucket(Some(bucket_over(s3.clone(), seen.clone())));
    let confirmed = entry(b"v1", now_ms());
    a.put(tag_key(), confirmed.clone()).await.unwrap();
    let key = ObjectPath::from("prod/tags/docker.io/library/alpine/3.20");
    let sealed = wait_for_object(&s3, &key).await;
    let record: serde_json::Value =
        serde_json::from_slice(record_key().open(key.as_ref(), &sealed).unwrap()).unwrap();
    assert_eq!(record["digest"], confirmed.digest.to_string());
    assert_eq!(record["confirmed_at_ms"], confirmed.validated_at_ms);

    // A replica that never saw the tag takes the record.
    let b_dir = tempfile::tempdir().unwrap();
    let b = TagStore::open(b_dir.path().into())
        .unwrap()
        .with_bucket(Some(bucket_over(s3.clone(), seen.clone())));
    b.adopt_from_bucket(&tag_key(), Duration::from_secs(300))
        .await;
    assert_eq!(b.get(&tag_key()).await, Some(confirmed.clone()));
    let gets = seen.count("GetObject/ok");
    // Fresh locally: the bucket is not asked again within the TTL.
    b.adopt_from_bucket(&tag_key(), Duration::from_secs(300))
        .await;
    assert_eq!(seen.count("GetObject/ok"), gets);

    // A local record newer than the bucket's is kept (even past its TTL).
    let c_dir = tempfile::tempdir().unwrap();
    let c = TagStore::open(c_dir.path().into())
        .unwrap()
        .with_bucket(Some(bucket_over(s3.clone(), seen.clone())));
    let newer = entry(b"v2", confirmed.validated_at_ms + 1);
    c.put(tag_key(), newer.clone()).await.unwrap();
    wait_until("the newer record in the bucket", || {
        seen.count("PutObject/ok") >= 2
    })
    .await;
    let mut stale_local = newer.clone();
    stale_local.validated_at_ms = confirmed.validated_at_ms - 1;
    // d knows an older answer only locally (written without the bucket): the bucket's newer
    // one wins once d's is past the TTL.
    let d_dir = tempfile::tempdir().unwrap();
    let d_plain = TagStore::open(d_dir.path().into()).unwrap();
    d_plain.put(tag_key(), stale_local).await.unwrap();
    let d = TagStore::open(d_dir.path().into())
        .unwrap()
        .with_bucket(Some(bucket_over(s3.clone(), seen.clone())));
    d.adopt_from_bucket(&tag_key(), Duration::from_millis(1))
        .await;
    assert_eq!(d.get(&tag_key()).await, Some(newer.clone()));
    c.adopt_from_bucket(&tag_key(), Duration::from_millis(1))
        .await;
    assert_eq!(c.get(&tag_key()).await, Some(newer));

    // Upstream said 404 to this replica: the bucket's older record does not bring the tag back
    // while the 404 is remembered.
    c.mark_missing(&tag_key(), Duration::from_secs(60), Duration::ZERO)
        .await;
    c.adopt_from_bucket(&tag_key(), Duration::from_millis(1))
        .await;
    assert_eq!(c.get(&tag_key()).await, None);
    assert!(c.is_known_missing(&tag_key()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_that_accepts_and_never_answers_costs_one_timeout() {
    // Accepts connections, reads nothing, answers nothing: a blackholed endpoint.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            keep.lock().unwrap().push(conn);
        }
    });
    let seen = Arc::new(Seen::default());
    let bucket = Arc::new(bucket_at(port, Duration::from_secs(1), seen.clone()));
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), Some(bucket));
    let data = sample(50 << 10, 5);
    let digest = Digest::sha256_of(&data);
    let calls = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let blob = store
        .get_or_fill(&digest, upstream(data.clone(), calls.clone()))
        .await
        .unwrap();
    assert_eq!(read_all(&blob).await.unwrap(), data);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "one s3_timeout (1 s), then upstream: {took:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(seen.count("bypassed/blob_read"), 1);
    assert_eq!(
        seen.count("GetObject/timeout") + seen.count("GetObject/error"),
        1
    );
    assert!(!held.lock().unwrap().is_empty(), "the bucket was tried");
}

/// Issue 18: the bucket is untrusted for integrity. A tag record written there by anyone but
/// the fleet (no seal, or a seal for another tag's key) is ignored and counted; one dated ahead
/// of the clock skew is not believed; nor is a record on this replica's disk dated ahead (it
/// came from the bucket earlier). Without `[fleet]` no tag record is written or read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_records_are_believed_only_sealed_by_the_fleet_and_not_from_the_future() {
    let s3 = Arc::new(InMemory::new());
    let seen = Arc::new(Seen::default());
    let key = ObjectPath::from("prod/tags/docker.io/library/alpine/3.20");
    let evil = Digest::sha256_of(b"another image's manifest");
    let ten_years = 10 * 365 * 24 * 3600 * 1000;
    let record = |at: u64| {
        format!(
            r#"{{"digest":"{evil}","media_type":"application/vnd.oci.image.index.v1+json","size":9,"confirmed_at_ms":{at}}}"#
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let tags = TagStore::open(dir.path().into())
        .unwrap()
        .with_bucket(Some(bucket_over(s3.clone(), seen.clone())));

    // Unsealed, dated ten years ahead (the reproduction of the finding).
    let forged = record(now_ms() + ten_years);
    s3.put(&key, PutPayload::from(forged.clone().into_bytes()))
        .await
        .unwrap();
    tags.adopt_from_bucket(&tag_key(), Duration::from_secs(60))
        .await;
    assert_eq!(tags.get(&tag_key()).await, None, "unsealed");
    assert_eq!(seen.count("rejected/tag/unsealed"), 1);
    // Sealed by the fleet for another tag, copied here.
    let elsewhere = record_key().seal(
        "prod/tags/docker.io/library/alpine/latest",
        forged.as_bytes(),
    );
    s3.put(&key, PutPayload::from(elsewhere)).await.unwrap();
    tags.adopt_from_bucket(&tag_key(), Duration::from_secs(60))
        .await;
    assert_eq!(tags.get(&tag_key()).await, None, "sealed for another key");
    assert_eq!(seen.count("rejected/tag/bad_seal"), 1);
    // Sealed (a replica whose clock runs ahead), ten years ahead, or a minute ahead.
    for ahead in [ten_years, 60_000] {
        let sealed = record_key().seal(key.as_ref(), record(now_ms() + ahead).as_bytes());
        s3.put(&key, PutPayload::from(sealed)).await.unwrap();
        tags.adopt_from_bucket(&tag_key(), Duration::from_secs(60))
            .await;
        assert_eq!(tags.get(&tag_key()).await, None, "{ahead} ms ahead");
    }
    assert_eq!(seen.count("rejected/tag/future"), 2);
    // Within the skew (a clock 2 s ahead): believed.
    let sealed = record_key().seal(key.as_ref(), record(now_ms() + 2_000).as_bytes());
    s3.put(&key, PutPayload::from(sealed)).await.unwrap();
    tags.adopt_from_bucket(&tag_key(), Duration::from_secs(60))
        .await;
    assert_eq!(
        tags.get(&tag_key()).await.map(|e| e.digest),
        Some(evil.clone())
    );

    // A record on disk dated ten years ahead (adopted before this check existed) is not
    // believed either, after a restart as before it.
    let local_dir = tempfile::tempdir().unwrap();
    let entry = TagEntry {
        digest: evil.clone(),
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        size: 9,
        validated_at_ms: now_ms() + ten_years,
    };
    let plain = TagStore::open(local_dir.path().into()).unwrap();
    plain.put(tag_key(), entry).await.unwrap();
    assert_eq!(plain.get(&tag_key()).await, None, "from memory");
    let reopened = TagStore::open(local_dir.path().into()).unwrap();
    assert_eq!(reopened.get(&tag_key()).await, None, "from disk");

    // [storage] without [fleet]: tags are neither written to the bucket nor read from it.
    let s3 = Arc::new(InMemory::new());
    let seen = Arc::new(Seen::default());
    let no_fleet_dir = tempfile::tempdir().unwrap();
    let no_fleet = TagStore::open(no_fleet_dir.path().into())
        .unwrap()
        .with_bucket(Some(bucket_without_fleet(s3.clone(), seen.clone())));
    let confirmed = TagEntry {
        digest: Digest::sha256_of(b"v1"),
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        size: 3,
        validated_at_ms: now_ms(),
    };
    no_fleet.put(tag_key(), confirmed.clone()).await.unwrap();
    no_fleet
        .put_shared(tag_key(), confirmed.clone())
        .await
        .unwrap();
    let sealed = record_key().seal(key.as_ref(), record(now_ms()).as_bytes());
    s3.put(&key, PutPayload::from(sealed)).await.unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = TagStore::open(other_dir.path().into())
        .unwrap()
        .with_bucket(Some(bucket_without_fleet(s3.clone(), seen.clone())));
    other
        .adopt_from_bucket(&tag_key(), Duration::from_secs(60))
        .await;
    assert_eq!(other.get(&tag_key()).await, None, "read without [fleet]");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        seen.count("PutObject/ok") + seen.count("GetObject/ok") + seen.count("GetObject/not_found"),
        0,
        "no tag record went to or came from the bucket"
    );
}
