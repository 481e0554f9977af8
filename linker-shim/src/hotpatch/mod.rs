//! Stages 3–6 for every running process of the program being linked: diff its base build against
//! this one, plan, emit, deliver, and say what happened in one status line per process.
//!
//! Runs while the real linker writes the full build (the next `cargo run` needs it) and never
//! waits for it. Whatever goes wrong here is reported and leaves the link alone.

pub(crate) mod link_index;
mod manifest;
pub mod restart;
pub mod revert;
mod since;

use crate::emit::{self, TlsLayout};
use crate::error::{Context, Result};
use crate::index::LinkIndex;
use crate::layout::{Cache, Verdict};
use crate::map::record::read_inputs_list;
use crate::objects::load::Arena;
use crate::objects::units::{self, Build, Workspace};
use crate::plan::base::BaseImage;
use crate::plan::{self, Install, TlsInfo};
use crate::status::{Status, Tone};
use crate::store::inputs::Input;
use crate::store::{output_name, IpbpDir};
use crate::timing::Clock;
use crate::{deliver, diff};
use ipbp::protocol::{Apply, Hello, LedgerEntry};
use ipbp::registry::{self, OpenError, Registration, Registry};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Builds and delivers a patch to every live process of the program being linked.
/// `called` is when rustc started the shim: status lines say how long after it each process ran
/// its new code.
///
/// A process is this program's when this target directory recorded the build it runs
/// (`maps/<output>/<build-id>.inputs`): the same build linked in two target directories is patched
/// by builds in either. The processes are reached in parallel (lock, `hello`) with a short
/// timeout, so one that does not answer costs a build seconds once, not per process; one that is
/// stopped (a debugger, SIGSTOP) is reported at once. Patches are then built one after the other.
///
/// Returns what the rest of the link settles ([`Settle`]): the patches that went live, each still
/// locked (should the link fail, they return to the last good build: [`revert::link_failed`]), and
/// the processes this build cannot be patched into (once the executable is written they restart
/// into it: [`restart::after_link`], which reports them).
/// What is left to do for the running processes once the real linker's result is known.
#[derive(Default)]
pub struct Settle {
    /// Patches that went live while the linker ran, to undo should it fail.
    pub delivered: Vec<revert::Delivered>,
    /// Processes to restart into the new executable once it is written.
    pub pending: Vec<restart::Pending>,
}

pub fn for_running_processes(
    called: Instant,
    before: &mut Clock,
    output: &Path,
    inputs: &[Input],
    dir: &IpbpDir,
    status: &mut Status,
) -> Settle {
    let settle = patch_each(called, before, output, inputs, dir, status);
    // After the patches, which the developer waits for.
    collect_patches_of_dead_processes(dir);
    settle
}

