//! When the link fails after a patch went live: the program goes back to the last good build.
//!
//! A patch is built and applied while the real linker writes the executable, so new code runs
//! tens of milliseconds after rustc called ipbp-ld instead of after the whole link (BENCHMARKS.md,
//! *P3 and a failing link*). When that link then fails, the build produced no executable, and the
//! program must not keep running its code. Every set a process is sent is whole — what it does
//! not name returns to its original ([`ipbp::protocol::Apply`]) — and the `hello` a patch was
//! planned against is the process's whole state before it, so sending that state back undoes
//! the patch exactly: slots, redirects and detours return to the last good build's targets (code
//! loaded by earlier patches stays loaded, as it always does). Statics a patch added stay in the
//! process's ledger, unused by the code it returns to.
//!
//! The one exception is the jumps the patch *settled* (functions of earlier patches sent on for
//! good, `Apply::settle`): they stay, and the detours `hello` listed from those entries are left
//! out of the undo. That is still exact: a settled function leads to its anchor, and the anchor
//! returns to the last good build's target with the rest (the patch before the failed one is
//! never settled by it — see `deliver/chain.rs` — so the code the undo returns to is whole).
//!
//! The pins the patch recorded (`pinned.tsv`, copies kept on old code for a layout change) are
//! put back as they were before it: they belonged to a plan that did not take.
//!
//! The process stays locked for this build from the patch to the revert, so no other build can
//! patch it in between; its generation is checked again by the process as for any patch.

use crate::status::{Status, Tone};
use ipbp::protocol::{Apply, Hello};
use ipbp::registry::Registry;
use std::time::Instant;

/// A patch that went live while the real linker was still running, with what undoes it.
pub struct Delivered {
    pub(super) program: String,
    pub(super) pid: u32,
    /// The process's lock for this build, held until the link's result is known.
    pub(super) _lock: std::fs::File,
    pub(super) undo: Apply,
    /// The process's patch directory and the pins it held before this patch, put back when the
    /// patch is undone.
    pub(super) pins_before: Option<(std::path::PathBuf, crate::deliver::chain::Pins)>,
}

/// The request that returns a process from the patch it accepted as generation `applied` to the
/// state `hello` described before it; `settled`: the jumps that patch settled for good.
pub(super) fn undo_request(hello: &Hello, settled: &[(u64, u64)], applied: u64) -> Apply {
    let settled: std::collections::HashSet<u64> = settled.iter().map(|s| s.0).collect();
    Apply {
        build_id: hello.build_id.clone(),
        load_bias: hello.load_bias,
        generation: applied,
        file: None,
        range: None,
        hash: None,
        slots: hello.slots.clone(),
        redirects: hello.redirects.clone(),
        detours: hello.detours.iter().copied().filter(|d| !settled.contains(&d.0)).collect(),
        settle: Vec::new(),
        settled_patches: Vec::new(),
        data: Vec::new(),
        tls: Vec::new(),
        summary: "back to the last good build (the link failed)".into(),
        changed: Vec::new(),
        added: Vec::new(),
        not_redirected: Vec::new(),
    }
}

/// Sends every process patched by this build back to its last good build, one status line each.
/// `called` is when rustc started the shim, as in the `Patched` line.
pub fn link_failed(called: Instant, delivered: Vec<Delivered>, status: &mut Status) {
    if delivered.is_empty() {
        return;
    }
    let registry = match Registry::existing() {
        Ok(r) => Some(r),
        Err(e) => {
            status.warn(&format!("{e}"));
            None
        }
    };
    for d in delivered {
        let sent = match &registry {
            Some(r) => crate::deliver::apply(r, d.pid, d.undo),
            None => Err(crate::err!("the registry cannot be opened")),
        };
        match sent {
            Ok(applied) => {
                // Undone: its pins go too. (Not when the undo failed: the process then still runs
                // the patch, and its pins hold.)
                if let Some((dir, pins)) = &d.pins_before {
                    let _ = pins.write(dir);
                }
                let took = (applied.load_us + applied.install_us) as f64 / 1000.0;
                let total = called.elapsed().as_secs_f64() * 1000.0;
                let how = if applied.deferred {
                    format!("loaded in {took:.1} ms, {total:.0} ms after rustc called ipbp-ld; it switches at the program's next safe point")
                } else {
                    format!("applied in {took:.1} ms, {total:.0} ms after rustc called ipbp-ld")
                };
                status.line(
                    "Reverted",
                    Tone::Warn,
                    &format!("{} (pid {}) to the last good build: the link failed ({how})", d.program, d.pid),
                );
            }
            Err(e) => status.line(
                "Skipped",
                Tone::Bad,
                &format!(
                    "{} (pid {}): the link failed, and returning it to the last good build failed too ({e}); it runs code of a build that produced no executable: restart it",
                    d.program, d.pid
                ),
            ),
        }
    }
}
