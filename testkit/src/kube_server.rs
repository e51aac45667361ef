//! An in-tree kube-apiserver for tests, as its documentation describes the pieces logferry
//! uses: pod and namespace lists carrying a resourceVersion, watch streams of
//! ADDED/MODIFIED/DELETED and BOOKMARK events, 410 Gone (an ERROR event) for a
//! resourceVersion older than the retained history, bearer-token auth, and request counts.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pod,
    Namespace,
}

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: Kind,
    kind_of_event: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
pub struct KubeState {
    pods: BTreeMap<String, Value>,
    namespaces: BTreeMap<String, Value>,
    rv: u64,
    log: Vec<Change>,
    /// Watches from a resourceVersion before this get 410 Gone.
    compacted_before: u64,
    pub lists: u64,
    pub watches: u64,
    pub gets: u64,
    pub unauthorized: u64,
    /// The token requests must bear (changed by `rotate_token`).
    token: String,
    /// Each token that was accepted, in order.
    pub accepted_tokens: Vec<String>,
}

impl KubeState {
    pub fn requests(&self) -> u64 {
        self.lists + self.watches + self.gets
    }
}

pub struct KubeServer {
    pub url: String,
    pub token: String,
    pub state: Arc<Mutex<KubeState>>,
    events: broadcast::Sender<Option<Change>>,
    down: Arc<AtomicBool>,
    _rt: tokio::runtime::Runtime,
}

/// A pod as the API returns it; `uid` must match the one in the pod's log path.
pub struct PodSpec<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub node: &'a str,
    pub containers: &'a [&'a str],
    pub labels: Value,
    pub annotations: Value,
    pub owner: Option<(&'a str, &'a str)>,
}

impl KubeServer {
    pub fn start() -> KubeServer {
        Self::start_with(None)
    }

    /// Behind TLS, as in a cluster; the CA's PEM is written to `ca_pem`.
    pub fn start_tls(ca_pem: &std::path::Path) -> KubeServer {
        Self::start_with(Some(crate::serve::tls_acceptor(ca_pem)))
    }

    fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> KubeServer {
        let state = Arc::new(Mutex::new(KubeState {
            rv: 100,
            token: "test-token-123".into(),
            ..Default::default()
        }));
        let (events, _) = broadcast::channel(10_000);
        let down = Arc::new(AtomicBool::new(false));
        let token = "test-token-123".to_string();
        let (st, ev, dn, tk) = (state.clone(), events.clone(), down.clone(), token.clone());
        let (rt, url) = crate::serve::serve(tls, dn.clone(), move |req| {
            let (st, ev, dn, tk) = (st.clone(), ev.clone(), dn.clone(), tk.clone());
            async move { handle(req, st, ev, dn, tk).await }
        });
        KubeServer {
            url,
            token,
            state,
            events,
            down,
            _rt: rt,
        }
    }

    /// From now on only `new` is accepted, as when a projected token rotates.
    pub fn rotate_token(&self, new: &str) {
        self.state.lock().unwrap().token = new.to_string();
    }

