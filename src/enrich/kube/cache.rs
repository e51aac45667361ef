//! The pods of this node as the watch last reported them. One writer (the watch), many
//! readers. A deleted pod stays until `deleted_pod_ttl` has passed and no file of it is open,
//! so the last lines of short-lived pods and jobs are still enriched.

use super::pod::PodInfo;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Entry {
    info: Arc<PodInfo>,
    deleted_at: Option<Instant>,
}

type Labels = Arc<BTreeMap<String, String>>;

/// A namespace's labels and annotations, with the generation they were set at.
#[derive(Debug, Clone)]
struct NamespaceMeta {
    generation: u64,
    labels: Labels,
    annotations: Labels,
}

#[derive(Debug, Default)]
pub struct PodCache {
    pods: HashMap<String, Entry>,
    by_name: HashMap<(String, String), String>,
    /// Labels and annotations of each namespace, with the generation they were set at.
    namespaces: HashMap<String, NamespaceMeta>,
    /// The first full list has arrived.
    pub synced: bool,
    /// Bumped on every change, so readers can tell when to look again.
    pub generation: u64,
}

pub type SharedCache = Arc<RwLock<PodCache>>;

/// Pods with files still being read, counted by the tailer.
#[derive(Debug, Default)]
pub struct OpenPods {
    open: Mutex<HashMap<String, (usize, Option<Instant>)>>,
}

/// Events of a released file may still be on their way through the pipeline.
const RELEASE_GRACE: Duration = Duration::from_secs(30);

impl OpenPods {
    pub fn opened(&self, key: &str) {
        let mut m = self.open.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(key.to_string()).or_insert((0, None)).0 += 1;
    }

    pub fn released(&self, key: &str, now: Instant) {
        let mut m = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = m.get_mut(key) {
            e.0 = e.0.saturating_sub(1);
            e.1 = Some(now);
        }
    }

    /// Whether a pod's metadata may still be needed.
    pub fn in_use(&self, key: &str, now: Instant) -> bool {
        let m = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(key) {
            Some((n, _)) if *n > 0 => true,
            Some((_, Some(at))) => now.duration_since(*at) < RELEASE_GRACE,
            _ => false,
        }
    }
}

impl PodCache {
    pub fn apply(&mut self, info: PodInfo) {
        self.by_name.insert(
            (info.namespace.clone(), info.name.clone()),
            info.uid.clone(),
        );
        self.pods.insert(
            info.uid.clone(),
            Entry {
                info: Arc::new(info),
                deleted_at: None,
            },
        );
        self.generation += 1;
    }

    pub fn delete(&mut self, uid: &str, now: Instant) {
        if let Some(e) = self.pods.get_mut(uid) {
            e.deleted_at.get_or_insert(now);
            self.generation += 1;
        }
    }

