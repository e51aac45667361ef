//! Names parsed from kubelet's log paths:
//! `/var/log/containers/<pod>_<namespace>_<container>-<container id>.log` and
//! `/var/log/pods/<namespace>_<pod>_<pod uid>/<container>/<restart>.log`.

use std::path::Path;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PathMetadata {
    pub namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub container_name: Option<String>,
    pub container_id: Option<String>,
}

impl PathMetadata {
    /// Reads what both the discovered path and the file it resolves to tell.
    pub fn from_paths(discovered: &Path, real: &Path) -> Self {
        let mut m = PathMetadata::default();
        for p in [discovered, real] {
            m.read_containers_name(p);
            m.read_pods_path(p);
        }
        m
    }

    fn read_containers_name(&mut self, p: &Path) {
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        let Some(stem) = name.strip_suffix(".log") else {
            return;
        };
        let mut parts = stem.splitn(3, '_');
        let (Some(pod), Some(ns), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let Some((container, id)) = rest.rsplit_once('-') else {
            return;
        };
        if pod.is_empty() || ns.is_empty() || container.is_empty() || !is_container_id(id) {
            return;
        }
        self.pod_name.get_or_insert_with(|| pod.to_string());
        self.namespace.get_or_insert_with(|| ns.to_string());
        self.container_name
            .get_or_insert_with(|| container.to_string());
        self.container_id.get_or_insert_with(|| id.to_string());
    }

    fn read_pods_path(&mut self, p: &Path) {
        let Some(file) = p.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        // `0.log`, or a rotated `0.log.20240101-000000`.
        let restart = file.split('.').next().unwrap_or_default();
        if restart.is_empty()
            || !restart.bytes().all(|b| b.is_ascii_digit())
            || !file.contains(".log")
        {
            return;
        }
        let Some(container_dir) = p.parent() else {
            return;
        };
        let Some(pod_dir) = container_dir.parent() else {
            return;
        };
        let container = container_dir.file_name().and_then(|n| n.to_str());
        let pod = pod_dir.file_name().and_then(|n| n.to_str());
        let (Some(container), Some(pod)) = (container, pod) else {
            return;
        };
        let mut parts = pod.splitn(3, '_');
        let (Some(ns), Some(name), Some(uid)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        if ns.is_empty() || name.is_empty() || uid.is_empty() || container.is_empty() {
            return;
        }
        self.namespace.get_or_insert_with(|| ns.to_string());
        self.pod_name.get_or_insert_with(|| name.to_string());
        self.pod_uid.get_or_insert_with(|| uid.to_string());
        self.container_name
            .get_or_insert_with(|| container.to_string());
    }
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5f1a0e1c9b7d4b2a8c3e6f0d1b2a3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b";

    #[test]
    fn reads_containers_symlink_and_pods_target() {
        let link = format!("/var/log/containers/web-7d4b9c-x2x_shop_nginx-proxy-{ID}.log");
        let target = "/var/log/pods/shop_web-7d4b9c-x2x_0d5e1f2a-1111-4222-8333-944455556666/nginx-proxy/0.log";
        let m = PathMetadata::from_paths(Path::new(&link), Path::new(target));
        assert_eq!(m.namespace.as_deref(), Some("shop"));
        assert_eq!(m.pod_name.as_deref(), Some("web-7d4b9c-x2x"));
        assert_eq!(m.container_name.as_deref(), Some("nginx-proxy"));
        assert_eq!(m.container_id.as_deref(), Some(ID));
        assert_eq!(
            m.pod_uid.as_deref(),
            Some("0d5e1f2a-1111-4222-8333-944455556666")
        );
    }

    #[test]
    fn reads_rotated_pods_file() {
        let p = Path::new("/var/log/pods/ns_pod_uid-1/app/3.log.20240101-101010");
        let m = PathMetadata::from_paths(p, p);
        assert_eq!(m.pod_uid.as_deref(), Some("uid-1"));
        assert_eq!(m.container_name.as_deref(), Some("app"));
        assert_eq!(m.container_id, None);
    }

    #[test]
    fn other_paths_give_nothing() {
        for p in [
            "/tmp/app.log",
            "/var/log/containers/not_enough.log",
            "/x/a_b_c-nothex.log",
            "/",
        ] {
            assert_eq!(
                PathMetadata::from_paths(Path::new(p), Path::new(p)),
                PathMetadata::default(),
                "{p}"
            );
        }
    }
}
