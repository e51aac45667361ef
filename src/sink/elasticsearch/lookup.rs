//! Which of some document ids a data stream already holds, in any of its backing indices:
//! asked before a replay (after a restart, or a retry whose first outcome is unknown),
//! because Elasticsearch refuses a duplicate `create` only within one backing index.

use super::client::{error_chain, never_sent};
use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::transport::Transport;
use elasticsearch::http::Method;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use thiserror::Error;

/// Ids asked per search: a search returns at most 10,000 hits by default, and an id
/// indexed twice already is two hits.
pub const IDS_PER_LOOKUP: usize = 1000;

#[derive(Debug, Error)]
pub enum LookupError {
    /// The search could not be sent: the cluster is down (the bulk request could not go
    /// either).
    #[error("no connection to the cluster: {0}")]
    Unreachable(String),
    /// Sent with no answer in time: the cluster may take bulk requests and not searches.
    #[error("no answer from the cluster: {0}")]
    Unanswered(String),
    #[error("the cluster answered {status} to {what}: {body}")]
    Status {
        what: &'static str,
        status: u16,
        body: String,
    },
}

/// The ids of `ids` that `stream` holds (comma-separated streams and patterns: any of
/// them). Searches see only what was refreshed, so the streams are refreshed first: a
/// document indexed just before a crash is found too. A stream that does not exist holds
/// nothing.
pub async fn present_ids(
    transport: &Transport,
    stream: &str,
    ids: &[String],
    timeout: Duration,
) -> Result<HashSet<String>, LookupError> {
    let mut present = HashSet::new();
    if ids.is_empty() {
        return Ok(present);
    }
    let refresh = format!("/{stream}/_refresh");
    match call(transport, &refresh, None, timeout).await? {
        (404, _) => return Ok(present),
        (200, _) => {}
        (status, body) => {
            return Err(LookupError::Status {
                what: "a refresh",
                status,
                body: excerpt(&body),
            })
        }
    }
    let search = format!("/{stream}/_search");
    for chunk in ids.chunks(IDS_PER_LOOKUP) {
        let body = json!({
            "size": chunk.len() * 2,
            "_source": false,
            "track_total_hits": false,
            "query": { "ids": { "values": chunk } },
        });
        match call(transport, &search, Some(body), timeout).await? {
            (404, _) => return Ok(present),
            (200, body) => {
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let hits = v["hits"]["hits"].as_array().into_iter().flatten();
                present.extend(hits.filter_map(|h| h["_id"].as_str().map(String::from)));
            }
            (status, body) => {
                return Err(LookupError::Status {
                    what: "an ids search",
                    status,
                    body: excerpt(&body),
                })
            }
        }
    }
    Ok(present)
}

async fn call(
    transport: &Transport,
    path: &str,
    body: Option<Value>,
    timeout: Duration,
) -> Result<(u16, String), LookupError> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // A stream of `targets` not made yet holds nothing: skipped, not answered 404.
    let query = [
        ("filter_path", "hits.hits._id,error.type"),
        ("ignore_unavailable", "true"),
    ];
    let resp = transport
        .send(
            Method::Post,
            path,
            headers,
            Some(&query),
            body.map(|b| b.to_string()),
            Some(timeout),
        )
        .await
        .map_err(|e| match never_sent(&e) {
            true => LookupError::Unreachable(error_chain(&e)),
            false => LookupError::Unanswered(error_chain(&e)),
        })?;
    let status = resp.status_code().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| LookupError::Unanswered(format!("reading the reply: {e}")))?;
    Ok((status, text))
}

fn excerpt(body: &str) -> String {
    body.chars().take(500).collect()
}
