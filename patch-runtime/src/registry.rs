//! The meeting point of running programs and `ipbp-ld`: one directory per user.
//!
//! ```text
//! $IPBP_HOME or $XDG_RUNTIME_DIR/ipbp or /tmp/ipbp-<uid>     (mode 0700, owned by the user)
//!   builds/<build-id>        written by ipbp-ld for every executable it links: "this build is ours"
//!   <pid>.process            written by a running program in ipbp::init(): who and where it is
//!   <pid>.sock               the program's patch channel (Unix stream socket)
//!   <pid>.lock               held by an ipbp-ld while it builds and delivers a patch for <pid>
//! ```
//!
//! Both files are `key value` lines: the runtime needs no parser crate, and a human can read them.
//! This module is shared by both sides, so the two can never disagree about paths or formats.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

/// Overrides the registry directory (tests use a fresh one each).
pub const HOME_ENV: &str = "IPBP_HOME";

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
    // SAFETY: getuid has no preconditions.
    PathBuf::from(format!("/tmp/ipbp-{}", unsafe { libc::getuid() }))
}

/// Creates the registry directory if needed and checks that only this user can use it.
pub fn ensure_root(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if !root.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(root)?;
    }
    let meta = std::fs::symlink_metadata(root)?;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if !meta.is_dir() || meta.uid() != uid {
        return Err(io::Error::other(format!(
            "{} is not a directory owned by this user; refusing to use it",
            root.display()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
    }
    std::fs::create_dir_all(root.join("builds"))
}

pub fn build_record_path(root: &Path, build_id: &str) -> PathBuf {
    root.join("builds").join(build_id)
}

pub fn process_path(root: &Path, pid: u32) -> PathBuf {
    root.join(format!("{pid}.process"))
}

pub fn socket_path(root: &Path, pid: u32) -> PathBuf {
    root.join(format!("{pid}.sock"))
}

pub fn lock_path(root: &Path, pid: u32) -> PathBuf {
    root.join(format!("{pid}.lock"))
}

/// What ipbp-ld knows about one executable it linked.
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

    pub fn load(root: &Path, build_id: &str) -> Option<Self> {
        let text = std::fs::read_to_string(build_record_path(root, build_id)).ok()?;
        BuildRecord::parse(&text)
    }
}

/// What a running program tells ipbp-ld about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22): tells a live process
    /// from a new one that reused its pid.
    pub start_time: u64,
    pub exe: PathBuf,
    pub build_id: String,
    pub load_bias: u64,
    pub socket: PathBuf,
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
        let _ = writeln!(s, "socket {}", self.socket.display());
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
            socket: f.get("socket")?.into(),
            runtime_version: f.get("runtime").unwrap_or("?").to_string(),
        })
    }

    /// True while the registering process (not a later one with its pid) is running.
    pub fn is_alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start_time)
    }
}

/// Every registration in `root`, live or not.
pub fn list(root: &Path) -> Vec<Registration> {
    let Ok(dir) = std::fs::read_dir(root) else { return Vec::new() };
    let mut regs: Vec<Registration> = dir
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "process"))
        .filter_map(|e| Registration::parse(&std::fs::read_to_string(e.path()).ok()?))
        .collect();
    regs.sort_by_key(|r| r.pid);
    regs
}

/// Drops build records whose input list no longer exists (collected, or its target directory
/// cleaned; the map itself is written on demand).
/// Returns how many were dropped.
pub fn collect_builds(root: &Path) -> usize {
    let Ok(dir) = std::fs::read_dir(root.join("builds")) else { return 0 };
    let mut dropped = 0;
    for entry in dir.flatten() {
        let gone = match std::fs::read_to_string(entry.path()) {
            Ok(text) => BuildRecord::parse(&text).is_none_or(|b| !b.inputs.exists()),
            Err(_) => false,
        };
        if gone && std::fs::remove_file(entry.path()).is_ok() {
            dropped += 1;
        }
    }
    dropped
}

/// Removes the files of a registration whose process is gone.
pub fn remove_stale(root: &Path, reg: &Registration) {
    let _ = std::fs::remove_file(process_path(root, reg.pid));
    let _ = std::fs::remove_file(&reg.socket);
    let _ = std::fs::remove_file(lock_path(root, reg.pid));
}

/// Field 22 of `/proc/<pid>/stat`, for a process that is running (not a zombie).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None; // exited, waiting for its parent to reap it
    }
    fields.nth(18)?.parse().ok()
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

    #[test]
    fn registration_round_trips() {
        let reg = Registration {
            pid: 42,
            start_time: 12345,
            exe: "/a b/app".into(),
            build_id: "abcd".into(),
            load_bias: 0x5555_0000_0000,
            socket: "/tmp/ipbp-0/42.sock".into(),
            runtime_version: "0.1.0".into(),
        };
        assert_eq!(Registration::parse(&reg.to_text()), Some(reg));
    }

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let pid = std::process::id();
        let start_time = process_start_time(pid).unwrap();
        let mut reg = Registration {
            pid,
            start_time,
            exe: "/x".into(),
            build_id: "b".into(),
            load_bias: 0,
            socket: "/s".into(),
            runtime_version: "0".into(),
        };
        assert!(reg.is_alive());
        reg.start_time += 1;
        assert!(!reg.is_alive());
    }
}
