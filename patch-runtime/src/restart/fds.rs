//! Descriptors across the restart: the listening sockets the new build will take again are
//! passed with the systemd protocol (`LISTEN_FDS` descriptors from fd 3, `LISTEN_PID` = this pid,
//! which `execve` keeps), the state memfd and the checked executable where they are; every other
//! descriptor is closed by `execve` (close-on-exec), as on a normal start.
//!
//! Which sockets the new build takes again: those `ipbp::listener` gave out, those the process
//! was started with (`LISTEN_FDS`: it takes them from there again), or every listening socket when
//! ipbp-ld saw `listenfd` among the program's link inputs (`pass-listeners all`). A socket the
//! program bound itself (`TcpListener::bind`) is closed, so that its new build can bind the same
//! address again: passed, it would stay listening there and the new `bind` fail (EADDRINUSE).
//!
//! [`Placement::apply`] and [`Placement::undo`] run while every other thread of the program is
//! parked (see `super::exec`), so no thread can use a descriptor number while it is being moved;
//! they make system calls only (no allocation, no lock).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

/// Listening sockets passed at most (systemd itself has no limit; programs have a few).
pub const MAX_LISTENERS: usize = 64;
/// The first descriptor of the systemd protocol.
pub const FIRST: RawFd = 3;

/// ipbp's own control socket (`<registry>/<pid>.sock`): listening, but never passed on.
static CONTROL: AtomicI32 = AtomicI32::new(-1);

pub fn set_control(fd: RawFd) {
    CONTROL.store(fd, Ordering::Relaxed);
}

/// The sockets the program takes again after a restart, by number and inode (a number closed and
/// reused for another socket is not one of them).
static TAKEN_AGAIN: Mutex<Vec<(RawFd, u64)>> = Mutex::new(Vec::new());

fn inode(fd: RawFd) -> Option<u64> {
    // SAFETY: fstat into a zeroed stat of ours; fails harmlessly on a closed number.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_ino)
}

/// Notes that the program will take socket `fd` again after a restart.
pub fn note_taken_again(fd: RawFd) {
    if let Some(ino) = inode(fd) {
        TAKEN_AGAIN.lock().unwrap_or_else(|p| p.into_inner()).push((fd, ino));
    }
}

/// The descriptors this process was started with by the systemd protocol (`LISTEN_PID` is this
/// process, `LISTEN_FDS` descriptors from [`FIRST`]).
pub(crate) fn passed() -> Vec<RawFd> {
    let ours =
        std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<RawFd>().ok()).unwrap_or(0);
    if !ours || !(0..=MAX_LISTENERS as RawFd).contains(&count) {
        return Vec::new();
    }
    (FIRST..FIRST + count).collect()
}

/// Notes the sockets this process was started with (`LISTEN_FDS`): it takes them from there.
pub fn note_started_with() {
    for fd in passed() {
        note_taken_again(fd);
    }
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
        let mut p =
            Placement { listeners, inheritable: Vec::new(), saved: [(-1, 0); MAX_LISTENERS], state: None };
        p.refresh_inheritable();
        p
    }

    /// Notes the descriptors without close-on-exec now: called again just before the threads
    /// are parked, so that what `undo` restores is as recent as it can be without reading
    /// `/proc/self/fd` in the parked section (that allocates). A descriptor opened without
    /// close-on-exec during the park round itself would keep the flag `apply` sets.
    pub fn refresh_inheritable(&mut self) {
        self.inheritable = open_fds()
            .into_iter()
            // SAFETY: F_GETFD on a number; fails harmlessly if it was closed meanwhile.
            .filter(|&fd| fd >= FIRST && unsafe { libc::fcntl(fd, libc::F_GETFD) } == 0)
            .collect();
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

/// The listening sockets of this process to pass on, ascending: all of them (`all`) or those it
/// takes again; never ipbp's own.
pub fn listening(all: bool) -> Result<Vec<RawFd>, String> {
    let control = CONTROL.load(Ordering::Relaxed);
    let again = TAKEN_AGAIN.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let taken = |fd: RawFd| all || again.iter().any(|&(k, ino)| k == fd && inode(fd) == Some(ino));
    let found: Vec<RawFd> = open_fds()
        .into_iter()
        .filter(|&fd| fd >= FIRST && fd != control && is_listening(fd) && taken(fd))
        .collect();
    if found.len() > MAX_LISTENERS {
        return Err(format!("{} listening sockets; at most {MAX_LISTENERS} can be passed", found.len()));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    #[test]
    fn only_sockets_the_program_takes_again_are_passed_unless_all_are_asked_for() {
        let own = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let taken = super::super::listen::listener("127.0.0.1:0").expect("ipbp::listener");
        let (own_fd, taken_fd) = (own.as_raw_fd(), taken.as_raw_fd());
        let some = super::listening(false).expect("listening");
        assert!(some.contains(&taken_fd) && !some.contains(&own_fd), "{some:?}: {taken_fd} yes, {own_fd} no");
        let all = super::listening(true).expect("listening");
        assert!(all.contains(&taken_fd) && all.contains(&own_fd), "{all:?}");
        // The number closed and given to a socket the program binds itself: not passed.
        drop(taken);
        let reused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        if reused.as_raw_fd() == taken_fd {
            assert!(!super::listening(false).expect("listening").contains(&taken_fd));
        }
    }
}
