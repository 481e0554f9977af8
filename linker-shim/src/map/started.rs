//! The executable a running process started from, named by its build id.
//!
//! `/proc/<pid>/exe` names the *directory entry* the process was started from. Cargo replaces
//! `target/debug/<bin>` (and rustc's linker `target/debug/deps/<bin>-<hash>`) by deleting that
//! entry, after which the link reads `<path> (deleted)`: `gdb -p PID` alone then finds no
//! executable, and lldb opens the new build in its place. So before a new build of a program is
//! linked, the entry each of its running processes started from is *moved* (`rename`) to the
//! kept copy of that build, `target/ipbp/debug/.build-id/<xx>/<rest>.debug` (see
//! [`crate::store::IpbpDir::executable`]), and linked back (`link`) under its old name. The
//! kernel moves the entry itself, so `/proc/<pid>/exe` now names the kept file, which stays while
//! a process runs the build (collection spares running builds); the user's path holds the same
//! file as before until cargo replaces it, so a failed link loses nothing.
//!
//! Soundness: renaming or linking a directory entry changes no open file, mapping or inode: the
//! running process and its threads are untouched. The entry is moved only when it is a regular
//! file whose inode is the one the process runs (`stat` of `/proc/<pid>/exe` follows to it), and
//! the inode is checked again after the move: an entry replaced by someone else between the check
//! and the rename is moved back. This runs before the real linker starts, so the linker cannot
//! replace its output meanwhile, and cargo replaces `target/debug/<bin>` only after rustc
//! returns; for the microseconds between `rename` and `link` the old name is absent.

use crate::store::{output_name, IpbpDir};
use ipbp::registry::Registry;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Moves the entry each running process of `output`'s program started from to its build's kept
/// copy (what a debugger attaching with `-p PID` alone then reads). Quiet: a process whose entry
/// is already gone, or lies on another filesystem, keeps it as it is.
pub fn name_by_build_id(output: &Path, dir: &IpbpDir) {
    let Ok(registry) = Registry::existing() else { return };
    let name = output_name(output);
    // Only entries inside this target directory are moved: a copy the user installed elsewhere
    // (`~/bin`) is theirs, and keeps its name.
    let Some(target) = dir.root.parent().and_then(|t| t.canonicalize().ok()) else { return };
    for reg in registry.list() {
        if reg.is_alive() && dir.inputs_path(&name, &reg.build_id).is_file() {
            let _ = move_started_entry(reg.pid, &dir.executable(&reg.build_id), &target);
        }
    }
}

/// What [`move_started_entry`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `/proc/<pid>/exe` now names `kept`.
    Moved,
    /// It already did.
    Already,
    /// The entry was deleted before (cargo replaced it): nothing to move.
    Gone,
    /// Another filesystem, or not the file the process runs: left alone.
    LeftAlone,
}

/// Moves the entry process `pid` started from to `kept` and links the same file back at the old
/// name (module doc).
pub fn move_started_entry(pid: u32, kept: &Path, within: &Path) -> io::Result<Outcome> {
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let started = std::fs::read_link(&exe)?;
    if started == kept {
        return Ok(Outcome::Already);
    }
    if started.as_os_str().as_encoded_bytes().ends_with(b" (deleted)") {
        return Ok(Outcome::Gone);
    }
    if !started.starts_with(within) {
        return Ok(Outcome::LeftAlone);
    }
    let running = std::fs::metadata(&exe)?;
    let same = |m: &std::fs::Metadata| m.dev() == running.dev() && m.ino() == running.ino();
    let entry = std::fs::symlink_metadata(&started)?;
    if !entry.is_file() || !same(&entry) {
        return Ok(Outcome::LeftAlone);
    }
    let Some(parent) = kept.parent() else { return Ok(Outcome::LeftAlone) };
    std::fs::create_dir_all(parent)?;
    if std::fs::metadata(parent)?.dev() != running.dev() {
        return Ok(Outcome::LeftAlone);
    }
    // The kept copy is normally a hard link of this very file, and `rename` between two links of
    // one inode does nothing: it goes first, and comes back if the move fails.
    match std::fs::remove_file(kept) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if let Err(e) = rename_no_replace(&started, kept) {
        let _ = std::fs::hard_link(&started, kept);
        // Another mount of the same filesystem (a bind mount): the kept copy is back as it was.
        return if e.raw_os_error() == Some(libc::EXDEV) { Ok(Outcome::LeftAlone) } else { Err(e) };
    }
    if !std::fs::symlink_metadata(kept).is_ok_and(|m| same(&m)) {
        // Replaced between the check and the rename: put it back where it was.
        if rename_no_replace(kept, &started).is_err() {
            let _ = std::fs::remove_file(kept);
        }
        return Ok(Outcome::LeftAlone);
    }
    match std::fs::hard_link(kept, &started) {
        // A new file there meanwhile is what the name would hold after cargo anyway.
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            // No hard links here (a filesystem without them, `protected_hardlinks`, a full
            // disk): the user's file goes back under its own name, never left only in the kept
            // place, which is removed when the process exits.
            if rename_no_replace(kept, &started).is_ok() {
                let _ = std::fs::hard_link(&started, kept);
            }
            Err(e)
        }
        _ => Ok(Outcome::Moved),
    }
}

