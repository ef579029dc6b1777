//! Caches: blobs on disk, manifests in memory and on disk, tags with a TTL.

pub mod blob;
pub mod keyed_lock;
pub mod manifest_store;
pub mod tag_store;
