//! Which files are not read at all: namespaces and label selectors from the config, and
//! the pod annotations `logferry.io/exclude` / `logferry.io/exclude-<container>`.

use super::kube::cache::{OpenPods, SharedCache};
use super::kube::selector::Selector;
use super::path::PathMetadata;
use crate::config::KubernetesConfig;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Read,
    Skip,
    /// The pod is not known yet: ask again soon.
    Wait,
}

#[derive(Debug, Clone, Default)]
pub struct Exclusion {
    namespaces: HashSet<String>,
    selectors: Vec<Selector>,
    kube: Option<(SharedCache, Arc<OpenPods>)>,
    wait: Duration,
}

impl Exclusion {
    pub fn new(cfg: &KubernetesConfig, kube: Option<(SharedCache, Arc<OpenPods>)>) -> Self {
        Exclusion {
            namespaces: cfg.exclude_namespaces.iter().cloned().collect(),
            selectors: cfg
                .exclude_labels
                .iter()
                .filter_map(|s| Selector::parse(s))
                .collect(),
            kube,
            wait: cfg.metadata_wait,
        }
    }

    pub fn open_pods(&self) -> Option<&Arc<OpenPods>> {
        self.kube.as_ref().map(|(_, o)| o)
    }

    /// `waited`: how long the file has been known. Unknown pods are read after `metadata_wait`:
    /// better a line too many than a line lost.
    pub fn decide(&self, path: &PathMetadata, waited: Duration) -> Decision {
        if path
            .namespace
            .as_ref()
            .is_some_and(|ns| self.namespaces.contains(ns))
        {
            return Decision::Skip;
        }
        let Some((cache, _)) = &self.kube else {
            return Decision::Read;
        };
        if path.pod_uid.is_none() && path.pod_name.is_none() {
            return Decision::Read;
        }
        let pod = cache.read().unwrap_or_else(|e| e.into_inner()).get(
            path.pod_uid.as_deref(),
            path.namespace.as_deref(),
            path.pod_name.as_deref(),
        );
        match pod {
            Some(p) if p.excludes(path.container_name.as_deref()) => Decision::Skip,
            Some(p) if self.selectors.iter().any(|s| s.matches(&p.labels)) => Decision::Skip,
            Some(_) => Decision::Read,
            None if waited < self.wait => Decision::Wait,
            None => Decision::Read,
        }
    }
}
