//! Starting the runtime: find out who we are, register, listen.

use crate::apply::State;
use crate::registry::{self, OpenError, Registration, Registry};
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

pub fn start() {
    // What an earlier build handed over (its memfd is closed now, not whenever the program asks).
    crate::restart::handover::take_handover();
    // The sockets it was started with (`LISTEN_FDS`): passed on again if it restarts.
    crate::restart::fds::note_started_with();
    let Some(image) = crate::image::main_program() else { return };
    let root = registry::root();
    let registry = match Registry::open(&root, false) {
        Ok(r) => r,
        // No registry: ipbp-ld never linked anything for this user; stay out of the way.
        Err(OpenError::Missing) => return,
        Err(e) => {
            eprintln!("ipbp: hot patching is off for this process: {e}");
            return;
        }
    };
    // Programs not linked through ipbp-ld have no build record: stay out of their way.
    if registry.build(&image.build_id).is_none() {
        return;
    }
    if let Err(e) = register(image, registry) {
        eprintln!("ipbp: hot patching is off for this process: {e}");
    }
}

fn register(image: crate::image::Image, registry: Registry) -> std::io::Result<()> {
    let pid = std::process::id();
    let listener = registry.listen(pid)?;
    let reg = Registration {
        pid,
        start_time: registry::process_start_time(pid).unwrap_or(0),
        exe: image.exe.clone(),
        build_id: image.build_id.clone(),
        load_bias: image.load_bias,
        runtime_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    if let Err(e) = registry.register(&reg) {
        registry.unregister(pid);
        return Err(e);
    }
    let _ = REGISTERED.set((registry, pid));
    let _ = REGISTRATION.set(reg);
    crate::detour::prepare();
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::atexit(unregister) };
    crate::listener::spawn(listener, State::new(image))
}

/// Removes the registration at exit — only in the process that registered: a forked child that
/// calls `exit()` inherits this handler, and must not remove its parent's registration.
extern "C" fn unregister() {
    if let Some((registry, pid)) = REGISTERED.get() {
        if *pid == std::process::id() {
            registry.unregister(*pid);
        }
    }
}
