//! What a person sees while warm works: in a terminal, a bar per image (bytes done / total, rate,
//! ETA) under an overall bar; elsewhere, plain lines at most one per `interval`; at the end, a
//! summary table. Bars and progress lines go to standard error; the outcome lines and the table
//! to standard output.

use super::{Event, Outcome};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub enum Style {
    /// A terminal: bars.
    Bars,
    /// Not a terminal: a progress line at most once per interval, and a line per image.
    Lines {
        interval: Duration,
        outcome_lines: bool,
    },
}

pub struct Progress {
    style: Style,
    images: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    multi: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    bars: HashMap<String, ProgressBar>,
    planned_bytes: u64,
    done_bytes: u64,
    done_images: usize,
    started: Option<Instant>,
    last_line: Option<Instant>,
}

impl Progress {
    pub fn new(style: Style, images: usize) -> Progress {
        let mut state = State {
            started: Some(Instant::now()),
            ..State::default()
        };
        if matches!(style, Style::Bars) {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
            let overall = multi.add(ProgressBar::new(0));
            overall.set_style(
                ProgressStyle::with_template(
                    "{prefix:>12.bold} [{bar:30.green/white}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            overall.set_prefix("all");
            overall.set_message(format!("0/{images} images"));
            overall.enable_steady_tick(Duration::from_millis(250));
            state.overall = Some(overall);
            state.multi = Some(multi);
        }
        Progress {
            style,
            images,
            state: Mutex::new(state),
        }
    }

    pub fn event(&self, e: Event<'_>) {
        let Ok(mut s) = self.state.lock() else { return };
        match e {
            Event::Planned {
                image,
                blobs,
                bytes,
            } => {
                s.planned_bytes += bytes;
                let planned = s.planned_bytes;
                if let Some(o) = &s.overall {
                    o.set_length(planned);
                }
                if let Some(multi) = &s.multi {
                    let bar = multi.insert_from_back(1, ProgressBar::new(bytes));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix:>12} [{bar:30.cyan/blue}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(short(image, 40));
                    bar.set_message(format!("{blobs} blobs"));
                    s.bars.insert(image.to_owned(), bar);
                }
            }
            Event::Bytes { image, n } => {
                s.done_bytes += n;
                if let Some(bar) = s.bars.get(image) {
                    bar.inc(n);
                }
                if let Some(o) = &s.overall {
                    o.inc(n);
                }
                if let Style::Lines { interval, .. } = self.style {
                    let now = Instant::now();
                    if s.last_line
                        .is_none_or(|t| now.duration_since(t) >= interval)
                    {
                        s.last_line = Some(now);
                        eprintln!("{}", self.line(&s, now));
                    }
                }
            }
            Event::Done(o) => {
                s.done_images += 1;
                let done = s.done_images;
                if let Some(bar) = s.bars.remove(&o.image) {
                    match &o.error {
                        None => bar.finish_with_message(format!(
                            "{} · {} cached, {} fetched",
                            o.platforms.join(","),
                            o.cached,
                            o.fetched
                        )),
                        Some(e) => bar.abandon_with_message(format!("FAILED: {}", short(e, 60))),
                    }
                }
                if let Some(overall) = &s.overall {
                    overall.set_message(format!("{done}/{} images", self.images));
                }
                if let Style::Lines {
                    outcome_lines: true,
                    ..
                } = self.style
                {
                    println!("{o}");
                }
            }
        }
    }

    fn line(&self, s: &State, now: Instant) -> String {
        let secs = s
            .started
            .map(|t| now.duration_since(t).as_secs_f64())
            .unwrap_or(0.0)
            .max(0.001);
        format!(
            "warm: {}/{} images, {} of {} planned, {}/s",
            s.done_images,
            self.images,
            bytes(s.done_bytes),
            bytes(s.planned_bytes),
            bytes((s.done_bytes as f64 / secs) as u64)
        )
    }

    /// Ends the bars (or prints the last progress line).
    pub fn finish(&self) {
        let Ok(s) = self.state.lock() else { return };
        if let Some(o) = &s.overall {
            o.finish();
        }
        if let Style::Lines { .. } = self.style {
            if s.done_bytes > 0 {
                eprintln!("{}", self.line(&s, Instant::now()));
            }
        }
    }
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let tail: String = s
            .chars()
            .rev()
            .take(max - 1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}

/// 1536 → "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS.get(unit).unwrap_or(&"TiB"))
    }
}

/// The end-of-run table: image, platforms, blobs, bytes, already cached, fetched, and the
/// outcome (why, for a failure).
pub fn summary_table(outcomes: &[Outcome]) -> String {
    let head = [
        "IMAGE",
        "PLATFORMS",
        "BLOBS",
        "BYTES",
        "CACHED",
        "FETCHED",
        "RESULT",
    ];
    let mut rows: Vec<[String; 7]> = outcomes
        .iter()
        .map(|o| {
            [
                o.image.clone(),
                if o.platforms.is_empty() {
                    "-".into()
                } else {
                    o.platforms.join(",")
                },
                o.blobs.to_string(),
                bytes(o.bytes),
                format!("{} ({})", o.cached, bytes(o.cached_bytes)),
                format!("{} ({})", o.fetched, bytes(o.fetched_bytes)),
                match &o.error {
                    None => "ok".into(),
                    Some(e) => format!("FAILED: {e}"),
                },
            ]
        })
        .collect();
    let total = outcomes.iter().fold(Outcome::default(), |mut t, o| {
        t.blobs += o.blobs;
        t.bytes += o.bytes;
        t.cached += o.cached;
        t.cached_bytes += o.cached_bytes;
        t.fetched += o.fetched;
        t.fetched_bytes += o.fetched_bytes;
        t
    });
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    rows.push([
        format!("total ({} images)", outcomes.len()),
        String::new(),
        total.blobs.to_string(),
        bytes(total.bytes),
        format!("{} ({})", total.cached, bytes(total.cached_bytes)),
        format!("{} ({})", total.fetched, bytes(total.fetched_bytes)),
        if failed == 0 {
            "ok".into()
        } else {
            format!("{failed} failed")
        },
    ]);
    let mut widths = head.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()).take(6) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            match widths.get(i).filter(|_| i < 6) {
                Some(w) => {
                    let _ = write!(l, "{c:<w$}  ");
                }
                None => l.push_str(c),
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&head);
    for r in &rows {
        line(&r.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_read_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(50 << 20), "50.0 MiB");
    }

