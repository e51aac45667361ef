//! The source: discover files, follow them through rotation, and assemble their lines
//! into events. Parsers and assembly are pure; `tailer` owns all file I/O.

pub mod assembler;
pub mod compressed;
pub mod cri;
pub mod discover;
pub mod docker;
pub mod fingerprint;
pub mod format;
pub mod line;
pub mod multiline;
pub mod open;
pub mod partial;
pub mod reader;
pub mod tailer;
pub mod wake;
pub mod watcher;
