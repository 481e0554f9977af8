//! Stage 3 — diff: which functions and statics of the workspace differ between the build a
//! process is running (its *base*) and the build being linked now.
//!
//! Units whose bytes are identical in both builds are skipped without parsing (in an incremental
//! build that is every codegen unit but the edited ones). In the others, every named definition is
//! compared by [`semantic::Semantics::section_hash`], paired with its counterpart by name — or,
//! for a function whose symbol hash changed, by its path (see [`names`]). Diffs are always against the base, so the
//! tenth patch of a process reflects every edit since it started, and code edited back to its
//! original text compares equal again.

pub mod names;
pub mod semantic;

use crate::error::Result;
use crate::objects::units::{Build, UnitId};
use crate::objects::{Object, SectionKind};
use semantic::Semantics;
use std::collections::{BTreeMap, HashMap, HashSet};

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
    /// The current build's mangled name.
    pub name: String,
    /// The base build's name for it: the same, or another symbol hash (or ThinLTO suffix) of the
    /// same path.
    pub base_name: String,
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
    /// The units that differ, by index in each build: only they can describe a changed type.
    pub changed_units_base: Vec<UnitId>,
    pub changed_units_current: Vec<UnitId>,
    /// Base names of the definitions of those units that compared equal ([`names::canonical`]: as
    /// debug info names them).
    pub unchanged: HashSet<String>,
    /// Definitions known under another name in the base build: `(base, current)`, with ThinLTO's
    /// suffixes dropped (a function whose symbol hash changed, paired by path).
    pub renamed: Vec<(String, String)>,
    /// Definitions compared one by one.
    pub compared: usize,
    /// What the code of each closure and async block of the changed units means
    /// ([`Semantics::section_hash`], by [`names::canonical`] name), in the base build and in the
    /// current one: closures are numbered in source order, so their names pair them only while
    /// none was added, removed or moved before them, and the layout guard pairs them by what they
    /// are instead (`layout::closures`).
    pub closure_bodies: [HashMap<String, u128>; 2],
}

impl Diff {
    /// The running build's name for `name`: the same, unless the diff paired it with another
    /// symbol hash or ThinLTO suffix of the same path.
    pub fn base_name<'n>(&'n self, name: &'n str) -> &'n str {
        self.changed.get(name).map_or(name, |c| c.base_name.as_str())
    }
}

/// Where a definition lives: unit index in its build, section index in the unit.
type DefAt = (UnitId, usize);

/// Named definitions of the given units: name → every section defining it. ThinLTO's promoted
/// constants (`anon.*`) are not definitions: references to them are compared by content.
fn definitions<'a>(build: &Build<'a>, which: &[UnitId]) -> Result<HashMap<&'a str, Vec<DefAt>>> {
    let mut defs: HashMap<&'a str, Vec<DefAt>> = HashMap::new();
    for &u in which {
        let obj = build.units[u].object()?;
        for (si, sec) in obj.sections.iter().enumerate() {
            if DefKind::of(sec.kind).is_none() {
                continue;
            }
            for &sym in &sec.symbols {
                let name: &'a str = obj.symbols[sym].name;
                if !names::is_promoted_anon(name) {
                    defs.entry(name).or_default().push((u, si));
                }
            }
        }
    }
    Ok(defs)
}

/// Pairs the definitions of the changed units across builds: `(current, base)` names. First by
/// [`names::canonical`] name; then the functions left on both sides by path, where the path names
/// exactly one function on each side (instances of a generic function share a path: those whose
/// hash changed stay unpaired, and show as new). Statics are paired by name only: a static whose
/// symbol hash changed has a new type, which `plan` refuses by path.
fn pair<'a>(
    current: &Build<'a>,
    cur_defs: &HashMap<&'a str, Vec<DefAt>>,
    base: &Build<'a>,
    base_defs: &HashMap<&'a str, Vec<DefAt>>,
) -> Result<Vec<(&'a str, &'a str)>> {
    let base_by_canon: HashMap<&str, &'a str> = base_defs.keys().map(|&n| (names::canonical(n), n)).collect();
    let mut pairs = Vec::new();
    let mut cur_left = Vec::new();
    for &name in cur_defs.keys() {
        match base_by_canon.get(names::canonical(name)) {
            Some(&b) => pairs.push((name, b)),
            None => cur_left.push(name),
        }
    }
    if cur_left.is_empty() {
        return Ok(pairs);
    }
    let paired: HashSet<&str> = pairs.iter().map(|&(_, b)| b).collect();
    let is_function = |build: &Build<'a>, (u, s): DefAt| -> Result<bool> {
        Ok(build.units[u].object()?.sections[s].kind == SectionKind::Text)
    };
    type Sides<'a> = (Vec<&'a str>, Vec<&'a str>);
    let mut by_path: HashMap<String, Sides<'a>> = HashMap::new();
    for name in cur_left {
        if is_function(current, cur_defs[name][0])? {
            by_path.entry(names::path(name)).or_default().0.push(name);
        }
    }
    for (&name, places) in base_defs {
        if paired.contains(name) || !is_function(base, places[0])? {
            continue;
        }
        if let Some(sides) = by_path.get_mut(&names::path(name)) {
            sides.1.push(name);
        }
    }
    for (cur, old) in by_path.into_values() {
        if let ([c], [b]) = (cur.as_slice(), old.as_slice()) {
            pairs.push((c, b));
        }
    }
    Ok(pairs)
}

