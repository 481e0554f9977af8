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
//!
//! [`plan`] below is the stage in order. The resolver is the `Planner` (`planner.rs`: the chunks
//! and the loop over their relocations), where each target lives is `resolve.rs`, and
//! `report.rs` assembles the [`Plan`], its [`Report`] and the notes. In place, what it reads is
//! decided first: `detours.rs`, `chain.rs`, `pointers.rs`.

pub mod base;
mod chain;
mod detours;
pub(crate) mod entry;
pub mod graph;
mod imports;
mod planner;
mod pointers;
mod pull;
mod renamed;
mod report;
mod resolve;
mod tls;
mod unwind;
mod worklist;

#[cfg(test)]
mod tests;

use crate::diff::{DefKind, Diff};
use crate::objects::load::{Arena, ObjectArena};
use crate::objects::units::{Build, UnitId};
use crate::objects::{SecIdx, SectionKind};
use crate::store::inputs::Input;
use base::BaseImage;
use graph::{Dispatch, HotPoints, Index, Loc};
use ipbp::protocol::Hello;
use object::elf;
use planner::Planner;
use report::unreached_note;
pub use report::{Refusal, Report};
use std::collections::{HashMap, HashSet};

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
            DefKind::Function | DefKind::Constant => {
                changed_nodes.extend(nodes.iter().copied());
                // A lazy `thread_local!`'s initializer (std names it so): it runs once per thread,
                // on the thread's first use, so threads that used it keep their value.
                if let Some(tl) = pretty.strip_suffix("::__rust_std_internal_init_fn") {
                    notes.push(format!(
                        "the initializer of thread-local `{tl}` changed; threads that used it keep their value, threads that use it first from now on get the new one"
                    ));
                }
            }
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
    let mut copy = copy;
    let mut detours = match input.mode {
        Mode::InPlace => detours::decide(input, index, &copy, &changed_nodes, &signatures)?,
        Mode::HotPoints => Vec::new(),
    };
    // v0 names: the unchanged callers legacy names would have changed (see `renamed`).
    let layout_stale: HashSet<Loc> = detours.iter().filter(|d| d.layout).map(|d| d.at).collect();
    let promoted = renamed::promoted(index, input.layouts, &layout_stale, &changed_nodes)?;
    if !promoted.is_empty() {
        changed_nodes.extend(promoted.iter().copied());
        copy.extend(promoted.iter().copied());
        detours = detours::decide(input, index, &copy, &changed_nodes, &signatures)?;
    }
    clock.step("redirects");
    let stale: HashMap<Loc, Option<String>> = detours
        .iter()
        .filter_map(|d| {
            let why = d.entries.as_ref().err()?;
            Some((d.at, d.layout.then(|| why.to_string())))
        })
        .collect();
    // Whether callers of the function at `at` may hand it, or get back, a value of a changed type.
    let forwards = |at: Loc| -> crate::error::Result<bool> {
        let Some(mangled) = index.name(at)? else { return Ok(true) };
        let base_name = input.diff.base_name(mangled);
        let path = crate::map::read::demangle(base_name);
        Ok(signatures.forwards_with_receiver(&path, (base_name, mangled)).is_some())
    };
    let chains = chain::Chains::find(index, &stale.keys().copied().collect(), &changed_nodes, &forwards)?;
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
