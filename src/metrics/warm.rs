//! `archway_warm_*`: the admin API's warm jobs (`POST /warm`).

use super::{register, Described, OutcomeLabels, SourceLabels};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Default)]
pub struct WarmMetrics {
    jobs: Family<OutcomeLabels, Counter>,
    running: Gauge,
    images: Family<OutcomeLabels, Counter>,
    bytes: Family<SourceLabels, Counter>,
}

impl WarmMetrics {
    pub(super) fn register(registry: &mut Registry, described: &mut Vec<Described>) -> Self {
        let m = WarmMetrics::default();
        register(
            registry,
            described,
            "archway_warm_jobs",
            "Warm jobs (admin API POST /warm) finished, by outcome: ok, failed (an image failed), refused (too many running or warming off)",
            m.jobs.clone(),
        );
        register(
            registry,
            described,
            "archway_warm_jobs_running",
            "Warm jobs running now",
            m.running.clone(),
        );
        register(
            registry,
            described,
            "archway_warm_images",
            "Images warmed by admin API jobs, by outcome: ok, failed",
            m.images.clone(),
        );
        register(
            registry,
            described,
            "archway_warm_bytes",
            "Blob bytes read by admin API warm jobs, by source: cache (already cached), fetched (filled for the job)",
            m.bytes.clone(),
        );
        for outcome in ["ok", "failed", "refused"] {
            drop(m.jobs.get_or_create(&OutcomeLabels { outcome }));
        }
        for outcome in ["ok", "failed"] {
            drop(m.images.get_or_create(&OutcomeLabels { outcome }));
        }
        for source in ["cache", "fetched"] {
            drop(m.bytes.get_or_create(&SourceLabels { source }));
        }
        m
    }

    pub fn job_started(&self) {
        self.running.inc();
    }

    pub fn job_refused(&self) {
        self.jobs
            .get_or_create(&OutcomeLabels { outcome: "refused" })
            .inc();
    }

    pub fn job_finished(&self, ok: bool) {
        self.running.dec();
        let outcome = if ok { "ok" } else { "failed" };
        self.jobs.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn image(&self, ok: bool, cached_bytes: u64, fetched_bytes: u64) {
        let outcome = if ok { "ok" } else { "failed" };
        self.images.get_or_create(&OutcomeLabels { outcome }).inc();
        self.bytes
            .get_or_create(&SourceLabels { source: "cache" })
            .inc_by(cached_bytes);
        self.bytes
            .get_or_create(&SourceLabels { source: "fetched" })
            .inc_by(fetched_bytes);
    }
}
