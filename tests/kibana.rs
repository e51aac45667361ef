//! Kibana out of the box: the saved objects in `deploy/kibana/` hold together (references
//! resolve, queries parse, every field they use is in our index template's mappings), and
//! `logferry setup --kibana-url` imports them the way Kibana's API wants.

mod support;

use logferry::config::ElasticsearchConfig;
use logferry::setup::elasticsearch as setup;
use logferry::setup::kibana::{saved_objects, DATA_VIEW_ID, SAVED_OBJECTS};
use logferry_testkit::kibana_server::KibanaServer;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::process::Command;

fn objects() -> Vec<Value> {
    SAVED_OBJECTS
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect()
}

/// Field types of the mappings `setup` installs: `properties` walked to leaves, plus the
/// runtime fields.
fn template_fields() -> HashMap<String, String> {
    let rs = setup::resources(
        &ElasticsearchConfig::default(),
        &Default::default(),
        &logferry::config::SourceConfig::default().kept_objects(),
    );
    let mappings = rs
        .iter()
        .find(|r| r.name.ends_with("@mappings"))
        .map(|r| r.body["template"]["mappings"].clone())
        .unwrap();
    fn walk(prefix: &str, props: &Value, out: &mut HashMap<String, String>) {
        for (k, v) in props.as_object().unwrap() {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v.get("properties") {
                Some(p) => walk(&path, p, out),
                None => {
                    out.insert(path, v["type"].as_str().unwrap_or("object").to_string());
                }
            }
        }
    }
    let mut out = HashMap::new();
    walk("", &mappings["properties"], &mut out);
    if let Some(runtime) = mappings["runtime"].as_object() {
        for (k, v) in runtime {
            out.insert(k.clone(), v["type"].as_str().unwrap().to_string());
        }
    }
    out
}

/// Whether a field of this type can be aggregated (terms, percentiles, options lists).
fn aggregatable(t: &str) -> bool {
    [
        "keyword",
        "constant_keyword",
        "long",
        "double",
        "date",
        "date_nanos",
        "ip",
        "boolean",
    ]
    .contains(&t)
}

/// The type a query may meet at `field`: a mapped leaf, a runtime field, or a key under a
/// flattened field (a keyword).
fn field_type(fields: &HashMap<String, String>, field: &str) -> Option<String> {
    if let Some(t) = fields.get(field) {
        return Some(t.clone());
    }
    let mut prefix = field;
    while let Some((head, _)) = prefix.rsplit_once('.') {
        if fields.get(head).map(String::as_str) == Some("flattened") {
            return Some("keyword".into());
        }
        prefix = head;
    }
    None
}

