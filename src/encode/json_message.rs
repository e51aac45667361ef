//! Messages that are JSON objects: their level and message are lifted into `log.level` and
//! `message`, the configured keys into their ECS fields (`ecs_fields`), and the object
//! itself is kept verbatim, without building a value tree.

use super::ecs_fields::{EcsValues, Field, FieldKeys, Raw, LEVEL_KEYS, MESSAGE_KEYS};
use super::json_str::{text_of, CowStr};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

#[derive(Debug)]
pub struct Lifted<'a> {
    pub level: Option<Cow<'a, str>>,
    /// The message: a string's text, or another value's JSON.
    pub message: Option<Cow<'a, str>>,
    /// The object, as compact JSON that fits on one NDJSON line.
    pub object: Cow<'a, [u8]>,
}

/// Returns the lifted fields when `text` is a JSON object, `None` otherwise. The ECS
/// fields go into `ecs` (kept by the caller: the values are large to move).
pub fn lift<'a>(text: &'a [u8], keys: &FieldKeys, ecs: &mut EcsValues<'a>) -> Option<Lifted<'a>> {
    let lifted = lift_object(text, keys, ecs);
    if lifted.is_none() {
        // Not an object after all (it broke off after some keys were read): nothing of
        // it is lifted.
        *ecs = EcsValues::default();
    }
    lifted
}

fn lift_object<'a>(
    text: &'a [u8],
    keys: &FieldKeys,
    ecs: &mut EcsValues<'a>,
) -> Option<Lifted<'a>> {
    let start = text.iter().position(|c| !c.is_ascii_whitespace())?;
    if text[start] != b'{' || *text.iter().rev().find(|c| !c.is_ascii_whitespace())? != b'}' {
        return None;
    }
    // The object is copied verbatim into the document, and serde_json skips the strings
    // it ignores without checking them: invalid UTF-8 would make the document invalid.
    std::str::from_utf8(text).ok()?;
    let mut de = serde_json::Deserializer::from_slice(text);
    let found = (&mut de).deserialize_map(LiftVisitor { keys, ecs }).ok()?;
    de.end().ok()?;
    let trimmed = text.trim_ascii();
    // Whitespace between tokens may hold newlines, which NDJSON cannot carry.
    let object = if trimmed.iter().any(|&c| c == b'\n' || c == b'\r') {
        let v: serde_json::Value = serde_json::from_slice(trimmed).ok()?;
        Cow::Owned(serde_json::to_vec(&v).ok()?)
    } else {
        Cow::Borrowed(trimmed)
    };
    Some(Lifted {
        level: found.level,
        message: found.message,
        object,
    })
}

struct Found<'a> {
    level: Option<Cow<'a, str>>,
    message: Option<Cow<'a, str>>,
}

struct LiftVisitor<'k, 'e, 'de> {
    keys: &'k FieldKeys,
    ecs: &'e mut EcsValues<'de>,
}

impl<'de> Visitor<'de> for LiftVisitor<'_, '_, 'de> {
    type Value = Found<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found<'de>, A::Error> {
        let mut found = Found {
            level: None,
            message: None,
        };
        while let Some(CowStr(key)) = map.next_key()? {
            if found.level.is_none() && LEVEL_KEYS.contains(&key.as_ref()) {
                let raw: &'de RawValue = map.next_value()?;
                found.level = level_of(raw);
            } else if found.message.is_none() && MESSAGE_KEYS.contains(&key.as_ref()) {
                let raw: &'de RawValue = map.next_value()?;
                found.message = Some(text_of(raw));
            } else {
                match self.keys.lookup(&key) {
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                    Some((Some(field), _)) => {
                        let raw: &'de RawValue = map.next_value()?;
                        self.ecs.take(field, Raw::json(raw));
                    }
                    Some((None, nested)) => {
                        let candidates: Vec<(&[Box<str>], Field)> =
                            nested.iter().map(|(r, f)| (&r[..], *f)).collect();
                        map.next_value_seed(Nested {
                            candidates: &candidates,
                            ecs: &mut *self.ecs,
                        })?;
                    }
                }
            }
        }
        Ok(found)
    }
}

/// A value under a key some configured keys go through (`user` for `user.id`): an object
/// is looked into for the rest of their paths, anything else is skipped.
struct Nested<'c, 'e, 'de> {
    candidates: &'c [(&'c [Box<str>], Field)],
    ecs: &'e mut EcsValues<'de>,
}

