//! `archway warm`'s command line: where the images come from, where the requests go (a running
//! archway, or an in-process one on a data_dir), what the person sees, and the exit status
//! (0 all warmed, 1 something failed and is named, 2 usage, 130 interrupted).

use super::report::{summary_table, Progress, Style};
use super::{ClientHints, Events, Outcome, Via, WarmOptions};
use crate::config::{Config, Secret};
use crate::platform::Platform;
use clap::{Args, ValueEnum};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a seeding run waits, at its end, for commits and bucket copies.
const SETTLE: Duration = Duration::from_secs(60);

#[derive(Args, Debug)]
pub struct WarmArgs {
    /// The archway to fill: http(s)://host:port (its registry listener). Without it, warm fills
    /// the data_dir of --config / --data-dir itself (seeding; no archway may be serving it).
    #[arg(long, env = "ARCHWAY_SERVER")]
    pub server: Option<String>,
    /// A CA certificate (PEM) to trust for --server, beside the system's.
    #[arg(long, requires = "server")]
    pub ca: Option<PathBuf>,
    /// The user for --server's `[auth]`; the password comes from ARCHWAY_PASSWORD or
    /// --password-file.
    #[arg(long, env = "ARCHWAY_USERNAME", requires = "server")]
    pub username: Option<String>,
    /// A file holding the password for --username (trailing newline ignored).
    #[arg(long, requires = "username")]
    pub password_file: Option<PathBuf>,
    /// Images, one a line ("-": standard input); blank lines and `#` comments are skipped.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Platforms to warm, comma-separated (linux/amd64,linux/arm64,windows(10.0.17763)/amd64).
    /// Default: every runnable platform of an index (with --for: that client's).
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<String>,
    /// Also the attestation manifests (SBOM, provenance) of an index.
    #[arg(long)]
    pub with_attestations: bool,
    /// Ask as this client asks, so its answers (platform child, schema2, tars for zstd layers)
    /// are made now: a User-Agent, or 'docker/20.10 (windows)', 'docker/17.06 (linux/arm64)',
    /// 'containerd', 'skopeo'.
    #[arg(long = "for")]
    pub for_client: Option<String>,
    /// Blobs fetched at once (and images worked on at once).
    #[arg(short = 'j', long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Print the outcome as JSON (one array) instead of lines and a table.
    #[arg(long)]
    pub json: bool,
    /// Progress: bars in a terminal, plain lines elsewhere (auto), or as chosen.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Seconds between plain progress lines.
    #[arg(long, default_value_t = 5.0)]
    pub progress_interval: f64,
    /// Also pin each image (its --platform platforms), so the LRU never evicts it: through
    /// --admin's /pins with --server, in the data_dir's own pins when seeding.
    #[arg(long)]
    pub pin: bool,
    /// The admin listener of --server's archway (http://host:port), for --pin.
    #[arg(long, env = "ARCHWAY_ADMIN")]
    pub admin: Option<String>,
    /// Image references (alpine, docker.io/library/alpine:3.20, ghcr.io/org/app@sha256:…).
    pub images: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum ProgressMode {
    Auto,
    Bars,
    Lines,
    None,
}

/// Runs `archway warm`. `local` builds the config for a run without --server (seeding).
pub async fn run(args: WarmArgs, local: impl FnOnce() -> Result<Config, String>) -> ExitCode {
    let usage = |m: String| {
        eprintln!("archway: warm: {m}");
        ExitCode::from(2)
    };
    let mut images = args.images.clone();
    if let Some(file) = &args.file {
        match image_list(file) {
            Ok(t) => images.extend(
                t.lines()
                    .map(|l| l.split('#').next().unwrap_or(""))
                    .flat_map(str::split_whitespace)
                    .map(str::to_owned),
            ),
            Err(e) => return usage(e),
        }
    }
    if images.is_empty() {
        return usage("no images (give them as arguments or with -f FILE)".into());
    }
    let mut platforms: Vec<Platform> = Vec::new();
    for p in &args.platform {
        match Platform::parse(p.trim()) {
            Ok(p) => platforms.push(p),
            Err(e) => return usage(format!("--platform {p}: {e}")),
        }
    }
    let client = match args
        .for_client
        .as_deref()
        .map(ClientHints::parse)
        .transpose()
    {
        Ok(c) => c,
        Err(e) => return usage(e.to_string()),
    };
    let (via, local_proxy) = match &args.server {
        Some(server) => {
            let credentials = match credentials(&args) {
                Ok(c) => c,
                Err(e) => return usage(e),
            };
            match Via::remote(server, args.ca.as_deref(), credentials) {
                Ok(v) => (v, None),
                Err(e) => return usage(e.to_string()),
            }
        }
        None => {
            let mut cfg = match local() {
                Ok(c) => c,
                Err(e) => return usage(e),
            };
            // Requests come from this process, not a client; and it takes no part in a
            // fleet's leases or peer fetches, having no listener for peers to reach.
            cfg.auth = None;
            cfg.fleet = None;
            let dir = cfg.data_dir.clone();
            match crate::proxy::Proxy::new(cfg) {
                Ok(p) => {
                    let p = Arc::new(p);
                    (Via::Local(p.clone()), Some((p, dir)))
                }
                Err(e) => return usage(format!("data_dir {}: {e}", dir.display())),
            }
        }
    };
    // Pinned first: the manifests warm pulls then fill each pin as they pass.
    if args.pin {
        let pinned = match (&local_proxy, &args.admin) {
            (Some((proxy, _)), _) => {
                pin_all(&images, &args.platform, |i, p| async move {
                    proxy.add_pin(&i, &p).await.map_err(|e| e.to_string())
                })
                .await
            }
            (None, Some(admin)) => {
                pin_all(&images, &args.platform, |i, p| async move {
                    crate::pins_client::add(admin, &i, &p).await
                })
                .await
            }
            (None, None) => {
                return usage(
                    "--pin with --server needs --admin http://host:port (its admin listener)"
                        .into(),
                )
            }
        };
        if let Err(e) = pinned {
            eprintln!("archway: warm --pin: {e}");
            return ExitCode::FAILURE;
        }
    }
    let opts = WarmOptions {
        platforms,
        with_attestations: args.with_attestations,
        jobs: usize::from(args.jobs),
        client,
    };
    let mode = match args.progress {
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bars,
        ProgressMode::Auto => ProgressMode::Lines,
        m => m,
    };
    let style = match mode {
        ProgressMode::Bars => Some(Style::Bars),
        ProgressMode::Lines => Some(Style::Lines {
            interval: Duration::from_secs_f64(args.progress_interval.clamp(0.0, 3600.0)),
            outcome_lines: !args.json,
        }),
        _ => None,
    };
    let progress = style.map(|s| Arc::new(Progress::new(s, images.len())));
    let finished: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let events: Events = {
        let (progress, finished) = (progress.clone(), finished.clone());
        Arc::new(move |e| {
            if let super::Event::Done(o) = &e {
                if let Ok(mut f) = finished.lock() {
                    f.push((*o).clone());
                }
            }
            if let Some(p) = &progress {
                p.event(e);
            }
        })
    };
    let work = super::warm(Arc::new(via), &opts, &images, events);
    let (outcomes, interrupted) = tokio::select! {
        o = work => (o, false),
        _ = tokio::signal::ctrl_c() => {
            // The work is dropped here: its requests end, and in a data_dir no partial file
            // stays (below). What was done stays done.
            (finished.lock().map(|f| f.clone()).unwrap_or_default(), true)
        }
    };
    if let Some(p) = &progress {
        p.finish();
    }
    if let Some((proxy, dir)) = &local_proxy {
        // As archway does at shutdown: verified blobs finish their commit (and their copy to
        // the bucket), and each object's access record is written beside it, so the archway
        // that serves this directory later knows who may read what without asking upstream.
        proxy.blob_store().finish_commits(SETTLE).await;
        proxy.flush_access_records();
        proxy.pins().flush().await;
        if interrupted {
            remove_own_partials(dir);
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&outcomes).unwrap_or_default()
        );
    } else {
        print!("{}", summary_table(&outcomes));
    }
    if interrupted {
        eprintln!(
            "archway: warm: interrupted: {} of {} images done",
            outcomes.len(),
            images.len()
        );
        return ExitCode::from(130);
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        let names: Vec<&str> = failed.iter().map(|o| o.image.as_str()).collect();
        eprintln!(
            "archway: warm: {} of {} failed: {}",
            failed.len(),
            outcomes.len(),
            names.join(", ")
        );
        ExitCode::FAILURE
    }
}

