//! The reference graph of the workspace code, its hot points, and from them the set of functions a
//! patch must carry.
//!
//! A call through a hot point must run the newest code of everything it reaches. So a patch
//! carries every changed function that a hot point reaches, plus every unchanged function or
//! constant (vtables, tables of function pointers) on a path from a hot point to one: their copies
//! call the new code directly, and the hot point's slot switches to the new top of the chain in one
//! store. Paths stop at other hot points, which dispatch on their own, and at writable statics,
//! which are state and are never copied.
//!
//! The search goes *up* from the changed code: who refers to it, who refers to those, until hot
//! points. Its cost follows the callers of the edit, not the size of the program. Who refers to
//! what is read from the base build's link index for the units that did not change, and computed
//! here only for the units that did.

use crate::index::LinkIndex;
use crate::marks::{CALL_MARK, KEY_MARK, KEY_SUFFIX, SLOT_MARK, SLOT_SUFFIX};
use crate::objects::units::{Build, UnitId};
use crate::objects::{Object, SecIdx, Section, SectionKind, SymbolKind};
use std::collections::{HashMap, HashSet, VecDeque};

/// A section of a workspace unit: (unit index in the build, section index).
pub type Loc = (UnitId, SecIdx);

/// Where a build defines what, and who refers to what. Units read here (all of them without a
/// base index; only the changed ones with one) are parsed; for the others the base build's link
/// index answers, since an unchanged unit defines and refers to what it did then.
pub struct Index<'b, 'a> {
    pub build: &'b Build<'a>,
    /// Names (locals too) defined in the units read here → their sections.
    by_name: HashMap<&'a str, Vec<Loc>>,
    /// Non-local names of the units read here.
    globals: HashMap<&'a str, Loc>,
    /// The base build's index, and for each of its units the same unit in this build if its
    /// content did not change.
    base: Option<(&'b LinkIndex<'b>, Vec<Option<UnitId>>)>,
    /// For each unit of this build, its number in the base index if it did not change.
    base_number: Vec<Option<u32>>,
    /// Units read here.
    read: Vec<UnitId>,
    /// Units that mention hot slots, dispatch keys or `ipbp::call` instances.
    hot_units: Vec<UnitId>,
    /// Who refers to what, among the units read here: target → referrers.
    referrers: HashMap<Loc, Vec<Loc>>,
}

impl<'b, 'a> Index<'b, 'a> {
    /// `base` is the base build's link index; without one, every unit is read.
    pub fn new(build: &'b Build<'a>, base: Option<&'b LinkIndex<'b>>) -> crate::error::Result<Self> {
        let mut same_in_current = Vec::new();
        let mut base_number = vec![None; build.units.len()];
        let mut hot_units = Vec::new();
        if let Some(base) = base {
            for (n, u) in base.units().enumerate() {
                let now = build.position(u.key).filter(|&i| build.units[i].hash == u.hash);
                if let Some(i) = now {
                    base_number[i] = Some(n as u32);
                    if u.flags & crate::index::UNIT_HOT != 0 {
                        hot_units.push(i);
                    }
                }
                same_in_current.push(now);
            }
        }
        let mut by_name: HashMap<&'a str, Vec<Loc>> = HashMap::new();
        let mut globals = HashMap::new();
        let mut read = Vec::new();
        for (u, unit) in build.enumerate() {
            if base_number[u].is_some() {
                continue;
            }
            read.push(u);
            let obj = unit.object()?;
            let mut hot = false;
            for s in &obj.symbols {
                if !s.is_named() {
                    continue;
                }
                hot |= crate::marks::is_hot_name(s.name);
                let Some(sec) = s.section() else { continue };
                if !obj.sections[sec].kind.is_alloc() {
                    continue;
                }
                by_name.entry(s.name).or_default().push((u, sec));
                if !s.local {
                    globals.entry(s.name).or_insert((u, sec));
                }
            }
            if hot {
                hot_units.push(u);
            }
        }
        hot_units.sort_unstable();
        hot_units.dedup();
        let mut index = Index {
            build,
            by_name,
            globals,
            base: base.map(|b| (b, same_in_current)),
            base_number,
            read,
            hot_units,
            referrers: HashMap::new(),
        };
        let mut referrers: HashMap<Loc, Vec<Loc>> = HashMap::new();
        for &u in &index.read {
            for (s, sec) in index.object(u)?.sections.iter().enumerate() {
                if is_node(sec.kind) {
                    for t in index.references((u, s))? {
                        referrers.entry(t).or_default().push((u, s));
                    }
                }
            }
        }
        index.referrers = referrers;
        Ok(index)
    }