/// A KQL subset parser (what our objects use and more): `or`/`and`/`not`, parentheses,
/// `field:value`, `field:(a or b)`, and range comparisons. Returns each field with whether
/// it was compared as a range, or what is wrong.
fn kql_fields(q: &str) -> Result<Vec<(String, bool)>, String> {
    #[derive(Debug, Clone, PartialEq)]
    enum T {
        Open,
        Close,
        Colon,
        Cmp,
        Word(String),
        Quoted,
    }
    let mut toks = vec![];
    let cs: Vec<char> = q.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => (toks.push(T::Open), i += 1).1,
            ')' => (toks.push(T::Close), i += 1).1,
            ':' => (toks.push(T::Colon), i += 1).1,
            '<' | '>' => {
                i += if cs.get(i + 1) == Some(&'=') { 2 } else { 1 };
                toks.push(T::Cmp)
            }
            '"' => {
                let end = cs[i + 1..]
                    .iter()
                    .position(|&c| c == '"')
                    .ok_or("unterminated quote")?;
                i += end + 2;
                toks.push(T::Quoted);
            }
            _ => {
                let start = i;
                while i < cs.len() && !cs[i].is_whitespace() && !"():<>\"".contains(cs[i]) {
                    i += 1;
                }
                toks.push(T::Word(cs[start..i].iter().collect()));
            }
        }
    }
    struct P {
        toks: Vec<T>,
        at: usize,
        fields: Vec<(String, bool)>,
    }
    impl P {
        fn peek(&self) -> Option<&T> {
            self.toks.get(self.at)
        }
        fn keyword(&self, k: &str) -> bool {
            matches!(self.peek(), Some(T::Word(w)) if w.eq_ignore_ascii_case(k))
        }
        fn next(&mut self) -> Option<T> {
            self.at += 1;
            self.toks.get(self.at - 1).cloned()
        }
        fn list(&mut self, value: bool) -> Result<(), String> {
            self.term(value)?;
            while self.keyword("or") || self.keyword("and") {
                self.at += 1;
                self.term(value)?;
            }
            Ok(())
        }
        fn term(&mut self, value: bool) -> Result<(), String> {
            if self.keyword("not") {
                self.at += 1;
                return self.term(value);
            }
            match self.next() {
                Some(T::Open) => {
                    self.list(value)?;
                    match self.next() {
                        Some(T::Close) => Ok(()),
                        t => Err(format!("expected ')', found {t:?}")),
                    }
                }
                Some(T::Quoted) if value => Ok(()),
                Some(T::Word(_)) if value => Ok(()),
                Some(T::Word(field)) => match self.next() {
                    Some(T::Colon) => {
                        self.fields.push((field.clone(), false));
                        match self.peek() {
                            Some(T::Open) => {
                                self.at += 1;
                                self.list(true)?;
                                match self.next() {
                                    Some(T::Close) => Ok(()),
                                    t => Err(format!("expected ')', found {t:?}")),
                                }
                            }
                            Some(T::Word(_)) | Some(T::Quoted) => {
                                self.at += 1;
                                Ok(())
                            }
                            t => Err(format!("expected a value after {field}:, found {t:?}")),
                        }
                    }
                    Some(T::Cmp) => match self.next() {
                        Some(T::Word(_)) | Some(T::Quoted) => {
                            self.fields.push((field, true));
                            Ok(())
                        }
                        t => Err(format!("expected a value to compare, found {t:?}")),
                    },
                    t => Err(format!(
                        "expected ':' or a comparison after {field}, found {t:?}"
                    )),
                },
                t => Err(format!("unexpected {t:?}")),
            }
        }
    }
    let mut p = P {
        toks,
        at: 0,
        fields: vec![],
    };
    if p.peek().is_none() {
        return Ok(vec![]);
    }
    p.list(false)?;
    if p.at != p.toks.len() {
        return Err(format!("trailing {:?}", &p.toks[p.at..]));
    }
    Ok(p.fields)
}

#[test]
fn the_kql_checker_rejects_what_kibana_would() {
    assert_eq!(
        kql_fields("a:1 or (b:(x or \"y z\") and not c > 5)").unwrap(),
        vec![("a".into(), false), ("b".into(), false), ("c".into(), true)]
    );
    for bad in ["a:(x or y", "a b", "a:", "(a:1", "a > ", "a:1 or"] {
        assert!(kql_fields(bad).is_err(), "{bad}");
    }
}

/// Checks one query against the mappings; range comparisons need a numeric or date field.
fn check_query(what: &str, q: &str, fields: &HashMap<String, String>) {
    for (f, range) in kql_fields(q).unwrap_or_else(|e| panic!("{what}: KQL {q:?}: {e}")) {
        let t = field_type(fields, &f)
            .unwrap_or_else(|| panic!("{what}: {f} is not in the template's mappings"));
        if range {
            assert!(
                ["long", "double", "date", "date_nanos"].contains(&t.as_str()),
                "{what}: {f} is compared as a number but is mapped {t}"
            );
        }
    }
}

