//! The watched program and the end of the session: Ctrl-C, SIGTERM or SIGHUP stop the build in
//! progress and the program, and `watch` exits with them; when the program exits by itself,
//! `watch` exits with its status. Nothing is left running.

use crate::error::{Context, Error};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// The signal that asked us to stop (0: none yet).
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: i32) {
    // Only an atomic store: async-signal-safe.
    STOP.store(sig, Ordering::SeqCst);
}

/// Catches SIGINT, SIGTERM and SIGHUP so that the session ends in order (see [`stop_requested`]).
pub fn catch_stop_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only stores to an atomic; no SA_RESTART, so a blocking
        // poll returns EINTR and the loop sees the flag.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// The signal received, if the session must end.
pub fn stop_requested() -> Option<i32> {
    match STOP.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// The program being watched.
pub struct Program {
    child: Child,
}

impl Program {
    /// Starts `exe` with `args`, sharing our terminal (stdin, stdout, stderr).
    pub fn start(exe: &Path, args: &[String]) -> Result<Program, Error> {
        let child = Command::new(exe)
            .args(args)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        Ok(Program { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks it to stop (SIGTERM), then kills it after a grace period.
    pub fn stop(mut self) -> Option<ExitStatus> {
        stop_child(&mut self.child, Duration::from_secs(3))
    }
}

/// SIGTERM, up to `grace` to exit, then SIGKILL; reaps the child.
pub fn stop_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // SAFETY: the pid is our own unreaped child, so it cannot have been reused.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Why a child's wait ended early.
pub enum Interrupted {
    /// A stop signal arrived (the child was stopped).
    Stop(i32),
    /// The watched program exited (the child was stopped).
    ProgramExited(ExitStatus),
}

/// Waits for a build step, stopping it if the session ends meanwhile.
pub fn wait_build(
    child: &mut Child,
    program: &mut Option<Program>,
) -> Result<Result<ExitStatus, Interrupted>, Error> {
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for the build")? {
            return Ok(Ok(status));
        }
        let why = match (stop_requested(), program.as_mut().and_then(Program::exited)) {
            (Some(sig), _) => Interrupted::Stop(sig),
            (None, Some(status)) => Interrupted::ProgramExited(status),
            (None, None) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        stop_child(child, Duration::from_secs(2));
        return Ok(Err(why));
    }
}

/// Waits until `fd` is readable, a stop signal arrives, or `timeout` passes.
pub fn wait_readable(fd: i32, timeout: Duration) {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd we own; EINTR (a signal) simply returns early.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
}
