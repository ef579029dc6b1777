//! Blobs on disk, content-addressed and verified, as named pieces:
//!
//! - `store`: the API the proxy uses (lookup, join-or-start a download, HEAD, shutdown);
//! - `lookup`: what a lookup hands back (`Blob`: a committed file, a small blob's bytes, or a
//!   download to follow) and the bodies each makes;
//! - `disk_budget`: `DiskBudget` and `Kept`, the one budget as the manifest and tag stores see it;
//! - `catalog`: committed blobs and downloads in flight under one lock (commit, evict, pins);
//! - `index`: what is committed, recency and pins (pure); `layout`: where files live;
//!   manifests and tag records share the budget and the LRU (`DiskBudget`);
//! - `fill_state` / `fill`: one download per digest, teed to readers, a hasher and a writer;
//! - `body`: response bodies over a committed file or a download; `memory`: small blobs' bytes;
//! - `write_buffer`: the bound on received bytes waiting for the disk;
//! - `failures`: downloads that failed lately; `scrub`: committed blobs checked in the background;
//! - `backfill`: blobs committed before `[storage]` was set, copied to the bucket once;
//! - `source`: what a download reads from and how it fails, in the cache's own terms;
//! - `origin`: how a request got its blob (hit, joined, filled from bucket, peer, parent or
//!   upstream, uncached), handed back with it for the proxy's logs and metrics;
//! - `bucket_tier`: the shared bucket (`[storage]`) behind the disk: read on a miss before
//!   upstream, written after a verified commit; with `storage.redirect`, presigned URLs of
//!   the blobs there (`in_bucket`: the digests seen there lately, bounded);
//! - `fleet`: `[fleet]`: a bucket miss takes the blob's fill lease, or joins the replica that
//!   holds it through its peer endpoint.

mod backfill;
mod body;
mod bucket_tier;
mod catalog;
mod disk_budget;
mod failures;
mod fill;
mod fill_state;
mod fleet;
mod in_bucket;
mod index;
mod layout;
mod lookup;
mod memory;
mod origin;
mod scrub;
mod source;
mod store;
mod write_buffer;

pub use bucket_tier::BucketRedirects;
pub use fleet::{Fleet, PeerAnswer, PeerFuture, PeerRangeFuture, PeerSource};
pub use memory::SMALL_BLOB_BYTES;
pub use origin::{BlobOrigin, BlobSource};
pub use source::{Cause, FillError, IncomingBlob, OnSettled, SourceError};
pub use store::{
    Blob, BlobStore, BlobStoreLimits, BlobStoreStats, CacheFile, CachedBlob, DiskBudget,
    FillProgress, FillingBlob, Kept,
};
