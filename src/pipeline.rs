//! Wires the stages: tailer → (enrich) → (rate limit) → sink → acknowledgements →
//! checkpointer, and takes them down in order at shutdown (stop reading, drain, flush,
//! persist).

use crate::checkpoint::{CheckpointError, CheckpointStore, Checkpointer, Entry, Loaded};
use crate::config::MultilineRules;
use crate::config::{BufferKind, Config, OutputKind};
use crate::encode::DocumentEncoder;
use crate::enrich::exclude::Exclusion;
use crate::enrich::kube::cache::{OpenPods, SharedCache};
use crate::enrich::kube::watch;
use crate::enrich::rate_limit::{self, RateLimits};
use crate::enrich::stage::Enricher;
use crate::sink::elasticsearch::spool::Spool;
use crate::sink::elasticsearch::target::{Router, Targets};
use crate::sink::elasticsearch::ElasticsearchSink;
use crate::sink::stdout::{SinkError, StdoutSink};
use crate::source::assembler::AssemblyRules;
use crate::source::discover::Discovery;
use crate::source::tailer::{Tailer, TailerSettings};
use crate::source::wake::Wake;
use crate::stats::Stats;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::mpsc;

/// Batches in flight between the tailer and the sink.
const EVENT_CHANNEL_BATCHES: usize = 4;

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("output failed: {0}")]
    Sink(#[source] SinkError),
    #[error("a pipeline task failed: {0}")]
    Task(String),
    #[error("cannot open the disk buffer in {0}: {1}")]
    Buffer(PathBuf, #[source] std::io::Error),
}

/// Segments small enough that a full buffer frees room in steps, large enough to keep the
/// file count low: an eighth of the buffer, at most 64 MiB.
fn segment_size(max_size: u64) -> u64 {
    (max_size / 8).clamp(64 * 1024, 64 * 1024 * 1024)
}

/// Aborts a background task when the run that started it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct RunOptions {
    /// Stop when every file is read to its end.
    pub once: bool,
    /// Where checkpoints live; `None` keeps them in memory only.
    pub state_dir: Option<PathBuf>,
    pub output: Box<dyn Write + Send>,
    pub host_name: String,
    /// Counters the pipeline adds to; shared so the caller can watch them.
    pub stats: Arc<Stats>,
    /// What `/healthz` and `/readyz` report.
    pub health: Arc<crate::health::Health>,
    /// Without a state directory: the offsets a previous run in this process committed
    /// (a config reload), so the next run resumes there.
    pub resume: Option<Vec<Entry>>,
    /// The pod metadata a previous run in this process gathered (a config reload): deleted
    /// pods whose last lines are still being read keep their metadata.
    pub pods: Option<SharedCache>,
}

#[derive(Debug)]
pub struct Summary {
    pub committed: Vec<Entry>,
    /// The pod metadata cache, for the next run after a reload.
    pub pods: Option<SharedCache>,
    pub stats: Arc<Stats>,
    /// The shutdown deadline passed before everything was drained.
    pub timed_out: bool,
}