impl<'de> DeserializeSeed<'de> for Nested<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Nested<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(CowStr(key)) = map.next_key()? {
            let leaf = self
                .candidates
                .iter()
                .find(|(rest, _)| rest.len() == 1 && *rest[0] == *key)
                .map(|(_, f)| *f);
            let deeper: Vec<(&[Box<str>], Field)> = self
                .candidates
                .iter()
                .filter(|(rest, _)| rest.len() > 1 && *rest[0] == *key)
                .map(|(rest, f)| (&rest[1..], *f))
                .collect();
            if let Some(field) = leaf {
                let raw: &'de RawValue = map.next_value()?;
                self.ecs.take(field, Raw::json(raw));
            } else if !deeper.is_empty() {
                map.next_value_seed(Nested {
                    candidates: &deeper,
                    ecs: &mut *self.ecs,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A level string as written, lower-cased; pino/bunyan numeric levels by name.
fn level_of(raw: &RawValue) -> Option<Cow<'_, str>> {
    let s = raw.get();
    if s.starts_with('"') {
        let v = text_of(raw);
        let v = v.trim();
        if v.is_empty() {
            return None;
        }
        return Some(
            if v.bytes().any(|b| b.is_ascii_uppercase()) || v.len() != s.len() - 2 {
                Cow::Owned(v.to_ascii_lowercase())
            } else {
                Cow::Borrowed(&s[1..s.len() - 1])
            },
        );
    }
    let name = match s.parse::<u64>().ok()? {
        10 => "trace",
        20 => "debug",
        30 => "info",
        40 => "warn",
        50 => "error",
        60 => "fatal",
        _ => return Some(Cow::Borrowed(s)),
    };
    Some(Cow::Borrowed(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> FieldKeys {
        FieldKeys::new(&crate::config::FieldsConfig::default())
    }

    #[test]
    fn an_object_with_invalid_utf8_is_not_lifted() {
        // Found by fuzzing: the bytes went verbatim into the document, which was not JSON.
        let text = b"{\"time\":\"11:11\xff\xfe1Z\",\"msg\":\"m\"}";
        assert!(lift(text, &keys(), &mut EcsValues::default()).is_none());
    }
    use proptest::prelude::*;

    #[test]
    fn lifts_level_and_message() {
        let l = lift(
            br#"{"level":"INFO","msg":"started \"x\"","port":8080}"#,
            &keys(),
            &mut EcsValues::default(),
        )
        .unwrap();
        assert_eq!(l.level.as_deref(), Some("info"));
        assert_eq!(l.message.as_deref(), Some("started \"x\""));
        assert_eq!(
            &l.object[..],
            br#"{"level":"INFO","msg":"started \"x\"","port":8080}"#
        );
    }

    #[test]
    fn knows_the_other_key_names() {
        let l = lift(
            br#"{"severity":"warning","message":"m"}"#,
            &keys(),
            &mut EcsValues::default(),
        )
        .unwrap();
        assert_eq!(
            (l.level.as_deref(), l.message.as_deref()),
            (Some("warning"), Some("m"))
        );
        let l = lift(
            br#"{"lvl":"debug","msg":{"nested":true}}"#,
            &keys(),
            &mut EcsValues::default(),
        )
        .unwrap();
        assert_eq!(l.message.as_deref(), Some(r#"{"nested":true}"#));
        let l = lift(
            br#"{"level":50,"msg":"pino"}"#,
            &keys(),
            &mut EcsValues::default(),
        )
        .unwrap();
        assert_eq!(l.level.as_deref(), Some("error"));
        let l = lift(br#"{"a":1}"#, &keys(), &mut EcsValues::default()).unwrap();
        assert!(l.level.is_none() && l.message.is_none());
    }

    #[test]
    fn compacts_multiline_objects() {
        let l = lift(
            b"{\n  \"a\": 1,\n  \"b\": [1, 2]\n}",
            &keys(),
            &mut EcsValues::default(),
        )
        .unwrap();
        assert_eq!(&l.object[..], br#"{"a":1,"b":[1,2]}"#);
    }

    #[test]
    fn non_objects_are_text() {
        for t in [
            &b"plain"[..],
            b"[1,2]",
            b"\"s\"",
            b"{broken",
            b"{\"a\":1} trailing",
            b"{\"a\":1}}",
            b"",
            // Broken off after a lifted key: nothing of it is lifted.
            b"{\"trace_id\":\"t\",\"method\":7,\"a\":}",
        ] {
            let mut ecs = EcsValues::default();
            assert!(
                lift(t, &keys(), &mut ecs).is_none(),
                "{}",
                String::from_utf8_lossy(t)
            );
            assert!(ecs.is_empty(), "{ecs:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut t = b"{".to_vec();
            t.extend(data);
            t.push(b'}');
            if let Some(l) = lift(&t, &keys(), &mut EcsValues::default()) {
                // What is kept is always a valid one-line JSON object.
                let v: serde_json::Value = serde_json::from_slice(&l.object).unwrap();
                prop_assert!(v.is_object());
                prop_assert!(!l.object.contains(&b'\n'));
            }
        }
    }
}
