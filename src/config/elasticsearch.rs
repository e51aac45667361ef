//! `[output.elasticsearch]`: where and how documents are bulk-indexed, and the index
//! setup (ILM policy, templates) that keeps them 90 days.

use super::{byte_size, duration_str};
use serde::{Deserialize, Serialize, Serializer};
use std::path::PathBuf;
use std::time::Duration;

/// A credential: never printed, never logged.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexMode {
    /// `logs-<dataset>-<namespace>` data streams (the default).
    DataStream,
    /// Plain daily indices named by `index`, for clusters without data streams.
    Index,
}

/// What deletes old data: an ILM policy per retention class, or the data stream
/// lifecycle (`data_retention` in each class's index template) on clusters that use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    Ilm,
    Dsl,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ElasticsearchConfig {
    /// One or more base URLs, used round-robin; a failed one is skipped on retry.
    pub endpoints: Vec<String>,
    pub username: String,
    pub password: Secret,
    pub password_file: Option<PathBuf>,
    /// `id:key`, or the base64 "encoded" form Kibana shows.
    pub api_key: Secret,
    pub api_key_file: Option<PathBuf>,
    pub bearer_token: Secret,
    pub bearer_token_file: Option<PathBuf>,
    /// PEM file with the CA(s) that signed the cluster's certificate.
    pub ca_file: Option<PathBuf>,
    /// Development only: accept any certificate.
    pub insecure_skip_verify: bool,
    /// PEM client certificate (and chain) for client-certificate (mTLS) authentication,
    /// with `key_file`; alone or with one of the credentials above.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    #[serde(with = "duration_str")]
    pub request_timeout: Duration,

    pub mode: IndexMode,
    pub dataset: String,
    pub namespace: String,
    /// Data stream per Kubernetes namespace: `logs-<dataset>-<k8s namespace>`.
    pub route_by_namespace: bool,
    /// Index name pattern of the index mode: `%Y`, `%m`, `%d` from the event's date.
    pub index: String,

    #[serde(with = "byte_size")]
    pub batch_max_bytes: u64,
    pub batch_max_events: usize,
    #[serde(with = "duration_str")]
    pub flush_interval: Duration,
    /// gzip level 0–9; 0 sends bodies uncompressed.
    pub compression_level: u32,
    pub max_in_flight: usize,
    /// Adapt the requests in flight (up to `max_in_flight`) and the send rate to what the
    /// cluster answers; off: always `max_in_flight`, unpaced.
    pub adaptive_concurrency: bool,
    /// While the cluster is away, how often a cheap request checks whether it is back.
    #[serde(with = "duration_str")]
    pub outage_probe_interval: Duration,
    /// Attempts per document before it goes to the dead-letter file; 0 retries without
    /// limit.
    pub max_retries: u32,
    #[serde(with = "duration_str")]
    pub retry_initial_backoff: Duration,
    #[serde(with = "duration_str")]
    pub retry_max_backoff: Duration,
    /// Caps toward the cluster; 0 is no cap.
    pub max_requests_per_second: u32,
    #[serde(with = "byte_size")]
    pub max_bytes_per_second: u64,

    /// Install the ILM policy and templates at start (idempotent).
    pub setup: bool,
    pub lifecycle: Lifecycle,
    pub ilm_policy: String,
    pub retention_days: u32,
    /// Name of the index template and prefix of the component templates.
    pub template_name: String,
    /// Priority of the index template: above the built-in `logs-*-*` (100).
    pub template_priority: u32,

    /// Documents Elasticsearch refused twice are kept here, in the state directory.
    #[serde(with = "byte_size")]
    pub dead_letter_max_bytes: u64,
}

impl Default for ElasticsearchConfig {
    fn default() -> Self {
        ElasticsearchConfig {
            endpoints: vec!["http://localhost:9200".into()],
            username: String::new(),
            password: Secret::default(),
            password_file: None,
            api_key: Secret::default(),
            api_key_file: None,
            bearer_token: Secret::default(),
            bearer_token_file: None,
            ca_file: None,
            insecure_skip_verify: false,
            cert_file: None,
            key_file: None,
            request_timeout: Duration::from_secs(60),
            mode: IndexMode::DataStream,
            dataset: "kubernetes".into(),
            namespace: "default".into(),
            route_by_namespace: false,
            index: "logferry-%Y.%m.%d".into(),
            batch_max_bytes: 5 * 1024 * 1024,
            batch_max_events: 20_000,
            flush_interval: Duration::from_secs(1),
            compression_level: 3,
            max_in_flight: 4,
            adaptive_concurrency: true,
            outage_probe_interval: Duration::from_millis(500),
            max_retries: 0,
            retry_initial_backoff: Duration::from_millis(250),
            retry_max_backoff: Duration::from_secs(30),
            max_requests_per_second: 0,
            max_bytes_per_second: 0,
            setup: true,
            lifecycle: Lifecycle::Ilm,
            ilm_policy: "logferry".into(),
            retention_days: 90,
            template_name: "logferry".into(),
            template_priority: 200,
            dead_letter_max_bytes: 100 * 1024 * 1024,
        }
    }
}

type KeyError = (String, String);

