//! The workspace crates the running program is built from, as cargo last compiled them: one
//! recorded rustc command each ([`Record`]), their order (a crate after the crates it uses), and
//! the source files each one read. From these, [`Units::plan`] decides what a save needs: the
//! edited crates and every workspace crate that depends on them, by rustc directly — or cargo,
//! with the reason.

use super::record::Record;
use super::workspace::{dep_info_sources, Workspace};
use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub struct Units {
    pub records: HashMap<String, Record>,
    /// Workspace crates in build order (dependencies first), by stem.
    pub order: Vec<String>,
    /// Each source file, and the crates that read it.
    pub sources: HashMap<PathBuf, Vec<String>>,
    /// Why the direct path cannot be used at all (a crate without a recorded command).
    pub unusable: Option<String>,
    /// Workspace crates the program uses that cargo compiled before any watch session (no
    /// recorded command): their files are known from their dep-info; an edit goes to cargo once.
    pub unrecorded: BTreeSet<String>,
}

impl Units {
    /// The units of executable `exe` (cargo's copy of it: found by inode among the records).
    pub fn load(ws: &Workspace, exe: &Path) -> Units {
        let records = Record::load_all(&ws.record_dir());
        let mut units = Units {
            records,
            order: Vec::new(),
            sources: HashMap::new(),
            unusable: None,
            unrecorded: BTreeSet::new(),
        };
        let Some(root) = units.root_of(exe) else {
            units.unusable = Some(format!("no recorded rustc command for {}", exe.display()));
            return units;
        };
        let mut seen = BTreeSet::new();
        units.visit(ws, &root, &mut seen);
        for stem in &units.order {
            let rec = &units.records[stem];
            let Some(files) = rec.dep_info().and_then(|d| dep_info_sources(&d, &rec.cwd)) else {
                units.unusable.get_or_insert(format!("no dep-info for {stem}"));
                continue;
            };
            for file in files {
                units.sources.entry(file).or_default().push(stem.clone());
            }
        }
        units
    }

    /// Whether the program links the `ipbp` runtime (without it, nothing can be patched).
    pub fn links_runtime(&self) -> bool {
        self.order
            .last()
            .is_some_and(|root| self.records[root].extern_stems().iter().any(|s| s.starts_with("ipbp-")))
    }

    fn root_of(&self, exe: &Path) -> Option<String> {
        let meta = std::fs::metadata(exe).ok()?;
        self.records
            .iter()
            .filter(|(_, r)| r.crate_types().contains(&"bin") && !r.is_test())
            .find(|(_, r)| {
                r.main_output()
                    .and_then(|o| std::fs::metadata(o).ok())
                    .is_some_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev())
            })
            .map(|(stem, _)| stem.clone())
    }

    /// Depth-first, dependencies before dependents; workspace crates only.
    fn visit(&mut self, ws: &Workspace, stem: &str, seen: &mut BTreeSet<String>) {
        if !seen.insert(stem.to_string()) {
            return;
        }
        let Some(rec) = self.records.get(stem) else { return };
        let out_dir = rec.out_dir();
        for dep in rec.extern_stems() {
            match self.records.get(&dep) {
                Some(d)
                    if d.env_var("CARGO_MANIFEST_DIR").is_some_and(|m| ws.is_member_dir(Path::new(m))) =>
                {
                    self.visit(ws, &dep, seen)
                }
                Some(_) => {}
                None => {
                    let krate = dep.rsplit_once('-').map_or(dep.as_str(), |(c, _)| c);
                    let dep_info = out_dir.as_ref().map(|d| d.join(format!("{dep}.d")));
                    if let (true, Some(files)) = (
                        ws.member_libs.contains(krate),
                        dep_info.and_then(|d| dep_info_sources(&d, &ws.root)),
                    ) {
                        for file in files {
                            self.sources.entry(file).or_default().push(dep.clone());
                        }
                        self.unrecorded.insert(dep);
                    }
                }
            }
        }
        self.order.push(stem.to_string());
    }

    /// The crates to build for `changed` files (plus `pending`, crates a failed build left
    /// behind), in order; `Err` names why cargo must build instead.
    pub fn plan(
        &self,
        changed: &BTreeSet<PathBuf>,
        pending: &BTreeSet<String>,
    ) -> Result<Vec<String>, String> {
        if let Some(why) = &self.unusable {
            return Err(why.clone());
        }
        let mut edited: BTreeSet<&str> = pending.iter().map(String::as_str).collect();
        for path in changed {
            let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
            if name == "Cargo.toml" {
                return Err(format!("{name} changed"));
            }
            let Some(stems) = self.sources.get(path) else {
                return Err(format!("{} is not a file the program's crates were built from", path.display()));
            };
            if !path.exists() {
                return Err(format!("{} was removed", path.display()));
            }
            for stem in stems {
                if self.unrecorded.contains(stem) {
                    return Err(format!("{stem} was compiled before watch recorded cargo's commands"));
                }
                let rec = &self.records[stem];
                if let Some(why) = needs_cargo(rec, path) {
                    return Err(why);
                }
                edited.insert(stem);
            }
        }
        // An edited crate and, transitively, every crate that uses it.
        let mut out: Vec<String> = Vec::new();
        for stem in &self.order {
            let uses_rebuilt = self.records[stem].extern_stems().iter().any(|d| out.contains(d));
            if edited.contains(stem.as_str()) || uses_rebuilt {
                out.push(stem.clone());
            }
        }
        Ok(out)
    }
}

/// Why an edit of `path`, read by the crate `rec` builds, needs cargo: a proc-macro (cargo
/// rebuilds its users' expansion) or a build script that reruns on it.
fn needs_cargo(rec: &Record, path: &Path) -> Option<String> {
    let name = rec.crate_name().unwrap_or("?");
    if rec.crate_types().contains(&"proc-macro") || name.starts_with("build_script_") {
        return Some(format!(
            "{name} is a {}",
            if name.starts_with("build_script_") { "build script" } else { "proc-macro" }
        ));
    }
    let out_dir = rec.env_var("OUT_DIR")?;
    let pkg = rec.env_var("CARGO_MANIFEST_DIR").unwrap_or(".");
    let output = std::fs::read_to_string(Path::new(out_dir).with_file_name("output")).unwrap_or_default();
    let inputs: Vec<&str> = output
        .lines()
        .filter_map(|l| {
            l.strip_prefix("cargo:rerun-if-changed=").or_else(|| l.strip_prefix("cargo::rerun-if-changed="))
        })
        .collect();
    if inputs.is_empty() {
        return Some(format!("the build script of {name} reruns on every change to its package"));
    }
    inputs
        .iter()
        .any(|i| path.starts_with(Path::new(pkg).join(i)))
        .then(|| format!("{} is an input of {name}'s build script", path.display()))
}

/// The build-script inputs (`rerun-if-changed`) of the crates, to watch as well.
pub fn build_script_inputs(units: &Units) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for rec in units.order.iter().map(|s| &units.records[s]) {
        let (Some(out_dir), Some(pkg)) = (rec.env_var("OUT_DIR"), rec.env_var("CARGO_MANIFEST_DIR")) else {
            continue;
        };
        let output = std::fs::read_to_string(Path::new(out_dir).with_file_name("output")).unwrap_or_default();
        for line in output.lines() {
            if let Some(i) = line
                .strip_prefix("cargo:rerun-if-changed=")
                .or_else(|| line.strip_prefix("cargo::rerun-if-changed="))
            {
                out.push(Path::new(pkg).join(i));
            }
        }
    }
    out
}