fn patch_each(
    called: Instant,
    before: &mut Clock,
    output: &Path,
    inputs: &[Input],
    dir: &IpbpDir,
    status: &mut Status,
) -> Settle {
    let mut settle = Settle::default();
    let registry = match Registry::existing() {
        Ok(r) => r,
        Err(OpenError::Missing) => return settle,
        Err(e) => {
            status.warn_once("registry", &format!("{e}; running programs are not patched"));
            return settle;
        }
    };
    let program = program_name(output);
    let name = output_name(output);
    let mut live = Vec::new();
    for reg in registry.list() {
        if !reg.is_alive() {
            registry.remove_stale(reg.pid);
            continue;
        }
        let base = Base { map_dir: dir.map_dir(&name), inputs: dir.inputs_path(&name, &reg.build_id) };
        if base.inputs.is_file() {
            live.push((reg, base));
            continue;
        }
        let Some(build) = registry.build(&reg.build_id) else { continue };
        if build.output == output {
            live.push((reg, base)); // ours, but its inputs are gone: patching says so
        } else if output_name(&build.output) == name {
            let owner = IpbpDir::for_output(&build.output);
            let owner = owner.root.parent().unwrap_or(&owner.root);
            status.line(
                "Note",
                Tone::Warn,
                &format!(
                    "{program} (pid {}) runs a build of {}; builds there patch it",
                    reg.pid,
                    owner.display()
                ),
            );
        }
    }
    before.step("registry");
    let reached: Vec<Result<Reached>> = std::thread::scope(|s| {
        let registry = &registry;
        let handles: Vec<_> = live.iter().map(|(reg, _)| s.spawn(move || reach(registry, reg))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(crate::err!("internal error while reaching it"))))
            .collect()
    });
    before.step("hello");
    for ((reg, base), reached) in live.iter().zip(reached) {
        let outcome = reached.and_then(|r| {
            patch_process(
                called,
                &before.steps,
                reg,
                base,
                r,
                inputs,
                dir,
                &program,
                &registry,
                &mut settle.delivered,
            )
        });
        let notes = match outcome {
            Ok(Outcome::Patched { summary, load_us, install_us, deferred, notes }) => {
                let applied = (load_us + install_us) as f64 / 1000.0;
                let total = called.elapsed().as_secs_f64() * 1000.0;
                let when = if deferred {
                    format!("loaded in {applied:.1} ms, {total:.0} ms after rustc called ipbp-ld; it switches at the program's next safe point")
                } else {
                    format!("applied in {applied:.1} ms, {total:.0} ms after rustc called ipbp-ld")
                };
                status.line(
                    "Patched",
                    Tone::Good,
                    &format!("{program} (pid {}): {summary}, {when}", reg.pid),
                );
                notes
            }
            Ok(Outcome::Unchanged { notes }) => {
                status.line(
                    "Unchanged",
                    Tone::Good,
                    &format!("{program} (pid {}): no code changes reach it", reg.pid),
                );
                notes
            }
            Ok(Outcome::Stopped) => {
                status.line(
                    "Skipped",
                    Tone::Bad,
                    &format!("{program} (pid {}): stopped (in a debugger?); it keeps its code", reg.pid),
                );
                Vec::new()
            }
            Ok(Outcome::Skipped { reasons, notes }) => {
                let p = restart::Pending {
                    pid: reg.pid,
                    start_time: reg.start_time,
                    program: program.clone(),
                    reasons,
                };
                // A restart fixes every refusal: reported once the executable is written.
                if restart::enabled_for(reg.pid) {
                    settle.pending.push(p);
                } else {
                    restart::skipped(status, &p, dir, "");
                }
                notes
            }
            Err(e) => {
                status.line(
                    "Skipped",
                    Tone::Bad,
                    &format!("{program} (pid {}): {e}; it keeps running its current code", reg.pid),
                );
                Vec::new()
            }
        };
        for n in notes {
            status.line("Note", Tone::Warn, &n);
        }
    }
    settle
}

/// Where this target directory keeps the build a process runs: derived from the target directory
/// and the build id, never taken from a record.
struct Base {
    map_dir: PathBuf,
    inputs: PathBuf,
}

/// A process that answered: locked for this build, with what it said.
#[allow(clippy::large_enum_variant)] // one per running process, short-lived
enum Reached {
    Answered { lock: std::fs::File, hello: Hello },
    Stopped,
}

/// Locks process `reg.pid` against other builds and asks who it is — or notes that it is stopped
/// and cannot answer.
fn reach(registry: &Registry, reg: &Registration) -> Result<Reached> {
    if registry::is_stopped(reg.pid) {
        return Ok(Reached::Stopped);
    }
    let lock = registry.lock(reg.pid).context("cannot lock the process for patching")?;
    match deliver::hello(registry, reg.pid) {
        Ok(hello) => Ok(Reached::Answered { lock, hello }),
        Err(_) if registry::is_stopped(reg.pid) => Ok(Reached::Stopped),
        Err(e) => Err(e),
    }
}

enum Outcome {
    Patched { summary: String, load_us: u64, install_us: u64, deferred: bool, notes: Vec<String> },
    Unchanged { notes: Vec<String> },
    Skipped { reasons: Vec<String>, notes: Vec<String> },
    Stopped,
}

