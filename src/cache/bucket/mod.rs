//! The shared bucket (`[storage]`): an S3-compatible object store that replicas share, behind
//! the disk (L1). Every operation is bounded by a timeout, timed and counted; uploads run in the
//! background, at most `s3_max_uploads` at once with at most `s3_upload_queue` waiting.
//!
//! - `keys`: the key layout (pure); `credentials`: the AWS shared credentials file;
//! - `error`: `BucketError`; `connector`: the HTTP client for a loopback endpoint;
//! - `lease`: a fill lease's record and what to do on finding one (pure); `fill_lease`: taking,
//!   renewing, taking over and releasing it with conditional writes; `sweep`: deleting the
//!   leases dead replicas left, one replica at a time; `orphans`: aborting the multipart
//!   uploads dead replicas left;
//! - `records`: tag records and leases sealed with the fleet's record key, opened and judged
//!   (seal, clock skew) on reading;
//! - `presign`: presigned GET URLs for `storage.redirect` (signed locally, never logged).
//!
//! The bucket is never required: a failed or slow operation is a miss (reads) or a skipped copy
//! (writes), and the caller goes on with L1 and upstream.

mod connector;
mod credentials;
mod error;
mod fill_lease;
mod keys;
mod lease;
mod orphans;
mod presign;
mod records;
mod sweep;

pub use error::BucketError;
pub use fill_lease::{HeldLease, LeaseState};
pub use keys::Keys;
pub use lease::{now_ms, LeaseFound, LeaseRecord};
pub use records::{SealedRead, RECORD_PURPOSE};
pub use sweep::Swept;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, RetryConfig,
};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::Instrument;

/// What the bucket needs to know (from `[storage]`).
#[derive(Clone)]
pub struct BucketSettings {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    /// `(access key id, secret access key)` from the config; `None`: the AWS chain.
    pub keys: Option<(String, String)>,
    /// `storage.s3_timeout` (its default: `config::keys::STORAGE_S3_TIMEOUT`).
    pub s3_timeout: Duration,
    /// `storage.s3_upload_timeout`.
    pub s3_upload_timeout: Duration,
    /// `storage.s3_max_uploads`.
    pub max_uploads: u32,
    /// `storage.s3_upload_queue`.
    pub upload_queue: u32,
    /// `storage.s3_part_size`.
    pub part_size: u64,
}

