//! The `logferry` command: `run` (the agent), `debug` (files → stdout), `check-config`.
//! Exit codes: 0 ok, 1 runtime failure, 2 bad usage or configuration.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use logferry::config::{Config, StartAt, StdoutFormat};
use logferry::pipeline::{self, RunOptions};
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
    init_logging(log_format, config_level.as_deref().unwrap_or("info"));
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
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
                setup(&c, dry_run, overwrite, kibana)
            }
            Err(e) => config_error(e),
        },
        Command::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            let state_dir = Some(cfg.state_dir.clone());
            run(cfg, false, state_dir, true)
        }
        Command::Debug {
            config,
            from_beginning,
            once,
            state_dir,
            format,
            paths,
        } => {
            let mut cfg = match config {
                Some(path) => match Config::load(&path) {
                    Ok(c) => c,
                    Err(e) => return config_error(e),
                },
                None => debug_defaults(),
            };
            cfg.source.include = paths.iter().map(|p| as_glob(p)).collect();
            cfg.source.start_at = if from_beginning {
                StartAt::Beginning
            } else {
                StartAt::End
            };
            if let Some(f) = format {
                cfg.output.stdout.format = match f {
                    DocFormat::Document => StdoutFormat::Document,
                    DocFormat::Bulk => StdoutFormat::Bulk,
                };
            }
            if let Err((key, msg)) = cfg.validate() {
                eprintln!("logferry: {key}: {msg}");
                return ExitCode::from(2);
            }
            run(cfg, once, state_dir, false)
        }
    }
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

fn run(cfg: Config, once: bool, state_dir: Option<PathBuf>, serve_http: bool) -> ExitCode {
    match run_pipeline(cfg, once, state_dir, serve_http) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logferry: {e:#}");
            let config = matches!(e.downcast_ref(), Some(pipeline::PipelineError::Config(_)));
            ExitCode::from(if config { 2 } else { 1 })
        }
    }
}

fn setup(
    cfg: &Config,
    dry_run: bool,
    overwrite: bool,
    kibana: Option<(String, Option<String>)>,
) -> ExitCode {
    use logferry::sink::elasticsearch::{client::BulkClient, setup, target::Router};
    let es = &cfg.output.elasticsearch;
    if let Err((key, msg)) = es.validate() {
        eprintln!("logferry: {key}: {msg}");
        return ExitCode::from(2);
    }
    let json_key = if cfg.source.json.enabled {
        cfg.source.json.target.as_str()
    } else {
        ""
    };
    let resources = setup::resources(es, json_key);
    let objects = match logferry::kibana::saved_objects(&Router::new(es).index_pattern()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("logferry: {e}");
            return ExitCode::from(1);
        }
    };
    if dry_run {
        print!("{}", setup::describe(&resources));
        if let Some((url, space)) = &kibana {
            let at = space
                .as_ref()
                .map(|s| format!("s/{s}/"))
                .unwrap_or_default();
            print!("# Kibana saved objects\nPOST {url}/{at}api/saved_objects/_import?overwrite={overwrite}\n{objects}");
        }
        return ExitCode::SUCCESS;
    }
    let client = match BulkClient::new(es) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("logferry: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("logferry: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut incomplete = false;
    match rt.block_on(setup::apply(client.transport(), &resources, overwrite)) {
        Ok(changes) => {
            for (r, c) in changes {
                incomplete |= c == setup::Change::Differs;
                println!("{} {}: {c}", r.kind, r.name);
            }
        }
        Err(e) => {
            eprintln!("logferry: setup failed: {e}");
            return ExitCode::from(1);
        }
    }
    if let Some((url, space)) = kibana {
        let imported = logferry::kibana::transport(&url, es).and_then(|t| {
            rt.block_on(logferry::kibana::import(
                &t,
                space.as_deref(),
                &objects,
                overwrite,
            ))
        });
        match imported {
            Ok(items) => {
                for i in items {
                    incomplete |= !matches!(
                        i.outcome,
                        logferry::kibana::Outcome::Created | logferry::kibana::Outcome::Replaced
                    );
                    println!("Kibana {} {:?}: {}", i.kind, i.title, i.outcome);
                }
            }
            Err(e) => {
                eprintln!("logferry: Kibana import failed: {e}");
                return ExitCode::from(1);
            }
        }
    }
    if incomplete {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn run_pipeline(
    cfg: Config,
    once: bool,
    state_dir: Option<PathBuf>,
    serve_http: bool,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let health = std::sync::Arc::new(logferry::http::Health::default());
    let stats = std::sync::Arc::new(Stats::default());
    if serve_http && cfg.http.enabled {
        let addr = rt
            .block_on(logferry::http::serve(
                &cfg.http.listen,
                health.clone(),
                stats.clone(),
            ))
            .with_context(|| format!("cannot listen on http.listen {}", cfg.http.listen))?;
        tracing::info!(%addr, "serving /healthz, /readyz, /metrics and /status");
    }
    let host_name = if cfg.host_name.is_empty() {
        logferry::host_name()
    } else {
        cfg.host_name.clone()
    };
    let opts = RunOptions {
        once,
        state_dir,
        output: Box::new(std::io::stdout()),
        host_name,
        stats,
        health: health.clone(),
    };
    let summary = rt.block_on(async {
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        pipeline::run(&cfg, opts, stop).await
    })?;
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
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal, never in files or container logs.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
