//! The meeting point of running programs and `ipbp-ld`: one directory per user.
//!
//! ```text
//! $IPBP_HOME or $XDG_RUNTIME_DIR/ipbp or /tmp/ipbp-<uid>     (mode 0700, owned by the user)
//!   builds/<build-id>        written by ipbp-ld for every executable it links: "this build is ours"
//!   <pid>.process            written by a running program in ipbp::init(): who it is
//!   <pid>.sock               the program's patch channel (Unix stream socket)
//!   <pid>.lock               held by an ipbp-ld while it builds and delivers a patch for <pid>
//! ```
//!
//! Both files are `key value` lines: the runtime needs no parser crate, and a human can read them.
//! This module is shared by both sides, so the two can never disagree about paths or formats.
//!
//! **Trust.** The default directory lives in `/tmp` for users without `XDG_RUNTIME_DIR` (root,
//! typically), where another user may have created it first. So the directory is used only when it
//! is safe: not a symlink, owned by this user, and writable by no one else ([`Registry::open`]).
//! Everything inside is reached through the directory's descriptor (`openat`, `O_NOFOLLOW`, created
//! with `O_EXCL`), the name of every file, socket and lock is derived from a pid or a build id
//! (checked to be digits or hex), and nothing a file *says* is ever opened, connected to or
//! deleted: the socket of `<pid>.process` is `<pid>.sock`, whatever the file claims.
//!
//! The files: this one holds the directory's operations on records and locks; [`dir`] opens and
//! checks the directory; [`files`] reads and writes inside it through its descriptor (`openat`);
//! [`peer`] listens and connects on the process sockets (`SO_PEERCRED`); [`records`] holds the
//! two record formats and what `/proc` says about a pid.

mod dir;
mod files;
mod peer;
mod records;

pub use dir::OpenError;
pub use peer::peer;
pub use records::{is_stopped, parse_hex, process_start_time, BuildRecord, Fields, Registration};

use files::{cstr, fstat, open_at, read_file_at, write_file_at};
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Overrides the registry directory (tests use a fresh one each).
pub const HOME_ENV: &str = "IPBP_HOME";

/// How long a build waits for another one that is patching the same process (which takes
/// milliseconds to a few seconds) before it gives up on that process.
pub const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// The registry directory for this user (not created).
pub fn root() -> PathBuf {
    if let Some(home) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(home);
    }
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        let run = PathBuf::from(run);
        if run.is_dir() {
            return run.join("ipbp");
        }
    }
    PathBuf::from(format!("/tmp/ipbp-{}", uid()))
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// An open, checked registry directory. Every operation goes through its descriptor, so renaming
/// or replacing the path after the check changes nothing.
#[derive(Debug)]
pub struct Registry {
    root: PathBuf,
    dir: OwnedFd,
}

impl Registry {
    /// Notes that ipbp-ld linked this build (`builds/<build-id>`, mode 0600).
    pub fn write_build(&self, build: &BuildRecord) -> io::Result<()> {
        check_build_id(&build.build_id)?;
        let builds = self.builds(true)?;
        write_file_at(&builds, &build.build_id, build.to_text().as_bytes())
    }

    /// The record of a build, if ipbp-ld linked it.
    pub fn build(&self, build_id: &str) -> Option<BuildRecord> {
        check_build_id(build_id).ok()?;
        let builds = self.builds(false).ok()?;
        let text = read_file_at(&builds, build_id).ok()?;
        BuildRecord::parse(&text).filter(|b| b.build_id == build_id)
    }

    /// Registers process `reg.pid` (`<pid>.process`, mode 0600).
    pub fn register(&self, reg: &Registration) -> io::Result<()> {
        check_build_id(&reg.build_id)?;
        write_file_at(&self.dir, &format!("{}.process", reg.pid), reg.to_text().as_bytes())
    }

    /// Removes the registration of `pid` only (its socket stays): see `restart`.
    pub fn withdraw(&self, pid: u32) {
        // SAFETY: unlinkat relative to our directory; a symlink is removed, not followed.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), cstr(&format!("{pid}.process")).as_ptr(), 0) };
    }

