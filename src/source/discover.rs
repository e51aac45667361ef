//! Finds the files to follow: include globs minus exclude globs, symlinks resolved (the
//! kubelet's `/var/log/containers` links point into `/var/log/pods`), one entry per file.

use crate::config::SourceConfig;
use crate::stats::Stats;
use globset::{GlobSet, GlobSetBuilder};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Found {
    /// The path as the glob matched it.
    pub path: PathBuf,
    /// Where it resolves to.
    pub real_path: PathBuf,
    pub dev: u64,
    pub inode: u64,
}

#[derive(Debug)]
pub struct Discovery {
    include: Vec<String>,
    exclude: GlobSet,
    /// Where a matched path may resolve to (canonicalized at each scan: they may appear
    /// late or be links themselves).
    roots: Vec<PathBuf>,
    /// Links refused, so each is reported once.
    refused: std::sync::Mutex<HashSet<PathBuf>>,
    /// Links that led to nothing at the last scan: since when, and whether counted yet.
    dangling: std::sync::Mutex<HashMap<PathBuf, (Instant, bool)>>,
    /// How long a link must lead to nothing before it is counted and warned about.
    dangling_grace: Duration,
    /// Each link's target as last read, and where it then resolved to: a link that still
    /// says the same costs one `readlink` at a scan, not a `realpath` (a syscall or two
    /// per path component), most of what a rescan of an idle node costs.
    resolved: std::sync::Mutex<HashMap<PathBuf, (PathBuf, PathBuf)>>,
}

/// A link dangles for a moment in every rotation (the file renamed, the new one not yet
/// made) and when kubelet cleans a container up: only one that stays so is a problem.
pub const DANGLING_GRACE: Duration = Duration::from_secs(30);

impl Discovery {
    pub fn new(cfg: &SourceConfig) -> Result<Self, globset::Error> {
        let mut b = GlobSetBuilder::new();
        for g in &cfg.exclude {
            b.add(globset::Glob::new(g)?);
        }
        let mut roots: Vec<PathBuf> = cfg
            .include
            .iter()
            .map(|g| {
                let dir = fixed_prefix(g);
                dir.parent().map_or(dir.clone(), Path::to_path_buf)
            })
            .collect();
        roots.extend(cfg.symlink_roots.iter().cloned());
        Ok(Discovery {
            include: cfg.include.clone(),
            exclude: b.build()?,
            roots,
            refused: Default::default(),
            dangling: Default::default(),
            dangling_grace: DANGLING_GRACE,
            resolved: Default::default(),
        })
    }

    /// Counts and warns about dangling links after `grace` (zero for a one-off look).
    pub fn with_dangling_grace(mut self, grace: Duration) -> Self {
        self.dangling_grace = grace;
        self
    }

