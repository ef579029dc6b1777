//! The bucket behind the disk for blobs: on an L1 miss a fill reads the blob from the bucket if
//! it is there (verified on the way like an upstream body, by the same fill), and a blob filled
//! from upstream is copied to the bucket after its verified commit, in the background.
//!
//! An object appears in the bucket only complete and verified: the committed file is hashed
//! again while it is read for the upload, and a single PUT is sent, or a multipart upload is
//! completed, only when the hash matches. Content addressing makes two replicas writing the
//! same blob harmless.

use super::catalog::PinGuard;
use super::in_bucket::InBucket;
use super::origin::BlobSource;
use super::source::IncomingBlob;
use crate::cache::bucket::{Bucket, BucketError, HeldLease};
use crate::digest::{Digest, Verifier};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where a fill's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FillSource {
    /// The shared bucket.
    Bucket,
    /// Upstream, the bucket not having it: copied there after the commit.
    Upstream,
    /// Upstream because the bucket failed: served and kept in L1, not copied.
    UpstreamBucketDown,
    /// Another replica's fill (`[fleet]`): that replica copies it to the bucket.
    Peer,
}

impl FillSource {
    /// What the request learns of it; `from_parent`: upstream's bytes came through a parent.
    pub(crate) fn blob_source(self, from_parent: bool) -> BlobSource {
        match self {
            FillSource::Bucket => BlobSource::Bucket,
            FillSource::Peer => BlobSource::Peer,
            FillSource::Upstream | FillSource::UpstreamBucketDown if from_parent => {
                BlobSource::Parent
            }
            FillSource::Upstream | FillSource::UpstreamBucketDown => BlobSource::Upstream,
        }
    }

    /// In messages and logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            FillSource::Bucket => "storage",
            FillSource::Upstream | FillSource::UpstreamBucketDown => "upstream",
            FillSource::Peer => "peer",
        }
    }
}

/// `storage.redirect`: blob GETs for blobs in the bucket are redirected to presigned URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketRedirects {
    /// How long a presigned URL is valid (`storage.redirect_expiry`).
    pub expiry: Duration,
    /// Bytes of the memo of digests seen in the bucket (`storage.redirect_memo`).
    pub memo_bytes: u64,
}

/// The blob side of the bucket.
#[derive(Debug, Clone)]
pub(crate) struct BlobTier {
    bucket: Arc<Bucket>,
    /// With `storage.redirect`: the URLs' lifetime, and the digests seen in the bucket lately.
    redirects: Option<(Duration, Arc<InBucket>)>,
}

impl BlobTier {
    pub(crate) fn new(bucket: Arc<Bucket>, redirects: Option<BucketRedirects>) -> Self {
        let redirects =
            redirects.map(|r| (r.expiry, Arc::new(InBucket::new(r.expiry, r.memo_bytes))));
        BlobTier { bucket, redirects }
    }

    pub(crate) fn bucket(&self) -> &Arc<Bucket> {
        &self.bucket
    }

