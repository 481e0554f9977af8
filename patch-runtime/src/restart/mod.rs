//! Restart: re-executing the process into a newer build of itself, when a build cannot be
//! patched in (ipbp-ld asks, after the new executable is written). The pid, the parent, the
//! arguments, environment, working directory and standard streams stay; listening sockets and the
//! state `on_restart` hooks hand over are passed; everything else starts afresh, as on a normal
//! start.
//!
//! The steps, in order: the request is checked ([`check`]: the file is the build it claims);
//! the hooks run ([`handover`]); with safe points, the program's next safe point is awaited; then
//! every other thread is parked, the descriptors placed ([`fds`]) and `execveat` called on the
//! checked descriptor. If `execve` fails the descriptors are put back, the threads released, and
//! the program runs on with its current code: only the hooks' side effects remain (a hook that
//! stopped accepting work should resume when [`crate::restarts`] did not change — documented on
//! [`crate::on_restart`]).
//!
//! **Why the exec is sound.** While the descriptors move, every other thread waits in the park
//! round's signal handler (`detour::park`), so none can use a number that is being replaced;
//! `execve` then ends them all (the kernel kills the other threads before the new image runs).
//! Between the park and `execve` this thread only makes system calls on memory prepared before
//! (argv and envp arrays): it takes no lock a parked thread may hold. The thread's signal mask
//! (which `execve` keeps) is set back to the one it had before the request.

mod check;
pub(crate) mod fds;
pub(crate) mod handover;
pub(crate) mod listen;

use crate::protocol::{Reply, Restart, Restarting, RESTART_OFF};
use std::ffi::{CString, OsString};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The program's setting: `IPBP_RESTART=never` keeps a build that cannot be patched out.
pub const SETTING: &str = "IPBP_RESTART";

/// Time the `on_restart` hooks have in all, and the program to reach a safe point.
pub const HOOK_DEADLINE: Duration = Duration::from_secs(5);
pub const SAFE_POINT_DEADLINE: Duration = Duration::from_secs(5);

/// Whether this program restarts into a build that cannot be patched in.
pub fn enabled() -> bool {
    std::env::var_os(SETTING).is_none_or(|v| v != "never")
}

/// Serves a `restart`: on success never returns (the new build runs); otherwise the error to
/// reply, after `restarting` was written if the hooks ran.
pub fn serve(req: Restart, stream: &mut UnixStream) -> Reply {
    if !enabled() {
        return Reply::Error(RESTART_OFF.into());
    }
    let exe = match check::open_checked(&req) {
        Ok(fd) => fd,
        Err(e) => return Reply::Error(format!("not restarting: {e}")),
    };
    let hooks_started = Instant::now();
    let states = match handover::run_hooks(HOOK_DEADLINE) {
        Ok(s) => s,
        Err(e) => return Reply::Error(format!("not restarting: {e}")),
    };
    let hooks_us = hooks_started.elapsed().as_micros() as u64;
    match prepare(&exe, &states) {
        Ok(mut prepared) => {
            let mut told = Restarting {
                listeners: prepared.placement.listeners() as u32,
                states: states.len() as u32,
                state_bytes: states.iter().map(|(_, b)| b.len() as u64).sum(),
                hooks_us,
                safe_point_us: 0,
            };
            let held = SafePoint::reach();
            let e = match held {
                Err(e) => e,
                Ok(waited) => {
                    told.safe_point_us = waited.as_micros() as u64;
                    let _ = stream.write_all(told.encode().as_bytes());
                    let e = prepared.exec();
                    SafePoint::release();
                    e
                }
            };
            Reply::Error(format!("could not restart: {e}; it keeps running its current code"))
        }
        Err(e) => Reply::Error(format!("not restarting: {e}")),
    }
}

/// Everything `execve` needs, built before any thread is parked.
struct Prepared {
    exe: RawFd,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    env_ptrs: Vec<*const libc::c_char>,
    placement: fds::Placement,
    _state: Option<OwnedFd>,
    mask: libc::sigset_t,
}

fn cstrings(items: impl Iterator<Item = OsString>) -> Result<Vec<CString>, String> {
    items
        .map(|s| CString::new(s.into_vec()).map_err(|_| "an argument or variable has a NUL byte".into()))
        .collect()
}

fn pointers(items: &[CString]) -> Vec<*const libc::c_char> {
    items.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
}

