//! Test doubles for logferry: an Elasticsearch, a Kibana import API and a Kubernetes API server that behave as
//! their documentation says, and reproducible kubelet-style log workloads. Shared by the
//! integration tests and the end-to-end benchmark, which runs them outside the agent's
//! process.

pub mod es_server;
pub mod kibana_server;
pub mod kube_server;
pub mod serve;
pub mod workload;
