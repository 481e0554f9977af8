//! Which files were saved: inotify on the directories that hold the workspace's sources.
//!
//! Written on `libc` rather than the `notify` crate: `watch` needs directory watches and four
//! event kinds, read without any debounce of their own (a build starts on the first event), and
//! `libc` is already a dependency, where `notify` would add its own threads, channels and a
//! dozen crates to the linker every build runs.
//!
//! Directories, not files, are watched: an editor that saves by writing a temporary file and
//! renaming it over the original replaces the file's inode, which a watch on the file would lose;
//! the directory sees `IN_MOVED_TO` with the file's name. In-place writes end in `IN_CLOSE_WRITE`.
//! Events that arrive while a build runs wait in the kernel's queue and are read after it, so no
//! save is missed; a queue overflow is reported as such and treated as "anything may have changed".

use crate::error::Error;
use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub struct Watcher {
    fd: OwnedFd,
    dirs: HashMap<i32, PathBuf>,
}

/// What one read of the queue found.
#[derive(Default, Debug)]
pub struct Events {
    /// Files written, renamed into place, created or removed.
    pub paths: BTreeSet<PathBuf>,
    /// Directories created (or moved in) inside watched ones: to watch as well.
    pub new_dirs: Vec<PathBuf>,
    /// The kernel dropped events: anything may have changed.
    pub overflow: bool,
}

/// `IN_CREATE` serves new directories only: a new file is reported when it is written
/// (`IN_CLOSE_WRITE`), not while still empty.
const MASK: u32 =
    libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_DELETE | libc::IN_CREATE;

impl Watcher {
    pub fn new() -> Result<Watcher, Error> {
        // SAFETY: plain system call; the descriptor is owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            crate::bail!("cannot watch files (inotify_init1): {}", std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Watcher { fd: unsafe { OwnedFd::from_raw_fd(fd) }, dirs: HashMap::new() })
    }

    /// Watches `dir` (not its subdirectories); watching a directory twice is harmless.
    pub fn watch_dir(&mut self, dir: &Path) -> Result<(), Error> {
        if self.dirs.values().any(|d| d == dir) {
            return Ok(());
        }
        let c = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| crate::err!("bad path {}", dir.display()))?;
        // SAFETY: `c` is a valid C string for the duration of the call.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), MASK | libc::IN_ONLYDIR) };
        if wd < 0 {
            crate::bail!("cannot watch {}: {}", dir.display(), std::io::Error::last_os_error());
        }
        self.dirs.insert(wd, dir.to_path_buf());
        Ok(())
    }

    pub fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Everything queued now (without waiting).
    pub fn drain(&mut self) -> Events {
        let mut events = Events::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reads into a buffer we own, of the length given.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return events; // EAGAIN: the queue is empty
            }
            let mut at = 0usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n as usize {
                // SAFETY: the kernel wrote whole events; read_unaligned copes with the byte buffer.
                let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                let name_bytes = &buf[at + header..at + header + ev.len as usize];
                let name = &name_bytes[..name_bytes.iter().position(|&b| b == 0).unwrap_or(name_bytes.len())];
                at += header + ev.len as usize;
                if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                    events.overflow = true;
                    continue;
                }
                let Some(dir) = self.dirs.get(&ev.wd) else { continue };
                if name.is_empty() {
                    continue;
                }
                let path = dir.join(std::ffi::OsStr::from_bytes(name));
                if ev.mask & libc::IN_ISDIR != 0 {
                    if ev.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
                        events.new_dirs.push(path);
                    }
                } else if ev.mask & libc::IN_CREATE == 0 {
                    events.paths.insert(path);
                }
            }
        }
    }
}
