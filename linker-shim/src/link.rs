//! Linker mode: what `ipbp-ld` does when rustc calls it.
//!
//! 1. Read the command line ([`capture::args`]); anything that is not an executable (and build
//!    scripts, rustdoc's doctests) is handed to the real linker with `exec` — zero overhead, exact
//!    pass-through.
//! 2. Start the real linker. While it runs, if the executable links the `ipbp` runtime (its
//!    [`Role`]), fingerprint and keep the inputs ([`capture::inputs`]) and build a patch for every
//!    running process of this program ([`crate::hotpatch`]).
//! 3. When the link succeeded, record the build ([`crate::map`]), then restart the processes the
//!    build could not be patched into ([`crate::hotpatch::restart`]). When it failed, return every
//!    process patched in step 2 to its last good build ([`crate::hotpatch::revert`]): the program
//!    never runs code of a build that produced no executable.
//! 4. Exit exactly as the real linker did. Our own failures are one warning line each; they never
//!    change the result of the link.

use crate::capture::args::{LinkCommand, OutputKind};
use crate::capture::forward::{exit_like, RealLinker};
use crate::capture::inputs;
use crate::capture::role::{is_rustdoc_temp, Role};
use crate::error::Context;
use crate::map::record;
use crate::status::Status;
use crate::store::{output_name, IpbpDir, StoreLease};
use ipbp::registry::{self, BuildRecord, Registry};
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::Path;

/// Skips recording (the link is forwarded untouched), for measuring pure forwarding cost.
pub const DISABLE_ENV: &str = "IPBP_DISABLE";

pub fn run(args: Vec<OsString>) -> ! {
    let called = std::time::Instant::now();
    // The steps before any patch work, for the manifest of each patch this link makes.
    let mut before = crate::timing::Clock::since(called);
    let real = RealLinker::from_env();
    let mut cmd = match LinkCommand::parse(args.clone()) {
        Ok(cmd) => cmd,
        Err(e) => {
            Status::new(None).warn(&format!("{e}; linking without recording"));
            pass_through(&real, &args)
        }
    };
    if let Err(e) = cmd.forward_through_response_file() {
        Status::new(None).warn(&format!(
            "cannot write a response file for the real linker ({e}); passing arguments directly"
        ));
    }
    let disabled = std::env::var_os(DISABLE_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    let output = match (cmd.kind, &cmd.output) {
        (OutputKind::Executable, Some(output))
            if !disabled && !is_build_script(output) && !is_rustdoc_temp(output) =>
        {
            output.clone()
        }
        _ => pass_through(&real, &cmd.forward),
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let output = cwd.join(output);
    let role = Role::of(&cmd);
    // Outside a cargo target directory the list of inputs would be left beside the output for
    // nothing: no patch can follow this build.
    if role == Role::NoRuntime && crate::store::cargo_target_of(&output).is_none() {
        pass_through(&real, &cmd.forward)
    }

    before.step("read arguments");
    let dir = IpbpDir::for_output(&output);
    if role.keeps_inputs() {
        // Before the linker can replace the output: a running process may have started from it.
        crate::map::started::name_by_build_id(&output, &dir);
        before.step("name running builds");
    }
    let mut child = match real.spawn(&cmd.forward) {
        Ok(child) => child,
        Err(e) => {
            eprintln!("error: ipbp-ld: {e}");
            std::process::exit(1);
        }
    };

    let mut status = Status::new(Some(dir.log()));
    before.step("start the linker");
    let mut inputs = inputs::resolve(&cmd, &cwd);
    before.step("list inputs");
    let mut settle = crate::hotpatch::Settle::default();
    let lease = role.keeps_inputs().then(|| {
        let lease = StoreLease::take(&dir);
        let fingerprinted = inputs::fingerprint(&mut inputs, &dir);
        before.step("fingerprint inputs");
        guarded(&mut status, "patching running processes", |status| {
            settle =
                crate::hotpatch::for_running_processes(called, &mut before, &output, &inputs, &dir, status)
        });
        // Only a later patch, against this build, reads the copies: kept after this one.
        if let Err(e) = inputs::keep_copies(&mut inputs, fingerprinted, &dir) {
            status.warn(&format!("{e} (a later patch of this build may be refused)"));
        }
        lease
    });

    let exit = match child.wait() {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("error: ipbp-ld: lost track of the real linker: {e}");
            std::process::exit(1);
        }
    };
    if exit.success() {
        drop(settle.delivered); // the patches stand: their processes are unlocked
        guarded(&mut status, "recording the build", |status| {
            record_build(&output, role, inputs, lease, &dir, status)
        });
    } else {
        guarded(&mut status, "returning running programs to the last good build", |status| {
            crate::hotpatch::revert::link_failed(called, settle.delivered, status)
        });
    }
    // The new executable is written and recorded (the new build's `ipbp::init()` looks for its
    // record): processes it could not be patched into restart into it now.
    guarded(&mut status, "restarting running processes", |status| {
        crate::hotpatch::restart::after_link(settle.pending, exit.success(), &output, called, &dir, status)
    });
    exit_like(exit)
}

/// Runs shim work that must never fail the link: a panic (a bug of ours) becomes one warning.
fn guarded(status: &mut Status, what: &str, work: impl FnOnce(&mut Status)) {
    static PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let what = info.payload_as_str().unwrap_or("panic");
        *PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{what}{at}"));
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(status)));
    std::panic::set_hook(previous);
    if result.is_err() {
        let message = PANIC.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
        status.warn(&format!("internal error while {what} (a bug in ipbp-ld, please report it): {message}"));
    }
}