    /// A full list (after a start, a 410 or a reconnect): what it lacks was deleted meanwhile.
    pub fn replace_all(&mut self, infos: Vec<PodInfo>, now: Instant) {
        let present: std::collections::HashSet<String> =
            infos.iter().map(|i| i.uid.clone()).collect();
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|u| !present.contains(*u))
            .cloned()
            .collect();
        for uid in gone {
            self.delete(&uid, now);
        }
        for info in infos {
            self.apply(info);
        }
        self.synced = true;
        self.generation += 1;
    }

    pub fn set_namespace(
        &mut self,
        name: String,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
    ) {
        self.generation += 1;
        let meta = NamespaceMeta {
            generation: self.generation,
            labels: Arc::new(labels),
            annotations: Arc::new(annotations),
        };
        self.namespaces.insert(name, meta);
    }

    /// A namespace's labels and the generation they are from.
    pub fn namespace_labels(&self, name: &str) -> Option<(u64, Labels)> {
        self.namespaces
            .get(name)
            .map(|m| (m.generation, m.labels.clone()))
    }

    /// A namespace's annotations (`logferry.io/retention` is read from them).
    pub fn namespace_annotations(&self, name: &str) -> Option<Labels> {
        self.namespaces.get(name).map(|m| m.annotations.clone())
    }

    /// By uid (exact), else by namespace and name.
    pub fn get(
        &self,
        uid: Option<&str>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Option<Arc<PodInfo>> {
        if let Some(e) = uid.and_then(|u| self.pods.get(u)) {
            return Some(e.info.clone());
        }
        let key = (namespace?.to_string(), name?.to_string());
        let uid = self.by_name.get(&key)?;
        self.pods.get(uid).map(|e| e.info.clone())
    }

    /// Drops deleted pods past their time whose files are all read.
    pub fn purge(&mut self, now: Instant, ttl: Duration, open: &OpenPods) -> usize {
        let expired: Vec<(String, String, String)> = self
            .pods
            .iter()
            .filter(|(uid, e)| {
                e.deleted_at.is_some_and(|d| now.duration_since(d) >= ttl)
                    && !open.in_use(uid, now)
                    && !open.in_use(&format!("{}/{}", e.info.namespace, e.info.name), now)
            })
            .map(|(uid, e)| (uid.clone(), e.info.namespace.clone(), e.info.name.clone()))
            .collect();
        for (uid, ns, name) in &expired {
            self.pods.remove(uid);
            if self.by_name.get(&(ns.clone(), name.clone())) == Some(uid) {
                self.by_name.remove(&(ns.clone(), name.clone()));
            }
        }
        if !expired.is_empty() {
            self.generation += 1;
        }
        expired.len()
    }

    /// Keeps at most `cap` deleted pods: past it the longest-deleted ones whose files are
    /// all read go first, before their TTL. Returns how many went.
    pub fn evict_deleted_over(&mut self, cap: usize, now: Instant, open: &OpenPods) -> usize {
        let mut deleted: Vec<(Instant, String)> = self
            .pods
            .iter()
            .filter_map(|(uid, e)| e.deleted_at.map(|d| (d, uid.clone())))
            .collect();
        if deleted.len() <= cap {
            return 0;
        }
        deleted.sort();
        let mut excess = deleted.len() - cap;
        let mut evicted = 0;
        for (_, uid) in deleted {
            if excess == 0 {
                break;
            }
            let Some(e) = self.pods.get(&uid) else {
                continue;
            };
            let name_key = format!("{}/{}", e.info.namespace, e.info.name);
            if open.in_use(&uid, now) || open.in_use(&name_key, now) {
                continue;
            }
            let key = (e.info.namespace.clone(), e.info.name.clone());
            self.pods.remove(&uid);
            if self.by_name.get(&key) == Some(&uid) {
                self.by_name.remove(&key);
            }
            excess -= 1;
            evicted += 1;
        }
        if evicted > 0 {
            self.generation += 1;
        }
        evicted
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

/// The key the tailer counts a file's pod under: its uid, or `namespace/name`.
pub fn pod_key(path: &crate::enrich::path::PathMetadata) -> Option<String> {
    path.pod_uid.clone().or_else(|| {
        Some(format!(
            "{}/{}",
            path.namespace.as_ref()?,
            path.pod_name.as_ref()?
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(uid: &str, name: &str) -> PodInfo {
        PodInfo {
            uid: uid.into(),
            namespace: "ns".into(),
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn deleted_pods_stay_until_ttl_and_files_are_read() {
        let mut c = PodCache::default();
        let open = OpenPods::default();
        let t0 = Instant::now();
        c.apply(info("u1", "a"));
        open.opened("u1");
        c.delete("u1", t0);
        let ttl = Duration::from_secs(60);
        assert_eq!(c.purge(t0 + ttl * 2, ttl, &open), 0, "a file is still open");
        assert!(c.get(Some("u1"), None, None).is_some());
        open.released("u1", t0 + ttl * 2);
        assert_eq!(
            c.purge(t0 + ttl * 2 + Duration::from_secs(1), ttl, &open),
            0,
            "grace after release"
        );
        assert_eq!(c.purge(t0 + ttl * 2 + RELEASE_GRACE, ttl, &open), 1);
        assert!(c.get(Some("u1"), Some("ns"), Some("a")).is_none());
    }

    #[test]
    fn deleted_pods_over_the_cap_go_oldest_first_unless_their_files_are_open() {
        let mut c = PodCache::default();
        let open = OpenPods::default();
        let t0 = Instant::now();
        for i in 0..5u64 {
            let uid = format!("u{i}");
            c.apply(info(&uid, &format!("p{i}")));
            c.delete(&uid, t0 + Duration::from_secs(i));
        }
        c.apply(info("live", "live"));
        open.opened("u0"); // the oldest still has a file being read
        assert_eq!(c.evict_deleted_over(2, t0, &open), 3);
        let left: Vec<bool> = (0..5)
            .map(|i| c.get(Some(&format!("u{i}")), None, None).is_some())
            .collect();
        assert_eq!(left, vec![true, false, false, false, true]);
        assert!(
            c.get(Some("live"), None, None).is_some(),
            "live pods are never evicted"
        );
        assert_eq!(c.evict_deleted_over(2, t0, &open), 0);
    }

    #[test]
    fn lookup_by_uid_then_name_and_relist_marks_missing_as_deleted() {
        let mut c = PodCache::default();
        let t0 = Instant::now();
        c.apply(info("u1", "a"));
        c.apply(info("u2", "b"));
        assert_eq!(c.get(None, Some("ns"), Some("b")).unwrap().uid, "u2");
        // The name is reused by a new pod: the uid still finds the old one.
        c.apply(info("u3", "b"));
        assert_eq!(c.get(Some("u2"), Some("ns"), Some("b")).unwrap().uid, "u2");
        assert_eq!(c.get(None, Some("ns"), Some("b")).unwrap().uid, "u3");
        c.replace_all(vec![info("u1", "a")], t0);
        let ttl = Duration::from_secs(1);
        assert_eq!(c.purge(t0 + ttl, ttl, &OpenPods::default()), 2);
        assert_eq!(c.len(), 1);
    }
}