/// Runs until `stop` resolves (or, with `once`, until all is read), then shuts down within
/// `config.shutdown.timeout`.
pub async fn run(
    config: &Config,
    opts: RunOptions,
    stop: impl Future<Output = ()>,
) -> Result<Summary, PipelineError> {
    let (store, loaded) = match &opts.state_dir {
        Some(dir) => {
            let (s, l) = CheckpointStore::open(dir)?;
            (Some(s), l)
        }
        None => (
            None,
            Loaded {
                first_start: opts.resume.is_none(),
                entries: opts.resume.clone().unwrap_or_default(),
                saved_at: None,
            },
        ),
    };
    let src = &config.source;
    let multiline = MultilineRules::from_config(&src.multiline)
        .map_err(|(k, m)| PipelineError::Config(format!("{k}: {m}")))?;
    let rules = Arc::new(AssemblyRules {
        format: src.format,
        max_line_bytes: src.max_line_bytes as usize,
        overflow: src.line_overflow,
        multiline,
    });
    let discovery =
        Discovery::new(src).map_err(|e| PipelineError::Config(format!("source.exclude: {e}")))?;
    let stats = opts.stats.clone();
    let wake = Arc::new(Wake::default());

    // With Kubernetes metadata: tailer → enricher (and rate limits) → sink; without:
    // tailer → (rate limits) → sink.
    let (ev_tx, mut ev_rx) = mpsc::channel(EVENT_CHANNEL_BATCHES);
    let (ck_tx, ck_rx) = mpsc::unbounded_channel();
    let mut kube_view = None;
    // The watch runs until this run ends (a reload starts another).
    let mut watch_task = None;
    if config.kubernetes.enabled {
        let client = watch::client(&config.kubernetes, stats.clone())
            .await
            .map_err(|e| PipelineError::Config(e.to_string()))?;
        let cache = opts.pods.clone().unwrap_or_default();
        let open = Arc::new(OpenPods::default());
        let (changed_tx, changed_rx) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(watch::run(
            client,
            config.kubernetes.clone(),
            cache.clone(),
            open.clone(),
            changed_tx,
            stats.clone(),
        ));
        opts.health.track("kubernetes watch", task.abort_handle());
        watch_task = Some(AbortOnDrop(task));
        let (enriched_tx, enriched_rx) = mpsc::channel(EVENT_CHANNEL_BATCHES);
        let limits = RateLimits::new(
            &config.rate_limit,
            Some(cache.clone()),
            ck_tx.clone(),
            stats.clone(),
        );
        let enricher = Enricher::new(cache.clone(), &config.kubernetes, stats.clone())
            .with_rate_limits(limits);
        let task = tokio::spawn(enricher.run(ev_rx, enriched_tx, changed_rx));
        opts.health.track("enrich", task.abort_handle());
        ev_rx = enriched_rx;
        kube_view = Some((cache, open));
    }
    let enriching = kube_view.is_some();
    let pods = kube_view.as_ref().map(|(cache, _)| cache.clone());
    let exclusion = Exclusion::new(&config.kubernetes, kube_view);
    let checkpointer = tokio::spawn(
        Checkpointer::new(store, &loaded)
            .publishing(opts.health.checkpoint_publisher())
            .waking(wake.clone())
            .run(ck_rx, config.checkpoint.interval),
    );
    let limits = (!enriching)
        .then(|| RateLimits::new(&config.rate_limit, None, ck_tx.clone(), stats.clone()))
        .flatten();
    if let Some(limits) = limits {
        let (limited_tx, limited_rx) = mpsc::channel(EVENT_CHANNEL_BATCHES);
        let task = tokio::spawn(rate_limit::run(limits, ev_rx, limited_tx));
        opts.health.track("rate limit", task.abort_handle());
        ev_rx = limited_rx;
    }
    let sink = match config.output.kind {
        OutputKind::Stdout => {
            let sink = StdoutSink {
                encoder: DocumentEncoder::for_config(config, &opts.host_name)
                    .counting(stats.clone()),
                format: config.output.stdout.format,
                targets: Targets::new(Router::new(&config.output.elasticsearch)),
                writer: opts.output,
                acks: ck_tx.clone(),
                stats: stats.clone(),
            };
            tokio::task::spawn_blocking(move || sink.run(ev_rx))
        }
        OutputKind::Elasticsearch => {
            let dead_letter = match &opts.state_dir {
                Some(d) => d.join("dead-letter"),
                // Never a fixed path in /tmp: another user could have made it first.
                None => {
                    let dir = crate::private_files::create_run_dir("logferry-dead-letter")
                        .map_err(|e| {
                            PipelineError::Config(format!(
                                "cannot create a private directory for dead letters: {e}"
                            ))
                        })?;
                    tracing::info!(dir = %dir.display(), "no state_dir: documents Elasticsearch refuses go to this directory, for this run");
                    dir
                }
            };
            let sink = ElasticsearchSink::new(
                opts.health.clone(),
                &config.output.elasticsearch,
                src,
                DocumentEncoder::for_config(config, &opts.host_name).counting(stats.clone()),
                &dead_letter,
                ck_tx.clone(),
                stats.clone(),
            )
            .map_err(|e| PipelineError::Config(e.to_string()))?;
            if config.buffer.kind == BufferKind::Disk {
                let dir = opts
                    .state_dir
                    .as_ref()
                    .ok_or_else(|| {
                        PipelineError::Config("buffer.type: the disk buffer needs state_dir".into())
                    })?
                    .join("buffer");
                let (writer, reader) = crate::buffer::open(
                    &dir,
                    config.buffer.max_size,
                    segment_size(config.buffer.max_size),
                    stats.clone(),
                )
                .map_err(|e| PipelineError::Buffer(dir.clone(), e))?;
                let spool = Spool::new(
                    writer,
                    Router::new(&config.output.elasticsearch),
                    DocumentEncoder::for_config(config, &opts.host_name).counting(stats.clone()),
                    ck_tx.clone(),
                    &config.buffer,
                );
                let spooling = tokio::task::spawn_blocking(move || spool.run(ev_rx));
                let drain = opts.once;
                tokio::spawn(async move {
                    sink.run_buffered(reader, drain).await;
                    match spooling.await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(SinkError::Buffer(e)),
                        Err(e) => Err(SinkError::Buffer(std::io::Error::other(e.to_string()))),
                    }
                })
            } else {
                tokio::spawn(async move {
                    sink.run(ev_rx).await;
                    Ok(())
                })
            }
        }
    };
    let mut settings = TailerSettings::new(config, opts.once);
    if opts.state_dir.is_some() {
        settings.reserve_ahead = Some(crate::source::tailer::RESERVE_AHEAD);
    }
    opts.health.set_alive(true);
    if config.output.kind != OutputKind::Elasticsearch {
        opts.health.set_ready(true);
    }
    let tailer = Tailer::new(
        settings,
        rules,
        discovery,
        loaded.lookup(),
        loaded
            .entries
            .iter()
            .filter(|e| e.released_at.is_none())
            .cloned()
            .collect(),
        loaded.first_start,
        ev_tx,
        ck_tx,
        wake.clone(),
        stats.clone(),
        exclusion,
    )
    .resuming_since(loaded.saved_at);
    let mut tailer = tokio::task::spawn_blocking(move || tailer.run());
    opts.health.track("checkpoint", checkpointer.abort_handle());
    opts.health.track("output", sink.abort_handle());
    opts.health.track("tail", tailer.abort_handle());

    tokio::pin!(stop);
    let tailer_result = tokio::select! {
        r = &mut tailer => {
            // Reading stops by itself only in a `once` run; otherwise the pipeline broke.
            if !opts.once {
                opts.health.set_alive(false);
            }
            Some(r)
        }
        _ = &mut stop => {
            tracing::info!("stopping: draining in-flight events");
            // Tasks now end on purpose: a reload's drain is not a failure to report.
            opts.health.untrack_all();
            wake.stop();
            None
        }
    };
    let drain = async {
        let tailer_result = match tailer_result {
            Some(r) => r,
            None => tailer.await,
        };
        let sink_result = sink.await;
        let committed = checkpointer.await;
        (tailer_result, sink_result, committed)
    };
    let drained = tokio::time::timeout(config.shutdown.timeout, drain).await;
    opts.health.untrack_all();
    drop(watch_task);
    match drained {
        Ok((tailer_result, sink_result, committed)) => {
            let committed = committed.map_err(|e| PipelineError::Task(e.to_string()))?;
            match sink_result.map_err(|e| PipelineError::Task(e.to_string()))? {
                Ok(()) | Err(SinkError::Closed) => {}
                Err(e) => return Err(PipelineError::Sink(e)),
            }
            // The tailer only fails when the sink went away, which was reported above.
            let _ = tailer_result.map_err(|e| PipelineError::Task(e.to_string()))?;
            Ok(Summary {
                committed,
                pods,
                stats,
                timed_out: false,
            })
        }
        Err(_) => {
            tracing::error!(
                timeout = ?config.shutdown.timeout,
                "shutdown timed out; offsets of undelivered events stay uncommitted"
            );
            Ok(Summary {
                committed: vec![],
                pods,
                stats,
                timed_out: true,
            })
        }
    }
}