/// `app-1f2e3d4c5b6a7980` → `app`.
fn program_name(output: &Path) -> String {
    let name = output_name(output);
    match name.rsplit_once('-') {
        Some((stem, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            stem.to_string()
        }
        _ => name,
    }
}

/// One running process, through the stages: each step below returns its stage's result, and a
/// step that decides the outcome (nothing to do, refused) ends the patch there.
#[allow(clippy::too_many_arguments)]
fn patch_process(
    called: Instant,
    before: &[(&'static str, f64)],
    reg: &Registration,
    base_build: &Base,
    reached: Reached,
    inputs: &[Input],
    dir: &IpbpDir,
    program: &str,
    registry: &Registry,
    delivered: &mut Vec<revert::Delivered>,
) -> Result<Outcome> {
    let Reached::Answered { lock, hello } = reached else { return Ok(Outcome::Stopped) };
    let t0 = Instant::now();
    let mut clock = Clock::new();
    clock.step("hello");
    if hello.build_id != reg.build_id {
        crate::bail!("the program reports build {}, its registration says {}", hello.build_id, reg.build_id);
    }
    let arena = Arena::default();
    let loaded = match load(&arena, reg, &hello, base_build, inputs, &mut clock)? {
        Step::Next(loaded) => loaded,
        Step::Done(outcome) => return Ok(outcome),
    };
    let index = plan::graph::Index::new(&loaded.current, Some(&loaded.base_index))?;
    clock.step("index");
    let d = diff::diff(&loaded.base, &loaded.current, &|n| index.defines(n))?;
    clock.step("diff");
    let guard_cpu = crate::timing::thread_cpu();
    let mut layouts = crate::layout::guard(&loaded.base, &loaded.current, &d, &Cache::at(dir.layouts()))?;
    let patch_dir = dir.process_patches(reg.pid, reg.start_time);
    since::since_newest_patch(&mut layouts, &hello, &patch_dir, (&loaded, &d), dir);
    let guard_cpu = crate::timing::thread_cpu().saturating_sub(guard_cpu);
    clock.step("layouts");
    let t_diff = t0.elapsed();

    let mut notes = std::mem::take(&mut layouts.notes);
    let tls = tls_facts(&loaded.image, &hello, &mut notes);
    let mode = plan::Mode::from_env();
    let plan_inputs = plan::Inputs {
        current: &loaded.current,
        base_build: &loaded.base,
        diff: &d,
        base: &loaded.image,
        hello: &hello,
        tls: TlsInfo { reserve: tls.reserve },
        mode,
        layouts: &layouts.layouts,
        link_inputs: inputs,
        arena: &arena,
    };
    let plan = match make_plan(&plan_inputs, &index, &layouts, &mut notes)? {
        Step::Next(plan) => plan,
        Step::Done(outcome) => return Ok(outcome),
    };
    let t_plan = t0.elapsed();
    clock.absorb(&plan.steps);
    // `main`'s new code only runs after a restart: when the program restarts, that is the
    // outcome (the restart brings every other change too); otherwise it is patched, with a note.
    let refused = !plan.refusals.is_empty() || !layouts.refusals.is_empty();
    if !refused && !plan.report.running.is_empty() && restart::enabled_for(reg.pid) {
        notes.extend(plan.report.notes.iter().cloned());
        let reasons = plan
            .report
            .running
            .iter()
            .map(|f| format!("`{f}` changed; it is running and is not called again"))
            .collect();
        notes.retain(|n| !n.ends_with("so its new code runs after a restart"));
        return Ok(Outcome::Skipped { reasons, notes });
    }
    if let Some(outcome) = verdict(&plan, &layouts, &hello, &mut notes) {
        return Ok(outcome);
    }

    let generation = hello.generation + 1;
    let emitted =
        emit_patch(&plan, reg, &loaded, (generation, &hello.patches), &patch_dir, tls.block_tp_offset)?;
    let t_emit = t0.elapsed();
    if let Some(file) = &emitted.file {
        // The build this patch is made from, for the next patch's layout check — written before
        // the apply: a patch loaded but never installed is listed by the process too.
        let units: Vec<(&str, u128)> = (d.changed_units_current.iter())
            .map(|&u| (loaded.current.units[u].key.as_ref(), loaded.current.units[u].hash))
            .collect();
        let crates = crate::layout::workspace_crates(&loaded.base, &loaded.current);
        let types = layouts
            .digests
            .take()
            .unwrap_or_else(|| crate::layout::since::digests(&layouts.layouts.new, &crates));
        let closures = (&layouts.layouts.closures.envs, &layouts.layouts.closures.added);
        let _ = crate::layout::since::record(file, &units, (&types, closures), &crates);
    }

    let mut installs = installs(
        &plan,
        &emitted.chunk_addr,
        mode,
        &hello,
        &patch_dir,
        (&d, &layouts.kept),
        &loaded.image,
        &mut notes,
    );
    let summary = summarize(&plan.report, plan.chunks.is_empty());
    let homes = installs.homes.take();
    let request = request(reg, &hello, &plan, &emitted, installs, &summary);
    let applied = deliver::apply(registry, reg.pid, request.clone())?;
    // A link that fails undoes the patch, and its pins with it (a pin that outlived its patch
    // would keep a copy on old code after later edits).
    let mut pins_before = None;
    if let Some((homes, pins, before)) = homes {
        pins_before = Some((patch_dir.clone(), before));
        let _ = fs_err::create_dir_all(&patch_dir);
        let _ = homes.write(&patch_dir);
        let _ = pins.write(&patch_dir);
    }
    // Live now, while the real linker may still fail: keep what undoes it, and the lock.
    delivered.push(revert::Delivered {
        program: program.to_string(),
        pid: reg.pid,
        _lock: lock,
        undo: revert::undo_request(&hello, &request.settle, applied.generation),
        pins_before,
    });
    let t_deliver = t0.elapsed();
    clock.step("emit and deliver");
    let timings = manifest::Timings::new(
        called,
        manifest::Milestones {
            started: t0,
            diff: t_diff,
            plan: t_plan,
            emit: t_emit,
            deliver: t_deliver,
            guard_cpu,
        },
        before,
        &clock,
        &applied,
    );
    let _ = manifest::write(
        &patch_dir,
        program,
        reg,
        applied.generation,
        &plan,
        &request,
        &emitted.chunk_addr,
        &d,
        &timings,
    );
    Ok(Outcome::Patched {
        summary,
        load_us: applied.load_us,
        install_us: applied.install_us,
        deferred: applied.deferred,
        notes,
    })
}

/// A step of [`patch_process`] either hands its result on or settles the outcome.
enum Step<T> {
    Next(T),
    Done(Outcome),
}

/// The two builds' workspace units and the running image, read through the base build's link
/// index.
struct Loaded<'a> {
    base_index: LinkIndex<'a>,
    base: Build<'a>,
    current: Build<'a>,
    image: BaseImage<'a>,
}

/// Reads what the diff compares: the base build's input list and link index (built now if it
/// has none), the units of both builds, and the executable the process runs. A process started
/// from another toolchain's build is not patched.
fn load<'a>(
    arena: &'a Arena,
    reg: &Registration,
    hello: &Hello,
    base_build: &Base,
    inputs: &[Input],
    clock: &mut Clock,
) -> Result<Step<Loaded<'a>>> {
    let base_inputs = read_inputs_list(&base_build.inputs)
        .with_context(|| format!("the inputs of its build {} are gone (collected?)", reg.build_id))?;
    if let Some(lib) = units::toolchain_changed(&base_inputs, inputs) {
        return Ok(Step::Done(Outcome::Skipped {
            reasons: vec![format!("the Rust toolchain changed since it started ({} differs)", lib.display())],
            notes: vec![],
        }));
    }
    let ws = Workspace::new();
    let exe = PathBuf::from(format!("/proc/{}/exe", reg.pid));
    let base_index = base_index(arena, base_build, &reg.build_id, &exe, &base_inputs, &ws)?;
    let base = Build::from_index(arena, &base_index, &base_inputs, true)?;
    let current = Build::current(arena, inputs, &base_inputs, &base_index, &ws)?;
    clock.step("load units");
    let image = BaseImage::read(arena, &exe, hello.load_bias, base_index)?;
    clock.step("base image");
    if image.build_id != reg.build_id {
        crate::bail!("its executable has build id {}, not {}", image.build_id, reg.build_id);
    }
    Ok(Step::Next(Loaded { base_index, base, current, image }))
}

