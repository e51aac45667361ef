//! logferry: a Kubernetes log shipping agent. The module tree follows the pipeline:
//! `source` (discover, tail, parse, merge) → `enrich` → `encode` → `sink`, with
//! acknowledgements flowing back to `checkpoint`; `pipeline` wires them. Around it:
//! `config`, `setup` (the cluster's templates and Kibana objects), `health`, `http` and
//! `metrics` (the agent's own endpoint), `buffer` (the disk buffer), `reload`.

#![forbid(unsafe_code)]

pub mod buffer;
pub mod checkpoint;
pub mod config;
pub mod encode;
pub mod enrich;
pub mod event;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod log_limit;
pub mod metrics;
pub mod pipeline;
pub mod private_files;
pub mod reload;
pub mod setup;
pub mod sink;
pub mod source;
pub mod stats;
pub mod time;

/// The machine's host name, for `host.name` when the config gives none.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}
