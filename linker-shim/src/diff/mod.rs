//! Stage 3 — diff: which functions and statics of the workspace differ between the build a
//! process is running (its *base*) and the build being linked now.
//!
//! Units whose bytes are identical in both builds are skipped without parsing (in an incremental
//! build that is every codegen unit but the edited ones). In the others, every named definition is
//! compared by [`semantic::Semantics::section_hash`]. Diffs are always against the base, so the
//! tenth patch of a process reflects every edit since it started, and code edited back to its
//! original text compares equal again.

pub mod semantic;
pub mod units;

use crate::error::Result;
use crate::objects::{Object, SectionKind};
use semantic::Semantics;
use std::collections::{BTreeMap, HashMap, HashSet};
use units::Build;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DefKind {
    Function,
    /// A static: its bytes are the running program's state.
    Data,
    /// A thread-local: its bytes are the initial value in every thread.
    Tls,
    /// Constant data with a name (`static X: T` without interior mutability, `.rodata.*`).
    Constant,
}

impl DefKind {
    fn of(kind: SectionKind) -> Option<DefKind> {
        Some(match kind {
            SectionKind::Text => DefKind::Function,
            SectionKind::Data | SectionKind::Bss => DefKind::Data,
            SectionKind::Tdata | SectionKind::Tbss => DefKind::Tls,
            SectionKind::ReadOnly | SectionKind::ReadOnlyAfterReloc => DefKind::Constant,
            _ => return None,
        })
    }
}

/// A definition whose meaning differs from the base build.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub name: String,
    pub kind: DefKind,
    pub old_size: u64,
    pub new_size: u64,
}

#[derive(Debug, Default)]
pub struct Diff {
    /// By mangled name.
    pub changed: BTreeMap<String, Change>,
    /// Defined in the base build's changed units, defined nowhere now.
    pub removed: Vec<String>,
    pub units_total: usize,
    pub units_changed: usize,
    /// Definitions compared one by one.
    pub compared: usize,
}

/// Where a definition lives: unit index in its build, section index in the unit.
type DefAt = (usize, usize);

/// Named definitions of the given units: name → every section defining it.
fn definitions<'a>(build: &Build<'a>, which: &[usize]) -> Result<HashMap<&'a str, Vec<DefAt>>> {
    let mut defs: HashMap<&'a str, Vec<DefAt>> = HashMap::new();
    for &u in which {
        let obj = build.units[u].object()?;
        for (si, sec) in obj.sections.iter().enumerate() {
            if DefKind::of(sec.kind).is_none() {
                continue;
            }
            for &sym in &sec.symbols {
                let name: &'a str = obj.symbols[sym].name;
                defs.entry(name).or_default().push((u, si));
            }
        }
    }
    Ok(defs)
}

/// Compares `current` against `base`. `defined_now` answers whether a name is defined
/// anywhere in the current build (removals only count when it is not).
pub fn diff(base: &Build, current: &Build, defined_now: &dyn Fn(&str) -> bool) -> Result<Diff> {
    let changed_cur: Vec<usize> = (0..current.units.len())
        .filter(|&i| {
            let u = &current.units[i];
            base.get(&u.key).is_none_or(|b| b.hash != u.hash)
        })
        .collect();
    let changed_base: Vec<usize> = (0..base.units.len())
        .filter(|&i| {
            let u = &base.units[i];
            current.get(&u.key).is_none_or(|c| c.hash != u.hash)
        })
        .collect();
    let mut out =
        Diff { units_total: current.units.len(), units_changed: changed_cur.len(), ..Default::default() };
    if changed_cur.is_empty() && changed_base.is_empty() {
        return Ok(out);
    }

    let cur_defs = definitions(current, &changed_cur)?;
    let base_defs = definitions(base, &changed_base)?;
    let mut cur_sem = Semantics::new(parsed(current));
    let mut base_sem = Semantics::new(parsed(base));

    for (&name, cur_places) in &cur_defs {
        let Some(base_places) = base_defs.get(name) else { continue };
        out.compared += 1;
        let (cu, cs) = cur_places[0];
        let new_hash = cur_sem.section_hash(cu, cs);
        let base_hashes: HashSet<u128> =
            base_places.iter().map(|&(u, s)| base_sem.section_hash(u, s)).collect();
        if base_hashes.contains(&new_hash) {
            continue;
        }
        let Some(kind) = DefKind::of(cur_sem.object(cu).sections[cs].kind) else { continue };
        let (bu, bs) = base_places[0];
        let change = Change {
            name: name.to_string(),
            kind,
            old_size: symbol_size(&base_sem, bu, bs, name),
            new_size: symbol_size(&cur_sem, cu, cs, name),
        };
        out.changed.insert(name.to_string(), change);
    }
    for &name in base_defs.keys() {
        if !cur_defs.contains_key(name) && !defined_now(name) {
            out.removed.push(name.to_string());
        }
    }
    out.removed.sort();
    Ok(out)
}

/// The units parsed so far (all the diff hashes: a section's anonymous targets are in its own unit).
fn parsed<'b, 'a>(build: &'b Build<'a>) -> Vec<Option<&'b Object<'a>>> {
    build.units.iter().map(|u| u.parsed()).collect()
}

fn symbol_size(sem: &Semantics, unit: usize, sec: usize, name: &str) -> u64 {
    let obj = sem.object(unit);
    let section = &obj.sections[sec];
    section.symbols.iter().map(|&s| &obj.symbols[s]).find(|s| s.name == name).map_or(section.size, |s| s.size)
}

/// Why `name` differs between two builds: the relocation targets (and byte ranges) that changed.
pub fn explain(base: &Build, current: &Build, name: &str) -> Result<Vec<String>> {
    let find = |build: &Build| -> Result<Option<(usize, usize)>> {
        for (u, unit) in build.units.iter().enumerate() {
            let obj = unit.object()?;
            for (si, sec) in obj.sections.iter().enumerate() {
                if sec.symbols.iter().any(|&i| obj.symbols[i].name == name) {
                    return Ok(Some((u, si)));
                }
            }
        }
        Ok(None)
    };
    let (Some((bu, bs)), Some((cu, cs))) = (find(base)?, find(current)?) else {
        return Ok(vec![format!("`{name}` is not defined in both builds")]);
    };
    let mut bsem = Semantics::new(parsed(base));
    let mut csem = Semantics::new(parsed(current));
    let (bsec, csec) = (&bsem.object(bu).sections[bs], &csem.object(cu).sections[cs]);
    let mut out = Vec::new();
    if bsec.size != csec.size {
        out.push(format!("size {} -> {}", bsec.size, csec.size));
    }
    let (bm, cm) = (semantic::masked(bsec.data, bsec.relocs()), semantic::masked(csec.data, csec.relocs()));
    if let Some(first) = bm.iter().zip(&cm).position(|(a, b)| a != b) {
        out.push(format!("code differs from byte {first:#x}"));
    }
    let (brel, crel) = (bsec.relocs().to_vec(), csec.relocs().to_vec());
    for i in 0..brel.len().max(crel.len()) {
        let b = brel.get(i).map(|r| (r.offset, bsem.target(bu, r)));
        let c = crel.get(i).map(|r| (r.offset, csem.target(cu, r)));
        if b != c {
            out.push(format!("relocation {i}: {b:?} -> {c:?}"));
        }
    }
    if out.is_empty() {
        out.push("no difference".into());
    }
    Ok(out)
}
