//! The runtime half of ipbp.
//!
//! A program opts in with [`init`] at the start of `main`, marks hot points with `#[ipbp::hot]`
//! (functions and methods) or [`call`] (closures), and is built with `linker = "ipbp-ld"`. While
//! it runs, every `cargo build` of the same program turns the edited code into a patch that this
//! crate loads and installs: calls through hot points then run the new code, and every static and
//! thread-local keeps its value.
//!
//! In release builds (`debug_assertions` off) all of it compiles to nothing: `init` returns at once,
//! `#[ipbp::hot]` leaves the function as written and `call(f)` is `f()`.

// Without `debug_assertions` the runtime is compiled out; what remains (registry, protocol) is
// what ipbp-ld shares.
#![cfg_attr(not(debug_assertions), allow(dead_code))]

#[doc(hidden)]
pub mod dispatch;
pub mod protocol;
pub mod registry;

mod apply;
mod detour;
#[doc(hidden)]
pub mod marks;
pub mod procmap;

/// How many bytes at a function's entry an in-place patch overwrites (ipbp-ld checks that they
/// hold no call and no branch target).
#[doc(hidden)]
pub const DETOUR_JUMP_LEN: usize = detour::JUMP_LEN;
mod elf;
mod image;
mod install;
mod listener;
mod process;
mod restart;
mod runtime;
mod seal;
#[doc(hidden)]
pub mod symbols;
mod tls;
mod validate;

/// Marks a function or method as a hot point: once a patch changes the function, or anything it
/// reaches in the workspace, calls to it run the new code.
///
/// ```ignore
/// #[ipbp::hot]
/// fn update(state: &mut State, dt: f32) { /* ... */ }
///
/// impl Player {
///     #[ipbp::hot]
///     fn think(&mut self) -> Action { /* ... */ }
/// }
///
/// #[ipbp::hot]                       // generic: each instance is redirected on its own
/// fn describe<T: Display>(value: T) -> String { /* ... */ }
///
/// #[ipbp::hot]                       // async: the future is boxed, so its layout may change
/// async fn handler(Json(req): Json<Req>) -> Json<Resp> { /* ... */ }
/// ```
///
/// - Sync functions and methods (free, inherent, trait impls) cost one atomic load per call, and
///   an indirect call once patched.
/// - Generic functions (type parameters) are redirected per instance. A non-generic method of a
///   generic `impl` needs `#[ipbp::hot(generic)]`; ipbp-ld says so when it meets one.
/// - `async fn`s must be free functions with owned arguments; their future must be `Send` unless
///   the attribute says `#[ipbp::hot(local)]`.
/// - Not supported: `const fn`, variadic functions, `impl Trait` in argument or return position,
///   const generic parameters (a compile error says so).
/// - With `debug_assertions` off the function compiles exactly as written.
///
/// Changing a hot function's signature cannot be patched: callers compiled against the old one
/// would call the new one. ipbp-ld detects it and keeps the old version running.
pub use ipbp_macros::hot;

/// Opts this process in to hot patching. Call it early in `main`; calling it again does nothing.
///
/// It does nothing at all in release builds, and nothing but one `stat` when the program was not
/// linked through `ipbp-ld`. Otherwise it registers the process (pid, executable, build id, load
/// address and a socket, in a directory only this user can read) and starts a thread that receives
/// patches. The registration is removed when the process exits. Problems are reported once on
/// stderr and leave the program running unpatched.
///
/// A build that cannot be patched in (a changed type of live data, `main`'s own code, …) restarts
/// the process into it instead: `execve` in place, so the pid and parent stay, listening sockets
/// are passed (see [`listener`]) and [`on_restart`] hooks hand state over. `IPBP_RESTART=never`
/// in the environment turns that off.
pub fn init() {
    #[cfg(debug_assertions)]
    {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(runtime::start);
    }
}

/// Like [`init`], but a patch is only *switched on* when a thread of the program calls
/// [`safe_point`]: it is received, checked and loaded in the background, and no thread runs its
/// code before the program reaches the point it chose (the top of a frame loop, between
/// requests). The build reports such a patch as loaded and waiting for the safe point.
pub fn init_with_safe_points() {
    #[cfg(debug_assertions)]
    install::enable_safe_points();
    init();
}

/// Installs a patch that waits for a safe point, if there is one (see [`init_with_safe_points`]).
/// Costs one atomic load otherwise; nothing in release builds.
#[inline]
pub fn safe_point() {
    #[cfg(debug_assertions)]
    {
        install::at_safe_point();
        restart::at_safe_point();
    }
}

