//! The stdout sink of the debug mode: writes each batch, flushes, then acknowledges it.
//! `bulk` format prints the exact NDJSON body the Elasticsearch sink would send with this
//! config (`_index` included), through the same encoding.

use crate::checkpoint::CheckpointMsg;
use crate::config::StdoutFormat;
use crate::encode::DocumentEncoder;
use crate::event::{AckBuilder, LogEvent};
use crate::sink::elasticsearch::batch::encode_item;
use crate::sink::elasticsearch::target::Targets;
use crate::stats::Stats;
use std::io::{self, Write};
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The reader of our output went away (e.g. `| head`): not a failure of ours.
    #[error("output closed by its reader")]
    Closed,
    #[error("cannot write output: {0}")]
    Write(#[source] io::Error),
    #[error("disk buffer failed: {0}")]
    Buffer(#[source] io::Error),
}

pub struct StdoutSink {
    pub encoder: DocumentEncoder,
    pub format: StdoutFormat,
    /// Where each event would go: `bulk` prints its action line.
    pub targets: Targets,
    pub writer: Box<dyn Write + Send>,
    pub acks: mpsc::UnboundedSender<CheckpointMsg>,
    pub stats: Arc<Stats>,
}

impl StdoutSink {
    /// Writes batches until the channel closes. Blocking: run it on its own thread.
    pub fn run(mut self, mut rx: mpsc::Receiver<Vec<LogEvent>>) -> Result<(), SinkError> {
        let mut buf = Vec::with_capacity(256 * 1024);
        while let Some(batch) = rx.blocking_recv() {
            buf.clear();
            let mut acks = AckBuilder::default();
            for e in &batch {
                match self.format {
                    StdoutFormat::Bulk => {
                        let target = self.targets.get(e);
                        encode_item(e, &target, &mut self.encoder, &mut buf);
                    }
                    StdoutFormat::Document => {
                        self.encoder.encode(e, &mut buf);
                        buf.push(b'\n');
                    }
                }
                acks.push(e);
            }
            let written = self
                .writer
                .write_all(&buf)
                .and_then(|()| self.writer.flush());
            if let Err(e) = written {
                return Err(if e.kind() == io::ErrorKind::BrokenPipe {
                    SinkError::Closed
                } else {
                    SinkError::Write(e)
                });
            }
            Stats::add(&self.stats.events_delivered, batch.len() as u64);
            let _ = self.acks.send(CheckpointMsg::Acked(acks.finish()));
        }
        Ok(())
    }
}
