//! The `logferry` command: `run` (the agent), `debug` (files → stdout), `check-config`,
//! `setup` (the cluster's ILM policy, templates and Kibana objects).
//! Exit codes: 0 ok, 1 runtime failure, 2 bad usage or configuration.

#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use logferry::config::{Config, StartAt, StdoutFormat};
use logferry::pipeline::{self, RunOptions};
use logferry::reload::Loader;
use logferry::stats::Stats;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "logferry", version, about = "Kubernetes log shipping agent")]
struct Cli {
    /// Format of logferry's own log lines (on stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum DocFormat {
    /// One document per line.
    Document,
    /// The Elasticsearch bulk body: an action line with the `_id`, then the document.
    Bulk,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent with a config file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Tail files and print the documents logferry would index to stdout.
    Debug {
        /// Config file (defaults are used when absent; its include globs are replaced by PATHS).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Read files from their start instead of only new lines.
        #[arg(long)]
        from_beginning: bool,
        /// Stop when every file is read to its end instead of following.
        #[arg(long)]
        once: bool,
        /// Keep checkpoints here, so a second run resumes where this one stopped.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long, value_enum)]
        format: Option<DocFormat>,
        /// Files, directories or globs to read (e.g. '/var/log/containers/*.log').
        #[arg(required = true, value_name = "PATH_OR_GLOB")]
        paths: Vec<String>,
    },
    /// Validate a config file and print the effective configuration.
    CheckConfig { file: PathBuf },
    /// Install the Elasticsearch ILM policy and index templates.
    Setup {
        #[arg(long, short)]
        config: PathBuf,
        /// Print the requests instead of sending them.
        #[arg(long)]
        dry_run: bool,
        /// Replace a policy, template or Kibana object that differs from logferry's.
        #[arg(long)]
        overwrite: bool,
        /// Also import the data view, searches and dashboard into this Kibana
        /// (authenticated as for Elasticsearch).
        #[arg(long, value_name = "URL")]
        kibana_url: Option<String>,
        /// The Kibana space to import into (the default space when absent).
        #[arg(long, requires = "kibana_url")]
        kibana_space: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    // The level comes from the config where there is one; RUST_LOG wins.
    let config_level = match &cli.command {
        Command::Run { config }
        | Command::Debug {
            config: Some(config),
            ..
        } => Config::load(config).ok().map(|c| c.log_level),
        _ => None,
    };
    let set_level = init_logging(log_format, config_level.as_deref().unwrap_or("info"));
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                if c.output.kind == logferry::config::OutputKind::Elasticsearch {
                    for w in c.output.elasticsearch.warnings() {
                        eprintln!("logferry: warning: {w}");
                    }
                }
                print!("{}", c.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => config_error(e),
        },
        Command::Setup {
            config,
            dry_run,
            overwrite,
            kibana_url,
            kibana_space,
        } => match Config::load(&config) {
            Ok(c) => {
                let kibana = kibana_url.map(|url| (url, kibana_space));
                let mut out = std::io::stdout();
                match logferry::setup::command(&c, dry_run, overwrite, kibana, &mut out) {
                    Ok(true) => ExitCode::SUCCESS,
                    Ok(false) => ExitCode::from(1),
                    Err(e) => {
                        eprintln!("logferry: {e}");
                        ExitCode::from(e.exit_code())
                    }
                }
            }
            Err(e) => config_error(e),
        },
        Command::Run { config } => {
            let first = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            let state_dir = first.state_dir.clone();
            let path = config.clone();
            let load: Loader = Box::new(move || {
                let c = Config::load(&path).map_err(|e| e.to_string())?;
                if c.state_dir != state_dir {
                    return Err(format!(
                        "state_dir: {} cannot change while running ({} is in use); restart the agent",
                        c.state_dir.display(),
                        state_dir.display()
                    ));
                }
                Ok(c)
            });
            let state_dir = Some(first.state_dir.clone());
            run(
                first,
                false,
                state_dir,
                true,
                Some((config, load)),
                set_level,
            )
        }
        Command::Debug {
            config,
            from_beginning,
            once,
            state_dir,
            format,
            paths,
        } => {
            let overrides = move |mut c: Config| -> Result<Config, (String, String)> {
                c.source.include = paths.iter().map(|p| as_glob(p)).collect();
                c.source.start_at = if from_beginning {
                    StartAt::Beginning
                } else {
                    StartAt::End
                };
                if let Some(f) = format {
                    c.output.stdout.format = match f {
                        DocFormat::Document => StdoutFormat::Document,
                        DocFormat::Bulk => StdoutFormat::Bulk,
                    };
                }
                c.validate()?;
                Ok(c)
            };
            let first = match &config {
                Some(path) => match Config::load(path) {
                    Ok(c) => c,
                    Err(e) => return config_error(e),
                },
                None => debug_defaults(),
            };
            let overrides = std::sync::Arc::new(overrides);
            let cfg = match overrides(first) {
                Ok(c) => c,
                Err((key, msg)) => {
                    eprintln!("logferry: {key}: {msg}");
                    return ExitCode::from(2);
                }
            };
            if once {
                if let Err(e) = something_to_read(&cfg) {
                    eprintln!("logferry: {e}");
                    return ExitCode::from(1);
                }
            }
            // With a config file, SIGHUP and changes reload it, the command line still applied.
            let reload = config.map(|path| {
                let p = path.clone();
                let load: Loader = Box::new(move || {
                    let c = Config::load(&p).map_err(|e| e.to_string())?;
                    overrides(c).map_err(|(k, m)| format!("{k}: {m}"))
                });
                (path, load)
            });
            run(cfg, once, state_dir, false, reload, set_level)
        }
    }
}