/// Compares `current` against `base`. `defined_now` answers whether a name is defined
/// anywhere in the current build (removals only count when it is not).
pub fn diff<'a>(base: &Build<'a>, current: &Build<'a>, defined_now: &dyn Fn(&str) -> bool) -> Result<Diff> {
    let changed_cur: Vec<UnitId> = current
        .enumerate()
        .filter(|(_, u)| base.get(&u.key).is_none_or(|b| b.hash != u.hash))
        .map(|(i, _)| i)
        .collect();
    let changed_base: Vec<UnitId> = base
        .enumerate()
        .filter(|(_, u)| current.get(&u.key).is_none_or(|c| c.hash != u.hash))
        .map(|(i, _)| i)
        .collect();
    let mut out = Diff {
        units_total: current.units.len(),
        units_changed: changed_cur.len(),
        changed_units_base: changed_base.clone(),
        changed_units_current: changed_cur.clone(),
        ..Default::default()
    };
    if changed_cur.is_empty() && changed_base.is_empty() {
        return Ok(out);
    }

    let cur_defs = definitions(current, &changed_cur)?;
    let base_defs = definitions(base, &changed_base)?;
    let pairs = pair(current, &cur_defs, base, &base_defs)?;
    // References to a definition paired under another name count as references to it.
    let renames: HashMap<&str, &str> = pairs
        .iter()
        .map(|&(c, b)| (names::canonical(b), names::canonical(c)))
        .filter(|(b, c)| b != c)
        .collect();
    out.renamed = renames.iter().map(|(b, c)| (b.to_string(), c.to_string())).collect();
    out.renamed.sort();
    let mut cur_sem = Semantics::new(parsed(current));
    let base_renames = renames;
    let mut base_sem = Semantics::new(parsed(base)).renamed(base_renames.clone());

    let mut seen_base = HashSet::new();
    for &(name, base_name) in &pairs {
        seen_base.insert(base_name);
        let (cur_places, base_places) = (&cur_defs[name], &base_defs[base_name]);
        out.compared += 1;
        let (cu, cs) = cur_places[0];
        let new_hash = cur_sem.section_hash(cu.index(), cs);
        let base_hashes: HashSet<u128> =
            base_places.iter().map(|&(u, s)| base_sem.section_hash(u.index(), s)).collect();
        if base_hashes.contains(&new_hash) {
            out.unchanged.insert(names::canonical(base_name).to_string());
            continue;
        }
        let Some(kind) = DefKind::of(cur_sem.object(cu.index()).sections[cs].kind) else { continue };
        let (bu, bs) = base_places[0];
        let change = Change {
            name: name.to_string(),
            base_name: base_name.to_string(),
            kind,
            old_size: symbol_size(&base_sem, bu, bs, base_name),
            new_size: symbol_size(&cur_sem, cu, cs, name),
        };
        out.changed.insert(name.to_string(), change);
    }
    let changed: [HashSet<&str>; 2] = [
        out.changed.values().map(|c| names::canonical(&c.base_name)).collect(),
        out.changed.values().map(|c| names::canonical(&c.name)).collect(),
    ];
    out.closure_bodies = closure_bodies(
        [base, current],
        [&base_defs, &cur_defs],
        [&mut base_sem, &mut cur_sem],
        [&base_renames, &HashMap::new()],
        &changed,
    )?;
    for &name in base_defs.keys() {
        if !seen_base.contains(name) && !defined_now(name) {
            out.removed.push(name.to_string());
        }
    }
    out.removed.sort();
    Ok(out)
}

