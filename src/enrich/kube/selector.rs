//! Equality-based label selectors, as `kubectl -l` takes them: `key`, `key=value`, `key!=value`.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Exists(String),
    Equals(String, String),
    NotEquals(String, String),
}

impl Selector {
    pub fn parse(s: &str) -> Option<Selector> {
        let s = s.trim();
        let valid = |k: &str| !k.is_empty() && !k.contains([' ', '=', '!', ',']);
        if let Some((k, v)) = s.split_once("!=") {
            return valid(k.trim()).then(|| Selector::NotEquals(k.trim().into(), v.trim().into()));
        }
        if let Some((k, v)) = s.split_once("==").or_else(|| s.split_once('=')) {
            return valid(k.trim()).then(|| Selector::Equals(k.trim().into(), v.trim().into()));
        }
        valid(s).then(|| Selector::Exists(s.into()))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Selector::Exists(k) => labels.contains_key(k),
            Selector::Equals(k, v) => labels.get(k) == Some(v),
            Selector::NotEquals(k, v) => labels.get(k) != Some(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        assert!(Selector::parse("app").unwrap().matches(&labels));
        assert!(Selector::parse("app=web").unwrap().matches(&labels));
        assert!(Selector::parse("app == web").unwrap().matches(&labels));
        assert!(!Selector::parse("app!=web").unwrap().matches(&labels));
        assert!(Selector::parse("tier!=db").unwrap().matches(&labels));
        assert!(!Selector::parse("tier").unwrap().matches(&labels));
        assert!(Selector::parse("").is_none());
        assert!(Selector::parse("=x").is_none());
    }
}
