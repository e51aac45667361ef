//! The optional disk buffer: encoded documents wait in a bounded on-disk queue between the
//! pipeline and Elasticsearch, so a long outage or a restart during one loses nothing even
//! when kubelet deletes the rotated files meanwhile.

pub mod queue;
pub mod record;

pub use queue::{open, Position, QueueReader, QueueWriter, Ticket};
