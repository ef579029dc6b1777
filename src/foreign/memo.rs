//! The foreign layers of the manifests archway served, by (upstream, digest), within a byte
//! budget (`cache.foreign_memo`). Only a url remembered here is ever fetched: a client cannot
//! make archway fetch an address it made up, only one a manifest from a configured upstream named.

use super::scan::{foreign_layers, ForeignLayer};
use crate::digest::Digest;
use crate::manifest::Manifest;
use std::sync::Arc;

type Key = (String, Digest);

pub struct ForeignMemo(moka::sync::Cache<Key, Arc<ForeignLayer>>);

impl ForeignMemo {
    pub fn new(budget: u64) -> Self {
        ForeignMemo(
            moka::sync::Cache::builder()
                .weigher(|k: &Key, l: &Arc<ForeignLayer>| {
                    let bytes =
                        128 + k.0.len() + l.urls.iter().map(|u| 24 + u.len()).sum::<usize>();
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .max_capacity(budget)
                .build(),
        )
    }

    /// Remembers the foreign layers of a manifest served for `upstream`; returns how many it has.
    pub fn record(&self, upstream: &str, manifest: &Manifest) -> usize {
        let layers = foreign_layers(&manifest.bytes);
        for layer in &layers {
            let key = (upstream.to_owned(), layer.digest.clone());
            // Served again and again: write only what is new, so the hot path stays a read.
            if self.0.get(&key).is_none_or(|known| *known != *layer) {
                self.0.insert(key, Arc::new(layer.clone()));
            }
        }
        layers.len()
    }

    pub fn get(&self, upstream: &str, digest: &Digest) -> Option<Arc<ForeignLayer>> {
        self.0.get(&(upstream.to_owned(), digest.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn manifest_with(n: usize) -> Manifest {
        let layers: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","size":{i},"digest":"sha256:{i:064x}","urls":["https://mcr.microsoft.com/v2/w/blobs/{i}"]}}"#
                )
            })
            .collect();
        let bytes = format!(r#"{{"schemaVersion":2,"layers":[{}]}}"#, layers.join(","));
        Manifest {
            digest: Digest::sha256_of(bytes.as_bytes()),
            media_type: crate::media_type::DOCKER_MANIFEST.to_owned(),
            bytes: Bytes::from(bytes),
        }
    }

    #[test]
    fn layers_are_remembered_per_upstream() {
        let memo = ForeignMemo::new(1 << 20);
        assert_eq!(memo.record("mcr", &manifest_with(2)), 2);
        let d: Digest = format!("sha256:{:064x}", 1).parse().unwrap();
        assert_eq!(memo.get("mcr", &d).unwrap().size, 1);
        assert!(memo.get("docker.io", &d).is_none(), "another upstream's");
    }

    #[test]
    fn the_memo_stays_within_its_byte_budget() {
        let memo = ForeignMemo::new(16 << 10);
        memo.record("mcr", &manifest_with(1000));
        memo.0.run_pending_tasks();
        assert!(
            memo.0.weighted_size() <= 16 << 10,
            "{}",
            memo.0.weighted_size()
        );
        assert!(memo.0.entry_count() > 0);
    }
}
