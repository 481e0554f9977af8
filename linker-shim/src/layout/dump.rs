//! Unit models as text, to check that a change to how models are read or kept leaves them as
//! they were: every unit's model printed in one order (types by name, the lists in the order
//! the model keeps them), so two versions of the code are compared by comparing their files.
//!
//! ```text
//! # with the code before the change: write the models of every object under the directories
//! IPBP_MODELS_OF=scripts/out/bench/web/target:scripts/out/bench/webscaled/target \
//!   IPBP_MODELS_WRITE=/tmp/models-before cargo test --release -p ipbp-ld --lib -- --ignored unit_models
//! # with the code after: compare (the test fails naming the first unit whose model differs)
//! IPBP_MODELS_OF=… IPBP_MODELS_SAME_AS=/tmp/models-before cargo test --release -p ipbp-ld --lib -- --ignored unit_models
//! ```
//!
//! Objects are `.o` files and the members of `.rlib` archives (a dependency's units: tokio's,
//! axum's, …), as the guard reads them.

use super::model::Model;
use std::fmt::Write as _;

/// The model as text: types sorted by name, then statics, functions, variant types (sorted),
/// vtables and closures.
pub fn text(m: &Model) -> String {
    let mut out = String::new();
    let mut types: Vec<_> = m.types.iter().collect();
    types.sort_by(|a, b| a.0.cmp(b.0));
    for (name, t) in types {
        let _ = writeln!(out, "T {name} {t:?}");
    }
    for s in &m.statics {
        let _ = writeln!(out, "S {s:?}");
    }
    for f in &m.functions {
        let _ = writeln!(out, "F {f:?}");
    }
    let mut variants: Vec<_> = m.variant_types.iter().collect();
    variants.sort();
    for v in variants {
        let _ = writeln!(out, "V {v}");
    }
    for v in &m.vtables {
        let _ = writeln!(out, "D {v:?}");
    }
    for c in &m.closures {
        let _ = writeln!(out, "C {c:?}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn objects(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() && !path.is_symlink() {
                objects(&path, out);
            } else if path.extension().is_some_and(|x| x == "o" || x == "rlib") {
                out.push(path);
            }
        }
    }

    /// Each unit's model of `path`, by a name unique among the objects read: (name, text).
    fn models(path: &Path, out: &mut Vec<(String, String)>) {
        let Ok(data) = std::fs::read(path) else { return };
        let name = path.display().to_string().replace('/', "%");
        let mut one = |member: &str, bytes: &[u8]| {
            let mut m = Model::default();
            // Not an ELF object, or no debug info: nothing to compare.
            let described = super::super::dwarf::read(bytes, &mut m).ok();
            out.push((format!("{name}%{member}"), format!("described {described:?}\n{}", text(&m))));
        };
        if path.extension().is_some_and(|x| x == "rlib") {
            let Ok(archive) = object::read::archive::ArchiveFile::parse(&*data) else { return };
            for member in archive.members().flatten() {
                let member_name = String::from_utf8_lossy(member.name()).to_string();
                if member_name.ends_with(".o") {
                    if let Ok(bytes) = member.data(&*data) {
                        one(&member_name, bytes);
                    }
                }
            }
        } else {
            one("", &data);
        }
    }

    /// See the module's doc: writes or compares the unit models of every object under
    /// `IPBP_MODELS_OF` (directories and objects, `:`-separated).
    #[test]
    #[ignore = "a check run by hand across two versions of the code (see the module's doc)"]
    fn unit_models_as_before() {
        let dirs = std::env::var("IPBP_MODELS_OF").expect("IPBP_MODELS_OF: directories of objects");
        let mut files = Vec::new();
        for d in dirs.split(':').map(Path::new) {
            match d.is_file() {
                true => files.push(d.to_path_buf()),
                false => objects(d, &mut files),
            }
        }
        files.sort();
        let mut all = Vec::new();
        for f in &files {
            models(f, &mut all);
        }
        assert!(!all.is_empty(), "no objects under {dirs}");
        if let Ok(to) = std::env::var("IPBP_MODELS_WRITE") {
            std::fs::create_dir_all(&to).unwrap();
            for (name, text) in &all {
                std::fs::write(Path::new(&to).join(name), text).unwrap();
            }
            eprintln!("{} unit models written to {to}", all.len());
        }
        if let Ok(reference) = std::env::var("IPBP_MODELS_SAME_AS") {
            let mut different = Vec::new();
            for (name, text) in &all {
                let before = std::fs::read_to_string(Path::new(&reference).join(name))
                    .unwrap_or_else(|_| panic!("{reference} has no model of {name}"));
                if &before != text {
                    different.push(name.clone());
                }
            }
            assert!(
                different.is_empty(),
                "{} of {} unit models differ, first {}",
                different.len(),
                all.len(),
                different[0]
            );
            eprintln!("{} unit models as in {reference}", all.len());
        }
    }
}
