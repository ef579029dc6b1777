//! Orphaned multipart uploads (`[fleet]`): a replica killed mid-copy leaves its multipart upload
//! open, its parts stored and billed, and no object (S3 shows an object only once an upload
//! completes). archway aborts its own upload on every failed or cancelled copy; the lease sweep
//! (one replica at a time) also lists the uploads under `<prefix>blobs/` and aborts those begun
//! more than `fleet.orphaned_upload_age` ago, which no live copy takes that long.
//!
//! object_store has no ListMultipartUploads, so that one request is signed here with
//! object_store's own SigV4 signer and the client's credentials; the abort is object_store's.

use super::{Bucket, BucketError, BucketSettings};
use object_store::aws::AwsAuthorizer;
use object_store::client::HttpRequestBody;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use std::time::{Duration, SystemTime};

/// The most uploads one round looks at (S3's page); the rest wait for the next round.
const MAX_LISTED_BYTES: usize = 4 << 20;

/// Where and how the bucket's uploads are listed.
pub(super) struct UploadListing {
    /// `scheme://host[:port]/<bucket>` (path style) or `scheme://<bucket>.host[:port]`.
    base: String,
    region: String,
    client: reqwest::Client,
}

impl UploadListing {
    pub(super) fn new(settings: &BucketSettings, loopback: bool) -> Result<Self, BucketError> {
        let bucket = &settings.bucket;
        let region = &settings.region;
        let base = match (&settings.endpoint, settings.path_style) {
            (Some(e), true) => format!("{}/{bucket}", e.trim_end_matches('/')),
            (Some(e), false) => {
                let uri: http::Uri = e.parse().map_err(|_| failed("endpoint"))?;
                let scheme = uri.scheme_str().unwrap_or("https");
                let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
                format!("{scheme}://{bucket}.{authority}")
            }
            (None, true) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
            (None, false) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        };
        let mut client = reqwest::Client::builder()
            .connect_timeout(settings.s3_timeout)
            .read_timeout(settings.s3_timeout)
            .http1_only();
        if loopback {
            client = client.no_proxy();
        }
        Ok(UploadListing {
            base,
            region: region.clone(),
            client: client.build().map_err(|e| failed(&e.to_string()))?,
        })
    }
}

fn failed(message: &str) -> BucketError {
    BucketError::Failed {
        op: "ListMultipartUploads",
        message: message.to_owned(),
    }
}

/// One open upload as S3 lists it.
#[derive(Debug, PartialEq, Eq)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: SystemTime,
}

/// The uploads of a ListMultipartUploads answer (pure). An entry it cannot read is left out.
pub fn parse_uploads(xml: &str) -> Vec<OpenUpload> {
    let field = |block: &str, name: &str| -> Option<String> {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = block.find(&open)? + open.len();
        let end = start + block.get(start..)?.find(&close)?;
        block.get(start..end).map(str::to_owned)
    };
    xml.split("<Upload>")
        .skip(1)
        .filter_map(|block| {
            let block = block.split("</Upload>").next()?;
            let key = field(block, "Key")?;
            // Our keys hold no XML entities; one that does is not ours.
            if key.contains('&') {
                return None;
            }
            Some(OpenUpload {
                key,
                upload_id: field(block, "UploadId")?,
                initiated: humantime::parse_rfc3339(&field(block, "Initiated")?).ok()?,
            })
        })
        .collect()
}

impl Bucket {
    /// Aborts the multipart uploads under `<prefix>blobs/` begun more than `older_than` ago;
    /// how many. Nothing over a store that is not S3 (tests).
    pub async fn sweep_uploads(&self, older_than: Duration) -> Result<usize, BucketError> {
        let (Some(s3), Some(listing)) = (&self.signer, &self.listing) else {
            return Ok(0);
        };
        let prefix = format!("{}/", self.keys().blobs_root());
        let list = async {
            let credential = s3.credentials().get_credential().await?;
            let url = format!("{}?prefix={prefix}&uploads=", listing.base);
            let mut request = http::Request::builder()
                .method(http::Method::GET)
                .uri(&url)
                .body(HttpRequestBody::empty())
                .map_err(|e| generic(e.to_string()))?;
            AwsAuthorizer::new(&credential, "s3", &listing.region)
                .try_authorize(&mut request, None)?;
            let mut send = listing.client.get(&url);
            for (name, value) in request.headers() {
                send = send.header(name.as_str(), value.as_bytes());
            }
            let response = send.send().await.map_err(|e| generic(e.to_string()))?;
            let status = response.status();
            let body = response.bytes().await.map_err(|e| generic(e.to_string()))?;
            if !status.is_success() {
                return Err(generic(format!("status {status}")));
            }
            if body.len() > MAX_LISTED_BYTES {
                return Err(generic("answer too long".into()));
            }
            Ok(String::from_utf8_lossy(&body).into_owned())
        };
        let xml = self
            .timed("ListMultipartUploads", self.s3_timeout, list)
            .await?;
        let now = SystemTime::now();
        let mut aborted = 0;
        for upload in parse_uploads(&xml) {
            let age = now.duration_since(upload.initiated).unwrap_or_default();
            if age <= older_than || !upload.key.starts_with(&prefix) {
                continue;
            }
            let Ok(path) = Path::parse(&upload.key) else {
                continue;
            };
            let id = upload.upload_id.clone();
            let abort = s3.abort_multipart(&path, &id);
            self.timed("AbortMultipartUpload", self.s3_timeout, abort)
                .await?;
            tracing::info!(key = %upload.key, age = ?age, "orphaned multipart upload aborted");
            aborted += 1;
        }
        Ok(aborted)
    }
}

fn generic(message: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_read_from_the_listing() {
        // The shape of S3's ListMultipartUploadsResult (trimmed).
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>archway</Bucket><Prefix>p/blobs/</Prefix><IsTruncated>false</IsTruncated>
  <Upload><Key>p/blobs/sha256/abc</Key><UploadId>VXBsb2FkIElE</UploadId>
    <Initiator><ID>x</ID></Initiator><StorageClass>STANDARD</StorageClass>
    <Initiated>2026-11-28T02:00:00.000Z</Initiated></Upload>
  <Upload><Key>p/blobs/a&amp;b</Key><UploadId>2</UploadId><Initiated>2026-11-28T02:00:00Z</Initiated></Upload>
  <Upload><Key>p/blobs/sha256/def</Key><UploadId>3</UploadId><Initiated>yesterday</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let uploads = parse_uploads(xml);
        assert_eq!(uploads.len(), 1, "{uploads:?}");
        assert_eq!(uploads[0].key, "p/blobs/sha256/abc");
        assert_eq!(uploads[0].upload_id, "VXBsb2FkIElE");
        assert_eq!(
            uploads[0].initiated,
            humantime::parse_rfc3339("2026-11-28T02:00:00Z").unwrap()
        );
        assert!(parse_uploads("").is_empty());
        assert!(parse_uploads("<Upload><Key>k</Key></Upload>").is_empty());
    }
}