#[test]
fn saved_objects_hold_together_and_use_only_mapped_fields() {
    let objs = objects();
    let fields = template_fields();
    let ids: BTreeSet<(String, String)> = objs
        .iter()
        .map(|o| {
            (
                o["type"].as_str().unwrap().into(),
                o["id"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(ids.len(), objs.len(), "ids are unique");
    let titled = |t: &str| {
        objs.iter()
            .find(|o| o["attributes"]["title"] == t)
            .unwrap_or_else(|| panic!("no object titled {t:?}"))
    };
    let view = objs.iter().find(|o| o["id"] == DATA_VIEW_ID).unwrap();
    assert_eq!(view["type"], "index-pattern");
    assert_eq!(view["attributes"]["title"], "logs-kubernetes-*");
    assert_eq!(view["attributes"]["timeFieldName"], "@timestamp");
    assert_eq!(fields["@timestamp"], "date_nanos");
    assert_eq!(titled("Errors")["type"], "search");
    assert_eq!(titled("User flow")["type"], "search");
    let dashboard = titled("Kubernetes logs");
    assert_eq!(dashboard["type"], "dashboard");
    let dashboards = objs.iter().filter(|o| o["type"] == "dashboard").count();
    assert_eq!(dashboards, 3, "Kubernetes logs, User flows, Slow requests");

    for o in &objs {
        let what = format!("{} {}", o["type"], o["id"]);
        assert!(o["coreMigrationVersion"]
            .as_str()
            .unwrap()
            .starts_with("8."));
        let refs = o["references"].as_array().unwrap();
        let ref_names: BTreeSet<&str> = refs.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(
            ref_names.len(),
            refs.len(),
            "{what}: reference names are unique"
        );
        for r in refs {
            let key = (
                r["type"].as_str().unwrap().to_string(),
                r["id"].as_str().unwrap().to_string(),
            );
            assert!(
                ids.contains(&key),
                "{what}: reference {key:?} is not in the file"
            );
        }
        let a = &o["attributes"];
        if let Some(src) = a["kibanaSavedObjectMeta"]["searchSourceJSON"].as_str() {
            let src: Value = serde_json::from_str(src).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(src["query"]["language"], "kuery");
            check_query(&what, src["query"]["query"].as_str().unwrap(), &fields);
            if let Some(name) = src["indexRefName"].as_str() {
                assert!(
                    ref_names.contains(name),
                    "{what}: {name} is not a reference"
                );
            }
        }
        match o["type"].as_str().unwrap() {
            "search" => {
                for c in a["columns"].as_array().unwrap() {
                    let c = c.as_str().unwrap();
                    assert!(
                        field_type(&fields, c).is_some(),
                        "{what}: column {c} is not mapped"
                    );
                }
            }
            "lens" => {
                check_query(
                    &what,
                    a["state"]["query"]["query"].as_str().unwrap(),
                    &fields,
                );
                let layers = a["state"]["datasourceStates"]["formBased"]["layers"]
                    .as_object()
                    .unwrap();
                for (layer, l) in layers {
                    let name = format!("indexpattern-datasource-layer-{layer}");
                    assert!(
                        ref_names.contains(name.as_str()),
                        "{what}: {name} is not a reference"
                    );
                    let columns = l["columns"].as_object().unwrap();
                    let order: BTreeSet<&String> = l["columnOrder"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| columns.get_key_value(c.as_str().unwrap()).unwrap().0)
                        .collect();
                    assert_eq!(
                        order.len(),
                        columns.len(),
                        "{what}: columnOrder lists every column"
                    );
                    for c in columns.values() {
                        if let Some(f) = c["sourceField"].as_str().filter(|f| *f != "___records___")
                        {
                            let t = field_type(&fields, f)
                                .unwrap_or_else(|| panic!("{what}: {f} is not mapped"));
                            assert!(
                                aggregatable(&t),
                                "{what}: {f} is mapped {t}, which cannot be aggregated"
                            );
                        }
                        if let Some(q) = c["filter"]["query"].as_str() {
                            check_query(&what, q, &fields);
                        }
                        if let Some(by) = c["params"]["orderBy"]["columnId"].as_str() {
                            assert!(columns.contains_key(by), "{what}: orders by unknown {by}");
                        }
                    }
                    // Every column the chart draws is one the layer computes.
                    let vis = a["state"]["visualization"].to_string();
                    for c in columns.keys() {
                        assert!(
                            vis.contains(&format!("\"{c}\"")),
                            "{what}: {c} is not drawn"
                        );
                    }
                }
            }
            "dashboard" => {
                let panels: Vec<Value> =
                    serde_json::from_str(a["panelsJSON"].as_str().unwrap()).unwrap();
                let (control_refs, panel_refs): (Vec<&Value>, Vec<&Value>) = refs
                    .iter()
                    .partition(|r| r["name"].as_str().unwrap().starts_with("controlGroup_"));
                assert_eq!(panels.len(), panel_refs.len());
                let controls: serde_json::Map<String, Value> = a["controlGroupInput"]["panelsJSON"]
                    .as_str()
                    .map(|c| serde_json::from_str(c).unwrap())
                    .unwrap_or_default();
                assert_eq!(controls.len(), control_refs.len());
                for (id, c) in &controls {
                    let f = c["explicitInput"]["fieldName"].as_str().unwrap();
                    let t = field_type(&fields, f)
                        .unwrap_or_else(|| panic!("{what}: control {id} on unmapped {f}"));
                    assert!(aggregatable(&t), "{what}: control on {f} mapped {t}");
                    let name = format!("controlGroup_{id}:optionsListDataView");
                    assert!(
                        control_refs.iter().any(|r| r["name"] == name.as_str()),
                        "{what}: control {id} has no data view reference"
                    );
                }
                for p in &panels {
                    let name = format!(
                        "{}:{}",
                        p["panelIndex"].as_str().unwrap(),
                        p["panelRefName"].as_str().unwrap()
                    );
                    let r = refs.iter().find(|r| r["name"] == name.as_str());
                    let r = r.unwrap_or_else(|| panic!("{what}: panel {name} has no reference"));
                    assert_eq!(r["type"], p["type"]);
                }
                let titles: BTreeSet<&str> = panels
                    .iter()
                    .map(|p| {
                        let r = refs.iter().find(|r| {
                            r["name"]
                                .as_str()
                                .unwrap()
                                .ends_with(p["panelRefName"].as_str().unwrap())
                        });
                        let id = &r.unwrap()["id"];
                        objs.iter().find(|o| &o["id"] == id).unwrap()["attributes"]["title"]
                            .as_str()
                            .unwrap()
                    })
                    .collect();
                let (wanted, control_fields): (&[&str], &[&str]) =
                    match a["title"].as_str().unwrap() {
                        "Kubernetes logs" => (
                            &[
                                "Errors over time by namespace",
                                "Log volume by namespace",
                                "Log volume by pod",
                                "Top erroring pods",
                                "Log levels",
                                "Slow requests",
                                "Errors",
                            ],
                            &[],
                        ),
                        "User flows" => (
                            &[
                                "User flow",
                                "Flow requests per service over time",
                                "Services in the flow",
                            ],
                            &["user.id", "trace.id", "transaction.id"],
                        ),
                        "Slow requests" => (
                            &[
                                "Slow requests over time by deployment",
                                "Request duration p50/p95/p99 by service",
                                "Slow requests",
                            ],
                            &[],
                        ),
                        other => panic!("an unexpected dashboard {other:?}"),
                    };
                for want in wanted {
                    assert!(titles.contains(want), "{what} lacks {want:?}: {titles:?}");
                }
                let mut by_order: Vec<(u64, &str)> = controls
                    .values()
                    .map(|c| {
                        let f = c["explicitInput"]["fieldName"].as_str().unwrap();
                        (c["order"].as_u64().unwrap(), f)
                    })
                    .collect();
                by_order.sort();
                let fields_controlled: Vec<&str> = by_order.iter().map(|(_, f)| *f).collect();
                assert_eq!(fields_controlled, control_fields, "{what}: controls");
            }
            _ => {}
        }
    }
}

#[test]
fn a_duration_kept_as_text_would_not_compare_as_a_number() {
    // Why `event.duration` is lifted and mapped `long`: under the kept object (a flattened
    // field, whose leaves are keywords) "999" > "1000".
    let mut fields = template_fields();
    assert_eq!(fields["event.duration"], "long");
    fields.remove("event.duration");
    fields.insert("event".into(), "flattened".into());
    let slow = objects()
        .into_iter()
        .find(|o| o["attributes"]["title"] == "Slow requests" && o["type"] == "search")
        .unwrap();
    let src: Value = serde_json::from_str(
        slow["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let q = src["query"]["query"].as_str().unwrap().to_string();
    let r = std::panic::catch_unwind(move || check_query("slow", &q, &fields));
    assert!(r.is_err());
}

fn logferry(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_logferry"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn setup_imports_the_kibana_objects_with_the_clusters_credentials() {
    let es = logferry_testkit::es_server::EsServer::start();
    let kibana = KibanaServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("password");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let cfg = dir.path().join("logferry.toml");
    std::fs::write(
        &cfg,
        format!(
            "[output]\ntype = \"elasticsearch\"\n[output.elasticsearch]\nendpoints = [\"{}\"]\n\
             username = \"elastic\"\npassword_file = \"{}\"\ndataset = \"k8s\"\n",
            es.url,
            secret.display()
        ),
    )
    .unwrap();
    // "elastic:s3cret", as Kibana would check it.
    kibana.with(|k| k.expect_authorization = Some("Basic ZWxhc3RpYzpzM2NyZXQ=".into()));
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a = vec![
            "setup",
            "--config",
            cfg.to_str().unwrap(),
            "--kibana-url",
            &kibana.url,
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect()
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        logferry(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let (code, out, err) = run(&[]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let n = objects().len();
    assert_eq!(out.matches(": created").count(), 4 + n, "{out}");
    assert!(
        out.contains("Kibana dashboard \"Kubernetes logs\": created"),
        "{out}"
    );
    let view = kibana
        .with(|k| k.object("default", "index-pattern", DATA_VIEW_ID))
        .expect("the data view was imported");
    // The data view matches where this config writes.
    assert_eq!(view["attributes"]["title"], "logs-k8s-*");
    assert_eq!(
        saved_objects("logs-k8s-*").unwrap().lines().count(),
        kibana.with(|k| k.spaces["default"].len())
    );

    let (code, out, _) = run(&[]);
    assert_eq!(
        code,
        Some(0),
        "objects that exist are reported, not replaced"
    );
    assert_eq!(out.matches("exists (left as it is").count(), n, "{out}");

    let (code, out, err) = run(&["--overwrite"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(out.matches(": replaced").count(), n, "{out}");

    let (code, out, err) = run(&["--kibana-space", "platform"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(kibana.with(|k| k.spaces["platform"].len()), n);
    assert_eq!(kibana.with(|k| k.import_requests), 4);

    // Wrong credentials: a clear failure, the password never printed.
    std::fs::write(&secret, "wrong").unwrap();
    let (code, out, err) = run(&[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("Kibana answered 401"), "{err}");
    assert!(!out.contains("wrong") && !err.contains("wrong"));
}

#[test]
fn the_test_kibana_refuses_what_the_real_one_refuses() {
    let kibana = KibanaServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let post = |headers: Vec<(&str, String)>, body: &str| {
        rt.block_on(raw_post(&kibana.url, &headers, body))
    };
    let multipart = |name: &str| {
        format!(
            "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\r\n{}\r\n--b--\r\n",
            saved_objects("logs-*").unwrap()
        )
    };
    let ct = (
        "content-type",
        "multipart/form-data; boundary=b".to_string(),
    );
    let xsrf = ("kbn-xsrf", "1".to_string());
    assert_eq!(
        post(vec![ct.clone()], &multipart("a.ndjson")),
        400,
        "no kbn-xsrf"
    );
    assert_eq!(
        post(
            vec![xsrf.clone(), ("content-type", "application/json".into())],
            "{}"
        ),
        415
    );
    assert_eq!(
        post(vec![xsrf.clone(), ct.clone()], &multipart("a.json")),
        400
    );
    assert_eq!(post(vec![xsrf, ct], &multipart("a.ndjson")), 200);
}

/// A bare HTTP/1.1 POST to the import path; answers the status.
async fn raw_post(base: &str, headers: &[(&str, String)], body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST /api/saved_objects/_import HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split(' ').nth(1).unwrap().parse().unwrap()
}

/// With `LOGFERRY_TEST_KIBANA_URL` (and the cluster of `LOGFERRY_TEST_ES_URL`, or the
/// in-tree one), the import runs against that Kibana: every object is created or replaced
/// and the dashboard can be read back.
#[test]
fn setup_against_a_real_kibana_when_one_is_given() {
    let Ok(url) = std::env::var("LOGFERRY_TEST_KIBANA_URL") else {
        return eprintln!("skipped: LOGFERRY_TEST_KIBANA_URL is not set");
    };
    let es = support::Es::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("logferry.toml");
    std::fs::write(
        &cfg,
        format!(
            "[output]\ntype = \"elasticsearch\"\n[output.elasticsearch]\nendpoints = [\"{}\"]\n",
            es.url()
        ),
    )
    .unwrap();
    let (code, out, err) = logferry(&[
        "setup",
        "--config",
        cfg.to_str().unwrap(),
        "--kibana-url",
        &url,
        "--overwrite",
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let imported = out.lines().filter(|l| l.starts_with("Kibana ")).count();
    assert_eq!(imported, objects().len(), "{out}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        let t = logferry::setup::kibana::transport(&url, &ElasticsearchConfig::default()).unwrap();
        t.send(
            elasticsearch::http::Method::Get,
            "api/saved_objects/dashboard/logferry-kubernetes-logs",
            elasticsearch::http::headers::HeaderMap::new(),
            None::<&()>,
            None::<String>,
            None,
        )
        .await
        .unwrap()
        .status_code()
        .as_u16()
    });
    assert_eq!(status, 200);
}