/// The base build's link index: its file once the detached writer of that build is done with
/// it, or — for a build recorded by an older ipbp-ld, or whose index was lost — built now and
/// kept for the next patch of this process.
fn base_index<'a>(
    arena: &'a Arena,
    base_build: &Base,
    build_id: &str,
    exe: &Path,
    base_inputs: &[Input],
    ws: &Workspace,
) -> Result<LinkIndex<'a>> {
    crate::map::record::wait_for_writer(&base_build.map_dir);
    let path = crate::store::index_path_in(&base_build.map_dir, build_id);
    let data = if path.is_file() {
        arena.map(&path)?
    } else {
        let bytes = link_index::build(arena, Some(exe), base_inputs, ws, true)?;
        let _ = crate::store::write_atomically(&path, |out| out.write_all(&bytes));
        arena.keep(bytes)?
    };
    LinkIndex::parse(data).context("the base build's link index")
}

/// Plans the patch. Refused type-layout changes come after the plan's reasons, which name what
/// the user edited (a hot function's signature), and before those about a path a new value could
/// take to old code; they replace its reasons about the statics they name; a plan that fails
/// reports them alone.
fn make_plan<'a>(
    inputs: &plan::Inputs<'_, 'a>,
    index: &plan::graph::Index<'_, 'a>,
    layouts: &Verdict,
    notes: &mut Vec<String>,
) -> Result<Step<plan::Plan<'a>>> {
    match plan::plan(inputs, index) {
        Ok(plan) => Ok(Step::Next(plan)),
        Err(_) if !layouts.refusals.is_empty() => Ok(Step::Done(Outcome::Skipped {
            reasons: layouts.refusals.clone(),
            notes: std::mem::take(notes),
        })),
        Err(e) => Err(e),
    }
}

