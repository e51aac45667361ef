//! The Kubernetes manifests: every document deserialises into the k8s-openapi types with no
//! unknown field, the DaemonSet keeps its invariants, `kubectl kustomize` renders the base,
//! and the config it ships is valid.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use std::path::Path;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

fn strict<T: DeserializeOwned>(doc: serde_yaml::Value, what: &str) -> T {
    let mut unknown = vec![];
    let v: T = serde_ignored::deserialize(doc, |path| unknown.push(path.to_string()))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(unknown.is_empty(), "{what}: unknown fields {unknown:?}");
    v
}

fn documents(file: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(Path::new(DIR).join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

#[test]
fn every_manifest_is_a_valid_kubernetes_object() {
    let mut kinds = vec![];
    for file in [
        "namespace.yaml",
        "serviceaccount.yaml",
        "rbac.yaml",
        "secret.yaml",
        "daemonset.yaml",
    ] {
        for doc in documents(file) {
            let kind = doc["kind"].as_str().unwrap().to_string();
            let what = format!("{file} {kind}");
            match kind.as_str() {
                "Namespace" => drop(strict::<Namespace>(doc, &what)),
                "ServiceAccount" => drop(strict::<ServiceAccount>(doc, &what)),
                "ClusterRole" => drop(strict::<ClusterRole>(doc, &what)),
                "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(doc, &what)),
                "Secret" => drop(strict::<Secret>(doc, &what)),
                "DaemonSet" => drop(strict::<DaemonSet>(doc, &what)),
                other => panic!("unexpected kind {other} in {file}"),
            }
            kinds.push(kind);
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "Namespace",
            "Secret",
            "ServiceAccount"
        ]
    );
}

#[test]
fn rbac_is_read_only_on_pods_and_namespaces() {
    let role: ClusterRole = strict(documents("rbac.yaml").remove(0), "ClusterRole");
    let rules = role.rules.unwrap();
    assert_eq!(rules.len(), 1);
    let mut resources = rules[0].resources.clone().unwrap();
    resources.sort();
    assert_eq!(resources, ["namespaces", "pods"]);
    let mut verbs = rules[0].verbs.clone();
    verbs.sort();
    assert_eq!(verbs, ["get", "list", "watch"]);
}

#[test]
fn the_daemonset_keeps_its_promises() {
    let ds: DaemonSet = strict(documents("daemonset.yaml").remove(0), "DaemonSet");
    let spec = ds.spec;
    assert_eq!(
        spec.update_strategy.unwrap().type_.as_deref(),
        Some("RollingUpdate")
    );
    let pod = spec.template.spec.unwrap();
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("logferry"));
    assert!(
        pod.termination_grace_period_seconds.unwrap() > 10,
        "longer than shutdown.timeout"
    );
    assert!(
        pod.tolerations
            .unwrap()
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "runs on every node"
    );
    let c = &pod.containers[0];
    let env = c.env.clone().unwrap();
    let node = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    assert_eq!(
        node.value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "spec.nodeName"
    );
    let r = c.resources.clone().unwrap();
    let q = |m: &Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
             k: &str| m.as_ref().unwrap()[k].0.clone();
    assert_eq!(
        (q(&r.requests, "cpu"), q(&r.requests, "memory")),
        ("100m".into(), "64Mi".into())
    );
    // No CPU limit: it would throttle the catch-up after an outage (README).
    assert_eq!(q(&r.limits, "memory"), "256Mi");
    assert!(!r.limits.as_ref().unwrap().contains_key("cpu"));
    assert_eq!(
        pod.node_selector.as_ref().unwrap()["kubernetes.io/os"],
        "linux"
    );
    assert_eq!(
        pod.security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref())
            .map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .clone()
            .unwrap()
    };
    assert_eq!(probe_path(&c.liveness_probe), "/healthz");
    assert_eq!(probe_path(&c.readiness_probe), "/readyz");
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
    let mounts = c.volume_mounts.clone().unwrap();
    let varlog = mounts.iter().find(|m| m.mount_path == "/var/log").unwrap();
    // A subPath mount never sees ConfigMap updates: the config would not reload.
    let config = mounts
        .iter()
        .find(|m| m.mount_path == "/etc/logferry")
        .unwrap();
    assert_eq!(config.sub_path, None);
    assert_eq!(varlog.read_only, Some(true));
    assert!(mounts
        .iter()
        .any(|m| m.mount_path == "/var/lib/logferry" && m.read_only != Some(true)));
    let volumes = pod.volumes.unwrap();
    let host = |name: &str| {
        volumes
            .iter()
            .find(|v| v.name == name)
            .unwrap()
            .host_path
            .clone()
            .unwrap()
            .path
    };
    assert_eq!(host("varlog"), "/var/log");
    // On Docker and cri-dockerd nodes the /var/log/containers links lead here.
    assert_eq!(host("dockercontainers"), "/var/lib/docker/containers");
    let docker = mounts
        .iter()
        .find(|m| m.name == "dockercontainers")
        .unwrap();
    assert_eq!(docker.mount_path, "/var/lib/docker/containers");
    assert_eq!(docker.read_only, Some(true));
    assert_eq!(host("state"), "/var/lib/logferry");
}

#[test]
fn the_namespace_admits_the_hostpath_volumes() {
    let ns: Namespace = strict(documents("namespace.yaml").remove(0), "Namespace");
    let labels = ns.metadata.labels.unwrap();
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "privileged");
}

