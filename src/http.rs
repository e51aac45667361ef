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
    let (status, body) = match path {
        "/healthz" if health.alive() => (200, "ok\n"),
        "/healthz" => (503, "pipeline stopped\n"),
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
