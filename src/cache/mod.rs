//! Caches: blobs on disk, manifests in memory and on disk, tags with a TTL; `bucket`: the
//! shared S3-compatible storage behind them (`[storage]`).

pub mod access_store;
pub mod blob;
pub mod bucket;
pub mod fetch_lease;
pub mod keyed_lock;
pub mod lease_turn;
pub(crate) mod lru;
pub mod manifest_store;
pub mod tag_entry;
pub mod tag_key;
mod tag_memory;
pub mod tag_store;