/// What the code of each closure and async block of the changed units means, by
/// [`names::canonical`] name, in each build ([`Diff::closure_bodies`]). First as every definition
/// is compared, references by name (`sems`, their memos already filled); then, for each function
/// whose closures do not all keep their names and meanings across the builds (one was added,
/// removed, moved or edited), or one of whose closures refers to a changed definition (`changed`,
/// by each build's names: a generic instance over its own closure, holding that closure's code
/// inlined, whose symbol now names another closure's), once more with references among its
/// closures by content ([`Semantics::closures_of`]): their names follow their numbers, so the
/// layout guard could not pair the same closure under another number by its code.
fn closure_bodies<'a>(
    builds: [&Build<'a>; 2],
    defs: [&HashMap<&'a str, Vec<DefAt>>; 2],
    sems: [&mut Semantics<'_, 'a>; 2],
    renames: [&HashMap<&'a str, &'a str>; 2],
    changed: &[HashSet<&str>; 2],
) -> Result<[HashMap<String, u128>; 2]> {
    type Side<'a> = Vec<(&'a str, DefAt, u128)>;
    // Outermost function (`app::main` of `app::main::{{closure}}::{{closure}}`) → each side's closures.
    let mut by_owner: HashMap<String, [Side<'a>; 2]> = HashMap::new();
    // Owners one of whose closures refers to a changed definition.
    let mut touching: HashSet<String> = HashSet::new();
    for (side, sem) in sems.into_iter().enumerate() {
        for (&name, places) in defs[side] {
            let (u, sec) = places[0];
            let obj = builds[side].units[u].object()?;
            if !names::is_closure(name) || obj.sections[sec].kind != SectionKind::Text {
                continue;
            }
            let path = names::path(name);
            let owner = names::closure_owner(&path);
            let hash = sem.section_hash(u.index(), sec);
            let refers = obj.sections[sec].relocs().iter().any(|r| {
                let target = &obj.symbols[r.symbol];
                target.is_named() && changed[side].contains(names::canonical(target.name))
            });
            if refers {
                touching.insert(owner.to_string());
            }
            by_owner.entry(owner.to_string()).or_default()[side].push((name, (u, sec), hash));
        }
    }
    let mut out: [HashMap<String, u128>; 2] = Default::default();
    for (owner, mut sides) in by_owner {
        let keyed = |side: &Side| -> BTreeMap<String, u128> {
            side.iter().map(|&(n, _, h)| (names::canonical(n).to_string(), h)).collect()
        };
        if keyed(&sides[0]) != keyed(&sides[1]) || touching.contains(&owner) {
            for (side, closures) in sides.iter_mut().enumerate() {
                // In a fixed order, not the definitions' hash map's: a cycle of references is
                // hashed from the closure entered first (its inner occurrence counts as 0), and
                // the memo keeps what the others got then. So one build always gives the same
                // hashes (across builds, a cycle's members may still differ: pairing then finds
                // nothing, never a wrong pair, and the closure is taken as edited — its copy kept
                // where its function gained or lost closures, `layout::closures::through_base`).
                closures.sort_unstable_by_key(|c| c.0);
                let renamed = renames[side].clone();
                let mut sem =
                    Semantics::new(parsed(builds[side])).renamed(renamed).closures_of(&owner, defs[side]);
                for (_, (u, sec), hash) in closures.iter_mut() {
                    *hash = sem.section_hash(u.index(), *sec);
                }
            }
        }
        for (side, closures) in sides.into_iter().enumerate() {
            out[side].extend(closures.into_iter().map(|(n, _, h)| (names::canonical(n).to_string(), h)));
        }
    }
    Ok(out)
}

/// The units parsed so far (all the diff hashes: a section's anonymous targets are in its own unit).
fn parsed<'b, 'a>(build: &'b Build<'a>) -> Vec<Option<&'b Object<'a>>> {
    build.units.iter().map(|u| u.parsed()).collect()
}

fn symbol_size(sem: &Semantics, unit: UnitId, sec: usize, name: &str) -> u64 {
    let obj = sem.object(unit.index());
    let section = &obj.sections[sec];
    section.symbols.iter().map(|&s| &obj.symbols[s]).find(|s| s.name == name).map_or(section.size, |s| s.size)
}

/// Why `name` differs between two builds: the relocation targets (and byte ranges) that changed.
/// `name` may be either build's name for it; the diff's pairing finds the other.
pub fn explain<'a>(base: &Build<'a>, current: &Build<'a>, name: &str) -> Result<Vec<String>> {
    let d = diff(base, current, &|_| true)?;
    let canon = names::canonical(name);
    let (base_name, cur_name) = match d.renamed.iter().find(|(b, c)| b == canon || c == canon) {
        Some((b, c)) => (b.as_str(), c.as_str()),
        None => (canon, canon),
    };
    let find = |build: &Build, name: &str| -> Result<Option<(usize, usize)>> {
        for (u, unit) in build.units.iter().enumerate() {
            let obj = unit.object()?;
            for (si, sec) in obj.sections.iter().enumerate() {
                if sec.symbols.iter().any(|&i| names::canonical(obj.symbols[i].name) == name) {
                    return Ok(Some((u, si)));
                }
            }
        }
        Ok(None)
    };
    let (Some((bu, bs)), Some((cu, cs))) = (find(base, base_name)?, find(current, cur_name)?) else {
        return Ok(vec![format!("`{name}` is not defined in both builds")]);
    };
    let mut out = Vec::new();
    if base_name != cur_name {
        out.push(format!("known as {base_name} in the older build (same path, another symbol hash)"));
    }
    let renames: HashMap<&str, &str> = d.renamed.iter().map(|(b, c)| (b.as_str(), c.as_str())).collect();
    let mut bsem = Semantics::new(parsed(base)).renamed(renames);
    let mut csem = Semantics::new(parsed(current));
    let (bsec, csec) = (&bsem.object(bu).sections[bs], &csem.object(cu).sections[cs]);
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
