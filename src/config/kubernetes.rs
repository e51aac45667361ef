//! `[kubernetes]`: where pod metadata comes from and what of it goes into documents.

use super::duration_str;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Watch the API for pod metadata (the DaemonSet turns this on).
    pub enabled: bool,
    /// This node's name (from the Downward API: `spec.nodeName`); only its pods are watched.
    pub node_name: String,
    /// A kubeconfig to use instead of the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// How long a new container's lines wait for its pod to be seen before they ship
    /// with the names from the path alone (flagged `no_kube_metadata`).
    #[serde(with = "duration_str")]
    pub metadata_wait: Duration,
    /// A deleted pod's metadata is kept this long at least, and until its files are read.
    #[serde(with = "duration_str")]
    pub deleted_pod_ttl: Duration,
    /// Annotation keys copied into `kubernetes.annotations` (exact, or a prefix ending in `*`).
    pub annotations: Vec<String>,
    /// Add the namespace's labels as `kubernetes.namespace_labels` (watches namespaces).
    pub namespace_labels: bool,
    /// Replace `.` with `_` in label and annotation keys, for clusters without logferry's
    /// template (where they are not `flattened`).
    pub dedot_keys: bool,
    /// Namespaces whose pods are not read at all.
    pub exclude_namespaces: Vec<String>,
    /// Pods matching any of these label selectors (`key=value`, `key!=value`, `key`) are not read.
    pub exclude_labels: Vec<String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            enabled: false,
            node_name: String::new(),
            kubeconfig: None,
            metadata_wait: Duration::from_secs(2),
            deleted_pod_ttl: Duration::from_secs(300),
            annotations: vec![],
            namespace_labels: false,
            dedot_keys: false,
            exclude_namespaces: vec![],
            exclude_labels: vec![],
        }
    }
}

impl KubernetesConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((format!("kubernetes.{k}"), m.to_string()));
        if self.enabled && self.node_name.is_empty() {
            return err(
                "node_name",
                "is required when kubernetes.enabled (set NODE_NAME from spec.nodeName)",
            );
        }
        if self.metadata_wait > Duration::from_secs(60) {
            return err(
                "metadata_wait",
                "must be at most 60s (lines of the file wait that long)",
            );
        }
        for (i, sel) in self.exclude_labels.iter().enumerate() {
            if crate::enrich::kube::selector::Selector::parse(sel).is_none() {
                return Err((
                    format!("kubernetes.exclude_labels[{i}]"),
                    format!("{sel:?} is not `key`, `key=value` or `key!=value`"),
                ));
            }
        }
        Ok(())
    }
}
