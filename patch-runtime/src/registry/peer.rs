//! The process sockets: a program listens on `<pid>.sock`; ipbp-ld connects only to a socket of
//! this user, within a time limit, and talks only when `SO_PEERCRED` says `<pid>` itself listens.

use super::files::{cstr, last_error};
use super::{uid, Registry};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

impl Registry {
    /// Listens on `<pid>.sock` (mode 0600), replacing a socket left by an earlier process with the
    /// same pid.
    pub fn listen(&self, pid: u32) -> io::Result<UnixListener> {
        let name = format!("{pid}.sock");
        // SAFETY: unlinkat relative to our directory; removes a stale entry, never follows it.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), cstr(&name).as_ptr(), 0) };
        // bind creates the socket and fails if anything exists by that name; it follows nothing.
        let listener = UnixListener::bind(self.through_fd(&name)).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", self.root.join(&name).display()))
        })?;
        // SAFETY: fchmodat on the socket we just created in our own directory.
        unsafe { libc::fchmodat(self.dir.as_raw_fd(), cstr(&name).as_ptr(), 0o600, 0) };
        Ok(listener)
    }

    /// Connects to the socket of process `pid`: only a socket (not a symlink) owned by this user,
    /// and only when the process listening on it is `pid` itself.
    pub fn connect(&self, pid: u32) -> io::Result<UnixStream> {
        let name = format!("{pid}.sock");
        let shown = self.root.join(&name);
        // SAFETY: fstatat relative to our directory, not following a final symlink.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe {
            libc::fstatat(self.dir.as_raw_fd(), cstr(&name).as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW)
        } != 0
        {
            return last_error(format_args!("cannot find {}", shown.display()));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK || st.st_uid != uid() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is not a socket of this user; not connecting", shown.display()),
            ));
        }
        let stream = connect_within(&self.through_fd(&name), CONNECT_TIMEOUT)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot connect to {}: {e}", shown.display())))?;
        match peer(&stream) {
            Some((peer_pid, peer_uid)) if peer_pid == pid && peer_uid == uid() => Ok(stream),
            _ => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is not served by process {pid}; not talking to it", shown.display()),
            )),
        }
    }
}

/// How long connecting may take. Connecting to a listening socket returns at once unless its
/// backlog is full (a program that stopped accepting), where a plain `connect` would wait forever.
pub(super) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// `connect` to a Unix socket, giving up after `timeout` (`SO_SNDTIMEO` bounds a blocking connect).
pub(super) fn connect_within(path: &Path, timeout: std::time::Duration) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: a zeroed sockaddr_un is valid; the path is copied in below, bounds checked.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket path too long"));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &b) in addr.sun_path.iter_mut().zip(bytes) {
        *d = b as libc::c_char;
    }
    // SAFETY: socket() returns a fresh descriptor, owned right away.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let deadline = std::time::Instant::now() + timeout;
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "the program does not accept connections");
    loop {
        // A zero SO_SNDTIMEO would mean no limit at all.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        let tv = libc::timeval {
            tv_sec: left.as_secs() as libc::time_t,
            tv_usec: left.subsec_micros().max(1) as libc::suseconds_t,
        };
        // SAFETY: setsockopt with a `timeval` of the given size; connect with a filled sockaddr_un.
        let connected = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            libc::connect(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            ) == 0
        };
        if connected {
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // A signal handler ran while waiting for room in the backlog (the runtime's own stop
            // signals do, while another thread installs detours): nothing was connected, so
            // connecting again, for the time left, is the same connect.
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN | libc::EINPROGRESS) => return Err(timed_out()),
            _ => return Err(e),
        }
    }
    Ok(UnixStream::from(fd))
}

/// The pid and uid of the process at the other end of a Unix socket (`SO_PEERCRED`).
pub fn peer(stream: &UnixStream) -> Option<(u32, u32)> {
    let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a `struct ucred` of the given length.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some((cred.pid as u32, cred.uid))
}
