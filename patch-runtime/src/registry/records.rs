//! The two record formats (`builds/<build-id>` and `<pid>.process`, `key value` lines) and what
//! `/proc/<pid>/stat` says about a registered process.

use super::Registry;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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
