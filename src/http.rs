//! The agent's own HTTP endpoint: `/healthz` (the pipeline runs) and `/readyz` (checkpoints
//! loaded and, with Elasticsearch, the index setup done), for the DaemonSet's probes.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Health {
    alive: AtomicBool,
    ready: AtomicBool,
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
}

/// Binds now (so a taken port is a start-up error) and serves in the background.
pub async fn serve(listen: &str, health: Arc<Health>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let health = health.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let health = health.clone();
                    async move { Ok::<_, std::convert::Infallible>(route(req.uri().path(), &health)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn route(path: &str, health: &Health) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/healthz" if health.alive() => (200, "ok\n"),
        "/healthz" => (503, "pipeline stopped\n"),
        "/readyz" if health.ready() => (200, "ready\n"),
        "/readyz" => (503, "starting\n"),
        _ => (404, "not found\n"),
    };
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response")
}
