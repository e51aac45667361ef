//! A line's retention class: the pod's `logferry.io/retention` annotation, else its
//! namespace's, when within the bounds; else the first rule that matches the namespace;
//! else the default. An annotation between two classes gets the longer one.

use crate::config::{Days, RetentionConfig};
use crate::enrich::kube::selector::Selector;
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::collections::BTreeMap;

pub const ANNOTATION: &str = "logferry.io/retention";

#[derive(Debug, Clone)]
struct Rule {
    namespaces: Option<GlobSet>,
    labels: Vec<Selector>,
    retention: Days,
}

/// The compiled `[retention]`.
#[derive(Debug, Clone)]
pub struct Retention {
    default: Days,
    /// Every class, shortest first.
    classes: Vec<Days>,
    bounds: (Days, Days),
    annotations: bool,
    rules: Vec<Rule>,
}

/// What is known of a line's namespace and pod.
#[derive(Debug, Default, Clone, Copy)]
pub struct Subject<'a> {
    pub namespace: Option<&'a str>,
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
    pub namespace_annotations: Option<&'a BTreeMap<String, String>>,
    pub pod_annotations: Option<&'a BTreeMap<String, String>>,
}

/// An annotation that could not be followed, for the warning that names the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub value: String,
    pub reason: String,
}

impl Retention {
    /// From a validated config; `fallback`: `output.elasticsearch.retention_days`.
    pub fn new(cfg: &RetentionConfig, fallback: u32) -> Retention {
        let rules = cfg
            .rules
            .iter()
            .map(|r| Rule {
                namespaces: (!r.namespaces.is_empty()).then(|| {
                    let mut b = GlobSetBuilder::new();
                    for g in r.namespaces.iter().filter_map(|g| Glob::new(g).ok()) {
                        b.add(g);
                    }
                    b.build().unwrap_or_else(|_| GlobSet::empty())
                }),
                labels: r
                    .namespace_labels
                    .iter()
                    .filter_map(|s| Selector::parse(s))
                    .collect(),
                retention: r.retention,
            })
            .collect();
        Retention {
            default: cfg.default_class(fallback),
            classes: cfg.classes(fallback),
            bounds: cfg.bounds(fallback),
            annotations: cfg.annotations,
            rules,
        }
    }

    pub fn default_class(&self) -> Days {
        self.default
    }

    /// Every class, shortest first.
    pub fn classes(&self) -> &[Days] {
        &self.classes
    }

    /// The line's class, and the annotation refused on the way if any.
    pub fn class_of(&self, s: Subject<'_>) -> (Days, Option<Refused>) {
        let mut refused = None;
        if self.annotations {
            let asked = [s.pod_annotations, s.namespace_annotations]
                .into_iter()
                .flatten()
                .find_map(|a| a.get(ANNOTATION));
            if let Some(value) = asked {
                match self.annotated(value) {
                    Ok(class) => return (class, None),
                    Err(reason) => {
                        refused = Some(Refused {
                            value: value.clone(),
                            reason,
                        })
                    }
                }
            }
        }
        (self.by_rules(s).unwrap_or(self.default), refused)
    }

    fn annotated(&self, value: &str) -> Result<Days, String> {
        let d: Days = value.parse()?;
        let (min, max) = self.bounds;
        if d < min || d > max {
            return Err(format!("outside the bounds {min} to {max}"));
        }
        // `max` is at most the longest class (checked by the config).
        Ok(self
            .classes
            .iter()
            .copied()
            .find(|c| *c >= d)
            .unwrap_or(max))
    }

    fn by_rules(&self, s: Subject<'_>) -> Option<Days> {
        let empty = BTreeMap::new();
        let labels = s.namespace_labels.unwrap_or(&empty);
        self.rules
            .iter()
            .find(|r| {
                let named = r
                    .namespaces
                    .as_ref()
                    .is_none_or(|g| s.namespace.is_some_and(|ns| g.is_match(ns)));
                named && r.labels.iter().all(|l| l.matches(labels))
            })
            .map(|r| r.retention)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retention() -> Retention {
        let cfg: RetentionConfig = toml::from_str(
            r#"
            classes = ["30d"]
            max = "365d"
            [[rules]]
            namespaces = ["kube-system", "ci-*"]
            retention = "7d"
            [[rules]]
            namespace_labels = ["compliance=audit"]
            retention = "365d"
            "#,
        )
        .unwrap();
        cfg.validate(90).unwrap();
        Retention::new(&cfg, 90)
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn rules_then_default() {
        let r = retention();
        let class = |ns: &str, labels: &BTreeMap<String, String>| {
            r.class_of(Subject {
                namespace: Some(ns),
                namespace_labels: Some(labels),
                ..Default::default()
            })
        };
        let none = BTreeMap::new();
        assert_eq!(class("kube-system", &none), (Days(7), None));
        assert_eq!(class("ci-1234", &none), (Days(7), None));
        assert_eq!(class("payments", &none), (Days(90), None));
        let audit = map(&[("compliance", "audit")]);
        assert_eq!(class("payments", &audit), (Days(365), None));
        // The first rule that matches decides.
        assert_eq!(class("ci-9", &audit), (Days(7), None));
        assert_eq!(r.class_of(Subject::default()), (Days(90), None));
        assert_eq!(r.classes(), [Days(7), Days(30), Days(90), Days(365)]);
    }

    #[test]
    fn annotations_within_bounds_pick_the_next_class_up() {
        let r = retention();
        let class = |pod: Option<&str>, ns: Option<&str>| {
            let pod = pod.map(|v| map(&[(ANNOTATION, v)]));
            let ns = ns.map(|v| map(&[(ANNOTATION, v)]));
            r.class_of(Subject {
                namespace: Some("kube-system"),
                pod_annotations: pod.as_ref(),
                namespace_annotations: ns.as_ref(),
                ..Default::default()
            })
        };
        assert_eq!(class(Some("30d"), None), (Days(30), None));
        assert_eq!(class(Some("45d"), None), (Days(90), None));
        assert_eq!(class(None, Some("365d")), (Days(365), None));
        // The pod's wins over its namespace's.
        assert_eq!(class(Some("30d"), Some("365d")), (Days(30), None));
        // Refused: the rules decide, and the refusal is told.
        let (c, refused) = class(Some("3650d"), None);
        assert_eq!(c, Days(7));
        assert!(refused.unwrap().reason.contains("7d to 365d"));
        let (c, refused) = class(Some("forever"), None);
        assert_eq!(c, Days(7));
        assert_eq!(refused.unwrap().value, "forever");
        let (c, refused) = class(Some("1d"), None);
        assert_eq!((c, refused.is_some()), (Days(7), true));
    }

    #[test]
    fn annotations_can_be_ignored() {
        let cfg = RetentionConfig {
            annotations: false,
            ..Default::default()
        };
        let r = Retention::new(&cfg, 90);
        let pod = map(&[(ANNOTATION, "7d")]);
        assert_eq!(
            r.class_of(Subject {
                pod_annotations: Some(&pod),
                ..Default::default()
            }),
            (Days(90), None)
        );
    }
}