/// Whether a plan ends the patch: refused (by the plan or the layout guard), or nothing to send.
/// Adds the plan's notes unless the guard refused (a note that a static's initial value changed
/// would contradict the refusal).
fn verdict(plan: &plan::Plan, layouts: &Verdict, hello: &Hello, notes: &mut Vec<String>) -> Option<Outcome> {
    if layouts.refusals.is_empty() {
        notes.extend(plan.report.notes.iter().cloned());
    }
    if !plan.refusals.is_empty() || !layouts.refusals.is_empty() {
        let plan_reasons = plan.refusals.iter().filter(|r| !layouts.explains(&r.symbol));
        let (secondary, first): (Vec<_>, Vec<_>) = plan_reasons.partition(|r| r.secondary);
        let reasons = (first.into_iter().map(|r| r.reason.clone()))
            .chain(layouts.refusals.clone())
            .chain(secondary.into_iter().map(|r| r.reason.clone()))
            .collect();
        return Some(Outcome::Skipped { reasons, notes: std::mem::take(notes) });
    }
    let nothing_new = plan.chunks.is_empty();
    if nothing_new && hello.slots.is_empty() && hello.redirects.is_empty() && hello.detours.is_empty() {
        return Some(Outcome::Unchanged { notes: std::mem::take(notes) });
    }
    None
}

/// The patch file of one generation, placed in the process's address space.
struct Emitted {
    /// `None` for a patch that only reverts (no new code).
    file: Option<PathBuf>,
    /// Start and memory span.
    range: Option<(u64, u64)>,
    /// xxh3-128 of the file.
    hash: Option<u128>,
    /// Absolute address of every chunk of the plan.
    chunk_addr: Vec<u64>,
}