/// What a patch changed, as [`on_patch`] callbacks see it.
pub use install::PatchInfo;

/// Calls `f` after each patch is installed, with its generation and the changed, added and
/// not-redirected functions (demangled): a UI can re-render, an ECS re-run its systems, a server
/// log it. `f` runs on ipbp's thread (or, with safe points, on the thread at the safe point); a
/// panic in it is caught. Nothing happens in release builds.
pub fn on_patch(f: impl Fn(&PatchInfo) + Send + Sync + 'static) {
    #[cfg(debug_assertions)]
    install::add_hook(std::sync::Arc::new(f));
    #[cfg(not(debug_assertions))]
    let _ = f;
}

/// Runs `f` through a hot point: after a patch, the newest version of the closure's code (and of
/// everything it calls) runs.
///
/// ```
/// let total = ipbp::call(|| 2 + 2);
/// assert_eq!(total, 4);
/// ```
#[inline(never)]
pub fn call<F: FnOnce() -> R, R>(f: F) -> R {
    #[cfg(debug_assertions)]
    {
        let me = call::<F, R> as fn(F) -> R as *const ();
        let newest = dispatch::redirect(me);
        if newest != me {
            // SAFETY: ipbp-ld only redirects `call::<F, R>` to a newer build of `call::<F, R>`.
            let newest: fn(F) -> R = unsafe { std::mem::transmute(newest) };
            return newest(f);
        }
    }
    f()
}

/// Runs `hook` before this process restarts into a new build (a build that cannot be patched
/// in, or `ipbp-ld restart PID`), and hands the bytes it returns to the new build, where
/// [`restored`]`(name)` gives them back. A server finishes its in-flight requests here; an app
/// serialises the state it wants to keep:
///
/// ```no_run
/// use std::sync::atomic::{AtomicU64, Ordering};
/// static COUNT: AtomicU64 = AtomicU64::new(0);
///
/// ipbp::init();
/// if let Some(bytes) = ipbp::restored("count") {
///     COUNT.store(u64::from_le_bytes(bytes.try_into().unwrap_or_default()), Ordering::Relaxed);
/// }
/// ipbp::on_restart("count", || COUNT.load(Ordering::Relaxed).to_le_bytes().to_vec());
/// ```
///
/// For richer state, any serde format will do (`serde_json::to_vec(&state)` here,
/// `serde_json::from_slice` after): the new build reads what the old one wrote, so a format that
/// tolerates added fields (`#[serde(default)]`) survives the edit that caused the restart.
///
/// Hooks run in the order they were added, on a thread of ipbp's, all within 5 s; one that
/// panics or does not return in time abandons the restart, and the program keeps running its
/// current code — as it does when the new build cannot be executed. A hook should therefore
/// leave the program able to go on: a server that stopped accepting resumes on its own after a
/// few seconds (a restart that happens ends the process's image well before; [`restarts`] cannot
/// tell, as it changes only in the new image). Adding a hook under a name already used replaces it. Nothing happens in release
/// builds.
pub fn on_restart(name: &str, hook: impl Fn() -> Vec<u8> + Send + Sync + 'static) {
    #[cfg(debug_assertions)]
    restart::handover::add_hook(name, std::sync::Arc::new(hook));
    #[cfg(not(debug_assertions))]
    let _ = (name, hook);
}

/// The bytes the previous build's [`on_restart`] hook `name` handed over, once; `None` on a
/// normal start (and in release builds).
pub fn restored(name: &str) -> Option<Vec<u8>> {
    #[cfg(debug_assertions)]
    return restart::handover::restored(name);
    #[cfg(not(debug_assertions))]
    {
        let _ = name;
        None
    }
}

/// How many times this process has restarted into a new build (0 after a normal start).
pub fn restarts() -> u64 {
    #[cfg(debug_assertions)]
    return restart::handover::restarts();
    #[cfg(not(debug_assertions))]
    0
}

/// A TCP listener on `addr` that survives restarts: after a restart, the socket the previous
/// build listened on (passed with the systemd protocol, `LISTEN_FDS`), so connections that
/// arrived meanwhile are waiting in its queue; the first time, a fresh bind. Port 0 matches the
/// passed socket of the same IP, whatever port it got. Programs using the `listenfd` crate need
/// nothing: they get the same sockets.
pub fn listener(addr: impl std::net::ToSocketAddrs) -> std::io::Result<std::net::TcpListener> {
    restart::listen::listener(addr)
}

/// How many patches this process has applied (0 before the first, and in release builds).
pub fn patch_generation() -> u64 {
    process::generation()
}
