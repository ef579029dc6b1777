//! Presigned GET URLs (`storage.redirect`): a client redirected to one reads a blob straight
//! from the bucket. Signing is local (SigV4 over the URL with the credentials object_store
//! already holds): no request to S3 is sent for it.
//!
//! The URL carries a signature: it is handed to the client and never logged, nor put into an
//! error.

use super::{Bucket, BucketError};
use object_store::path::Path;
use object_store::signer::Signer;
use std::time::Duration;

impl Bucket {
    /// Whether this bucket can presign URLs (an S3 bucket can; a test's in-memory one cannot).
    pub fn can_presign(&self) -> bool {
        self.signer.is_some()
    }

    /// A URL that lets its holder GET `key` for `expires_in`, without credentials of its own.
    /// `None` when the bucket cannot presign. Within the timeout: credentials from web identity
    /// or instance metadata may need a refresh first.
    pub async fn presign_get(
        &self,
        key: &Path,
        expires_in: Duration,
    ) -> Result<Option<String>, BucketError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let op = "PresignGetObject";
        let signed = signer.signed_url(http::Method::GET, key, expires_in);
        match tokio::time::timeout(self.s3_timeout, signed).await {
            Ok(Ok(url)) => Ok(Some(url.to_string())),
            // object_store's signing errors name the credential source or the key, never a
            // signature.
            Ok(Err(e)) => Err(BucketError::Failed {
                op,
                message: e.to_string(),
            }),
            Err(_) => Err(BucketError::Timeout {
                op,
                after: self.s3_timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BucketSettings, NoObserver};
    use super::*;
    use crate::digest::Digest;
    use std::sync::Arc;

    fn settings() -> BucketSettings {
        BucketSettings {
            bucket: "archway".into(),
            prefix: "prod/".into(),
            // Nothing listens there: signing must not need the server.
            endpoint: Some("http://127.0.0.1:9".into()),
            region: "eu-west-1".into(),
            path_style: true,
            keys: Some(("AKIDEXAMPLE".into(), "wJalrXUtnFEMI-secret-key".into())),
            s3_timeout: Duration::from_secs(5),
            s3_upload_timeout: Duration::from_secs(5),
            max_uploads: 1,
            upload_queue: 1,
            part_size: 5 << 20,
        }
    }

    #[tokio::test]
    async fn presigns_a_get_of_the_blob_key_locally() {
        let bucket = Bucket::open(&settings(), Arc::new(NoObserver)).unwrap();
        assert!(bucket.can_presign());
        let digest = Digest::sha256_of(b"layer");
        let key = bucket.keys().blob(&digest);
        let url = bucket
            .presign_get(&key, Duration::from_secs(900))
            .await
            .unwrap()
            .expect("an S3 bucket presigns");
        let uri: http::Uri = url.parse().unwrap();
        assert_eq!(uri.host(), Some("127.0.0.1"));
        assert_eq!(uri.port_u16(), Some(9));
        assert_eq!(
            uri.path(),
            format!("/archway/prod/blobs/sha256/{}", digest.hex())
        );
        let query: std::collections::HashMap<&str, &str> = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        assert_eq!(query["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
        assert_eq!(query["X-Amz-Expires"], "900");
        // Percent-encoded `/` in the credential scope.
        assert!(query["X-Amz-Credential"].starts_with("AKIDEXAMPLE%2F"));
        assert!(query["X-Amz-Credential"].contains("%2Feu-west-1%2Fs3%2F"));
        assert_eq!(query["X-Amz-Signature"].len(), 64, "a hex HMAC-SHA256");
        assert!(
            !url.contains("wJalrXUtnFEMI"),
            "the secret key itself never leaves: {url}"
        );
    }

    #[tokio::test]
    async fn a_bucket_over_another_store_does_not_presign() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let bucket = Bucket::over(
            store,
            "",
            Duration::from_secs(1),
            5 << 20,
            Arc::new(NoObserver),
        );
        assert!(!bucket.can_presign());
        let key = bucket.keys().blob(&Digest::sha256_of(b"x"));
        assert_eq!(
            bucket
                .presign_get(&key, Duration::from_secs(60))
                .await
                .unwrap(),
            None
        );
    }
}
