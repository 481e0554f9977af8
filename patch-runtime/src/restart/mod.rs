//! Restart: re-executing the process into a newer build of itself, when a build cannot be
//! patched in (ipbp-ld asks, after the new executable is written). The pid, the parent, the
//! arguments, environment, working directory and standard streams stay; listening sockets and the
//! state `on_restart` hooks hand over are passed; everything else starts afresh, as on a normal
//! start.
//!
//! The steps, in order: the request is checked ([`check`]: the file is a build of this program,
//! the one it claims) and the sockets to pass are chosen ([`fds`]) — a refusal there changes
//! nothing; the hooks run ([`handover`]); with safe points, the program's next safe point is
//! awaited; the registration is withdrawn (ipbp-ld waits for the new build's own) and
//! `restarting` written (if ipbp-ld is gone, nothing is executed); then every other thread is
//! parked, the descriptors placed and `execveat` called on the checked descriptor. All of it ends
//! before ipbp-ld stops waiting (the request's `budget-ms`). If `execve` fails before the
//! kernel's point of no return (the file cannot be executed, too little memory to start), the
//! descriptors are put back, the registration written again, the threads released, and the
//! program runs on with its current code: only the hooks' side effects remain. A hook cannot
//! learn that from [`crate::restarts`] (it changes only in the new image): a hook that stops
//! accepting work resumes it after a timeout (documented on [`crate::on_restart`]). A failure
//! after the point of no return (a segment that cannot be mapped) ends the process, as for any
//! `execve`.
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

/// The asker's wait when the request does not say (ipbp-ld's own is 12 s).
const DEFAULT_BUDGET: Duration = Duration::from_secs(11);

/// Serves a `restart` read from a connection made at `connected`: on success never returns (the
/// new build runs); otherwise the error to reply, after `restarting` was written if the hooks ran.
/// Everything that can refuse is done before the hooks run, so a restart bound to fail does not
/// drain the program first; and it all ends before the asker stops waiting (`budget-ms`), so the
/// asker never reports a program that then restarts as one that keeps its code.
pub fn serve(req: Restart, stream: &mut UnixStream, connected: Instant) -> Reply {
    if !enabled() {
        return Reply::Error(RESTART_OFF.into());
    }
    let until = connected + req.budget_ms.map_or(DEFAULT_BUDGET, Duration::from_millis);
    let left = || until.saturating_duration_since(Instant::now());
    let exe = match check::open_checked(&req) {
        Ok(fd) => fd,
        Err(e) => return Reply::Error(format!("not restarting: {e}")),
    };
    let listeners = match fds::listening(req.all_listeners) {
        Ok(l) => l,
        Err(e) => return Reply::Error(format!("not restarting: {e}")),
    };
    // The park round's signal handler (a program that handles that signal itself cannot be
    // parked). A thread that blocks the signal is found only by the round (a thread inside a
    // signal handler blocks it for a moment: a look now would refuse needlessly).
    if let Err(e) = crate::detour::signal::choose_signal() {
        return Reply::Error(format!("not restarting: {e}"));
    }
    if left() < Duration::from_millis(100) {
        return Reply::Error("not restarting: the time ipbp-ld waits ran out before it could start".into());
    }
    let hooks_started = Instant::now();
    let states = match handover::run_hooks(HOOK_DEADLINE.min(left())) {
        Ok(s) => s,
        Err(e) => return Reply::Error(format!("not restarting: {e}")),
    };
    let hooks_us = hooks_started.elapsed().as_micros() as u64;
    let mut prepared = match prepare(exe, listeners, &states) {
        Ok(p) => p,
        Err(e) => return Reply::Error(format!("not restarting: {e}; on_restart hooks ran")),
    };
    let mut told = Restarting {
        listeners: prepared.placement.listeners() as u32,
        states: states.len() as u32,
        state_bytes: states.iter().map(|(_, b)| b.len() as u64).sum(),
        hooks_us,
        safe_point_us: 0,
    };
    let waited = match SafePoint::reach(SAFE_POINT_DEADLINE.min(left())) {
        Ok(waited) => waited,
        Err(e) => return Reply::Error(format!("could not restart: {e}; on_restart hooks ran")),
    };
    told.safe_point_us = waited.as_micros() as u64;
    // ipbp-ld waits for the new build's registration; the old one would survive `execve`.
    crate::process::withdraw();
    let _ = stream.set_write_timeout(Some(left().max(Duration::from_millis(1))));
    let e = if left().is_zero() {
        "the time ipbp-ld waits ran out".to_string()
    } else if let Err(e) = stream.write_all(told.encode().as_bytes()) {
        // ipbp-ld is gone (it said the program keeps its code): do not restart behind its back.
        format!("ipbp-ld stopped waiting ({e})")
    } else {
        prepared.placement.refresh_inheritable();
        prepared.exec()
    };
    SafePoint::release();
    crate::process::reinstate();
    Reply::Error(format!("could not restart: {e}; on_restart hooks ran"))
}

/// Everything `execve` needs, built before any thread is parked.
struct Prepared {
    exe: OwnedFd,
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

/// A close-on-exec copy of `fd` at `floor` or above.
fn above(fd: &OwnedFd, floor: RawFd, what: &str) -> Result<OwnedFd, String> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor of ours; the copy is owned below.
    let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
    if high < 0 {
        return Err(format!("cannot place {what}: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

fn prepare(exe: OwnedFd, listeners: Vec<RawFd>, states: &handover::States) -> Result<Prepared, String> {
    let mut placement = fds::Placement::new(listeners);
    // The state memfd and the executable above the listeners' targets, so moving them cannot
    // overwrite either (the executable may have taken a low number, in a hole among them).
    let floor = placement.state_floor();
    let exe = above(&exe, floor, "the executable")?;
    let state = match handover::seal(states)? {
        None => None,
        Some(fd) => Some(above(&fd, floor, "the state")?),
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
        exe,
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
                    exe.as_raw_fd(),
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
    /// Returns once a thread waits at its safe point (at once without safe points), or fails
    /// after `deadline`.
    fn reach(deadline: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        if !crate::install::safe_points() {
            return Ok(Duration::ZERO);
        }
        let mut phase = PHASE.lock().unwrap_or_else(|p| p.into_inner());
        *phase = Phase::Waiting;
        WANTED.store(true, Ordering::Release);
        while *phase != Phase::Held {
            let left = deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                *phase = Phase::Idle;
                WANTED.store(false, Ordering::Release);
                return Err(format!(
                    "the program did not reach a safe point within {:.1} s",
                    deadline.as_secs_f64()
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