    #[test]
    fn the_table_has_a_row_per_image_and_a_total() {
        let ok = Outcome {
            image: "alpine:3.20".into(),
            platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
            manifests: 3,
            blobs: 4,
            bytes: 8 << 20,
            cached: 1,
            cached_bytes: 1 << 20,
            fetched: 3,
            fetched_bytes: 7 << 20,
            error: None,
        };
        let bad = Outcome {
            image: "lib/missing:v1".into(),
            error: Some("v1: 404 Not Found".into()),
            ..Outcome::default()
        };
        let t = summary_table(&[ok, bad]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("IMAGE"), "{t}");
        assert!(
            lines[1].contains("linux/amd64,linux/arm64") && lines[1].ends_with("ok"),
            "{t}"
        );
        assert!(
            lines[1].contains("1 (1.0 MiB)") && lines[1].contains("3 (7.0 MiB)"),
            "{t}"
        );
        assert!(lines[2].ends_with("FAILED: v1: 404 Not Found"), "{t}");
        assert!(
            lines[3].starts_with("total (2 images)") && lines[3].ends_with("1 failed"),
            "{t}"
        );
        // Columns line up: PLATFORMS starts at the same place in every line.
        let col = lines[0].find("PLATFORMS").unwrap();
        assert_eq!(lines[1].find("linux/amd64"), Some(col), "{t}");
    }
}
