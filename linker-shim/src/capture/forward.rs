//! Running the real linker with exactly the arguments rustc gave us.
//!
//! Nothing is added, removed or reordered: rustc's `-fuse-ld=lld -B<sysroot>/gcc-ld` stay in place,
//! stdin/stdout/stderr are inherited, and the exit status comes back unchanged (a signal that killed
//! the linker is re-raised on the shim).

use std::ffi::OsString;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};

/// Names the C compiler driver to forward to. Default: `cc`.
pub const LINKER_ENV: &str = "IPBP_LINKER";

/// The driver that does the actual linking.
#[derive(Debug, Clone)]
pub struct RealLinker {
    pub program: OsString,
    /// True when the program came from `IPBP_LINKER` (for error messages).
    pub from_env: bool,
}

impl RealLinker {
    pub fn from_env() -> Self {
        match std::env::var_os(LINKER_ENV) {
            Some(p) if !p.is_empty() => RealLinker { program: p, from_env: true },
            _ => RealLinker { program: "cc".into(), from_env: false },
        }
    }

    fn command(&self, args: &[OsString]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(args);
        cmd
    }

    /// Starts the link as a child process that shares our stdio.
    pub fn spawn(&self, args: &[OsString]) -> Result<Child, StartError> {
        self.refuse_self()?;
        self.command(args).spawn().map_err(|e| self.start_error(e))
    }

    /// Replaces the shim with the real linker: the cheapest pass-through for links we don't record.
    pub fn exec(&self, args: &[OsString]) -> StartError {
        if let Err(e) = self.refuse_self() {
            return e;
        }
        let error = self.command(args).exec();
        self.start_error(error)
    }

    /// `IPBP_LINKER=ipbp-ld`, or a wrapper script that calls ipbp-ld, would call itself forever.
    fn refuse_self(&self) -> Result<(), StartError> {
        let Ok(me) = std::env::current_exe().and_then(|p| p.canonicalize()) else { return Ok(()) };
        let names_me =
            which(Path::new(&self.program)).and_then(|p| p.canonicalize().ok()) == Some(me.clone());
        if names_me || called_by_myself(&me) {
            return Err(StartError { linker: self.clone(), error: None });
        }
        Ok(())
    }

    fn start_error(&self, error: io::Error) -> StartError {
        StartError { linker: self.clone(), error: Some(error) }
    }
}

/// The real linker could not be started.
#[derive(Debug)]
pub struct StartError {
    pub linker: RealLinker,
    /// `None` when the linker would have been the shim itself.
    pub error: Option<io::Error>,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let program = self.linker.program.to_string_lossy();
        match &self.error {
            Some(e) => write!(f, "cannot run the real linker `{program}`: {e}")?,
            None => write!(f, "the real linker `{program}` is ipbp-ld itself, or calls it again")?,
        }
        if self.linker.from_env {
            write!(
                f,
                " (it was named by {LINKER_ENV}; point it at a C compiler driver such as cc, gcc or clang)"
            )
        } else {
            write!(f, " (set {LINKER_ENV} to the C compiler driver to use, e.g. {LINKER_ENV}=clang)")
        }
    }
}

impl std::error::Error for StartError {}

/// Ends the shim the way the real linker ended: same exit code, or the same fatal signal.
pub fn exit_like(status: ExitStatus) -> ! {
    if let Some(code) = status.code() {
        std::process::exit(code);
    }
    if let Some(signal) = status.signal() {
        // SAFETY: restoring the default action and raising a signal on ourselves; no Rust state is
        // touched afterwards.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
        std::process::exit(128 + signal);
    }
    std::process::exit(1)
}

/// Whether an ancestor process (a few levels up) runs this same executable: the real linker we
/// started has called us again.
fn called_by_myself(me: &Path) -> bool {
    let parent = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
    };
    let mut pid = std::process::id();
    for _ in 0..4 {
        let Some(p) = parent(pid).filter(|&p| p > 1) else { return false };
        let Ok(exe) = std::fs::read_link(format!("/proc/{p}/exe")) else { return false };
        if exe == me {
            return true;
        }
        // A compiler in between means the ipbp-ld further up is not linking (it is `ipbp-ld
        // watch`, which runs cargo and rustc): only a chain of linker wrappers can loop.
        let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with("rustc") || name.starts_with("cargo") {
            return false;
        }
        pid = p;
    }
    false
}

/// Resolves a program name through `PATH` the way `execvp` would.
pub fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return Some(program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}
