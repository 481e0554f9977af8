//! Check: the executable a `restart` names is the build it claims to be, before anything changes.
//!
//! Only a build of this same program is accepted (see [`program`]). The file is opened once, its build-id note read from that descriptor, and that same descriptor
//! is what `execveat` runs: a file replaced after the check is not the one executed (the check and
//! the exec see one inode; a write into that inode after the check is not detected — the same
//! user could run anything anyway).

use crate::elf;
use crate::protocol::Restart;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

/// ELF notes larger than this are not a build id's.
const MAX_NOTES: u64 = 1 << 16;

/// Opens `req.file` and checks it: an absolute path to a regular file of this user, an ELF
/// executable for this machine whose build id is `req.build_id`, and a build ipbp-ld recorded
/// for that very file (so only builds of programs linked through ipbp-ld are ever executed).
pub fn open_checked(req: &Restart) -> Result<OwnedFd, String> {
    let path = &req.file;
    let shown = path.display();
    if !path.is_absolute() {
        return Err(format!("{shown} is not an absolute path"));
    }
    let registry = crate::process::registry().ok_or("this process is not registered")?;
    match registry.build(&req.build_id) {
        Some(record) if record.output == *path => {}
        Some(record) => {
            return Err(format!(
                "build {} was recorded for {}, not {shown}",
                req.build_id,
                record.output.display()
            ))
        }
        None => return Err(format!("build {} was not recorded by ipbp-ld", req.build_id)),
    }
    // A build of this program: where its own build was linked, under the same name (cargo's
    // `deps/<name>-<hash>`), not another program of the same user.
    let running = crate::process::build_id().and_then(|id| registry.build(id));
    if let Some(running) = running {
        if program(&running.output) != program(path) {
            return Err(format!("{shown} is not a build of this program ({})", running.output.display()));
        }
    }
    let name = CString::new(path.as_os_str().as_bytes()).map_err(|_| format!("{shown} has a NUL byte"))?;
    // SAFETY: open with a valid C string; the descriptor is owned below.
    let fd = unsafe { libc::open(name.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
    if fd < 0 {
        return Err(format!("cannot open {shown}: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fstat into a zeroed stat of our own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(format!("cannot stat {shown}: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: getuid has no preconditions.
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_uid != unsafe { libc::getuid() } {
        return Err(format!("{shown} is not a regular file of this user"));
    }
    let found = build_id(&fd).map_err(|e| format!("{shown}: {e}"))?;
    if found != req.build_id {
        return Err(format!("{shown} is build {found}, not {}", req.build_id));
    }
    Ok(fd)
}

/// The directory and name of a program's executable, without cargo's `-<hash>`.
fn program(path: &std::path::Path) -> Option<(&std::path::Path, &str)> {
    let name = path.file_name()?.to_str()?;
    let stem = match name.rsplit_once('-') {
        Some((stem, hash)) if !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_hexdigit()) => stem,
        _ => name,
    };
    Some((path.parent()?, stem))
}

/// Reads `len` bytes at `offset`, or fewer at the end of the file.
fn pread(fd: &OwnedFd, offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        // SAFETY: pread into the unfilled rest of our buffer.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf[done..].as_mut_ptr().cast(),
                len - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        match n {
            0 => break,
            n if n < 0 => return None,
            n => done += n as usize,
        }
    }
    buf.truncate(done);
    Some(buf)
}

/// The GNU build id of the ELF file open on `fd`, from its program headers' note segments.
pub fn build_id(fd: &OwnedFd) -> Result<String, &'static str> {
    let head = pread(fd, 0, 64).ok_or("cannot read it")?;
    let h = elf::header(&head)?;
    if h.machine != elf::EM_HOST {
        return Err("not an executable for this machine");
    }
    let end =
        h.phoff.checked_add(h.phnum as u64 * 56).filter(|&e| e <= MAX_NOTES).ok_or("bad program headers")?;
    let table = pread(fd, 0, end as usize).ok_or("cannot read its program headers")?;
    for s in elf::segments(&table, &h)?.into_iter().filter(|s| s.p_type == libc::PT_NOTE) {
        if s.filesz > MAX_NOTES {
            continue;
        }
        let notes = pread(fd, s.offset, s.filesz as usize).ok_or("cannot read its notes")?;
        if let Some(id) = crate::image::gnu_build_id(&notes) {
            return Ok(id);
        }
    }
    Err("it has no build id")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_program_is_its_directory_and_name_without_cargos_hash() {
        use std::path::Path;
        let p = |s: &'static str| super::program(Path::new(s));
        assert_eq!(p("/t/debug/deps/app-1f2e"), p("/t/debug/deps/app-99"));
        assert_eq!(p("/t/debug/deps/my-app-1f2e"), Some((Path::new("/t/debug/deps"), "my-app")));
        assert_ne!(p("/t/debug/deps/app-1f2e"), p("/t/debug/deps/other-1f2e"));
        assert_ne!(p("/t/debug/deps/app-1f2e"), p("/t/release/deps/app-1f2e"));
        assert_eq!(p("/t/app"), Some((Path::new("/t"), "app")));
    }

    #[test]
    fn the_build_id_read_from_a_file_is_the_loaders() {
        let file = std::fs::File::open("/proc/self/exe").expect("open");
        let loaded = crate::image::main_program().expect("the test binary has a build id");
        assert_eq!(super::build_id(&file.into()).expect("a build id"), loaded.build_id);
        let not_elf = std::fs::File::open("/proc/self/cmdline").expect("open");
        assert!(super::build_id(&not_elf.into()).is_err());
    }
}
