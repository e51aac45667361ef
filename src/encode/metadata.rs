//! The Kubernetes, container, host and agent members of a container's documents: built
//! from the path's names and, when the enrich stage found it, the pod; encoded once per
//! file and pod version (`file_fields`).

use crate::enrich::kube::pod::PodInfo;
use crate::enrich::path::PathMetadata;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// What of the pod goes into documents.
#[derive(Debug, Clone, Default)]
pub struct MetadataOptions {
    /// Annotation keys kept: exact, or a prefix ending in `*`.
    pub annotations: Vec<String>,
    /// `.` → `_` in label and annotation keys.
    pub dedot: bool,
    /// The namespace's labels go in (`kubernetes.namespace_labels`); they may be watched
    /// for the retention rules alone.
    pub namespace_labels: bool,
}

pub struct ContainerMetadata<'a> {
    pub path: &'a PathMetadata,
    pub pod: Option<&'a PodInfo>,
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
    pub options: &'a MetadataOptions,
}

impl ContainerMetadata<'_> {
    /// The members, without the braces, ready to splice into every document.
    pub fn fragment(&self, host_name: &str) -> Bytes {
        let text = Value::Object(self.fields(host_name)).to_string();
        Bytes::copy_from_slice(&text.as_bytes()[1..text.len() - 1])
    }

    pub fn fields(&self, host_name: &str) -> Map<String, Value> {
        let p = self.path;
        let pod = self.pod;
        let container_name = p.container_name.as_deref();
        let container =
            pod.and_then(|pod| pod.container(container_name, p.container_id.as_deref()));
        let mut kube = Map::new();
        let ns = pod.map(|x| x.namespace.as_str()).or(p.namespace.as_deref());
        if let Some(ns) = ns {
            kube.insert("namespace".into(), json!(ns));
        }
        let mut pod_obj = Map::new();
        if let Some(n) = pod.map(|x| x.name.as_str()).or(p.pod_name.as_deref()) {
            pod_obj.insert("name".into(), json!(n));
        }
        if let Some(u) = pod.map(|x| x.uid.as_str()).or(p.pod_uid.as_deref()) {
            pod_obj.insert("uid".into(), json!(u));
        }
        if let Some(ip) = pod.and_then(|x| x.ip.as_deref()) {
            pod_obj.insert("ip".into(), json!(ip));
        }
        if !pod_obj.is_empty() {
            kube.insert("pod".into(), Value::Object(pod_obj));
        }
        if let Some(node) = pod.and_then(|x| x.node.as_deref()) {
            kube.insert("node".into(), json!({ "name": node }));
        }
        if let Some(c) = container.map(|c| c.name.as_str()).or(container_name) {
            kube.insert("container".into(), json!({ "name": c }));
        }
        if let Some(pod) = pod {
            if !pod.labels.is_empty() {
                kube.insert("labels".into(), self.keys(pod.labels.iter()));
            }
            let kept = pod
                .annotations
                .iter()
                .filter(|(k, _)| self.keeps_annotation(k));
            let annotations = self.keys(kept);
            if annotations.as_object().is_some_and(|o| !o.is_empty()) {
                kube.insert("annotations".into(), annotations);
            }
            let o = &pod.owners;
            for (key, v) in [
                ("deployment", &o.deployment),
                ("replicaset", &o.replicaset),
                ("statefulset", &o.statefulset),
                ("daemonset", &o.daemonset),
                ("job", &o.job),
                ("cronjob", &o.cronjob),
            ] {
                if let Some(v) = v {
                    kube.insert(key.into(), json!({ "name": v }));
                }
            }
        }
        if let Some(labels) = self.namespace_labels.filter(|l| !l.is_empty()) {
            kube.insert("namespace_labels".into(), self.keys(labels.iter()));
        }
        let mut doc = Map::new();
        if !kube.is_empty() {
            doc.insert("kubernetes".into(), Value::Object(kube));
        }
        let mut c = Map::new();
        if let Some(id) = container
            .and_then(|c| c.id.as_deref())
            .or(p.container_id.as_deref())
        {
            c.insert("id".into(), json!(id));
        }
        if let Some(rt) = container.and_then(|c| c.runtime.as_deref()) {
            c.insert("runtime".into(), json!(rt));
        }
        if let Some(image) = container.and_then(|c| c.image.as_deref()) {
            c.insert("image".into(), json!({ "name": image }));
        }
        if !c.is_empty() {
            doc.insert("container".into(), Value::Object(c));
        }
        doc.insert("host".into(), json!({ "name": host_name }));
        doc.insert(
            "agent".into(),
            json!({ "name": "logferry", "type": "logferry", "version": env!("CARGO_PKG_VERSION") }),
        );
        doc
    }

    fn keys<'k>(&self, kv: impl Iterator<Item = (&'k String, &'k String)>) -> Value {
        Value::Object(
            kv.map(|(k, v)| {
                (
                    if self.options.dedot {
                        k.replace('.', "_")
                    } else {
                        k.clone()
                    },
                    json!(v),
                )
            })
            .collect(),
        )
    }

    fn keeps_annotation(&self, key: &str) -> bool {
        self.options
            .annotations
            .iter()
            .any(|a| match a.strip_suffix('*') {
                Some(prefix) => key.starts_with(prefix),
                None => a == key,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::kube::pod::{ContainerInfo, Owners};

    fn pod() -> PodInfo {
        PodInfo {
            uid: "u-1".into(),
            namespace: "shop".into(),
            name: "web-1".into(),
            ip: Some("10.0.0.7".into()),
            node: Some("node-1".into()),
            labels: [
                ("app".into(), "web".into()),
                ("app.kubernetes.io/name".into(), "web".into()),
            ]
            .into(),
            annotations: [
                ("team".into(), "a".into()),
                ("secret.example/token".into(), "x".into()),
            ]
            .into(),
            owners: Owners {
                deployment: Some("web".into()),
                replicaset: Some("web-7d4".into()),
                ..Default::default()
            },
            containers: vec![ContainerInfo {
                name: "nginx".into(),
                id: Some("abc".into()),
                runtime: Some("containerd".into()),
                image: Some("nginx:1".into()),
            }],
            resource_version: "1".into(),
        }
    }

    #[test]
    fn api_metadata_with_labels_owner_and_container() {
        let path = PathMetadata {
            container_name: Some("nginx".into()),
            ..Default::default()
        };
        let p = pod();
        let opts = MetadataOptions {
            annotations: vec!["team".into()],
            dedot: false,
            namespace_labels: true,
        };
        let m = ContainerMetadata {
            path: &path,
            pod: Some(&p),
            namespace_labels: None,
            options: &opts,
        };
        let v = Value::Object(m.fields("h"));
        assert_eq!(v["kubernetes"]["labels"]["app.kubernetes.io/name"], "web");
        assert_eq!(v["kubernetes"]["labels"]["app"], "web");
        assert_eq!(v["kubernetes"]["annotations"], json!({ "team": "a" }));
        assert_eq!(v["kubernetes"]["deployment"]["name"], "web");
        assert_eq!(v["kubernetes"]["node"]["name"], "node-1");
        assert_eq!(v["kubernetes"]["pod"]["ip"], "10.0.0.7");
        assert_eq!(
            v["container"],
            json!({ "id": "abc", "runtime": "containerd", "image": { "name": "nginx:1" } })
        );
        let bytes = m.fragment("h");
        let whole: Value = serde_json::from_slice(&[b"{", &bytes[..], b"}"].concat()).unwrap();
        assert_eq!(whole, v);
    }

    #[test]
    fn dedot_and_path_only() {
        let path = PathMetadata {
            namespace: Some("ns".into()),
            pod_name: Some("p".into()),
            ..Default::default()
        };
        let p = pod();
        let opts = MetadataOptions {
            annotations: vec!["secret.example/*".into()],
            dedot: true,
            namespace_labels: true,
        };
        let ns_labels: BTreeMap<String, String> = [("env".into(), "prod".into())].into();
        let v = Value::Object(
            ContainerMetadata {
                path: &path,
                pod: Some(&p),
                namespace_labels: Some(&ns_labels),
                options: &opts,
            }
            .fields("h"),
        );
        assert_eq!(v["kubernetes"]["labels"]["app_kubernetes_io/name"], "web");
        assert_eq!(
            v["kubernetes"]["annotations"],
            json!({ "secret_example/token": "x" })
        );
        assert_eq!(v["kubernetes"]["namespace_labels"]["env"], "prod");
        let v = Value::Object(
            ContainerMetadata {
                path: &path,
                pod: None,
                namespace_labels: None,
                options: &opts,
            }
            .fields("h"),
        );
        assert_eq!(
            v["kubernetes"],
            json!({ "namespace": "ns", "pod": { "name": "p" } })
        );
    }
}
