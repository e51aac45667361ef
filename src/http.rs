//! The agent's own HTTP endpoint: `/healthz` (the pipeline runs), `/readyz` (checkpoints
//! loaded and, with Elasticsearch, the index setup done), `/metrics` (Prometheus text) and
//! `/status` (JSON: each file's committed offset, size and lag; the buffer).

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::stats::Stats;

#[derive(Debug, Default)]
pub struct Health {
    alive: AtomicBool,
    ready: AtomicBool,
    /// The committed offsets as the checkpointer last published them.
    checkpoints: std::sync::Mutex<Vec<crate::checkpoint::Entry>>,
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

    pub fn publish_checkpoints(&self, entries: Vec<crate::checkpoint::Entry>) {
        *self.checkpoints.lock().unwrap_or_else(|e| e.into_inner()) = entries;
    }

    pub fn checkpoints(&self) -> Vec<crate::checkpoint::Entry> {
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Binds now (so a taken port is a start-up error) and serves in the background.
pub async fn serve(
    listen: &str,
    health: Arc<Health>,
    stats: Arc<Stats>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (health, stats) = (health.clone(), stats.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (health, stats) = (health.clone(), stats.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(route(req.uri().path(), &health, &stats))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn route(path: &str, health: &Health, stats: &Stats) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => {
            let files = crate::metrics::file_lags(&health.checkpoints());
            return reply(
                200,
                "text/plain; version=0.0.4",
                crate::metrics::render(stats, &files),
            );
        }
        "/status" => {
            let files = crate::metrics::file_lags(&health.checkpoints());
            let body = crate::metrics::status(health, stats, &files);
            return reply(200, "application/json", body);
        }
        _ => {}
    }
    if path == "/healthz" {
        return match (health.alive(), health.stopped_task()) {
            (true, None) => reply(200, "text/plain", "ok\n".into()),
            (_, Some(task)) => reply(
                503,
                "text/plain",
                format!("pipeline task stopped: {task}\n"),
            ),
            (false, None) => reply(503, "text/plain", "pipeline stopped\n".into()),
        };
    }
    let (status, body) = match path {
        "/readyz" if health.ready() => (200, "ready\n"),
        "/readyz" => (503, "starting\n"),
        _ => (404, "not found\n"),
    };
    reply(status, "text/plain", body.to_string())
}

fn reply(status: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response parts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn get(path: &str, health: &Health) -> (u16, String) {
        let r = route(path, health, &Stats::default());
        let status = r.status().as_u16();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn healthz_fails_when_a_pipeline_task_ends_and_not_after_a_stop() {
        let health = Health::default();
        health.set_alive(true);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(async move {
            let _ = rx.await;
        });
        health.track("enrich", running.abort_handle());
        assert_eq!(get("/healthz", &health).await.0, 200);
        // The task dies (a panic, a closed channel): the probe says which.
        drop(tx);
        running.await.unwrap();
        assert_eq!(
            get("/healthz", &health).await,
            (503, "pipeline task stopped: enrich\n".to_string())
        );
        // A stop (shutdown, reload) lets tasks end without failing the probe.
        health.untrack_all();
        assert_eq!(get("/healthz", &health).await.0, 200);
        health.set_alive(false);
        assert_eq!(get("/healthz", &health).await.0, 503);
    }
}
