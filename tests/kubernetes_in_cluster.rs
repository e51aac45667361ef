//! The agent inside a pod: API address from KUBERNETES_SERVICE_HOST/PORT, and the service
//! account's token and CA from /var/run/secrets/kubernetes.io/serviceaccount, over TLS.
//! The test provides those files only where no real service account exists (it needs root).

mod support;

use serde_json::json;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::kube_server::{KubeServer, PodSpec};
use support::*;

const SA: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Removes the service account files this test wrote.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all("/var/run/secrets/kubernetes.io");
    }
}

#[test]
fn the_in_cluster_service_account_is_used() {
    if Path::new(SA).exists() {
        return eprintln!("skipped: a real service account is mounted here");
    }
    if fs::create_dir_all(SA).is_err() {
        return eprintln!("skipped: cannot write {SA} (needs root)");
    }
    let _cleanup = Cleanup;
    let tree = Tree::new();
    let ca = tree.root.path().join("ca.pem");
    let api = KubeServer::start_tls(&ca);
    fs::copy(&ca, Path::new(SA).join("ca.crt")).unwrap();
    fs::write(Path::new(SA).join("token"), &api.token).unwrap();
    fs::write(Path::new(SA).join("namespace"), "logferry").unwrap();
    api.add_pod(PodSpec {
        namespace: "shop",
        name: "web-1",
        uid: "uid-web-1",
        node: "node-a",
        containers: &["app"],
        labels: json!({ "app": "web" }),
        annotations: json!({}),
        owner: None,
    });
    tree.container("shop", "web-1", "app")
        .append(seq_lines(0, 3).as_bytes());
    let config = tree.root.path().join("agent.toml");
    fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[source]\ninclude = [\"{}\"]\nrescan_interval = \"100ms\"\n[kubernetes]\nenabled = true\nnode_name = \"node-a\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            tree.state_dir().display(),
            tree.glob()
        ),
    )
    .unwrap();
    let port = api.url.rsplit(':').next().unwrap().to_string();
    let out = tree.root.path().join("out.ndjson");
    let mut child = Command::new(env!("CARGO_BIN_EXE_logferry"))
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("KUBECONFIG")
        .env("HOME", tree.root.path())
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", &port)
        .stdout(fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let docs = loop {
        let docs = parse_docs(&fs::read(&out).unwrap_or_default());
        if docs.len() >= 3 {
            break docs;
        }
        assert!(
            Instant::now() < deadline,
            "no documents; API requests: {}",
            api.with(|s| s.requests())
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        docs.iter()
            .all(|d| d["kubernetes"]["labels"]["app"] == "web"),
        "{}",
        docs[0]
    );
    assert_eq!(
        api.with(|s| s.unauthorized),
        0,
        "the service account token was sent"
    );
    assert!(api.with(|s| s.lists) >= 1);

    // The kubelet rotates the projected token; the client re-reads it within a minute.
    fs::write(Path::new(SA).join("token"), "rotated-token-456").unwrap();
    api.rotate_token("rotated-token-456");
    std::thread::sleep(Duration::from_secs(55));
    // Make the client ask again (its watch ends and the history is gone: it lists anew).
    api.expire_history();
    api.add_pod(PodSpec {
        namespace: "shop",
        name: "web-2",
        uid: "uid-web-2",
        node: "node-a",
        containers: &["app"],
        labels: json!({ "app": "web2" }),
        annotations: json!({}),
        owner: None,
    });
    tree.container("shop", "web-2", "app")
        .append(seq_lines(10, 2).as_bytes());
    let deadline = Instant::now() + WAIT;
    loop {
        let docs = parse_docs(&fs::read(&out).unwrap_or_default());
        if docs.len() >= 5 {
            let late: Vec<_> = docs
                .iter()
                .filter(|d| d["kubernetes"]["pod"]["name"] == "web-2")
                .collect();
            assert!(
                late.iter()
                    .all(|d| d["kubernetes"]["labels"]["app"] == "web2"),
                "{}",
                late[0]
            );
            break;
        }
        assert!(Instant::now() < deadline, "no documents after the rotation");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        api.with(|s| s.accepted_tokens.clone()),
        ["test-token-123", "rotated-token-456"]
    );
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}
