//! The shape of the code: the library's modules import each other without a circle.
//! `cargo test --test structure` builds the module graph from the source's `use` paths and
//! paths written in place (`crate::`, `super::`, `self::`, a child module's name), with
//! re-exports followed to the module that defines the item, and fails on a cycle, naming
//! it. A parent reaching into its own children is not counted: it owns them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

struct Graph {
    /// Each module's source, tests cut off.
    sources: BTreeMap<Module, String>,
    /// `(module, name)` re-exported there → the path it stands for, written from `module`.
    aliases: BTreeMap<(Module, String), Module>,
}

impl Graph {
    fn from_dir(src: &Path) -> Graph {
        let mut sources = BTreeMap::new();
        collect(src, src, &mut sources);
        Graph::new(sources)
    }

    fn new(sources: BTreeMap<Module, String>) -> Graph {
        let mut g = Graph {
            sources,
            aliases: BTreeMap::new(),
        };
        let mut aliases = BTreeMap::new();
        for (m, text) in &g.sources {
            for stmt in use_statements(text, true) {
                for path in expand(&stmt) {
                    if let Some(name) = path.last().filter(|n| *n != "*" && *n != "self") {
                        aliases.insert((m.clone(), name.clone()), path.clone());
                    }
                }
            }
        }
        g.aliases = aliases;
        g
    }

    fn is_module(&self, m: &[String]) -> bool {
        self.sources.contains_key(m)
    }

    /// The module a path written in `from` leads to: the deepest module it names, or the
    /// module a re-export there stands for.
    fn resolve(&self, from: &Module, path: &[String], depth: usize) -> Option<Module> {
        let (mut at, rest): (Module, &[String]) = match path.first().map(String::as_str) {
            Some("crate") => (vec![], &path[1..]),
            Some("self") => (from.clone(), &path[1..]),
            Some("super") => {
                let mut at = from.clone();
                let mut rest = path;
                while rest.first().map(String::as_str) == Some("super") {
                    at.pop()?;
                    rest = &rest[1..];
                }
                (at, rest)
            }
            Some(first) => {
                let mut child = from.clone();
                child.push(first.to_string());
                if !self.is_module(&child) {
                    return None;
                }
                (from.clone(), path)
            }
            None => return None,
        };
        for seg in rest {
            let mut next = at.clone();
            next.push(seg.clone());
            if self.is_module(&next) {
                at = next;
                continue;
            }
            if depth < 4 {
                if let Some(target) = self.aliases.get(&(at.clone(), seg.clone())) {
                    if let Some(m) = self.resolve(&at, target, depth + 1) {
                        return Some(m);
                    }
                }
            }
            break;
        }
        Some(at)
    }

    fn edges(&self) -> BTreeMap<Module, BTreeSet<Module>> {
        let inline =
            regex::Regex::new(r"\b(?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+").unwrap();
        let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
        for (m, text) in &self.sources {
            let mut paths: Vec<Module> = use_statements(text, false)
                .iter()
                .flat_map(|s| expand(s))
                .collect();
            let code = without_use_statements(text);
            paths.extend(
                inline
                    .find_iter(&code)
                    .map(|p| p.as_str().split("::").map(String::from).collect()),
            );
            let out = edges.entry(m.clone()).or_default();
            for p in paths {
                if let Some(t) = self.resolve(m, &p, 0) {
                    if !t.is_empty() && !t.starts_with(m) {
                        out.insert(t);
                    }
                }
            }
        }
        edges
    }

    /// Every set of modules that reach each other (Tarjan), largest first.
    fn cycles(&self) -> Vec<Vec<Module>> {
        let edges = self.edges();
        let nodes: Vec<&Module> = self.sources.keys().collect();
        let id = |m: &Module| nodes.iter().position(|n| *n == m).unwrap();
        let adj: Vec<Vec<usize>> = nodes
            .iter()
            .map(|m| edges[*m].iter().map(id).collect())
            .collect();
        let mut t = Tarjan {
            adj: &adj,
            index: vec![None; nodes.len()],
            low: vec![0; nodes.len()],
            stack: vec![],
            on_stack: vec![false; nodes.len()],
            next: 0,
            found: vec![],
        };
        for v in 0..nodes.len() {
            if t.index[v].is_none() {
                t.visit(v);
            }
        }
        let mut out: Vec<Vec<Module>> = t
            .found
            .into_iter()
            .map(|c| c.into_iter().map(|i| nodes[i].clone()).collect())
            .collect();
        out.sort_by_key(|c: &Vec<Module>| std::cmp::Reverse(c.len()));
        out
    }
}