    /// A presigned URL of the blob if the bucket holds it (the memo, else a `HeadObject`);
    /// `None` without `storage.redirect`, when the bucket lacks it, fails or cannot presign.
    /// The URL carries a signature: it is never logged.
    pub(crate) async fn presigned(&self, digest: &Digest) -> Option<String> {
        let (expiry, memo) = self.redirects.as_ref()?;
        if !self.bucket.can_presign() {
            return None;
        }
        let key = self.bucket.keys().blob(digest);
        if !memo.knows(digest) {
            match self.bucket.exists(&key).await {
                Ok(true) => memo.remember(digest),
                Ok(false) => return None,
                Err(e) => {
                    // The fill that follows reads the bucket too, and counts it if it fails.
                    tracing::debug!(%digest, error = %e, "storage unavailable; blob served, not redirected");
                    return None;
                }
            }
        }
        match self.bucket.presign_get(&key, *expiry).await {
            Ok(url) => url,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot presign a blob URL; served, not redirected");
                None
            }
        }
    }

    /// Whether `storage.redirect` is on (and the bucket can presign).
    pub(crate) fn redirects(&self) -> bool {
        self.redirects.is_some() && self.bucket.can_presign()
    }

    /// Seen in the bucket lately (the memo): a redirect needs no `HeadObject`.
    pub(crate) fn known_in_bucket(&self, digest: &Digest) -> bool {
        self.redirects
            .as_ref()
            .is_some_and(|(_, memo)| memo.knows(digest))
    }

    /// The blob is in the bucket now (a redirect need not ask).
    fn seen_in_bucket(&self, digest: &Digest) {
        if let Some((_, memo)) = &self.redirects {
            memo.remember(digest);
        }
    }

    /// The blob as a fill source if the bucket has it; an error if the bucket failed.
    pub(crate) async fn fetch(&self, digest: &Digest) -> Result<Option<IncomingBlob>, BucketError> {
        let key = self.bucket.keys().blob(digest);
        let object = match self.bucket.get(&key).await? {
            Some(o) => o,
            // Expired under blobs/ by the lifecycle rule: a pinned image's copy outlives it.
            None => match self
                .bucket
                .get(&self.bucket.keys().pinned_blob(digest))
                .await?
            {
                Some(o) => o,
                None => return Ok(None),
            },
        };
        let body = StreamBody::new(object.body.map(|chunk| chunk.map(Frame::data))).boxed_unsync();
        Ok(Some(IncomingBlob {
            size: Some(object.size),
            body,
            from_parent: false,
            on_settled: None,
        }))
    }

    /// Counts a fill by where it reads from; a bucket failure also counts as a read bypassed.
    /// The label is the one the requests are told (`BlobSource`), so the two never disagree.
    pub(crate) fn note_fill(&self, source: FillSource, from_parent: bool) {
        let observer = self.bucket.observer();
        observer.blob_fill(source.blob_source(from_parent).as_str());
        if source == FillSource::UpstreamBucketDown {
            observer.bypassed("blob_read");
        }
    }

    /// Copies a committed blob to the bucket in the background; the pin keeps the file from
    /// eviction until the copy is done, and the fill lease (`[fleet]`) is held (and renewed)
    /// until then too, so that other replicas join this one rather than upstream.
    pub(crate) fn upload(
        &self,
        digest: Digest,
        path: PathBuf,
        size: u64,
        pin: PinGuard,
        lease: Option<HeldLease>,
    ) {
        let tier = self.clone();
        let write = async move {
            match tier.copy(&digest, path, size).await {
                Ok(true) => tracing::debug!(%digest, bytes = size, "blob copied to storage"),
                Ok(false) => tracing::debug!(%digest, "blob already in storage"),
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "cannot copy blob to storage");
                    tier.bucket.observer().bypassed("blob_write");
                }
            }
            drop(pin);
            drop(lease);
        };
        self.bucket.spawn_write("blob_write", write);
    }

    /// Copies a committed blob (pinned by the caller) now, and waits: `Ok(false)` if the
    /// bucket had it.
    pub(crate) async fn copy(
        &self,
        digest: &Digest,
        path: PathBuf,
        size: u64,
    ) -> Result<bool, CopyError> {
        let copied = upload(&self.bucket, digest, path, size).await?;
        self.seen_in_bucket(digest);
        Ok(copied)
    }

    /// A bucket object that did not hash to its key is garbage: deleted, so the next fill goes
    /// upstream. (A correct copy written meanwhile by another replica may go with it; it is
    /// written again.)
    pub(crate) fn discard(&self, digest: &Digest) {
        if let Some((_, memo)) = &self.redirects {
            memo.forget(digest);
        }
        let bucket = self.bucket.clone();
        let key = bucket.keys().blob(digest);
        let pinned = bucket.keys().pinned_blob(digest);
        let digest = digest.clone();
        tokio::spawn(async move {
            // The damaged bytes may have come from the pinned copy; it is garbage too.
            let _ = bucket.delete(&pinned).await;
            match bucket.delete(&key).await {
                Ok(()) => tracing::warn!(%digest, "damaged blob deleted from storage"),
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "cannot delete damaged blob from storage")
                }
            }
        });
    }
}

