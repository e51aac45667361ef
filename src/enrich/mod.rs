//! Enrichment: the Kubernetes names of a file's container. For now they come from the
//! kubelet's path layout; the API watch will add labels, owners and the rest.

pub mod exclude;
pub mod kube;
pub mod metadata;
pub mod path;
pub mod stage;