/// Lays the patch out, picks its address in the process, writes it (read-only) under
/// `patch_dir`. A plan without chunks (back to the base code) writes nothing.
fn emit_patch(
    plan: &plan::Plan,
    reg: &Registration,
    builds: &Loaded<'_>,
    (generation, loaded): (u64, &[(u64, u64, PathBuf)]),
    patch_dir: &Path,
    block_tp_offset: i64,
) -> Result<Emitted> {
    if plan.chunks.is_empty() {
        return Ok(Emitted { file: None, range: None, hash: None, chunk_addr: Vec::new() });
    }
    let layout = emit::layout(plan);
    let lowest = loaded.iter().map(|p| p.0).min();
    let at = deliver::address::place(reg.pid, builds.image.span, layout.span, lowest)?;
    // The changed units' DWARF, so debuggers see the new code (ARCHITECTURE.md, *Debuggers*).
    let debug = emit::debug::sections(plan, &layout.chunk_offset, &builds.current);
    let emitted = emit::write_with_debug(plan, &layout, at, TlsLayout { block_tp_offset }, debug)?;
    // The process's loader names each loaded patch by its file (debuggers and symbolizers open
    // it): an earlier attempt at this generation that was loaded but not installed keeps its file.
    let path = std::iter::once(patch_dir.join(format!("patch-{generation}.so")))
        .chain((1..).map(|n| patch_dir.join(format!("patch-{generation}.{n}.so"))))
        .find(|p| !loaded.iter().any(|(_, _, l)| l == p))
        .expect("an unbounded sequence of names");
    fs_err::create_dir_all(patch_dir).context("cannot create the patch directory")?;
    write_read_only(&path, &emitted.bytes).context("cannot write the patch")?;
    Ok(Emitted {
        file: Some(path),
        range: Some((at, emitted.span)),
        hash: Some(xxhash_rust::xxh3::xxh3_128(&emitted.bytes)),
        chunk_addr: emitted.chunk_addr,
    })
}

/// Where the process switches to the patch: `(at, to)` pairs per kind, and the new statics.
struct Installs {
    slots: Vec<(u64, u64)>,
    redirects: Vec<(u64, u64)>,
    detours: Vec<(u64, u64)>,
    /// Functions of earlier patches sent on for good, and the patches they belong to.
    settle: Vec<(u64, u64)>,
    settled_patches: Vec<u64>,
    data: Vec<LedgerEntry>,
    /// The homes of functions patches added, and the pinned copies, to record once the patch is
    /// applied; and the pinned copies before it, put back if it is undone (its link fails).
    homes: Option<(deliver::chain::Homes, deliver::chain::Pins, deliver::chain::Pins)>,
}

/// Maps the plan's installs to the emitted chunks' addresses; in place, also sends the functions
/// of earlier patches on to their newest version (notes for those that cannot be).
#[allow(clippy::too_many_arguments)]
fn installs(
    plan: &plan::Plan,
    chunk_addr: &[u64],
    mode: plan::Mode,
    hello: &Hello,
    patch_dir: &Path,
    (d, kept_since): (&diff::Diff, &HashSet<String>),
    image: &BaseImage<'_>,
    notes: &mut Vec<String>,
) -> Installs {
    let mut slots = Vec::new();
    let mut redirects = Vec::new();
    let mut detours = Vec::new();
    for &(chunk, install) in &plan.installs {
        match install {
            Install::Slot(at) => slots.push((at, chunk_addr[chunk])),
            Install::Redirect(key) => redirects.push((key, chunk_addr[chunk])),
            Install::Detour(entry) => detours.push((entry, chunk_addr[chunk])),
        }
    }
    let mut settle = Vec::new();
    // Hot points never send earlier patches' functions on: the process need only list the patch
    // it runs now, which this one's undo returns to if the link fails (`revert.rs`), so the check
    // against the running patch's build (`since.rs`) finds it there.
    let newest = hello.patches.len().saturating_sub(1);
    let mut settled_patches: Vec<u64> = hello.patches[..newest].iter().map(|p| p.0).collect();
    let mut homes = None;
    if mode == plan::Mode::InPlace {
        // A function of an earlier patch is known there by the name of its build: the current
        // name, or the one the image has when the diff paired the two by path.
        let mut newest: HashMap<&str, u64> = HashMap::new();
        for (c, &at) in plan.chunks.iter().zip(chunk_addr) {
            for (name, offset, _, _) in c.symbols.iter().filter(|s| s.3) {
                newest.insert(name.as_str(), at + offset);
                newest.insert(d.base_name(name), at + offset);
            }
        }
        let live: HashSet<u64> = hello.detours.iter().map(|d| d.0).collect();
        let known = deliver::chain::Homes::read(patch_dir, &live);
        let redirected: HashSet<u64> = detours.iter().map(|d| d.0).collect();
        let listed = (hello.patches.as_slice(), hello.running_patch());
        let kept: HashSet<&str> =
            plan.report.kept_for_layout.iter().chain(kept_since).map(String::as_str).collect();
        let pins = deliver::chain::Pins::read(patch_dir);
        let pins_before = pins.clone();
        let chain = deliver::chain::earlier_patches(
            patch_dir,
            listed,
            (known, pins),
            &newest,
            &redirected,
            &kept,
            image,
        );
        detours.extend(chain.live);
        settle = chain.settle;
        settled_patches = chain.done;
        for f in chain.unfit {
            notes.push(format!(
                "`{f}` of an earlier patch cannot be redirected to its newest version; pointers to that copy keep its code"
            ));
        }
        homes = Some((chain.homes, chain.pins, pins_before));
    }
    // One entry, one jump. A mangled name defined in two changed objects (a local instance two
    // codegen units each have, an object given twice) is the same code twice: either copy will do.
    detours.sort_unstable();
    detours.dedup_by_key(|d| d.0);
    let data = plan
        .new_data
        .iter()
        .map(|(name, c)| LedgerEntry { addr: chunk_addr[*c], size: plan.chunks[*c].size, name: name.clone() })
        .collect();
    Installs { slots, redirects, detours, settle, settled_patches, data, homes }
}

