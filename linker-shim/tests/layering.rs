//! The shim's modules form a pipeline, and data flows one way: a stage may use earlier stages and
//! shared leaf modules, never a later stage or the driver. This test reads the `crate::…` paths of
//! every source file (no build) and fails on an import that goes backwards.
//!
//! Back edges that exist today are listed in [`KNOWN_BACK_EDGES`] with what untangles them; the
//! test also fails when one of them disappears, so the list only ever shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Leaves: used by every stage, using no stage (`index` is the link index format only; building
/// one is the driver's `hotpatch::link_index`).
const LEAVES: &[&str] = &["error", "index", "marks", "objects", "status", "store", "timing"];

/// Stages in pipeline order, then the driver and the entry points.
const ORDER: &[&str] =
    &["capture", "map", "diff", "layout", "plan", "emit", "deliver", "hotpatch", "link", "cli"];

/// `(from, to)` imports that go backwards today, each with what removes it.
const KNOWN_BACK_EDGES: &[(&str, &str, &str)] = &[];

fn module_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// The `crate::<module>` paths of the code (comments, doc links included, are not imports).
fn imports(text: &str) -> BTreeSet<String> {
    let code: String =
        text.lines().map(|l| l.split_once("//").map_or(l, |(code, _)| code)).collect::<Vec<_>>().join("\n");
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn stages_import_only_earlier_stages_and_leaves() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rank = |m: &str| ORDER.iter().position(|o| *o == m);
    let mut back = BTreeSet::new();
    let mut unknown = BTreeSet::new();
    for file in &files {
        let from = module_of(file, &src);
        if from == "lib" || from == "main" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for to in imports(&text) {
            if to == from || matches!(to.as_str(), "bail" | "err") {
                continue; // the module itself; the error macros
            }
            if LEAVES.contains(&to.as_str()) {
                continue;
            }
            if LEAVES.contains(&from.as_str()) {
                back.insert((from.clone(), to.clone()));
                continue;
            }
            match (rank(&from), rank(&to)) {
                (Some(a), Some(b)) if b > a => {
                    back.insert((from.clone(), to.clone()));
                }
                (Some(_), Some(_)) => {}
                _ => {
                    unknown.insert(format!("{} uses crate::{to}", file.display()));
                }
            }
        }
    }
    assert!(unknown.is_empty(), "modules missing from LEAVES or ORDER: {unknown:#?}");
    let known: BTreeSet<(String, String)> =
        KNOWN_BACK_EDGES.iter().map(|(a, b, _)| (a.to_string(), b.to_string())).collect();
    let new: Vec<_> = back.difference(&known).collect();
    assert!(new.is_empty(), "imports against the pipeline's direction (a stage using a later one): {new:?}");
    let gone: Vec<_> = known.difference(&back).collect();
    assert!(gone.is_empty(), "these back edges are gone: remove them from KNOWN_BACK_EDGES: {gone:?}");
}

/// The runtime's module graph (`patch-runtime/src`, test modules left out): an edge per
/// `crate::<module>` path between top-level modules, and per `super::<sibling>` path between the
/// files of one folder (`detour/hazard` → `detour/threads`). Paths in braces count each name.
fn runtime_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../patch-runtime/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let node = |file: &Path| -> String {
        let rel = file.strip_prefix(&src).unwrap().with_extension("");
        let rel = rel.to_string_lossy().into_owned();
        rel.strip_suffix("/mod").unwrap_or(&rel).to_string()
    };
    let nodes: BTreeSet<String> = files.iter().map(|f| node(f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = node(file);
        let text = std::fs::read_to_string(file).unwrap();
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let top = from.split('/').next().unwrap().to_string();
        // `super::` of `a/b.rs` is folder `a`; of `a/mod.rs` or `a.rs`, the crate root.
        let folder = if file.ends_with("mod.rs") || !from.contains('/') {
            None
        } else {
            from.rsplit_once('/').map(|(f, _)| f.to_string())
        };
        for (prefix, names) in paths(text) {
            for name in names {
                let to = match (prefix, &folder) {
                    ("crate", _) => name,
                    ("super", Some(folder)) => format!("{folder}/{name}"),
                    _ => continue, // `super::` of a top-level module is the crate root
                };
                if nodes.contains(&to) && to != from && to != top {
                    let from = if prefix == "crate" { top.clone() } else { from.clone() };
                    graph.entry(from).or_default().insert(to);
                }
            }
        }
    }
    graph
}

/// `(prefix, names)` for every `crate::…`/`super::…` path of the code (comments left out):
/// `crate::a::b` → `("crate", ["a"])`, `super::{a, b::c}` → `("super", ["a", "b"])`.
fn paths(text: &str) -> Vec<(&'static str, Vec<String>)> {
    let code: String =
        text.lines().map(|l| l.split_once("//").map_or(l, |(code, _)| code)).collect::<Vec<_>>().join("\n");
    let ident = |s: &str| -> String {
        s.trim().chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect()
    };
    let mut out = Vec::new();
    for prefix in ["crate", "super"] {
        let pat = format!("{prefix}::");
        for (i, _) in code.match_indices(&pat) {
            if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // `super::super::`, or part of a longer path
            }
            let rest = &code[i + pat.len()..];
            let names = match rest.strip_prefix('{') {
                Some(group) => group.split('}').next().unwrap().split(',').map(ident).collect(),
                None => vec![ident(rest)],
            };
            out.push((prefix, names.into_iter().filter(|n: &String| !n.is_empty()).collect()));
        }
    }
    out
}

/// A cycle of `graph`, if it has one (depth-first search).
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut found = path[at..].to_vec();
            found.push(n.to_string());
            return Some(found);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for to in graph.get(n).into_iter().flatten() {
            if let Some(found) = visit(to, graph, done, path) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
}

#[test]
fn runtime_modules_import_without_cycles() {
    let graph = runtime_graph();
    // The steps, each importing only later ones: start → receive → apply/restart → install.
    for (from, to) in
        [("runtime", "listener"), ("listener", "apply"), ("listener", "restart"), ("apply", "install")]
    {
        assert!(
            graph[from].contains(to),
            "{from} no longer imports {to}: is the graph read right? {graph:#?}"
        );
    }
    assert!(graph["detour/signal"].contains("detour/threads"), "sibling paths unread: {graph:#?}");
    if let Some(c) = cycle(&graph) {
        panic!("an import cycle among the runtime's modules: {}", c.join(" → "));
    }
}

#[test]
fn a_runtime_cycle_is_found() {
    let mut graph = runtime_graph();
    graph.entry("install".into()).or_default().insert("listener".into());
    assert!(cycle(&graph).is_some());
}
