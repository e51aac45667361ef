//! What logferry keeps of a pod: names, labels, annotations, owners and containers, taken
//! from the API object once per change.

use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    pub deployment: Option<String>,
    pub replicaset: Option<String>,
    pub statefulset: Option<String>,
    pub daemonset: Option<String>,
    pub job: Option<String>,
    pub cronjob: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    /// Without the runtime prefix (`containerd://`).
    pub id: Option<String>,
    pub runtime: Option<String>,
    pub image: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub ip: Option<String>,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub owners: Owners,
    pub containers: Vec<ContainerInfo>,
    pub resource_version: String,
}

impl PodInfo {
    pub fn from_pod(pod: &Pod) -> Option<PodInfo> {
        let m = &pod.metadata;
        let uid = m.uid.clone()?;
        let labels: BTreeMap<String, String> = m.labels.clone().unwrap_or_default();
        let mut owners = Owners::default();
        for r in m
            .owner_references
            .iter()
            .flatten()
            .filter(|r| r.controller.unwrap_or(false))
        {
            match r.kind.as_str() {
                "ReplicaSet" => {
                    owners.replicaset = Some(r.name.clone());
                    owners.deployment = deployment_of(&r.name, labels.get("pod-template-hash"));
                }
                "StatefulSet" => owners.statefulset = Some(r.name.clone()),
                "DaemonSet" => owners.daemonset = Some(r.name.clone()),
                "Job" => {
                    owners.job = Some(r.name.clone());
                    owners.cronjob = cronjob_of(&r.name);
                }
                _ => {}
            }
        }
        let mut containers: Vec<ContainerInfo> = vec![];
        if let Some(spec) = &pod.spec {
            for c in spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
            {
                containers.push(ContainerInfo {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    ..Default::default()
                });
            }
        }
        if let Some(status) = &pod.status {
            let statuses = status
                .container_statuses
                .iter()
                .flatten()
                .chain(status.init_container_statuses.iter().flatten());
            for s in statuses {
                let (runtime, id) = match s
                    .container_id
                    .as_deref()
                    .and_then(|id| id.split_once("://"))
                {
                    Some((rt, id)) => (Some(rt.to_string()), Some(id.to_string())),
                    None => (None, s.container_id.clone()),
                };
                match containers.iter_mut().find(|c| c.name == s.name) {
                    Some(c) => {
                        c.id = id;
                        c.runtime = runtime;
                        if c.image.is_none() {
                            c.image = Some(s.image.clone());
                        }
                    }
                    None => containers.push(ContainerInfo {
                        name: s.name.clone(),
                        id,
                        runtime,
                        image: Some(s.image.clone()),
                    }),
                }
            }
        }
        Some(PodInfo {
            uid,
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            labels,
            annotations: m.annotations.clone().unwrap_or_default(),
            owners,
            containers,
            resource_version: m.resource_version.clone().unwrap_or_default(),
        })
    }

    pub fn container(&self, name: Option<&str>, id: Option<&str>) -> Option<&ContainerInfo> {
        self.containers
            .iter()
            .find(|c| name.is_some() && Some(c.name.as_str()) == name)
            .or_else(|| {
                self.containers
                    .iter()
                    .find(|c| id.is_some() && c.id.as_deref() == id)
            })
    }

    /// `logferry.io/exclude: "true"` on the pod, or `logferry.io/exclude-<container>`.
    pub fn excludes(&self, container: Option<&str>) -> bool {
        let yes = |k: &str| {
            self.annotations
                .get(k)
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        };
        yes("logferry.io/exclude")
            || container.is_some_and(|c| yes(&format!("logferry.io/exclude-{c}")))
    }
}

/// The characters of a pod-template-hash (Kubernetes' SafeEncodeString alphabet).
fn is_template_hash(s: &str) -> bool {
    // Without the pod-template-hash label, short suffixes are too likely to be plain words.
    (6..=10).contains(&s.len())
        && s.bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
}

