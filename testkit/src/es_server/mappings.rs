//! Index templates matched by pattern, and the dynamic mapping of documents: a field's
//! first type sticks, and a document that conflicts with it fails its item.

use super::*;

/// Simple `*` globbing of index patterns.
pub(super) fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(p) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            let Some(at) = rest.find(p) else { return false };
            rest = &rest[at + p.len()..];
        }
    }
    true
}

/// Whether a request's targets (comma-separated names and patterns) take in `name`.
pub(super) fn targets_match(targets: &str, name: &str) -> bool {
    targets.split(',').any(|t| glob_match(t, name))
}

/// The highest-priority template matching an index; ES 8's built-in `logs` template
/// (`logs-*-*`, priority 100, data stream) when no other does.
pub(super) fn template_for(s: &State, index: &str) -> Option<(String, Value)> {
    let mut best: Option<(u64, String, Value)> = None;
    for (name, t) in &s.templates {
        let matches = t["index_patterns"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p.as_str().is_some_and(|p| glob_match(p, index)))
        });
        let prio = t["priority"].as_u64().unwrap_or(0);
        if matches && best.as_ref().is_none_or(|(p, _, _)| prio > *p) {
            best = Some((prio, name.clone(), t.clone()));
        }
    }
    if best.is_none() && glob_match("logs-*-*", index) {
        return Some((
            "logs".into(),
            json!({ "index_patterns": ["logs-*-*"], "data_stream": {}, "priority": 100 }),
        ));
    }
    best.map(|(_, n, t)| (n, t))
}

