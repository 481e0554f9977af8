//! Opening the registry directory safely: not a symlink, a directory of this user that no one
//! else can write; and its `builds/` subdirectory, checked the same way.

use super::files::{cstr, fstat, open_at};
use super::{root, uid, Registry, HOME_ENV};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why the registry cannot be used.
#[derive(Debug)]
pub enum OpenError {
    /// It does not exist (and was not to be created): no program registered, no build recorded.
    Missing,
    /// It exists but another user could have planted or could change what is in it. The message
    /// says what is wrong and how to fix it.
    Unsafe(String),
    Io(io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Missing => write!(f, "the registry directory does not exist"),
            OpenError::Unsafe(why) => write!(f, "{why}"),
            OpenError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<OpenError> for io::Error {
    fn from(e: OpenError) -> io::Error {
        match e {
            OpenError::Io(e) => e,
            OpenError::Missing => io::Error::new(io::ErrorKind::NotFound, e.to_string()),
            OpenError::Unsafe(_) => io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()),
        }
    }
}

/// The one line that says why a directory is not safe, or `None` when it is. `st` is of the
/// opened directory itself.
fn unsafe_because(path: &Path, st: &libc::stat) -> Option<String> {
    let me = uid();
    let fix = format!("remove it or set {HOME_ENV} to a directory of your own");
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Some(format!("{} is not a directory; {fix}", path.display()));
    }
    if st.st_uid != me {
        return Some(format!(
            "{} is owned by uid {}, not by this user (uid {me}); {fix}",
            path.display(),
            st.st_uid
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Some(format!(
            "{} is writable by other users (mode {:o}); run `chmod 700 {}` or {fix}",
            path.display(),
            st.st_mode & 0o7777,
            path.display()
        ));
    }
    None
}

impl Registry {
    /// Opens the registry at `root`, creating it (mode 0700) when `create` is set, and checks it:
    /// not a symlink, a directory owned by this user, writable by nobody else. A directory only
    /// readable by others is tightened to 0700 (nothing could have been planted in it).
    pub fn open(root: &Path, create: bool) -> Result<Registry, OpenError> {
        let path = CString::new(root.as_os_str().as_bytes())
            .map_err(|_| OpenError::Unsafe(format!("{} contains a NUL byte", root.display())))?;
        if create {
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                let _ = std::fs::create_dir_all(parent);
            }
            // SAFETY: mkdir with a valid path; an existing entry (of any kind) is checked below.
            unsafe { libc::mkdir(path.as_ptr(), 0o700) };
        }
        // O_NOFOLLOW: a symlink in place of the directory fails here (ELOOP) instead of being
        // followed; O_DIRECTORY: so does anything but a directory.
        // SAFETY: open with a valid path; the descriptor is owned below.
        let fd = unsafe {
            libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) => OpenError::Missing,
                Some(libc::ELOOP | libc::ENOTDIR) => {
                    let link = std::fs::symlink_metadata(root).is_ok_and(|m| m.file_type().is_symlink());
                    OpenError::Unsafe(format!(
                        "{} is {}; remove it or set {HOME_ENV} to a directory of your own",
                        root.display(),
                        if link { "a symbolic link" } else { "not a directory" }
                    ))
                }
                _ => OpenError::Io(io::Error::new(e.kind(), format!("cannot open {}: {e}", root.display()))),
            });
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let dir = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = fstat(dir.as_raw_fd()).map_err(OpenError::Io)?;
        if let Some(why) = unsafe_because(root, &st) {
            return Err(OpenError::Unsafe(why));
        }
        if st.st_mode & 0o077 != 0 {
            // SAFETY: fchmod on the directory we just checked is ours.
            unsafe { libc::fchmod(dir.as_raw_fd(), 0o700) };
        }
        Ok(Registry { root: root.to_path_buf(), dir })
    }

    /// Opens the registry of this user ([`root`](super::root)) if it exists and is safe.
    pub fn existing() -> Result<Registry, OpenError> {
        Registry::open(&root(), false)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path that reaches `name` inside the checked directory through its descriptor, for the
    /// calls that take no directory descriptor (`bind`, `connect`). Short enough for `sun_path`.
    pub(super) fn through_fd(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.dir.as_raw_fd()))
    }

    /// The `builds/` directory (mode 0700), created when `create` is set.
    pub(super) fn builds(&self, create: bool) -> io::Result<OwnedFd> {
        let name = cstr("builds");
        if create {
            // SAFETY: mkdirat relative to our directory descriptor.
            unsafe { libc::mkdirat(self.dir.as_raw_fd(), name.as_ptr(), 0o700) };
        }
        let fd = open_at(&self.dir, &name, libc::O_RDONLY | libc::O_DIRECTORY)?;
        let st = fstat(fd.as_raw_fd())?;
        if st.st_uid != uid() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}/builds is not owned by this user", self.root.display()),
            ));
        }
        if st.st_mode & 0o077 != 0 {
            // SAFETY: fchmod on our own directory (its parent is ours and closed to others).
            unsafe { libc::fchmod(fd.as_raw_fd(), 0o700) };
        }
        Ok(fd)
    }
}
