//! A document Elasticsearch refused (mapping conflict, unparsable field) gets one more
//! chance: the application's JSON object and the field the error names are taken out, the
//! whole original document is kept as text in `event.original`, and `error.*` says why.

use serde_json::{json, Map, Value};

/// The rebuilt document, or `None` if the original is not a JSON object.
pub fn rescue(doc: &[u8], kept: &[String], error_type: &str, reason: &str) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(doc).ok()?;
    let obj = v.as_object_mut()?;
    for key in kept {
        obj.remove(key);
    }
    if let Some(path) = field_in_reason(reason) {
        remove_path(obj, &path.split('.').collect::<Vec<_>>());
    }
    if !obj.get("@timestamp").is_some_and(Value::is_string) {
        let mut now = Vec::new();
        crate::time::format_rfc3339_nanos(std::time::SystemTime::now(), &mut now);
        obj.insert(
            "@timestamp".into(),
            Value::String(String::from_utf8_lossy(&now).into_owned()),
        );
    }
    // Beside `event.duration`, when the message gave one.
    let event = obj.entry("event").or_insert_with(|| json!({}));
    if !event.is_object() {
        *event = json!({});
    }
    event["original"] = Value::String(String::from_utf8_lossy(doc).into_owned());
    obj.insert(
        "error".into(),
        json!({ "type": error_type, "message": reason }),
    );
    let log = obj
        .entry("log")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(log) = log.as_object_mut() {
        let flags = log.entry("flags").or_insert_with(|| Value::Array(vec![]));
        if let Some(f) = flags.as_array_mut() {
            f.push(Value::String("rescued".into()));
        } else {
            *flags = json!(["rescued"]);
        }
    }
    serde_json::to_vec(&v).ok()
}

/// The first `[a.b.c]` in the reason that names a field (not a position or a number).
fn field_in_reason(reason: &str) -> Option<&str> {
    let mut rest = reason;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let close = after.find(']')?;
        let inner = &after[..close];
        let is_field = !inner.is_empty()
            && !inner.contains([':', ' ', '\''])
            && !inner.bytes().all(|b| b.is_ascii_digit());
        if is_field {
            return Some(inner);
        }
        rest = &after[close + 1..];
    }
    None
}

/// Removes a dotted path; a key may itself hold dots (label keys), so longer keys are tried first.
fn remove_path(obj: &mut Map<String, Value>, parts: &[&str]) -> bool {
    for n in (1..=parts.len()).rev() {
        let key = parts[..n].join(".");
        if n == parts.len() {
            if obj.remove(&key).is_some() {
                return true;
            }
        } else if let Some(Value::Object(child)) = obj.get_mut(&key) {
            if remove_path(child, &parts[n..]) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_the_conflicting_field_out() {
        let doc = br#"{"@timestamp":"2024-01-01T00:00:00Z","message":"m","log":{"offset":1},"kubernetes":{"labels":{"app":"x","tier":"web"}},"json":{"a":1}}"#;
        let reason = "object mapping for [kubernetes.labels.app] tried to parse field [app] as object, but found a concrete value";
        let out: Value = serde_json::from_slice(
            &rescue(doc, &["json".into()], "document_parsing_exception", reason).unwrap(),
        )
        .unwrap();
        assert!(out["kubernetes"]["labels"].get("app").is_none());
        assert_eq!(out["kubernetes"]["labels"]["tier"], "web");
        assert!(out.get("json").is_none());
        assert_eq!(
            out["event"]["original"].as_str().unwrap(),
            String::from_utf8_lossy(doc)
        );
        assert_eq!(out["error"]["message"], reason);
        assert_eq!(out["log"]["flags"], json!(["rescued"]));
        assert_eq!(out["message"], "m");
    }

    #[test]
    fn finds_fields_in_reasons() {
        assert_eq!(
            field_in_reason("[1:120] failed to parse field [json.status] of type [long]"),
            Some("json.status")
        );
        assert_eq!(
            field_in_reason("Limit of total fields [1000] has been exceeded"),
            None
        );
        let mut o =
            serde_json::from_str::<Map<String, Value>>(r#"{"k":{"a.b":{"c":1,"d":2}}}"#).unwrap();
        assert!(remove_path(&mut o, &["k", "a", "b", "c"]));
        assert_eq!(Value::Object(o), json!({"k":{"a.b":{"d":2}}}));
    }

    #[test]
    fn a_bad_timestamp_is_replaced() {
        let doc = br#"{"@timestamp":"yesterday","message":"m"}"#;
        let out: Value = serde_json::from_slice(
            &rescue(
                doc,
                &["json".into()],
                "document_parsing_exception",
                "failed to parse field [@timestamp] of type [date_nanos]",
            )
            .unwrap(),
        )
        .unwrap();
        assert!(crate::time::is_rfc3339(
            out["@timestamp"].as_str().unwrap().as_bytes()
        ));
        assert!(rescue(b"not json", &["json".into()], "x", "y").is_none());
    }
}