/// The ILM policy a template gives its indices: its own settings over its component
/// templates', the later component over the earlier, as Elasticsearch composes them.
pub(super) fn ilm_policy_of(s: &State, t: &Value) -> Option<String> {
    let of = |settings: &Value| {
        settings
            .get("index.lifecycle.name")
            .or_else(|| settings.pointer("/index/lifecycle/name"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let components = t["composed_of"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().and_then(|c| s.component.get(c)))
        .map(|ct| &ct["template"]["settings"]);
    components
        .chain([&t["template"]["settings"]])
        .rev()
        .find_map(of)
}

pub(super) fn create_index(s: &State, name: &str) -> Index {
    let mut idx = Index::default();
    if let Some((_, t)) = template_for(s, name) {
        idx.data_stream = t.get("data_stream").is_some();
        let mut sources = vec![];
        for c in t["composed_of"].as_array().into_iter().flatten() {
            if let Some(ct) = c.as_str().and_then(|c| s.component.get(c)) {
                sources.push(ct["template"]["mappings"].clone());
            }
        }
        sources.push(t["template"]["mappings"].clone());
        for m in sources {
            if let Some(props) = m["properties"].as_object() {
                load_properties(&mut idx.fields, "", props);
            }
            if m["dynamic_templates"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
            {
                idx.dynamic_strings_keyword = true;
            }
        }
    }
    if idx.data_stream {
        idx.fields.insert("@timestamp".into(), Kind::Date);
        idx.generation = 1;
    }
    idx
}

pub(super) fn load_properties(
    fields: &mut HashMap<String, Kind>,
    prefix: &str,
    props: &Map<String, Value>,
) {
    for (k, v) in props {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let Some(sub) = v["properties"].as_object() {
            fields.insert(path.clone(), Kind::Object);
            load_properties(fields, &path, sub);
            continue;
        }
        let kind = match v["type"].as_str() {
            Some("flattened") => Kind::Flattened,
            Some("long" | "integer" | "short") => Kind::Long,
            Some("double" | "float" | "scaled_float") => Kind::Double,
            Some("keyword" | "text" | "match_only_text" | "constant_keyword" | "wildcard") => {
                Kind::Keyword
            }
            Some("boolean") => Kind::Boolean,
            Some("date" | "date_nanos") => Kind::Date,
            Some("object") | None => Kind::Object,
            Some(_) => Kind::Other,
        };
        fields.insert(path, kind);
    }
}

/// `strict_date_optional_time_nanos`, the format of ES's `date_nanos` and of dynamic dates.
pub(super) fn is_date(s: &str) -> bool {
    static FORMAT: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    FORMAT
        .get_or_init(|| {
            regex::Regex::new(
                r"^\d{4}-\d{2}-\d{2}(?:[Tt]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?(?:[Zz]|[+-]\d{2}:?\d{2})?)?$",
            )
            .expect("valid regex")
        })
        .is_match(s)
}

/// Checks a document against the index's mappings, adding dynamic fields; an error is
/// the item's `(type, reason)`.
pub(super) fn map_document(
    idx: &mut Index,
    doc: &Map<String, Value>,
    id: &str,
) -> Result<(), (String, String)> {
    let mut added = vec![];
    let r = map_object(idx, &mut String::new(), doc, id, &mut added);
    if r.is_err() {
        for p in added {
            idx.fields.remove(&p);
        }
    }
    r
}

pub(super) fn map_object(
    idx: &mut Index,
    path: &mut String,
    obj: &Map<String, Value>,
    id: &str,
    added: &mut Vec<String>,
) -> Result<(), (String, String)> {
    // One path buffer for the whole walk: no allocation per field already mapped.
    let base = path.len();
    for (k, v) in obj {
        path.truncate(base);
        if base > 0 {
            path.push('.');
        }
        path.push_str(k);
        let known = idx.fields.get(path.as_str()).copied();
        let parse_err = |path: &str, kind: &str| {
            (
                "document_parsing_exception".to_string(),
                format!("[1:1] failed to parse field [{path}] of type [{kind}] in document with id '{id}'. Preview of field's value: '{v}'"),
            )
        };
        match (known, v) {
            (Some(Kind::Flattened), _) => {}
            (Some(Kind::Object), Value::Object(o)) => map_object(idx, path, o, id, added)?,
            (Some(Kind::Object), Value::Null) => {}
            (Some(Kind::Object), _) => {
                let leaf = path.rsplit('.').next().unwrap_or(path).to_string();
                return Err((
                    "document_parsing_exception".into(),
                    format!("[1:1] object mapping for [{path}] tried to parse field [{leaf}] as object, but found a concrete value"),
                ));
            }
            (Some(_), Value::Null) => {}
            (Some(Kind::Long), Value::Number(n)) if n.is_i64() || n.is_u64() => {}
            (Some(Kind::Long), Value::String(s)) if s.parse::<i64>().is_ok() => {}
            (Some(Kind::Long), _) => return Err(parse_err(path, "long")),
            (Some(Kind::Double), Value::Number(_)) => {}
            (Some(Kind::Double), Value::String(s)) if s.parse::<f64>().is_ok() => {}
            (Some(Kind::Double), _) => return Err(parse_err(path, "float")),
            (Some(Kind::Boolean), Value::Bool(_)) => {}
            (Some(Kind::Boolean), _) => return Err(parse_err(path, "boolean")),
            (Some(Kind::Date), Value::String(s)) if is_date(s) => {}
            (Some(Kind::Date), _) => return Err(parse_err(path, "date_nanos")),
            (Some(Kind::Keyword | Kind::Other), Value::Object(_)) => {
                return Err(parse_err(path, "keyword"))
            }
            (Some(Kind::Keyword | Kind::Other), _) => {}
            (None, Value::Object(o)) => {
                idx.fields.insert(path.clone(), Kind::Object);
                added.push(path.clone());
                map_object(idx, path, o, id, added)?;
            }
            (None, Value::Array(items)) => {
                let first = items.iter().find(|x| !x.is_null());
                let kind = match first {
                    Some(Value::Number(n)) if n.is_f64() => Kind::Double,
                    Some(Value::Number(_)) => Kind::Long,
                    Some(Value::Bool(_)) => Kind::Boolean,
                    Some(Value::Object(_)) => Kind::Object,
                    Some(_) => Kind::Keyword,
                    None => continue,
                };
                idx.fields.insert(path.clone(), kind);
                added.push(path.clone());
            }
            (None, v) => {
                let kind = match v {
                    Value::Number(n) if n.is_f64() => Kind::Double,
                    Value::Number(_) => Kind::Long,
                    Value::Bool(_) => Kind::Boolean,
                    Value::String(s) if !idx.dynamic_strings_keyword && is_date(s) => Kind::Date,
                    Value::Null => continue,
                    _ => Kind::Keyword,
                };
                idx.fields.insert(path.clone(), kind);
                added.push(path.clone());
            }
        }
    }
    path.truncate(base);
    Ok(())
}
