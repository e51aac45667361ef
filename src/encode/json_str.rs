//! The text of a JSON string read from the input: borrowed unless it had escapes.

use serde::de::{self, Deserializer, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// A string that borrows from the input unless it had escapes.
pub(super) struct CowStr<'a>(pub(super) Cow<'a, str>);

impl<'de> de::Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON string's text; any other JSON value's source text.
#[inline]
pub(super) fn text_of(raw: &RawValue) -> Cow<'_, str> {
    let s = raw.get();
    // Most strings have no escape: their text is what is between the quotes.
    if s.len() >= 2 && s.starts_with('"') && memchr::memchr(b'\\', s.as_bytes()).is_none() {
        return Cow::Borrowed(&s[1..s.len() - 1]);
    }
    if s.starts_with('"') {
        if let Ok(CowStr(v)) = serde_json::from_str::<CowStr>(s) {
            return v;
        }
    }
    Cow::Borrowed(s)
}
