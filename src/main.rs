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
    /// Show which upstream, route, platform and manifest a client would get for an image.
    Explain(ExplainArgs),
    /// Probe a health endpoint (for container HEALTHCHECKs, where there is no curl): exit 0 on 2xx.
    Healthcheck(HealthcheckArgs),
    /// The configuration keys: `--print-defaults` prints every key with its default and doc.
    Config(ConfigArgs),
    /// Fill an archway's cache with images: a running one's (--server), or a data_dir (seeding).
    Warm(WarmCommand),
    /// List a running archway's pinned images (its admin API's /pins), with their sizes.
    Pins(PinsArgs),
}

#[derive(Args)]
struct PinsArgs {
    /// The admin listener: http://host:port.
    #[arg(long, env = "ARCHWAY_ADMIN")]
    admin: String,
    /// Print the list as JSON, as the admin API sends it.
    #[arg(long)]
    json: bool,
}

async fn run_pins(args: PinsArgs) -> ExitCode {
    match archway::pins_client::list(&args.admin).await {
        Ok(pins) if args.json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&pins).unwrap_or_else(|_| "[]".into())
            );
            ExitCode::SUCCESS
        }
        Ok(pins) => {
            print!("{}", archway::pins_client::table(&pins));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("archway: pins: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Args)]
struct WarmCommand {
    #[command(flatten)]
    warm: archway::warm::cli::WarmArgs,
    /// Without --server: the config whose data_dir (and upstreams, [storage]) warm fills.
    #[arg(long, env = "ARCHWAY_CONFIG", conflicts_with = "server")]
    config: Option<PathBuf>,
    /// Without --server: the data_dir to fill (overrides the config's).
    #[arg(long, conflicts_with = "server")]
    data_dir: Option<PathBuf>,
    /// Without --server: the upstream registry URL, as for `serve`.
    #[arg(long, conflicts_with = "server")]
    upstream: Option<String>,
}

async fn run_warm(args: WarmCommand) -> ExitCode {
    let WarmCommand {
        warm,
        config,
        data_dir,
        upstream,
    } = args;
    archway::warm::cli::run(warm, move || {
        ServeArgs {
            config,
            listen: Vec::new(),
            admin_listen: None,
            data_dir,
            upstream,
            cache_max_size: None,
            tag_ttl: None,
            log_format: None,
            parent: Vec::new(),
            peer_url: None,
        }
        .into_config()
        .map_err(|e| e.to_string())
    })
    .await
}

#[derive(Args)]
struct ConfigArgs {
    /// Print every key the config file takes, with its default (or an example) and a one-line doc.
    #[arg(long, required = true)]
    print_defaults: bool,
}

#[derive(Args)]
struct HealthcheckArgs {
    /// The URL to GET (plain http). Default: /healthz on the config's `admin_listen`.
    #[arg(long)]
    url: Option<String>,
    /// Config whose `admin_listen` to probe when no --url is given.
    #[arg(long, env = "ARCHWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3)]
    timeout: u64,
}

/// `/healthz` on the admin listener, reached over loopback when it listens on every address.
fn admin_health_url(config: Option<PathBuf>) -> Result<String, String> {
    let cfg = match config {
        Some(path) => Config::from_file(&path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let mut addr = cfg
        .admin_listen
        .ok_or("admin_listen is not set: give --url or configure admin_listen")?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(format!("http://{addr}/healthz"))
}

async fn run_healthcheck(args: HealthcheckArgs) -> ExitCode {
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let url = match args.url {
        Some(u) => u,
        None => match admin_health_url(args.config) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("archway: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("archway: --url: {e}");
            return ExitCode::from(2);
        }
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let probe = client.get(uri);
    match tokio::time::timeout(std::time::Duration::from_secs(args.timeout), probe).await {
        Ok(Ok(resp)) if resp.status().is_success() => ExitCode::SUCCESS,
        Ok(Ok(resp)) => {
            eprintln!("archway: {url} answered {}", resp.status());
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("archway: {url}: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("archway: {url}: no answer within {} s", args.timeout);
            ExitCode::FAILURE
        }
    }
}

#[derive(Args)]
struct ExplainArgs {
    /// The image as a client names it: alpine, ghcr.io/org/app:v1, 127.0.0.1:5000/x@sha256:…
    image: String,
    /// The client's User-Agent, e.g. "docker/17.06.2-ee-19 … os/linux arch/arm64".
    #[arg(long)]
    user_agent: Option<String>,
    /// One Accept header line (repeat for several). None given: the client sends no Accept.
    #[arg(long)]
    accept: Vec<String>,
    /// Sent as X-Meta-Platform, e.g. linux/arm/v7 or windows(10.0.17763)/amd64.
    #[arg(long)]
    platform: Option<String>,
    /// The client's address, for client_cidr routes.
    #[arg(long)]
    client_ip: Option<std::net::IpAddr>,
    /// The Host header, for host routes.
    #[arg(long)]
    host: Option<String>,
    /// The archway port the client connects to, for port routes (default: the first listen port).
    #[arg(long)]
    port: Option<u16>,
    /// Ask with HEAD instead of GET.
    #[arg(long)]
    head: bool,
    /// TOML config file (the embedded defaults otherwise).
    #[arg(long, env = "ARCHWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Mirror this registry as the only, default upstream.
    #[arg(long)]
    upstream: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file; without one archway is a Docker Hub mirror on 0.0.0.0:5000.
    #[arg(long, env = "ARCHWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (repeat for several); replaces `listen`.
    #[arg(long, env = "ARCHWAY_LISTEN", value_delimiter = ',')]
    listen: Vec<String>,
    /// Address for /metrics, /healthz and /readyz (e.g. 127.0.0.1:9091, or "off"); replaces
    /// `admin_listen`.
    #[arg(long, env = "ARCHWAY_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// Cache directory; replaces `data_dir`.
    #[arg(long, env = "ARCHWAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Mirror this registry (e.g. http://127.0.0.1:5001; not archway's own port) as the only, default upstream.
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
    /// Parent archway URL (repeat, or comma-separate, for several); replaces `parent`.
    #[arg(long, env = "ARCHWAY_PARENT", value_delimiter = ',')]
    parent: Vec<String>,
    /// How the other fleet replicas reach this one (e.g. http://10.1.2.3:5000); replaces
    /// `fleet.peer_url` (needs `[fleet]`).
    #[arg(long, env = "ARCHWAY_PEER_URL")]
    peer_url: Option<String>,
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
        if let Some(a) = &self.admin_listen {
            cfg.admin_listen = config::parse_admin_listen("--admin-listen", a)?;
        }
        if let Some(d) = self.data_dir {
            cfg.data_dir = d;
        }
        if let Some(url) = self.upstream {
            // Never echoed when it holds credentials.
            if config::url_has_user_info(&url) {
                return Err(ConfigError::Invalid {
                    key: "--upstream".into(),
                    message: "must not hold credentials (user:password@); configure the \
                              upstream in a config file with `username` and `password`"
                        .into(),
                });
            }
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
        if !self.parent.is_empty() {
            cfg.parent.urls = config::parse_parent_urls("--parent", &self.parent)?;
        }
        if let Some(url) = self.peer_url.filter(|u| !u.is_empty()) {
            let fleet = cfg.fleet.as_mut().ok_or_else(|| ConfigError::Invalid {
                key: "--peer-url".into(),
                message: "is only used with a [fleet] section in the config".into(),
            })?;
            fleet.set_peer_url("--peer-url", &url)?;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::field::MakeExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ARCHWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a terminal: in a log file they are noise, and formatting them costs
    // a few per cent of a cached request's CPU time.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        // archway's own JSON lines (see `json_log`): span fields formatted once, as JSON.
        LogFormat::Json => builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(archway::json_log::JsonLines)
            .init(),
        // Plain `name=value` fields: the default formatter styles every field (and the request
        // span's, on every line) even without colours, which costs a cached request more than
        // its answer does.
        LogFormat::Text if !ansi => builder
            .fmt_fields(
                tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
                    if field.name() == "message" {
                        write!(w, "{value:?}")
                    } else {
                        write!(w, "{field}={value:?}")
                    }
                })
                .delimited(" "),
            )
            .init(),
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

/// One message per SIGHUP (never any elsewhere than on unix).
fn hangup_signals() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        // A reload already queued covers this one too.
                        let _ = tx.try_send(());
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP; no TLS reloads"),
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

async fn run_explain(args: ExplainArgs) -> ExitCode {
    let image = match archway::image_ref::ImageRef::parse(&args.image) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("archway: {e}");
            return ExitCode::from(2);
        }
    };
    let serve = ServeArgs {
        config: args.config,
        listen: Vec::new(),
        admin_listen: None,
        data_dir: None,
        upstream: args.upstream,
        cache_max_size: None,
        tag_ttl: None,
        log_format: None,
        parent: Vec::new(),
        peer_url: None,
    };
    let mut cfg = match serve.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("archway: {e}");
            return ExitCode::from(2);
        }
    };
    // A scratch cache: explain shows what would happen without touching a live cache.
    let scratch = std::env::temp_dir().join(format!("archway-explain-{}", std::process::id()));
    cfg.data_dir = scratch.clone();
    // explain asks the pipeline directly, past the listener and its client authentication.
    cfg.auth = None;
    // Nor does it take part in the fleet's fills: no lease, no peer.
    cfg.fleet = None;
    let hints = archway::explain::Hints {
        user_agent: args.user_agent,
        accept: args.accept,
        platform: args.platform,
        client_ip: args.client_ip,
        host: args.host,
        port: args.port,
        head: args.head,
    };
    let result = archway::explain::explain(cfg, &image, &args.image, &hints).await;
    let _ = std::fs::remove_dir_all(&scratch);
    match result {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("archway: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.to_text());
            }
            if report.status < 400 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("archway: {e}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Explain(args) => run_explain(args).await,
        Command::Healthcheck(args) => run_healthcheck(args).await,
        Command::Warm(args) => run_warm(args).await,
        Command::Pins(args) => run_pins(args).await,
        Command::Config(ConfigArgs { print_defaults: _ }) => {
            print!("{}", config::keys::reference());
            ExitCode::SUCCESS
        }
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
            let open_files = archway::fd_limit::raise();
            tracing::info!(data_dir = %cfg.data_dir.display(), upstreams = ?upstreams, open_files, "starting");
            let server = match Archway::start(cfg).await {
                Ok(s) => s,
                Err(e) => {
                    // The log gets the whole cause chain; the terminal the one-line message.
                    tracing::error!(error = %archway::error::chain(&e), "cannot start");
                    eprintln!("archway: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let shutdown = shutdown_signal();
            tokio::pin!(shutdown);
            let mut hangups = hangup_signals();
            loop {
                tokio::select! {
                    _ = &mut shutdown => break,
                    Some(()) = hangups.recv() => {
                        tracing::info!(tls = server.tls().is_some(), "SIGHUP: reloading");
                        // reload_tls logs the outcome; a bad file keeps the old certificate.
                        let _ = server.reload_tls();
                    }
                }
            }
            tracing::info!("shutting down");
            server.shutdown().await;
            ExitCode::SUCCESS
        }
    }
}
