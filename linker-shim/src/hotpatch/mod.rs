//! Stages 3–6 for every running process of the program being linked: diff its base build against
//! this one, plan, emit, deliver, and say what happened in one status line per process.
//!
//! Runs while the real linker writes the full build (the next `cargo run` needs it) and never
//! waits for it. Whatever goes wrong here is reported and leaves the link alone.

pub(crate) mod link_index;
mod manifest;

use crate::emit::{self, TlsLayout};
use crate::error::{Context, Result};
use crate::index::LinkIndex;
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
use std::collections::HashMap;
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
pub fn for_running_processes(
    called: Instant,
    output: &Path,
    inputs: &[Input],
    dir: &IpbpDir,
    status: &mut Status,
) {
    collect_patches_of_dead_processes(dir);
    let registry = match Registry::existing() {
        Ok(r) => r,
        Err(OpenError::Missing) => return,
        Err(e) => {
            status.warn_once("registry", &format!("{e}; running programs are not patched"));
            return;
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
    let reached: Vec<Result<Reached>> = std::thread::scope(|s| {
        let registry = &registry;
        let handles: Vec<_> = live.iter().map(|(reg, _)| s.spawn(move || reach(registry, reg))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(crate::err!("internal error while reaching it"))))
            .collect()
    });
    for ((reg, base), reached) in live.iter().zip(reached) {
        let outcome =
            reached.and_then(|r| patch_process(called, reg, base, r, inputs, dir, &program, &registry));
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
                let (first, more) = (&reasons[0], reasons.len() - 1);
                let extra = if more > 0 {
                    format!(" (and {more} more, see {})", dir.log().display())
                } else {
                    String::new()
                };
                status.line(
                    "Skipped",
                    Tone::Bad,
                    &format!(
                        "{program} (pid {}): {first}{extra}; it keeps running its current code",
                        reg.pid
                    ),
                );
                for r in reasons.iter().skip(1) {
                    status.line("Skipped", Tone::Bad, r);
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
    Answered { _lock: std::fs::File, hello: Hello },
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
        Ok(hello) => Ok(Reached::Answered { _lock: lock, hello }),
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

#[allow(clippy::too_many_arguments)]
fn patch_process(
    called: Instant,
    reg: &Registration,
    base_build: &Base,
    reached: Reached,
    inputs: &[Input],
    dir: &IpbpDir,
    program: &str,
    registry: &Registry,
) -> Result<Outcome> {
    let Reached::Answered { _lock, hello } = reached else { return Ok(Outcome::Stopped) };
    let t0 = Instant::now();
    let mut clock = Clock::new();
    clock.step("hello");
    if hello.build_id != reg.build_id {
        crate::bail!("the program reports build {}, its registration says {}", hello.build_id, reg.build_id);
    }
    let base_inputs = read_inputs_list(&base_build.inputs)
        .with_context(|| format!("the inputs of its build {} are gone (collected?)", reg.build_id))?;
    if let Some(lib) = units::toolchain_changed(&base_inputs, inputs) {
        return Ok(Outcome::Skipped {
            reasons: vec![format!("the Rust toolchain changed since it started ({} differs)", lib.display())],
            notes: vec![],
        });
    }
    let arena = Arena::default();
    let ws = Workspace::new();
    let exe = PathBuf::from(format!("/proc/{}/exe", reg.pid));
    let index_data = match base_index_file(&base_build.map_dir, &reg.build_id) {
        Some(path) => arena.map(&path)?,
        // A build recorded by an older ipbp-ld, or whose index was lost: build it now, and keep it
        // for the next patch of this process.
        None => {
            let bytes = link_index::build(&arena, Some(&exe), &base_inputs, &ws, true)?;
            let path = crate::store::index_path_in(&base_build.map_dir, &reg.build_id);
            let _ = crate::store::write_atomically(&path, |out| out.write_all(&bytes));
            arena.keep(bytes)
        }
    };
    let base_index =
        LinkIndex::parse(index_data).map_err(|e| crate::err!("the base build's link index: {e}"))?;
    let base = Build::from_index(&arena, &base_index, &base_inputs, true)?;
    let current = Build::current(&arena, inputs, &base_inputs, &base_index, &ws)?;
    clock.step("load units");
    let image = BaseImage::read(&arena, &exe, hello.load_bias, base_index)?;
    clock.step("base image");
    if image.build_id != reg.build_id {
        crate::bail!("its executable has build id {}, not {}", image.build_id, reg.build_id);
    }
    let index = plan::graph::Index::new(&current, Some(&base_index))?;
    clock.step("index");
    let d = diff::diff(&base, &current, &|n| index.defines(n))?;
    clock.step("diff");
    let mut layouts = crate::layout::guard(&base, &current, &d)?;
    clock.step("layouts");
    let t_diff = t0.elapsed();

    let mut notes = std::mem::take(&mut layouts.notes);
    let (reserve, block_tp_offset) = tls_facts(&image, &hello, &mut notes);
    let mode = plan::Mode::from_env();
    // Refused type-layout changes come after the plan's reasons, which name what the user edited
    // (a hot function's signature), and replace its reasons about the statics they name; a plan
    // that fails reports them alone.
    let plan = match plan::plan(
        &plan::Inputs {
            current: &current,
            base_build: &base,
            diff: &d,
            base: &image,
            hello: &hello,
            tls: TlsInfo { reserve },
            mode,
            layouts: &layouts.layouts,
            link_inputs: inputs,
            arena: &arena,
        },
        &index,
    ) {
        Ok(plan) => plan,
        Err(_) if !layouts.refusals.is_empty() => {
            return Ok(Outcome::Skipped { reasons: layouts.refusals, notes });
        }
        Err(e) => return Err(e),
    };
    let t_plan = t0.elapsed();
    clock.absorb(&plan.steps);
    if layouts.refusals.is_empty() {
        // (Otherwise a note that a static's initial value changed would contradict the refusal.)
        notes.extend(plan.report.notes.iter().cloned());
    }
    if !plan.refusals.is_empty() || !layouts.refusals.is_empty() {
        let plan_reasons = plan.refusals.iter().filter(|r| !layouts.explains(&r.symbol));
        let reasons = plan_reasons.map(|r| r.reason.clone()).chain(layouts.refusals.clone()).collect();
        return Ok(Outcome::Skipped { reasons, notes });
    }
    let nothing_new = plan.chunks.is_empty();
    if nothing_new && hello.slots.is_empty() && hello.redirects.is_empty() && hello.detours.is_empty() {
        return Ok(Outcome::Unchanged { notes });
    }

    let generation = hello.generation + 1;
    let patch_dir = dir.patches().join(format!("{}-{}", reg.pid, reg.start_time));
    let mut patch_bytes = Vec::new();
    let (file, range, chunk_addr) = if nothing_new {
        (None, None, Vec::new())
    } else {
        let soname = format!("ipbp-{program}-{}-{generation}.so", reg.pid);
        let layout = emit::layout(&plan, &soname);
        let maps = deliver::address::mappings(reg.pid)?;
        let at = deliver::address::choose(&maps, image.span, layout.span)?;
        let emitted = emit::write(&plan, &layout, at, TlsLayout { block_tp_offset })?;
        let path = patch_dir.join(format!("patch-{generation}.so"));
        fs_err::create_dir_all(&patch_dir).context("cannot create the patch directory")?;
        write_read_only(&path, &emitted.bytes).context("cannot write the patch")?;
        patch_bytes = emitted.bytes;
        (Some(path), Some((at, emitted.span)), emitted.chunk_addr)
    };
    let t_emit = t0.elapsed();

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
    if mode == plan::Mode::InPlace && !hello.patches.is_empty() {
        // A function of an earlier patch is known there by the name of its build: the current
        // name, or the one the image has when the diff paired the two by path.
        let mut newest: HashMap<&str, u64> = HashMap::new();
        for (c, &at) in plan.chunks.iter().zip(&chunk_addr) {
            for (name, offset, _, _) in c.symbols.iter().filter(|s| s.3) {
                newest.insert(name.as_str(), at + offset);
                newest.insert(d.base_name(name), at + offset);
            }
        }
        let chain = deliver::chain::earlier_patches(&patch_dir, &hello.patches, &newest, &image);
        // An image entry this patch redirects itself is no place to go back to: go where it goes.
        let redirected: HashMap<u64, u64> = detours.iter().copied().collect();
        detours.extend(
            chain.detours.into_iter().map(|(at, to)| (at, redirected.get(&to).copied().unwrap_or(to))),
        );
        for f in chain.unfit {
            notes.push(format!(
                "`{f}` of an earlier patch cannot be redirected to its newest version; pointers to that copy keep its code"
            ));
        }
    }
    // One entry, one jump. A mangled name defined in two changed objects (a local instance two
    // codegen units each have, an object given twice) is the same code twice: either copy will do.
    detours.sort_unstable();
    detours.dedup_by_key(|d| d.0);
    let data: Vec<LedgerEntry> = plan
        .new_data
        .iter()
        .map(|(name, c)| LedgerEntry { addr: chunk_addr[*c], size: plan.chunks[*c].size, name: name.clone() })
        .collect();
    let summary = summarize(&plan.report, nothing_new);
    let request = Apply {
        build_id: reg.build_id.clone(),
        load_bias: hello.load_bias,
        generation: hello.generation,
        hash: file.is_some().then(|| xxhash_rust::xxh3::xxh3_128(&patch_bytes)),
        file: file.clone(),
        range,
        slots,
        redirects,
        detours,
        data,
        tls: plan.new_tls.clone(),
        summary: summary.clone(),
        changed: plan.report.changed.clone(),
        added: plan.report.added.clone(),
        not_redirected: plan.report.not_redirected.iter().map(|(f, _)| f.clone()).collect(),
    };
    let applied = deliver::apply(registry, reg.pid, request.clone())?;
    let (new_generation, load_us, install_us) = (applied.generation, applied.load_us, applied.install_us);
    let t_deliver = t0.elapsed();
    clock.step("emit and deliver");
    let since_called = |t: Instant| (t - called).as_secs_f64() * 1e3;
    let called_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() - called.elapsed().as_secs_f64());
    let timings = manifest::Timings {
        called_unix,
        started_ms: since_called(t0),
        applied_ms: since_called(t0 + t_deliver),
        steps: clock.steps.iter().map(|&(n, ms)| (n.to_string(), (ms * 100.0).round() / 100.0)).collect(),
        diff_ms: t_diff.as_secs_f64() * 1e3,
        plan_ms: (t_plan - t_diff).as_secs_f64() * 1e3,
        emit_ms: (t_emit - t_plan).as_secs_f64() * 1e3,
        deliver_ms: (t_deliver - t_emit).as_secs_f64() * 1e3,
        load_us,
        install_us,
        pause_us: applied.pause_us,
    };
    let _ =
        manifest::write(&patch_dir, program, reg, new_generation, &plan, &request, &chunk_addr, &d, &timings);
    Ok(Outcome::Patched { summary, load_us, install_us, deferred: applied.deferred, notes })
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

/// Where ipbp's TLS reserve is, and where the executable's TLS block sits relative to the thread
/// pointer — as the program measured it, checked against glibc's formula.
fn tls_facts(
    image: &BaseImage<'_>,
    hello: &ipbp::protocol::Hello,
    notes: &mut Vec<String>,
) -> (Option<(u64, u64)>, i64) {
    let formula = image.tls_tp_offset().unwrap_or(0);
    let Some(reserve) = image.tls_reserve() else { return (None, formula) };
    let Some((tpoff, size)) = hello.tls_reserve else { return (None, formula) };
    let measured = tpoff - reserve.addr as i64;
    if measured != formula {
        notes.push(format!(
            "the TLS block sits at tp{measured:+#x}, not at tp{formula:+#x} as computed from the executable; using the measured value"
        ));
    }
    (Some((reserve.addr, size)), measured)
}

/// The base build's link index, once the detached writer of that build is done with it.
fn base_index_file(map_dir: &Path, build_id: &str) -> Option<PathBuf> {
    crate::map::record::wait_for_writer(map_dir);
    let path = crate::store::index_path_in(map_dir, build_id);
    path.is_file().then_some(path)
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