struct Tarjan<'a> {
    adj: &'a [Vec<usize>],
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    stack: Vec<usize>,
    on_stack: Vec<bool>,
    next: usize,
    found: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    fn visit(&mut self, v: usize) {
        self.index[v] = Some(self.next);
        self.low[v] = self.next;
        self.next += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
        for &w in &self.adj[v] {
            match self.index[w] {
                None => {
                    self.visit(w);
                    self.low[v] = self.low[v].min(self.low[w]);
                }
                Some(i) if self.on_stack[w] => self.low[v] = self.low[v].min(i),
                Some(_) => {}
            }
        }
        if Some(self.low[v]) == self.index[v] {
            let mut comp = vec![];
            loop {
                let w = self.stack.pop().unwrap();
                self.on_stack[w] = false;
                comp.push(w);
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                self.found.push(comp);
            }
        }
    }
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<Module, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, out);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let rel = path.strip_prefix(root).unwrap().with_extension("");
        let mut module: Module = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        match module.last().map(String::as_str) {
            // The binary is a crate of its own.
            Some("main") if module.len() == 1 => continue,
            Some("lib") if module.len() == 1 => module.clear(),
            Some("mod") => {
                module.pop();
            }
            _ => {}
        }
        out.insert(module, code_of(&std::fs::read_to_string(&path).unwrap()));
    }
}

/// The source without comments and without its test modules.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod "))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line.split(" // ").next().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The trees of `use` statements (`pub` ones only when `public`).
fn use_statements(code: &str, public: bool) -> Vec<String> {
    let re = regex::Regex::new(r"(?m)^\s*(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);").unwrap();
    re.captures_iter(code)
        .filter(|c| !public || c.get(1).is_some())
        .map(|c| c[2].split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn without_use_statements(code: &str) -> String {
    regex::Regex::new(r"(?m)^\s*(pub(?:\([^)]*\))?\s+)?use\s+[^;]+;")
        .unwrap()
        .replace_all(code, "")
        .into_owned()
}

/// `a::{b, c::{d, e as f}}` → `a::b`, `a::c::d`, `a::c::e` (the names as imported are
/// not needed: every path is resolved from its start).
fn expand(tree: &str) -> Vec<Module> {
    let tree = tree.trim().trim_start_matches("::");
    let (prefix, group) = match tree.find('{') {
        Some(i) if tree.ends_with('}') => (&tree[..i], Some(&tree[i + 1..tree.len() - 1])),
        _ => (tree, None),
    };
    let prefix: Module = prefix
        .split("::")
        .map(|s| s.split(" as ").next().unwrap().trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let Some(group) = group else {
        return vec![prefix];
    };
    let mut out = vec![];
    for item in split_top_level(group) {
        for mut rest in expand(item) {
            if rest == ["self"] {
                rest.clear();
            }
            let mut p = prefix.clone();
            p.extend(rest);
            out.push(p);
        }
    }
    out
}

fn split_top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, vec![]);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

#[test]
fn the_library_has_no_import_circle() {
    let g = Graph::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(g.sources.len() > 50, "the tree was read");
    let cycles = g.cycles();
    let shown: Vec<String> = cycles
        .iter()
        .map(|c| c.iter().map(name).collect::<Vec<_>>().join(" ↔ "))
        .collect();
    assert!(cycles.is_empty(), "import circles: {shown:#?}");
}

#[test]
fn the_check_finds_a_circle_through_a_reexport_and_ignores_a_parent_using_its_child() {
    let m = |s: &str| -> Module { s.split("::").map(String::from).collect() };
    let sources: BTreeMap<Module, String> = [
        (vec![], "pub mod a;\npub mod b;\n"),
        (
            m("a"),
            "mod inner;\npub use inner::Thing;\nuse inner::helper;\n",
        ),
        (
            m("a::inner"),
            "use super::super::b::Other;\npub struct Thing;\n",
        ),
        (
            m("b"),
            "pub struct Other;\nfn f() -> crate::a::Thing { todo!() }\n",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k, code_of(v)))
    .collect();
    let g = Graph::new(sources);
    let edges = g.edges();
    assert!(edges[&m("b")].contains(&m("a::inner")), "{edges:?}");
    assert!(
        edges[&m("a")].is_empty(),
        "a parent using its child: {edges:?}"
    );
    let cycles = g.cycles();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    let mut found = cycles[0].clone();
    found.sort();
    assert_eq!(found, vec![m("a::inner"), m("b")]);
}
