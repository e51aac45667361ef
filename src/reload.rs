//! Config reload triggers: SIGHUP, and (with `reload.watch`) a change of the file's
//! content, which is how a ConfigMap update arrives (kubelet swaps a symlink; the file is
//! read every `reload.interval` and compared). A config that loads is handed to the caller,
//! which restarts the pipeline with it; one that does not is logged and counted, and the
//! running one stays.

use crate::config::{Config, ReloadConfig};
use crate::stats::Stats;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// Loads and validates the config the way the command line first did (its overrides
/// included); the error names the key.
pub type Loader = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Starts watching; must run inside the runtime. The receiver yields each new config.
pub fn spawn(
    path: PathBuf,
    load: Loader,
    settings: &ReloadConfig,
    stats: Arc<Stats>,
) -> std::io::Result<mpsc::Receiver<Config>> {
    let mut hangup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::channel(1);
    let poll = settings.watch.then_some(settings.interval);
    let mut seen = std::fs::read(&path).ok();
    tokio::spawn(async move {
        let mut tick = poll.map(tokio::time::interval);
        loop {
            let asked = tokio::select! {
                _ = hangup.recv() => true,
                _ = async { tick.as_mut().expect("polling").tick().await }, if tick.is_some() => false,
            };
            let now = std::fs::read(&path).ok();
            if !asked && (now.is_none() || now == seen) {
                continue; // unchanged, or gone for a moment while a ConfigMap swaps
            }
            seen = now;
            let why = if asked { "SIGHUP" } else { "the file changed" };
            match load() {
                Ok(cfg) => {
                    tracing::info!(path = %path.display(), "reloading the config: {why}");
                    if tx.send(cfg).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    Stats::add(&stats.config_reload_failures, 1);
                    tracing::error!(path = %path.display(), "config not reloaded ({why}); the running config stays: {e}");
                }
            }
        }
    });
    Ok(rx)
}
