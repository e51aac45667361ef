//! `[retention]`: how long lines are kept, by namespace. Every distinct retention is a
//! class with a data stream and a lifecycle of its own; the rules and a pod's or
//! namespace's annotation `logferry.io/retention` pick a line's class.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A retention in whole days, written `"30d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Days(pub u32);

/// A century: past it a retention is a typo, not a policy.
pub const MAX_DAYS: u32 = 36_500;

impl FromStr for Days {
    type Err = String;

    fn from_str(s: &str) -> Result<Days, String> {
        let bad = || format!("{s:?} is not a number of days like \"30d\"");
        let n: u32 = s
            .trim()
            .strip_suffix('d')
            .ok_or_else(bad)?
            .parse()
            .map_err(|_| bad())?;
        if n == 0 || n > MAX_DAYS {
            return Err(format!("{s:?} must be from 1d to {MAX_DAYS}d"));
        }
        Ok(Days(n))
    }
}

impl fmt::Display for Days {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}d", self.0)
    }
}

impl Serialize for Days {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Days {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Days, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// The class of lines no rule or annotation places; unset:
    /// `output.elasticsearch.retention_days`. Its lines go to the plain
    /// `logs-<dataset>-<namespace>` streams.
    pub default: Option<Days>,
    /// Further classes an annotation may pick (the default and the rules' are classes
    /// already). An annotation between two classes gets the longer one.
    pub classes: Vec<Days>,
    /// The shortest and longest retention an annotation may ask for; unset: the shortest
    /// and the longest class.
    pub min: Option<Days>,
    pub max: Option<Days>,
    /// Honour `logferry.io/retention` on pods and namespaces (the pod's wins).
    pub annotations: bool,
    /// The first rule that matches a line's namespace decides.
    pub rules: Vec<RetentionRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// Namespace names or globs (`ci-*`); empty: any namespace.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Label selectors the namespace must all match (`team=payments`, `audit`,
    /// `tier!=dev`); empty: any labels.
    #[serde(default)]
    pub namespace_labels: Vec<String>,
    pub retention: Days,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            default: None,
            classes: Vec::new(),
            min: None,
            max: None,
            annotations: true,
            rules: Vec::new(),
        }
    }
}

impl RetentionConfig {
    /// `fallback`: `output.elasticsearch.retention_days`.
    pub fn default_class(&self, fallback: u32) -> Days {
        self.default.unwrap_or(Days(fallback))
    }

    /// Every class, shortest first, without repeats.
    pub fn classes(&self, fallback: u32) -> Vec<Days> {
        let mut v: Vec<Days> = std::iter::once(self.default_class(fallback))
            .chain(self.classes.iter().copied())
            .chain(self.rules.iter().map(|r| r.retention))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether a line's class may depend on its namespace's labels or annotations (with
    /// one class there is nothing to choose).
    pub fn reads_namespaces(&self, fallback: u32) -> bool {
        self.classes(fallback).len() > 1
            && (self.annotations || self.rules.iter().any(|r| !r.namespace_labels.is_empty()))
    }

    /// The bounds an annotation must keep within.
    pub fn bounds(&self, fallback: u32) -> (Days, Days) {
        let classes = self.classes(fallback);
        (
            self.min.unwrap_or(classes[0]),
            self.max.unwrap_or(classes[classes.len() - 1]),
        )
    }

    pub fn validate(&self, fallback: u32) -> Result<(), (String, String)> {
        for (i, r) in self.rules.iter().enumerate() {
            let key = |k: &str| format!("retention.rules[{i}].{k}");
            if r.namespaces.is_empty() && r.namespace_labels.is_empty() {
                return Err((
                    format!("retention.rules[{i}]"),
                    "needs `namespaces` or `namespace_labels` (a rule for every line is `retention.default`)".into(),
                ));
            }
            for (j, g) in r.namespaces.iter().enumerate() {
                globset::Glob::new(g).map_err(|e| {
                    (
                        key(&format!("namespaces[{j}]")),
                        format!("bad glob {g:?}: {e}"),
                    )
                })?;
            }
            for (j, sel) in r.namespace_labels.iter().enumerate() {
                if crate::enrich::kube::selector::Selector::parse(sel).is_none() {
                    return Err((
                        key(&format!("namespace_labels[{j}]")),
                        format!("{sel:?} is not `key`, `key=value` or `key!=value`"),
                    ));
                }
            }
        }
        let (min, max) = self.bounds(fallback);
        if min > max {
            return Err((
                "retention.min".into(),
                format!("{min} is above retention.max ({max})"),
            ));
        }
        let longest = *self.classes(fallback).last().unwrap_or(&max);
        if max > longest {
            return Err((
                "retention.max".into(),
                format!("{max} is longer than every class (the longest is {longest}): add it to retention.classes"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> RetentionConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn days_parse_and_print() {
        assert_eq!("30d".parse(), Ok(Days(30)));
        assert_eq!(Days(7).to_string(), "7d");
        for bad in ["30", "d", "-3d", "1.5d", "30h", "0d", "40000d"] {
            assert!(bad.parse::<Days>().is_err(), "{bad}");
        }
    }

    #[test]
    fn classes_bounds_and_errors_name_the_key() {
        let c = parse(
            r#"
            classes = ["30d"]
            [[rules]]
            namespaces = ["kube-system", "ci-*"]
            retention = "7d"
            [[rules]]
            namespace_labels = ["compliance=audit"]
            retention = "365d"
            "#,
        );
        assert_eq!(c.classes(90), vec![Days(7), Days(30), Days(90), Days(365)]);
        assert_eq!(c.bounds(90), (Days(7), Days(365)));
        assert!(c.validate(90).is_ok());
        let err = |t: &str| parse(t).validate(90).unwrap_err();
        assert_eq!(err("[[rules]]\nretention = \"7d\"").0, "retention.rules[0]");
        assert_eq!(
            err("[[rules]]\nnamespaces = [\"a[\"]\nretention = \"7d\"").0,
            "retention.rules[0].namespaces[0]"
        );
        assert_eq!(
            err("[[rules]]\nnamespace_labels = [\"a b\"]\nretention = \"7d\"").0,
            "retention.rules[0].namespace_labels[0]"
        );
        assert_eq!(err("max = \"400d\"").0, "retention.max");
        assert_eq!(err("min = \"100d\"\nmax = \"90d\"").0, "retention.min");
        assert!(c.reads_namespaces(90));
        // One class: nothing to choose, namespaces need not be watched.
        assert!(!parse("").reads_namespaces(90));
        assert!(
            !parse("annotations = false\n[[rules]]\nnamespaces = [\"a\"]\nretention = \"7d\"")
                .reads_namespaces(90)
        );
        let e = toml::from_str::<RetentionConfig>("default = \"3 months\"").unwrap_err();
        assert!(e.to_string().contains("not a number of days"), "{e}");
    }
}
