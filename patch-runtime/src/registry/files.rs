//! Reading and writing inside the registry through its descriptor: `openat` with `O_NOFOLLOW`,
//! small regular files of this user only, writes through an `O_EXCL` temporary and a rename.

use super::uid;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Registration files and build records are a few hundred bytes; anything larger is not ours.
pub(super) const MAX_RECORD: u64 = 64 << 10;

pub(super) fn cstr(name: &str) -> CString {
    // Names are built here from digits, hex and fixed suffixes: never a NUL.
    CString::new(name).expect("registry names have no NUL")
}

pub(super) fn last_error<T>(what: impl std::fmt::Display) -> io::Result<T> {
    let e = io::Error::last_os_error();
    Err(io::Error::new(e.kind(), format!("{what}: {e}")))
}

pub(super) fn fstat(fd: i32) -> io::Result<libc::stat> {
    // SAFETY: fstat fills a `struct stat` for a descriptor we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)`, mode 0600 when creating.
/// `O_NONBLOCK` so that a FIFO planted by a name cannot make the open hang.
pub(super) fn open_at(dir: &OwnedFd, name: &CString, flags: i32) -> io::Result<OwnedFd> {
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
pub(super) fn read_file_at(dir: &OwnedFd, name: &str) -> io::Result<String> {
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
pub(super) fn write_file_at(dir: &OwnedFd, name: &str, bytes: &[u8]) -> io::Result<()> {
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