/// The request that asks the process to load and install the patch.
fn request(
    reg: &Registration,
    hello: &Hello,
    plan: &plan::Plan,
    emitted: &Emitted,
    installs: Installs,
    summary: &str,
) -> Apply {
    let Installs { slots, redirects, detours, settle, settled_patches, data, homes: _ } = installs;
    Apply {
        build_id: reg.build_id.clone(),
        load_bias: hello.load_bias,
        generation: hello.generation,
        hash: emitted.hash,
        file: emitted.file.clone(),
        range: emitted.range,
        slots,
        redirects,
        detours,
        settle,
        settled_patches,
        data,
        tls: plan.new_tls.clone(),
        summary: summary.to_string(),
        changed: plan.report.changed.clone(),
        added: plan.report.added.clone(),
        not_redirected: plan.report.not_redirected.iter().map(|(f, _)| f.clone()).collect(),
    }
}

fn summarize(report: &plan::Report, revert_only: bool) -> String {
    if revert_only {
        return "back to the code it started with".into();
    }
    let mut parts = vec![format!("{} changed", report.changed.len())];
    if !report.added.is_empty() {
        parts.push(format!("{} added", report.added.len()));
    }
    if !report.carried.is_empty() {
        parts.push(format!("{} carried", report.carried.len()));
    }
    if !report.not_redirected.is_empty() {
        parts.push(format!("{} not redirected (see note)", report.not_redirected.len()));
    }
    parts.join(", ")
}

/// Where ipbp's TLS reserve is (offset in the executable's TLS block, size), and where that
/// block sits relative to the thread pointer.
struct TlsFacts {
    reserve: Option<(u64, u64)>,
    block_tp_offset: i64,
}

/// The TLS facts as the program measured them, checked against glibc's formula.
fn tls_facts(image: &BaseImage<'_>, hello: &Hello, notes: &mut Vec<String>) -> TlsFacts {
    let formula = image.tls_tp_offset().unwrap_or(0);
    let unreserved = TlsFacts { reserve: None, block_tp_offset: formula };
    let Some(reserve) = image.tls_reserve() else { return unreserved };
    let Some((tpoff, size)) = hello.tls_reserve else { return unreserved };
    let measured = tpoff - reserve.addr as i64;
    if measured != formula {
        notes.push(format!(
            "the TLS block sits at tp{measured:+#x}, not at tp{formula:+#x} as computed from the executable; using the measured value"
        ));
    }
    TlsFacts { reserve: Some((reserve.addr, size)), block_tp_offset: measured }
}

/// Writes a patch file, mode 0400: the process loads a sealed copy of it, and nobody should edit
/// the file in the belief that it changes running code. A file of an earlier, refused attempt at
/// the same generation is replaced.
fn write_read_only(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    file.write_all(bytes)
}

/// Patches of processes that are gone are no longer needed.
fn collect_patches_of_dead_processes(dir: &IpbpDir) {
    let Ok(entries) = std::fs::read_dir(dir.patches()) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((pid, start)) = name.split_once('-') else { continue };
        let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else { continue };
        if registry::process_start_time(pid) != Some(start) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