#[test]
fn the_prometheus_operator_component_scrapes_and_alerts() {
    use k8s_openapi::api::core::v1::Service;
    let dir = "components/prometheus-operator";
    let component = &documents(&format!("{dir}/kustomization.yaml"))[0];
    assert_eq!(component["kind"], "Component");
    let mut listed: Vec<&str> = component["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        ["prometheusrule.yaml", "service.yaml", "servicemonitor.yaml"]
    );
    let service: Service = strict(
        documents(&format!("{dir}/service.yaml")).remove(0),
        "Service",
    );
    let spec = service.spec.unwrap();
    let ds: DaemonSet = strict(documents("daemonset.yaml").remove(0), "DaemonSet");
    let pod_labels = ds.spec.template.metadata.unwrap().labels.unwrap();
    for (k, v) in spec.selector.as_ref().unwrap() {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "the Service selects the agent's pods"
        );
    }
    let port = &spec.ports.unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("http"), 2020));
    let monitor = &documents(&format!("{dir}/servicemonitor.yaml"))[0];
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "ServiceMonitor");
    let service_labels = service.metadata.labels.unwrap();
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(
            service_labels.get(k.as_str().unwrap()).map(String::as_str),
            v.as_str(),
            "the ServiceMonitor selects the Service"
        );
    }
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "http");
    assert_eq!(endpoint["path"], "/metrics");
    // The rules are the rule file's, to the letter.
    let rule = &documents(&format!("{dir}/prometheusrule.yaml"))[0];
    assert_eq!(rule["kind"], "PrometheusRule");
    let alerts: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/prometheus/alerts.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(rule["spec"]["groups"], alerts["groups"]);
    for doc in [rule, monitor] {
        assert_eq!(doc["metadata"]["namespace"], "logferry");
    }
}

#[test]
fn the_shipped_config_is_valid() {
    let text = std::fs::read_to_string(Path::new(DIR).join("logferry.toml")).unwrap();
    let env = |k: &str| Some(format!("value-of-{k}")).filter(|_| k != "UNSET");
    let with_url = |k: &str| {
        if k == "ES_URL" {
            Some("https://es.example:9200".to_string())
        } else {
            env(k)
        }
    };
    let c = logferry::config::Config::parse(&text, "logferry.toml", &with_url).unwrap();
    assert!(c.kubernetes.enabled);
    assert_eq!(c.kubernetes.node_name, "value-of-NODE_NAME");
    assert_eq!(c.output.kind, logferry::config::OutputKind::Elasticsearch);
    assert_eq!(c.http.listen, "0.0.0.0:2020");
}

#[test]
fn kustomize_renders_the_base() {
    let Some(docs) = kustomize(Path::new(DIR)) else {
        return eprintln!("skipped: kubectl is not installed");
    };
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for k in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Secret",
        "DaemonSet",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let config_map = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let cm_name = config_map["metadata"]["name"].as_str().unwrap();
    // No hash suffix: an edit updates the mounted file in place, and the agent reloads it.
    assert_eq!(cm_name, "logferry-config");
    let volumes = ds["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap();
    assert!(
        volumes.iter().any(|v| v["configMap"]["name"] == cm_name),
        "the DaemonSet mounts the generated ConfigMap"
    );
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/logferry/logferry:0.1.0"
    );
    let _: DaemonSet = strict(ds.clone(), "rendered DaemonSet");

    // With the Prometheus Operator component, from an overlay as a user would write it.
    let overlay = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let base = relative(overlay.path(), Path::new(DIR));
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources: [{0}]\ncomponents: [{0}/components/prometheus-operator]\n",
            base.display()
        ),
    )
    .unwrap();
    let docs = kustomize(overlay.path()).expect("kubectl ran a moment ago");
    for k in ["DaemonSet", "Service", "ServiceMonitor", "PrometheusRule"] {
        let doc = docs.iter().find(|d| d["kind"] == k);
        assert!(doc.is_some(), "{k} missing");
        assert_eq!(doc.unwrap()["metadata"]["namespace"], "logferry", "{k}");
    }
}

/// The documents `kubectl kustomize` renders from `dir`; `None` without kubectl.
fn kustomize(dir: &Path) -> Option<Vec<serde_yaml::Value>> {
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect(),
    )
}

/// `to` as a path relative to `from` (kustomize takes no absolute resource paths).
fn relative(from: &Path, to: &Path) -> std::path::PathBuf {
    let (from, to) = (
        std::fs::canonicalize(from).unwrap(),
        std::fs::canonicalize(to).unwrap(),
    );
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = std::path::PathBuf::new();
    for _ in from.components().skip(common) {
        out.push("..");
    }
    for c in to.components().skip(common) {
        out.push(c);
    }
    out
}

#[test]
fn the_check_catches_an_unknown_field() {
    let doc: serde_yaml::Value = serde_yaml::from_str(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  lables: {a: b}\n",
    )
    .unwrap();
    let caught = std::panic::catch_unwind(|| strict::<Namespace>(doc, "typo"));
    assert!(caught.is_err(), "a misspelt field must fail the check");
}

#[test]
fn alerting_rules_use_only_metrics_the_agent_exports() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yaml");
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exported = logferry::metrics::render(&logferry::stats::Stats::default(), &[]);
    let names: std::collections::BTreeSet<&str> = exported
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let metric = regex::Regex::new(r"logferry_[a-z0-9_]+").unwrap();
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            let expr = rule["expr"].as_str().unwrap();
            assert!(
                ["critical", "warning", "info"]
                    .contains(&rule["labels"]["severity"].as_str().unwrap()),
                "{name}: severity"
            );
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{name}: summary"
            );
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "{name}: unbalanced"
            );
            let used: Vec<&str> = metric.find_iter(expr).map(|m| m.as_str()).collect();
            assert!(!used.is_empty(), "{name} uses no logferry metric");
            for m in used {
                assert!(names.contains(m), "{name}: {m} is not exported");
            }
            alerts += 1;
        }
    }
    assert!(alerts >= 8);
}
