//! The agent's own HTTP endpoint: `/healthz` (the pipeline runs), `/readyz` (checkpoints
//! loaded and, with Elasticsearch, the index setup done), `/metrics` (OpenMetrics text) and
//! `/status` (JSON: each file's committed offset, size and lag, a page at a time; the
//! buffer). GET and HEAD only; slow and surplus clients are dropped (`Limits`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

use crate::health::Health;
use crate::metrics::FilePage;
use crate::stats::Stats;

/// What keeps the endpoint answering whatever its clients do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers must arrive within this (slow clients are dropped).
    pub header_read_timeout: Duration,
    /// Connections held at once; a new one past it closes the oldest, so a flood cannot
    /// keep the probes out.
    pub max_connections: usize,
    /// A kept-alive connection is closed after this, once its request is answered.
    pub connection_max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 64,
            connection_max_age: Duration::from_secs(60),
        }
    }
}

/// The connections being served, oldest first; dropping a sender closes its connection.
type Open = Arc<std::sync::Mutex<VecDeque<(u64, oneshot::Sender<()>)>>>;

/// Binds now (so a taken port is a start-up error) and serves in the background.
pub async fn serve(
    listen: &str,
    health: Arc<Health>,
    stats: Arc<Stats>,
    limits: Limits,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let open: Open = Arc::default();
    tokio::spawn(async move {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        for id in 0u64.. {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors, most often: let some close rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (close_tx, close_rx) = oneshot::channel::<()>();
            {
                let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
                if o.len() >= limits.max_connections {
                    o.pop_front();
                    Stats::add(&stats.http_connections_evicted, 1);
                }
                o.push_back((id, close_tx));
            }
            let (health, stats, open, http) =
                (health.clone(), stats.clone(), open.clone(), http.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (health, stats) = (health.clone(), stats.clone());
                    async move { Ok::<_, std::convert::Infallible>(answer(&req, &health, &stats)) }
                });
                let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    // Closed for a newer connection: at once.
                    _ = close_rx => {}
                    _ = tokio::time::sleep(limits.connection_max_age) => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(limits.header_read_timeout, conn).await;
                    }
                }
                open.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|(i, _)| *i != id);
            });
        }
    });
    Ok(addr)
}

/// GET and HEAD only: the endpoint changes nothing.
fn answer<B>(req: &Request<B>, health: &Health, stats: &Stats) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(405, "text/plain", "only GET and HEAD\n".into());
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    route(req.uri().path(), req.uri().query(), health, stats)
}

fn route(path: &str, query: Option<&str>, health: &Health, stats: &Stats) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => {
            let files = crate::metrics::file_lags(&health.checkpoints());
            return reply(
                200,
                crate::metrics::CONTENT_TYPE,
                crate::metrics::render(stats, &files),
            );
        }
        "/status" => {
            let page = match FilePage::parse(query) {
                Ok(p) => p,
                Err(why) => return reply(400, "text/plain", why),
            };
            let files = crate::metrics::file_lags(&health.checkpoints());
            let body = crate::metrics::status(health, stats, &files, page);
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
        let r = route(path, None, health, &Stats::default());
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

#[cfg(test)]
mod server_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start(limits: Limits) -> (SocketAddr, Arc<Stats>) {
        let health = Arc::new(Health::default());
        health.set_alive(true);
        let stats = Arc::new(Stats::default());
        let addr = serve("127.0.0.1:0", health, stats.clone(), limits)
            .await
            .unwrap();
        (addr, stats)
    }

    /// Sends `raw` and reads the answer until the server closes (bounded, so that a server
    /// that never closes fails the test instead of hanging it).
    async fn exchange(addr: SocketAddr, raw: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
            .await
            .expect("the server closes")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Whether the server closed `s` within `wait`.
    async fn closed(s: &mut TcpStream, wait: Duration) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(wait, s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn only_get_and_head_are_answered() {
        let (addr, _) = start(Limits::default()).await;
        let r = exchange(
            addr,
            "DELETE /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        assert!(r.to_ascii_lowercase().contains("allow: get, head"), "{r}");
        let r = exchange(
            addr,
            "POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        let r = exchange(
            addr,
            "HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "no body: {r:?}");
        let r = exchange(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"), "{r}");
    }

    #[tokio::test]
    async fn a_slow_client_is_dropped() {
        let (addr, _) = start(Limits {
            header_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        // Half a request, then nothing.
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        assert!(closed(&mut half, Duration::from_secs(10)).await);
        // Nothing at all.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut silent, Duration::from_secs(10)).await);
        // A kept-alive connection lives no longer than its age, after its answer.
        let (addr, _) = start(Limits {
            connection_max_age: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut b = [0u8; 256];
        let n = kept.read(&mut b).await.unwrap();
        assert!(b[..n].starts_with(b"HTTP/1.1 200"));
        assert!(closed(&mut kept, Duration::from_secs(10)).await);
    }

    #[tokio::test]
    async fn a_flood_of_connections_does_not_keep_the_probe_out() {
        let (addr, stats) = start(Limits {
            max_connections: 8,
            ..Limits::default()
        })
        .await;
        let mut flood = Vec::new();
        for _ in 0..50 {
            flood.push(TcpStream::connect(addr).await.unwrap());
        }
        let r = exchange(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"), "{r}");
        // The oldest were closed to make room: at most 8 are held.
        let mut still_open = 0;
        for s in &mut flood {
            if !closed(s, Duration::from_millis(50)).await {
                still_open += 1;
            }
        }
        assert!(still_open <= 8, "{still_open} of the flood still open");
        assert!(Stats::get(&stats.http_connections_evicted) >= 42);
    }

    #[test]
    fn status_lists_a_page_of_files_the_most_lagging_first() {
        use crate::metrics::FileLag;
        let files: Vec<FileLag> = (0..250u64)
            .map(|i| FileLag {
                path: format!("/var/log/containers/{i:03}.log"),
                committed: 0,
                size: i % 7,
                lag: i % 7,
            })
            .collect();
        let page = |q: Option<&str>| -> serde_json::Value {
            let p = FilePage::parse(q).unwrap();
            serde_json::from_str(&crate::metrics::status(
                &Health::default(),
                &Stats::default(),
                &files,
                p,
            ))
            .unwrap()
        };
        let first = page(None);
        assert_eq!(first["files_total"], 250);
        assert_eq!(first["lag_bytes"], files.iter().map(|f| f.lag).sum::<u64>());
        let listed = first["files"].as_array().unwrap();
        assert_eq!(listed.len(), FilePage::DEFAULT_LIMIT);
        let lags: Vec<u64> = listed
            .iter()
            .map(|f| f["lag_bytes"].as_u64().unwrap())
            .collect();
        assert_eq!(lags[0], 6);
        assert!(lags.windows(2).all(|w| w[0] >= w[1]), "most lagging first");
        let last = page(Some("offset=240&limit=20"));
        let listed = last["files"].as_array().unwrap();
        assert_eq!(listed.len(), 10);
        assert!(listed.iter().all(|f| f["lag_bytes"] == 0));
        assert!(FilePage::parse(Some("limit=5000")).is_err());
        assert!(FilePage::parse(Some("offset=x")).is_err());
        assert!(FilePage::parse(Some("page=2")).is_err());
    }
}
