//! The store-wide bound on received blob bytes not yet written to disk (`cache.write_buffer`):
//! past it, receiving waits for the disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Units of permits: one permit per KiB not yet written.
const PERMIT_BYTES: u64 = 1024;

pub(crate) struct WriteBuffer {
    semaphore: Arc<Semaphore>,
    permits: u32,
    /// Bytes received and not yet written, for the metrics.
    waiting: Arc<AtomicU64>,
}

/// One chunk's room in the write buffer, given back when the chunk is written (or dropped).
pub(crate) struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    waiting: Arc<AtomicU64>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.waiting.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl WriteBuffer {
    pub(crate) fn new(bytes: u64) -> Self {
        let permits = u32::try_from(bytes.div_ceil(PERMIT_BYTES).max(1)).unwrap_or(u32::MAX);
        let permits = permits.min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        WriteBuffer {
            semaphore: Arc::new(Semaphore::new(permits as usize)),
            permits,
            waiting: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Waits for room for `len` bytes; a chunk larger than the whole buffer takes all of it.
    pub(crate) async fn acquire(&self, len: u64) -> Option<Reservation> {
        let want = u32::try_from(len.div_ceil(PERMIT_BYTES).max(1)).unwrap_or(u32::MAX);
        let permit = self
            .semaphore
            .clone()
            .acquire_many_owned(want.min(self.permits))
            .await
            .ok()?;
        self.waiting.fetch_add(len, Ordering::Relaxed);
        Some(Reservation {
            _permit: permit,
            bytes: len,
            waiting: self.waiting.clone(),
        })
    }

    /// Bytes received by downloads and not yet in their temp files.
    pub(crate) fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }
}