    /// Unit `u`'s object. The units read in [`Index::new`] were parsed there, their errors
    /// returned; the others are read on first use. Those are unchanged units of the build being
    /// linked: the link's own inputs (not kept copies), which rustc keeps until the link ends, with
    /// the bytes the base build's index was made from. Only a file removed or rewritten during
    /// the link fails here; the error names it, and ends the patch (not the link).
    pub fn object(&self, u: UnitId) -> crate::error::Result<&'b Object<'a>> {
        linked_unit(self.build, u)
    }

    pub fn section(&self, at: Loc) -> crate::error::Result<&'b Section<'a>> {
        Ok(&self.object(at.0)?.sections[at.1])
    }

    pub fn kind(&self, at: Loc) -> crate::error::Result<SectionKind> {
        Ok(self.section(at)?.kind)
    }

    /// The name a section is known by (its first named symbol), if any.
    pub fn name(&self, at: Loc) -> crate::error::Result<Option<&'a str>> {
        Ok(self.object(at.0)?.primary_symbol(at.1).map(|s| s.name))
    }

    /// Whether unit `u` is the same in the base build (its facts and referrers come from the base
    /// index, and the running image holds its code as linked).
    pub fn unchanged(&self, u: UnitId) -> bool {
        self.base_number[u].is_some()
    }

    pub fn units_read(&self) -> &[UnitId] {
        &self.read
    }

    /// The unchanged unit and section defining global `name`, per the base index.
    fn base_global(&self, name: &str) -> Option<Loc> {
        let (base, same) = self.base.as_ref()?;
        let (unit, section) = base.global(name)?;
        same.get(unit as usize).copied().flatten().map(|u| (u, section as SecIdx))
    }

    /// Every section defining `name` (in the units read here, else the unchanged global).
    pub fn definitions(&self, name: &str) -> Vec<Loc> {
        match self.by_name.get(name) {
            Some(v) => v.clone(),
            None => self.base_global(name).into_iter().collect(),
        }
    }

    pub fn defines(&self, name: &str) -> bool {
        self.by_name.contains_key(name) || self.base_global(name).is_some()
    }

    /// The workspace section a symbol of unit `u` stands for, if the workspace defines it.
    pub fn resolve_symbol(&self, u: UnitId, sym: usize) -> crate::error::Result<Option<Loc>> {
        let obj = self.object(u)?;
        let s = &obj.symbols[sym];
        Ok(match s.section() {
            Some(sec) => obj.sections[sec].kind.is_alloc().then_some((u, sec)),
            None if s.kind != SymbolKind::Section && !s.name.is_empty() => {
                self.globals.get(s.name).copied().or_else(|| self.base_global(s.name))
            }
            None => None,
        })
    }

    /// The sections a section refers to (decoding its relocations). Only targets in the same
    /// unit are checked for being graph nodes: a global found in another unit (or through the
    /// base index, which records only globals of loaded sections) always is one, and looking
    /// would mean reading that unit.
    pub fn references(&self, at: Loc) -> crate::error::Result<Vec<Loc>> {
        let mut out: Vec<Loc> = Vec::new();
        for r in self.section(at)?.relocs() {
            let Some(t) = self.resolve_symbol(at.0, r.symbol)? else { continue };
            if t.0 != at.0 || is_node(self.kind(t)?) {
                out.push(t);
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The sections that refer to `at`: from the units read here, and from the unchanged units
    /// per the base index.
    pub fn referrers(&self, at: Loc) -> crate::error::Result<Vec<Loc>> {
        let mut out = self.referrers.get(&at).cloned().unwrap_or_default();
        if let Some((base, same)) = &self.base {
            // Where `at` was in the base build: the same place if its unit did not change; for a
            // global of a changed unit, wherever the base defined that name.
            let in_base = match self.base_number[at.0] {
                Some(n) => Some((n, at.1 as u32)),
                None => match self.name(at)? {
                    Some(n) if self.is_global(at)? => base.global(n),
                    _ => None,
                },
            };
            if let Some((n, s)) = in_base {
                for (ru, rs) in base.referrers(n, s) {
                    if let Some(u) = same.get(ru as usize).copied().flatten() {
                        out.push((u, rs as SecIdx));
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Every (target, referrer) pair among the units read here.
    pub fn reference_pairs(&self) -> impl Iterator<Item = (Loc, Loc)> + '_ {
        self.referrers.iter().flat_map(|(&t, froms)| froms.iter().map(move |&f| (t, f)))
    }

    fn is_global(&self, at: Loc) -> crate::error::Result<bool> {
        Ok(self.object(at.0)?.primary_symbol(at.1).is_some_and(|s| !s.local))
    }

    /// Maps a location of the base index to this build, if its unit did not change.
    fn base_to_current(&self, (unit, section): (u32, u32)) -> Option<Loc> {
        let (_, same) = self.base.as_ref()?;
        same.get(unit as usize).copied().flatten().map(|u| (u, section as SecIdx))
    }
}

/// The object of unit `u` of `build`, the build being linked, read after [`Index::new`] (see
/// [`Index::object`]): an error names the file, removed or rewritten during the link.
pub(super) fn linked_unit<'b, 'a>(build: &'b Build<'a>, u: UnitId) -> crate::error::Result<&'b Object<'a>> {
    build.units[u]
        .object()
        .map_err(|e| crate::err!("{e} (an input removed or rewritten while it was being linked)"))
}

/// A section that takes part in the graph: loaded, and not unwind tables.
fn is_node(kind: SectionKind) -> bool {
    kind.is_alloc() && kind != SectionKind::EhFrame
}

/// How the running program reaches a hot function's newest version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// A method-form slot: store the new version's address in the slot here.
    Slot { slot: Loc },
    /// An async-form slot initialised with this entry function.
    Entry { slot: Loc },
    /// A redirect-table entry under the key function here (generic hot functions).
    Key { key: Loc },
    /// `ipbp::call::<F, R>`: a redirect-table entry under its own address.
    Call,
}

/// What one unit says about hot points; [`hot_points`] combines the facts of all units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fact {
    /// An `ipbp::call::<F, R>` instance.
    Call(Loc),
    /// A function refers to a dispatch key (a generic hot function).
    Key { function: Loc, key: Loc },
    /// A function reads a slot.
    SlotRef { function: Loc, slot: Loc },
    /// A slot's initial value names an async entry function.
    SlotEntry { slot: Loc, entry: Loc },
}

impl Fact {
    /// Code and locations as stored in the link index.
    pub fn encode(self) -> (u32, Loc, Loc) {
        match self {
            Fact::Call(a) => (0, a, a),
            Fact::Key { function, key } => (1, function, key),
            Fact::SlotRef { function, slot } => (2, function, slot),
            Fact::SlotEntry { slot, entry } => (3, slot, entry),
        }
    }

    fn decode(kind: u32, a: Loc, b: Loc) -> Option<Fact> {
        Some(match kind {
            0 => Fact::Call(a),
            1 => Fact::Key { function: a, key: b },
            2 => Fact::SlotRef { function: a, slot: b },
            3 => Fact::SlotEntry { slot: a, entry: b },
            _ => return None,
        })
    }
}

/// The hot-point facts of unit `u`.
pub fn unit_facts(index: &Index, u: UnitId) -> crate::error::Result<Vec<Fact>> {
    let mut facts = Vec::new();
    for s in 0..index.object(u)?.sections.len() {
        section_facts(index, (u, s), &mut facts)?;
    }
    facts.sort_unstable_by_key(|f| f.encode());
    facts.dedup();
    Ok(facts)
}

/// The hot-point facts a section states. Marks are recognised by the name a relocation uses;
/// only section symbols (always of the same unit) are looked up, so no other unit is read.
fn section_facts(index: &Index, at: Loc, facts: &mut Vec<Fact>) -> crate::error::Result<()> {
    let obj = index.object(at.0)?;
    let sec = &obj.sections[at.1];
    let target_name = |sym: usize, target: Loc| {
        let s = &obj.symbols[sym];
        if s.kind == SymbolKind::Section {
            index.name(target)
        } else {
            Ok(Some(s.name))
        }
    };
    match sec.kind {
        SectionKind::Text => {
            if index.name(at)?.is_some_and(|n| n.starts_with(CALL_MARK)) {
                facts.push(Fact::Call(at));
                return Ok(());
            }
            for r in sec.relocs() {
                let Some(target) = index.resolve_symbol(at.0, r.symbol)? else { continue };
                let Some(name) = target_name(r.symbol, target)? else { continue };
                let hot = name.contains(KEY_MARK) || name.contains(SLOT_MARK);
                if !hot || !index.name(at)?.is_some_and(|f| declares(f, name)) {
                    continue;
                }
                facts.push(if name.contains(KEY_MARK) {
                    Fact::Key { function: at, key: target }
                } else {
                    Fact::SlotRef { function: at, slot: target }
                });
            }
        }
        SectionKind::Data | SectionKind::Bss if index.name(at)?.is_some_and(|n| n.contains(SLOT_MARK)) => {
            if let Some(r) = sec.relocs().iter().find(|r| r.offset == 0) {
                if let Some(entry) = index.resolve_symbol(at.0, r.symbol)? {
                    facts.push(Fact::SlotEntry { slot: at, entry });
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whether `function` is the hot function that declares slot or key `mark` (both mangled). In an
/// optimised build other functions refer to them too: those the hot function was inlined into.
fn declares(function: &str, mark: &str) -> bool {
    let path = |name: &str| format!("{:#}", rustc_demangle::demangle(name));
    let mark = path(mark);
    let owner = mark.strip_suffix(SLOT_SUFFIX).or_else(|| mark.strip_suffix(KEY_SUFFIX));
    owner == Some(path(function).as_str())
}

pub struct HotPoints {
    /// Root function → how it is dispatched.
    pub roots: HashMap<Loc, Dispatch>,
    /// Owners of slots shared by several functions and not dispatched through the table: hot
    /// methods of generic impls, which a single slot cannot serve.
    pub shared: Vec<Loc>,
}

/// The hot points of the build: facts of unchanged units from the base index, facts of the others
/// read from their objects.
pub fn hot_points(index: &Index) -> crate::error::Result<HotPoints> {
    let mut facts = Vec::new();
    let mut units: HashSet<UnitId> =
        index.hot_units.iter().copied().filter(|u| index.read.contains(u)).collect();
    let mut sections: HashSet<Loc> = HashSet::new();
    if let Some((base, _)) = &index.base {
        for (kind, a, b) in base.facts() {
            match (index.base_to_current(a), index.base_to_current(b)) {
                (Some(a), Some(b)) => facts.extend(Fact::decode(kind, a, b)),
                // A fact between a changed and an unchanged unit: the changed side is read anyway;
                // state the unchanged side again (its section, not its whole unit).
                (Some(unchanged), None) | (None, Some(unchanged)) => {
                    sections.insert(unchanged);
                }
                (None, None) => {}
            }
        }
    } else {
        units.extend(index.hot_units.iter().copied());
    }
    for &u in &units {
        facts.extend(unit_facts(index, u)?);
    }
    for at in sections.into_iter().filter(|at| !units.contains(&at.0)) {
        section_facts(index, at, &mut facts)?;
    }
    facts.sort_unstable_by_key(|f| f.encode());
    facts.dedup();
    Ok(combine(facts))
}

/// From facts to dispatch: an entry slot's function is its root; a slot read by exactly one
/// function dispatches to it; a function referring to a key is dispatched through the table.
fn combine(facts: Vec<Fact>) -> HotPoints {
    let mut roots = HashMap::new();
    let mut slot_owners: HashMap<Loc, Vec<Loc>> = HashMap::new();
    let mut slots_with_entry = HashSet::new();
    for f in &facts {
        match *f {
            Fact::Call(at) => {
                roots.insert(at, Dispatch::Call);
            }
            Fact::Key { function, key } => {
                roots.insert(function, Dispatch::Key { key });
            }
            Fact::SlotEntry { slot, entry } => {
                roots.insert(entry, Dispatch::Entry { slot });
                slots_with_entry.insert(slot);
            }
            Fact::SlotRef { function, slot } => slot_owners.entry(slot).or_default().push(function),
        }
    }
    let mut shared = Vec::new();
    for (slot, mut owners) in slot_owners {
        if slots_with_entry.contains(&slot) {
            continue;
        }
        owners.sort_unstable();
        owners.dedup();
        match owners.as_slice() {
            [one] => {
                roots.entry(*one).or_insert(Dispatch::Slot { slot });
            }
            many => shared.extend(many.iter().copied().filter(|o| !roots.contains_key(o))),
        }
    }
    HotPoints { roots, shared }
}

/// What the changed code means for the running program.
pub struct Affected {
    /// The sections a patch copies: changed sections a hot point reaches, and every function or
    /// constant on a path from a hot point down to one.
    pub copy: HashSet<Loc>,
    /// Changed functions no hot point reaches.
    pub unreached: Vec<Loc>,
    /// How many sections the walk visited.
    pub visited: usize,
}

/// Walks up from `changed` through referrers (functions and constants; not through writable
/// statics, not above a hot point), then keeps what lies below the hot points it met.
pub fn affected(index: &Index, changed: &HashSet<Loc>, hot: &HotPoints) -> crate::error::Result<Affected> {
    let copyable = |k: SectionKind| {
        matches!(k, SectionKind::Text | SectionKind::ReadOnly | SectionKind::ReadOnlyAfterReloc)
    };
    let mut below: HashMap<Loc, Vec<Loc>> = HashMap::new();
    let mut seen: HashSet<Loc> = HashSet::new();
    for &c in changed {
        if copyable(index.kind(c)?) {
            seen.insert(c);
        }
    }
    let mut queue: VecDeque<Loc> = seen.iter().copied().collect();
    while let Some(v) = queue.pop_front() {
        if hot.roots.contains_key(&v) {
            continue; // callers of a hot function reach the new version through its slot
        }
        for u in index.referrers(v)? {
            if !copyable(index.kind(u)?) {
                continue;
            }
            below.entry(u).or_default().push(v);
            if seen.insert(u) {
                queue.push_back(u);
            }
        }
    }
    let mut copy: HashSet<Loc> = seen.iter().copied().filter(|n| hot.roots.contains_key(n)).collect();
    let mut down: VecDeque<Loc> = copy.iter().copied().collect();
    while let Some(u) = down.pop_front() {
        for &v in below.get(&u).map_or(&[][..], Vec::as_slice) {
            if copy.insert(v) {
                down.push_back(v);
            }
        }
    }
    let mut unreached: Vec<Loc> = Vec::new();
    for &c in changed {
        if !copy.contains(&c) && index.kind(c)? == SectionKind::Text {
            unreached.push(c);
        }
    }
    unreached.sort_unstable();
    Ok(Affected { copy, unreached, visited: seen.len() })
}
