//! Caches: blobs on disk, manifests in memory and on disk, tags with a TTL.

mod blob_body;
mod blob_fill;
pub mod blob_store;
pub mod keyed_lock;
pub mod manifest_store;
pub mod tag_store;
