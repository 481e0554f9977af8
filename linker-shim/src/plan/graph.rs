//! The reference graph of the current build's workspace code, its hot points, and from them the
//! set of functions a patch must carry.
//!
//! A call through a hot point must run the newest code of everything it reaches. So a patch
//! carries every changed function reachable from a hot point, plus every unchanged function or
//! constant (vtables, tables of function pointers) on a path from a hot point to one: their copies
//! call the new code directly, and the hot point's slot switches to the new top of the chain in one
//! store. Paths stop at other hot points, which dispatch on their own, and at writable statics,
//! which are state and are never copied.
//!
//! Cost grows with what the hot points reach, not with the program: the [`Index`] reads symbol
//! tables only; relocations are decoded for the few units that hold hot points and for the
//! sections the search from them reaches.

use crate::diff::units::Build;
use crate::objects::{Object, SecIdx, Section, SectionKind, SymbolKind};
use std::collections::{HashMap, HashSet, VecDeque};

/// A section of a workspace unit: (unit index in the build, section index).
pub type Loc = (usize, SecIdx);

/// The mangled-name fragment of every `#[ipbp::hot]` slot (`…::__IPBP_SLOT`, length-prefixed in
/// both legacy and v0 mangling).
pub const SLOT_MARK: &str = "11__IPBP_SLOT";
/// `ipbp::dispatch::key::<…>` instances (legacy mangling of the runtime crate).
pub const KEY_MARK: &str = "_ZN4ipbp8dispatch3key17h";
/// `ipbp::call::<F, R>` instances.
pub const CALL_MARK: &str = "_ZN4ipbp4call17h";

/// Where the current build defines what, from symbol tables only.
pub struct Index<'b, 'a> {
    pub build: &'b Build<'a>,
    /// Every named symbol (locals too) → the sections defining it.
    by_name: HashMap<&'a str, Vec<Loc>>,
    /// Non-local names only: how an undefined reference in one unit finds its definition.
    globals: HashMap<&'a str, Loc>,
    /// Units whose symbol tables mention hot slots, dispatch keys or `ipbp::call` instances.
    hot_units: Vec<usize>,
}

