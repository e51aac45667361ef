//! Which keys of structured messages (JSON objects, logfmt lines) feed which ECS fields.

use serde::{Deserialize, Serialize};

/// `[source.fields]`: for each ECS field, the message keys it is lifted from, first found
/// wins. A dotted key (`user.id`) matches the literal key and the nested object
/// (`{"user":{"id":…}}`). An empty list turns the field off.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FieldsConfig {
    /// `trace.id`: a string or an integer.
    pub trace_id: Vec<String>,
    /// `span.id`.
    pub span_id: Vec<String>,
    /// `transaction.id`: a transaction's or a request's id.
    pub transaction_id: Vec<String>,
    /// `user.id`.
    pub user_id: Vec<String>,
    /// `http.request.method`: a string.
    pub http_method: Vec<String>,
    /// `url.path`: a string.
    pub url_path: Vec<String>,
    /// `http.response.status_code`: an integer, or a string of digits.
    pub http_status: Vec<String>,
    /// `event.duration` (nanoseconds) from milliseconds: a number or a numeric string.
    pub duration_ms: Vec<String>,
    /// `event.duration` from a duration with a unit (`"932ms"`, `"1.2s"`, `"150us"`), or
    /// a number of seconds.
    pub duration: Vec<String>,
}

fn keys(k: &[&str]) -> Vec<String> {
    k.iter().map(|s| s.to_string()).collect()
}

impl Default for FieldsConfig {
    fn default() -> Self {
        FieldsConfig {
            trace_id: keys(&[
                "trace_id",
                "traceId",
                "trace.id",
                "traceID",
                "dd.trace_id",
                "trace_id_hex",
            ]),
            span_id: keys(&["span_id", "spanId", "span.id", "spanID", "dd.span_id"]),
            transaction_id: keys(&[
                "transaction_id",
                "transactionId",
                "transaction.id",
                "request_id",
                "requestId",
                "requestID",
                "x_request_id",
                "req_id",
            ]),
            user_id: keys(&["user_id", "userId", "userID", "user.id"]),
            http_method: keys(&[
                "http.request.method",
                "http_method",
                "method",
                "http.method",
                "request_method",
            ]),
            url_path: keys(&["url.path", "path", "url_path", "http.path", "request_path"]),
            http_status: keys(&[
                "http.response.status_code",
                "status_code",
                "statusCode",
                "http_status",
                "http.status_code",
                "response_status",
            ]),
            duration_ms: keys(&[
                "duration_ms",
                "latency_ms",
                "elapsed_ms",
                "took_ms",
                "response_time_ms",
            ]),
            duration: keys(&["duration", "latency", "elapsed"]),
        }
    }
}

impl FieldsConfig {
    /// Every list with its config key.
    pub fn lists(&self) -> [(&'static str, &[String]); 9] {
        [
            ("trace_id", &self.trace_id),
            ("span_id", &self.span_id),
            ("transaction_id", &self.transaction_id),
            ("user_id", &self.user_id),
            ("http_method", &self.http_method),
            ("url_path", &self.url_path),
            ("http_status", &self.http_status),
            ("duration_ms", &self.duration_ms),
            ("duration", &self.duration),
        ]
    }

    /// The first key that cannot name a message field, with what is wrong.
    pub fn check(&self) -> Result<(), (String, String)> {
        for (name, list) in self.lists() {
            for (i, k) in list.iter().enumerate() {
                let bad = if k.is_empty() {
                    Some("is empty")
                } else if k.starts_with('.') || k.ends_with('.') || k.contains("..") {
                    Some("has an empty segment between dots")
                } else if k.len() > 128 {
                    Some("is longer than 128 bytes")
                } else {
                    None
                };
                if let Some(why) = bad {
                    return Err((format!("source.fields.{name}[{i}]"), format!("{k:?} {why}")));
                }
            }
        }
        Ok(())
    }
}

/// `[source.logfmt]`: lines made only of `key=value` and `key="quoted value"` pairs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogfmtConfig {
    /// Lift `level`, `msg` and the fields of `[source.fields]` out of logfmt lines.
    pub enabled: bool,
    /// The key the pairs are kept under, as an object of strings; empty to not keep them.
    pub target: String,
}

impl Default for LogfmtConfig {
    fn default() -> Self {
        LogfmtConfig {
            enabled: true,
            target: "logfmt".into(),
        }
    }
}
