//! A bulk request body being built: the action line and document of each event, encoded
//! and compressed as they come, so a batch in flight holds its compressed bytes only (a
//! tenth of the raw body). Item positions are kept in raw offsets; the rare retry of a
//! subset decompresses the body again to cut the items out. Each item remembers where it
//! came from, so that it is acknowledged on its own, whatever becomes of the others.

use super::target::Target;
use crate::encode::DocumentEncoder;
use crate::event::{FileKey, LogEvent};
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::Write;
use std::ops::Range;
use std::time::Instant;

/// Encoded bytes are handed to the compressor in runs of about this size.
const CHUNK: usize = 64 * 1024;

/// Where an item's two lines are in the raw body: `start..doc` its action line,
/// `doc..end` its document. 32-bit offsets keep a 20,000-item batch's index small (a
/// request body is far below 4 GiB: Elasticsearch takes 100 MB).
#[derive(Debug, Clone, Copy)]
pub struct Item {
    start: u32,
    doc: u32,
    end: u32,
}

impl Item {
    fn action(self) -> Range<usize> {
        self.start as usize..self.doc as usize
    }

    fn doc(self) -> Range<usize> {
        self.doc as usize..self.end as usize
    }
}

/// Where an item came from: what to acknowledge once it is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An event read from a file (memory buffer): its checkpoint.
    Event {
        key: FileKey,
        seq: u64,
        safe_point: u64,
    },
    /// A record of the disk buffer, read under this ticket.
    Record(u64),
}

/// What the sink keeps of an item besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemMeta {
    pub origin: Origin,
    /// Sends so far that did not settle it.
    pub attempts: u32,
    /// The document is a rescued one (refused once already).
    pub rescued: bool,
}

impl ItemMeta {
    pub fn new(origin: Origin) -> Self {
        ItemMeta {
            origin,
            attempts: 0,
            rescued: false,
        }
    }
}

pub struct Batch {
    gzip: Option<GzEncoder<Vec<u8>>>,
    /// Encoded bytes not yet compressed (all of them without compression).
    pending: Vec<u8>,
    /// Raw bytes already handed to the compressor.
    flushed: usize,
    pub items: Vec<Item>,
    meta: Vec<ItemMeta>,
    pub started: Option<Instant>,
    /// Holds items the last run may have sent (see `Sealed::ambiguous`).
    pub ambiguous: bool,
}

impl Batch {
    /// `level` 0 leaves the body uncompressed.
    pub fn new(level: u32) -> Batch {
        Batch {
            gzip: (level > 0)
                .then(|| GzEncoder::new(Vec::with_capacity(CHUNK), Compression::new(level))),
            pending: Vec::with_capacity(if level > 0 { 2 * CHUNK } else { CHUNK }),
            flushed: 0,
            items: Vec::new(),
            meta: Vec::new(),
            started: None,
            ambiguous: false,
        }
    }

    pub fn push(&mut self, e: &LogEvent, target: &Target, encoder: &mut DocumentEncoder) {
        let a = self.begin_item();
        let action_len = encode_item(e, target, encoder, &mut self.pending);
        self.end_item(a, action_len);
        self.meta.push(ItemMeta::new(Origin::Event {
            key: e.file.key,
            seq: e.seq,
            safe_point: e.safe_point,
        }));
    }

    /// Adds an item encoded earlier by `encode_item`: from the disk buffer, or sent before.
    pub fn push_encoded(&mut self, item: &[u8], meta: ItemMeta) {
        let a = self.begin_item();
        self.pending.extend_from_slice(item);
        let action_len = memchr::memchr(b'\n', item).map_or(item.len(), |i| i + 1);
        self.end_item(a, action_len);
        self.meta.push(meta);
    }

    /// The raw offset where the next item starts.
    fn begin_item(&mut self) -> usize {
        if self.items.is_empty() {
            self.started = Some(Instant::now());
        }
        self.flushed + self.pending.len()
    }