/// Why a committed blob was not copied to the bucket.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CopyError {
    /// The file could not be read (it may be whole: nothing is known of its bytes).
    #[error("cannot read the committed file: {0}")]
    Unreadable(#[source] std::io::Error),
    /// The file was read whole and is not the blob: damaged on the disk.
    #[error("the committed file is damaged: {0}")]
    Mismatch(String),
    #[error(transparent)]
    Bucket(#[from] BucketError),
}

/// `Ok(false)`: already there. Reads the committed file once, hashing it; nothing becomes
/// visible unless the hash matches.
async fn upload(
    bucket: &Bucket,
    digest: &Digest,
    path: PathBuf,
    size: u64,
) -> Result<bool, CopyError> {
    let key = bucket.keys().blob(digest);
    if bucket.exists(&key).await? {
        return Ok(false);
    }
    let part_size = bucket.part_size();
    let mut reader = PartReader::open(path, digest)
        .await
        .map_err(CopyError::Unreadable)?;
    if size <= part_size {
        let bytes = reader
            .next(part_size)
            .await
            .map_err(CopyError::Unreadable)?;
        let actual = reader.finish();
        if bytes.len() as u64 != size || actual != *digest {
            return Err(CopyError::Mismatch(format!(
                "{} bytes hashing to {actual}",
                bytes.len()
            )));
        }
        bucket.put(&key, bytes, None).await?;
        return Ok(true);
    }
    let mut upload = bucket.start_multipart(&key).await?;
    let mut sent: u64 = 0;
    loop {
        let part = match reader.next(part_size).await {
            Ok(part) => part,
            Err(e) => {
                upload.abort().await;
                return Err(CopyError::Unreadable(e));
            }
        };
        if part.is_empty() {
            break;
        }
        sent += part.len() as u64;
        if let Err(e) = upload.put_part(part).await {
            upload.abort().await;
            return Err(e.into());
        }
    }
    let actual = reader.finish();
    if sent != size || actual != *digest {
        upload.abort().await;
        return Err(CopyError::Mismatch(format!(
            "{sent} bytes hashing to {actual}"
        )));
    }
    upload.complete().await?;
    Ok(true)
}

/// The committed file read in parts on a blocking thread, hashed as it goes.
struct PartReader {
    file: Option<std::fs::File>,
    verifier: Option<Verifier>,
}

impl PartReader {
    async fn open(path: PathBuf, digest: &Digest) -> std::io::Result<Self> {
        let file = tokio::task::spawn_blocking(move || std::fs::File::open(path))
            .await
            .map_err(std::io::Error::other)??;
        Ok(PartReader {
            file: Some(file),
            verifier: Some(Verifier::new(digest.algorithm())),
        })
    }

    /// Up to `max` bytes (fewer only at the end), hashed.
    async fn next(&mut self, max: u64) -> std::io::Result<Bytes> {
        let (Some(file), Some(verifier)) = (self.file.take(), self.verifier.take()) else {
            return Err(std::io::Error::other("part reader used after an error"));
        };
        let (file, verifier, bytes) = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let mut verifier = verifier;
            let mut buf = Vec::new();
            (&mut file).take(max).read_to_end(&mut buf)?;
            verifier.update(&buf);
            Ok::<_, std::io::Error>((file, verifier, Bytes::from(buf)))
        })
        .await
        .map_err(std::io::Error::other)??;
        self.file = Some(file);
        self.verifier = Some(verifier);
        Ok(bytes)
    }

    fn finish(&mut self) -> Digest {
        match self.verifier.take() {
            Some(v) => v.finish(),
            // Only after an error, which aborted the upload already.
            None => Verifier::new(crate::digest::Algorithm::Sha256).finish(),
        }
    }
}
