//! Encoding events as ECS JSON documents: one byte-oriented writer shared by every sink.

pub mod doc_id;
pub mod document;
pub mod ecs_fields;
pub mod escape;
pub mod file_fields;
pub mod json_message;
mod json_str;
pub mod logfmt;
pub mod metadata;

pub use document::DocumentEncoder;