    fn end_item(&mut self, start: usize, action_len: usize) {
        let d = start + action_len;
        self.items.push(Item {
            start: start as u32,
            doc: d as u32,
            end: (self.flushed + self.pending.len()) as u32,
        });
        if self.pending.len() >= CHUNK {
            self.compress_pending();
        }
    }

    fn compress_pending(&mut self) {
        if let Some(gz) = &mut self.gzip {
            // Writing into a Vec cannot fail.
            let _ = gz.write_all(&self.pending);
            self.flushed += self.pending.len();
            self.pending.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Raw (uncompressed) size so far.
    pub fn raw_len(&self) -> usize {
        self.flushed + self.pending.len()
    }

    pub fn is_full(&self, max_bytes: usize, max_events: usize) -> bool {
        self.raw_len() >= max_bytes || self.items.len() >= max_events
    }

    /// Finishes the body: what is sent, and what is kept to settle the items.
    pub fn seal(mut self) -> Sealed {
        self.compress_pending();
        // A batch in flight keeps its item index as long as it is out: without the slack
        // a growing vector leaves (up to as much again as 20,000 × 52 bytes).
        self.items.shrink_to_fit();
        self.meta.shrink_to_fit();
        let raw_len = self.raw_len();
        let (payload, gzip) = match self.gzip.take() {
            Some(gz) => (Bytes::from(gz.finish().unwrap_or_default()), true),
            None => (Bytes::from(std::mem::take(&mut self.pending)), false),
        };
        Sealed {
            payload,
            gzip,
            raw_len,
            raw: None,
            items: self.items,
            meta: self.meta,
            ambiguous: self.ambiguous,
            lookups_refused: 0,
        }
    }
}

/// Appends an event's bulk item, its action line and its document, each ending in `\n`.
/// Returns the length of the action line.
pub fn encode_item(
    e: &LogEvent,
    target: &Target,
    encoder: &mut DocumentEncoder,
    out: &mut Vec<u8>,
) -> usize {
    encoder.encode_bulk_item(e, &target.index, &target.extra, out)
}

/// A batch ready to send.
pub struct Sealed {
    /// The request body as sent: gzip-compressed when `gzip`.
    pub payload: Bytes,
    pub gzip: bool,
    pub raw_len: usize,
    /// The uncompressed body, once needed.
    raw: Option<Bytes>,
    pub items: Vec<Item>,
    pub meta: Vec<ItemMeta>,
    /// Sent before with no answer (a timeout, a cut connection): Elasticsearch may have
    /// indexed some of it. Its ids are looked up before it goes again.
    pub ambiguous: bool,
    /// Lookups of its ids the cluster answered with an error (429, 5xx).
    pub lookups_refused: u32,
}

impl Sealed {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The uncompressed body, decompressed on first use: only when some items are sent
    /// again, rescued or dead-lettered.
    fn raw(&mut self) -> &[u8] {
        if self.raw.is_none() {
            self.raw = Some(if self.gzip {
                let mut out = Vec::with_capacity(self.raw_len);
                // Our own gzip output: decoding cannot fail short of running out of memory.
                let _ = std::io::copy(
                    &mut flate2::read::GzDecoder::new(&self.payload[..]),
                    &mut out,
                );
                Bytes::from(out)
            } else {
                self.payload.clone()
            });
        }
        self.raw.as_deref().unwrap_or_default()
    }

    /// The two lines of item `i`.
    pub fn lines(&mut self, i: usize) -> &[u8] {
        let r = self.items[i].start as usize..self.items[i].end as usize;
        self.raw().get(r).unwrap_or_default()
    }

    /// The document of item `i`, without its newline.
    pub fn doc(&mut self, i: usize) -> &[u8] {
        self.action_and_doc(i).1
    }

    /// The action line and the document of item `i`, without their newlines.
    pub fn action_and_doc(&mut self, i: usize) -> (&[u8], &[u8]) {
        let (action, doc) = (self.items[i].action(), self.items[i].doc());
        let raw = self.raw();
        let part = |r: Range<usize>| raw.get(r.start..r.end - 1).unwrap_or_default();
        (part(action), part(doc))
    }

    /// The action line of item `i`, without its newline.
    pub fn action(&mut self, i: usize) -> &[u8] {
        self.action_and_doc(i).0
    }

    /// The index and id item `i` is created with (from the action line this sink wrote).
    pub fn target_and_id(&mut self, i: usize) -> Option<(String, String)> {
        let v: serde_json::Value = serde_json::from_slice(self.action(i)).ok()?;
        let meta = v.as_object()?.values().next()?;
        Some((
            meta["_index"].as_str()?.to_string(),
            meta["_id"].as_str()?.to_string(),
        ))
    }

    /// The same request without the items `drop` names (sorted), compressed at `level`.
    pub fn without(mut self, drop: &[usize], level: u32) -> Sealed {
        let mut batch = Batch::new(level);
        let mut skip = drop.iter().peekable();
        for i in 0..self.len() {
            if skip.next_if_eq(&&i).is_some() {
                continue;
            }
            let meta = self.meta[i];
            batch.push_encoded(self.lines(i), meta);
        }
        batch.seal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ElasticsearchConfig, JsonConfig};
    use crate::encode::document::tests::event;
    use crate::event::Flags;
    use crate::sink::elasticsearch::target::Router;

    fn fill(level: u32, n: usize) -> (Sealed, Vec<u8>) {
        let router = Router::new(&ElasticsearchConfig::default(), &Default::default());
        let target = router.target(router.retention().default_class(), None, "");
        let mut encoder = DocumentEncoder::new(&JsonConfig::default());
        let mut batch = Batch::new(level);
        let mut plain = Batch::new(0);
        for i in 0..n {
            let mut e = event(
                format!("line {i} {}", "x".repeat(i % 300)).as_bytes(),
                Flags::empty(),
            );
            (e.seq, e.offset) = (i as u64, i as u64 * 100);
            batch.push(&e, &target, &mut encoder);
            plain.push(&e, &target, &mut encoder);
        }
        let plain = plain.seal();
        (batch.seal(), plain.payload.to_vec())
    }

    #[test]
    fn a_request_without_some_items_keeps_the_others_as_they_were() {
        let (mut sealed, _) = fill(1, 10);
        let kept: Vec<Vec<u8>> = [0, 2, 3, 5, 6, 7, 9]
            .iter()
            .map(|&i| sealed.lines(i).to_vec())
            .collect();
        let (index, id) = sealed.target_and_id(4).expect("an action line");
        assert!(!index.is_empty() && id.len() == crate::encode::doc_id::ID_LEN);
        let metas: Vec<ItemMeta> = [0, 2, 3, 5, 6, 7, 9]
            .iter()
            .map(|&i| sealed.meta[i])
            .collect();
        let mut less = sealed.without(&[1, 4, 8], 1);
        assert_eq!(less.len(), 7);
        assert!(less.gzip && !less.ambiguous);
        for (n, lines) in kept.iter().enumerate() {
            assert_eq!(less.lines(n), &lines[..]);
        }
        assert_eq!(less.meta, metas);
        assert!(less.without(&(0..7).collect::<Vec<_>>(), 1).is_empty());
    }

    #[test]
    fn compressed_body_decodes_to_the_plain_one() {
        let (mut sealed, plain) = fill(1, 2_000);
        assert!(sealed.gzip);
        assert!(sealed.payload.len() * 4 < plain.len());
        assert_eq!(sealed.raw_len, plain.len());
        let mut joined = Vec::new();
        for i in 0..sealed.len() {
            joined.extend_from_slice(sealed.lines(i));
        }
        assert_eq!(joined, plain);
        let doc: serde_json::Value = serde_json::from_slice(sealed.doc(1234)).unwrap();
        assert!(doc["message"].as_str().unwrap().starts_with("line 1234 "));
        assert!(sealed.action(7).starts_with(b"{\"create\":"));
    }

    #[test]
    fn uncompressed_body_is_sent_as_encoded() {
        let (mut sealed, plain) = fill(0, 10);
        assert!(!sealed.gzip);
        assert_eq!(&sealed.payload[..], &plain[..]);
        assert!(sealed.lines(9).ends_with(b"\n"));
    }
}
