//! Blobs on the disk from before `[storage]` was set, copied to the bucket once, in the
//! background (`storage.backfill`). A fill copies what it commits; this copies what was
//! committed before the bucket was there, so that the other replicas (or this one after losing
//! its disk) find those blobs in the bucket too.
//!
//! One blob at a time, least recently used first, each pinned while it is read: it never holds
//! more than one upload's part in memory and never competes with the fills' copies for more
//! than one upload slot. A blob already in the bucket costs one `HeadObject`. A file that does
//! not hash to its digest is not copied and is dropped from the disk, as the scrub drops it. A
//! pass that copied or found every blob writes a marker naming the bucket, so the next start
//! skips it; a pass the bucket broke off (`MAX_FAILURES` failures in a row) does not, and the
//! next start tries again.

use super::bucket_tier::{BlobTier, CopyError};
use super::catalog::Catalog;
use std::path::PathBuf;
use std::sync::Weak;

/// Failures in a row after which the bucket is taken for down and the pass ends.
const MAX_FAILURES: u32 = 3;

/// What one pass did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
struct Pass {
    copied: u64,
    present: u64,
    damaged: u64,
    failed: u64,
    /// Ended early: the bucket failed `MAX_FAILURES` times in a row.
    broken_off: bool,
}

/// Starts the pass unless `marker` already names `target` (the bucket and prefix); the task
/// ends when the pass has.
pub(crate) fn spawn(
    catalog: Weak<Catalog>,
    tier: BlobTier,
    marker: PathBuf,
    target: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let done = tokio::fs::read_to_string(&marker).await.ok();
        if done.as_deref().map(str::trim) == Some(target.as_str()) {
            tracing::debug!(bucket = %target, "blobs on disk already copied to storage");
            return;
        }
        let pass = run(&catalog, &tier).await;
        if pass.broken_off || pass.failed > 0 {
            tracing::warn!(bucket = %target, copied = pass.copied, present = pass.present, damaged = pass.damaged, failed = pass.failed, broken_off = pass.broken_off, "blobs on disk not all copied to storage; the next start tries again");
            return;
        }
        if pass != Pass::default() {
            tracing::info!(bucket = %target, copied = pass.copied, present = pass.present, damaged = pass.damaged, "blobs on disk copied to storage");
        }
        if let Err(e) = write_marker(marker, target).await {
            tracing::warn!(error = %e, "cannot note the copy to storage as done; the next start checks again");
        }
    })
}

async fn run(catalog: &Weak<Catalog>, tier: &BlobTier) -> Pass {
    let mut pass = Pass::default();
    let Some(digests) = catalog.upgrade().map(|c| c.digests()) else {
        return pass;
    };
    if digests.is_empty() {
        return pass; // A new replica's empty disk: nothing to say.
    }
    tracing::info!(blobs = digests.len(), "copying blobs on disk to storage");
    let observer = tier.bucket().observer();
    let mut in_a_row = 0;
    for digest in digests {
        let Some(store) = catalog.upgrade() else {
            return pass; // The store is gone: shutting down.
        };
        let Some((size, pin)) = store.pin_untouched(&digest) else {
            continue; // Evicted meanwhile.
        };
        let path = store.blob_path(&digest);
        let outcome = match tier.copy(&digest, path, size).await {
            Ok(true) => {
                pass.copied += 1;
                "copied"
            }
            Ok(false) => {
                pass.present += 1;
                "present"
            }
            Err(CopyError::Mismatch(why)) => {
                tracing::warn!(%digest, why, "a cached blob does not match its digest: dropped, not copied");
                drop(pin);
                store.remove_damaged(&digest);
                pass.damaged += 1;
                "damaged"
            }
            Err(e) => {
                tracing::debug!(%digest, error = %e, "cannot copy a cached blob to storage");
                pass.failed += 1;
                "failed"
            }
        };
        observer.backfilled(outcome);
        in_a_row = if outcome == "failed" { in_a_row + 1 } else { 0 };
        if in_a_row >= MAX_FAILURES {
            pass.broken_off = true;
            break;
        }
    }
    pass
}

/// Written whole, then renamed into place: a crash leaves the old marker or the new one.
async fn write_marker(marker: PathBuf, target: String) -> std::io::Result<()> {
    let tmp = marker.with_extension("tmp");
    tokio::fs::write(&tmp, format!("{target}\n")).await?;
    tokio::fs::rename(&tmp, &marker).await
}
