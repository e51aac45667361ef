//! Index setup for 90-day retention: the ILM policy, component templates with the
//! mappings Kibana needs, and the index template that makes the data stream. Idempotent:
//! each object carries a content hash in `_meta.version`; one that differs is reported and
//! replaced only when asked (`setup --overwrite`).

use crate::config::{Days, ElasticsearchConfig, IndexMode, Lifecycle, RetentionConfig};
use crate::sink::elasticsearch::target::Router;
use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::transport::Transport;
use elasticsearch::http::Method;
use serde_json::{json, Value};
use std::fmt;
use thiserror::Error;

#[derive(Debug, Clone)]
pub struct Resource {
    pub kind: &'static str,
    pub name: String,
    /// The API path, e.g. `_ilm/policy/logferry`.
    pub path: String,
    pub body: Value,
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Unchanged,
    Replaced,
    /// Exists with other content and was left alone.
    Differs,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Created => "created",
            Change::Unchanged => "unchanged",
            Change::Replaced => "replaced",
            Change::Differs => "differs (left as it is; `logferry setup --overwrite` replaces it)",
        })
    }
}

#[derive(Debug, Error)]
pub enum SetupError {
    #[error("{kind} {name}: no answer from Elasticsearch: {message}")]
    Unreachable {
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error("{kind} {name}: Elasticsearch answered {status}: {body}")]
    Refused {
        kind: &'static str,
        name: String,
        status: u16,
        body: String,
    },
}

fn with_meta(mut body: Value, meta_at: &[&str]) -> (Value, String) {
    let version = format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(body.to_string().as_bytes())
    );
    let meta = json!({ "managed_by": "logferry", "version": version });
    let mut target = &mut body;
    for k in meta_at {
        target = &mut target[*k];
    }
    target["_meta"] = meta;
    (body, version)
}

/// The ILM policy that deletes an index `retention` after it was made (data streams: after
/// its rollover).
fn policy(cfg: &ElasticsearchConfig, retention: Days) -> (Value, String) {
    let retention = retention.to_string();
    let phases = match cfg.mode {
        IndexMode::DataStream => json!({
            "hot": { "min_age": "0ms", "actions": {
                "rollover": { "max_age": "1d", "max_primary_shard_size": "50gb" } } },
            "delete": { "min_age": retention, "actions": { "delete": {} } }
        }),
        // Daily indices do not roll over: each is deleted `retention` after it was made.
        IndexMode::Index => json!({
            "delete": { "min_age": retention, "actions": { "delete": {} } }
        }),
    };
    with_meta(json!({ "policy": { "phases": phases } }), &["policy"])
}