/// A `--once` run over nothing is a mistake to say, not an empty success.
fn something_to_read(cfg: &Config) -> anyhow::Result<()> {
    use logferry::source::discover::Discovery;
    let discovery = Discovery::new(&cfg.source)
        .context("source.exclude")?
        .with_dangling_grace(std::time::Duration::ZERO);
    if discovery.scan(&Stats::default()).is_empty() {
        anyhow::bail!(
            "no file to read matches {}",
            cfg.source
                .include
                .iter()
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// The embedded default of the debug mode: every built-in multiline preset on.
fn debug_defaults() -> Config {
    let mut c = Config::default();
    c.source.multiline.presets = vec!["java".into(), "python".into(), "go".into()];
    c
}

fn as_glob(p: &str) -> String {
    if std::path::Path::new(p).is_dir() {
        format!("{}/*.log", p.trim_end_matches('/'))
    } else {
        p.to_string()
    }
}

fn config_error(e: logferry::config::ConfigError) -> ExitCode {
    eprintln!("logferry: {e}");
    ExitCode::from(2)
}

fn run(
    cfg: Config,
    once: bool,
    state_dir: Option<PathBuf>,
    serve_http: bool,
    reload: Option<(PathBuf, Loader)>,
    set_level: SetLevel,
) -> ExitCode {
    match run_pipeline(cfg, once, state_dir, serve_http, reload, set_level) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logferry: {e:#}");
            let config = matches!(e.downcast_ref(), Some(pipeline::PipelineError::Config(_)));
            ExitCode::from(if config { 2 } else { 1 })
        }
    }
}

fn run_pipeline(
    mut cfg: Config,
    once: bool,
    state_dir: Option<PathBuf>,
    serve_http: bool,
    reload: Option<(PathBuf, Loader)>,
    set_level: SetLevel,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let health = std::sync::Arc::new(logferry::health::Health::default());
    let stats = std::sync::Arc::new(Stats::default());
    let http = cfg.http.clone();
    if serve_http && http.enabled {
        let addr = rt
            .block_on(logferry::http::serve(
                &http.listen,
                health.clone(),
                stats.clone(),
                logferry::http::Limits {
                    max_connections: http.max_connections,
                    ..Default::default()
                },
            ))
            .with_context(|| format!("cannot listen on http.listen {}", http.listen))?;
        tracing::info!(%addr, "serving /healthz, /readyz, /metrics and /status");
    }
    let host_name = if cfg.host_name.is_empty() {
        logferry::host_name()
    } else {
        cfg.host_name.clone()
    };
    let mut reloads = match reload.filter(|_| !once) {
        Some((path, load)) => {
            let _entered = rt.enter();
            Some(
                logferry::reload::spawn(path, load, &cfg.reload, stats.clone())
                    .context("cannot watch for config reloads")?,
            )
        }
        None => None,
    };
    let mut term = {
        let _entered = rt.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot handle SIGTERM")?
    };
    let (mut resume, mut pods) = (None, None);
    loop {
        let opts = RunOptions {
            once,
            state_dir: state_dir.clone(),
            output: Box::new(std::io::stdout()),
            host_name: if cfg.host_name.is_empty() {
                host_name.clone()
            } else {
                cfg.host_name.clone()
            },
            stats: stats.clone(),
            health: health.clone(),
            resume: resume.take(),
            pods: pods.take(),
        };
        let mut next = None;
        let summary = rt.block_on(async {
            let stop = async {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                    Some(c) = async {
                        match reloads.as_mut() {
                            Some(r) => r.recv().await,
                            None => std::future::pending().await,
                        }
                    } => next = Some(c),
                }
            };
            pipeline::run(&cfg, opts, stop).await
        })?;
        let Some(new) = next else {
            let s = &summary.stats;
            tracing::info!(
                events = Stats::get(&s.events),
                delivered = Stats::get(&s.events_delivered),
                files = Stats::get(&s.files_opened),
                truncated = Stats::get(&s.events_truncated),
                malformed = Stats::get(&s.events_malformed),
                bytes_dropped = Stats::get(&s.bytes_dropped),
                "stopped"
            );
            break;
        };
        if summary.timed_out {
            tracing::warn!("the old config's pipeline did not drain in time; what it had not delivered is read again (same ids)");
        }
        if new.http.listen != http.listen || new.http.enabled != http.enabled {
            tracing::warn!("http settings change at the next restart, not on reload");
        }
        if new.log_level != cfg.log_level {
            set_level(&new.log_level);
        }
        // Without a state directory the committed offsets carry over in memory. The pod
        // metadata does too, deleted pods included, while the API server is asked the same.
        resume = state_dir.is_none().then_some(summary.committed);
        if new.kubernetes.kubeconfig == cfg.kubernetes.kubeconfig
            && new.kubernetes.node_name == cfg.kubernetes.node_name
        {
            pods = summary.pods;
        }
        cfg = new;
        Stats::add(&stats.config_reloads, 1);
        tracing::info!("config reloaded");
    }
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// Changes the agent's own log level (a reload); a no-op when `RUST_LOG` decides it.
type SetLevel = Box<dyn Fn(&str)>;

fn init_logging(format: LogFormat, level: &str) -> SetLevel {
    use tracing_subscriber::EnvFilter;
    let from_env = EnvFilter::try_from_default_env().ok();
    let fixed = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(level));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal, never in files or container logs.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let reload: Box<dyn Fn(EnvFilter) -> Result<(), String>> = match format {
        LogFormat::Text => {
            let b = builder.with_filter_reloading();
            let handle = b.reload_handle();
            b.init();
            Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()))
        }
        LogFormat::Json => {
            let b = builder.json().with_filter_reloading();
            let handle = b.reload_handle();
            b.init();
            Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()))
        }
    };
    Box::new(move |level: &str| {
        if fixed {
            return;
        }
        match EnvFilter::try_new(level)
            .map_err(|e| e.to_string())
            .and_then(&reload)
        {
            Ok(()) => tracing::info!(level, "log level changed"),
            Err(e) => tracing::warn!(level, error = %e, "log level not changed"),
        }
    })
}