/// gdb's command file that makes `step` from unpatched code into a patched function stop in its
/// new version (`gdb -p PID -x target/ipbp/debug/ipbp.gdb`; the file says why it is needed).
pub const GDB_SCRIPT: &str = include_str!("ipbp.gdb");

/// The same for lldb, a Python module (`command script import target/ipbp/debug/ipbp_lldb.py`).
pub const LLDB_SCRIPT: &str = include_str!("ipbp_lldb.py");

/// Writes [`GDB_SCRIPT`] and [`LLDB_SCRIPT`] to `target/ipbp/debug/` unless they are there already.
pub fn write_debugger_scripts(dir: &IpbpDir) {
    for (path, text) in [(dir.gdb_script(), GDB_SCRIPT), (dir.lldb_script(), LLDB_SCRIPT)] {
        if std::fs::read(&path).is_ok_and(|t| t == text.as_bytes()) {
            continue;
        }
        let _ = std::fs::create_dir_all(dir.debug_files());
        let _ = crate::store::write_atomically(&path, |out| out.write_all(text.as_bytes()));
    }
}

/// `rename(from, to)` failing when `to` exists (`RENAME_NOREPLACE`).
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths that live across the call.
    let r = unsafe {
        libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of `sleep` in a fresh directory, running; killed when dropped.
    struct Sleeper {
        dir: tempfile::TempDir,
        program: PathBuf,
        child: std::process::Child,
    }

    impl Sleeper {
        fn start() -> Sleeper {
            let dir = tempfile::tempdir().unwrap();
            let program = dir.path().join("sleeper");
            std::fs::copy("/bin/sleep", &program).unwrap();
            // Another test thread forking while the copy was open for writing holds it open in its
            // child until that child execs: running the copy then fails with ETXTBSY for a moment.
            let spawn = || std::process::Command::new(&program).arg("30").spawn();
            let mut child = spawn();
            for _ in 0..50 {
                match &child {
                    Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        child = spawn();
                    }
                    _ => break,
                }
            }
            let child = child.unwrap();
            Sleeper { dir, program, child }
        }

        fn pid(&self) -> u32 {
            self.child.id()
        }

        /// `path` inside the directory, as `/proc/<pid>/exe` spells it.
        fn at(&self, path: &str) -> PathBuf {
            self.dir.path().canonicalize().unwrap().join(path)
        }

        fn exe(&self) -> PathBuf {
            std::fs::read_link(format!("/proc/{}/exe", self.pid())).unwrap()
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A child started from a file: its entry moves to `kept`, `/proc/<pid>/exe` names `kept`,
    /// the old name holds the same file, and a second call finds it done.
    #[test]
    fn the_started_entry_moves_to_the_kept_name_and_the_old_name_stays() {
        let s = Sleeper::start();
        let (program, kept, within) = (s.at("sleeper"), s.at("debug/.build-id/ab/cdef.debug"), s.at(""));
        std::fs::create_dir_all(kept.parent().unwrap()).unwrap();
        std::fs::hard_link(&program, &kept).unwrap();
        assert_eq!(s.exe(), program);

        assert_eq!(move_started_entry(s.pid(), &kept, &within).unwrap(), Outcome::Moved);
        assert_eq!(s.exe(), kept);
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let running = PathBuf::from(format!("/proc/{}/exe", s.pid()));
        assert_eq!(ino(&program), ino(&running));
        assert_eq!(ino(&kept), ino(&running));
        assert_eq!(move_started_entry(s.pid(), &kept, &within).unwrap(), Outcome::Already);

        // The user's name replaced (as cargo does): the process still names the kept file.
        std::fs::remove_file(&program).unwrap();
        std::fs::write(&program, b"new build").unwrap();
        assert_eq!(s.exe(), kept);
    }

    /// A copy started from outside the target directory (the user installed it) keeps its name.
    #[test]
    fn an_entry_outside_the_target_directory_is_left_alone() {
        let s = Sleeper::start();
        std::fs::create_dir_all(s.at("target")).unwrap();
        let kept = s.at("target/ipbp/debug/.build-id/ab/cdef.debug");
        assert_eq!(move_started_entry(s.pid(), &kept, &s.at("target")).unwrap(), Outcome::LeftAlone);
        assert_eq!(s.exe(), s.at("sleeper"));
        assert!(!kept.exists());
    }

    /// An entry deleted before is reported gone, nothing is created.
    #[test]
    fn a_deleted_entry_is_left_alone() {
        let s = Sleeper::start();
        std::fs::remove_file(&s.program).unwrap();
        let kept = s.at("kept/x.debug");
        assert_eq!(move_started_entry(s.pid(), &kept, &s.at("")).unwrap(), Outcome::Gone);
        assert!(!kept.exists());
    }
}
