//! Pod metadata from the Kubernetes API: one node-scoped watch, a cache that keeps deleted
//! pods until their files are read, and the selectors that exclude pods.

pub mod cache;
pub mod pod;
pub mod selector;
pub mod watch;
