//! Sinks: where documents go. Each acknowledges what it delivered back to the checkpointer.

pub mod elasticsearch;
pub mod stdout;
