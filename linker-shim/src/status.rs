//! What the user sees: cargo-style status lines (`     Patched demo (pid 42): ...`) and warnings.
//!
//! rustc hides a successful linker's stderr (the `linker_messages` lint is allow-by-default), so a
//! line written to our own stderr would never reach the user. When the shim runs under cargo it
//! writes to cargo's stderr instead, found through `/proc/<cargo pid>/fd/2` — the same terminal or
//! pipe cargo prints its own `Compiling`/`Finished` lines to. That is only done where it is safe
//! (a terminal, a pipe, a socket, or a file opened for appending); otherwise lines go to our own
//! stderr. Every line is also appended to `<target>/ipbp/ipbp.log`.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub struct Status {
    channel: Option<File>,
    color: bool,
    log: Option<PathBuf>,
    /// Log only, never stderr.
    quiet: bool,
    /// Faults already reported by [`Status::warn_once`].
    warned: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Warn,
    Bad,
}

impl Status {
    /// A channel to the user for one shim run; `log` receives a copy of every line.
    pub fn new(log: Option<PathBuf>) -> Status {
        let channel = cargo_stderr();
        let color = std::env::var_os("NO_COLOR").is_none()
            && match &channel {
                Some(f) => is_terminal(f),
                None => is_terminal(&std::io::stderr()),
            };
        Status { channel, color, log, quiet: false, warned: Vec::new() }
    }

    /// A channel to this command's own stderr (a command-line tool's, not a link's: a link
    /// finds the stderr of the cargo that runs it, an ancestor; a command run under cargo must not).
    pub fn to_stderr() -> Status {
        let color = std::env::var_os("NO_COLOR").is_none() && is_terminal(&std::io::stderr());
        Status { channel: None, color, log: None, quiet: false, warned: Vec::new() }
    }

    /// A status that only appends to the log (for work that outlives the link).
    pub fn log_only(log: PathBuf) -> Status {
        Status { channel: None, color: false, log: Some(log), quiet: true, warned: Vec::new() }
    }

    /// `{verb:>12} {message}`, like cargo's own status lines.
    pub fn line(&mut self, verb: &str, tone: Tone, message: &str) {
        let plain = format!("{verb:>12} {message}\n");
        let shown = if self.color {
            let code = match tone {
                Tone::Good => "32",
                Tone::Warn => "33",
                Tone::Bad => "31",
            };
            // Clear cargo's progress bar line first, as cargo itself does.
            format!("\r\x1b[2K\x1b[1;{code}m{verb:>12}\x1b[0m {message}\n")
        } else {
            plain.clone()
        };
        self.emit(&shown, &plain);
    }

    /// One `warning: ipbp-ld: ...` line: an internal problem that did not affect the link.
    ///
    /// A full disk (or quota, or a read-only file system) fails every step that writes; it is
    /// one fault, so only the first step that meets it says so.
    pub fn warn(&mut self, message: &str) {
        const DISK: [(&str, &str); 3] =
            [("(os error 28)", "disk full"), ("(os error 122)", "quota"), ("(os error 30)", "read-only")];
        if let Some((_, key)) = DISK.iter().find(|(code, _)| message.contains(code)) {
            if self.warned.iter().any(|k| k == key) {
                return;
            }
            self.warned.push(key.to_string());
        }
        let plain = format!("warning: ipbp-ld: {message}\n");
        let shown = if self.color {
            format!("\r\x1b[2K\x1b[1;33mwarning\x1b[0m: ipbp-ld: {message}\n")
        } else {
            plain.clone()
        };
        self.emit(&shown, &plain);
    }

    /// [`Status::warn`], unless a warning about the same fault (`key`) was given already: each fault
    /// is one line, however many steps of the shim run into it.
    pub fn warn_once(&mut self, key: &str, message: &str) {
        if self.warned.iter().any(|k| k == key) {
            return;
        }
        self.warned.push(key.to_string());
        self.warn(message);
    }

    fn emit(&mut self, shown: &str, plain: &str) {
        let written = match &mut self.channel {
            Some(f) => f.write_all(shown.as_bytes()).is_ok(),
            None => false,
        };
        if !written && !self.quiet {
            let _ = std::io::stderr().write_all(shown.as_bytes());
        }
        if let Some(log) = &self.log {
            append_log(log, plain);
        }
    }
}

fn append_log(log: &Path, line: &str) {
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let _ = write!(f, "{stamp:.3} {line}");
    }
}

fn is_terminal(f: &impl std::os::fd::AsRawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(f.as_raw_fd()) == 1 }
}

/// Opens the stderr of the cargo process that (through rustc) started us, if it is safe to write.
fn cargo_stderr() -> Option<File> {
    let mut pid = parent_of(std::process::id())?;
    for _ in 0..4 {
        if is_cargo(pid) {
            return open_safely(pid);
        }
        pid = parent_of(pid)?;
        if pid <= 1 {
            return None;
        }
    }
    None
}

fn is_cargo(pid: u32) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    comm.trim_end() == "cargo"
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn open_safely(pid: u32) -> Option<File> {
    let fd_path = format!("/proc/{pid}/fd/2");
    let meta = std::fs::metadata(&fd_path).ok()?;
    let ft = meta.file_type();
    let safe = ft.is_char_device() || ft.is_fifo() || ft.is_socket() || {
        // A regular file is only safe when cargo appends to it; otherwise cargo's next write, at its
        // own offset, would overwrite our line.
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/2")).unwrap_or_default();
        info.lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .is_some_and(|flags| flags & libc::O_APPEND as u32 != 0)
    };
    if !safe {
        return None;
    }
    std::fs::OpenOptions::new().append(true).custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC).open(fd_path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fault_is_one_warning() {
        let log = std::env::temp_dir().join(format!("ipbp-status-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let mut s = Status::log_only(log.clone());
        s.warn("cannot keep inputs: No space left on device (os error 28)");
        s.warn("no symbol map recorded: No space left on device (os error 28)");
        s.warn_once("registry", "the registry is unsafe");
        s.warn_once("registry", "the registry is still unsafe");
        s.warn("something else");
        let text = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_file(&log);
        let lines: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(
            lines,
            [
                "warning: ipbp-ld: cannot keep inputs: No space left on device (os error 28)",
                "warning: ipbp-ld: the registry is unsafe",
                "warning: ipbp-ld: something else"
            ]
        );
    }
}