/// Pins every image through `add` (the admin API or the in-process pins), naming the first
/// that fails.
async fn pin_all<F, Fut>(images: &[String], platforms: &[String], add: F) -> Result<(), String>
where
    F: Fn(String, Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let platforms: Vec<String> = platforms.iter().map(|p| p.trim().to_owned()).collect();
    for image in images {
        add(image.clone(), platforms.clone())
            .await
            .map_err(|e| format!("{image}: {e}"))?;
    }
    Ok(())
}

/// The text of `-f FILE` ("-": standard input), or why not in the words every file read uses.
fn image_list(file: &Path) -> Result<String, String> {
    if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("--file -: {e}"))
    } else {
        crate::key_file::read_to_string("--file", file).map_err(|e| e.to_string())
    }
}

fn credentials(args: &WarmArgs) -> Result<Option<(String, Secret)>, String> {
    let Some(user) = &args.username else {
        return Ok(None);
    };
    let password = match &args.password_file {
        Some(path) => crate::key_file::read_to_string("--password-file", path)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
            .map_err(|e| e.to_string())?,
        None => std::env::var("ARCHWAY_PASSWORD")
            .map_err(|_| "--username needs ARCHWAY_PASSWORD or --password-file".to_owned())?,
    };
    Ok(Some((user.clone(), Secret::new(password))))
}

/// This process's unfinished downloads in `dir` (`tmp/<pid>-….part`): a stop mid-blob leaves
/// nothing (a committed blob is whole; the next start would clear the rest anyway).
fn remove_own_partials(dir: &Path) {
    let prefix = format!("{}-", std::process::id());
    let Ok(entries) = std::fs::read_dir(dir.join("tmp")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".part") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        warm: WarmArgs,
    }

    #[test]
    fn a_missing_file_reads_as_every_other_missing_file_naming_flag_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let m = missing.display().to_string();
        assert_eq!(
            image_list(&missing).unwrap_err(),
            format!("`--file`: cannot read {m}: file not found")
        );
        let cli = Cli::try_parse_from([
            "warm",
            "--server",
            "http://127.0.0.1:9",
            "--username",
            "u",
            "--password-file",
            &m,
        ])
        .unwrap();
        assert_eq!(
            credentials(&cli.warm).err(),
            Some(format!(
                "`--password-file`: cannot read {m}: file not found"
            ))
        );
    }
}
