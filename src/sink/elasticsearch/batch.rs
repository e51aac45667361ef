//! A bulk request body being built: action line and document of each event, encoded
//! straight into one buffer, with where each item lies so that retries can resend a subset.

use super::target::Target;
use crate::encode::doc_id::document_id;
use crate::encode::DocumentEncoder;
use crate::event::{AckBuilder, AckRange, LogEvent};
use std::ops::Range;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Item {
    /// `body[action.start..doc.end]` is this item's two lines.
    pub action: Range<usize>,
    pub doc: Range<usize>,
}

#[derive(Debug, Default)]
pub struct Batch {
    pub body: Vec<u8>,
    pub items: Vec<Item>,
    acks: AckBuilder,
    pub started: Option<Instant>,
}

impl Batch {
    pub fn push(&mut self, e: &LogEvent, target: &Target, encoder: &DocumentEncoder) {
        if self.items.is_empty() {
            self.started = Some(Instant::now());
        }
        let a = self.body.len();
        self.body.extend_from_slice(b"{\"create\":{\"_index\":\"");
        self.body.extend_from_slice(target.index.as_bytes());
        self.body.extend_from_slice(b"\",\"_id\":\"");
        self.body
            .extend_from_slice(&document_id(e.file.id_seed, e.offset));
        self.body.extend_from_slice(b"\"}}\n");
        let d = self.body.len();
        encoder.encode_with(e, &target.extra, &mut self.body);
        self.body.push(b'\n');
        self.items.push(Item {
            action: a..d,
            doc: d..self.body.len(),
        });
        self.acks.push(e);
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn is_full(&self, max_bytes: usize, max_events: usize) -> bool {
        self.body.len() >= max_bytes || self.items.len() >= max_events
    }

    /// The acknowledgements of every event in the batch, for when all are resolved.
    pub fn take_acks(&mut self) -> Vec<AckRange> {
        std::mem::take(&mut self.acks).finish()
    }

    /// The two lines of item `i`.
    pub fn lines(&self, i: usize) -> &[u8] {
        let it = &self.items[i];
        &self.body[it.action.start..it.doc.end]
    }

    /// The document of item `i`, without its newline.
    pub fn doc(&self, i: usize) -> &[u8] {
        let it = &self.items[i];
        &self.body[it.doc.start..it.doc.end - 1]
    }

    /// The action line of item `i`, without its newline.
    pub fn action(&self, i: usize) -> &[u8] {
        let it = &self.items[i];
        &self.body[it.action.start..it.action.end - 1]
    }
}
