//! The rustc commands cargo ran, recorded so that `watch` can run them again without cargo.
//!
//! During `watch`'s cargo builds, `RUSTC_WRAPPER` is `ipbp-ld` itself and [`RECORD_ENV`] names the
//! directory to record into: cargo then runs `ipbp-ld <rustc> <args…>`, and [`wrap_rustc`] writes
//! the command (arguments, environment, working directory) to `<dir>/<crate><extra-filename>.json`
//! before it `exec`s rustc. The wrapper changes nothing cargo sees: rustc gets the same arguments,
//! environment (less [`RECORD_ENV`], so rustc's linker — ipbp-ld again — links as usual) and file
//! descriptors, and cargo's fingerprints do not include the wrapper. Recording can fail without
//! failing the build: `watch` then falls back to cargo for that crate.

use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// Set by `watch` for its cargo builds: the directory rustc commands are recorded into.
pub const RECORD_ENV: &str = "IPBP_WATCH_RECORD";
/// The user's `RUSTC_WRAPPER`, which ours runs in turn.
pub const INNER_WRAPPER_ENV: &str = "IPBP_WATCH_INNER_WRAPPER";

/// Variables a recorded command must not take along when it is run again: cargo's jobserver
/// (its descriptors are gone by then) and the recording switch itself.
const NOT_REPLAYED: &[&str] = &["CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS", RECORD_ENV];

/// One rustc command as cargo ran it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The program (rustc, as cargo named it) and its arguments.
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
}

/// The recording directory when this process is cargo's `RUSTC_WRAPPER` (run with rustc, or a
/// workspace wrapper, as its first argument); `None` for every other use of ipbp-ld, the linker
/// included (rustc never passes [`RECORD_ENV`] on: [`wrap_rustc`] removes it).
pub fn wrapper_dir(args: &[OsString]) -> Option<PathBuf> {
    let dir = std::env::var_os(RECORD_ENV).filter(|d| !d.is_empty())?;
    (!args.is_empty()).then(|| PathBuf::from(dir))
}

/// Records the command, then becomes rustc (never returns).
pub fn wrap_rustc(dir: &Path, mut args: Vec<OsString>) -> ! {
    // The user's own RUSTC_WRAPPER (sccache, …), which watch's cargo builds put here.
    if let Some(inner) = std::env::var_os(INNER_WRAPPER_ENV).filter(|w| !w.is_empty()) {
        args.insert(0, inner);
    }
    if let Some(record) = Record::of_this_process(&args) {
        // Best effort: a command that is not recorded only means a slower path later.
        let _ = record.write(dir);
    }
    let mut rustc = std::process::Command::new(&args[0]);
    rustc.args(&args[1..]).env_remove(RECORD_ENV);
    let e = rustc.exec();
    eprintln!("error: ipbp-ld: cannot run {}: {e}", args[0].to_string_lossy());
    std::process::exit(101)
}

impl Record {
    fn of_this_process(args: &[OsString]) -> Option<Record> {
        let argv: Vec<String> = args.iter().map(|a| a.to_str().map(str::to_string)).collect::<Option<_>>()?;
        let record = Record {
            argv,
            cwd: std::env::current_dir().ok()?,
            env: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .filter(|(k, _)| !NOT_REPLAYED.contains(&k.as_str()))
                .collect(),
        };
        // cargo's probes (`--crate-name ___`, `-vV`) build nothing.
        (record.crate_name().is_some_and(|n| n != "___") && record.out_dir().is_some()).then_some(record)
    }

    fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::store::write_atomically(&dir.join(format!("{}.json", self.stem())), |out| {
            out.write_all(&bytes)
        })
    }

    /// Every record in `dir`, by [`Record::stem`].
    pub fn load_all(dir: &Path) -> std::collections::HashMap<String, Record> {
        let mut all = std::collections::HashMap::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(bytes) = std::fs::read(entry.path()) else { continue };
            if let Ok(record) = serde_json::from_slice::<Record>(&bytes) {
                all.insert(record.stem(), record);
            }
        }
        all
    }

    /// The value of `--flag value` or `--flag=value` (`-C key=value` with `flag` = `-C key`).
    fn option(&self, flag: &str) -> Option<&str> {
        let (flag, key) = match flag.split_once(' ') {
            Some((f, k)) => (f, Some(k)),
            None => (flag, None),
        };
        let mut it = self.argv.iter().skip(1);
        while let Some(arg) = it.next() {
            let value = if arg == flag {
                it.next().map(String::as_str)
            } else {
                arg.strip_prefix(flag).and_then(|r| r.strip_prefix('='))
            };
            let Some(value) = value else { continue };
            match key {
                None => return Some(value),
                Some(k) => {
                    if let Some(v) = value.strip_prefix(k).and_then(|r| r.strip_prefix('=')) {
                        return Some(v);
                    }
                }
            }
        }
        None
    }

    pub fn crate_name(&self) -> Option<&str> {
        self.option("--crate-name")
    }

    pub fn crate_types(&self) -> Vec<&str> {
        let mut out = Vec::new();
        let mut it = self.argv.iter();
        while let Some(arg) = it.next() {
            if arg == "--crate-type" {
                out.extend(it.next().map(String::as_str));
            }
        }
        out
    }

    pub fn is_test(&self) -> bool {
        self.argv.iter().any(|a| a == "--test")
    }

    pub fn out_dir(&self) -> Option<PathBuf> {
        self.option("--out-dir").map(|d| self.cwd.join(d))
    }

    pub fn extra_filename(&self) -> &str {
        self.option("-C extra-filename").unwrap_or("")
    }

    /// `<crate><extra-filename>`: the name of every file the command writes, less prefix and
    /// extension (`words-5ce95a29cb8e1e35`).
    pub fn stem(&self) -> String {
        format!("{}{}", self.crate_name().unwrap_or("unknown"), self.extra_filename())
    }

    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The crates it links with `--extern`, by the [`Record::stem`] of their files.
    pub fn extern_stems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut it = self.argv.iter();
        while let Some(arg) = it.next() {
            if arg == "--extern" {
                let Some(value) = it.next() else { break };
                let Some((_, path)) = value.split_once('=') else { continue };
                let file =
                    Path::new(path).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                out.push(file.strip_prefix("lib").unwrap_or(&file).to_string());
            }
        }
        out
    }

    /// The file the command links (`deps/libwords-….rlib`, `deps/counter-…`).
    pub fn main_output(&self) -> Option<PathBuf> {
        let dir = self.out_dir()?;
        let (name, extra) = (self.crate_name()?, self.extra_filename());
        let types = self.crate_types();
        if types.contains(&"bin") || self.is_test() {
            Some(dir.join(format!("{name}{extra}")))
        } else if types.contains(&"lib") || types.contains(&"rlib") || types.is_empty() {
            Some(dir.join(format!("lib{name}{extra}.rlib")))
        } else {
            None
        }
    }

    /// The dep-info file rustc writes beside its outputs.
    pub fn dep_info(&self) -> Option<PathBuf> {
        Some(self.out_dir()?.join(format!("{}.d", self.stem())))
    }

    /// Runs the command again, exactly as cargo ran it (less the jobserver).
    pub fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..]).current_dir(&self.cwd).env_clear();
        cmd.envs(self.env.iter().filter(|(k, _)| !NOT_REPLAYED.contains(&k.as_str())).map(|(k, v)| (k, v)));
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(args: &str) -> Record {
        Record {
            argv: args.split(' ').map(str::to_string).collect(),
            cwd: PathBuf::from("/ws"),
            env: vec![("CARGO_PKG_NAME".into(), "counter".into())],
        }
    }

    #[test]
    fn reads_what_cargo_passed() {
        let bin = record(
            "rustc --crate-name counter --edition=2021 src/main.rs --crate-type bin -C metadata=0d48 \
             -C extra-filename=-ec66 --out-dir /t/debug/deps -C linker=/x/ipbp-ld \
             --extern ipbp=/t/debug/deps/libipbp-8634.rlib --extern words=/t/debug/deps/libwords-5ce9.rlib",
        );
        assert_eq!(bin.crate_name(), Some("counter"));
        assert_eq!(bin.stem(), "counter-ec66");
        assert_eq!(bin.extern_stems(), ["ipbp-8634", "words-5ce9"]);
        assert_eq!(bin.main_output(), Some(PathBuf::from("/t/debug/deps/counter-ec66")));
        assert_eq!(bin.dep_info(), Some(PathBuf::from("/t/debug/deps/counter-ec66.d")));
        let lib = record(
            "rustc --crate-name words words/src/lib.rs --crate-type lib -C extra-filename=-5ce9 --out-dir x",
        );
        assert_eq!(lib.main_output(), Some(PathBuf::from("/ws/x/libwords-5ce9.rlib")));
        assert_eq!(lib.env_var("CARGO_PKG_NAME"), Some("counter"));
    }
}
