//! Enrichment: each line's pod metadata. The kubelet's path layout gives the names
//! (`path`); the API watch (`kube`) gives labels, owners, node and image, which `stage`
//! attaches to events, waiting a little for pods not yet seen. `exclude` decides which
//! pods are not read at all, and `rate_limit` caps what a container may ship.

pub mod exclude;
pub mod kube;
pub mod path;
pub mod rate_limit;
pub mod stage;