    /// Removes the registration and socket of `pid` (the names are derived, never read).
    pub fn unregister(&self, pid: u32) {
        for name in [format!("{pid}.process"), format!("{pid}.sock")] {
            // SAFETY: unlinkat relative to our directory; a symlink is removed, not followed.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), cstr(&name).as_ptr(), 0) };
        }
    }

    /// Removes everything of a process that is gone: registration, socket and lock.
    pub fn remove_stale(&self, pid: u32) {
        self.unregister(pid);
        // SAFETY: as in `unregister`.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), cstr(&format!("{pid}.lock")).as_ptr(), 0) };
    }

    /// Every well-formed registration, live or not, sorted by pid. Files that are not regular,
    /// not this user's, too large, or whose pid disagrees with their name are ignored.
    pub fn list(&self) -> Vec<Registration> {
        let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", self.dir.as_raw_fd())) else {
            return Vec::new();
        };
        let mut regs: Vec<Registration> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let pid = process_file_pid(&name)?;
                let text = read_file_at(&self.dir, name.to_str()?).ok()?;
                Registration::parse(&text).filter(|r| r.pid == pid && check_build_id(&r.build_id).is_ok())
            })
            .collect();
        regs.sort_by_key(|r| r.pid);
        regs
    }

    /// Opens and locks (`flock`, exclusive) `<pid>.lock`, mode 0600, waiting at most
    /// [`LOCK_PATIENCE`] for another build that is patching `pid`. Held while a patch for `pid` is
    /// built and delivered; released when the file is dropped.
    pub fn lock(&self, pid: u32) -> io::Result<File> {
        let name = format!("{pid}.lock");
        let fd = open_at(&self.dir, &cstr(&name), libc::O_RDWR | libc::O_CREAT).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open {}: {e}", self.root.join(&name).display()))
        })?;
        let st = fstat(fd.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_uid != uid() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is not a file of this user", self.root.join(&name).display()),
            ));
        }
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        // SAFETY: flock on a descriptor we own.
        while unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e);
            }
            if std::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("another build has been patching it for {} s", LOCK_PATIENCE.as_secs()),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(File::from(fd))
    }

    /// Drops build records whose map no longer exists (collected, or its target directory cleaned).
    /// Returns how many were dropped. Only the record's own name is ever deleted.
    pub fn collect_builds(&self) -> usize {
        let Ok(builds) = self.builds(false) else { return 0 };
        let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", builds.as_raw_fd())) else {
            return 0;
        };
        let mut dropped = 0;
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            if check_build_id(&name).is_err() {
                continue;
            }
            // A record whose input list is gone (collected, or its target directory cleaned; the
            // map itself is written on demand) can never serve a patch.
            let gone = match read_file_at(&builds, &name) {
                Ok(text) => BuildRecord::parse(&text).is_none_or(|b| !b.inputs.exists()),
                Err(_) => false,
            };
            // SAFETY: unlinkat relative to the builds directory, of a name we checked is a build id.
            if gone && unsafe { libc::unlinkat(builds.as_raw_fd(), cstr(&name).as_ptr(), 0) } == 0 {
                dropped += 1;
            }
        }
        dropped
    }
}

/// `<digits>.process` → the pid.
fn process_file_pid(name: &OsStr) -> Option<u32> {
    let digits = name.to_str()?.strip_suffix(".process")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A build id names a file: only lowercase hex, of a sane length.
pub fn check_build_id(id: &str) -> io::Result<()> {
    if (2..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{id:?} is not a build id")))
    }
}

/// Every registration in `root`, live or not (none when the registry is missing or unsafe).
pub fn list(root: &Path) -> Vec<Registration> {
    Registry::open(root, false).map(|r| r.list()).unwrap_or_default()
}

/// [`Registry::collect_builds`] for `root`, if it is safe.
pub fn collect_builds(root: &Path) -> usize {
    Registry::open(root, false).map_or(0, |r| r.collect_builds())
}

#[cfg(test)]
mod tests;