fn prepare(exe: &OwnedFd, states: &handover::States) -> Result<Prepared, String> {
    let placement = fds::Placement::new(fds::listening()?);
    let mut placement = placement;
    // The state memfd above the listeners' targets, so moving them cannot overwrite it.
    let state = match handover::seal(states)? {
        None => None,
        Some(fd) => {
            // SAFETY: F_DUPFD_CLOEXEC on our memfd; the copy is owned below.
            let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, placement.state_floor()) };
            if high < 0 {
                return Err(format!("cannot place the state: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: a fresh descriptor.
            Some(unsafe { OwnedFd::from_raw_fd(high) })
        }
    };
    placement.set_state(state.as_ref().map(|f| f.as_raw_fd()));
    let n = placement.listeners();
    let mut env: Vec<OsString> = std::env::vars_os()
        .filter(|(k, _)| {
            !["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", handover::ENV].iter().any(|n| k == n)
        })
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            kv
        })
        .collect();
    if n > 0 {
        env.push(format!("LISTEN_FDS={n}").into());
        env.push(format!("LISTEN_PID={}", std::process::id()).into());
    }
    env.push(
        format!("{}={}", handover::ENV, handover::env_value(state.as_ref().map(|f| f.as_raw_fd()))).into(),
    );
    let argv = cstrings(std::env::args_os())?;
    let env = cstrings(env.into_iter())?;
    // SAFETY: reads this thread's signal mask into a sigset of ours.
    let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask) };
    Ok(Prepared {
        exe: exe.as_raw_fd(),
        argv_ptrs: pointers(&argv),
        _argv: argv,
        env_ptrs: pointers(&env),
        _env: env,
        placement,
        _state: state,
        mask,
    })
}

impl Prepared {
    /// Parks the other threads and executes the new build; returns only when that failed, with
    /// everything as it was.
    fn exec(&mut self) -> String {
        let mut errno = 0;
        let mut stage = "";
        let Prepared { exe, argv_ptrs, env_ptrs, placement, mask, .. } = self;
        let result = crate::detour::with_threads_parked(&mut |_| Ok(()), &mut || {
            // Nothing here may allocate: other threads are parked (see the module's doc).
            if let Err(e) = placement.apply() {
                (errno, stage) = (e, "passing the listening sockets");
                return Err(String::new());
            }
            let mut current: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: execveat on the checked descriptor with NUL-terminated arrays built before
            // the park; on success it does not return.
            unsafe {
                libc::pthread_sigmask(libc::SIG_SETMASK, &*mask, &mut current);
                libc::syscall(
                    libc::SYS_execveat,
                    *exe,
                    c"".as_ptr(),
                    argv_ptrs.as_ptr(),
                    env_ptrs.as_ptr(),
                    libc::AT_EMPTY_PATH,
                );
                errno = *libc::__errno_location();
                libc::pthread_sigmask(libc::SIG_SETMASK, &current, std::ptr::null_mut());
            }
            stage = "executing the new build";
            placement.undo();
            Err(String::new())
        });
        match result {
            Ok(_) => "the new build did not start".into(),
            Err(e) if stage.is_empty() => format!("cannot stop the program's threads: {e}"),
            Err(_) => format!("{stage}: {}", std::io::Error::from_raw_os_error(errno)),
        }
    }
}

/// With safe points ([`crate::init_with_safe_points`]), the restart happens while a thread of
/// the program waits at its safe point.
struct SafePoint;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Waiting,
    Held,
}

static WANTED: AtomicBool = AtomicBool::new(false);
static PHASE: Mutex<Phase> = Mutex::new(Phase::Idle);
static CHANGED: Condvar = Condvar::new();

impl SafePoint {
    /// Returns once a thread waits at its safe point (at once without safe points).
    fn reach() -> Result<Duration, String> {
        let started = Instant::now();
        if !crate::install::safe_points() {
            return Ok(Duration::ZERO);
        }
        let mut phase = PHASE.lock().unwrap_or_else(|p| p.into_inner());
        *phase = Phase::Waiting;
        WANTED.store(true, Ordering::Release);
        while *phase != Phase::Held {
            let left = SAFE_POINT_DEADLINE.saturating_sub(started.elapsed());
            if left.is_zero() {
                *phase = Phase::Idle;
                WANTED.store(false, Ordering::Release);
                return Err(format!(
                    "the program did not reach a safe point within {} s",
                    SAFE_POINT_DEADLINE.as_secs()
                ));
            }
            phase = CHANGED.wait_timeout(phase, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        Ok(started.elapsed())
    }

    /// Lets the thread at the safe point go on (the restart failed).
    fn release() {
        let mut phase = PHASE.lock().unwrap_or_else(|p| p.into_inner());
        *phase = Phase::Idle;
        WANTED.store(false, Ordering::Release);
        CHANGED.notify_all();
    }
}

/// Called by [`crate::safe_point`]: waits here while a restart is under way.
pub fn at_safe_point() {
    if !WANTED.load(Ordering::Acquire) {
        return;
    }
    let mut phase = PHASE.lock().unwrap_or_else(|p| p.into_inner());
    if *phase != Phase::Waiting {
        return;
    }
    *phase = Phase::Held;
    CHANGED.notify_all();
    while *phase == Phase::Held {
        phase = CHANGED.wait(phase).unwrap_or_else(|p| p.into_inner());
    }
}
