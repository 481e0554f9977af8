//! `ipbp::listener(addr)`: the listening socket a restart passed for `addr`, or a fresh bind.
//!
//! Passed sockets are found the way `listenfd` finds them (`LISTEN_PID` is this process,
//! `LISTEN_FDS` descriptors from fd 3), matched by local address (port 0 matches any port of the
//! same IP), and each is given out once. Every socket given out is passed on at the next restart
//! (see `fds`).

use super::fds::passed;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::Mutex;

/// Passed descriptors already given to the program.
static TAKEN: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

fn local_addr(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: getsockname into storage of ours, sized for any address.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    if unsafe { libc::getsockname(fd, (&mut storage as *mut libc::sockaddr_storage).cast(), &mut len) } != 0 {
        return None;
    }
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in.
            let a = unsafe { *(&storage as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::from((u32::from_be(a.sin_addr.s_addr).to_be_bytes(), u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6.
            let a = unsafe { *(&storage as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::from((a.sin6_addr.s6_addr, u16::from_be(a.sin6_port))))
        }
        _ => None,
    }
}

fn matches(wanted: &SocketAddr, have: &SocketAddr) -> bool {
    wanted.ip() == have.ip() && (wanted.port() == 0 || wanted.port() == have.port())
}

pub fn listener(addr: impl ToSocketAddrs) -> std::io::Result<TcpListener> {
    let wanted: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    for fd in passed() {
        if taken.contains(&fd) {
            continue;
        }
        let Some(have) = local_addr(fd) else { continue };
        if wanted.iter().any(|w| matches(w, &have)) {
            taken.push(fd);
            super::fds::note_taken_again(fd);
            // SAFETY: a listening socket the previous build passed to this process, given out
            // once; close-on-exec again, as std's own sockets are.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            // SAFETY: the descriptor is ours (see above) and a TCP socket of the wanted address.
            return Ok(unsafe { TcpListener::from_raw_fd(fd) });
        }
    }
    let fresh = TcpListener::bind(&wanted[..])?;
    super::fds::note_taken_again(fresh.as_raw_fd());
    Ok(fresh)
}
