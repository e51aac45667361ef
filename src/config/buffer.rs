//! `[buffer]`: where encoded documents wait for Elasticsearch.

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BufferKind {
    /// Lines wait in the files they came from; checkpoints move on delivery.
    Memory,
    /// Documents wait in a bounded on-disk queue in the state directory; checkpoints move
    /// once they are in it, so a long outage outlives kubelet's rotation.
    Disk,
}

/// When appended documents are forced to disk. A file's checkpoint moves only after the
/// documents it covers are as durable as this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// After every write, before the lines it holds are acknowledged.
    Always,
    /// At most every `fsync_interval` under load, and whenever writing pauses.
    Interval,
    /// Left to the kernel: survives a crash of the agent, not of the node.
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    #[serde(rename = "type")]
    pub kind: BufferKind,
    /// Bytes on disk at most; when full, reading the log files pauses.
    #[serde(with = "super::byte_size")]
    pub max_size: u64,
    pub fsync: Fsync,
    #[serde(with = "super::duration_str")]
    pub fsync_interval: Duration,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            kind: BufferKind::Memory,
            max_size: 2 * 1024 * 1024 * 1024,
            fsync: Fsync::Interval,
            fsync_interval: Duration::from_secs(1),
        }
    }
}

impl BufferConfig {
    pub fn validate(&self, elasticsearch: bool) -> Result<(), (String, String)> {
        if self.kind == BufferKind::Memory {
            return Ok(());
        }
        if !elasticsearch {
            return Err((
                "buffer.type".into(),
                "the disk buffer holds Elasticsearch documents; set output.type = \"elasticsearch\" or buffer.type = \"memory\"".into(),
            ));
        }
        if self.max_size < 1024 * 1024 {
            return Err(("buffer.max_size".into(), "must be at least 1MiB".into()));
        }
        if self.fsync == Fsync::Interval && self.fsync_interval.is_zero() {
            return Err((
                "buffer.fsync_interval".into(),
                "must be greater than zero".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_disk_buffer_names_its_key() {
        let disk = |f: &dyn Fn(&mut BufferConfig)| {
            let mut c = BufferConfig {
                kind: BufferKind::Disk,
                ..Default::default()
            };
            f(&mut c);
            c
        };
        assert_eq!(disk(&|_| {}).validate(true), Ok(()));
        let key = |c: BufferConfig, es: bool| c.validate(es).unwrap_err().0;
        assert_eq!(key(disk(&|_| {}), false), "buffer.type");
        assert_eq!(key(disk(&|c| c.max_size = 4096), true), "buffer.max_size");
        assert_eq!(
            key(disk(&|c| c.fsync_interval = Duration::ZERO), true),
            "buffer.fsync_interval"
        );
        // The memory buffer has nothing to check.
        assert_eq!(BufferConfig::default().validate(false), Ok(()));
    }
}
