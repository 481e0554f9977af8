//! `patch-<n>.json` next to each patch library: what it holds, what it changed in the process,
//! and how long each stage took. For people and tools; the program itself gets the `apply` message.

use crate::diff::Diff;
use crate::plan::{Plan, Report};
use crate::timing::Clock;
use ipbp::protocol::{Applied, Apply, LedgerEntry};
use ipbp::registry::Registration;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Serialize)]
pub struct Timings {
    /// When rustc called ipbp-ld (Unix time, seconds), so that a benchmark can line the patch up
    /// with its own clock.
    pub called_unix: f64,
    /// Milliseconds after rustc called ipbp-ld: when work on this process's patch began (the real
    /// linker is running by then), and when the process reported the patch applied.
    pub started_ms: f64,
    pub applied_ms: f64,
    /// Milliseconds per step before work on this process began (reading the arguments, starting
    /// the real linker, fingerprinting the inputs, the registry, `hello`), in order: `started_ms` in
    /// detail. The first patch of a link has them all; the process's own work is in `steps`.
    pub before_steps: Vec<(String, f64)>,
    /// Milliseconds per step, in order.
    pub steps: Vec<(String, f64)>,
    pub diff_ms: f64,
    /// CPU time of the layout guard (the `layouts` step, which is wall time).
    pub guard_cpu_ms: f64,
    pub plan_ms: f64,
    pub emit_ms: f64,
    pub deliver_ms: f64,
    /// In the process: checks and loading the library; storing into slots and the table.
    pub load_us: u64,
    pub install_us: u64,
    /// From the start of the install until every call of a changed function runs new code.
    pub live_us: u64,
    /// The longest time the install kept any other thread of the program from its own code.
    pub pause_us: u64,
}

/// When the work on one process's patch began, and how long after that each stage was done.
pub struct Milestones {
    pub started: Instant,
    pub diff: Duration,
    pub plan: Duration,
    pub emit: Duration,
    pub deliver: Duration,
    /// CPU time the layout guard took.
    pub guard_cpu: Duration,
}

impl Timings {
    /// `called` is when rustc started the shim; `clock` holds the named steps, `applied` what
    /// the process measured.
    pub fn new(
        called: Instant,
        m: Milestones,
        before: &[(&'static str, f64)],
        clock: &Clock,
        applied: &Applied,
    ) -> Timings {
        let rounded = |steps: &[(&'static str, f64)]| {
            steps.iter().map(|&(n, ms)| (n.to_string(), (ms * 100.0).round() / 100.0)).collect()
        };
        let since_called = |t: Instant| (t - called).as_secs_f64() * 1e3;
        let called_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() - called.elapsed().as_secs_f64());
        Timings {
            called_unix,
            started_ms: since_called(m.started),
            applied_ms: since_called(m.started + m.deliver),
            before_steps: rounded(before),
            steps: rounded(&clock.steps),
            diff_ms: m.diff.as_secs_f64() * 1e3,
            guard_cpu_ms: m.guard_cpu.as_secs_f64() * 1e3,
            plan_ms: (m.plan - m.diff).as_secs_f64() * 1e3,
            emit_ms: (m.emit - m.plan).as_secs_f64() * 1e3,
            deliver_ms: (m.deliver - m.emit).as_secs_f64() * 1e3,
            load_us: applied.load_us,
            install_us: applied.install_us,
            live_us: applied.live_us,
            pause_us: applied.pause_us,
        }
    }
}

#[derive(Serialize)]
struct Manifest<'a> {
    program: &'a str,
    pid: u32,
    build_id: &'a str,
    generation: u64,
    file: Option<&'a Path>,
    base: Option<String>,
    span: Option<u64>,
    file_size: Option<u64>,
    workspace_objects: usize,
    changed_objects: usize,
    /// What planning looked at (hot points, sections and units reached).
    planning: Vec<(&'static str, usize)>,
    report: &'a Report,
    /// Old → new: hot slots, redirect-table keys and detoured entries, with the function now
    /// called.
    installs: Vec<InstallRecord>,
    chunks: Vec<ChunkRecord>,
    new_statics: Vec<Entry>,
    /// Offsets inside ipbp's TLS reserve.
    new_thread_locals: Vec<Entry>,
    timings: &'a Timings,
}

#[derive(Serialize)]
struct Entry {
    name: String,
    at: String,
    size: u64,
}

fn entries(list: &[LedgerEntry]) -> Vec<Entry> {
    list.iter()
        .map(|e| Entry {
            name: crate::map::read::demangle(&e.name),
            at: format!("{:#x}", e.addr),
            size: e.size,
        })
        .collect()
}

#[derive(Serialize)]
struct InstallRecord {
    kind: &'static str,
    at: String,
    new: String,
    function: String,
}

#[derive(Serialize)]
struct ChunkRecord {
    name: String,
    kind: String,
    addr: String,
    size: u64,
    relocations: usize,
}

#[allow(clippy::too_many_arguments)]
pub fn write(
    dir: &Path,
    program: &str,
    reg: &Registration,
    generation: u64,
    plan: &Plan,
    request: &Apply,
    chunk_addr: &[u64],
    diff: &Diff,
    timings: &Timings,
) -> std::io::Result<()> {
    let name_at = |addr: u64| {
        chunk_addr
            .iter()
            .position(|&a| a == addr)
            .map(|c| crate::map::read::demangle(&plan.chunks[c].name))
            .unwrap_or_default()
    };
    let installs = request
        .slots
        .iter()
        .map(|&(at, new)| ("slot", at, new))
        .chain(request.redirects.iter().map(|&(at, new)| ("redirect", at, new)))
        .chain(request.detours.iter().map(|&(at, new)| ("detour", at, new)))
        .chain(request.settle.iter().map(|&(at, new)| ("settle", at, new)))
        .map(|(kind, at, new)| InstallRecord {
            kind,
            at: format!("{at:#x}"),
            new: format!("{new:#x}"),
            function: name_at(new),
        })
        .collect();
    let chunks = plan
        .chunks
        .iter()
        .enumerate()
        .map(|(i, c)| ChunkRecord {
            name: crate::map::read::demangle(&c.name),
            kind: format!("{:?}", c.kind),
            addr: chunk_addr.get(i).map(|a| format!("{a:#x}")).unwrap_or_default(),
            size: c.size,
            relocations: c.relocs.len(),
        })
        .collect();
    let file_size = request.file.as_ref().and_then(|f| std::fs::metadata(f).ok()).map(|m| m.len());
    let m = Manifest {
        program,
        pid: reg.pid,
        build_id: &reg.build_id,
        generation,
        file: request.file.as_deref(),
        base: request.range.map(|r| format!("{:#x}", r.0)),
        span: request.range.map(|r| r.1),
        file_size,
        workspace_objects: diff.units_total,
        changed_objects: diff.units_changed,
        planning: plan.stats.clone(),
        report: &plan.report,
        installs,
        chunks,
        new_statics: entries(&request.data),
        new_thread_locals: entries(&request.tls),
        timings,
    };
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_string_pretty(&m).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(format!("patch-{generation}.json")), text)
}
