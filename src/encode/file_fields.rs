//! What every document of a file shares (its id seed, its path, and the Kubernetes,
//! container, host and agent members), encoded once per file and pod version and kept
//! while the file's events come.

use super::doc_id::FileIds;
use super::escape::write_bytes;
use super::metadata::{ContainerMetadata, MetadataOptions};
use crate::event::{same_pod, FileKey, LogEvent, PodMetadata};
use bytes::Bytes;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// One file's shared parts, pre-encoded.
#[derive(Debug, Clone)]
pub struct FileFields {
    /// How the file's document ids are made.
    pub ids: FileIds,
    /// `"file":{"path":…}`, for inside the `log` object.
    pub path: Bytes,
    /// The Kubernetes, container, host and agent members, without braces.
    pub members: Bytes,
}

/// How the members are written: the node's name and what of the pod goes in.
#[derive(Debug, Clone, Default)]
pub struct Describe {
    pub host_name: String,
    pub options: MetadataOptions,
}

impl Describe {
    pub fn fields(&self, e: &LogEvent) -> FileFields {
        let mut path = b"\"file\":{\"path\":".to_vec();
        write_bytes(&mut path, e.file.path.as_os_str().as_encoded_bytes());
        path.push(b'}');
        let pod = e.pod.as_deref();
        let members = ContainerMetadata {
            path: &e.file.kube,
            pod: pod.map(|p| &*p.pod),
            namespace_labels: pod
                .and_then(|p| p.namespace_labels.as_deref())
                .filter(|_| self.options.namespace_labels),
            options: &self.options,
        }
        .fragment(&self.host_name);
        FileFields {
            ids: FileIds::new(&e.file.identity, e.file.ids),
            path: Bytes::from(path),
            members,
        }
    }
}

/// Every this many files encoded, those with no event since the last sweep are forgotten
/// (released files, most often; one still followed is encoded again at its next event).
const SWEEP_EVERY: u32 = 256;

/// The shared parts of the files being read, by file and the pod version they were built
/// for.
#[derive(Debug, Clone, Default)]
pub struct FileFieldsCache {
    describe: Describe,
    files: HashMap<FileKey, Cached, BuildHasherDefault<KeyHasher>>,
    built: u32,
}

#[derive(Debug, Clone)]
struct Cached {
    /// The pod version the fields were built for.
    pod: Option<Arc<PodMetadata>>,
    fields: FileFields,
    /// An event came since the last sweep.
    used: bool,
}

impl FileFieldsCache {
    pub fn new(describe: Describe) -> Self {
        FileFieldsCache {
            describe,
            files: HashMap::default(),
            built: 0,
        }
    }

    /// The event's file's shared parts, encoded on its first event and when its pod
    /// changes (the enrich stage hands a new `PodMetadata` per pod version).
    pub fn get(&mut self, e: &LogEvent) -> &FileFields {
        let current = match self.files.get_mut(&e.file.key) {
            Some(c) => {
                c.used = true;
                same_pod(&c.pod, &e.pod)
            }
            None => false,
        };
        if !current {
            self.built = self.built.wrapping_add(1);
            if self.built.is_multiple_of(SWEEP_EVERY) {
                self.files.retain(|_, c| std::mem::take(&mut c.used));
            }
            let cached = Cached {
                pod: e.pod.clone(),
                fields: self.describe.fields(e),
                used: true,
            };
            self.files.insert(e.file.key, cached);
        }
        &self.files[&e.file.key].fields
    }
}

/// File keys are counted up from 0: they are their own hash.
#[derive(Debug, Clone, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::document::tests::event;
    use crate::event::Flags;

    #[test]
    fn encoded_once_per_file_and_again_when_the_pod_changes() {
        let mut cache = FileFieldsCache::new(Describe {
            host_name: "node-1".into(),
            ..Default::default()
        });
        let mut e = event(b"x", Flags::empty());
        let first = cache.get(&e).members.clone();
        assert!(std::str::from_utf8(&first).unwrap().contains("\"node-1\""));
        // The same file and pod: the same bytes, not encoded again.
        assert_eq!(cache.get(&e).members.as_ptr(), first.as_ptr());
        let pod = crate::enrich::kube::pod::PodInfo {
            name: "web-1".into(),
            namespace: "shop".into(),
            uid: "uid-1".into(),
            ip: Some("10.1.2.3".into()),
            ..Default::default()
        };
        e.pod = Some(Arc::new(PodMetadata {
            pod: Arc::new(pod),
            namespace_labels: None,
            namespace_annotations: None,
        }));
        let with_pod = cache.get(&e).members.clone();
        assert!(std::str::from_utf8(&with_pod)
            .unwrap()
            .contains("\"ip\":\"10.1.2.3\""));
        assert_eq!(
            cache.get(&e).ids,
            FileIds::new(&e.file.identity, e.file.ids)
        );
    }

    #[test]
    fn files_without_events_are_forgotten_and_the_busy_are_kept() {
        let mut cache = FileFieldsCache::default();
        let e = event(b"x", Flags::empty());
        let of = |key: u64| {
            let mut f = (*e.file).clone();
            f.key = key;
            LogEvent {
                file: Arc::new(f),
                ..e.clone()
            }
        };
        let busy = of(0);
        for key in 1..=(4 * SWEEP_EVERY as u64) {
            cache.get(&of(key));
            cache.get(&busy);
        }
        assert!(
            cache.files.len() <= 2 * SWEEP_EVERY as usize,
            "{}",
            cache.files.len()
        );
        let kept = cache.get(&busy).members.as_ptr();
        assert_eq!(cache.get(&busy).members.as_ptr(), kept);
        assert!(cache.files.contains_key(&0), "the busy file stays");
    }
}