/// `web-7d4b9c5f8` → `web`, when the suffix is the pod-template-hash.
fn deployment_of(replicaset: &str, template_hash: Option<&String>) -> Option<String> {
    let (name, suffix) = replicaset.rsplit_once('-')?;
    let is_hash = match template_hash {
        Some(h) => h == suffix,
        None => is_template_hash(suffix),
    };
    is_hash.then(|| name.to_string())
}

/// `report-28876540` → `report`: a CronJob names its Jobs with the scheduled minute.
fn cronjob_of(job: &str) -> Option<String> {
    let (name, suffix) = job.rsplit_once('-')?;
    (suffix.len() >= 8 && suffix.bytes().all(|b| b.is_ascii_digit())).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn reads_names_labels_owners_and_containers() {
        let p = pod(serde_json::json!({
            "metadata": {
                "name": "web-7d4b9c5f8-x2x9q", "namespace": "shop", "uid": "u-1", "resourceVersion": "42",
                "labels": {"app": "web", "app.kubernetes.io/name": "web", "pod-template-hash": "7d4b9c5f8"},
                "annotations": {"logferry.io/exclude-sidecar": "true"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c5f8", "uid": "rs", "controller": true}]
            },
            "spec": {"nodeName": "node-1", "containers": [{"name": "nginx", "image": "nginx:1.27"}, {"name": "sidecar", "image": "envoy"}]},
            "status": {"podIP": "10.0.0.7", "containerStatuses": [
                {"name": "nginx", "containerID": "containerd://abc123", "image": "docker.io/library/nginx:1.27", "imageID": "", "ready": true, "restartCount": 0}
            ]}
        }));
        let info = PodInfo::from_pod(&p).unwrap();
        assert_eq!(info.owners.deployment.as_deref(), Some("web"));
        assert_eq!(info.owners.replicaset.as_deref(), Some("web-7d4b9c5f8"));
        assert_eq!(info.ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(info.node.as_deref(), Some("node-1"));
        let c = info.container(Some("nginx"), None).unwrap();
        assert_eq!(
            (c.id.as_deref(), c.runtime.as_deref()),
            (Some("abc123"), Some("containerd"))
        );
        assert_eq!(c.image.as_deref(), Some("nginx:1.27"));
        assert_eq!(info.container(None, Some("abc123")).unwrap().name, "nginx");
        assert!(!info.excludes(Some("nginx")));
        assert!(info.excludes(Some("sidecar")));
    }

    #[test]
    fn derives_owner_names() {
        assert_eq!(deployment_of("web-7d4b9c5f8", None).as_deref(), Some("web"));
        assert_eq!(
            deployment_of("my-app-5f6d7c8b9", Some(&"5f6d7c8b9".to_string())).as_deref(),
            Some("my-app")
        );
        assert_eq!(
            deployment_of("standalone-rs", None),
            None,
            "not a template hash"
        );
        assert_eq!(cronjob_of("report-28876540").as_deref(), Some("report"));
        assert_eq!(cronjob_of("migrate-db"), None);
        let p = pod(
            serde_json::json!({"metadata": {"name": "report-28876540-mq7rd", "namespace": "batch", "uid": "u",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "report-28876540", "uid": "j", "controller": true}]}}),
        );
        let o = PodInfo::from_pod(&p).unwrap().owners;
        assert_eq!(
            (o.job.as_deref(), o.cronjob.as_deref()),
            (Some("report-28876540"), Some("report"))
        );
        let p = pod(
            serde_json::json!({"metadata": {"name": "db-0", "uid": "u", "annotations": {"logferry.io/exclude": "True"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "s", "controller": true}]}}),
        );
        let info = PodInfo::from_pod(&p).unwrap();
        assert_eq!(info.owners.statefulset.as_deref(), Some("db"));
        assert!(info.excludes(None));
    }
}
