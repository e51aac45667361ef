//! The watch: one node-scoped watcher on pods (and one on namespaces when their labels are
//! wanted) feeding the cache. The kube-runtime watcher lists, watches, relists on 410 Gone
//! and backs off on errors; shipping never waits for it.

use super::cache::{OpenPods, SharedCache};
use super::pod::PodInfo;
use crate::config::KubernetesConfig;
use crate::stats::Stats;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch as notify;

/// Deleted pods kept for the last lines of their files at most (a node churning through
/// CronJob pods could otherwise hold thousands for `deleted_pod_ttl`).
const MAX_DELETED_PODS: usize = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubernetes: cannot read kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("kubernetes: no in-cluster config or kubeconfig found: {0}")]
    Infer(String),
    #[error("kubernetes: cannot build the API client: {0}")]
    Client(String),
}

/// In-cluster config (service account; its token is re-read as it rotates), or the
/// configured kubeconfig. Every request it sends is counted in `stats`.
pub async fn client(cfg: &KubernetesConfig, stats: Arc<Stats>) -> Result<Client, KubeError> {
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).map_err(|e| KubeError::Kubeconfig {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| KubeError::Kubeconfig {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Infer(e.to_string()))?,
    };
    let counting =
        tower::util::MapRequestLayer::new(move |req: hyper::Request<kube::client::Body>| {
            Stats::add(&stats.kube_api_requests, 1);
            req
        });
    let builder = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| KubeError::Client(e.to_string()))?;
    Ok(builder.with_layer(&counting).build())
}

/// Runs the watches until the process ends, keeping `cache` current and bumping `changed`.
/// `namespaces`: watch the namespaces too (`Config::watches_namespaces`).
pub async fn run(
    client: Client,
    cfg: KubernetesConfig,
    cache: SharedCache,
    open: Arc<OpenPods>,
    changed: notify::Sender<u64>,
    stats: Arc<Stats>,
    namespaces: bool,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let wc = watcher::Config::default()
        .fields(&format!("spec.nodeName={}", cfg.node_name))
        .any_semantic();
    let mut pod_events = watcher::watcher(pods, wc).default_backoff().boxed();
    let mut ns_events = if namespaces {
        let api: Api<Namespace> = Api::all(client);
        watcher::watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .boxed()
    } else {
        futures::stream::pending().boxed()
    };
    let mut listing: Vec<PodInfo> = vec![];
    let mut purge = tokio::time::interval(Duration::from_secs(10));
    let mut last_error: Option<Instant> = None;
    let bump = |cache: &SharedCache| {
        let g = cache.read().map(|c| c.generation).unwrap_or(0);
        let _ = changed.send(g);
    };
    loop {
        tokio::select! {
            ev = pod_events.next() => {
                let Some(ev) = ev else { break };
                let now = Instant::now();
                match ev {
                    Ok(Event::Init) => {
                        Stats::add(&stats.kube_relists, 1);
                        listing.clear();
                    }
                    Ok(Event::InitApply(p)) => listing.extend(PodInfo::from_pod(&p)),
                    Ok(Event::InitDone) => {
                        let n = listing.len();
                        write(&cache).replace_all(std::mem::take(&mut listing), now);
                        tracing::info!(pods = n, "pod metadata listed");
                        bump(&cache);
                    }
                    Ok(Event::Apply(p)) => {
                        if let Some(info) = PodInfo::from_pod(&p) {
                            write(&cache).apply(info);
                            bump(&cache);
                        }
                    }
                    Ok(Event::Delete(p)) => {
                        if let Some(uid) = p.metadata.uid.as_deref() {
                            write(&cache).delete(uid, now);
                            bump(&cache);
                        }
                    }
                    Err(e) => {
                        Stats::add(&stats.kube_watch_errors, 1);
                        // Reported at most every 30 s: the watcher backs off and retries.
                        if last_error.is_none_or(|t| now.duration_since(t) > Duration::from_secs(30)) {
                            tracing::warn!(error = %e, "pod watch failed; relisting with backoff, shipping goes on");
                            last_error = Some(now);
                        }
                    }
                }
            }
            ev = ns_events.next() => {
                match ev {
                    Some(Ok(Event::Apply(ns) | Event::InitApply(ns))) => {
                        if let Some(name) = ns.metadata.name.clone() {
                            let m = ns.metadata;
                            write(&cache).set_namespace(name, m.labels.unwrap_or_default(), m.annotations.unwrap_or_default());
                            bump(&cache);
                        }
                    }
                    Some(Err(_)) => Stats::add(&stats.kube_watch_errors, 1),
                    _ => {}
                }
            }
            _ = purge.tick() => {
                let now = Instant::now();
                let mut c = write(&cache);
                let n = c.purge(now, cfg.deleted_pod_ttl, &open);
                let evicted = c.evict_deleted_over(MAX_DELETED_PODS, now, &open);
                stats.kube_cache_pods.store(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
                drop(c);
                Stats::add(&stats.kube_cache_evicted, evicted as u64);
                if evicted > 0 {
                    tracing::warn!(evicted, max = MAX_DELETED_PODS, "too many deleted pods kept for their last lines; the oldest were dropped early");
                }
                if n + evicted > 0 {
                    bump(&cache);
                }
            }
        }
    }
}

fn write(cache: &SharedCache) -> std::sync::RwLockWriteGuard<'_, super::cache::PodCache> {
    cache.write().unwrap_or_else(|e| e.into_inner())
}