/// Cargo's build scripts run once, on the host, while building: nothing to record or patch.
fn is_build_script(output: &Path) -> bool {
    output.file_name().is_some_and(|n| n.to_string_lossy().starts_with("build_script_"))
}

fn pass_through(real: &RealLinker, args: &[OsString]) -> ! {
    let e = real.exec(args);
    eprintln!("error: ipbp-ld: {e}");
    std::process::exit(1)
}

/// Records the build. The input list is written before the link returns, and for a program
/// linking the runtime the registry's note too (what `ipbp::init()` looks for); the link index —
/// for [`Role::Program`] only — and collection of old builds are done by a detached child, so the
/// build does not wait for them. The JSON symbol map is written when first asked for (`ipbp-ld
/// map`), or before returning with `IPBP_MAP_INLINE=1`. Each step that fails is one warning;
/// later steps still run.
fn record_build(
    output: &Path,
    role: Role,
    inputs: Vec<crate::store::inputs::Input>,
    lease: Option<StoreLease>,
    dir: &IpbpDir,
    status: &mut Status,
) {
    let pending = match record::begin(output, &inputs, dir) {
        Ok(p) => p,
        Err(e) => {
            status.warn(&format!("no symbol map recorded for {}: {e}", output.display()));
            return;
        }
    };
    // The list names every kept input: a sweep may run (and the child must not inherit the share).
    drop(lease);
    let name = output_name(output);
    let inline = std::env::var_os("IPBP_MAP_INLINE").is_some_and(|v| !v.is_empty() && v != "0");
    if inline {
        if let Err(e) = record::write_map_now(&pending, output, inputs.clone(), dir) {
            status.warn(&format!("no symbol map recorded for {}: {e}", output.display()));
        }
    }
    if !role.keeps_inputs() {
        // No process of it can register: nothing for the registry, no index, nothing kept.
        let sweep = pending.replaced_kept_inputs;
        drop(pending);
        if let Err(e) = record::collect(dir, &name, &HashSet::new(), sweep) {
            status.warn(&format!("cannot collect old maps of {name}: {e}"));
        }
        return;
    }
    let root = registry::root();
    let build = BuildRecord {
        build_id: pending.build_id.clone(),
        output: output.to_path_buf(),
        map: pending.map_path.clone(),
        inputs: pending.inputs_path.clone(),
    };
    let noted = Registry::open(&root, true).map_err(std::io::Error::from).and_then(|r| r.write_build(&build));
    if let Err(e) = noted {
        status.warn_once(
            "registry",
            &format!(
                "cannot note the build in {} ({e}); a running copy of it will not be patched",
                root.display()
            ),
        );
    }
    match if inline { Fork::Failed } else { detach() } {
        Fork::Parent => {} // the child finishes; `pending`'s lock stays held through its copy
        Fork::Failed => finish_recording(pending, role, output, &inputs, dir, &name, status),
        Fork::Child => {
            // Nobody is listening any more: problems go to ipbp.log only.
            let mut quiet = Status::log_only(dir.log());
            finish_recording(pending, role, output, &inputs, dir, &name, &mut quiet);
            // SAFETY: ends the detached child without running exit handlers meant for the shim.
            unsafe { libc::_exit(0) }
        }
    }
}

/// The work after the link returns, holding the output's map lock (in `pending`) throughout.
fn finish_recording(
    pending: record::Pending,
    role: Role,
    output: &Path,
    inputs: &[crate::store::inputs::Input],
    dir: &IpbpDir,
    name: &str,
    status: &mut Status,
) {
    // A test harness's index is built by the first patch of a running copy, if one ever comes.
    if role == Role::Program {
        let index = dir.index_path(name, &pending.build_id);
        let arena = crate::objects::load::Arena::default();
        let workspace = crate::objects::units::Workspace::new();
        let written = crate::hotpatch::link_index::build(&arena, Some(output), inputs, &workspace, true)
            .and_then(|bytes| {
                crate::store::write_atomically(&index, |out| out.write_all(&bytes))
                    .with_context(|| format!("cannot write {}", index.display()))
            });
        if let Err(e) = written {
            status.warn(&format!(
                "no link index written for {} ({e}); patching it will be slower",
                output.display()
            ));
        }
    }
    let root = registry::root();
    let in_use: HashSet<String> =
        registry::list(&root).into_iter().filter(|r| r.is_alive()).map(|r| r.build_id).collect();
    if let Err(e) = record::collect(dir, name, &in_use, pending.replaced_kept_inputs) {
        status.warn(&format!("cannot collect old maps of {name}: {e}"));
    }
    registry::collect_builds(&root);
    drop(pending);
}

enum Fork {
    Parent,
    Child,
    Failed,
}

/// Forks a child that carries on after the shim exits, detached from rustc (its own session,
/// stdio on /dev/null, so rustc's pipes close when the shim exits). The shim is single-threaded
/// here, so forking is safe.
fn detach() -> Fork {
    // SAFETY: no other threads exist at this point of the shim; the child only runs Rust code
    // that allocates and does file I/O.
    match unsafe { libc::fork() } {
        -1 => Fork::Failed,
        0 => {
            // SAFETY: plain system calls on descriptors 0-2 of the child.
            unsafe {
                libc::setsid();
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    for fd in 0..3 {
                        libc::dup2(null, fd);
                    }
                }
            }
            Fork::Child
        }
        _ => Fork::Parent,
    }
}