/// What `setup` installs for this config: the default class's ILM policy, the shared
/// component templates and its index template, then a policy and an index template per
/// other retention class (no policy under the data stream lifecycle: each template carries
/// its retention). `kept`: the keys structured messages are kept under
/// (`SourceConfig::kept_objects`).
pub fn resources(
    cfg: &ElasticsearchConfig,
    retention: &RetentionConfig,
    kept: &[String],
) -> Vec<Resource> {
    let name = &cfg.template_name;
    let router = Router::new(cfg, retention);
    let default = router.retention().default_class();
    let keyword = json!({ "type": "keyword" });
    let names = |keys: &[&str]| -> Value {
        Value::Object(
            keys.iter()
                .map(|k| (k.to_string(), json!({ "properties": { "name": keyword } })))
                .collect(),
        )
    };
    let mut kube = json!({
        "namespace": keyword,
        "pod": { "properties": { "name": keyword, "uid": keyword, "ip": { "type": "ip" } } },
        "labels": { "type": "flattened" },
        "annotations": { "type": "flattened" },
        "namespace_labels": { "type": "flattened" }
    });
    for (k, v) in names(&[
        "node",
        "container",
        "deployment",
        "statefulset",
        "daemonset",
        "job",
        "cronjob",
        "replicaset",
    ])
    .as_object()
    .expect("object")
    {
        kube[k] = v.clone();
    }
    let mut properties = json!({
        "@timestamp": { "type": "date_nanos" },
        "message": { "type": "text" },
        "stream": keyword,
        "log": { "properties": {
            "level": keyword, "offset": { "type": "long" }, "flags": keyword,
            "file": { "properties": { "path": keyword } } } },
        "data_stream": { "properties": {
            "type": { "type": "constant_keyword" },
            "dataset": { "type": "constant_keyword" },
            "namespace": { "type": "constant_keyword" } } },
        "host": { "properties": { "name": keyword } },
        "agent": { "properties": { "name": keyword, "type": keyword, "version": keyword } },
        "container": { "properties": {
            "id": keyword, "runtime": keyword,
            "image": { "properties": { "name": keyword } } } },
        "kubernetes": { "properties": kube },
        "event": { "properties": {
            "original": { "type": "keyword", "index": false, "doc_values": false },
            "duration": { "type": "long" } } },
        "error": { "properties": { "type": keyword, "message": { "type": "text" } } },
        // Lifted from structured messages (`encode::ecs_fields`), aggregatable as they are.
        "trace": { "properties": { "id": keyword } },
        "span": { "properties": { "id": keyword } },
        "transaction": { "properties": { "id": keyword } },
        "user": { "properties": { "id": keyword } },
        "http": { "properties": {
            "request": { "properties": { "method": keyword } },
            "response": { "properties": { "status_code": { "type": "long" } } } } },
        "url": { "properties": { "path": keyword } }
    });
    for key in kept {
        properties[key] = json!({ "type": "flattened", "ignore_above": 1024 });
    }
    let (mappings, mv) = with_meta(
        json!({ "template": { "mappings": {
            "dynamic_templates": [ { "strings_as_keyword": {
                "match_mapping_type": "string",
                "mapping": { "type": "keyword", "ignore_above": 1024 } } } ],
            "properties": properties } } }),
        &[],
    );
    let dsl = cfg.lifecycle == Lifecycle::Dsl;
    let mut shared_settings = json!({ "index.codec": "best_compression" });
    if !dsl {
        shared_settings["index.lifecycle.name"] = json!(cfg.ilm_policy);
    }
    let (settings, sv) = with_meta(json!({ "template": { "settings": shared_settings } }), &[]);
    // A class's own part of its template: its ILM policy over the shared settings' default
    // one, or its data stream lifecycle.
    let own = |class: Days| -> Option<Value> {
        if dsl {
            Some(json!({ "lifecycle": { "data_retention": class.to_string() } }))
        } else {
            (class != default)
                .then(|| json!({ "settings": { "index.lifecycle.name": policy_name(cfg, class) } }))
        }
    };
    let index_template = |pattern: String, own: Option<Value>| {
        let mut t = json!({
            "index_patterns": [pattern],
            "composed_of": [format!("{name}@settings"), format!("{name}@mappings")],
            "priority": cfg.template_priority
        });
        if cfg.mode == IndexMode::DataStream {
            t["data_stream"] = json!({});
        }
        if let Some(own) = own {
            t["template"] = own;
        }
        with_meta(t, &[])
    };
    let default_pattern = match cfg.mode {
        IndexMode::DataStream => router.class_pattern(default),
        IndexMode::Index => router.index_pattern(),
    };
    let resource = |kind, name: String, api: &str, (body, version): (Value, String)| Resource {
        kind,
        path: format!("{api}/{name}"),
        name,
        body,
        version,
    };
    let mut rs = Vec::new();
    if !dsl {
        rs.push(resource(
            "ILM policy",
            cfg.ilm_policy.clone(),
            "_ilm/policy",
            policy(cfg, default),
        ));
    }
    rs.push(resource(
        "component template",
        format!("{name}@settings"),
        "_component_template",
        (settings, sv),
    ));
    rs.push(resource(
        "component template",
        format!("{name}@mappings"),
        "_component_template",
        (mappings, mv),
    ));
    rs.push(resource(
        "index template",
        name.clone(),
        "_index_template",
        index_template(default_pattern, own(default)),
    ));
    if cfg.mode == IndexMode::DataStream {
        for &class in router
            .retention()
            .classes()
            .iter()
            .filter(|c| **c != default)
        {
            if !dsl {
                rs.push(resource(
                    "ILM policy",
                    policy_name(cfg, class),
                    "_ilm/policy",
                    policy(cfg, class),
                ));
            }
            rs.push(resource(
                "index template",
                format!("{name}-r{}d", class.0),
                "_index_template",
                index_template(router.class_pattern(class), own(class)),
            ));
        }
    }
    rs
}

/// The ILM policy of a retention class other than the default.
fn policy_name(cfg: &ElasticsearchConfig, class: Days) -> String {
    format!("{}-r{}d", cfg.ilm_policy, class.0)
}