    /// A kubeconfig file that points at this server with its token.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let p = dir.join("kubeconfig");
        std::fs::write(
            &p,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\nusers:\n- name: test\n  user:\n    token: {}\n",
                self.url, self.token
            ),
        )
        .unwrap();
        p
    }

    fn record(&self, kind: Kind, kind_of_event: &'static str, object: Value) {
        let change = {
            let mut s = self.state.lock().unwrap();
            s.rv += 1;
            let rv = s.rv;
            let mut object = object;
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            match (kind, kind_of_event) {
                (Kind::Pod, "DELETED") => {
                    s.pods.remove(object["metadata"]["uid"].as_str().unwrap());
                }
                (Kind::Pod, _) => {
                    s.pods.insert(
                        object["metadata"]["uid"].as_str().unwrap().to_string(),
                        object.clone(),
                    );
                }
                (Kind::Namespace, _) => {
                    s.namespaces.insert(
                        object["metadata"]["name"].as_str().unwrap().to_string(),
                        object.clone(),
                    );
                }
            }
            let c = Change {
                rv,
                kind,
                kind_of_event,
                object,
            };
            s.log.push(c.clone());
            c
        };
        let _ = self.events.send(Some(change));
    }

    pub fn add_pod(&self, p: PodSpec) {
        let containers: Vec<Value> = p
            .containers
            .iter()
            .map(|c| json!({ "name": c, "image": format!("registry.example/{c}:1.0") }))
            .collect();
        let statuses: Vec<Value> = p
            .containers
            .iter()
            .map(|c| json!({ "name": c, "containerID": format!("containerd://{}-{c}-id", p.uid), "image": format!("registry.example/{c}:1.0"), "imageID": "", "ready": true, "restartCount": 0 }))
            .collect();
        let mut meta = json!({ "name": p.name, "namespace": p.namespace, "uid": p.uid, "labels": p.labels, "annotations": p.annotations });
        if let Some((kind, name)) = p.owner {
            meta["ownerReferences"] = json!([{ "apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "owner-uid", "controller": true }]);
        }
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": { "nodeName": p.node, "containers": containers },
            "status": { "podIP": "10.1.2.3", "containerStatuses": statuses }
        });
        self.record(Kind::Pod, "ADDED", pod);
    }

    pub fn modify_pod(&self, uid: &str, f: impl FnOnce(&mut Value)) {
        let mut pod = self.pod(uid);
        f(&mut pod);
        self.record(Kind::Pod, "MODIFIED", pod);
    }

    pub fn delete_pod(&self, uid: &str) {
        let pod = self.pod(uid);
        self.record(Kind::Pod, "DELETED", pod);
    }

    fn pod(&self, uid: &str) -> Value {
        self.state
            .lock()
            .unwrap()
            .pods
            .get(uid)
            .cloned()
            .expect("pod exists")
    }

    pub fn add_namespace(&self, name: &str, labels: Value) {
        self.add_namespace_annotated(name, labels, json!({}));
    }

    pub fn add_namespace_annotated(&self, name: &str, labels: Value, annotations: Value) {
        let meta = json!({ "name": name, "labels": labels, "annotations": annotations });
        self.record(
            Kind::Namespace,
            "ADDED",
            json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": meta }),
        );
    }

    /// Forgets the history and ends every watch: watching again from an old
    /// resourceVersion now gets 410 Gone, so clients must list again.
    pub fn expire_history(&self) {
        let mut s = self.state.lock().unwrap();
        s.compacted_before = s.rv + 1;
        s.log.clear();
        drop(s);
        let _ = self.events.send(None);
    }

    /// An outage: connections are refused or cut, watches end.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            let _ = self.events.send(None);
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&KubeState) -> T) -> T {
        f(&self.state.lock().unwrap())
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn reply(status: u16, v: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed_unsync())
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code })
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn on_node(pod: &Value, node: Option<&str>) -> bool {
    node.is_none_or(|n| pod["spec"]["nodeName"].as_str() == Some(n))
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<KubeState>>,
    events: broadcast::Sender<Option<Change>>,
    down: Arc<AtomicBool>,
    token: String,
) -> Result<Response<Body>, std::io::Error> {
    if down.load(Ordering::SeqCst) {
        return Err(std::io::Error::other("outage"));
    }
    let _ = token;
    let sent = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    {
        let mut s = state.lock().unwrap();
        if sent != format!("Bearer {}", s.token) {
            s.unauthorized += 1;
            return Ok(reply(401, status(401, "Unauthorized", "Unauthorized")));
        }
        if s.accepted_tokens.last() != Some(&s.token) {
            let t = s.token.clone();
            s.accepted_tokens.push(t);
        }
    }
    let q = query(&req);
    let path = req.uri().path().to_string();
    let kind = match path.as_str() {
        "/api/v1/pods" => Kind::Pod,
        "/api/v1/namespaces" => Kind::Namespace,
        p if p.starts_with("/api/v1/namespaces/") && p.contains("/pods/") => {
            let mut s = state.lock().unwrap();
            s.gets += 1;
            let name = p.rsplit('/').next().unwrap_or("");
            let found = s
                .pods
                .values()
                .find(|v| v["metadata"]["name"] == name)
                .cloned();
            return Ok(match found {
                Some(pod) => reply(200, pod),
                None => reply(
                    404,
                    status(404, "NotFound", &format!("pods \"{name}\" not found")),
                ),
            });
        }
        _ => {
            return Ok(reply(
                404,
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            ))
        }
    };
    let node = q
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("spec.nodeName="))
        .map(str::to_string);
    let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    if !watching {
        let mut s = state.lock().unwrap();
        s.lists += 1;
        let items: Vec<Value> = match kind {
            Kind::Pod => s
                .pods
                .values()
                .filter(|p| on_node(p, node.as_deref()))
                .cloned()
                .collect(),
            Kind::Namespace => s.namespaces.values().cloned().collect(),
        };
        let list_kind = if kind == Kind::Pod {
            "PodList"
        } else {
            "NamespaceList"
        };
        return Ok(reply(
            200,
            json!({ "kind": list_kind, "apiVersion": "v1", "metadata": { "resourceVersion": s.rv.to_string() }, "items": items }),
        ));
    }
    let since: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300u64);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
    let mut live = events.subscribe();
    let (backlog, expired, current) = {
        let mut s = state.lock().unwrap();
        s.watches += 1;
        let expired = since < s.compacted_before;
        let backlog: Vec<Change> = s
            .log
            .iter()
            .filter(|c| c.rv > since && c.kind == kind)
            .cloned()
            .collect();
        (backlog, expired, s.rv)
    };
    let line = |kind_of_event: &str, object: &Value| {
        Bytes::from(format!(
            "{}\n",
            json!({ "type": kind_of_event, "object": object })
        ))
    };
    tokio::spawn(async move {
        if expired {
            let msg = format!("too old resource version: {since} ({current})");
            let _ = tx.send(line("ERROR", &status(410, "Expired", &msg))).await;
            return;
        }
        let mut last = since;
        for c in backlog {
            if kind == Kind::Pod && !on_node(&c.object, node.as_deref()) {
                continue;
            }
            last = c.rv;
            if tx.send(line(c.kind_of_event, &c.object)).await.is_err() {
                return;
            }
        }
        let end = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                ev = live.recv() => match ev {
                    Ok(Some(c)) if c.rv > last && c.kind == kind => {
                        last = c.rv;
                        if (kind == Kind::Namespace || on_node(&c.object, node.as_deref())) && tx.send(line(c.kind_of_event, &c.object)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(_)) => {}
                    // Closed by the test (expired history, outage) or lagging: end the watch.
                    Ok(None) | Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let obj = json!({ "kind": if kind == Kind::Pod { "Pod" } else { "Namespace" }, "apiVersion": "v1", "metadata": { "resourceVersion": last.max(since).to_string() } });
                    if tx.send(line("BOOKMARK", &obj)).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(end) => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed_unsync())
        .unwrap())
}
