//! The vocabulary every stage shares: a parsed log event, the identity of the file it
//! came from, and the acknowledgements that flow back from the sinks to the checkpointer.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Which output stream of the container wrote the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn parse(s: &[u8]) -> Option<Stream> {
        match s {
            b"stdout" => Some(Stream::Stdout),
            b"stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// Marks on an event that tell a reader what was done to the line (`log.flags`).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Flags(u16);

impl Flags {
    /// Joined from runtime partial chunks (CRI `P`, docker lines without `\n`).
    pub const PARTIAL_MERGED: Flags = Flags(1);
    /// Joined from several lines by a multiline rule.
    pub const MULTILINE: Flags = Flags(1 << 1);
    /// Bytes past `max_line_bytes` were dropped (counted).
    pub const TRUNCATED: Flags = Flags(1 << 2);
    /// One piece of a merged line that was longer than `max_line_bytes`.
    pub const SPLIT: Flags = Flags(1 << 3);
    /// Invalid UTF-8 was replaced with U+FFFD.
    pub const INVALID_UTF8: Flags = Flags(1 << 4);
    /// The line did not parse in the runtime's format and is shipped as it was.
    pub const MALFORMED: Flags = Flags(1 << 5);
    /// The runtime timestamp was missing or invalid; `@timestamp` is the read time.
    pub const NO_TIMESTAMP: Flags = Flags(1 << 6);
    /// Partial chunks whose final chunk never came (file ended or went away).
    pub const INCOMPLETE: Flags = Flags(1 << 7);
    /// The pod was not known to the API watch within `metadata_wait`: names from the path only.
    pub const NO_KUBE_METADATA: Flags = Flags(1 << 8);

    /// A summary of lines dropped over the container's rate limit, in place of the first.
    pub const RATE_LIMIT_SUMMARY: Flags = Flags(1 << 9);
    /// A structured message's configured key held a value of another type than its ECS
    /// field takes: not lifted, kept in the message's object.
    pub const FIELD_TYPE_MISMATCH: Flags = Flags(1 << 10);

    const NAMES: [(Flags, &'static str); 11] = [
        (Flags::PARTIAL_MERGED, "partial_merged"),
        (Flags::MULTILINE, "multiline"),
        (Flags::TRUNCATED, "truncated"),
        (Flags::SPLIT, "split"),
        (Flags::INVALID_UTF8, "invalid_utf8"),
        (Flags::MALFORMED, "malformed"),
        (Flags::NO_TIMESTAMP, "no_timestamp"),
        (Flags::INCOMPLETE, "incomplete"),
        (Flags::NO_KUBE_METADATA, "no_kube_metadata"),
        (Flags::RATE_LIMIT_SUMMARY, "rate_limit_summary"),
        (Flags::FIELD_TYPE_MISMATCH, "field_type_mismatch"),
    ];

    pub const fn empty() -> Flags {
        Flags(0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }

    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .iter()
            .filter(move |(f, _)| self.contains(*f))
            .map(|(_, n)| *n)
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// A file is the same file while its device, inode and the hash of its first line agree;
/// the hash tells a reused inode from the file that had it before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub inode: u64,
    #[serde(with = "hex_u64")]
    pub fingerprint: u64,
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
    }
}

/// How a file's document ids are made. Fixed for a file's whole life, across restarts:
/// a line sent again must get the id it was first sent with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdScheme {
    /// A hash of the file's seed and the offset: the only form of earlier builds, hence
    /// what a checkpoint entry without `ids` means.
    #[default]
    Hashed,
    /// The file's seed, then the offset: ids of one file share their first 15 characters,
    /// which gzip takes almost for free.
    Offset,
}

/// Identifies one reading of one file generation inside this process (a truncated file
/// gets a new key). Acknowledgements are addressed by it.
pub type FileKey = u64;

/// What every event of a file shares: its identity, its path and the names the path
/// tells. What documents make of it is encoded once per file by the encoder.
#[derive(Debug, Clone)]
pub struct FileContext {
    pub key: FileKey,
    pub identity: FileIdentity,
    /// The path it was discovered under (the `/var/log/containers` symlink, usually).
    pub path: PathBuf,
    /// The Kubernetes names its path tells (the API's metadata is matched by them).
    pub kube: crate::enrich::path::PathMetadata,
    /// When the file was first seen: waiting for its pod's metadata counts from here, in
    /// whichever stage the wait happens.
    pub known_since: std::time::Instant,
    /// Resumed from the last run's checkpoint: the events that end at or before this offset
    /// (what the file held at the restart) may have been sent before, and Elasticsearch may
    /// have rolled the stream over since. 0: none.
    pub replay_end: u64,
    pub ids: IdScheme,
}

/// The API's metadata of a file's pod, as the enrich stage found it: one per pod version,
/// shared by the file's events.
#[derive(Debug)]
pub struct PodMetadata {
    pub pod: Arc<crate::enrich::kube::pod::PodInfo>,
    /// The namespace's labels, when asked for.
    pub namespace_labels: Option<Arc<std::collections::BTreeMap<String, String>>>,
    /// The namespace's annotations, watched with its labels.
    pub namespace_annotations: Option<Arc<std::collections::BTreeMap<String, String>>>,
}

/// Whether two events carry the same pod version (or both none): what is derived from a
/// file's pod is kept until this changes.
pub fn same_pod(a: &Option<Arc<PodMetadata>>, b: &Option<Arc<PodMetadata>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// One log event: a line, a merged partial line or a multiline group.
#[derive(Clone, Debug)]
pub struct LogEvent {
    pub file: Arc<FileContext>,
    /// The pod's metadata from the API, once the enrich stage found it.
    pub pod: Option<Arc<PodMetadata>>,
    /// Position in the file's event sequence, for acknowledgements.
    pub seq: u64,
    /// Byte offset of the event's first raw line: with the file identity, its document id.
    pub offset: u64,
    /// The offset that may be committed once this event and all before it are delivered.
    pub safe_point: u64,
    /// The runtime's RFC 3339 timestamp, validated; empty when there was none.
    pub timestamp: Bytes,
    pub stream: Stream,
    pub message: Bytes,
    pub flags: Flags,
}

impl LogEvent {
    /// Whether the event may have been sent by the last run (see `FileContext::replay_end`).
    pub fn is_replay(&self) -> bool {
        self.safe_point <= self.file.replay_end
    }
}

/// A run of events of one file, `first_seq..=last_seq`, that a sink has delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckRange {
    pub key: FileKey,
    pub first_seq: u64,
    pub last_seq: u64,
    pub safe_point: u64,
}

/// Builds the acknowledgements of a delivered batch, joining consecutive events of a file.
#[derive(Default, Debug)]
pub struct AckBuilder {
    ranges: Vec<AckRange>,
}

impl AckBuilder {
    pub fn push(&mut self, event: &LogEvent) {
        self.push_parts(event.file.key, event.seq, event.safe_point);
    }

    /// An event by its file, sequence number and safe point.
    pub fn push_parts(&mut self, key: FileKey, seq: u64, safe_point: u64) {
        if let Some(last) = self.ranges.iter_mut().rev().find(|r| r.key == key) {
            if last.last_seq + 1 == seq {
                last.last_seq = seq;
                last.safe_point = safe_point;
                return;
            }
        }
        self.ranges.push(AckRange {
            key,
            first_seq: seq,
            last_seq: seq,
            safe_point,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn finish(self) -> Vec<AckRange> {
        self.ranges
    }
}
