//! Reading a bulk response item by item, and what each outcome means for the document.

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// Asked of Elasticsearch so that replies stay small when all goes well.
pub const FILTER_PATH: &str = "errors,items.*.status,items.*.error.type,items.*.error.reason";
/// The same, with the index each item went to: asked only when replays are sent.
pub const FILTER_PATH_WITH_INDEX: &str =
    "errors,items.*.status,items.*._index,items.*.error.type,items.*.error.reason";

/// One item's result. 16 bytes when it went in and no index was asked: a reply has up to
/// `batch_max_events` of them, for each request in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemResult {
    pub status: u16,
    detail: Option<Box<Detail>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Detail {
    index: Option<String>,
    error_type: Option<String>,
    reason: Option<String>,
}

impl ItemResult {
    pub fn new(status: u16, error_type: Option<String>, reason: Option<String>) -> Self {
        ItemResult::with_index(status, None, error_type, reason)
    }

    fn with_index(
        status: u16,
        index: Option<String>,
        error_type: Option<String>,
        reason: Option<String>,
    ) -> Self {
        let detail = (index.is_some() || error_type.is_some() || reason.is_some()).then(|| {
            Box::new(Detail {
                index,
                error_type,
                reason,
            })
        });
        ItemResult { status, detail }
    }

    /// The concrete index that answered, when asked (`FILTER_PATH_WITH_INDEX`): for a
    /// data stream, its write index.
    pub fn index(&self) -> Option<&str> {
        self.detail.as_ref()?.index.as_deref()
    }

    pub fn error_type(&self) -> Option<&str> {
        self.detail.as_ref()?.error_type.as_deref()
    }

    pub fn reason(&self) -> Option<&str> {
        self.detail.as_ref()?.reason.as_deref()
    }
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    items: Items,
}

/// The items, each turned into its result as it is read: no intermediate list. `None`: an
/// item was not an operation's result, so the body is not a bulk response.
struct Items(Option<Vec<ItemResult>>);

impl Default for Items {
    fn default() -> Self {
        Items(Some(Vec::new()))
    }
}

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Items;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of bulk items")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Items, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(Single(item)) = seq.next_element()? {
                    // An item without its operation's object: not a bulk response.
                    let Some(item) = item else {
                        return Ok(Items(None));
                    };
                    let (error_type, reason) = match item.error {
                        Some(e) => (e.kind, e.reason),
                        None => (None, None),
                    };
                    out.push(ItemResult::with_index(
                        item.status,
                        item.index,
                        error_type,
                        reason,
                    ));
                }
                Ok(Items(Some(out)))
            }
        }
        d.deserialize_seq(V)
    }
}

/// `{"<op>": {...}}`: the one entry of an item, read without a map per item (a reply has
/// thousands).
struct Single(Option<RawItem>);

impl<'de> Deserialize<'de> for Single {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Single;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a bulk item: an object with one operation")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Single, A::Error> {
                let first = map.next_entry::<IgnoredAny, RawItem>()?.map(|(_, v)| v);
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Single(first))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct RawItem {
    status: u16,
    #[serde(rename = "_index", default)]
    index: Option<String>,
    #[serde(default)]
    error: Option<RawError>,
}

#[derive(Deserialize)]
struct RawError {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// The per-item results, in request order; `None` if the body is not a bulk response.
pub fn parse(body: &[u8]) -> Option<Vec<ItemResult>> {
    let raw: Raw = serde_json::from_slice(body).ok()?;
    raw.items.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// 409 on `create`: the same id is already indexed.
    Duplicate,
    /// Overload or a node failing: send this item again later.
    Retry,
    /// 401/403: credentials or privileges; retried, loudly.
    Unauthorized,
    /// The document itself was refused (mapping, parsing, missing index…).
    Rejected,
}

pub fn classify(status: u16, error_type: Option<&str>) -> Outcome {
    if matches!(
        error_type,
        Some("es_rejected_execution_exception" | "circuit_breaking_exception")
    ) {
        return Outcome::Retry;
    }
    match status {
        200..=299 => Outcome::Delivered,
        409 => Outcome::Duplicate,
        429 | 500 | 502 | 503 | 504 => Outcome::Retry,
        401 | 403 => Outcome::Unauthorized,
        _ => Outcome::Rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_shape() {
        let body = br#"{"took":30,"errors":true,"items":[
            {"create":{"_index":".ds-x","_id":"a1","status":201,"result":"created"}},
            {"create":{"_index":".ds-x","_id":"a2","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[a2]: version conflict, document already exists (current version [1])"}}},
            {"create":{"_id":"a3","status":400,"error":{"type":"document_parsing_exception","reason":"object mapping for [kubernetes.labels.app] tried to parse field [app] as object, but found a concrete value"}}},
            {"create":{"_id":"a4","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution"}}}
        ]}"#;
        let items = parse(body).unwrap();
        let outcomes: Vec<Outcome> = items
            .iter()
            .map(|i| classify(i.status, i.error_type()))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                Outcome::Delivered,
                Outcome::Duplicate,
                Outcome::Rejected,
                Outcome::Retry
            ]
        );
        assert!(items[2].reason().unwrap().contains("kubernetes.labels.app"));
        assert_eq!(items[0].index(), Some(".ds-x"));
        assert_eq!(items[2].index(), None);
        // An item that went in, with no index asked: no allocation.
        assert_eq!(std::mem::size_of::<ItemResult>(), 16);
        assert!(
            items[0].detail.is_some()
                && parse(br#"{"items":[{"create":{"status":201}}]}"#).unwrap()[0]
                    .detail
                    .is_none()
        );
    }

    #[test]
    fn filtered_and_odd_replies() {
        assert_eq!(
            parse(br#"{"errors":false,"items":[{"create":{"status":201}}]}"#)
                .unwrap()
                .len(),
            1
        );
        assert!(parse(b"<html>").is_none());
        assert!(parse(br#"{"items":[{}]}"#).is_none());
        assert_eq!(classify(503, None), Outcome::Retry);
        assert_eq!(
            classify(500, Some("circuit_breaking_exception")),
            Outcome::Retry
        );
        assert_eq!(
            classify(403, Some("security_exception")),
            Outcome::Unauthorized
        );
        assert_eq!(
            classify(404, Some("index_not_found_exception")),
            Outcome::Rejected
        );
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&data);
        }
    }
}
