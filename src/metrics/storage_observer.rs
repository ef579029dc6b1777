//! The bucket's reports (`cache::bucket::StorageObserver`) as metrics and status-page entries,
//! so that `cache` needs no Prometheus.

use super::labels::*;
use super::Metrics;
use crate::cache::bucket::StorageObserver;
use std::time::Duration;

impl StorageObserver for Metrics {
    fn operation(&self, op: &'static str, status: &'static str, elapsed: Duration) {
        self.board.bucket_op(op, status);
        self.storage_operations
            .get_or_create(&StorageOpLabels { op, status })
            .inc();
        self.storage_duration
            .get_or_create(&OpLabels { op })
            .observe(elapsed.as_secs_f64());
    }

    fn blob_fill(&self, source: &'static str) {
        Metrics::blob_fill(self, source);
    }

    fn bypassed(&self, what: &'static str) {
        self.storage_bypassed
            .get_or_create(&WhatLabels { what })
            .inc();
    }

    fn backfilled(&self, outcome: &'static str) {
        self.storage_backfilled
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    fn fleet_fill(&self, outcome: &'static str) {
        self.fleet_fills
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    fn fleet_fetch(&self, what: &'static str, outcome: &'static str) {
        self.fleet_fetches
            .get_or_create(&WhatOutcomeLabels { what, outcome })
            .inc();
    }

    fn lease_takeover(&self) {
        self.lease_takeovers.inc();
    }

    fn lease_seen(&self, owner: &str) {
        self.board.lease_seen(owner);
    }

    fn lease_held(&self, held: bool) {
        if held {
            self.leases_held.inc();
        } else {
            self.leases_held.dec();
        }
        self.board.lease_held(held);
    }

    fn record_rejected(&self, kind: &'static str, reason: &'static str) {
        self.records_rejected
            .get_or_create(&KindReasonLabels { kind, reason })
            .inc();
    }

    fn leases_swept(&self, count: u64) {
        self.leases_swept.inc_by(count);
    }

    fn uploads_aborted(&self, count: u64) {
        self.uploads_aborted.inc_by(count);
    }

    fn peer_bytes(&self, bytes: u64) {
        self.peer_bytes.inc_by(bytes);
    }

    fn cold_range_bytes(&self, source: &'static str, bytes: u64) {
        self.cold_range_bytes
            .get_or_create(&SourceLabels { source })
            .inc_by(bytes);
    }
}
