//! Stage 4 — plan: what goes into a patch for one process, and where every reference points.
//!
//! Starting from the functions the patch must carry ([`graph::affected`]), each relocation of each
//! carried section is resolved to one of:
//! - something else the patch carries (anonymous data, new functions and statics, functions the
//!   running image never linked — a std function used for the first time is pulled from its rlib);
//! - an absolute address in the running process (every other function; every static, which keeps
//!   its state — including statics an earlier patch added, found in the process's ledger);
//! - an offset in the executable's TLS block (thread-locals of the image, and new ones placed in
//!   ipbp's TLS reserve, so every thread has them);
//! - a dynamic import from a shared library (libc), bound by the loader.
//!
//! What cannot be patched safely becomes a [`Refusal`] naming the symbol and the reason.

pub mod base;
mod chain;
mod detours;
pub(crate) mod entry;
pub mod graph;
mod imports;
mod pointers;
mod pull;
mod tls;
mod unwind;
mod worklist;

#[cfg(test)]
mod tests;

use crate::diff::{DefKind, Diff};
use crate::index::BaseKind;
use crate::objects::load::{Arena, ObjectArena};
use crate::objects::units::{Build, UnitId};
use crate::objects::{Object, SecIdx, SectionKind, SymbolKind};
use crate::store::inputs::Input;
use base::BaseImage;
use graph::{Dispatch, HotPoints, Index, Loc};
use imports::Imports;
use ipbp::protocol::Hello;
use object::elf;
use pull::Archives;
use std::collections::{HashMap, HashSet};
use tls::TlsReserve;
use unwind::UnwindRecords;
use worklist::Worklist;

crate::objects::position_id!(
    /// A chunk of the plan: its position in [`Plan::chunks`], and in every per-chunk list emit
    /// makes from it (offsets, addresses). Crosses from plan to emit and to the driver.
    ChunkId,
    "chunk",
    "each is a section or piece of one"
);

/// A section (or a piece of a merge section) the patch carries.
pub struct Chunk<'a> {
    /// The name it is known by: its first symbol, or its section name.
    pub name: String,
    pub kind: SectionKind,
    pub align: u64,
    pub size: u64,
    /// Contents; empty for zero-filled chunks.
    pub data: std::borrow::Cow<'a, [u8]>,
    pub relocs: Vec<PlannedReloc>,
    /// Named symbols defined in the chunk: name, offset, size, is-function.
    pub symbols: Vec<(String, u64, u64, bool)>,
}

#[derive(Debug, Clone)]
pub struct PlannedReloc {
    pub offset: u64,
    pub kind: elf::RelocationType,
    pub target: Target,
    pub addend: i64,
    /// The symbol as named in the object (for error messages).
    pub symbol: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// Inside the patch: chunk and offset.
    Chunk(ChunkId, u64),
    /// An address in the running process.
    Absolute(u64),
    /// Offset in the executable's TLS block (module 1).
    Tls(u64),
    /// A symbol the loader binds (index into [`Plan::imports`]).
    Import(usize),
    /// Resolves to 0 (an undefined weak symbol; a dispatch key seen from a patched copy).
    Zero,
}

/// One `.eh_frame` record the patch carries: a CIE, or an FDE pointing at its CIE.
pub struct EhRecord<'a> {
    pub data: &'a [u8],
    pub relocs: Vec<PlannedReloc>,
    /// For an FDE: index of its CIE in [`Plan::eh_records`].
    pub cie: Option<usize>,
}

/// Where a hot point must be switched, once the patch is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Install {
    /// Store the chunk's address into the slot at this absolute address.
    Slot(u64),
    /// Redirect-table entry from this absolute key address.
    Redirect(u64),
    /// A jump written over the function entry at this absolute address (in-place patching).
    Detour(u64),
}

/// How a patch reaches the running code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Every changed function's entry jumps to its new version: every caller, however it got the
    /// address, runs the new code. Nothing is carried.
    #[default]
    InPlace,
    /// Only hot points (`#[ipbp::hot]`, `ipbp::call`) switch to new code; the patch carries every
    /// function on a path from a hot point to changed code.
    HotPoints,
}

