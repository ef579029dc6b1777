//! What converts a zstd layer to its tar, shared by the manifest path (`layers.rs`) and the blob
//! path (`blobs.rs`): the conversion permits (`conversion.max_concurrent`), the bounds, and which
//! zstd layer each converted digest comes from, per upstream — so that a GET of a converted
//! layer no longer cached converts it again. Which zstd layer is also written to a small log
//! under `data_dir` (`conversions/sources`), read back at start: after a restart or an upgrade, a
//! client mid-pull whose tar was evicted still gets it made again.

use crate::body::UpstreamBody;
use crate::cache::blob::{IncomingBlob, OnSettled, SourceError};
use crate::config::ConversionConfig;
use crate::digest::Digest;
use crate::unzstd::{self, Bounds};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Converted layers remembered with their zstd source, per upstream.
const MAX_SOURCES: u64 = 100_000;

/// What converts, shared by the manifest path and the blob path.
pub(crate) struct Converter {
    permits: Arc<Semaphore>,
    bounds: Bounds,
    pub(crate) max_layer_size: u64,
    pub(crate) max_wait: Duration,
    /// (upstream, converted digest) → the zstd layer it is made from.
    sources: moka::sync::Cache<(String, Digest), Digest>,
    /// The same, on disk.
    log: Mutex<SourceLog>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Converter {
    /// `data_dir`: where the sources' log is kept (`conversions/sources`).
    pub(crate) fn new(
        config: &ConversionConfig,
        metrics: Arc<crate::metrics::Metrics>,
        data_dir: &Path,
    ) -> Self {
        let sources = moka::sync::Cache::builder()
            .max_capacity(MAX_SOURCES)
            .build();
        let log = SourceLog::open(data_dir.join("conversions").join("sources"), &sources);
        Converter {
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1) as usize)),
            bounds: Bounds {
                max_output: config.max_output,
                max_ratio: config.max_ratio,
            },
            max_layer_size: config.max_layer_size,
            max_wait: config.max_wait,
            sources,
            log: Mutex::new(log),
            metrics,
        }
    }

    /// The zstd layer `digest` was converted from, for `upstream`.
    pub(crate) fn source_of(&self, upstream: &str, digest: &Digest) -> Option<Digest> {
        self.sources.get(&(upstream.to_owned(), digest.clone()))
    }

    pub(crate) fn remember(&self, upstream: &str, converted: &Digest, source: &Digest) {
        let key = (upstream.to_owned(), converted.clone());
        if self.sources.get(&key).as_ref() != Some(source) {
            self.sources.insert(key, source.clone());
            // One short line into the page cache, once per new layer: not worth a blocking
            // thread.
            let mut log = self
                .log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            log.append(upstream, converted, source, &self.sources);
        }
    }

    /// The tar of a zstd layer, as a fill's source: decompressed as it arrives, once a
    /// conversion permit is free.
    pub(crate) async fn decompress(&self, zstd: UpstreamBody) -> Result<IncomingBlob, SourceError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(SourceError::new)?;
        // A whole zstd stream is a conversion only if its tar is the diff_id: counted once
        // the fill has checked it (a mismatch is `failed`), whichever of the two ends last.
        let outcome = Arc::new(std::sync::Mutex::new(Outcome::default()));
        let metrics = self.metrics.clone();
        let ended = outcome.clone();
        let report: unzstd::Report = Box::new(move |outcome, zstd, tar, took| {
            if let Some((outcome, zstd, tar, took)) = lock(&ended).ended(outcome, zstd, tar, took) {
                metrics.layer_conversion(outcome, zstd, tar, took);
            }
        });
        let metrics = self.metrics.clone();
        let settled = OnSettled::new(move |verified| {
            if let Some((outcome, zstd, tar, took)) = lock(&outcome).settled(verified) {
                metrics.layer_conversion(outcome, zstd, tar, took);
            }
        });
        Ok(IncomingBlob {
            size: None,
            body: unzstd::decompress(zstd, self.bounds, permit, report),
            from_parent: false,
            on_settled: Some(settled),
        })
    }
}

