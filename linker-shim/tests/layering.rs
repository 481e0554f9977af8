//! The shim's modules form a pipeline, and data flows one way: a stage may use earlier stages and
//! shared leaf modules, never a later stage or the driver. This test reads the `crate::…` paths of
//! every source file (no build) and fails on an import that goes backwards.
//!
//! Back edges that exist today are listed in [`KNOWN_BACK_EDGES`] with what untangles them; the
//! test also fails when one of them disappears, so the list only ever shrinks.

use std::collections::BTreeSet;
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
