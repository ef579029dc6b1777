//! The admin API's warm jobs: `POST /warm` starts one (through this archway's own pipeline, past
//! its listener and `[auth]`), `GET /warm/<id>` reports it. Bounded: a few jobs run at once, a
//! job names a bounded number of images, and only the latest jobs are remembered.

use super::{warm, Event, Outcome, Via, WarmOptions};
use crate::metrics::Metrics;
use crate::platform::Platform;
use crate::proxy::Proxy;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Jobs running at once; more are refused (429), not queued.
pub const MAX_RUNNING: usize = 4;
/// Images one job may name.
pub const MAX_IMAGES: usize = 1000;
/// Jobs remembered for `GET /warm/<id>` (the oldest finished ones are forgotten first).
pub const MAX_KEPT: usize = 64;
/// The largest `POST /warm` body.
pub const MAX_BODY: usize = 1 << 20;
/// A job's parallelism when it names none, and the most it may ask.
const DEFAULT_JOBS: usize = 4;
const MAX_JOBS: usize = 16;

/// `POST /warm`'s body.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmJobRequest {
    pub images: Vec<String>,
    #[serde(default)]
    pub platforms: Vec<String>,
    #[serde(default)]
    pub with_attestations: bool,
    /// Also make the answers this client gets (as `archway warm --for`).
    #[serde(default, rename = "for")]
    pub for_client: Option<String>,
    #[serde(default)]
    pub jobs: Option<usize>,
}

/// What `GET /warm/<id>` says.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobReport {
    pub id: String,
    /// `running` or `done`.
    pub state: &'static str,
    pub images: usize,
    pub images_done: usize,
    pub planned_bytes: u64,
    pub done_bytes: u64,
    pub failed: usize,
    pub outcomes: Vec<Outcome>,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("warming is switched off (admin_warm = false)")]
    Off,
    #[error("{MAX_RUNNING} warm jobs are running; try again when one is done")]
    Busy,
    #[error("{0}")]
    Invalid(String),
}

struct Job {
    id: String,
    images: usize,
    progress: Mutex<JobProgress>,
}

#[derive(Default)]
struct JobProgress {
    done: bool,
    planned_bytes: u64,
    done_bytes: u64,
    outcomes: Vec<Outcome>,
}

pub struct WarmJobs {
    proxy: Weak<Proxy>,
    metrics: Arc<Metrics>,
    enabled: bool,
    next: AtomicU64,
    jobs: Mutex<VecDeque<Arc<Job>>>,
}

impl WarmJobs {
    pub fn new(proxy: &Arc<Proxy>, enabled: bool) -> WarmJobs {
        WarmJobs {
            proxy: Arc::downgrade(proxy),
            metrics: proxy.metrics().clone(),
            enabled,
            // Ids differ across restarts, so a stale id is "not found", never another job.
            next: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0)
                    << 8,
            ),
            jobs: Mutex::new(VecDeque::new()),
        }
    }

    /// Starts a job; its id.
    pub fn start(&self, body: &[u8]) -> Result<String, JobError> {
        if !self.enabled {
            self.metrics.warm().job_refused();
            return Err(JobError::Off);
        }
        let req: WarmJobRequest =
            serde_json::from_slice(body).map_err(|e| JobError::Invalid(format!("body: {e}")))?;
        if req.images.is_empty() || req.images.len() > MAX_IMAGES {
            return Err(JobError::Invalid(format!(
                "images: give 1 to {MAX_IMAGES} image references"
            )));
        }
        for image in &req.images {
            crate::image_ref::ImageRef::parse(image)
                .map_err(|e| JobError::Invalid(format!("images: {e}")))?;
        }
        let platforms = req
            .platforms
            .iter()
            .map(|p| {
                Platform::parse(p.trim())
                    .map_err(|e| JobError::Invalid(format!("platforms: {p}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = req
            .for_client
            .as_deref()
            .map(super::ClientHints::parse)
            .transpose()
            .map_err(|e| JobError::Invalid(e.to_string()))?;
        let jobs = req.jobs.unwrap_or(DEFAULT_JOBS).clamp(1, MAX_JOBS);
        let proxy = self
            .proxy
            .upgrade()
            .ok_or_else(|| JobError::Invalid("archway is stopping".into()))?;
        let job = {
            let Ok(mut kept) = self.jobs.lock() else {
                return Err(JobError::Invalid("job table unavailable".into()));
            };
            let running = kept.iter().filter(|j| !j.is_done()).count();
            if running >= MAX_RUNNING {
                self.metrics.warm().job_refused();
                return Err(JobError::Busy);
            }
            let id = format!("{:x}", self.next.fetch_add(1, Ordering::Relaxed));
            let job = Arc::new(Job {
                id,
                images: req.images.len(),
                progress: Mutex::new(JobProgress::default()),
            });
            while kept.len() >= MAX_KEPT {
                // Forget the oldest finished job; running ones are at most MAX_RUNNING.
                match kept.iter().position(|j| j.is_done()) {
                    Some(i) => {
                        kept.remove(i);
                    }
                    None => break,
                }
            }
            kept.push_back(job.clone());
            job
        };
        let opts = WarmOptions {
            platforms,
            with_attestations: req.with_attestations,
            jobs,
            client,
        };
        let metrics = self.metrics.clone();
        metrics.warm().job_started();
        let id = job.id.clone();
        tracing::info!(job = %id, images = req.images.len(), "warm job started");
        tokio::spawn(async move {
            let via = Arc::new(Via::Local(proxy));
            let seen = job.clone();
            let m = metrics.clone();
            let events: super::Events = Arc::new(move |e: Event<'_>| {
                let Ok(mut p) = seen.progress.lock() else {
                    return;
                };
                match e {
                    Event::Planned { bytes, .. } => p.planned_bytes += bytes,
                    Event::Bytes { n, .. } => p.done_bytes += n,
                    Event::Done(o) => {
                        m.warm()
                            .image(o.error.is_none(), o.cached_bytes, o.fetched_bytes);
                        p.outcomes.push(o.clone());
                    }
                }
            });
            let outcomes = warm(via, &opts, &req.images, events).await;
            let ok = outcomes.iter().all(|o| o.error.is_none());
            if let Ok(mut p) = job.progress.lock() {
                // In the order asked, now that all are done.
                p.outcomes = outcomes;
                p.done = true;
            }
            metrics.warm().job_finished(ok);
            tracing::info!(job = %job.id, ok, "warm job done");
        });
        Ok(id)
    }

    pub fn report(&self, id: &str) -> Option<JobReport> {
        let kept = self.jobs.lock().ok()?;
        let job = kept.iter().find(|j| j.id == id)?;
        let p = job.progress.lock().ok()?;
        Some(JobReport {
            id: job.id.clone(),
            state: if p.done { "done" } else { "running" },
            images: job.images,
            images_done: p.outcomes.len(),
            planned_bytes: p.planned_bytes,
            done_bytes: p.done_bytes,
            failed: p.outcomes.iter().filter(|o| o.error.is_some()).count(),
            outcomes: p.outcomes.clone(),
        })
    }

    /// Every remembered job, oldest first.
    pub fn list(&self) -> Vec<JobReport> {
        let ids: Vec<String> = match self.jobs.lock() {
            Ok(kept) => kept.iter().map(|j| j.id.clone()).collect(),
            Err(_) => return Vec::new(),
        };
        ids.iter().filter_map(|id| self.report(id)).collect()
    }
}

impl Job {
    fn is_done(&self) -> bool {
        self.progress.lock().map(|p| p.done).unwrap_or(true)
    }
}