impl<'b, 'a> Index<'b, 'a> {
    pub fn new(build: &'b Build<'a>) -> crate::error::Result<Self> {
        let mut by_name: HashMap<&'a str, Vec<Loc>> = HashMap::new();
        let mut globals = HashMap::new();
        let mut hot_units = Vec::new();
        for (u, unit) in build.units.iter().enumerate() {
            let obj = unit.object()?;
            let mut hot = false;
            for s in &obj.symbols {
                if !s.is_named() {
                    continue;
                }
                hot |= s.name.contains(SLOT_MARK)
                    || s.name.starts_with(KEY_MARK)
                    || s.name.starts_with(CALL_MARK);
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
        Ok(Index { build, by_name, globals, hot_units })
    }

    pub fn object(&self, u: usize) -> &'b Object<'a> {
        self.build.units[u].parsed().expect("indexed units are parsed")
    }

    pub fn section(&self, at: Loc) -> &'b Section<'a> {
        &self.object(at.0).sections[at.1]
    }

    pub fn kind(&self, at: Loc) -> SectionKind {
        self.section(at).kind
    }

    /// The name a section is known by (its first named symbol), if any.
    pub fn name(&self, at: Loc) -> Option<&'a str> {
        self.object(at.0).primary_symbol(at.1).map(|s| s.name)
    }

    /// Every section defining `name`.
    pub fn definitions(&self, name: &str) -> &[Loc] {
        self.by_name.get(name).map_or(&[], Vec::as_slice)
    }

    pub fn defines(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The workspace section a symbol of unit `u` stands for, if the workspace defines it.
    pub fn resolve_symbol(&self, u: usize, sym: usize) -> Option<Loc> {
        let obj = self.object(u);
        let s = &obj.symbols[sym];
        match s.section() {
            Some(sec) => obj.sections[sec].kind.is_alloc().then_some((u, sec)),
            None if s.kind != SymbolKind::Section && !s.name.is_empty() => self.globals.get(s.name).copied(),
            None => None,
        }
    }

    /// The sections a section refers to (decoding its relocations).
    pub fn references(&self, at: Loc) -> Vec<Loc> {
        let mut out: Vec<Loc> = self
            .section(at)
            .relocs()
            .iter()
            .filter_map(|r| self.resolve_symbol(at.0, r.symbol))
            .filter(|&t| self.kind(t) != SectionKind::EhFrame)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
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

pub struct HotPoints {
    /// Root function → how it is dispatched.
    pub roots: HashMap<Loc, Dispatch>,
    /// Owners of slots shared by several functions and not dispatched through the table: hot
    /// methods of generic impls, which a single slot cannot serve.
    pub shared: Vec<Loc>,
}

/// Finds the hot points: scanning relocations only in the units that mention them.
pub fn hot_points(index: &Index) -> HotPoints {
    let mut roots = HashMap::new();
    let mut slot_owners: HashMap<Loc, Vec<Loc>> = HashMap::new();
    let mut slots_with_entry = HashSet::new();
    for &u in &index.hot_units {
        let obj = index.object(u);
        for (s, sec) in obj.sections.iter().enumerate() {
            let at = (u, s);
            match sec.kind {
                SectionKind::Text => {
                    if index.name(at).is_some_and(|n| n.starts_with(CALL_MARK)) {
                        roots.insert(at, Dispatch::Call);
                        continue;
                    }
                    for r in sec.relocs() {
                        let name = obj.symbols[r.symbol].name;
                        let target = index.resolve_symbol(u, r.symbol);
                        let target_name = target.and_then(|t| index.name(t)).unwrap_or(name);
                        if target_name.starts_with(KEY_MARK) {
                            if let Some(key) = target {
                                roots.insert(at, Dispatch::Key { key });
                            }
                        } else if target_name.contains(SLOT_MARK) {
                            if let Some(slot) = target {
                                slot_owners.entry(slot).or_default().push(at);
                            }
                        }
                    }
                }
                SectionKind::Data | SectionKind::Bss
                    if index.name(at).is_some_and(|n| n.contains(SLOT_MARK)) =>
                {
                    slot_owners.entry(at).or_default();
                    // Async form: the slot's initial value names the entry function.
                    if let Some(r) = sec.relocs().iter().find(|r| r.offset == 0) {
                        if let Some(entry) = index.resolve_symbol(u, r.symbol) {
                            roots.insert(entry, Dispatch::Entry { slot: at });
                            slots_with_entry.insert(at);
                        }
                    }
                }
                _ => {}
            }
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

/// The part of the graph reachable from the hot points, with its edges.
pub struct Reach {
    pub edges: HashMap<Loc, Vec<Loc>>,
}

impl Reach {
    pub fn contains(&self, at: &Loc) -> bool {
        self.edges.contains_key(at)
    }
}

/// Everything reachable from the hot points (decoding relocations only of what is reached).
pub fn reach(index: &Index, roots: impl IntoIterator<Item = Loc>) -> Reach {
    let mut edges: HashMap<Loc, Vec<Loc>> = HashMap::new();
    let mut queue: VecDeque<Loc> = roots.into_iter().collect();
    while let Some(at) = queue.pop_front() {
        if edges.contains_key(&at) {
            continue;
        }
        let targets = index.references(at);
        queue.extend(targets.iter().copied().filter(|t| !edges.contains_key(t)));
        edges.insert(at, targets);
    }
    Reach { edges }
}

/// The sections a patch copies: `changed` sections within reach, and every reachable function or
/// constant referring to a copied section, except through a hot point (which dispatches itself).
pub fn copy_set(index: &Index, reach: &Reach, changed: &HashSet<Loc>, hot: &HotPoints) -> HashSet<Loc> {
    let mut referrers: HashMap<Loc, Vec<Loc>> = HashMap::new();
    for (&from, targets) in &reach.edges {
        for &to in targets {
            referrers.entry(to).or_default().push(from);
        }
    }
    let mut copy: HashSet<Loc> = changed.iter().copied().filter(|n| reach.contains(n)).collect();
    let mut queue: VecDeque<Loc> = copy.iter().copied().collect();
    while let Some(v) = queue.pop_front() {
        if hot.roots.contains_key(&v) {
            continue; // callers of a hot function reach the new version through its slot
        }
        for &u in referrers.get(&v).map_or(&[][..], Vec::as_slice) {
            let copyable = matches!(
                index.kind(u),
                SectionKind::Text | SectionKind::ReadOnly | SectionKind::ReadOnlyAfterReloc
            );
            if copyable && copy.insert(u) {
                queue.push_back(u);
            }
        }
    }
    copy
}
