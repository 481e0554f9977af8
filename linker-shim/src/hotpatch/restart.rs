//! Restarting a running program into the build just linked, when that build cannot be patched
//! into it (a reason [`super`] reports as `Skipped`: a layout change of live values, `main`'s own
//! code, a hot function's signature, a `const` thread-local, a static's initial value, a
//! toolchain change) — or when the developer asks (`ipbp-ld restart PID`).
//!
//! It runs after the real linker has written the executable and the build is recorded (the new
//! process looks its build up when it calls `ipbp::init()`): the program is sent a `restart`
//! naming the executable and its build id, re-executes itself in place (same pid, same parent),
//! and the new build registers. The line says what was kept and how long it took:
//!
//! ```text
//!    Restarted app (pid 42) into the new build: <reason>; kept 1 listening socket, 1 state (8 bytes); running again 9 ms after the decision, 2.1 s after rustc called ipbp-ld
//! ```
//!
//! A program whose environment says `IPBP_RESTART=never`, one that cannot restart (the hooks
//! failed, `execve` failed) or a failed link keep their current code: the `Skipped` line says why.

use crate::error::{Context, Result};
use crate::status::{Status, Tone};
use crate::store::IpbpDir;
use ipbp::protocol::{Restart, RestartReply, Restarting, RESTART_OFF};
use ipbp::registry::{self, Registry};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the new build has, from `execve` to `ipbp::init()`.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// A process the build could not patch: restarted once the executable is written.
pub struct Pending {
    pub pid: u32,
    pub start_time: u64,
    pub program: String,
    pub reasons: Vec<String>,
}

/// Whether process `pid` restarts into builds that cannot be patched in: unless its environment
/// (as it started) says `IPBP_RESTART=never`. The program checks again when asked.
pub fn enabled_for(pid: u32) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { return true };
    !environ.split(|&b| b == 0).any(|kv| kv == b"IPBP_RESTART=never")
}

/// After the link: restarts every pending process into `output` (or, if the link failed, says
/// they keep their code, as before restarts existed).
pub fn after_link(
    pending: Vec<Pending>,
    linked: bool,
    output: &Path,
    called: Instant,
    dir: &IpbpDir,
    status: &mut Status,
) {
    if !linked {
        // No new executable: nothing to restart into.
        for p in &pending {
            skipped(status, p, dir, "");
        }
        return;
    }
    if pending.is_empty() {
        return;
    }
    let build_id = crate::map::read::read_build_id(output).map_err(|e| e.to_string());
    let registry = Registry::existing().map_err(|e| e.to_string());
    for p in pending {
        let outcome = match (&build_id, &registry) {
            (Ok(id), Ok(registry)) => restart(registry, &p, output, id),
            (Err(e), _) | (_, Err(e)) => Err(crate::err!("{e}")),
        };
        match outcome {
            Ok(done) => {
                let total = called.elapsed().as_secs_f64();
                let (tone, then) = match &done.running_after {
                    Ok(after) => (
                        Tone::Good,
                        format!(
                            "running again {} after the decision, {total:.1} s after rustc called ipbp-ld",
                            ms(*after)
                        ),
                    ),
                    Err(problem) => (Tone::Warn, problem.clone()),
                };
                status.line(
                    "Restarted",
                    tone,
                    &format!(
                        "{} (pid {}) into the new build: {}; kept {}; {then}",
                        p.program,
                        p.pid,
                        without_advice(&p.reasons[0]),
                        kept(&done.kept),
                    ),
                );
            }
            Err(e) if e.to_string() == RESTART_OFF => skipped(status, &p, dir, ""),
            Err(e) => {
                let e = e.to_string();
                let why = e.strip_prefix("could not restart: ").or(e.strip_prefix("not restarting: "));
                skipped(status, &p, dir, &format!("; it could not restart ({})", why.unwrap_or(&e)))
            }
        }
    }
}

/// A refusal's reason without its advice to restart (which just happened).
fn without_advice(reason: &str) -> &str {
    reason.trim_end_matches("; restart to use it").trim_end_matches(" (restart to use it)")
}

/// The `Skipped` line(s) of a process that keeps its current code.
pub fn skipped(status: &mut Status, p: &Pending, dir: &IpbpDir, why_not_restarted: &str) {
    let (first, more) = (&p.reasons[0], p.reasons.len() - 1);
    let extra =
        if more > 0 { format!(" (and {more} more, see {})", dir.log().display()) } else { String::new() };
    status.line(
        "Skipped",
        Tone::Bad,
        &format!(
            "{} (pid {}): {first}{extra}{why_not_restarted}; it keeps running its current code",
            p.program, p.pid
        ),
    );
    for r in p.reasons.iter().skip(1) {
        status.line("Skipped", Tone::Bad, r);
    }
}

/// What a restart achieved.
pub struct Restarted {
    pub kept: Restarting,
    /// From sending the request to the new build's registration (its `ipbp::init()`), or what
    /// became of the new build when it did not register (it was executed: the old code is gone).
    pub running_after: std::result::Result<Duration, String>,
}

