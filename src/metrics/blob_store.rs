//! The blob store's own figures (size, entries, scrub), read at scrape time.

use crate::cache::blob::{BlobStore, BlobStoreStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// Reads the blob store's counters at scrape time, so they never drift from the store.
#[derive(Default)]
pub(super) struct BlobStoreCollector {
    pub(super) store: OnceLock<Arc<BlobStore>>,
}

impl fmt::Debug for BlobStoreCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStoreCollector")
            .field("attached", &self.store.get().is_some())
            .finish()
    }
}

impl Collector for BlobStoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(store) = self.store.get() else {
            return Ok(());
        };
        let BlobStoreStats {
            bytes,
            entries,
            file_bytes,
            files,
            evictions,
            in_flight,
            fills_started: _,
            write_buffered,
            scrub_checked,
            damaged_by_scrub,
            damaged_on_read,
            read_check_bytes,
            pinned_bytes,
            pinned_entries,
        } = store.stats();
        let gauges = [
            (
                "archway_blob_store_bytes",
                "Bytes of blobs committed to the on-disk cache.",
                bytes,
            ),
            (
                "archway_blob_store_max_bytes",
                "The blob cache's byte budget (cache.max_size).",
                store.max_bytes(),
            ),
            (
                "archway_blob_store_entries",
                "Blobs committed to the on-disk cache.",
                entries,
            ),
            (
                "archway_cache_file_bytes",
                "Bytes the manifests and tag records on disk count against cache.max_size with \
                 the blobs (each rounded up to 4 KiB blocks).",
                file_bytes,
            ),
            (
                "archway_cache_files",
                "Manifests and tag records on disk.",
                files,
            ),
            (
                "archway_pinned_bytes",
                "Bytes on disk (blobs and manifests) that pinned images hold: never evicted, \
                 counted against cache.max_size with everything else.",
                pinned_bytes,
            ),
            (
                "archway_pinned_entries",
                "Blobs and manifests on disk that pinned images hold.",
                pinned_entries,
            ),
            (
                "archway_blob_downloads_in_flight",
                "Blob downloads from upstreams in progress (one per coalesced group of requests).",
                in_flight,
            ),
            (
                "archway_blob_write_buffer_bytes",
                "Bytes of blob downloads received and waiting in memory for the disk \
                 (at most cache.write_buffer); near the limit, the disk is what slows cold pulls.",
                write_buffered,
            ),
        ];
        let disk = [
            (
                "archway_cache_disk_free_bytes",
                "Bytes free for archway on the cache's filesystem (statvfs, read at scrape time).",
                store.disk_free(),
            ),
            (
                "archway_cache_min_free_bytes",
                "cache.min_free_space: with less free on the disk, blobs are served without being cached.",
                Some(store.min_free_space()),
            ),
        ];
        let disk = disk
            .into_iter()
            .filter_map(|(name, help, value)| Some((name, help, value?)));
        for (name, help, value) in gauges.into_iter().chain(disk) {
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        let counters = [
            (
                "archway_blob_store_evictions",
                "Blobs, manifests and tag records deleted from the disk cache to stay within \
                 its budget (cache.max_size).",
                evictions,
            ),
            (
                "archway_blob_scrub_checked",
                "Cached blobs the background scrub read back and checked against their digests.",
                scrub_checked,
            ),
            (
                "archway_blob_read_check_bytes",
                "Bytes of cached blobs hashed to check reads (cache.verify_reads): a whole read \
                 hashes what it sends; a range read the whole blob, unless a check within \
                 cache.verify_reads_ttl vouches for it.",
                read_check_bytes,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let mut family = encoder.encode_descriptor(
            "archway_blob_damaged",
            "Cached blobs found not to match their digests (and dropped), by what found them: \
             scrub, or read (a small blob loaded, or cache.verify_reads).",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (found_by, value) in [("scrub", damaged_by_scrub), ("read", damaged_on_read)] {
            let labels = [("found_by", found_by)];
            let metric = family.encode_family(&labels)?;
            ConstCounter::new(value).encode(metric)?;
        }
        Ok(())
    }
}