/// Whether a URL carries `user[:password]@` before its host.
pub fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.contains('@')
}

fn err(key: &str, msg: impl Into<String>) -> KeyError {
    (format!("output.elasticsearch.{key}"), msg.into())
}

impl ElasticsearchConfig {
    /// Whether a password, API key or token is configured.
    pub fn has_credentials(&self) -> bool {
        !self.password.is_empty()
            || self.password_file.is_some()
            || !self.api_key.is_empty()
            || self.api_key_file.is_some()
            || !self.bearer_token.is_empty()
            || self.bearer_token_file.is_some()
    }

    /// What is allowed but unwise, said by `check-config`.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings_for(&self.endpoints)
    }

    /// The warnings for reaching `urls` (the endpoints, or Kibana) with this config: said
    /// when the connection is set up.
    pub fn warnings_for(&self, urls: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        if self.has_credentials() {
            for u in urls {
                if u.trim_start().to_ascii_lowercase().starts_with("http://") {
                    out.push(format!(
                        "credentials would be sent in clear text to {u}: use https://"
                    ));
                }
            }
        }
        if self.insecure_skip_verify {
            out.push("output.elasticsearch.insecure_skip_verify is on: the cluster's certificate is not checked (development only)".into());
        }
        out
    }

    pub fn validate(&self) -> Result<(), KeyError> {
        if self.endpoints.is_empty() {
            return Err(err("endpoints", "needs at least one URL"));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            // Checked before parsing, so that no message quotes the URL's password.
            if has_userinfo(e) {
                return Err(err(
                    &format!("endpoints[{i}]"),
                    "a user or password in the URL is refused (it would be printed and \
                     logged with the URL); give username, and password_file or \
                     password = \"${ENV_VAR}\"",
                ));
            }
            match elasticsearch::http::Url::parse(e) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                Ok(_) => {
                    return Err(err(
                        &format!("endpoints[{i}]"),
                        format!("{e:?} is not an http(s) URL"),
                    ))
                }
                Err(x) => return Err(err(&format!("endpoints[{i}]"), format!("{e:?}: {x}"))),
            }
        }
        let auth = [
            !self.password.is_empty() || self.password_file.is_some(),
            !self.api_key.is_empty() || self.api_key_file.is_some(),
            !self.bearer_token.is_empty() || self.bearer_token_file.is_some(),
        ];
        if auth.iter().filter(|x| **x).count() > 1 {
            return Err(err(
                "api_key",
                "give one of password, api_key or bearer_token",
            ));
        }
        if !self.password.is_empty() && self.password_file.is_some() {
            return Err(err(
                "password_file",
                "give password or password_file, not both",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(err(
                if self.cert_file.is_some() {
                    "key_file"
                } else {
                    "cert_file"
                },
                "cert_file and key_file go together (client-certificate authentication)",
            ));
        }
        if auth[0] && self.username.is_empty() {
            return Err(err("username", "is needed with a password"));
        }
        for (key, value, max) in [
            ("dataset", &self.dataset, 100),
            ("namespace", &self.namespace, 100),
        ] {
            let ok = !value.is_empty()
                && value.len() <= max
                && value.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.'
                });
            if !ok {
                return Err(err(key, format!("{value:?}: use lowercase letters, digits, `_` and `.` (no `-`), at most {max}")));
            }
        }
        if self.mode == IndexMode::Index {
            let probe = self
                .index
                .replace("%Y", "2024")
                .replace("%m", "01")
                .replace("%d", "01");
            if super::sanitize_index(&probe) != probe {
                return Err(err(
                    "index",
                    format!("{:?} is not a valid index name", self.index),
                ));
            }
        }
        if self.batch_max_bytes < 1024 || self.batch_max_bytes > 1 << 30 {
            return Err(err("batch_max_bytes", "must be between 1 KiB and 1 GiB"));
        }
        if self.batch_max_events == 0 {
            return Err(err("batch_max_events", "must be at least 1"));
        }
        if self.flush_interval.is_zero() {
            return Err(err("flush_interval", "must be greater than zero"));
        }
        if self.compression_level > 9 {
            return Err(err("compression_level", "must be 0 (off) to 9"));
        }
        if self.max_in_flight == 0 {
            return Err(err("max_in_flight", "must be at least 1"));
        }
        if self.outage_probe_interval < Duration::from_millis(10) {
            return Err(err("outage_probe_interval", "must be at least 10ms"));
        }
        if self.retry_initial_backoff.is_zero()
            || self.retry_max_backoff < self.retry_initial_backoff
        {
            return Err(err(
                "retry_max_backoff",
                "needs 0 < retry_initial_backoff <= retry_max_backoff",
            ));
        }
        if self.retention_days == 0 {
            return Err(err("retention_days", "must be at least 1"));
        }
        if self.lifecycle == Lifecycle::Dsl && self.mode == IndexMode::Index {
            return Err(err(
                "lifecycle",
                "\"dsl\" needs data streams (mode = \"data_stream\"); daily indices use ILM",
            ));
        }
        if self.ilm_policy.is_empty() || self.template_name.is_empty() {
            return Err(err(
                "template_name",
                "ilm_policy and template_name must not be empty",
            ));
        }
        Ok(())
    }
}