/// Restarts process `p` into `exe` (build `build_id`) and waits until the new build registered.
pub fn restart(registry: &Registry, p: &Pending, exe: &Path, build_id: &str) -> Result<Restarted> {
    let _lock = registry.lock(p.pid).context("cannot lock the process")?;
    if registry::process_start_time(p.pid) != Some(p.start_time) {
        crate::bail!("it exited");
    }
    let sent = Instant::now();
    let request = Restart {
        build_id: build_id.to_string(),
        file: exe.to_path_buf(),
        all_listeners: takes_its_sockets_from_listenfd(registry, build_id),
        // A second less than ipbp-ld waits: the program gives up first, so it never restarts
        // after ipbp-ld said it keeps its code.
        budget_ms: Some(
            crate::deliver::RESTART_TIMEOUT.saturating_sub(Duration::from_secs(1)).as_millis() as u64
        ),
    };
    let kept = match crate::deliver::restart(registry, p.pid, request)? {
        RestartReply::Executed(kept) => kept,
        RestartReply::Failed(_, e) => crate::bail!("{e}"),
    };
    // The old image is gone (`execve` succeeded) and with it every patch it held; `execve` keeps
    // the pid and the start time, so the new image would inherit their directory — its records
    // (pins, homes, the builds patches were made from) describe code no longer there. Gone too.
    let _ = std::fs::remove_dir_all(IpbpDir::for_output(exe).process_patches(p.pid, p.start_time));
    // The program withdrew its registration before it answered `restarting`: the one awaited is
    // the new build's (the old image's would otherwise survive `execve`, which runs no exit
    // handler, and a restart into the same build would seem done at once).
    let deadline = sent + REGISTER_TIMEOUT;
    let running_after = loop {
        if registry.list().iter().any(|r| r.pid == p.pid && r.build_id == build_id) {
            break Ok(sent.elapsed());
        }
        if registry::process_start_time(p.pid) != Some(p.start_time) {
            break Err("the new build exited before it called ipbp::init()".to_string());
        }
        if Instant::now() >= deadline {
            break Err(format!(
                "the new build has not called ipbp::init() within {} s (later builds cannot patch it until it does)",
                REGISTER_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    Ok(Restarted { kept, running_after })
}

/// Whether the build takes its listening sockets from `LISTEN_FDS` with the `listenfd` crate (one
/// of its link inputs): then every listening socket is passed, not only those of
/// `ipbp::listener` (see the runtime's `restart/fds.rs`).
fn takes_its_sockets_from_listenfd(registry: &Registry, build_id: &str) -> bool {
    let Some(record) = registry.build(build_id) else { return false };
    std::fs::read_to_string(&record.inputs).is_ok_and(|list| list.contains("/liblistenfd-"))
}

/// `1 listening socket, 2 states (24 bytes)`, or `no socket or state`.
fn kept(k: &Restarting) -> String {
    let mut parts = Vec::new();
    if k.listeners > 0 {
        parts.push(format!("{} listening socket{}", k.listeners, if k.listeners == 1 { "" } else { "s" }));
    }
    if k.states > 0 {
        parts.push(format!(
            "{} state{} ({} bytes)",
            k.states,
            if k.states == 1 { "" } else { "s" },
            k.state_bytes
        ));
    }
    if k.listeners == 0 && k.states == 0 {
        parts.insert(0, "no socket or state".into());
    }
    if k.hooks_us >= 1000 {
        parts.push(format!("on_restart hooks {}", ms(Duration::from_micros(k.hooks_us))));
    }
    if k.safe_point_us > 0 {
        parts.push(format!("waited {} for its safe point", ms(Duration::from_micros(k.safe_point_us))));
    }
    parts.join(", ")
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// `ipbp-ld restart PID`: restarts a registered process into the newest build of its program
/// (the executable its build was linked to, as it is now), with no edit.
pub fn on_request(pid: u32) -> Result<(String, Tone)> {
    let registry = Registry::existing().map_err(|e| crate::err!("{e}"))?;
    let reg = registry
        .list()
        .into_iter()
        .find(|r| r.pid == pid && r.is_alive())
        .ok_or_else(|| crate::err!("no process {pid} is registered in {}", registry.root().display()))?;
    let build = registry
        .build(&reg.build_id)
        .ok_or_else(|| crate::err!("the build process {pid} runs ({}) is not recorded", reg.build_id))?;
    let exe: PathBuf = build.output;
    let build_id = crate::map::read::read_build_id(&exe)?;
    let program = super::program_name(&exe);
    let p = Pending { pid, start_time: reg.start_time, program: program.clone(), reasons: vec![] };
    let done = restart(&registry, &p, &exe, &build_id).map_err(|e| {
        if registry::process_start_time(pid) == Some(reg.start_time) {
            crate::err!("{e}; it keeps running its current code")
        } else {
            e
        }
    })?;
    let same = if build_id == reg.build_id { "the same build" } else { "the newest build" };
    let (then, tone) = match done.running_after {
        Ok(after) => (format!("running again {} after the decision", ms(after)), Tone::Good),
        Err(problem) => (problem, Tone::Warn),
    };
    let line =
        format!("{program} (pid {pid}) into {same}, {}; kept {}; {then}", exe.display(), kept(&done.kept));
    Ok((line, tone))
}
