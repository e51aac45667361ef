//! Kibana out of the box: the saved objects of `deploy/kibana/` (a data view, the searches
//! "Errors" and "Slow requests", the dashboard "Kubernetes logs"), embedded in the binary
//! and imported through Kibana's saved objects API with the cluster's credentials.

use crate::config::ElasticsearchConfig;
use crate::sink::elasticsearch::client::{self, ClientError};
use elasticsearch::http::headers::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::transport::Transport;
use elasticsearch::http::{Method, Url};
use serde_json::Value;
use std::fmt;
use thiserror::Error;

/// Kibana 8.8 or later: the NDJSON that `Export` writes.
pub const SAVED_OBJECTS: &str = include_str!("../../deploy/kibana/logferry.ndjson");
pub const DATA_VIEW_ID: &str = "logferry-logs-kubernetes";

#[derive(Debug, Error)]
pub enum KibanaError {
    #[error("--kibana-url {0:?}: {1}")]
    Url(String, String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no answer from Kibana: {0}")]
    Unreachable(String),
    #[error("Kibana answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("the saved objects are not valid NDJSON: {0}")]
    Objects(String),
}

/// The saved objects with the data view's pattern set to where this config writes.
pub fn saved_objects(index_pattern: &str) -> Result<String, KibanaError> {
    let mut out = String::with_capacity(SAVED_OBJECTS.len());
    for line in SAVED_OBJECTS.lines().filter(|l| !l.trim().is_empty()) {
        let mut o: Value =
            serde_json::from_str(line).map_err(|e| KibanaError::Objects(e.to_string()))?;
        if o["type"] == "index-pattern" && o["id"] == DATA_VIEW_ID {
            o["attributes"]["title"] = Value::String(index_pattern.to_string());
        }
        out.push_str(&o.to_string());
        out.push('\n');
    }
    Ok(out)
}

/// What the import did to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Replaced,
    /// Exists and was left alone (no `--overwrite`).
    Exists,
    /// Any other error Kibana gave, by its type (e.g. `missing_references`).
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Created => f.write_str("created"),
            Outcome::Replaced => f.write_str("replaced"),
            Outcome::Exists => {
                f.write_str("exists (left as it is; `logferry setup --overwrite` replaces it)")
            }
            Outcome::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Imported {
    pub kind: String,
    pub id: String,
    pub title: String,
    pub outcome: Outcome,
}

/// A transport to Kibana at `url` (a base path is kept), authenticated as for Elasticsearch.
pub fn transport(url: &str, es: &ElasticsearchConfig) -> Result<Transport, KibanaError> {
    let mut parsed = Url::parse(url).map_err(|e| KibanaError::Url(url.into(), e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(KibanaError::Url(url.into(), "must be http or https".into()));
    }
    // `join` would drop a base path's last segment without the slash.
    if !parsed.path().ends_with('/') {
        let p = format!("{}/", parsed.path());
        parsed.set_path(&p);
    }
    Ok(client::transport(vec![parsed], es)?)
}

/// The import's `multipart/form-data` body, as the HTTP client writes it: its content type
/// (with the boundary) and its bytes. The request is built only for its body, never sent:
/// it goes through the transport, which carries the cluster's TLS and credentials.
async fn multipart(ndjson: &str) -> Result<(HeaderValue, bytes::Bytes), KibanaError> {
    use http_body_util::BodyExt;
    let internal = |e: &dyn std::fmt::Display| KibanaError::Objects(format!("multipart body: {e}"));
    let part = reqwest::multipart::Part::text(ndjson.to_string())
        .file_name("logferry.ndjson")
        .mime_str("application/ndjson")
        .map_err(|e| internal(&e))?;
    let form = reqwest::multipart::Form::new().part("file", part);
    let mut request = reqwest::Client::builder()
        .build()
        .and_then(|c| c.post("http://kibana.invalid/").multipart(form).build())
        .map_err(|e| internal(&e))?;
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .cloned()
        .ok_or_else(|| internal(&"no content type"))?;
    let body = request
        .body_mut()
        .take()
        .ok_or_else(|| internal(&"no body"))?;
    let bytes = body.collect().await.map_err(|e| internal(&e))?.to_bytes();
    Ok((content_type, bytes))
}

/// Imports `ndjson` into `space` (the default one when `None`).
pub async fn import(
    t: &Transport,
    space: Option<&str>,
    ndjson: &str,
    overwrite: bool,
) -> Result<Vec<Imported>, KibanaError> {
    let (content_type, body) = multipart(ndjson).await?;
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(
        HeaderName::from_static("kbn-xsrf"),
        HeaderValue::from_static("logferry"),
    );
    let path = match space {
        Some(s) => format!("s/{s}/api/saved_objects/_import"),
        None => "api/saved_objects/_import".to_string(),
    };
    let query = [("overwrite", if overwrite { "true" } else { "false" })];
    let resp = t
        .send(
            Method::Post,
            &path,
            headers,
            Some(&query),
            Some(body.to_vec()),
            None,
        )
        .await
        .map_err(|e| KibanaError::Unreachable(e.to_string()))?;
    let status = resp.status_code().as_u16();
    let text = resp.text().await.unwrap_or_default();
    if status != 200 {
        return Err(KibanaError::Refused {
            status,
            body: text.chars().take(512).collect(),
        });
    }
    let reply: Value = serde_json::from_str(&text).map_err(|e| KibanaError::Refused {
        status,
        body: format!(
            "not JSON ({e}): {}",
            text.chars().take(512).collect::<String>()
        ),
    })?;
    Ok(outcomes(&reply))
}

/// Reads `successResults` and `errors` of an import reply.
fn outcomes(reply: &Value) -> Vec<Imported> {
    let str_of = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut out = vec![];
    for r in reply["successResults"].as_array().into_iter().flatten() {
        out.push(Imported {
            kind: str_of(&r["type"]),
            id: str_of(&r["id"]),
            title: str_of(&r["meta"]["title"]),
            outcome: if r["overwrite"] == true {
                Outcome::Replaced
            } else {
                Outcome::Created
            },
        });
    }
    for e in reply["errors"].as_array().into_iter().flatten() {
        let why = str_of(&e["error"]["type"]);
        out.push(Imported {
            kind: str_of(&e["type"]),
            id: str_of(&e["id"]),
            title: match e["title"].as_str().or(e["meta"]["title"].as_str()) {
                Some(t) => t.to_string(),
                None => str_of(&e["id"]),
            },
            outcome: if why == "conflict" {
                Outcome::Exists
            } else {
                Outcome::Failed(why)
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_data_view_follows_the_configured_pattern() {
        let objects = saved_objects("logs-k8s-*").unwrap();
        let view = objects
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|o| o["id"] == DATA_VIEW_ID)
            .unwrap();
        assert_eq!(view["attributes"]["title"], "logs-k8s-*");
        assert_eq!(view["attributes"]["timeFieldName"], "@timestamp");
        assert_eq!(objects.lines().count(), SAVED_OBJECTS.lines().count());
    }

    #[test]
    fn reply_results_and_errors_become_outcomes() {
        let reply = json!({
            "success": false, "successCount": 2,
            "successResults": [
                { "type": "index-pattern", "id": "a", "meta": { "title": "logs-*" } },
                { "type": "search", "id": "b", "meta": { "title": "Errors" }, "overwrite": true }
            ],
            "errors": [
                { "type": "dashboard", "id": "c", "title": "Kubernetes logs", "error": { "type": "conflict" } },
                { "type": "lens", "id": "d", "meta": { "title": "Levels" },
                  "error": { "type": "missing_references", "references": [] } }
            ]
        });
        let got: Vec<(String, Outcome)> = outcomes(&reply)
            .into_iter()
            .map(|i| (i.title, i.outcome))
            .collect();
        assert_eq!(
            got,
            vec![
                ("logs-*".to_string(), Outcome::Created),
                ("Errors".to_string(), Outcome::Replaced),
                ("Kubernetes logs".to_string(), Outcome::Exists),
                (
                    "Levels".to_string(),
                    Outcome::Failed("missing_references".into())
                ),
            ]
        );
    }

    #[tokio::test]
    async fn the_import_body_is_one_ndjson_file_part() {
        let ndjson = "{\"type\":\"index-pattern\"}\n{\"type\":\"search\"}\n";
        let (content_type, body) = multipart(ndjson).await.unwrap();
        let content_type = content_type.to_str().unwrap();
        let boundary = content_type
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap();
        let body = std::str::from_utf8(&body).unwrap();
        let part = body
            .strip_prefix(&format!("--{boundary}\r\n"))
            .and_then(|b| b.strip_suffix(&format!("\r\n--{boundary}--\r\n")))
            .unwrap_or_else(|| panic!("one part: {body:?}"));
        let (headers, content) = part.split_once("\r\n\r\n").unwrap();
        assert_eq!(content, ndjson);
        assert!(
            headers.contains("name=\"file\"; filename=\"logferry.ndjson\""),
            "{headers}"
        );
        assert!(
            headers
                .to_ascii_lowercase()
                .contains("content-type: application/ndjson"),
            "{headers}"
        );
    }
}
