//! Wires the stages as the README's diagram draws them: discover and tail → enrich
//! (Kubernetes metadata, rate limits) → encode, batch and ship → acknowledgements →
//! checkpoint; one builder per stage. At shutdown they are taken down in order: stop
//! reading, drain, flush, persist.

use crate::checkpoint::{
    CheckpointError, CheckpointMsg, CheckpointStore, Checkpointer, Entry, Loaded,
};
use crate::config::MultilineRules;
use crate::config::{BufferKind, Config, OutputKind};
use crate::encode::DocumentEncoder;
use crate::enrich::exclude::Exclusion;
use crate::enrich::kube::cache::{OpenPods, SharedCache};
use crate::enrich::kube::watch;
use crate::enrich::rate_limit::{self, RateLimits};
use crate::enrich::stage::Enricher;
use crate::event::LogEvent;
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
    mut opts: RunOptions,
    stop: impl Future<Output = ()>,
) -> Result<Summary, PipelineError> {
    let output = std::mem::replace(&mut opts.output, Box::new(std::io::sink()));
    let (store, loaded) = open_checkpoints(&opts)?;
    let (rules, discovery) = reading_rules(config)?;
    let stats = opts.stats.clone();
    let wake = Arc::new(Wake::default());
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_CHANNEL_BATCHES);
    let (ck_tx, ck_rx) = mpsc::unbounded_channel();

    // discover → tail → enrich (Kubernetes, rate limits) → encode, batch, ship → ack →
    // checkpoint.
    let enrich = start_enrich(config, &opts, ev_rx, &ck_tx).await?;
    let checkpointer = tokio::spawn(
        Checkpointer::new(store, &loaded)
            .publishing(opts.health.checkpoint_publisher())
            .waking(wake.clone())
            .run(ck_rx, config.checkpoint.interval),
    );
    let sink = start_output(config, &opts, output, enrich.events, &ck_tx)?;
    let exclusion = Exclusion::new(&config.kubernetes, enrich.kube_view);
    let tailer = start_tailer(
        config, &opts, &loaded, rules, discovery, ev_tx, ck_tx, &wake, exclusion,
    );
    opts.health.set_alive(true);
    if config.output.kind != OutputKind::Elasticsearch {
        opts.health.set_ready(true);
    }
    opts.health.track("checkpoint", checkpointer.abort_handle());
    opts.health.track("output", sink.abort_handle());
    opts.health.track("tail", tailer.abort_handle());

    let stages = Stages {
        tailer,
        sink,
        checkpointer,
        _watch: enrich.watch_task,
    };
    stages
        .finish(config, &opts, &wake, stop, enrich.pods, stats)
        .await
}

/// The checkpoints of the state directory, or, without one, what a previous run in this
/// process left (a reload).
fn open_checkpoints(opts: &RunOptions) -> Result<(Option<CheckpointStore>, Loaded), PipelineError> {
    Ok(match &opts.state_dir {
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
    })
}

/// What the enrich stage hands on.
struct Enrich {
    /// The events after enrichment and rate limits.
    events: mpsc::Receiver<Vec<LogEvent>>,
    /// The pod cache and the pods with open files, for the tailer's exclusions.
    kube_view: Option<(SharedCache, Arc<OpenPods>)>,
    pods: Option<SharedCache>,
    /// The API watch, which runs until this run ends (a reload starts another).
    watch_task: Option<AbortOnDrop>,
}

/// With Kubernetes metadata: the watch, and the enricher (which applies the rate limits
/// too); without: the rate limits alone, when any are set.
async fn start_enrich(
    config: &Config,
    opts: &RunOptions,
    events: mpsc::Receiver<Vec<LogEvent>>,
    acks: &mpsc::UnboundedSender<CheckpointMsg>,
) -> Result<Enrich, PipelineError> {
    let stats = &opts.stats;
    if !config.kubernetes.enabled {
        let limits = RateLimits::new(&config.rate_limit, None, acks.clone(), stats.clone());
        let events = match limits {
            Some(limits) => {
                let (tx, rx) = mpsc::channel(EVENT_CHANNEL_BATCHES);
                let task = tokio::spawn(rate_limit::run(limits, events, tx));
                opts.health.track("rate limit", task.abort_handle());
                rx
            }
            None => events,
        };
        return Ok(Enrich {
            events,
            kube_view: None,
            pods: None,
            watch_task: None,
        });
    }
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
        config.watches_namespaces(),
    ));
    opts.health.track("kubernetes watch", task.abort_handle());
    let (tx, rx) = mpsc::channel(EVENT_CHANNEL_BATCHES);
    let limits = RateLimits::new(
        &config.rate_limit,
        Some(cache.clone()),
        acks.clone(),
        stats.clone(),
    );
    let enricher = Enricher::new(cache.clone(), &config.kubernetes, stats.clone())
        .with_rate_limits(limits)
        .watching_namespaces(config.watches_namespaces());
    let enrich = tokio::spawn(enricher.run(events, tx, changed_rx));
    opts.health.track("enrich", enrich.abort_handle());
    Ok(Enrich {
        events: rx,
        kube_view: Some((cache.clone(), open)),
        pods: Some(cache),
        watch_task: Some(AbortOnDrop(task)),
    })
}

