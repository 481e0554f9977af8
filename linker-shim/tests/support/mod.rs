//! Shared helpers for ipbp-ld's integration tests: the freshly built shim, scratch copies of the
//! apps in `testdata/`, cargo runs through the shim or with the plain linker, and readers for what
//! the shim records.
//!
//! Every scratch directory lives under one per-process root in the system temp dir (not under
//! this repository, so no `.cargo/config.toml` of ours leaks into the builds). The root is removed
//! when the test process exits; roots of dead test processes are swept on the next run. Set
//! `IPBP_KEEP_TEST_DIRS=1` to keep them for a post-mortem.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod capture;
pub mod live;

use ipbp_ld::map::schema::SymbolMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The rustc target the apps are built for (the host; ipbp supports x86-64 Linux).
pub const TARGET_TRIPLE: &str = "x86_64-unknown-linux-gnu";
/// The cargo setting that makes ipbp-ld the linker (the environment form of
/// `[target.x86_64-unknown-linux-gnu] linker = "..."`).
pub const LINKER_VAR: &str = "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER";

/// The `ipbp-ld` binary cargo built for this test run.
pub fn shim() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ipbp-ld"))
}

/// `testdata/<app>` in this repository.
pub fn testdata(app: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("testdata").join(app)
}

/// The per-process scratch root (created on first use).
pub fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = std::env::temp_dir();
        sweep_stale_roots(&base);
        let root = base.join(format!("ipbp-tests-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
        if std::env::var_os("IPBP_KEEP_TEST_DIRS").is_none() {
            // Statics are never dropped, so shared fixtures are cleaned up at process exit.
            // SAFETY: registers a plain function; atexit has no other preconditions.
            unsafe { libc::atexit(remove_scratch_root) };
        }
        root
    })
}

