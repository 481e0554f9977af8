//! Descriptors across the restart: listening sockets are passed with the systemd protocol
//! (`LISTEN_FDS` descriptors from fd 3, `LISTEN_PID` = this pid, which `execve` keeps), the state
//! memfd where it is; every other descriptor is closed by `execve` (close-on-exec), as on a
//! normal start.
//!
//! [`Placement::apply`] and [`Placement::undo`] run while every other thread of the program is
//! parked (see `super::exec`), so no thread can use a descriptor number while it is being moved;
//! they make system calls only (no allocation, no lock).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

/// Listening sockets passed at most (systemd itself has no limit; programs have a few).
pub const MAX_LISTENERS: usize = 64;
/// The first descriptor of the systemd protocol.
pub const FIRST: RawFd = 3;

/// ipbp's own control socket (`<registry>/<pid>.sock`): listening, but never passed on.
static CONTROL: AtomicI32 = AtomicI32::new(-1);

pub fn set_control(fd: RawFd) {
    CONTROL.store(fd, Ordering::Relaxed);
}

fn open_fds() -> Vec<RawFd> {
    let mut fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    fds.sort_unstable();
    fds
}

/// Whether `fd` is a listening socket (`SO_ACCEPTCONN`).
fn is_listening(fd: RawFd) -> bool {
    let mut on: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a c_int of ours; fails harmlessly on anything but a socket.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut on as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && on != 0
}

/// Where each passed descriptor goes, and what is needed to put everything back.
pub struct Placement {
    /// The listening sockets, ascending; the i-th goes to `FIRST + i`.
    listeners: Vec<RawFd>,
    /// Descriptors without close-on-exec before the restart (their flag is restored on failure).
    inheritable: Vec<RawFd>,
    /// Per target: a close-on-exec copy of what was there (`-1`: nothing) and its flags.
    saved: [(RawFd, libc::c_int); MAX_LISTENERS],
    state: Option<RawFd>,
}

impl Placement {
    /// Finds the listening sockets now. `state` must already lie above the targets (see
    /// [`Placement::state_floor`]).
    pub fn new(listeners: Vec<RawFd>) -> Placement {
        let inheritable = open_fds()
            .into_iter()
            // SAFETY: F_GETFD on a number; fails harmlessly if it was closed meanwhile.
            .filter(|&fd| fd >= FIRST && unsafe { libc::fcntl(fd, libc::F_GETFD) } == 0)
            .collect();
        Placement { listeners, inheritable, saved: [(-1, 0); MAX_LISTENERS], state: None }
    }

    pub fn listeners(&self) -> usize {
        self.listeners.len()
    }

    /// The lowest number the state memfd may have: above every target.
    pub fn state_floor(&self) -> RawFd {
        FIRST + self.listeners.len() as RawFd
    }

    pub fn set_state(&mut self, fd: Option<RawFd>) {
        self.state = fd;
    }

    /// Moves the listening sockets to `FIRST..`, clears close-on-exec on them and the state
    /// memfd only, and sets it on every other descriptor from `FIRST` on. System calls only.
    /// Returns the errno of what failed, having undone what it did.
    pub fn apply(&mut self) -> Result<(), i32> {
        let floor = self.state_floor();
        for (i, &fd) in self.listeners.iter().enumerate() {
            let target = FIRST + i as RawFd;
            // Still the socket that was found? (A thread may have closed it before the park.)
            if !is_listening(fd) {
                self.drop_saved(i);
                return Err(libc::EBADF);
            }
            // SAFETY: fcntl on descriptor numbers; the copies are ours until `undo` or `execve`.
            unsafe {
                let flags = libc::fcntl(target, libc::F_GETFD);
                self.saved[i] = if flags < 0 {
                    (-1, 0)
                } else {
                    (libc::fcntl(target, libc::F_DUPFD_CLOEXEC, floor), flags)
                };
            }
        }
        // SAFETY: close_range with the CLOEXEC flag only marks descriptors (kernel 5.11).
        let marked = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                FIRST as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if marked != 0 {
            for &fd in &self.inheritable {
                // SAFETY: fcntl on a number; harmless if it is closed.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
        for (i, &fd) in self.listeners.iter().enumerate() {
            let target = FIRST + i as RawFd;
            // Ascending sources never lie below their targets, so a move never overwrites a
            // source still to be moved. dup2 clears close-on-exec on the copy.
            // SAFETY: dup2/fcntl on descriptor numbers of this process.
            let ok = unsafe {
                if fd == target {
                    libc::fcntl(target, libc::F_SETFD, 0) == 0
                } else {
                    libc::dup2(fd, target) == target
                }
            };
            if !ok {
                // SAFETY: errno is thread-local.
                let errno = unsafe { *libc::__errno_location() };
                self.undo();
                return Err(errno);
            }
        }
        if let Some(fd) = self.state {
            // SAFETY: fcntl on our memfd.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        }
        Ok(())
    }

    fn drop_saved(&mut self, upto: usize) {
        for s in &mut self.saved[..upto] {
            if s.0 >= 0 {
                // SAFETY: our own copy.
                unsafe { libc::close(s.0) };
            }
            *s = (-1, 0);
        }
    }

    /// Puts every descriptor back as it was before [`Placement::apply`] (after a failed
    /// `execve`). System calls only.
    pub fn undo(&mut self) {
        for i in 0..self.listeners.len() {
            let target = FIRST + i as RawFd;
            let (copy, flags) = self.saved[i];
            // SAFETY: dup2/fcntl/close on descriptor numbers; `copy` is ours.
            unsafe {
                if copy >= 0 {
                    libc::dup2(copy, target);
                    libc::fcntl(target, libc::F_SETFD, flags);
                    libc::close(copy);
                } else {
                    libc::close(target);
                }
            }
            self.saved[i] = (-1, 0);
        }
        for &fd in &self.inheritable {
            // SAFETY: as above.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        }
        if let Some(fd) = self.state {
            // SAFETY: our memfd goes back to close-on-exec.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// The listening sockets of this process, ascending, but ipbp's own.
pub fn listening() -> Result<Vec<RawFd>, String> {
    let control = CONTROL.load(Ordering::Relaxed);
    let found: Vec<RawFd> =
        open_fds().into_iter().filter(|&fd| fd >= FIRST && fd != control && is_listening(fd)).collect();
    if found.len() > MAX_LISTENERS {
        return Err(format!("{} listening sockets; at most {MAX_LISTENERS} can be passed", found.len()));
    }
    Ok(found)
}
