//! The writing side of the disk buffer: events are encoded into bulk items (action line and
//! document, exactly as they will be sent), appended to the on-disk queue, and acknowledged
//! to the checkpointer once they are as durable as the fsync policy says.

use super::batch::encode_item;
use super::target::Targets;
use crate::buffer::{record, QueueWriter};
use crate::checkpoint::CheckpointMsg;
use crate::config::{BufferConfig, Fsync};
use crate::encode::DocumentEncoder;
use crate::event::{AckBuilder, LogEvent};
use std::time::Instant;
use tokio::sync::mpsc;

/// Put before the item of an event the last run may have sent (`LogEvent::is_replay`): the
/// reading side looks it up before sending it. An item itself starts with `{`.
pub const REPLAY_TAG: u8 = b'R';

/// An item read from the buffer, and whether it carries `REPLAY_TAG`.
pub fn untag(record: &[u8]) -> (&[u8], bool) {
    match record.split_first() {
        Some((&REPLAY_TAG, item)) => (item, true),
        _ => (record, false),
    }
}

pub struct Spool {
    writer: QueueWriter,
    targets: Targets,
    encoder: DocumentEncoder,
    acks: mpsc::UnboundedSender<CheckpointMsg>,
    fsync: Fsync,
    fsync_interval: std::time::Duration,
}

impl Spool {
    pub fn new(
        writer: QueueWriter,
        targets: Targets,
        encoder: DocumentEncoder,
        acks: mpsc::UnboundedSender<CheckpointMsg>,
        cfg: &BufferConfig,
    ) -> Spool {
        Spool {
            writer,
            targets,
            encoder,
            acks,
            fsync: cfg.fsync,
            fsync_interval: cfg.fsync_interval,
        }
    }

    /// Runs on a blocking thread until the channel closes. An I/O error stops it: the
    /// events it held are not acknowledged, so they are read again after a restart.
    pub fn run(mut self, mut rx: mpsc::Receiver<Vec<LogEvent>>) -> std::io::Result<()> {
        let mut framed = Vec::new();
        let mut item = Vec::new();
        let mut held = AckBuilder::default();
        let mut last_sync = Instant::now();
        loop {
            let events = match rx.try_recv() {
                Ok(events) => events,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Writing paused: make what is held durable before waiting.
                    self.release(&mut held, &mut last_sync)?;
                    match rx.blocking_recv() {
                        Some(events) => events,
                        None => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            };
            framed.clear();
            for e in &events {
                item.clear();
                let target = self.targets.get(e);
                if e.is_replay() && target.replays_need_lookup() {
                    item.push(REPLAY_TAG);
                }
                encode_item(e, &target, &mut self.encoder, &mut item);
                record::encode(&item, &mut framed);
                held.push(e);
            }
            if let Err(e) = self.writer.append(&framed) {
                tracing::error!(error = %e, dir = "buffer", "cannot append to the disk buffer; reading stops until restart");
                return Err(e);
            }
            let due = match self.fsync {
                Fsync::Always | Fsync::Never => true,
                Fsync::Interval => last_sync.elapsed() >= self.fsync_interval,
            };
            if due {
                self.release(&mut held, &mut last_sync)?;
            }
        }
        self.release(&mut held, &mut last_sync)?;
        self.writer.close()
    }

    /// Syncs (as the policy says) and acknowledges what is held.
    fn release(&mut self, held: &mut AckBuilder, last_sync: &mut Instant) -> std::io::Result<()> {
        if held.is_empty() {
            return Ok(());
        }
        if self.fsync != Fsync::Never {
            self.writer.sync()?;
        }
        *last_sync = Instant::now();
        let ranges = std::mem::take(held).finish();
        let _ = self.acks.send(CheckpointMsg::Acked(ranges));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_tag_is_taken_off_and_an_item_is_left_as_it_is() {
        let item = b"{\"create\":{}}\n{}\n";
        assert_eq!(untag(item), (&item[..], false));
        let mut tagged = vec![REPLAY_TAG];
        tagged.extend_from_slice(item);
        assert_eq!(untag(&tagged), (&item[..], true));
        assert_eq!(untag(b""), (&b""[..], false));
    }
}