extern "C" fn remove_scratch_root() {
    let root = std::env::temp_dir().join(format!("ipbp-tests-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(root);
}

/// Removes `ipbp-tests-<pid>` directories whose process is gone (a run that was killed).
fn sweep_stale_roots(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("ipbp-tests-").and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A scratch directory: the project's sources in `src/`, target directories beside them, and a
/// registry (`IPBP_HOME`) of its own. Removed when dropped.
pub struct Project {
    tmp: tempfile::TempDir,
    /// The cargo project (the copy of the app).
    pub dir: PathBuf,
    /// `IPBP_HOME` for every command run on this project.
    pub home: PathBuf,
}

impl Project {
    /// A fresh copy of `testdata/<app>` (without any `target/` left there by hand).
    pub fn copy_of(app: &str) -> Project {
        let project = Project::empty(app);
        copy_tree(&testdata(app), &project.dir);
        project
    }

    /// A project made of the given files (`Cargo.toml`, `src/main.rs`, ...).
    pub fn with_files(name: &str, files: &[(&str, &str)]) -> Project {
        let project = Project::empty(name);
        for (path, text) in files {
            project.write(path, text);
        }
        project
    }

    fn empty(name: &str) -> Project {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(scratch_root())
            .expect("cannot create a scratch directory");
        let dir = tmp.path().join("src");
        let home = tmp.path().join("ipbp-home");
        std::fs::create_dir_all(&dir).unwrap();
        Project { tmp, dir, home }
    }

    /// The scratch directory holding the project, its target directories and its registry.
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// A target directory of this project (one per build configuration).
    pub fn target(&self, config: &str) -> PathBuf {
        self.root().join(format!("target-{config}"))
    }

    /// Writes a file of the project (creating directories).
    pub fn write(&self, path: &str, text: &str) {
        let path = self.dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// Reads a file of the project.
    pub fn read(&self, path: &str) -> String {
        let path = self.dir.join(path);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// Sets a source file's modification time to now, as `touch` does.
    pub fn touch(&self, path: &str) {
        let path = self.dir.join(path);
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(std::time::SystemTime::now()).unwrap();
    }

    /// `cargo <args>` in the project with `CARGO_TARGET_DIR` = [`Project::target`]`(config)`.
    pub fn cargo(&self, linker: Linker, config: &str, args: &[&str]) -> Cmd {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut all: Vec<OsString> = Vec::new();
        if linker == Linker::ShimConfig {
            let file = self.root().join("ipbp-linker.toml");
            let text = format!("[target.{TARGET_TRIPLE}]\nlinker = {:?}\n", shim().display().to_string());
            std::fs::write(&file, text).unwrap();
            all.extend([arg("--config"), arg(&file)]);
        }
        all.extend(args.iter().map(arg));
        let mut cmd = Cmd::new(cargo, &all);
        cmd.what = format!("[{config}, {linker:?} linker] {}", cmd.what);
        cmd.command
            .current_dir(&self.dir)
            .env("CARGO_TARGET_DIR", self.target(config))
            .env("CARGO_TERM_COLOR", "never");
        if linker == Linker::Shim {
            cmd.command.env(LINKER_VAR, shim());
        }
        cmd.env("IPBP_HOME", &self.home)
    }

    /// `ipbp-ld <args>` with this project's registry.
    pub fn ipbp_ld<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        ipbp_ld(&self.home, args)
    }
}

/// How the app is linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linker {
    /// rustc's default (`cc` with the bundled lld), no ipbp-ld anywhere.
    Plain,
    /// `ipbp-ld` as the target's linker, set through cargo's environment
    /// (`CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER`).
    Shim,
    /// `ipbp-ld` as the target's linker, set in a cargo config file (`[target.<triple>] linker`),
    /// as a user would in `.cargo/config.toml` (passed with `--config <file>`, so the same
    /// sources can also be built without it).
    ShimConfig,
}

/// `ipbp-ld <args>` as a command-line tool, with `IPBP_HOME=home`.
pub fn ipbp_ld<S: AsRef<OsStr>>(home: &Path, args: &[S]) -> Run {
    Cmd::new(shim(), args).env("IPBP_HOME", home).run()
}

/// Runs a built program.
pub fn run_program<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> Run {
    Cmd::new(program, args).run()
}

/// A command about to run, with a clean environment: nothing of the cargo that runs these tests
/// (its target dir, flags, jobserver, linker settings) nor of ipbp leaks into it.
pub struct Cmd {
    command: Command,
    what: String,
}

impl Cmd {
    pub fn new<P: AsRef<OsStr>, S: AsRef<OsStr>>(program: P, args: &[S]) -> Cmd {
        let mut command = Command::new(program.as_ref());
        command.args(args).stdin(Stdio::null());
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            let leaks = (key_text.starts_with("CARGO_") && key_text != "CARGO_HOME")
                || key_text.starts_with("IPBP_")
                || matches!(
                    &*key_text,
                    "RUSTFLAGS"
                        | "RUSTDOCFLAGS"
                        | "RUSTC_WRAPPER"
                        | "RUSTC_WORKSPACE_WRAPPER"
                        | "MAKEFLAGS"
                        | "MFLAGS"
                        | "CARGO_MAKEFLAGS"
                        | "NO_COLOR"
                );
            if leaks {
                command.env_remove(&key);
            }
        }
        let what = std::iter::once(program.as_ref())
            .chain(args.iter().map(AsRef::as_ref))
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        Cmd { command, what }
    }

    pub fn env<K: AsRef<OsStr>, V: AsRef<OsStr>>(mut self, key: K, value: V) -> Cmd {
        self.command.env(key, value);
        self
    }

    pub fn env_remove<K: AsRef<OsStr>>(mut self, key: K) -> Cmd {
        self.command.env_remove(key);
        self
    }

    /// The command, to start it some other way (a long-running program).
    pub fn into_command(self) -> Command {
        self.command
    }

    /// Runs to completion, capturing stdout and stderr (through pipes, as a CI log would).
    pub fn run(mut self) -> Run {
        let output: Output = self
            .command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", self.what));
        Run {
            what: self.what,
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// What a finished command did.
#[derive(Clone)]
pub struct Run {
    /// The command line, for messages.
    pub what: String,
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics, showing the whole run, unless it exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Run {
        assert!(self.success(), "expected success from {self}");
        self
    }

    /// Panics, showing the whole run, unless it exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "expected exit code {code} from {self}");
        self
    }

    /// Panics unless the run failed with a normal, non-zero exit code.
    #[track_caller]
    pub fn assert_failure(&self) -> &Run {
        assert!(matches!(self.code, Some(c) if c != 0), "expected failure from {self}");
        self
    }

    /// Panics unless stderr holds no sign of a Rust panic (in the shim or anywhere else).
    #[track_caller]
    pub fn assert_no_panic(&self) -> &Run {
        assert!(!self.stderr.contains("panicked"), "a panic was reported by {self}");
        assert!(!self.stderr.contains("RUST_BACKTRACE"), "a panic was reported by {self}");
        self
    }

    /// The stdout lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code.map_or_else(|| "killed by a signal".to_string(), |c| c.to_string());
        writeln!(f, "`{}` (exit code {code})", self.what)?;
        writeln!(f, "--- stdout ---\n{}", tail(&self.stdout))?;
        write!(f, "--- stderr ---\n{}--- end ---", tail(&self.stderr))
    }
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// At most the last 12,000 characters of a long output.
fn tail(text: &str) -> &str {
    const MAX: usize = 12_000;
    if text.len() <= MAX {
        return text;
    }
    let mut start = text.len() - MAX;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Copies a directory tree, leaving out `target` directories.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("cannot list {}: {e}", from.display())) {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let ty = entry.file_type().unwrap();
        if ty.is_dir() {
            if name != "target" {
                copy_tree(&entry.path(), &to.join(&name));
            }
        } else {
            std::fs::copy(entry.path(), to.join(&name))
                .unwrap_or_else(|e| panic!("cannot copy {}: {e}", entry.path().display()));
        }
    }
}

/// Copies a file, with a clear message on failure.
pub fn copy_file(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", from.display(), to.display()));
}

/// Reads a file, with a clear message on failure.
pub fn read_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Loads a map JSON written by ipbp-ld.
pub fn load_map(path: &Path) -> SymbolMap {
    let bytes = read_bytes(path);
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not a valid map: {e}", path.display()))
}

/// The build id of an ELF file as ipbp-ld writes it: hex of `.note.gnu.build-id`, read here
/// with the `object` crate.
pub fn elf_build_id(path: &Path) -> String {
    use object::Object;
    let bytes = read_bytes(path);
    let file = object::File::parse(&*bytes).unwrap_or_else(|e| panic!("{} is not ELF: {e}", path.display()));
    let id = file
        .build_id()
        .unwrap_or_else(|e| panic!("{}: bad build-id note: {e}", path.display()))
        .unwrap_or_else(|| panic!("{} has no .note.gnu.build-id", path.display()));
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// `xxh3:<128-bit hex>` of some bytes: the fingerprint format of a map's inputs.
pub fn fingerprint(bytes: &[u8]) -> String {
    format!("xxh3:{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

/// A C compiler driver that logs each link's output (and whether it is `-shared`) to `log`,
/// then runs `cc`. Used as `IPBP_LINKER` to see which links went through ipbp-ld.
pub fn logging_linker(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("logging-cc");
    let log = dir.join("links.log");
    let text = format!(
        "#!/bin/sh\n\
         # Test helper: notes the output of a link, then links with cc.\n\
         out=; shared=no; prev=\n\
         for a in \"$@\"; do\n\
         \x20 [ \"$prev\" = -o ] && out=$a\n\
         \x20 [ \"$a\" = -shared ] && shared=yes\n\
         \x20 prev=$a\n\
         done\n\
         echo \"shared=$shared $out\" >> '{}'\n\
         exec cc \"$@\"\n",
        log.display()
    );
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

/// Runs two closures on two threads and returns both results (two builds at once use both
/// cores better than one after the other: links and build scripts are single-threaded).
pub fn both<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    std::thread::scope(|s| {
        let a = s.spawn(a);
        let b = b();
        (a.join().unwrap_or_else(|e| std::panic::resume_unwind(e)), b)
    })
}

/// Lines of a cargo run's stderr with `warning: ipbp-ld:` (the shim's own warnings).
pub fn shim_warnings(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("warning: ipbp-ld:")).collect()
}

/// An `OsString` from a path, for argument lists mixing paths and flags.
pub fn arg(p: impl AsRef<OsStr>) -> OsString {
    p.as_ref().to_os_string()
}