    /// Every matching regular file, in a stable order, once each. Links that lead out of
    /// the allowed roots and links that lead to nothing are counted in `stats` and warned
    /// about, as are patterns that match nothing (rate-limited).
    pub fn scan(&self, stats: &Stats) -> Vec<Found> {
        let roots: Vec<PathBuf> = self
            .roots
            .iter()
            .filter_map(|r| std::fs::canonicalize(r).ok())
            .collect();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        // Links met at this scan: the others are forgotten at its end.
        let mut resolved = HashMap::new();
        let mut dangling = HashSet::new();
        let mut empty = Vec::new();
        for pattern in &self.include {
            let Ok(paths) = glob::glob(pattern) else {
                continue;
            };
            let mut matched = false;
            for path in paths.flatten() {
                if self.exclude.is_match(&path) {
                    continue;
                }
                let real_path = match self.resolve(&path, &mut resolved) {
                    Ok(p) => p,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        if path.is_symlink() {
                            dangling.insert(path);
                        }
                        continue;
                    }
                    Err(_) => continue,
                };
                if !roots.iter().any(|r| real_path.starts_with(r)) {
                    let mut reported = self.refused.lock().unwrap_or_else(|e| e.into_inner());
                    if reported.insert(path.clone()) {
                        Stats::add(&stats.links_refused, 1);
                        tracing::warn!(path = %path.display(), target = %real_path.display(), "not following a link out of the log directories (source.symlink_roots)");
                    }
                    continue;
                }
                if self.exclude.is_match(&real_path) {
                    continue;
                }
                let meta = match std::fs::metadata(&real_path) {
                    Ok(m) => m,
                    // Resolved from the last scan: its file is gone since.
                    Err(e) => {
                        if e.kind() == std::io::ErrorKind::NotFound && path.is_symlink() {
                            dangling.insert(path);
                        }
                        continue;
                    }
                };
                if !meta.is_file() {
                    continue;
                }
                matched = true;
                if !seen.insert((meta.dev(), meta.ino())) {
                    continue;
                }
                out.push(Found {
                    path,
                    real_path,
                    dev: meta.dev(),
                    inode: meta.ino(),
                });
            }
            if !matched {
                empty.push(pattern.as_str());
            }
        }
        *self.resolved.lock().unwrap_or_else(|e| e.into_inner()) = resolved;
        self.report_dangling(dangling, stats);
        if !empty.is_empty() {
            if let Some(held_back) = crate::log_limit::allow("include_matches_nothing") {
                tracing::warn!(patterns = ?empty, held_back, "source.include: a pattern matches no file to read");
            }
        }
        out
    }

    /// Where `path` leads: from the last scan's answer if it is a link whose target reads
    /// the same, else by `realpath`. Links are remembered in `met`.
    fn resolve(
        &self,
        path: &Path,
        met: &mut HashMap<PathBuf, (PathBuf, PathBuf)>,
    ) -> std::io::Result<PathBuf> {
        let Ok(target) = std::fs::read_link(path) else {
            return std::fs::canonicalize(path);
        };
        let known = self
            .resolved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .filter(|(t, _)| *t == target)
            .map(|(_, real)| real.clone());
        let real = match known {
            Some(real) => real,
            None => std::fs::canonicalize(path)?,
        };
        met.insert(path.to_path_buf(), (target, real.clone()));
        Ok(real)
    }

    /// Counts each link that has led to nothing for the grace period, once; warns, at
    /// most once a period, while any do. On Docker and cri-dockerd nodes they all do when
    /// `/var/lib/docker/containers` is not mounted.
    fn report_dangling(&self, found: HashSet<PathBuf>, stats: &Stats) {
        let at = Instant::now();
        let mut known = self.dangling.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|p, _| found.contains(p));
        for p in found {
            known.entry(p).or_insert((at, false));
        }
        let mut lasting = Vec::new();
        for (p, (since, counted)) in known.iter_mut() {
            if at.duration_since(*since) >= self.dangling_grace {
                if !*counted {
                    *counted = true;
                    Stats::add(&stats.links_dangling, 1);
                }
                lasting.push(p);
            }
        }
        if let Some(example) = lasting.iter().min() {
            if let Some(held_back) = crate::log_limit::allow("dangling_link") {
                let target = std::fs::read_link(example).unwrap_or_default();
                tracing::warn!(
                    dangling = lasting.len(),
                    example = %example.display(),
                    target = %target.display(),
                    held_back,
                    "links in source.include lead to no file, which is not read: is the directory they point into mounted (on Docker nodes, /var/lib/docker/containers)?"
                );
            }
        }
    }
    /// Whether every pattern has its wildcards in its last part only, so that watching
    /// each pattern's directory tells of every file that may match.
    pub fn flat(&self) -> bool {
        self.include
            .iter()
            .all(|g| Some(fixed_prefix(g).as_path()) == Path::new(g).parent())
    }

    /// Whether the last scan found links leading to nothing (their files may come where
    /// nothing is watched).
    pub fn has_dangling(&self) -> bool {
        !self
            .dangling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The directories to watch for new files: each include glob's fixed leading part.
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.include.iter().map(|g| fixed_prefix(g)).collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

fn fixed_prefix(pattern: &str) -> PathBuf {
    let mut dir = PathBuf::new();
    let path = Path::new(pattern);
    let comps: Vec<Component> = path.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let s = c.as_os_str().to_string_lossy();
        if s.contains(['*', '?', '[', '{']) || i + 1 == comps.len() {
            break;
        }
        dir.push(c);
    }
    if dir.as_os_str().is_empty() {
        dir.push(".");
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_resolved_again_when_it_changes_and_dangles_when_its_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let (pods, links) = (dir.path().join("pods"), dir.path().join("containers"));
        fs::create_dir_all(&pods).unwrap();
        fs::create_dir_all(&links).unwrap();
        let (a, b) = (pods.join("a.log"), pods.join("b.log"));
        fs::write(&a, "a\n").unwrap();
        fs::write(&b, "b\n").unwrap();
        let link = links.join("x.log");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let cfg = SourceConfig {
            include: vec![format!("{}/*.log", links.display())],
            ..Default::default()
        };
        let d = Discovery::new(&cfg)
            .unwrap()
            .with_dangling_grace(Duration::ZERO);
        let stats = Stats::default();
        let real = |found: Vec<Found>| found.into_iter().map(|f| f.real_path).collect::<Vec<_>>();
        let canon = |p: &Path| fs::canonicalize(p).unwrap();
        assert_eq!(real(d.scan(&stats)), vec![canon(&a)]);
        assert_eq!(real(d.scan(&stats)), vec![canon(&a)], "from the last scan");
        fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&b, &link).unwrap();
        assert_eq!(real(d.scan(&stats)), vec![canon(&b)], "the link changed");
        fs::remove_file(&b).unwrap();
        assert!(d.scan(&stats).is_empty());
        assert!(d.has_dangling(), "its file is gone");
        assert_eq!(Stats::get(&stats.links_dangling), 1);
    }

    #[test]
    fn a_pattern_is_flat_when_only_its_last_part_has_wildcards() {
        let flat = |include: &[&str]| {
            let cfg = SourceConfig {
                include: include.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            Discovery::new(&cfg).unwrap().flat()
        };
        assert!(flat(&["/var/log/containers/*.log"]));
        assert!(flat(&["/var/log/containers/*.log", "/var/log/app/x-?.log"]));
        assert!(!flat(&["/var/log/pods/*/*/*.log"]));
        assert!(!flat(&[
            "/var/log/containers/*.log",
            "/var/lib/docker/containers/*/*-json.log"
        ]));
    }
    use std::fs;

    #[test]
    fn follows_symlinks_dedupes_and_excludes() {
        let d = tempfile::tempdir().unwrap();
        let pods = d.path().join("pods/ns_p_uid/c");
        let containers = d.path().join("containers");
        fs::create_dir_all(&pods).unwrap();
        fs::create_dir_all(&containers).unwrap();
        fs::write(pods.join("0.log"), b"x\n").unwrap();
        fs::write(d.path().join("pods/skip.log"), b"x\n").unwrap();
        std::os::unix::fs::symlink(pods.join("0.log"), containers.join("p_ns_c-1.log")).unwrap();
        std::os::unix::fs::symlink(pods.join("missing.log"), containers.join("dangling.log"))
            .unwrap();
        fs::write(containers.join("noisy.log"), b"x\n").unwrap();
        let cfg = SourceConfig {
            include: vec![
                format!("{}/*.log", containers.display()),
                format!("{}/pods/**/*.log", d.path().display()),
            ],
            exclude: vec!["**/noisy.log".into(), "**/skip.log".into()],
            ..Default::default()
        };
        let disc = Discovery::new(&cfg).unwrap();
        let stats = Stats::default();
        let found = disc.scan(&stats);
        assert_eq!(found.len(), 1, "{found:?}");
        // A link dangles for a moment in a rotation: not counted within the grace period…
        assert_eq!(Stats::get(&stats.links_dangling), 0);
        // …counted once past it, however often it is seen.
        let disc = disc.with_dangling_grace(Duration::ZERO);
        disc.scan(&stats);
        disc.scan(&stats);
        assert_eq!(Stats::get(&stats.links_dangling), 1);
        assert_eq!(found[0].path, containers.join("p_ns_c-1.log"));
        assert_eq!(
            found[0].real_path,
            fs::canonicalize(pods.join("0.log")).unwrap()
        );
        assert_eq!(disc.watch_dirs(), vec![containers, d.path().join("pods")]);
    }

    #[test]
    fn links_out_of_the_log_roots_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let logs = d.path().join("var/log");
        let containers = logs.join("containers");
        let pods = logs.join("pods/ns_p_uid/c");
        let secret = d.path().join("etc/shadow");
        fs::create_dir_all(&containers).unwrap();
        fs::create_dir_all(&pods).unwrap();
        fs::create_dir_all(secret.parent().unwrap()).unwrap();
        fs::write(pods.join("0.log"), b"x\n").unwrap();
        fs::write(&secret, b"root:x\n").unwrap();
        std::os::unix::fs::symlink(pods.join("0.log"), containers.join("ok.log")).unwrap();
        std::os::unix::fs::symlink(&secret, containers.join("evil.log")).unwrap();
        let mut cfg = SourceConfig {
            include: vec![format!("{}/*.log", containers.display())],
            ..Default::default()
        };
        let stats = Stats::default();
        let found = Discovery::new(&cfg).unwrap().scan(&stats);
        let names: Vec<_> = found.iter().map(|f| f.path.file_name().unwrap()).collect();
        assert_eq!(names, vec!["ok.log"]);
        assert_eq!(Stats::get(&stats.links_refused), 1);
        // Allowed once its directory is a configured root.
        cfg.symlink_roots.push(d.path().join("etc"));
        let found = Discovery::new(&cfg).unwrap().scan(&Default::default());
        assert_eq!(found.len(), 2);
    }
}
