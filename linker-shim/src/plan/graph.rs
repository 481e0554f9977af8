//! The reference graph of the current build's workspace code, its hot points, and from them the
//! set of functions a patch must carry.
//!
//! A call through a hot point must run the newest code of everything it reaches. So a patch
//! carries every changed function reachable from a hot point, plus every unchanged function or
//! constant (vtables, tables of function pointers) on a path from a hot point to one: their copies
//! call the new code directly, and the hot point's slot switches to the new top of the chain in one
//! store. Paths stop at other hot points, which dispatch on their own, and at writable statics,
//! which are state and are never copied.

use crate::diff::units::Build;
use crate::objects::{Object, SecIdx, SectionKind, SymbolKind};
use std::collections::{HashMap, HashSet, VecDeque};

pub type Node = usize;

/// The mangled-name fragment of every `#[ipbp::hot]` slot (`…::__IPBP_SLOT`, length-prefixed in
/// both legacy and v0 mangling).
const SLOT_MARK: &str = "11__IPBP_SLOT";
/// `ipbp::dispatch::key::<…>` instances (legacy mangling of the runtime crate).
const KEY_MARK: &str = "_ZN4ipbp8dispatch3key17h";
/// `ipbp::call::<F, R>` instances.
const CALL_MARK: &str = "_ZN4ipbp4call17h";

pub struct Graph<'b, 'a> {
    pub build: &'b Build<'a>,
    /// `(unit, section)` of each node: every loaded section of every workspace unit.
    pub nodes: Vec<(usize, SecIdx)>,
    node_of: HashMap<(usize, SecIdx), Node>,
    pub edges: Vec<Vec<Node>>,
    /// Every named symbol (locals too) → the nodes defining it.
    pub by_name: HashMap<&'a str, Vec<Node>>,
    /// Non-local names only: how an undefined reference in one unit finds its definition.
    globals: HashMap<&'a str, Node>,
}

impl<'b, 'a> Graph<'b, 'a> {
    pub fn build(build: &'b Build<'a>) -> crate::error::Result<Self> {
        let mut g = Graph {
            build,
            nodes: Vec::new(),
            node_of: HashMap::new(),
            edges: Vec::new(),
            by_name: HashMap::new(),
            globals: HashMap::new(),
        };
        for (u, unit) in build.units.iter().enumerate() {
            let obj = unit.object()?;
            for (s, sec) in obj.sections.iter().enumerate() {
                if !sec.kind.is_alloc() || sec.kind == SectionKind::EhFrame {
                    continue;
                }
                let n = g.nodes.len();
                g.nodes.push((u, s));
                g.node_of.insert((u, s), n);
                for &sym in &sec.symbols {
                    let sym = &obj.symbols[sym];
                    g.by_name.entry(sym.name).or_default().push(n);
                    if !sym.local {
                        g.globals.entry(sym.name).or_insert(n);
                    }
                }
            }
        }
        g.edges = vec![Vec::new(); g.nodes.len()];
        for n in 0..g.nodes.len() {
            let (u, s) = g.nodes[n];
            let obj = g.object(n);
            let mut targets: Vec<Node> =
                obj.sections[s].relocs.iter().filter_map(|r| g.resolve_symbol(u, obj, r.symbol)).collect();
            targets.sort_unstable();
            targets.dedup();
            g.edges[n] = targets;
        }
        Ok(g)
    }

    pub fn object(&self, n: Node) -> &'b Object<'a> {
        self.build.units[self.nodes[n].0].parsed().expect("graph units are parsed")
    }

    pub fn section(&self, n: Node) -> &'b crate::objects::Section<'a> {
        &self.object(n).sections[self.nodes[n].1]
    }

    pub fn kind(&self, n: Node) -> SectionKind {
        self.section(n).kind
    }

    /// The name a node is known by (its first named symbol), if any.
    pub fn name(&self, n: Node) -> Option<&'a str> {
        self.object(n).primary_symbol(self.nodes[n].1).map(|s| s.name)
    }

    pub fn node(&self, unit: usize, sec: SecIdx) -> Option<Node> {
        self.node_of.get(&(unit, sec)).copied()
    }

    /// The workspace node a symbol of unit `u` stands for, if the workspace defines it.
    pub fn resolve_symbol(&self, u: usize, obj: &Object<'a>, sym: usize) -> Option<Node> {
        let s = &obj.symbols[sym];
        match s.section() {
            Some(sec) => self.node_of.get(&(u, sec)).copied(),
            None if s.kind != SymbolKind::Section && !s.name.is_empty() => self.globals.get(s.name).copied(),
            None => None,
        }
    }

    /// Reverse edges.
    fn referrers(&self) -> Vec<Vec<Node>> {
        let mut rev = vec![Vec::new(); self.nodes.len()];
        for (from, targets) in self.edges.iter().enumerate() {
            for &to in targets {
                rev[to].push(from);
            }
        }
        rev
    }
}

