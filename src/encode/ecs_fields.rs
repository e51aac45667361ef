//! The ECS fields lifted out of structured messages (JSON objects, logfmt lines): which
//! message key feeds which field, how each value is read (ids as keywords, the status as
//! an integer, durations in nanoseconds), and how they are written into the document.
//! A value of the wrong type is not lifted, and the event is flagged: it stays in the kept
//! object, and the field's mapping never meets a value it cannot take.

use super::escape::write_str;
use crate::config::FieldsConfig;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The keys a record's level is read from (JSON and logfmt alike).
pub const LEVEL_KEYS: [&str; 3] = ["level", "severity", "lvl"];
/// The keys a record's message is read from.
pub const MESSAGE_KEYS: [&str; 2] = ["msg", "message"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    TraceId,
    SpanId,
    TransactionId,
    UserId,
    Method,
    Path,
    Status,
    DurationMs,
    Duration,
}

/// The keys below a top-level key, each with the rest of its path and its field.
pub type NestedKeys = [(Vec<Box<str>>, Field)];

/// A key's place in the table: the field it feeds directly, and the nested keys below it
/// (`user` → `id` for `user.id`).
#[derive(Debug, Default, Clone)]
struct Entry {
    leaf: Option<Field>,
    nested: Vec<(Vec<Box<str>>, Field)>,
}

/// The configured keys, looked up by length first: most keys of a message miss at once.
#[derive(Debug, Clone, Default)]
pub struct FieldKeys {
    by_len: Vec<Vec<(Box<[u8]>, Entry)>>,
}

const MAX_KEY: usize = 64;

impl FieldKeys {
    pub fn new(cfg: &FieldsConfig) -> FieldKeys {
        let mut keys = FieldKeys {
            by_len: vec![Vec::new(); MAX_KEY + 1],
        };
        let fields = [
            Field::TraceId,
            Field::SpanId,
            Field::TransactionId,
            Field::UserId,
            Field::Method,
            Field::Path,
            Field::Status,
            Field::DurationMs,
            Field::Duration,
        ];
        for ((_, list), field) in cfg.lists().into_iter().zip(fields) {
            for k in list {
                // The literal key, dots and all.
                keys.entry(k.as_bytes()).leaf.get_or_insert(field);
                let segments: Vec<&str> = k.split('.').collect();
                if segments.len() > 1 {
                    let rest = segments[1..].iter().map(|s| Box::from(*s)).collect();
                    keys.entry(segments[0].as_bytes())
                        .nested
                        .push((rest, field));
                }
            }
        }
        keys
    }

    fn entry(&mut self, key: &[u8]) -> &mut Entry {
        let bucket = &mut self.by_len[key.len().min(MAX_KEY)];
        let i = match bucket.iter().position(|(k, _)| &k[..] == key) {
            Some(i) => i,
            None => {
                bucket.push((key.into(), Entry::default()));
                bucket.len() - 1
            }
        };
        &mut bucket[i].1
    }

    /// The field a top-level key feeds, if any.
    pub fn leaf(&self, key: &str) -> Option<Field> {
        self.get(key).and_then(|e| e.leaf)
    }

    /// What a top-level key feeds: a field directly, and the nested keys below it. `None`
    /// for most keys.
    pub fn lookup(&self, key: &str) -> Option<(Option<Field>, &NestedKeys)> {
        self.get(key).map(|e| (e.leaf, &e.nested[..]))
    }

    fn get(&self, key: &str) -> Option<&Entry> {
        let key = key.as_bytes();
        if key.len() > MAX_KEY {
            return None;
        }
        let (first, last) = (key.first()?, key.last()?);
        // The ends differ for most keys of the same length: no memcmp for those.
        self.by_len[key.len()]
            .iter()
            .find(|(k, _)| k[0] == *first && k[k.len() - 1] == *last && &k[..] == key)
            .map(|(_, e)| e)
    }
}

/// The fields lifted from one message.
#[derive(Debug, Default, PartialEq)]
pub struct EcsValues<'a> {
    pub trace_id: Option<Cow<'a, str>>,
    pub span_id: Option<Cow<'a, str>>,
    pub transaction_id: Option<Cow<'a, str>>,
    pub user_id: Option<Cow<'a, str>>,
    pub method: Option<Cow<'a, str>>,
    pub path: Option<Cow<'a, str>>,
    pub status: Option<i64>,
    pub duration_ns: Option<i64>,
    /// A configured key held a value of another type: not lifted.
    pub mismatched: bool,
}

