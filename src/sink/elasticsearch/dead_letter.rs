//! Documents Elasticsearch refused even after a rescue are written here, in the state
//! directory, one JSON record a line: bounded in size, rotated, every drop counted.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug)]
pub struct DeadLetter {
    dir: PathBuf,
    max_bytes: u64,
    current: Option<(File, u64)>,
    /// Bytes of old dead-letter files deleted to stay under `max_bytes`.
    pub evicted_bytes: u64,
}

impl DeadLetter {
    pub fn new(dir: &Path, max_bytes: u64) -> Self {
        DeadLetter {
            dir: dir.to_path_buf(),
            max_bytes,
            current: None,
            evicted_bytes: 0,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one refused document with the reason; `action` and `doc` are JSON.
    pub fn write(
        &mut self,
        action: &[u8],
        doc: &[u8],
        status: u16,
        error_type: &str,
        reason: &str,
    ) -> io::Result<()> {
        let mut line = Vec::with_capacity(doc.len() + action.len() + 256);
        line.extend_from_slice(b"{\"time_ms\":");
        line.extend_from_slice(now_ms().to_string().as_bytes());
        line.extend_from_slice(b",\"status\":");
        line.extend_from_slice(status.to_string().as_bytes());
        line.extend_from_slice(b",\"error\":");
        line.extend_from_slice(
            serde_json::json!({ "type": error_type, "reason": reason })
                .to_string()
                .as_bytes(),
        );
        line.extend_from_slice(b",\"action\":");
        line.extend_from_slice(action);
        line.extend_from_slice(b",\"document\":");
        line.extend_from_slice(doc);
        line.extend_from_slice(b"}\n");
        let segment = (self.max_bytes / 4).max(1);
        if self
            .current
            .as_ref()
            .is_none_or(|(_, size)| *size >= segment)
        {
            self.rotate()?;
        }
        let (f, size) = self.current.as_mut().expect("opened above");
        f.write_all(&line)?;
        f.flush()?;
        *size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        crate::private_files::create_dir(&self.dir)?;
        let mut files = self.files()?;
        let mut total: u64 = files.iter().map(|(_, s)| s).sum();
        // Make room for one more segment.
        while total + self.max_bytes / 4 > self.max_bytes && !files.is_empty() {
            let (p, s) = files.remove(0);
            fs::remove_file(&p)?;
            tracing::error!(file = %p.display(), bytes = s, "dead-letter files over their size limit; deleted the oldest");
            self.evicted_bytes += s;
            total -= s;
        }
        let path = self
            .dir
            .join(format!("dead-letter-{:020}.ndjson", now_ms()));
        let f = crate::private_files::open_append(&path)?;
        let size = f.metadata()?.len();
        self.current = Some((f, size));
        Ok(())
    }

    /// Existing dead-letter files, oldest first, with their sizes.
    pub fn files(&self) -> io::Result<Vec<(PathBuf, u64)>> {
        let mut v = vec![];
        match fs::read_dir(&self.dir) {
            Ok(rd) => {
                for e in rd.flatten() {
                    let name = e.file_name();
                    if name.to_string_lossy().starts_with("dead-letter-") {
                        v.push((e.path(), e.metadata()?.len()));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        v.sort();
        Ok(v)
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_records_and_stays_bounded() {
        let d = tempfile::tempdir().unwrap();
        let mut dl = DeadLetter::new(&d.path().join("dl"), 4000);
        let doc = format!(r#"{{"message":"{}"}}"#, "x".repeat(200));
        for _ in 0..100 {
            dl.write(
                br#"{"create":{"_id":"a"}}"#,
                doc.as_bytes(),
                400,
                "document_parsing_exception",
                "bad",
            )
            .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let files = dl.files().unwrap();
        let total: u64 = files.iter().map(|(_, s)| s).sum();
        assert!(total <= 4000 + 400, "{total}");
        assert!(dl.evicted_bytes > 0);
        let last = fs::read_to_string(&files.last().unwrap().0).unwrap();
        let rec: serde_json::Value = serde_json::from_str(last.lines().next().unwrap()).unwrap();
        assert_eq!(rec["status"], 400);
        assert_eq!(rec["document"]["message"].as_str().unwrap().len(), 200);
        assert_eq!(rec["action"]["create"]["_id"], "a");
        // Whole documents: readable by logferry's user only.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d.path().join("dl")), 0o700);
        assert!(files.iter().all(|(p, _)| mode(p) == 0o600));
    }
}
