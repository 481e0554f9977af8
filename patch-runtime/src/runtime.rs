//! Starting the runtime: find out who we are, register, listen.

use crate::apply::State;
use crate::registry::{self, BuildRecord, Registration};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static REGISTERED: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();

pub fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

pub(crate) fn set_generation(g: u64) {
    GENERATION.store(g, Ordering::Relaxed);
}

pub fn start() {
    let Some(image) = crate::image::main_program() else { return };
    let root = registry::root();
    // Programs not linked through ipbp-ld have no build record: stay out of their way.
    if BuildRecord::load(&root, &image.build_id).is_none() {
        return;
    }
    if let Err(e) = register(image, root) {
        eprintln!("ipbp: hot patching is off for this process: {e}");
    }
}

fn register(image: crate::image::Image, root: PathBuf) -> std::io::Result<()> {
    registry::ensure_root(&root)?;
    let pid = std::process::id();
    let socket = registry::socket_path(&root, pid);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .map_err(|e| std::io::Error::other(format!("cannot listen on {}: {e}", socket.display())))?;
    let reg = Registration {
        pid,
        start_time: registry::process_start_time(pid).unwrap_or(0),
        exe: image.exe.clone(),
        build_id: image.build_id.clone(),
        load_bias: image.load_bias,
        socket: socket.clone(),
        runtime_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let path = registry::process_path(&root, pid);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, reg.to_text())?;
    std::fs::rename(&tmp, &path)?;
    let _ = REGISTERED.set((path, socket));
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::atexit(unregister) };
    crate::listener::spawn(listener, State::new(image))
}

extern "C" fn unregister() {
    if let Some((path, socket)) = REGISTERED.get() {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(socket);
    }
}