/// A message value, as JSON or logfmt gives it.
pub enum Raw<'a> {
    /// A JSON string's text, or a logfmt value.
    Text(Cow<'a, str>),
    /// A JSON number, as written.
    Number(&'a str),
    /// `null`: no value, not a mismatch.
    Null,
    /// `true`/`false`, an object or an array.
    Other,
}

impl<'a> Raw<'a> {
    /// Reads a JSON value without building it.
    pub fn json(raw: &'a RawValue) -> Raw<'a> {
        let s = raw.get();
        match s.as_bytes().first() {
            Some(b'"') => Raw::Text(super::json_str::text_of(raw)),
            Some(b'-' | b'0'..=b'9') => Raw::Number(s),
            Some(b'n') => Raw::Null,
            _ => Raw::Other,
        }
    }
}

impl<'a> EcsValues<'a> {
    /// Takes `value` for `field` unless the field has one already (the first key wins).
    pub fn take(&mut self, field: Field, value: Raw<'a>) {
        let ok = match field {
            Field::TraceId => keyword(&mut self.trace_id, value, true),
            Field::SpanId => keyword(&mut self.span_id, value, true),
            Field::TransactionId => keyword(&mut self.transaction_id, value, true),
            Field::UserId => keyword(&mut self.user_id, value, true),
            Field::Method => keyword(&mut self.method, value, false),
            Field::Path => keyword(&mut self.path, value, false),
            Field::Status => number(&mut self.status, value, |s| {
                s.parse::<i64>().ok().filter(|n| (0..=999).contains(n))
            }),
            Field::DurationMs => number(&mut self.duration_ns, value, |s| {
                nanos(s.parse::<f64>().ok()?, 1e6)
            }),
            Field::Duration => number(&mut self.duration_ns, value, parse_duration),
        };
        self.mismatched |= !ok;
    }

    pub fn is_empty(&self) -> bool {
        *self == EcsValues::default()
    }

    /// Appends the ECS members, each with a leading comma.
    pub fn write(&self, out: &mut Vec<u8>) {
        let ids = [
            ("trace", &self.trace_id),
            ("span", &self.span_id),
            ("transaction", &self.transaction_id),
            ("user", &self.user_id),
        ];
        for (name, v) in ids {
            if let Some(v) = v {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":{\"id\":");
                write_str(out, v);
                out.push(b'}');
            }
        }
        if self.method.is_some() || self.status.is_some() {
            out.extend_from_slice(b",\"http\":{");
            if let Some(m) = &self.method {
                out.extend_from_slice(b"\"request\":{\"method\":");
                write_str(out, m);
                out.push(b'}');
            }
            if let Some(s) = self.status {
                if self.method.is_some() {
                    out.push(b',');
                }
                out.extend_from_slice(b"\"response\":{\"status_code\":");
                out.extend_from_slice(itoa::Buffer::new().format(s).as_bytes());
                out.push(b'}');
            }
            out.push(b'}');
        }
        if let Some(p) = &self.path {
            out.extend_from_slice(b",\"url\":{\"path\":");
            write_str(out, p);
            out.push(b'}');
        }
        if let Some(d) = self.duration_ns {
            out.extend_from_slice(b",\"event\":{\"duration\":");
            out.extend_from_slice(itoa::Buffer::new().format(d).as_bytes());
            out.push(b'}');
        }
    }
}

/// An id, a method or a path: a non-empty string (ids also from an integer). Returns false
/// on a value of another type.
fn keyword<'a>(slot: &mut Option<Cow<'a, str>>, value: Raw<'a>, numbers: bool) -> bool {
    let v = match value {
        Raw::Text(t) => t,
        Raw::Number(n) if numbers && !n.contains(['.', 'e', 'E']) => Cow::Borrowed(n),
        Raw::Null => return true,
        Raw::Number(_) | Raw::Other => return false,
    };
    if slot.is_none() && !v.trim().is_empty() {
        *slot = Some(v);
    }
    true
}