/// What the decompression reported and what the fill said of its output, until both are in.
#[derive(Default)]
struct Outcome {
    decompressed: Option<(&'static str, u64, u64, Duration)>,
    verified: Option<bool>,
}

type Counted = (&'static str, u64, u64, Duration);

impl Outcome {
    /// The decompression ended: counted now unless a whole stream waits for the fill's word.
    fn ended(
        &mut self,
        outcome: &'static str,
        zstd: u64,
        tar: u64,
        took: Duration,
    ) -> Option<Counted> {
        self.decompressed = Some((outcome, zstd, tar, took));
        self.count()
    }

    fn settled(&mut self, verified: bool) -> Option<Counted> {
        self.verified = Some(verified);
        self.count()
    }

    fn count(&mut self) -> Option<Counted> {
        let (outcome, zstd, tar, took) = self.decompressed?;
        let outcome = match (outcome, self.verified) {
            ("converted", None) => return None,
            ("converted", Some(false)) => "failed",
            (outcome, _) => outcome,
        };
        // Counted once: the other side, arriving later, finds nothing.
        self.decompressed = None;
        Some((outcome, zstd, tar, took))
    }
}

fn lock(m: &std::sync::Mutex<Outcome>) -> std::sync::MutexGuard<'_, Outcome> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lines of the sources' log past which it is rewritten from the memory (so at most this many,
/// about 170 bytes each).
const MAX_LOG_LINES: u64 = 2 * MAX_SOURCES;

/// The sources remembered, as lines `upstream converted source` appended to a file. A write
/// that fails is logged and the memory still holds it: only a restart would forget it.
struct SourceLog {
    path: PathBuf,
    file: Option<std::fs::File>,
    lines: u64,
    /// `MAX_LOG_LINES` (smaller in tests).
    max_lines: u64,
}

impl SourceLog {
    /// The log at `path`, its records read into `into` (malformed lines are skipped).
    fn open(path: PathBuf, into: &moka::sync::Cache<(String, Digest), Digest>) -> Self {
        Self::open_capped(path, into, MAX_LOG_LINES)
    }

    fn open_capped(
        path: PathBuf,
        into: &moka::sync::Cache<(String, Digest), Digest>,
        max_lines: u64,
    ) -> Self {
        let mut lines = 0;
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines() {
                    lines += 1;
                    let mut parts = line.split(' ');
                    let (Some(upstream), Some(converted), Some(source), None) =
                        (parts.next(), parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    if let (Ok(converted), Ok(source)) =
                        (converted.parse::<Digest>(), source.parse::<Digest>())
                    {
                        into.insert((upstream.to_owned(), converted), source);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the converted layers' sources");
            }
        }
        let mut log = SourceLog {
            path,
            file: None,
            lines,
            max_lines,
        };
        if log.lines > log.max_lines {
            log.rewrite(into);
        }
        log
    }

    fn append(
        &mut self,
        upstream: &str,
        converted: &Digest,
        source: &Digest,
        all: &moka::sync::Cache<(String, Digest), Digest>,
    ) {
        // An upstream name is one word (config names); anything else is not written.
        if upstream.is_empty() || upstream.contains(char::is_whitespace) {
            return;
        }
        if self.lines >= self.max_lines {
            self.rewrite(all);
            return;
        }
        let line = format!("{upstream} {converted} {source}\n");
        let written = self.file().and_then(|f| f.write_all(line.as_bytes()));
        match written {
            Ok(()) => self.lines += 1,
            Err(e) => {
                self.file = None;
                tracing::warn!(path = %self.path.display(), error = %e, "cannot record a converted layer's source");
            }
        }
    }

    fn file(&mut self) -> std::io::Result<&mut std::fs::File> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.file = Some(f);
        }
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no file"))
    }

    /// The log written anew from the memory (which holds at most `MAX_SOURCES`).
    fn rewrite(&mut self, all: &moka::sync::Cache<(String, Digest), Digest>) {
        let mut text = String::new();
        let mut lines = 0;
        for (key, source) in all.iter() {
            let (upstream, converted) = &*key;
            text.push_str(&format!("{upstream} {converted} {source}\n"));
            lines += 1;
        }
        let tmp = self.path.with_extension("tmp");
        let done = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.path));
        self.file = None;
        match done {
            Ok(()) => self.lines = lines,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot rewrite the converted layers' sources");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sources_log_is_read_back_and_skips_what_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conversions").join("sources");
        let cache = || {
            moka::sync::Cache::builder()
                .max_capacity(MAX_SOURCES)
                .build()
        };
        let (tar, zstd) = (Digest::sha256_of(b"tar"), Digest::sha256_of(b"zstd"));
        let first = cache();
        let mut log = SourceLog::open(path.clone(), &first);
        first.insert(("hub".to_owned(), tar.clone()), zstd.clone());
        log.append("hub", &tar, &zstd, &first);
        log.append("two words", &tar, &zstd, &first);
        drop(log);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("hub not-a-digest sha256:00\ntorn line\n");
        std::fs::write(&path, text).unwrap();
        let again = cache();
        let log = SourceLog::open(path, &again);
        assert_eq!(again.get(&("hub".to_owned(), tar.clone())), Some(zstd));
        assert_eq!(again.iter().count(), 1);
        assert_eq!(log.lines, 3);
    }

    /// The log never grows past its cap: an append at the cap rewrites it from the memory (one
    /// line per remembered layer, duplicates gone), and a log found longer than the cap at start
    /// is rewritten at once.
    #[test]
    fn the_sources_log_is_rewritten_from_memory_at_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sources");
        let memory = moka::sync::Cache::builder()
            .max_capacity(MAX_SOURCES)
            .build();
        let layers: Vec<_> = (0..3u8)
            .map(|i| (Digest::sha256_of(&[i]), Digest::sha256_of(&[i, i])))
            .collect();
        let file_lines = |path: &Path| std::fs::read_to_string(path).unwrap().lines().count();
        let mut log = SourceLog::open_capped(path.clone(), &memory, 5);
        for (converted, source) in &layers {
            memory.insert(("hub".to_owned(), converted.clone()), source.clone());
            log.append("hub", converted, source, &memory);
        }
        // The same layers again (a restart that forgot nothing would not, but a log may hold
        // them twice after a failed rewrite): up to the cap, appended.
        log.append("hub", &layers[0].0, &layers[0].1, &memory);
        log.append("hub", &layers[1].0, &layers[1].1, &memory);
        assert_eq!((log.lines, file_lines(&path)), (5, 5));
        // At the cap: rewritten from the memory.
        log.append("hub", &layers[2].0, &layers[2].1, &memory);
        assert_eq!((log.lines, file_lines(&path)), (3, 3));
        log.append("hub", &layers[2].0, &layers[2].1, &memory);
        assert_eq!((log.lines, file_lines(&path)), (4, 4), "appending again");
        drop(log);

        // Longer than a smaller cap at start: rewritten at once, and everything read back.
        let again = moka::sync::Cache::builder()
            .max_capacity(MAX_SOURCES)
            .build();
        let log = SourceLog::open_capped(path.clone(), &again, 3);
        assert_eq!((log.lines, file_lines(&path)), (3, 3));
        for (converted, source) in &layers {
            assert_eq!(
                again.get(&("hub".to_owned(), converted.clone())).as_ref(),
                Some(source)
            );
        }
    }
}
