//! What this process is, shared by every step of the runtime: where it registered, what it
//! registered, and the generation of patches it runs. A leaf: [`crate::runtime`] fills it in at
//! start, [`crate::apply`] advances the generation, [`crate::restart`] withdraws and reinstates
//! the registration; none of them imports another for it.

use crate::registry::{Registration, Registry};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static GENERATION: AtomicU64 = AtomicU64::new(0);
/// The registry this process registered in, and its pid then (a forked child has another).
static REGISTERED: OnceLock<(Registry, u32)> = OnceLock::new();
/// What it registered (written back if a restart fails after [`withdraw`]).
static REGISTRATION: OnceLock<Registration> = OnceLock::new();

/// The registry this process registered in (`None` before `init`, or when it did not register).
pub(crate) fn registry() -> Option<&'static Registry> {
    REGISTERED.get().map(|(r, _)| r)
}

/// Removes this process's registration just before it restarts: ipbp-ld then waits for the new
/// build's own, which the old one cannot be mistaken for (`execve` runs no exit handler, so the
/// old file would stay).
pub(crate) fn withdraw() {
    if let Some((registry, pid)) = REGISTERED.get() {
        registry.withdraw(*pid);
    }
}

/// Writes the registration back (the restart failed: the program runs on, patchable).
pub(crate) fn reinstate() {
    if let (Some((registry, _)), Some(reg)) = (REGISTERED.get(), REGISTRATION.get()) {
        let _ = registry.register(reg);
    }
}

/// The build id this process runs (`None` before `init`, or when it did not register).
pub(crate) fn build_id() -> Option<&'static str> {
    REGISTRATION.get().map(|r| r.build_id.as_str())
}

pub fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

pub(crate) fn set_generation(g: u64) {
    GENERATION.store(g, Ordering::Relaxed);
}

/// Keeps what [`crate::runtime`] registered (once; later calls are ignored).
pub(crate) fn registered(registry: Registry, reg: Registration) {
    let _ = REGISTERED.set((registry, reg.pid));
    let _ = REGISTRATION.set(reg);
}

/// Removes the registration at exit — only in the process that registered: a forked child that
/// calls `exit()` inherits this handler, and must not remove its parent's registration.
pub(crate) extern "C" fn unregister() {
    if let Some((registry, pid)) = REGISTERED.get() {
        if *pid == std::process::id() {
            registry.unregister(*pid);
        }
    }
}