impl std::fmt::Debug for BucketSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketSettings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// Where the bucket reports what it does (the metrics implement it; the cache knows no
/// Prometheus). Labels are fixed strings.
pub trait StorageObserver: Send + Sync {
    /// One S3 request: its S3 name (`GetObject`, `PutObject`, ...), how it ended (`ok`,
    /// `not_found`, `precondition_failed`, `error`, `timeout`) and how long it took.
    fn operation(&self, op: &'static str, status: &'static str, elapsed: Duration);
    /// A blob fill started, by where its bytes come from: `bucket` or `upstream`.
    fn blob_fill(&self, source: &'static str);
    /// Something was answered or kept without the bucket because it failed or was saturated:
    /// `blob_read`, `blob_write`, `manifest_read`, `manifest_write`, `tag_read`, `tag_write`.
    fn bypassed(&self, what: &'static str);
    /// `[fleet]`: a blob fill by outcome: `owned`, `joined_local`, `joined_peer`, `taken_over`,
    /// `lease_error`.
    fn fleet_fill(&self, _outcome: &'static str) {}
    /// `[fleet]`: a manifest GET by digest (`what` = `manifest`) or a tag revalidation
    /// (`tag`) by outcome: `owned`, `taken_over`, `waited` (another replica's answer, from the
    /// bucket), `lease_error`.
    fn fleet_fetch(&self, _what: &'static str, _outcome: &'static str) {}
    /// `[fleet]`: an expired fill or fetch lease taken over.
    fn lease_takeover(&self) {}
    /// A record read back from the bucket (`tag`, `lease`) or a peer's request (`peer`) not
    /// believed, and why: `unsealed`, `bad_seal`, `unreadable`, `future`, `owner`, `replay`,
    /// `expired`.
    fn record_rejected(&self, _kind: &'static str, _reason: &'static str) {}
    /// A blob on the disk from before the bucket, by what its copy did (`storage.backfill`):
    /// `copied`, `present` (the bucket had it), `damaged` (the file did not hash to its
    /// digest: dropped), `failed`.
    fn backfilled(&self, _outcome: &'static str) {}
    /// `[fleet]`: stale leases deleted by a sweep.
    fn leases_swept(&self, _count: u64) {}
    /// `[fleet]`: orphaned multipart uploads aborted by a sweep.
    fn uploads_aborted(&self, _count: u64) {}
    /// `[fleet]`: blob bytes received from another replica.
    fn peer_bytes(&self, _bytes: u64) {}
    /// `[fleet]`: bytes of a cold range (`cache.cold_ranges = "relay"`) relayed from `source`
    /// (`peer`: another replica's fill in flight).
    fn cold_range_bytes(&self, _source: &'static str, _bytes: u64) {}
    /// `[fleet]`: a lease of `owner` (another replica's `peer_url`, or this one's) read back.
    fn lease_seen(&self, _owner: &str) {}
    /// `[fleet]`: this replica took (`true`) or let go of a lease.
    fn lease_held(&self, _held: bool) {}
}

/// Observes nothing (tests, tools).
#[derive(Debug, Default)]
pub struct NoObserver;

impl StorageObserver for NoObserver {
    fn operation(&self, _: &'static str, _: &'static str, _: Duration) {}
    fn blob_fill(&self, _: &'static str) {}
    fn bypassed(&self, _: &'static str) {}
}

/// An object being read: its size, content type, and its bytes (each chunk bounded by the
/// timeout; a stall is an error).
pub struct BucketObject {
    pub size: u64,
    pub content_type: Option<String>,
    /// The version a conditional write (`If-Match`) names.
    pub e_tag: Option<String>,
    pub body: BoxStream<'static, std::io::Result<Bytes>>,
}

pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    /// The same S3 client as `store`, for presigning; `None` over any other store (tests).
    signer: Option<Arc<AmazonS3>>,
    /// Where the open multipart uploads are listed (with `signer`).
    listing: Option<orphans::UploadListing>,
    keys: Keys,
    s3_timeout: Duration,
    s3_upload_timeout: Duration,
    part_size: u64,
    uploads: Arc<Semaphore>,
    /// Background writes queued or running.
    pending: Arc<AtomicU64>,
    /// Writes about to be queued (a blob's commit that will start its copy): a shutdown
    /// waits for those too, so it cannot slip between a commit and its copy.
    expected: Arc<AtomicU64>,
    max_pending: u64,
    observer: Arc<dyn StorageObserver>,
    /// The record key, clock and skew that records read back are judged by.
    trust: records::Trust,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("store", &self.store.to_string())
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Bucket {
    /// The S3 client for `settings`; credentials from the config, else the AWS chain (the
    /// environment, the shared credentials file, web identity, container, instance metadata).
    /// Blocking (it may read the credentials file): call it at start-up. Nothing is sent yet.
    pub fn open(
        settings: &BucketSettings,
        observer: Arc<dyn StorageObserver>,
    ) -> Result<Bucket, BucketError> {
        let failed = |e: object_store::Error| BucketError::Failed {
            op: "configure",
            message: e.to_string(),
        };
        let mut builder = match &settings.keys {
            // Config keys stand alone: no session token or role from the environment mixes in.
            Some((id, secret)) => AmazonS3Builder::new()
                .with_access_key_id(id)
                .with_secret_access_key(secret),
            None => {
                let env = AmazonS3Builder::from_env();
                let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
                let env_keys = set("AWS_ACCESS_KEY_ID");
                match (env_keys, credentials::load()) {
                    (false, Some(k)) => {
                        let b = env
                            .with_access_key_id(k.access_key_id)
                            .with_secret_access_key(k.secret_access_key);
                        match k.session_token {
                            Some(t) => b.with_token(t),
                            None => b,
                        }
                    }
                    (false, None) => {
                        let other = [
                            "AWS_WEB_IDENTITY_TOKEN_FILE",
                            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                        ]
                        .iter()
                        .any(|v| set(v));
                        // object_store would fall back to the instance metadata service, which the
                        // AWS tools skip when told to; so does archway, with a clear error.
                        let imds_off = std::env::var("AWS_EC2_METADATA_DISABLED")
                            .is_ok_and(|v| v.eq_ignore_ascii_case("true"));
                        if !other && imds_off {
                            return Err(BucketError::Failed {
                                op: "configure",
                                message: "no S3 credentials: set storage.s3_access_key_id and \
                                          storage.s3_secret_access_key (or their _file keys), \
                                          AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a shared \
                                          credentials file or a web identity token; instance \
                                          metadata is off (AWS_EC2_METADATA_DISABLED=true)"
                                    .into(),
                            });
                        }
                        env
                    }
                    _ => env,
                }
            }
        };
        builder = builder
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_virtual_hosted_style_request(!settings.path_style)
            // object_store retries on its own for minutes by default; here a retry must fit in
            // the same bound as the first try.
            .with_retry(RetryConfig {
                max_retries: 1,
                retry_timeout: settings.s3_timeout,
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    // A whole-request timeout would cut a large blob's body short; each read is
                    // bounded instead. Long enough for the slowest answer (a server answers
                    // CompleteMultipartUpload only once it has assembled the object): every
                    // operation is bounded again by its own limit in `timed`.
                    .with_timeout_disabled()
                    .with_connect_timeout(settings.s3_timeout)
                    .with_read_timeout(settings.s3_timeout.max(settings.s3_upload_timeout)),
            );
        if let Some(endpoint) = &settings.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
            if connector::is_loopback(endpoint) {
                builder = builder.with_http_connector(connector::Direct::new(
                    settings.s3_timeout,
                    settings.s3_timeout.max(settings.s3_upload_timeout),
                ));
            }
        }
        let store = Arc::new(builder.build().map_err(failed)?);
        let loopback = settings
            .endpoint
            .as_deref()
            .is_some_and(connector::is_loopback);
        let listing = orphans::UploadListing::new(settings, loopback)?;
        let max_uploads = settings.max_uploads.max(1);
        Ok(Bucket {
            store: store.clone(),
            signer: Some(store),
            listing: Some(listing),
            keys: Keys::new(&settings.prefix),
            s3_timeout: settings.s3_timeout,
            s3_upload_timeout: settings.s3_upload_timeout,
            part_size: settings.part_size,
            uploads: Arc::new(Semaphore::new(max_uploads as usize)),
            pending: Arc::new(AtomicU64::new(0)),
            expected: Arc::new(AtomicU64::new(0)),
            max_pending: u64::from(max_uploads) + u64::from(settings.upload_queue),
            observer,
            trust: records::Trust::none(),
        })
    }

    /// A bucket over any object store (tests: `object_store::memory::InMemory`).
    pub fn over(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        timeout: Duration,
        part_size: u64,
        observer: Arc<dyn StorageObserver>,
    ) -> Bucket {
        Bucket {
            store,
            signer: None,
            listing: None,
            keys: Keys::new(prefix),
            s3_timeout: timeout,
            s3_upload_timeout: timeout,
            part_size,
            uploads: Arc::new(Semaphore::new(4)),
            pending: Arc::new(AtomicU64::new(0)),
            expected: Arc::new(AtomicU64::new(0)),
            max_pending: 64,
            observer,
            trust: records::Trust::none(),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn observer(&self) -> &Arc<dyn StorageObserver> {
        &self.observer
    }

    /// Blobs up to this size are one PUT; larger ones are multipart in parts this size.
    pub fn part_size(&self) -> u64 {
        self.part_size
    }

    /// The object at `key`, its head within the timeout; `None` if there is none.
    pub async fn get(&self, key: &Path) -> Result<Option<BucketObject>, BucketError> {
        let op = "GetObject";
        let got = self
            .timed(
                op,
                self.s3_timeout,
                self.store.get_opts(key, GetOptions::new()),
            )
            .await;
        let got = match got {
            Ok(got) => got,
            Err(BucketError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let content_type = got
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string());
        let size = got.meta.size;
        let e_tag = got.meta.e_tag.clone();
        let timeout = self.s3_timeout;
        let stream = got.into_stream();
        let body = futures_util::stream::unfold(Some(stream), move |stream| async move {
            let mut stream = stream?;
            match tokio::time::timeout(timeout, stream.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
                Ok(Some(Err(e))) => Some((
                    Err(std::io::Error::other(format!("storage read failed: {e}"))),
                    None,
                )),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("storage read stalled for {timeout:?}"),
                    )),
                    None,
                )),
            }
        })
        .boxed();
        Ok(Some(BucketObject {
            size,
            content_type,
            e_tag,
            body,
        }))
    }

    /// A small object read whole (manifests, tag records), at most `max` bytes, within the
    /// timeout.
    pub async fn get_small(
        &self,
        key: &Path,
        max: u64,
    ) -> Result<Option<(Bytes, Option<String>)>, BucketError> {
        Ok(self
            .get_versioned(key, max)
            .await?
            .map(|(bytes, content_type, _)| (bytes, content_type)))
    }

    /// `get_small`, with the object's ETag.
    pub async fn get_versioned(
        &self,
        key: &Path,
        max: u64,
    ) -> Result<Option<(Bytes, Option<String>, Option<String>)>, BucketError> {
        let Some(object) = self.get(key).await? else {
            return Ok(None);
        };
        let e_tag = object.e_tag;
        if object.size > max {
            return Err(BucketError::Damaged {
                key: key.to_string(),
                why: format!("{} bytes, more than {max}", object.size),
            });
        }
        let content_type = object.content_type;
        let mut body = object.body;
        let read = async {
            let mut out = Vec::with_capacity(usize::try_from(object.size).unwrap_or(0));
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BucketError::Failed {
                    op: "GetObject",
                    message: e.to_string(),
                })?;
                out.extend_from_slice(&chunk);
                if out.len() as u64 > max {
                    return Err(BucketError::Damaged {
                        key: key.to_string(),
                        why: format!("longer than {max} bytes"),
                    });
                }
            }
            Ok(Bytes::from(out))
        };
        // A small object trickling in chunk by chunk must not hold a request for long either:
        // the whole body within the timeout too.
        let bytes = tokio::time::timeout(self.s3_timeout, read)
            .await
            .map_err(|_| BucketError::Timeout {
                op: "GetObject",
                after: self.s3_timeout,
            })??;
        Ok(Some((bytes, content_type, e_tag)))
    }

    /// Whether `key` exists (HEAD).
    pub async fn exists(&self, key: &Path) -> Result<bool, BucketError> {
        self.size(key).await.map(|size| size.is_some())
    }

    /// The size of the object at `key` (HEAD); `None` if there is none.
    pub async fn size(&self, key: &Path) -> Result<Option<u64>, BucketError> {
        match self
            .timed("HeadObject", self.s3_timeout, self.store.head(key))
            .await
        {
            Ok(meta) => Ok(Some(meta.size)),
            Err(BucketError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One PUT of a whole object: it appears complete or not at all.
    pub async fn put(
        &self,
        key: &Path,
        bytes: Bytes,
        content_type: Option<&str>,
    ) -> Result<(), BucketError> {
        let mut attributes = Attributes::new();
        if let Some(ct) = content_type {
            attributes.insert(Attribute::ContentType, ct.to_owned().into());
        }
        let opts = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.timed(
            "PutObject",
            self.s3_upload_timeout,
            self.store
                .put_opts(key, PutPayload::from_bytes(bytes), opts),
        )
        .await
        .map(drop)
    }

    /// A whole small object written only if `mode` allows (`Create`: none there; `Update`: the
    /// ETag still matches); a lost condition is `Conflict`. Returns the new ETag.
    pub async fn put_conditional(
        &self,
        key: &Path,
        bytes: Bytes,
        mode: PutMode,
    ) -> Result<Option<String>, BucketError> {
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        self.timed(
            "PutObject",
            self.s3_timeout,
            self.store
                .put_opts(key, PutPayload::from_bytes(bytes), opts),
        )
        .await
        .map(|put| put.e_tag)
    }

    /// Starts a multipart upload: the object appears only when `complete` is called.
    pub async fn start_multipart(&self, key: &Path) -> Result<Multipart<'_>, BucketError> {
        let upload = self
            .timed(
                "CreateMultipartUpload",
                self.s3_timeout,
                self.store.put_multipart(key),
            )
            .await?;
        Ok(Multipart {
            bucket: self,
            upload,
        })
    }

    /// A copy of `from` at `to`, made by the store (CopyObject: no bytes through archway; at
    /// most 5 GiB on S3).
    pub async fn copy(&self, from: &Path, to: &Path) -> Result<(), BucketError> {
        self.timed(
            "CopyObject",
            self.s3_upload_timeout,
            self.store.copy(from, to),
        )
        .await
    }

    pub async fn delete(&self, key: &Path) -> Result<(), BucketError> {
        self.timed("DeleteObject", self.s3_timeout, self.store.delete(key))
            .await
    }

    /// Runs `write` in the background once one of `s3_max_uploads` is free; `false` (and
    /// nothing runs) when `s3_upload_queue` writes already wait. The write carries the current
    /// span.
    pub fn spawn_write<F>(&self, what: &'static str, write: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let queued = self.pending.fetch_add(1, Ordering::AcqRel);
        if queued >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(what, "storage upload queue full; not copied to the bucket");
            self.observer.bypassed(what);
            return false;
        }
        let uploads = self.uploads.clone();
        let pending = self.pending.clone();
        let task = async move {
            // The semaphore is never closed; without a permit there is nothing to do.
            if let Ok(_permit) = uploads.acquire_owned().await {
                write.await;
            }
            pending.fetch_sub(1, Ordering::AcqRel);
        };
        tokio::spawn(task.in_current_span());
        true
    }

    /// Background writes queued or running.
    pub fn pending_writes(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    /// Announces a write that will be queued soon (held until it is): `finish_writes` waits
    /// for it as for a queued one.
    pub fn expect_write(&self) -> ExpectedWrite {
        self.expected.fetch_add(1, Ordering::AcqRel);
        ExpectedWrite(self.expected.clone())
    }

    /// Waits until no background write is queued, running or expected, or `deadline`: at
    /// shutdown, so that what this replica fetched reaches the other replicas.
    pub async fn finish_writes(&self, deadline: tokio::time::Instant) {
        while self.pending_writes() > 0 || self.expected.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    pending = self.pending_writes(),
                    "shutdown: copies to storage still running; left undone"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `f` within `limit`, timed and counted under `op`.
    async fn timed<T>(
        &self,
        op: &'static str,
        limit: Duration,
        f: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T, BucketError> {
        let started = Instant::now();
        let result = tokio::time::timeout(limit, f).await;
        let elapsed = started.elapsed();
        let (status, out) = match result {
            Ok(Ok(v)) => ("ok", Ok(v)),
            Ok(Err(object_store::Error::NotFound { .. })) => {
                ("not_found", Err(BucketError::NotFound { op }))
            }
            Ok(Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            )) => ("precondition_failed", Err(BucketError::Conflict { op })),
            Ok(Err(e)) => (
                "error",
                Err(BucketError::Failed {
                    op,
                    message: e.to_string(),
                }),
            ),
            Err(_) => ("timeout", Err(BucketError::Timeout { op, after: limit })),
        };
        self.observer.operation(op, status, elapsed);
        out
    }
}

/// A multipart upload in progress; dropped without `complete`, it is aborted by the caller
/// (`abort`), and a bucket lifecycle rule clears what a crash leaves.
pub struct Multipart<'a> {
    bucket: &'a Bucket,
    upload: Box<dyn object_store::MultipartUpload>,
}

impl Multipart<'_> {
    pub async fn put_part(&mut self, bytes: Bytes) -> Result<(), BucketError> {
        let part = self.upload.put_part(PutPayload::from_bytes(bytes));
        self.bucket
            .timed("UploadPart", self.bucket.s3_upload_timeout, part)
            .await
    }

    pub async fn complete(mut self) -> Result<(), BucketError> {
        let done = self.upload.complete();
        self.bucket
            .timed(
                "CompleteMultipartUpload",
                self.bucket.s3_upload_timeout,
                done,
            )
            .await
            .map(drop)
    }

    pub async fn abort(mut self) {
        let aborted = self.upload.abort();
        if let Err(e) = self
            .bucket
            .timed("AbortMultipartUpload", self.bucket.s3_timeout, aborted)
            .await
        {
            tracing::warn!(error = %e, "cannot abort a multipart upload; a lifecycle rule clears it");
        }
    }
}

/// A write announced by [`Bucket::expect_write`]; dropping it withdraws the announcement.
pub struct ExpectedWrite(Arc<AtomicU64>);

impl Drop for ExpectedWrite {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
