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

use std::ffi::{CString, OsStr};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Overrides the registry directory (tests use a fresh one each).
pub const HOME_ENV: &str = "IPBP_HOME";

/// How long a build waits for another one that is patching the same process (which takes
/// milliseconds to a few seconds) before it gives up on that process.
pub const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// Registration files and build records are a few hundred bytes; anything larger is not ours.
const MAX_RECORD: u64 = 64 << 10;

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

/// An open, checked registry directory. Every operation goes through its descriptor, so renaming
/// or replacing the path after the check changes nothing.
#[derive(Debug)]
pub struct Registry {
    root: PathBuf,
    dir: OwnedFd,
}

fn cstr(name: &str) -> CString {
    // Names are built here from digits, hex and fixed suffixes: never a NUL.
    CString::new(name).expect("registry names have no NUL")
}

fn last_error<T>(what: impl std::fmt::Display) -> io::Result<T> {
    let e = io::Error::last_os_error();
    Err(io::Error::new(e.kind(), format!("{what}: {e}")))
}

fn fstat(fd: i32) -> io::Result<libc::stat> {
    // SAFETY: fstat fills a `struct stat` for a descriptor we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
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

    /// Opens the registry of this user ([`root`]) if it exists and is safe.
    pub fn existing() -> Result<Registry, OpenError> {
        Registry::open(&root(), false)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path that reaches `name` inside the checked directory through its descriptor, for the
    /// calls that take no directory descriptor (`bind`, `connect`). Short enough for `sun_path`.
    fn through_fd(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.dir.as_raw_fd()))
    }

    /// The `builds/` directory (mode 0700), created when `create` is set.
    fn builds(&self, create: bool) -> io::Result<OwnedFd> {
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

/// How long connecting may take. Connecting to a listening socket returns at once unless its
/// backlog is full (a program that stopped accepting), where a plain `connect` would wait forever.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// `connect` to a Unix socket, giving up after `timeout` (`SO_SNDTIMEO` bounds a blocking connect).
fn connect_within(path: &Path, timeout: std::time::Duration) -> io::Result<UnixStream> {
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

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)`, mode 0600 when creating.
/// `O_NONBLOCK` so that a FIFO planted by a name cannot make the open hang.
fn open_at(dir: &OwnedFd, name: &CString, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: openat relative to a directory descriptor we own.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads a small regular file of this user, not through a symlink.
fn read_file_at(dir: &OwnedFd, name: &str) -> io::Result<String> {
    let fd = open_at(dir, &cstr(name), libc::O_RDONLY)?;
    let st = fstat(fd.as_raw_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_uid != uid() || st.st_size as u64 > MAX_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name} is not a record of this user"),
        ));
    }
    let mut text = String::new();
    File::from(fd).take(MAX_RECORD).read_to_string(&mut text)?;
    Ok(text)
}

/// Writes `name` through a temporary file created with `O_EXCL` and a rename, so readers never
/// see half a file and nothing that was planted is written through.
fn write_file_at(dir: &OwnedFd, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = format!(".{name}.{}.tmp", std::process::id());
    let (ctmp, cname) = (cstr(&tmp), cstr(name));
    let create = || open_at(dir, &ctmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL);
    let fd = match create() {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            // Left by a process with our pid that died mid-write.
            // SAFETY: unlinkat relative to our directory; removes the entry, never follows it.
            unsafe { libc::unlinkat(dir.as_raw_fd(), ctmp.as_ptr(), 0) };
            create()?
        }
        other => other?,
    };
    let mut file = File::from(fd);
    let written = file.write_all(bytes).and_then(|()| {
        // SAFETY: renameat within our directory.
        if unsafe { libc::renameat(dir.as_raw_fd(), ctmp.as_ptr(), dir.as_raw_fd(), cname.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    });
    if written.is_err() {
        // SAFETY: as above.
        unsafe { libc::unlinkat(dir.as_raw_fd(), ctmp.as_ptr(), 0) };
    }
    written
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

/// What ipbp-ld knows about one executable it linked.
///
/// The paths are for people and tools; ipbp-ld derives the files it reads from its own target
/// directory and checks them against these, so a record cannot make it read anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRecord {
    pub build_id: String,
    /// The path the linker wrote (`target/debug/deps/app-<hash>`).
    pub output: PathBuf,
    /// Where the symbol map is (written when first asked for: `ipbp-ld map`).
    pub map: PathBuf,
    /// The list of kept link inputs (see ipbp-ld's `map::store`).
    pub inputs: PathBuf,
}

impl BuildRecord {
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "build-id {}", self.build_id);
        let _ = writeln!(s, "output {}", self.output.display());
        let _ = writeln!(s, "map {}", self.map.display());
        let _ = writeln!(s, "inputs {}", self.inputs.display());
        s
    }

    pub fn parse(text: &str) -> Option<Self> {
        let f = Fields::new(text);
        Some(BuildRecord {
            build_id: f.get("build-id")?.to_string(),
            output: f.get("output")?.into(),
            map: f.get("map")?.into(),
            inputs: f.get("inputs")?.into(),
        })
    }

    /// The record of `build_id` in the registry at `root`, if the registry is safe and has one.
    pub fn load(root: &Path, build_id: &str) -> Option<Self> {
        Registry::open(root, false).ok()?.build(build_id)
    }
}

/// What a running program tells ipbp-ld about itself. Its socket is `<pid>.sock` next to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22): tells a live process
    /// from a new one that reused its pid.
    pub start_time: u64,
    pub exe: PathBuf,
    pub build_id: String,
    pub load_bias: u64,
    pub runtime_version: String,
}

impl Registration {
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "pid {}", self.pid);
        let _ = writeln!(s, "start-time {}", self.start_time);
        let _ = writeln!(s, "exe {}", self.exe.display());
        let _ = writeln!(s, "build-id {}", self.build_id);
        let _ = writeln!(s, "load-bias {:#x}", self.load_bias);
        let _ = writeln!(s, "runtime {}", self.runtime_version);
        s
    }

    pub fn parse(text: &str) -> Option<Self> {
        let f = Fields::new(text);
        Some(Registration {
            pid: f.get("pid")?.parse().ok()?,
            start_time: f.get("start-time")?.parse().ok()?,
            exe: f.get("exe")?.into(),
            build_id: f.get("build-id")?.to_string(),
            load_bias: parse_hex(f.get("load-bias")?)?,
            runtime_version: f.get("runtime").unwrap_or("?").to_string(),
        })
    }

    /// True while the registering process (not a later one with its pid) is running.
    pub fn is_alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start_time)
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

/// Fields 3 and 22 of `/proc/<pid>/stat`: the state letter and the start time.
fn stat_fields(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

/// Field 22 of `/proc/<pid>/stat`, for a process that is running (not a zombie).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let (state, start) = stat_fields(pid)?;
    // Z, X: exited, waiting for its parent to reap it.
    (state != 'Z' && state != 'X').then_some(start)
}

/// Whether `pid` is stopped by a signal (`T`) or by a tracer (`t`): it cannot answer until resumed.
pub fn is_stopped(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|(state, _)| state == 'T' || state == 't')
}

pub fn parse_hex(text: &str) -> Option<u64> {
    let t = text.trim();
    match t.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => t.parse().ok(),
    }
}

/// `key value` lines; the value is the rest of the line.
pub struct Fields<'a> {
    lines: Vec<(&'a str, &'a str)>,
}

impl<'a> Fields<'a> {
    pub fn new(text: &'a str) -> Self {
        let lines = text
            .lines()
            .filter_map(|l| {
                let l = l.trim_end();
                if l.is_empty() {
                    return None;
                }
                Some(l.split_once(' ').unwrap_or((l, "")))
            })
            .collect();
        Fields { lines }
    }

    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.lines.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    pub fn all(&self, key: &'a str) -> impl Iterator<Item = &'a str> + '_ {
        self.lines.iter().filter(move |(k, _)| *k == key).map(|(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ipbp-registry-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn reg(pid: u32) -> Registration {
        Registration {
            pid,
            start_time: 12345,
            exe: "/a b/app".into(),
            build_id: "abcd".into(),
            load_bias: 0x5555_0000_0000,
            runtime_version: "0.1.0".into(),
        }
    }

    #[test]
    fn registration_round_trips() {
        assert_eq!(Registration::parse(&reg(42).to_text()), Some(reg(42)));
    }

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let pid = std::process::id();
        let mut reg = Registration { pid, start_time: process_start_time(pid).unwrap(), ..reg(pid) };
        assert!(reg.is_alive());
        assert!(!is_stopped(pid));
        reg.start_time += 1;
        assert!(!reg.is_alive());
    }

    #[test]
    fn a_fresh_registry_is_private_and_round_trips_records() {
        let base = scratch("fresh");
        let root = base.join("home");
        assert!(matches!(Registry::open(&root, false), Err(OpenError::Missing)));
        let r = Registry::open(&root, true).unwrap();
        assert_eq!(std::fs::metadata(&root).unwrap().permissions().mode() & 0o777, 0o700);
        let build = BuildRecord {
            build_id: "00ff".into(),
            output: "/t/app".into(),
            map: "/t/m.json".into(),
            inputs: "/t/m.inputs".into(),
        };
        r.write_build(&build).unwrap();
        assert_eq!(r.build("00ff"), Some(build));
        assert_eq!(std::fs::metadata(root.join("builds")).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(root.join("builds/00ff")).unwrap().permissions().mode() & 0o777, 0o600);
        r.register(&reg(7)).unwrap();
        assert_eq!(std::fs::metadata(root.join("7.process")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(r.list(), vec![reg(7)]);
        r.unregister(7);
        assert!(r.list().is_empty());
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn names_come_from_pids_and_build_ids_only() {
        let base = scratch("names");
        let r = Registry::open(&base.join("home"), true).unwrap();
        for bad in ["../../etc/shadow", "ABCD", "", "a/b", "x"] {
            assert!(check_build_id(bad).is_err(), "{bad:?} accepted");
            assert_eq!(r.build(bad), None);
        }
        // A registration whose pid disagrees with its file name, or with a bad build id, is ignored.
        std::fs::write(base.join("home/8.process"), reg(9).to_text()).unwrap();
        let evil = Registration { build_id: "../x".into(), ..reg(10) };
        std::fs::write(base.join("home/10.process"), evil.to_text()).unwrap();
        assert!(r.list().is_empty());
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn symlinks_and_loose_directories_are_refused() {
        let base = scratch("unsafe");
        let real = base.join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = Registry::open(&link, true).unwrap_err();
        assert!(matches!(e, OpenError::Unsafe(_)) && e.to_string().contains("symbolic link"), "{e}");

        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = Registry::open(&open, true).unwrap_err();
        assert!(
            e.to_string().contains("writable by other users") && e.to_string().contains("chmod 700"),
            "{e}"
        );

        // Only readable by others: nothing could be planted; tightened to 0700.
        let readable = base.join("readable");
        std::fs::create_dir(&readable).unwrap();
        std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o755)).unwrap();
        Registry::open(&readable, false).unwrap();
        assert_eq!(std::fs::metadata(&readable).unwrap().mode() & 0o777, 0o700);

        // A symlinked lock is not followed (and nothing is created at its target).
        let r = Registry::open(&real, false).unwrap();
        std::os::unix::fs::symlink(base.join("victim"), real.join("5.lock")).unwrap();
        assert!(r.lock(5).is_err());
        assert!(!base.join("victim").exists());
        // A symlinked socket is not connected to.
        std::os::unix::fs::symlink("/dev/null", real.join("5.sock")).unwrap();
        let e = r.connect(5).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn connecting_to_a_program_that_does_not_accept_gives_up() {
        let base = scratch("backlog");
        let path = base.join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // SAFETY: lowers the backlog of our own listening socket.
        unsafe { libc::listen(listener.as_raw_fd(), 0) };
        let mut held = Vec::new();
        let failed =
            (0..16).find_map(|_| match connect_within(&path, std::time::Duration::from_millis(200)) {
                Ok(s) => {
                    held.push(s);
                    None
                }
                Err(e) => Some(e),
            });
        let e = failed.expect("a full backlog should make connect give up");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        if uid() != 0 {
            eprintln!("skipped: only root can hand a directory to another user");
            return;
        }
        let base = scratch("owner");
        let planted = base.join("planted");
        std::fs::create_dir(&planted).unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
        let e = Registry::open(&planted, true).unwrap_err();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        let _ = std::fs::remove_dir_all(base);
    }
}
