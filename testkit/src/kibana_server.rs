//! An in-tree Kibana 8 saved objects import API for tests, from its documentation:
//! `POST [/s/<space>]/api/saved_objects/_import[?overwrite=true]` takes only
//! `multipart/form-data` (415 otherwise) with a `file` part whose name ends in `.ndjson`
//! (400 otherwise), needs a `kbn-xsrf` header (400) and, when set, the right credentials
//! (401). Objects whose id exists answer `conflict` unless `overwrite`; objects whose
//! references resolve neither in the file nor in the space answer `missing_references`.

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct KibanaState {
    /// Saved objects by space, then by (type, id).
    pub spaces: BTreeMap<String, BTreeMap<(String, String), Value>>,
    /// The `authorization` header every request must carry, when set.
    pub expect_authorization: Option<String>,
    pub import_requests: u64,
}

impl KibanaState {
    pub fn object(&self, space: &str, kind: &str, id: &str) -> Option<Value> {
        self.spaces
            .get(space)?
            .get(&(kind.to_string(), id.to_string()))
            .cloned()
    }
}

pub struct KibanaServer {
    pub url: String,
    pub state: Arc<Mutex<KibanaState>>,
    _rt: tokio::runtime::Runtime,
}

impl KibanaServer {
    pub fn start() -> KibanaServer {
        let state = Arc::new(Mutex::new(KibanaState::default()));
        let s = state.clone();
        let (rt, url) = crate::serve::serve(None, Arc::new(AtomicBool::new(false)), move |req| {
            handle(req, s.clone())
        });
        KibanaServer {
            url,
            state,
            _rt: rt,
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut KibanaState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

use crate::serve::Resp;

fn reply(status: u16, body: Value) -> Resp {
    crate::serve::json_reply(status, body, &[])
}

fn http_error(status: u16, error: &str, message: &str) -> Resp {
    reply(
        status,
        json!({ "statusCode": status, "error": error, "message": message }),
    )
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<KibanaState>>,
) -> Result<Resp, std::io::Error> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_string())
    };
    let (xsrf, content_type, auth) = (
        header("kbn-xsrf"),
        header("content-type"),
        header("authorization"),
    );
    let method = req.method().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let mut s = state.lock().unwrap();
    if let Some(expected) = &s.expect_authorization {
        if auth.as_deref() != Some(expected.as_str()) {
            return Ok(http_error(
                401,
                "Unauthorized",
                "[security_exception]: unable to authenticate user",
            ));
        }
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (space, rest) = match segs.as_slice() {
        ["s", space, rest @ ..] => (space.to_string(), rest.to_vec()),
        rest => ("default".to_string(), rest.to_vec()),
    };
    if rest != ["api", "saved_objects", "_import"] {
        return Ok(http_error(404, "Not Found", "Not Found"));
    }
    if method != hyper::Method::POST {
        return Ok(http_error(404, "Not Found", "Not Found"));
    }
    if xsrf.is_none() {
        return Ok(http_error(
            400,
            "Bad Request",
            "Request must contain a kbn-xsrf header.",
        ));
    }
    s.import_requests += 1;
    let Some(boundary) = content_type
        .as_deref()
        .filter(|c| c.starts_with("multipart/form-data"))
        .and_then(|c| c.split("boundary=").nth(1))
        .map(|b| b.trim_matches('"').to_string())
    else {
        return Ok(http_error(
            415,
            "Unsupported Media Type",
            "Unsupported Media Type",
        ));
    };
    let Some((filename, file)) = file_part(&body, &boundary) else {
        return Ok(http_error(
            400,
            "Bad Request",
            "[request body.file]: expected value of type [Stream] but got [undefined]",
        ));
    };
    if !filename.ends_with(".ndjson") {
        let ext = filename.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
        return Ok(http_error(
            400,
            "Bad Request",
            &format!("Invalid file extension .{ext}"),
        ));
    }
    let overwrite = query.split('&').any(|kv| kv == "overwrite=true");
    let mut objects = vec![];
    for line in String::from_utf8_lossy(&file)
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let Ok(o) = serde_json::from_str::<Value>(line) else {
            return Ok(http_error(400, "Bad Request", "Unexpected token in JSON"));
        };
        if !o["type"].is_string() || !o["id"].is_string() || !o["attributes"].is_object() {
            return Ok(http_error(
                400,
                "Bad Request",
                "an object lacks type, id or attributes",
            ));
        }
        objects.push(o);
    }
    let key = |o: &Value| {
        (
            o["type"].as_str().unwrap_or("").to_string(),
            o["id"].as_str().unwrap_or("").to_string(),
        )
    };
    let in_file: Vec<(String, String)> = objects.iter().map(key).collect();
    let stored = s.spaces.entry(space).or_default();
    let (mut results, mut errors) = (vec![], vec![]);
    for o in &objects {
        let k = key(o);
        let title = o["attributes"]["title"].clone();
        let missing: Vec<Value> = o["references"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["type"].as_str().unwrap_or("").to_string(),
                    r["id"].as_str().unwrap_or("").to_string(),
                )
            })
            .filter(|r| !in_file.contains(r) && !stored.contains_key(r))
            .map(|(t, i)| json!({ "type": t, "id": i }))
            .collect();
        if !missing.is_empty() {
            errors.push(
                json!({ "id": k.1, "type": k.0, "title": title, "meta": { "title": title },
                "error": { "type": "missing_references", "references": missing } }),
            );
            continue;
        }
        let exists = stored.contains_key(&k);
        if exists && !overwrite {
            errors.push(
                json!({ "id": k.1, "type": k.0, "title": title, "meta": { "title": title },
                "error": { "type": "conflict" } }),
            );
            continue;
        }
        stored.insert(k.clone(), o.clone());
        let mut r = json!({ "type": k.0, "id": k.1, "meta": { "title": title } });
        if exists {
            r["overwrite"] = json!(true);
        }
        results.push(r);
    }
    let mut body = json!({
        "success": errors.is_empty(),
        "successCount": results.len(),
        "successResults": results,
    });
    if !errors.is_empty() {
        body["errors"] = json!(errors);
    }
    Ok(reply(200, body))
}

/// The `file` part of a multipart body: its file name and content.
fn file_part(body: &[u8], boundary: &str) -> Option<(String, Vec<u8>)> {
    let delimiter = format!("--{boundary}");
    let mut parts = split(body, delimiter.as_bytes());
    parts.next()?; // the preamble
    for part in parts {
        if part.starts_with(b"--") {
            break; // the closing delimiter
        }
        let part = part.strip_prefix(b"\r\n")?;
        let end = find(part, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&part[..end]).to_string();
        let content = part[end + 4..].strip_suffix(b"\r\n")?;
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
        if !disposition.contains("name=\"file\"") {
            continue;
        }
        let filename = disposition.split("filename=\"").nth(1)?.split('"').next()?;
        return Some((filename.to_string(), content.to_vec()));
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn split<'a>(mut hay: &'a [u8], sep: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match find(hay, sep) {
            Some(i) => {
                let part = &hay[..i];
                hay = &hay[i + sep.len()..];
                Some(part)
            }
            None => {
                done = true;
                Some(hay)
            }
        }
    })
}
