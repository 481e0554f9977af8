//! Starting the runtime (the first step): find out who we are, register, listen. What the
//! registration leaves for the later steps is kept in [`crate::process`].

use crate::apply::State;
use crate::process;
use crate::registry::{self, OpenError, Registration, Registry};

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
    process::registered(registry, reg);
    crate::detour::prepare();
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::atexit(process::unregister) };
    crate::listener::spawn(listener, State::new(image))
}