impl Mode {
    /// `IPBP_MODE=hot-points` selects hot points; in place otherwise.
    pub fn from_env() -> Mode {
        match std::env::var("IPBP_MODE").as_deref() {
            Ok("hot-points") => Mode::HotPoints,
            _ => Mode::InPlace,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub symbol: String,
    pub reason: String,
    /// About a path a new value could take to old code (`pointers`): listed after the layout
    /// guard's refusals, which name where old values live.
    pub secondary: bool,
}

/// What the plan decided, for the status line and the manifest.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    /// Functions changed by the edit that the patch carries.
    pub changed: Vec<String>,
    /// Definitions the running image does not have (new functions, statics, generic instances).
    pub added: Vec<String>,
    /// Unchanged functions and constants carried because they lead to changed code.
    pub carried: Vec<String>,
    /// Definitions pulled from archives the workspace does not own (std, dependencies).
    pub pulled: Vec<String>,
    /// Symbols left to the dynamic loader.
    pub imports: Vec<String>,
    /// Changed functions whose entry in the image cannot hold a jump (in place): old callers keep
    /// their old code, new code calls the new version. Demangled name and why.
    pub not_redirected: Vec<(String, String)>,
    /// Things the user should know that do not stop the patch.
    pub notes: Vec<String>,
    /// Changed functions that are running and never called again (`main`): only a restart runs
    /// their new code.
    pub running: Vec<String>,
    /// In place: mangled names (now, and in the image) of the changed functions kept on old code
    /// for a layout change, and of the unchanged code carried because it leads to them. An earlier
    /// patch's copies of them are called with values of that patch's layout: they keep their code
    /// (`deliver::chain`), never sent on to this patch's versions.
    pub kept_for_layout: Vec<String>,
}

pub struct Plan<'a> {
    /// Milliseconds per planning step, for the manifest.
    pub steps: Vec<(&'static str, f64)>,
    /// What planning looked at, for the manifest.
    pub stats: Vec<(&'static str, usize)>,
    pub chunks: Vec<Chunk<'a>>,
    /// Per chunk: the workspace unit and section it is a copy of (whole sections only), so emit
    /// can carry the unit's debug info for it.
    pub sources: Vec<Option<(UnitId, SecIdx)>>,
    pub eh_records: Vec<EhRecord<'a>>,
    pub imports: Vec<String>,
    /// Chunk (function entry at offset 0) → where to install it.
    pub installs: Vec<(ChunkId, Install)>,
    /// New statics (name, chunk) for the process's ledger.
    pub new_data: Vec<(String, ChunkId)>,
    /// New thread-locals (name, offset in the TLS reserve, size).
    pub new_tls: Vec<ipbp::protocol::LedgerEntry>,
    pub report: Report,
    pub refusals: Vec<Refusal>,
}

/// TLS facts of the running process.
pub struct TlsInfo {
    /// Offset of ipbp's reserve inside the executable's TLS block, and its size.
    pub reserve: Option<(u64, u64)>,
}

/// Everything the plan stage reads.
pub struct Inputs<'p, 'a> {
    pub current: &'p Build<'a>,
    /// The running build's workspace units (its changed ones are read: which functions the
    /// optimiser merged there).
    pub base_build: &'p Build<'a>,
    pub diff: &'p Diff,
    pub base: &'p BaseImage<'a>,
    pub hello: &'p Hello,
    pub tls: TlsInfo,
    pub mode: Mode,
    /// Type layouts of the changed units, old and new: whether a changed function still takes
    /// what its old callers pass.
    pub layouts: &'p crate::layout::Layouts,
    /// The current link's inputs (archives to pull from).
    pub link_inputs: &'p [Input],
    pub arena: &'a Arena,
}

pub fn plan<'a>(input: &Inputs<'_, 'a>, index: &Index<'_, 'a>) -> crate::error::Result<Plan<'a>> {
    let mut clock = crate::timing::Clock::new();
    let hot = graph::hot_points(index)?;
    clock.step("hot points");
    let mut changed_nodes = HashSet::new();
    let mut refusals = Vec::new();
    let mut notes = Vec::new();
    for change in input.diff.changed.values() {
        let nodes = index.definitions(&change.name);
        let nodes = nodes.as_slice();
        let pretty = crate::map::read::demangle(&change.name);
        match change.kind {
            DefKind::Function | DefKind::Constant => changed_nodes.extend(nodes.iter().copied()),
            DefKind::Data | DefKind::Tls if change.name.contains(crate::marks::SLOT_MARK) => {
                let owner = pretty.trim_end_matches(crate::marks::SLOT_SUFFIX);
                refusals.push(Refusal {
                    symbol: owner.to_string(),
                    reason: format!("the signature of hot function `{owner}` changed; callers built against the old one cannot call the new one (restart to use it)"),
                    secondary: false,
                });
            }
            DefKind::Data | DefKind::Tls if change.old_size != change.new_size => refusals.push(Refusal {
                symbol: pretty.clone(),
                reason: format!(
                    "the size of {} `{pretty}` changed ({} -> {} bytes); its running value cannot be kept",
                    if change.kind == DefKind::Tls { "thread-local" } else { "static" },
                    change.old_size,
                    change.new_size
                ),
                secondary: false,
            }),
            DefKind::Data | DefKind::Tls => notes.push(format!(
                "the initial value of `{pretty}` changed; the running process keeps its current value"
            )),
        }
    }
    let mut running_changed = Vec::new();
    let (copy, visited) = match input.mode {
        Mode::HotPoints => {
            let affected = graph::affected(index, &changed_nodes, &hot)?;
            let mut unreached: Vec<String> = Vec::new();
            for &n in &affected.unreached {
                unreached.extend(index.name(n)?.map(crate::map::read::demangle));
            }
            unreached.sort();
            unreached.dedup();
            if !unreached.is_empty() {
                notes.push(unreached_note(&unreached));
            }
            (affected.copy, affected.visited)
        }
        // Every changed function and constant is new code; nothing unchanged is carried. `main`
        // is running and never called again: its new code would never run, so it is left out.
        Mode::InPlace => {
            let mut copy = HashSet::new();
            let mut running = Vec::new();
            for &n in &changed_nodes {
                let name = index.name(n)?.map(crate::map::read::demangle);
                if index.kind(n)? == SectionKind::Text && name.as_deref().is_some_and(is_main) {
                    running.extend(name.clone());
                } else {
                    copy.insert(n);
                }
                // A hot `async fn`'s futures are boxed behind its entry function: the new entry
                // goes into the slot, so new futures run new code and futures in flight finish
                // in the old code they were made for, whatever their layout.
                if let Some(f) = name.as_deref() {
                    copy.extend(hot_async_entry(index, &hot, f)?);
                }
            }
            running.sort();
            running.dedup();
            running_changed.clone_from(&running);
            for f in running {
                notes.push(format!(
                    "`{f}` changed; it is running and is not called again, so its new code runs after a restart"
                ));
            }
            (copy, changed_nodes.len())
        }
    };
    clock.step("affected");
    // In place: which changed functions keep their old entry, and the unchanged code that leads
    // to them, which new code must reach in copies (see `chain`).
    let signatures = crate::layout::Signatures::new(input.layouts);
    let detours = match input.mode {
        Mode::InPlace => detours::decide(input, index, &copy, &changed_nodes, &signatures)?,
        Mode::HotPoints => Vec::new(),
    };
    clock.step("redirects");
    let stale: HashMap<Loc, Option<String>> = detours
        .iter()
        .filter_map(|d| {
            let why = d.entries.as_ref().err()?;
            Some((d.at, d.layout.then(|| why.to_string())))
        })
        .collect();
    let chains = chain::Chains::find(index, &stale.keys().copied().collect(), &changed_nodes)?;
    clock.step("chains");
    refusals.extend(pointers::refusals(input, index, &stale, &chains, &signatures)?);
    let mut kept_for_layout = Vec::new();
    let layout_stale = |at: &Loc| matches!(stale.get(at), Some(Some(_)));
    let led = chains.carry.iter().filter(|(_, o)| layout_stale(o)).map(|(at, _)| at);
    for &at in stale.keys().filter(|at| layout_stale(at)).chain(led) {
        if index.kind(at)? != SectionKind::Text {
            continue;
        }
        if let Some(name) = index.name(at)? {
            kept_for_layout.push(name.to_string());
            kept_for_layout.push(input.diff.base_name(name).to_string());
        }
    }
    kept_for_layout.sort();
    kept_for_layout.dedup();
    clock.step("pointers");
    let stats = vec![
        ("hot points", hot.roots.len()),
        ("sections walked from the changes", visited),
        ("sections copied", copy.len()),
        ("sections leading to code not redirected", chains.carry.len()),
        ("workspace units", index.build.units.len()),
        ("units read", index.units_read().len()),
    ];
    for &n in &hot.shared {
        if copy.contains(&n) {
            let f = index.name(n)?.map(crate::map::read::demangle).unwrap_or_default();
            notes.push(format!(
                "hot function `{f}` is one of several instances of a generic impl sharing one slot; mark it #[ipbp::hot(generic)] to patch it"
            ));
        }
    }

    let pulled = ObjectArena::default();
    let mut planner = Planner::new(input, index, &hot, (&copy, &stale, &chains), &pulled);
    for &n in sorted(&copy).iter() {
        // In place, changed constants are copied only when new code refers to them.
        if input.mode == Mode::InPlace && index.kind(n)? != SectionKind::Text {
            continue;
        }
        let (u, s) = n;
        planner.include(Obj::Unit(u), s, None)?;
    }
    planner.run()?;
    clock.step("resolve");
    let mut plan = planner.finish(&hot, &copy, &changed_nodes, detours)?;
    plan.steps = clock.steps;
    plan.stats = stats;
    plan.refusals.splice(0..0, refusals);
    plan.report.notes.splice(0..0, notes);
    plan.report.running = running_changed;
    plan.report.kept_for_layout = kept_for_layout;
    Ok(plan)
}

/// The entry function of the hot `async fn` whose body `function` belongs to (`f::__ipbp_body`
/// and the closures in it belong to the one whose slot holds `f::__ipbp_entry`).
fn hot_async_entry(index: &Index, hot: &HotPoints, function: &str) -> crate::error::Result<Option<Loc>> {
    let Some((owner, _)) = function.split_once("::__ipbp_body") else { return Ok(None) };
    let entry = format!("{owner}::__ipbp_entry");
    for (&at, d) in &hot.roots {
        if matches!(d, Dispatch::Entry { .. })
            && index.name(at)?.is_some_and(|n| crate::map::read::demangle(n) == entry)
        {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

/// Functions a hot `async fn` expands to, which are switched through its slot, not detoured.
fn is_hot_async_part(function: &str) -> bool {
    function.contains("::__ipbp_body") || function.ends_with("::__ipbp_entry")
}

/// The binary crate's `main` (`app::main`): called once, by the standard library's start-up.
fn is_main(path: &str) -> bool {
    path.split("::").collect::<Vec<_>>().as_slice().len() == 2 && path.ends_with("::main")
}

/// One line for every changed function no hot point reaches (often code of `main`, or code that
/// compiled differently only because a dependency now provides a generic instance itself).
fn unreached_note(functions: &[String]) -> String {
    const SHOWN: usize = 3;
    let names: Vec<String> = functions.iter().take(SHOWN).map(|f| format!("`{f}`")).collect();
    let more = match functions.len().saturating_sub(SHOWN) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    let pronoun = if functions.len() == 1 { "it" } else { "them" };
    format!(
        "{}{more} changed but no hot point reaches {pronoun}; the running process keeps the old code there",
        names.join(", ")
    )
}

/// Functions not redirected that get a note each; the others share one.
const NOTED: usize = 3;

/// Whether a function is the program's (or a library's) own code, not an instance of the standard
/// library's generic code: `app::f`, `<app::Mode as core::fmt::Debug>::fmt`; not
/// `alloc::vec::Vec<T,A>::extend_trusted` nor `<(U,T) as core::fmt::Debug>::fmt`.
fn is_own_path(path: &str) -> bool {
    let path = path.strip_prefix('<').unwrap_or(path);
    let first = path.split("::").next().unwrap_or("");
    let crate_name = !first.is_empty() && first.chars().all(|c| c.is_alphanumeric() || c == '_');
    crate_name && !matches!(first, "core" | "alloc" | "std" | "hashbrown")
}

/// Up to three names in backquotes, and how many more.
fn shown_list(names: &[String]) -> String {
    const SHOWN: usize = 3;
    let shown: Vec<String> = names.iter().take(SHOWN).map(|f| format!("`{f}`")).collect();
    match names.len().saturating_sub(SHOWN) {
        0 => shown.join(", "),
        n => format!("{} and {n} more", shown.join(", ")),
    }
}

fn sorted(set: &HashSet<Loc>) -> Vec<Loc> {
    let mut v: Vec<Loc> = set.iter().copied().collect();
    v.sort_unstable();
    v
}

/// Which object a section comes from: a workspace unit of the current build, or an archive member
/// pulled in during planning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Obj {
    Unit(UnitId),
    Pulled(usize),
}

/// A chunk's source: object, section, and for merge pieces the byte range.
type ChunkKey = (Obj, SecIdx, Option<(u64, u64)>);

/// Resolves the relocations of everything the patch carries, including what they lead to.
///
/// Its state is in independent parts, each keeping its own invariants: the chunks and what is left
/// to resolve ([`Worklist`]), archive members pulled in ([`Archives`]), unwind records
/// ([`UnwindRecords`]), dynamic imports ([`Imports`]), new thread-locals ([`TlsReserve`]).
struct Planner<'p, 'g, 'a> {
    input: &'p Inputs<'p, 'a>,
    index: &'g Index<'g, 'a>,
    hot: &'g HotPoints,
    copy: &'g HashSet<Loc>,
    /// In place: changed functions that are not redirected → why, when it is a layout change.
    stale: &'g HashMap<Loc, Option<String>>,
    /// In place: unchanged code leading to them, carried where the patch's code refers to it.
    chains: &'g chain::Chains,
    work: Worklist<'a>,
    archives: Archives<'p, 'a>,
    unwind: UnwindRecords<'a>,
    imports: Imports,
    tls: TlsReserve<'p>,
    /// Private null slots for patched copies of method-form hot functions: slot node → chunk.
    private_slots: HashMap<Loc, ChunkId>,
    /// What cannot be patched safely, each (symbol, reason) once.
    refusals: Vec<Refusal>,
}

impl<'p, 'g, 'a> Planner<'p, 'g, 'a> {
    fn new(
        input: &'p Inputs<'p, 'a>,
        index: &'g Index<'g, 'a>,
        hot: &'g HotPoints,
        (copy, stale, chains): (&'g HashSet<Loc>, &'g HashMap<Loc, Option<String>>, &'g chain::Chains),
        pulled: &'p ObjectArena<'a>,
    ) -> Self {
        Planner {
            input,
            index,
            hot,
            copy,
            stale,
            chains,
            work: Worklist::default(),
            archives: Archives::new(input.link_inputs, input.arena, pulled),
            unwind: UnwindRecords::default(),
            imports: Imports::default(),
            tls: TlsReserve::new(input.tls.reserve, &input.hello.tls),
            private_slots: HashMap::new(),
            refusals: Vec::new(),
        }
    }

    fn object(&self, o: Obj) -> crate::error::Result<&'p Object<'a>> {
        match o {
            // The index's build: see `Index::object` for when this read fails.
            Obj::Unit(u) => graph::linked_unit(self.input.current, u),
            Obj::Pulled(i) => Ok(self.archives.object(i)),
        }
    }

    fn refuse(&mut self, symbol: &str, reason: String) {
        let symbol = crate::map::read::demangle(symbol);
        if !self.refusals.iter().any(|r| r.symbol == symbol && r.reason == reason) {
            self.refusals.push(Refusal { symbol, reason, secondary: false });
        }
    }

    /// Adds a section (or merge piece) to the patch, once.
    fn include(&mut self, obj: Obj, sec: SecIdx, piece: Option<(u64, u64)>) -> crate::error::Result<ChunkId> {
        let key = (obj, sec, piece);
        if let Some(id) = self.work.find(&key) {
            return Ok(id);
        }
        let o = self.object(obj)?;
        let s = &o.sections[sec];
        let (start, end) = piece.unwrap_or((0, s.size));
        let data: &'a [u8] = if s.data.is_empty() { &[] } else { &s.data[start as usize..end as usize] };
        let symbols = s
            .symbols
            .iter()
            .map(|&i| &o.symbols[i])
            .filter(|sym| sym.value >= start && sym.value < end.max(start + 1))
            .map(|sym| (sym.name.to_string(), sym.value - start, sym.size, sym.kind == SymbolKind::Function))
            .collect();
        let name = o.primary_symbol(sec).map_or_else(|| s.name.to_string(), |p| p.name.to_string());
        let id = self.work.include(
            key,
            Chunk {
                name,
                kind: s.kind,
                align: if piece.is_some() { s.merge.map_or(1, |m| m.entsize.max(1)) } else { s.align },
                size: end - start,
                data: std::borrow::Cow::Borrowed(data),
                relocs: Vec::new(),
                symbols,
            },
        );
        if s.kind == SectionKind::Text {
            self.include_unwind(obj, sec, id)?;
        }
        Ok(id)
    }

    fn run(&mut self) -> crate::error::Result<()> {
        while let Some((id, (obj, sec, piece))) = self.work.next() {
            let (start, end) = piece.unwrap_or((0, u64::MAX));
            let relocs = self.plan_relocs(obj, sec, start, end, Some(id))?;
            self.work.set_relocs(id, relocs);
        }
        Ok(())
    }

    /// The relocations of `sec` in `[start, end)`, resolved, with offsets from `start`. `from`
    /// is the chunk making them (none for unwind records).
    fn plan_relocs(
        &mut self,
        obj: Obj,
        sec: SecIdx,
        start: u64,
        end: u64,
        from: Option<ChunkId>,
    ) -> crate::error::Result<Vec<PlannedReloc>> {
        let relocs: Vec<_> = self.object(obj)?.sections[sec]
            .relocs()
            .iter()
            .filter(|r| r.offset >= start && r.offset < end)
            .copied()
            .collect();
        let mut planned = Vec::with_capacity(relocs.len());
        for r in relocs {
            let target = self.resolve(obj, &r, from)?;
            let symbol = self.object(obj)?.symbols[r.symbol].name.to_string();
            planned.push(PlannedReloc {
                offset: r.offset - start,
                kind: r.kind,
                target,
                addend: r.addend,
                symbol,
            });
        }
        Ok(planned)
    }

    /// The FDE of a carried function, and its CIE (once per object and CIE).
    fn include_unwind(&mut self, obj: Obj, sec: SecIdx, chunk: ChunkId) -> crate::error::Result<()> {
        let Some(info) = self.unwind.fde_of(obj, self.object(obj)?, sec) else {
            let name = self.work.chunk(chunk).map(|c| c.name.clone()).unwrap_or_default();
            self.unwind.no_unwind(name);
            return Ok(());
        };
        let cie = match self.unwind.cie(obj, info.cie) {
            Some(c) => c,
            None => {
                let c = self.eh_record(obj, info.eh_frame, info.cie, None)?;
                self.unwind.cie_added(obj, info.cie, c);
                c
            }
        };
        self.eh_record(obj, info.eh_frame, info.fde, Some(cie))?;
        Ok(())
    }

    fn eh_record(
        &mut self,
        obj: Obj,
        eh: SecIdx,
        rec: unwind::Record,
        cie: Option<usize>,
    ) -> crate::error::Result<usize> {
        let (start, end) = (rec.start as u64, (rec.start + rec.len) as u64);
        let planned = self.plan_relocs(obj, eh, start, end, None)?;
        let data = &self.object(obj)?.sections[eh].data[rec.start..rec.start + rec.len];
        Ok(self.unwind.push(EhRecord { data, relocs: planned, cie }))
    }

    /// Where the target of relocation `r` of `obj`, made from chunk `from`, lives for the patch.
    /// (The relocation's addend is applied on top by emit.)
    fn resolve(
        &mut self,
        obj: Obj,
        r: &crate::objects::Reloc,
        from: Option<ChunkId>,
    ) -> crate::error::Result<Target> {
        let o = self.object(obj)?;
        let s = &o.symbols[r.symbol];
        let (name, def, kind, value, weak) = (s.name, s.def, s.kind, s.value, s.weak);
        let target = match obj {
            Obj::Unit(u) => self.index.resolve_symbol(u, r.symbol)?,
            _ => None,
        };
        if let Some(at) = target {
            self.check_stale_state(at)?;
            if let Some(t) = self.dispatch_special(at, from)? {
                return Ok(t);
            }
            if let Some(t) = self.address_of_changed_function(at, r, value, from)? {
                return Ok(t);
            }
        }
        Ok(match def {
            crate::objects::Definition::Section(sec) => {
                if !s.is_named() {
                    if let Some((sec, start, end)) = o.merge_piece(r) {
                        let id = self.include(obj, sec, Some((start, end)))?;
                        // May wrap "below" the piece: the addend brings it back (value + addend = start).
                        return Ok(Target::Chunk(id, value.wrapping_sub(start)));
                    }
                    if let Some(p) = o.primary_symbol(sec) {
                        let (pname, pvalue) = (p.name, p.value);
                        return Ok(self
                            .named_defined(obj, sec, pname, pvalue)?
                            .offset(value as i64 - pvalue as i64));
                    }
                    if o.sections[sec].kind.is_tls() {
                        self.refuse(name, "a thread-local without a name cannot be placed".into());
                        return Ok(Target::Zero);
                    }
                    let id = self.include(obj, sec, None)?;
                    return Ok(Target::Chunk(id, value));
                }
                self.named_defined(obj, sec, name, value)?
            }
            crate::objects::Definition::Undefined => {
                self.named_elsewhere(name, kind == SymbolKind::Tls, weak)?
            }
            crate::objects::Definition::Absolute => Target::Absolute(value),
            crate::objects::Definition::Common => {
                self.refuse(name, "common symbols are not supported".into());
                Target::Zero
            }
        })
    }

    /// References that hot-point dispatch treats specially when made from a patched copy: a hot
    /// function's references to its own slot or key (not to those of hot functions inlined
    /// into it).
    fn dispatch_special(
        &mut self,
        target: Loc,
        from: Option<ChunkId>,
    ) -> crate::error::Result<Option<Target>> {
        let Some(from) = from else { return Ok(None) };
        let Some((Obj::Unit(u), from_sec, _)) = self.work.source(from) else { return Ok(None) };
        let Some(dispatch) = self.hot.roots.get(&(u, from_sec)) else { return Ok(None) };
        Ok(match dispatch {
            Dispatch::Slot { slot } if *slot == target => {
                let slot = *slot;
                if let Some(&c) = self.private_slots.get(&slot) {
                    return Ok(Some(Target::Chunk(c, 0)));
                }
                // A patched copy of a hot method reads its own null slot and so runs its body.
                let signature =
                    self.index.section(slot)?.data.get(8..16).map(<[u8]>::to_vec).unwrap_or(vec![0; 8]);
                let mut data = vec![0u8; 8];
                data.extend_from_slice(&signature);
                let id = self.work.add_made(Chunk {
                    name: format!("{}.private", self.index.name(slot)?.unwrap_or("slot")),
                    kind: SectionKind::Data,
                    align: 8,
                    size: 16,
                    data: std::borrow::Cow::Owned(data),
                    relocs: Vec::new(),
                    symbols: Vec::new(),
                });
                self.private_slots.insert(slot, id);
                Some(Target::Chunk(id, 0))
            }
            // A patched copy of a generic hot function must not find itself in the redirect table:
            // its key becomes its own address, which no table entry uses (keys are addresses in
            // the running image), and which a PC-relative reference can reach.
            Dispatch::Key { key } if *key == target => Some(Target::Chunk(from, 0)),
            _ => None,
        })
    }

    /// In place, new code that takes the *address* of a changed function (a `fn` pointer, a
    /// vtable entry) gets the function's entry in the image, which jumps to the newest version:
    /// pointers made before and after a patch stay equal. Calls (`PLT32`) and unwind records go
    /// to the new copy directly, and so do references *into* a function's body — a jump table's
    /// entries are `PC32` from read-only data to the function's section plus an offset, and must
    /// reach the new body. An address is taken when a relocation names the function's start:
    /// `GOTPCREL`, an absolute `R_X86_64_64` of offset 0, or a `PC32` from code whose target is the
    /// start (`lea` ends with its displacement: addend -4). `None` for everything else.
    fn address_of_changed_function(
        &self,
        at: Loc,
        r: &crate::objects::Reloc,
        symbol_value: u64,
        from: Option<ChunkId>,
    ) -> crate::error::Result<Option<Target>> {
        if self.input.mode != Mode::InPlace {
            return Ok(None);
        }
        let Some(from) = from.and_then(|from| self.work.chunk(from)) else { return Ok(None) };
        let from_code = from.kind == SectionKind::Text;
        let at_start = |bias: i64| (symbol_value as i64).checked_add(r.addend) == Some(bias);
        let takes_address = match r.kind {
            elf::R_X86_64_GOTPCREL | elf::R_X86_64_GOTPCRELX | elf::R_X86_64_REX_GOTPCRELX => true,
            elf::R_X86_64_64 => at_start(0),
            elf::R_X86_64_PC32 => from_code && at_start(-4),
            _ => false,
        };
        if !takes_address || !self.copy.contains(&at) || self.index.kind(at)? != SectionKind::Text {
            return Ok(None);
        }
        if self.stale.contains_key(&at) {
            return Ok(None); // its image entry keeps the old code: the new copy's address
        }
        let Some(name) = self.index.name(at)? else { return Ok(None) };
        if is_hot_async_part(&crate::map::read::demangle(name)) {
            return Ok(None); // switched through its slot, never detoured
        }
        let Some((entry, _)) = self.input.base.lookup(self.input.diff.base_name(name)) else {
            return Ok(None);
        };
        Ok((entry.kind == BaseKind::Function)
            .then_some(Target::Absolute(entry.addr + self.input.base.load_bias)))
    }

    /// In place, new code that refers to a writable static whose data points into a chain leading
    /// to a function not redirected for a layout change would hand its new values to that old
    /// code through the pointer the process holds: refused, naming the static, the function and
    /// the type (`chain`'s module doc).
    fn check_stale_state(&mut self, at: Loc) -> crate::error::Result<()> {
        let Some(&origin) = self.chains.state.get(&at) else { return Ok(()) };
        let Some(Some(why)) = self.stale.get(&origin) else { return Ok(()) };
        let Some(name) = self.index.name(at)? else { return Ok(()) };
        let function = self.index.name(origin)?.map(crate::map::read::demangle).unwrap_or_default();
        let reason = format!(
            "new code reads static `{}`, which points to code leading to the old `{function}`, kept for its old callers: {why}; values the new code makes would meet the old code (restart to use it)",
            base::state_path(name)
        );
        self.refuse(name, reason);
        Ok(())
    }

    /// A named symbol defined in section `sec` of `obj`.
    fn named_defined(
        &mut self,
        obj: Obj,
        sec: SecIdx,
        name: &'a str,
        value: u64,
    ) -> crate::error::Result<Target> {
        if let Obj::Unit(u) = obj {
            if self.copy.contains(&(u, sec)) || self.chains.carry.contains_key(&(u, sec)) {
                let id = self.include(obj, sec, None)?;
                return Ok(Target::Chunk(id, value));
            }
        }
        let section = &self.object(obj)?.sections[sec];
        let (kind, size) = (section.kind, section.size);
        if kind.is_tls() {
            return self.tls_target(name, Some((obj, sec, value)));
        }
        if let Some(t) = self.bound(name, kind, size) {
            return Ok(t);
        }
        let id = self.include(obj, sec, None)?;
        Ok(Target::Chunk(id, value))
    }

    /// A named symbol the referencing object does not define.
    fn named_elsewhere(&mut self, name: &'a str, tls: bool, weak: bool) -> crate::error::Result<Target> {
        if let Some(&(u, sec)) = self.index.definitions(name).first() {
            if let Some(t) = self.unchanged_in_image(name, (u, sec)) {
                return Ok(t);
            }
            let o = self.object(Obj::Unit(u))?;
            if let Some(s) =
                o.sections[sec].symbols.iter().map(|&i| &o.symbols[i]).find(|s| s.name == name && !s.local)
            {
                let value = s.value;
                return self.named_defined(Obj::Unit(u), sec, name, value);
            }
        }
        if tls {
            return self.tls_target(name, None);
        }
        if let Some(t) = self.bound(name, SectionKind::Text, 0) {
            return Ok(t);
        }
        // The running executable takes it from a shared library: so will the patch.
        let imported = self.input.base.imports(name);
        if !imported {
            match self.archives.pull(name) {
                Ok(Some((member, sec, value))) => {
                    return self.named_defined(Obj::Pulled(member), sec, name, value)
                }
                Ok(None) => {}
                Err(reason) => self.refuse(name, reason.to_string()),
            }
        }
        if weak {
            return Ok(Target::Zero);
        }
        Ok(Target::Import(self.imports.id(name)))
    }

    /// A definition the patch does not copy, in a unit this build did not change, which the running
    /// image has under the same name (once): bound there without reading the unit, whose bytes
    /// are the ones the image was linked from. This keeps the cost of a patch independent of the
    /// size of the units its code calls into.
    fn unchanged_in_image(&self, name: &str, at: Loc) -> Option<Target> {
        if !self.index.unchanged(at.0) || self.copy.contains(&at) || self.chains.carry.contains_key(&at) {
            return None;
        }
        match self.input.base.lookup(name)? {
            (s, 1) if s.kind == BaseKind::Tls => Some(Target::Tls(s.addr)),
            (s, 1) => Some(Target::Absolute(s.addr + self.input.base.load_bias)),
            _ => None,
        }
    }

    /// The running image's (or an earlier patch's) definition of `name`, if it has one.
    fn bound(&mut self, name: &str, kind: SectionKind, size: u64) -> Option<Target> {
        let state = kind.is_writable_state();
        let path = base::state_path(name);
        let ledger = self
            .input
            .hello
            .data
            .iter()
            .find(|e| e.name == name || (state && base::state_path(&e.name) == path));
        if let Some(e) = ledger {
            if e.name != name {
                self.refuse(name, format!("the type of static `{path}` (added by an earlier patch) changed; its value cannot be kept"));
            } else if state && size != 0 && e.size != size {
                self.refuse(
                    name,
                    format!(
                        "the size of static `{path}` changed ({} -> {size} bytes) since a patch added it",
                        e.size
                    ),
                );
            }
            return Some(Target::Absolute(e.addr));
        }
        let Some((first, count)) = self.input.base.lookup(name) else {
            if state {
                if let Some((_, old)) = self.input.base.same_path_state(name).first() {
                    let how = if old.size == size {
                        "its type changed".to_string()
                    } else {
                        format!("its size changed ({} -> {size} bytes)", old.size)
                    };
                    self.refuse(name, format!("static `{path}` is live in the running program and {how}; its value cannot be kept"));
                    return Some(Target::Zero);
                }
            }
            return None;
        };
        let bias = self.input.base.load_bias;
        if first.kind == BaseKind::Function || count == 1 || !state {
            if state && size != 0 && first.size != size && first.kind != BaseKind::Function {
                self.refuse(
                    name,
                    format!(
                        "the running static `{path}` is {} bytes, the new code expects {size}",
                        first.size
                    ),
                );
            }
            return Some(Target::Absolute(first.addr + bias));
        }
        self.refuse(
            name,
            format!("the running program defines {count} statics named `{path}`; cannot tell which one"),
        );
        Some(Target::Zero)
    }

    /// A thread-local: the image's, one an earlier patch placed in the reserve, or a new one.
    fn tls_target(&mut self, name: &str, def: Option<(Obj, SecIdx, u64)>) -> crate::error::Result<Target> {
        if let Some(s) = self.input.base.all(name).into_iter().find(|s| s.kind == BaseKind::Tls) {
            return Ok(Target::Tls(s.addr));
        }
        if self.input.base.same_path_state(name).iter().any(|(_, s)| s.kind == BaseKind::Tls) {
            let path = base::state_path(name);
            self.refuse(
                name,
                format!(
                    "the type of thread-local `{path}` changed; the values every thread holds cannot be kept"
                ),
            );
            return Ok(Target::Zero);
        }
        if let Err(no_room) = self.tls.check() {
            self.refuse(name, no_room.to_string());
            return Ok(Target::Zero);
        }
        if let Some(at) = self.tls.placed(name) {
            return Ok(Target::Tls(at));
        }
        let def = match def {
            Some(def) => Some(def),
            None => self.tls_definition(name)?,
        };
        let Some((obj, sec, value)) = def else {
            self.refuse(name, "thread-local not found in any link input".into());
            return Ok(Target::Zero);
        };
        let section = &self.object(obj)?.sections[sec];
        let (align, size) = (section.align, section.size);
        if section.data.iter().any(|&b| b != 0) {
            self.refuse(
                name,
                "a new thread-local with a non-zero constant initial value cannot be given to threads already running; \
                 initialise it lazily (thread_local! without `const`)"
                    .into(),
            );
            return Ok(Target::Zero);
        }
        Ok(match self.tls.place(name, align, size) {
            Ok(at) => Target::Tls(at + value),
            Err(no_room) => {
                self.refuse(name, no_room.to_string());
                Target::Zero
            }
        })
    }

    /// Where the workspace defines thread-local `name` (its first definition), if it does.
    fn tls_definition(&self, name: &str) -> crate::error::Result<Option<(Obj, SecIdx, u64)>> {
        let Some(&(u, sec)) = self.index.definitions(name).first() else { return Ok(None) };
        let o = self.object(Obj::Unit(u))?;
        let s = o.sections[sec].symbols.iter().map(|&i| &o.symbols[i]).find(|s| s.name == name);
        Ok(s.map(|s| (Obj::Unit(u), sec, s.value)))
    }

    fn finish(
        self,
        hot: &HotPoints,
        copy: &HashSet<Loc>,
        changed: &HashSet<Loc>,
        detours: Vec<detours::Detour>,
    ) -> crate::error::Result<Plan<'a>> {
        let index = self.index;
        let base = self.input.base;
        let bias = base.load_bias;
        let mut installs = Vec::new();
        let mut chained = Vec::new();
        let refusals = self.refusals;
        let mut report = Report::default();
        for (&(obj, sec, piece), &id) in self.work.included() {
            let Obj::Unit(u) = obj else { continue };
            let node = (u, sec);
            if piece.is_some() {
                continue;
            }
            let mangled = index.name(node)?;
            let name = mangled.map(crate::map::read::demangle);
            if changed.contains(&node) {
                report.changed.extend(name.clone());
            } else if copy.contains(&node) {
                report.carried.extend(name.clone());
            } else if self.chains.carry.contains_key(&node) && mangled.is_some_and(|m| base.contains(m)) {
                // Leads to code that is not redirected, and the image has it: a copy, not new code.
                report.carried.extend(name.clone());
                if index.kind(node)? == SectionKind::Text {
                    chained.extend(name.clone());
                }
            }
            // In place only a hot `async fn`'s entry is switched (through its slot).
            if self.input.mode == Mode::InPlace
                && !matches!(hot.roots.get(&node), Some(Dispatch::Entry { .. }))
            {
                continue;
            }
            if let Some(dispatch) = hot.roots.get(&node) {
                let original = |n: Loc| -> crate::error::Result<_> {
                    Ok(index.name(n)?.and_then(|s| base.lookup(s)).map(|(s, _)| s))
                };
                let install = match *dispatch {
                    Dispatch::Slot { slot } | Dispatch::Entry { slot } => {
                        original(slot)?.map(|s| Install::Slot(s.addr + bias))
                    }
                    Dispatch::Key { key } => original(key)?.map(|s| Install::Redirect(s.addr + bias)),
                    Dispatch::Call => original(node)?.map(|s| Install::Redirect(s.addr + bias)),
                };
                if let Some(install) = install {
                    installs.push((id, install));
                }
            }
        }
        for detours::Detour { at, mangled, entries, .. } in detours {
            let Some(id) = self.work.find(&(Obj::Unit(at.0), at.1, None)) else { continue };
            match entries {
                Ok(entries) => {
                    installs.extend(entries.into_iter().map(|at| (id, Install::Detour(at + bias))))
                }
                // Not fatal: the function's new code is in the patch, and every changed caller
                // calls it; callers that did not change keep the old version, which the status
                // line counts and a note names.
                Err(reason) => {
                    let symbol = crate::map::read::demangle(mangled);
                    // One entry per chunk; another function with the same path may have moved.
                    if let Some(i) = report.changed.iter().position(|c| *c == symbol) {
                        report.changed.remove(i);
                    }
                    report.not_redirected.push((symbol, reason.to_string()));
                }
            }
        }
        let mut new_data = Vec::new();
        for (id, chunk) in self.work.chunks().iter().enumerate() {
            for (name, _, _, _) in &chunk.symbols {
                let known = base.contains(name) || self.input.hello.data.iter().any(|e| &e.name == name);
                if !known {
                    report.added.push(crate::map::read::demangle(name));
                    if chunk.kind.is_writable_state() {
                        new_data.push((name.clone(), ChunkId::at(id)));
                    }
                }
            }
        }
        let new_tls = self.tls.into_entries();
        for t in &new_tls {
            report.added.push(crate::map::read::demangle(&t.name));
        }
        report.pulled = self.archives.into_names();
        let imports = self.imports.into_names();
        report.imports = imports.iter().map(|i| crate::map::read::demangle(i)).collect();
        let (eh_records, no_unwind) = self.unwind.finish();
        report.not_redirected.sort();
        report.not_redirected.dedup();
        // One note each for the first few, the program's own first; an edit of a type renames and
        // changes dozens of the standard library's instances over it: one line for the rest.
        let mut listed: Vec<&(String, String)> = report.not_redirected.iter().collect();
        listed.sort_by_key(|(f, _)| (!is_own_path(f), f.contains(" as "), f.as_str()));
        for (f, why) in listed.iter().take(NOTED) {
            report.notes.push(format!(
                "`{f}` changed but its entry cannot be redirected ({why}); code that did not change keeps calling its old version"
            ));
        }
        if listed.len() > NOTED {
            let rest: Vec<String> = listed[NOTED..].iter().map(|(f, _)| f.clone()).collect();
            report.notes.push(format!(
                "{} more changed functions cannot be redirected either ({}; the manifest gives each one's reason); code that did not change keeps calling their old versions",
                rest.len(),
                shown_list(&rest)
            ));
        }
        if !chained.is_empty() {
            chained.sort();
            chained.dedup();
            report.notes.push(format!(
                "new code reaches the new versions of what is not redirected through {} unchanged function{} carried into the patch ({})",
                chained.len(),
                if chained.len() == 1 { "" } else { "s" },
                shown_list(&chained)
            ));
        }
        for f in &no_unwind {
            report.notes.push(format!(
                "`{}` has no unwind info; a panic inside it aborts",
                crate::map::read::demangle(f)
            ));
        }
        for list in [&mut report.changed, &mut report.added, &mut report.carried, &mut report.pulled] {
            list.sort();
            list.dedup();
        }
        installs.sort_by_key(|&(id, i)| (i, id));
        let sources = (0..self.work.chunks().len())
            .map(|i| match self.work.source(ChunkId::at(i)) {
                Some((Obj::Unit(u), sec, None)) => Some((u, sec)),
                _ => None,
            })
            .collect();
        Ok(Plan {
            steps: Vec::new(),
            stats: Vec::new(),
            sources,
            chunks: self.work.into_chunks(),
            eh_records,
            imports,
            installs,
            new_data,
            new_tls,
            report,
            refusals,
        })
    }
}

impl Target {
    fn offset(self, by: i64) -> Target {
        match self {
            Target::Chunk(c, o) => Target::Chunk(c, (o as i64 + by) as u64),
            Target::Absolute(a) => Target::Absolute((a as i64 + by) as u64),
            Target::Tls(t) => Target::Tls((t as i64 + by) as u64),
            other => other,
        }
    }
}
