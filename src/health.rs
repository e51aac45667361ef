//! What `/healthz`, `/readyz` and `/status` report: whether the pipeline runs, whether it is
//! ready, and the committed offsets, which the checkpointer publishes here.

use crate::checkpoint::Entry;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;

#[derive(Debug)]
pub struct Health {
    alive: AtomicBool,
    ready: AtomicBool,
    /// The committed offsets as the checkpointer last published them.
    checkpoints: watch::Sender<Vec<Entry>>,
    /// The running pipeline's tasks: one that ended makes `/healthz` fail.
    tasks: std::sync::Mutex<Vec<(&'static str, tokio::task::AbortHandle)>>,
}

impl Health {
    pub fn set_alive(&self, v: bool) {
        self.alive.store(v, Ordering::Release);
    }

    pub fn set_ready(&self, v: bool) {
        self.ready.store(v, Ordering::Release);
    }

    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Watches a pipeline task until `untrack_all`.
    pub fn track(&self, name: &'static str, task: tokio::task::AbortHandle) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, task));
    }

    /// The run is over (shutdown or reload): its tasks end on purpose.
    pub fn untrack_all(&self) {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The first pipeline task that ended while it should run.
    pub fn stopped_task(&self) -> Option<&'static str> {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(_, t)| t.is_finished())
            .map(|(n, _)| *n)
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Where the checkpointer publishes the committed offsets.
    pub fn checkpoint_publisher(&self) -> watch::Sender<Vec<Entry>> {
        self.checkpoints.clone()
    }

    pub fn checkpoints(&self) -> Vec<Entry> {
        self.checkpoints.borrow().clone()
    }
}

impl Default for Health {
    fn default() -> Self {
        Health {
            alive: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            checkpoints: watch::Sender::new(Vec::new()),
            tasks: Default::default(),
        }
    }
}