/// How the running program reaches a hot function's newest version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// A method-form slot: store the new version's address in the slot at this node.
    Slot { slot: Node },
    /// An async-form slot initialised with this entry function.
    Entry { slot: Node },
    /// A redirect-table entry under the key function at this node (generic hot functions).
    Key { key: Node },
    /// `ipbp::call::<F, R>`: a redirect-table entry under its own address.
    Call,
}

/// A slot and what the current build says about it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub node: Node,
    pub signature: u64,
    /// Functions reading the slot. More than one without table dispatch means a hot method of a
    /// generic impl, which a single slot cannot serve.
    pub owners: Vec<Node>,
}

pub struct HotPoints {
    /// Root function node → how it is dispatched.
    pub roots: HashMap<Node, Dispatch>,
    pub slots: Vec<SlotInfo>,
    /// Owners of slots shared by several functions and not dispatched through the table.
    pub shared: Vec<Node>,
}

pub fn hot_points(g: &Graph) -> HotPoints {
    let mut roots = HashMap::new();
    let mut slots = Vec::new();
    let is_slot = |n: Node| g.name(n).is_some_and(|name| name.contains(SLOT_MARK));
    let is_key = |n: Node| g.name(n).is_some_and(|name| name.starts_with(KEY_MARK));
    let rev = g.referrers();
    for (n, referrers) in rev.iter().enumerate() {
        let kind = g.kind(n);
        if kind == SectionKind::Text {
            if g.name(n).is_some_and(|name| name.starts_with(CALL_MARK)) {
                roots.insert(n, Dispatch::Call);
            } else if let Some(&key) = g.edges[n].iter().find(|&&t| is_key(t)) {
                roots.insert(n, Dispatch::Key { key });
            }
            continue;
        }
        if !is_slot(n) {
            continue;
        }
        let sec = g.section(n);
        let signature = sec.data.get(8..16).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
        let owners: Vec<Node> =
            referrers.iter().copied().filter(|&o| g.kind(o) == SectionKind::Text).collect();
        let initial = sec.relocs.iter().find(|r| r.offset == 0);
        if let Some(r) = initial {
            let (u, _) = g.nodes[n];
            if let Some(entry) = g.resolve_symbol(u, g.object(n), r.symbol) {
                roots.insert(entry, Dispatch::Entry { slot: n });
            }
        }
        slots.push(SlotInfo { node: n, signature, owners });
    }
    let mut shared = Vec::new();
    for s in &slots {
        if g.section(s.node).relocs.iter().any(|r| r.offset == 0) {
            continue;
        }
        match s.owners.as_slice() {
            [one] => {
                roots.entry(*one).or_insert(Dispatch::Slot { slot: s.node });
            }
            many => {
                shared.extend(many.iter().copied().filter(|o| !roots.contains_key(o)));
            }
        }
    }
    HotPoints { roots, slots, shared }
}

/// Everything reachable from the hot points.
pub fn reach(g: &Graph, roots: impl IntoIterator<Item = Node>) -> HashSet<Node> {
    let mut seen: HashSet<Node> = HashSet::new();
    let mut queue: VecDeque<Node> = roots.into_iter().collect();
    seen.extend(queue.iter().copied());
    while let Some(n) = queue.pop_front() {
        for &t in &g.edges[n] {
            if seen.insert(t) {
                queue.push_back(t);
            }
        }
    }
    seen
}

/// The nodes a patch copies: `changed` nodes within `reach`, and every reachable function or
/// constant referring to a copied node, except through a hot point (which dispatches itself).
pub fn copy_set(g: &Graph, reach: &HashSet<Node>, changed: &HashSet<Node>, hot: &HotPoints) -> HashSet<Node> {
    let rev = g.referrers();
    let mut copy: HashSet<Node> = changed.iter().copied().filter(|n| reach.contains(n)).collect();
    let mut queue: VecDeque<Node> = copy.iter().copied().collect();
    while let Some(v) = queue.pop_front() {
        if hot.roots.contains_key(&v) {
            continue; // callers of a hot function reach the new version through its slot
        }
        for &u in &rev[v] {
            let copyable = matches!(
                g.kind(u),
                SectionKind::Text | SectionKind::ReadOnly | SectionKind::ReadOnlyAfterReloc
            );
            if copyable && reach.contains(&u) && copy.insert(u) {
                queue.push_back(u);
            }
        }
    }
    copy
}
