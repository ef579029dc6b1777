//! How a bucket operation fails, in the cache's terms. Never carries credentials: object_store's
//! messages name the key and the status, not the signature.

use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BucketError {
    /// No answer within `storage.s3_timeout` (or `s3_upload_timeout` for an upload).
    #[error("storage {op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    /// The bucket answered with an error, or could not be reached.
    #[error("storage {op} failed: {message}")]
    Failed { op: &'static str, message: String },
    /// No object under the key (the bucket answered 404); read calls turn it into `None`.
    #[error("storage {op}: no such object")]
    NotFound { op: &'static str },
    /// A conditional write lost: the object exists (`If-None-Match: *`) or changed since its
    /// ETag was read (`If-Match`).
    #[error("storage {op}: the condition failed (written by another replica meanwhile)")]
    Conflict { op: &'static str },
    /// The object is there but is not what its key says (wrong digest, bad record, too large).
    #[error("storage object {key} is damaged: {why}")]
    Damaged { key: String, why: String },
}