/// A number read from a JSON number or a string by `parse`. Returns false when it does not
/// read.
fn number(slot: &mut Option<i64>, value: Raw<'_>, parse: impl Fn(&str) -> Option<i64>) -> bool {
    let parsed = match &value {
        Raw::Text(t) => parse(t.trim()),
        Raw::Number(n) => parse(n),
        Raw::Null => return true,
        Raw::Other => None,
    };
    match parsed {
        Some(n) => {
            slot.get_or_insert(n);
            true
        }
        None => false,
    }
}

/// `amount × scale` nanoseconds, when it is a duration a `long` holds.
fn nanos(amount: f64, scale: f64) -> Option<i64> {
    let ns = (amount * scale).round();
    (ns.is_finite() && (0.0..9.0e18).contains(&ns)).then_some(ns as i64)
}

/// `932ms`, `1.2s`, `150us`, `1m30s` (Go's form), or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(seconds) = s.parse::<f64>() {
        return nanos(seconds, 1e9);
    }
    let mut rest = s;
    let mut total = 0i64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let amount: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match rest[..unit].trim() {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" | "sec" => 1e9,
            "m" | "min" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit..];
        total = total.checked_add(nanos(amount, scale)?)?;
    }
    (!s.is_empty()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_read_with_their_units() {
        assert_eq!(parse_duration("932ms"), Some(932_000_000));
        assert_eq!(parse_duration("1.2s"), Some(1_200_000_000));
        assert_eq!(parse_duration("150us"), Some(150_000));
        assert_eq!(parse_duration("150µs"), Some(150_000));
        assert_eq!(parse_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_duration("0.25"), Some(250_000_000));
        assert_eq!(parse_duration("2h"), Some(7_200_000_000_000));
        for bad in ["", "fast", "1.2 parsecs", "-3s", "1e400", "ms"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn keys_are_found_literally_and_nested() {
        let keys = FieldKeys::new(&FieldsConfig::default());
        assert_eq!(keys.leaf("trace_id"), Some(Field::TraceId));
        assert_eq!(keys.leaf("user.id"), Some(Field::UserId));
        assert_eq!(keys.leaf("user"), None);
        let (_, nested) = keys.lookup("user").unwrap();
        assert!(nested
            .iter()
            .any(|(rest, f)| rest.len() == 1 && &*rest[0] == "id" && *f == Field::UserId));
        assert!(keys.lookup("http").unwrap().1.len() >= 3);
        assert_eq!(keys.leaf("nothing"), None);
        assert_eq!(keys.leaf(&"x".repeat(200)), None);
    }

    #[test]
    fn values_of_another_type_are_not_lifted_and_say_so() {
        let mut v = EcsValues::default();
        v.take(Field::Status, Raw::Text("ok".into()));
        v.take(Field::Method, Raw::Number("5"));
        assert!(v.mismatched && v.status.is_none() && v.method.is_none());
        let mut v = EcsValues::default();
        v.take(Field::Status, Raw::Text("404".into()));
        v.take(Field::UserId, Raw::Number("42"));
        v.take(Field::UserId, Raw::Text("later".into()));
        v.take(Field::DurationMs, Raw::Number("1500.5"));
        v.take(Field::TraceId, Raw::Null);
        assert!(!v.mismatched);
        assert_eq!(v.status, Some(404));
        assert_eq!(v.user_id.as_deref(), Some("42"), "the first key wins");
        assert_eq!(v.duration_ns, Some(1_500_500_000));
        assert_eq!(v.trace_id, None);
    }

    #[test]
    fn writes_nested_ecs_objects() {
        let v = EcsValues {
            trace_id: Some("t1".into()),
            method: Some("GET".into()),
            status: Some(200),
            path: Some("/cart".into()),
            duration_ns: Some(5),
            ..Default::default()
        };
        let mut out = b"{\"a\":1".to_vec();
        v.write(&mut out);
        out.push(b'}');
        let d: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(d["trace"]["id"], "t1");
        assert_eq!(d["http"]["request"]["method"], "GET");
        assert_eq!(d["http"]["response"]["status_code"], 200);
        assert_eq!(d["url"]["path"], "/cart");
        assert_eq!(d["event"]["duration"], 5);
    }

    proptest! {
        #[test]
        fn any_duration_text_is_read_or_refused_without_panic(s in "\\PC{0,24}") {
            if let Some(ns) = parse_duration(&s) {
                prop_assert!(ns >= 0);
            }
        }
    }
}
