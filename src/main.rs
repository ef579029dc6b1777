#![forbid(unsafe_code)]

use archway::config::{self, Config, ConfigError, LogFormat, UpstreamConfig};
use archway::Archway;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "archway",
    version,
    about = "A platform-resolving pull-through proxy for container registries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry mirror.
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file; without one archway is a Docker Hub mirror on 0.0.0.0:5000.
    #[arg(long, env = "ARCHWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (repeat for several); replaces `listen`.
    #[arg(long, env = "ARCHWAY_LISTEN", value_delimiter = ',')]
    listen: Vec<String>,
    /// Cache directory; replaces `data_dir`.
    #[arg(long, env = "ARCHWAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Mirror this registry (e.g. http://127.0.0.1:5000) as the only, default upstream.
    #[arg(long, env = "ARCHWAY_UPSTREAM")]
    upstream: Option<String>,
    /// Blob cache budget, e.g. 50GiB; replaces `cache.max_size`.
    #[arg(long, env = "ARCHWAY_CACHE_MAX_SIZE")]
    cache_max_size: Option<String>,
    /// How long a tag answer is fresh, e.g. 5m; replaces `cache.tag_ttl`.
    #[arg(long, env = "ARCHWAY_TAG_TTL")]
    tag_ttl: Option<String>,
    /// text or json; replaces `log_format`.
    #[arg(long, env = "ARCHWAY_LOG_FORMAT")]
    log_format: Option<String>,
}

impl ServeArgs {
    fn into_config(self) -> Result<Config, ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if !self.listen.is_empty() {
            cfg.listen = config::parse_listen("--listen", &self.listen)?;
        }
        if let Some(d) = self.data_dir {
            cfg.data_dir = d;
        }
        if let Some(url) = self.upstream {
            let mut u = UpstreamConfig::from_url(None, &url).map_err(|_| ConfigError::Invalid {
                key: "--upstream".into(),
                message: format!("`{url}` is not an http:// or https:// registry URL"),
            })?;
            u.default = true;
            cfg.upstreams = vec![u];
        }
        if let Some(s) = self.cache_max_size {
            cfg.cache.max_size = config::parse_size("--cache-max-size", &s)?;
        }
        if let Some(s) = self.tag_ttl {
            cfg.cache.tag_ttl = config::parse_duration("--tag-ttl", &s)?;
        }
        if let Some(s) = self.log_format {
            cfg.log_format = config::parse_log_format("--log-format", &s)?;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ARCHWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let cfg = match args.into_config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("archway: {e}");
                    return ExitCode::from(2);
                }
            };
            init_tracing(cfg.log_format);
            let upstreams: Vec<String> = cfg
                .upstreams
                .iter()
                .map(|u| format!("{}={}", u.name, u.url))
                .collect();
            tracing::info!(data_dir = %cfg.data_dir.display(), upstreams = ?upstreams, "starting");
            let server = match Archway::start(cfg).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start");
                    eprintln!("archway: {e}");
                    return ExitCode::FAILURE;
                }
            };
            shutdown_signal().await;
            tracing::info!("shutting down");
            server.shutdown().await;
            ExitCode::SUCCESS
        }
    }
}