/// The `_meta.version` of what Elasticsearch holds, from each API's GET shape.
fn installed_version(r: &Resource, got: &Value) -> Option<String> {
    let meta = match r.kind {
        "ILM policy" => &got[&r.name]["policy"]["_meta"],
        "component template" => &got["component_templates"][0]["component_template"]["_meta"],
        _ => &got["index_templates"][0]["index_template"]["_meta"],
    };
    meta["version"].as_str().map(str::to_string)
}

/// Endpoints are tried in turn: an unreachable one is skipped for the next.
const TRIES: usize = 3;

async fn call(
    t: &Transport,
    r: &Resource,
    method: Method,
    body: Option<&Value>,
) -> Result<(u16, Value), SetupError> {
    let mut tries = 0;
    let resp = loop {
        let payload = body.map(Value::to_string);
        let sent = t
            .send(
                method,
                &r.path,
                HeaderMap::new(),
                None::<&()>,
                payload,
                None,
            )
            .await;
        tries += 1;
        match sent {
            Ok(resp) => break resp,
            Err(_) if tries < TRIES => continue,
            Err(e) => {
                return Err(SetupError::Unreachable {
                    kind: r.kind,
                    name: r.name.clone(),
                    message: crate::sink::elasticsearch::client::error_chain(&e),
                })
            }
        }
    };
    let status = resp.status_code().as_u16();
    let text = resp.text().await.unwrap_or_default();
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Installs what is missing; with `overwrite`, replaces what differs.
pub async fn apply(
    t: &Transport,
    resources: &[Resource],
    overwrite: bool,
) -> Result<Vec<(Resource, Change)>, SetupError> {
    let mut out = vec![];
    for r in resources {
        let (status, got) = call(t, r, Method::Get, None).await?;
        let change = match status {
            404 => Change::Created,
            200 if installed_version(r, &got).as_deref() == Some(&r.version) => Change::Unchanged,
            200 if overwrite => Change::Replaced,
            200 => Change::Differs,
            s => {
                return Err(SetupError::Refused {
                    kind: r.kind,
                    name: r.name.clone(),
                    status: s,
                    body: got.to_string(),
                });
            }
        };
        if matches!(change, Change::Created | Change::Replaced) {
            let (status, got) = call(t, r, Method::Put, Some(&r.body)).await?;
            if !(200..300).contains(&status) {
                return Err(SetupError::Refused {
                    kind: r.kind,
                    name: r.name.clone(),
                    status,
                    body: got.to_string(),
                });
            }
        }
        out.push((r.clone(), change));
    }
    Ok(out)
}

/// What `setup --dry-run` prints: each request as `PUT <path>` and its body.
pub fn describe(resources: &[Resource]) -> String {
    let mut s = String::new();
    for r in resources {
        s.push_str(&format!(
            "# {} {}\nPUT /{}\n{}\n\n",
            r.kind,
            r.name,
            r.path,
            serde_json::to_string_pretty(&r.body).unwrap_or_default()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept() -> Vec<String> {
        vec!["json".into(), "logfmt".into()]
    }

    #[test]
    fn ninety_day_policy_and_a_template_for_the_stream() {
        let cfg = ElasticsearchConfig::default();
        let rs = resources(&cfg, &Default::default(), &kept());
        assert_eq!(rs.len(), 4, "one class, four objects");
        let policy = &rs[0].body["policy"];
        assert_eq!(policy["phases"]["delete"]["min_age"], "90d");
        assert_eq!(
            policy["phases"]["hot"]["actions"]["rollover"]["max_age"],
            "1d"
        );
        assert_eq!(policy["_meta"]["version"], rs[0].version);
        let t = &rs[3].body;
        assert_eq!(t["index_patterns"], json!(["logs-kubernetes-*"]));
        assert_eq!(t["data_stream"], json!({}));
        assert!(t["priority"].as_u64().unwrap() > 100);
        let props = &rs[2].body["template"]["mappings"]["properties"];
        assert_eq!(
            props["kubernetes"]["properties"]["labels"]["type"],
            "flattened"
        );
        assert_eq!(props["json"]["type"], "flattened");
        assert_eq!(props["@timestamp"]["type"], "date_nanos");
        assert_eq!(
            rs[1].body["template"]["settings"]["index.lifecycle.name"],
            "logferry"
        );
        // The same config gives the same versions; another retention another.
        assert_eq!(
            resources(&cfg, &Default::default(), &kept())[0].version,
            rs[0].version
        );
        let other = ElasticsearchConfig {
            retention_days: 30,
            ..Default::default()
        };
        assert_ne!(
            resources(&other, &Default::default(), &kept())[0].version,
            rs[0].version
        );
    }

    #[test]
    fn versions_are_read_from_each_get_shape() {
        let rs = resources(
            &ElasticsearchConfig::default(),
            &Default::default(),
            &kept(),
        );
        let v = |i: usize| rs[i].version.clone();
        let ilm =
            json!({ "logferry": { "version": 1, "policy": { "_meta": { "version": v(0) } } } });
        assert_eq!(installed_version(&rs[0], &ilm), Some(v(0)));
        let ct = json!({ "component_templates": [ { "name": "logferry@settings", "component_template": { "_meta": { "version": v(1) } } } ] });
        assert_eq!(installed_version(&rs[1], &ct), Some(v(1)));
        let it = json!({ "index_templates": [ { "name": "logferry", "index_template": { "_meta": { "version": v(3) } } } ] });
        assert_eq!(installed_version(&rs[3], &it), Some(v(3)));
    }

    #[test]
    fn each_retention_class_has_its_policy_and_template() {
        let retention: RetentionConfig = toml::from_str(
            "default = \"30d\"\n[[rules]]\nnamespaces = [\"ci-*\"]\nretention = \"7d\"\n[[rules]]\nnamespaces = [\"payments\"]\nretention = \"365d\"",
        )
        .unwrap();
        let cfg = ElasticsearchConfig::default();
        let rs = resources(&cfg, &retention, &kept());
        let get = |name: &str| rs.iter().find(|r| r.name == name).unwrap();
        // The default class keeps the plain names, now with its retention.
        assert_eq!(
            get("logferry").body["policy"]["phases"]["delete"]["min_age"],
            "30d"
        );
        assert_eq!(
            get("logferry").path,
            "_ilm/policy/logferry",
            "the default policy keeps its name"
        );
        let t = &rs
            .iter()
            .find(|r| r.path == "_index_template/logferry")
            .unwrap()
            .body;
        assert_eq!(t["index_patterns"], json!(["logs-kubernetes-*"]));
        for (days, name) in [(7, "logferry-r7d"), (365, "logferry-r365d")] {
            let p = rs
                .iter()
                .find(|r| r.path == format!("_ilm/policy/{name}"))
                .unwrap();
            assert_eq!(
                p.body["policy"]["phases"]["delete"]["min_age"],
                format!("{days}d")
            );
            let t = &rs
                .iter()
                .find(|r| r.path == format!("_index_template/{name}"))
                .unwrap()
                .body;
            assert_eq!(
                t["index_patterns"],
                json!([format!("logs-kubernetes.r{days}d-*")])
            );
            assert_eq!(t["template"]["settings"]["index.lifecycle.name"], name);
            assert_eq!(t["data_stream"], json!({}));
        }
        assert_eq!(rs.len(), 4 + 2 * 2);
    }

    #[test]
    fn the_data_stream_lifecycle_replaces_the_policies() {
        let retention: RetentionConfig =
            toml::from_str("[[rules]]\nnamespaces = [\"ci-*\"]\nretention = \"7d\"").unwrap();
        let cfg = ElasticsearchConfig {
            lifecycle: Lifecycle::Dsl,
            ..Default::default()
        };
        let rs = resources(&cfg, &retention, &kept());
        assert!(rs.iter().all(|r| r.kind != "ILM policy"));
        let settings = &rs
            .iter()
            .find(|r| r.name == "logferry@settings")
            .unwrap()
            .body;
        assert!(settings["template"]["settings"]
            .get("index.lifecycle.name")
            .is_none());
        let template = |name: &str| {
            rs.iter()
                .find(|r| r.path == format!("_index_template/{name}"))
                .unwrap()
                .body
                .clone()
        };
        assert_eq!(
            template("logferry")["template"]["lifecycle"]["data_retention"],
            "90d"
        );
        assert_eq!(
            template("logferry-r7d")["template"]["lifecycle"]["data_retention"],
            "7d"
        );
        assert_eq!(rs.len(), 4);
    }
}