type SinkTask = tokio::task::JoinHandle<Result<(), SinkError>>;

/// Encoding, batching and shipping: to stdout, or to Elasticsearch, through the disk
/// buffer when there is one.
fn start_output(
    config: &Config,
    opts: &RunOptions,
    output: Box<dyn Write + Send>,
    events: mpsc::Receiver<Vec<LogEvent>>,
    acks: &mpsc::UnboundedSender<CheckpointMsg>,
) -> Result<SinkTask, PipelineError> {
    let stats = &opts.stats;
    let encoder = || DocumentEncoder::for_config(config, &opts.host_name).counting(stats.clone());
    if config.output.kind == OutputKind::Stdout {
        let sink = StdoutSink {
            encoder: encoder(),
            format: config.output.stdout.format,
            targets: Targets::new(Router::new(&config.output.elasticsearch, &config.retention))
                .counting(stats.clone()),
            writer: output,
            acks: acks.clone(),
            stats: stats.clone(),
        };
        return Ok(tokio::task::spawn_blocking(move || sink.run(events)));
    }
    let dead_letter = match &opts.state_dir {
        Some(d) => d.join("dead-letter"),
        // Never a fixed path in /tmp: another user could have made it first.
        None => {
            let dir =
                crate::private_files::create_run_dir("logferry-dead-letter").map_err(|e| {
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
        config,
        encoder(),
        &dead_letter,
        acks.clone(),
        stats.clone(),
    )
    .map_err(|e| PipelineError::Config(e.to_string()))?;
    if config.buffer.kind != BufferKind::Disk {
        return Ok(tokio::spawn(async move {
            sink.run(events).await;
            Ok(())
        }));
    }
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
        Targets::new(Router::new(&config.output.elasticsearch, &config.retention))
            .counting(stats.clone()),
        encoder(),
        acks.clone(),
        &config.buffer,
    );
    let spooling = tokio::task::spawn_blocking(move || spool.run(events));
    let drain = opts.once;
    Ok(tokio::spawn(async move {
        sink.run_buffered(reader, drain).await;
        match spooling.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SinkError::Buffer(e)),
            Err(e) => Err(SinkError::Buffer(std::io::Error::other(e.to_string()))),
        }
    }))
}

/// What finds and assembles lines: checked before any stage starts.
fn reading_rules(config: &Config) -> Result<(Arc<AssemblyRules>, Discovery), PipelineError> {
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
    Ok((rules, discovery))
}

type TailTask = tokio::task::JoinHandle<Result<(), crate::source::tailer::ChannelClosed>>;

/// Discovery, reading, parsing and assembly, on a thread of their own.
#[allow(clippy::too_many_arguments)]
fn start_tailer(
    config: &Config,
    opts: &RunOptions,
    loaded: &Loaded,
    rules: Arc<AssemblyRules>,
    discovery: Discovery,
    events: mpsc::Sender<Vec<LogEvent>>,
    acks: mpsc::UnboundedSender<CheckpointMsg>,
    wake: &Arc<Wake>,
    exclusion: Exclusion,
) -> TailTask {
    let mut settings = TailerSettings::new(config, opts.once);
    if opts.state_dir.is_some() {
        settings.reserve_ahead = Some(crate::source::tailer::RESERVE_AHEAD);
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
        events,
        acks,
        wake.clone(),
        opts.stats.clone(),
        exclusion,
    )
    .resuming_since(loaded.saved_at);
    tokio::task::spawn_blocking(move || tailer.run())
}

/// The running stages, taken down in order.
struct Stages {
    tailer: TailTask,
    sink: SinkTask,
    checkpointer: tokio::task::JoinHandle<Vec<Entry>>,
    _watch: Option<AbortOnDrop>,
}

impl Stages {
    /// Until `stop` (or the end of a `once` run): then stop reading, drain what is in
    /// flight, flush and persist, within `shutdown.timeout`.
    async fn finish(
        self,
        config: &Config,
        opts: &RunOptions,
        wake: &Wake,
        stop: impl Future<Output = ()>,
        pods: Option<SharedCache>,
        stats: Arc<Stats>,
    ) -> Result<Summary, PipelineError> {
        let Stages {
            mut tailer,
            sink,
            checkpointer,
            _watch,
        } = self;
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
        drop(_watch);
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
}
