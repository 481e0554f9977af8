//! The cargo path: `cargo build` with the user's selection, through ipbp-ld as the linker, with
//! ipbp-ld as `RUSTC_WRAPPER` recording each rustc command for the direct path
//! ([`super::record`]). Cargo prints to our terminal as usual (its `Patched` lines included); its
//! JSON messages tell which executables it built.

use super::record::{INNER_WRAPPER_ENV, RECORD_ENV};
use super::runner::{wait_build, Interrupted, Program};
use super::workspace::{Workspace, LINKER_ENV};
use crate::error::{Context, Error};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// How `watch` runs cargo.
pub struct Cargo {
    pub program: PathBuf,
    /// The selection and profile arguments (`--bin x`, `-p y`, `--release`, …).
    pub args: Vec<String>,
    /// ipbp-ld itself: the wrapper, and the linker when cargo's configuration names none.
    pub shim: PathBuf,
    pub set_linker: bool,
}

/// An executable cargo built.
#[derive(Debug, Clone)]
pub struct Executable {
    pub name: String,
    pub path: PathBuf,
}

impl Cargo {
    /// Runs `cargo build`; the executables it built when it succeeded, `Ok(Err(..))` when the
    /// session ended meanwhile.
    pub fn build(
        &self,
        ws: &Workspace,
        program: &mut Option<Program>,
    ) -> Result<Result<Option<Vec<Executable>>, Interrupted>, Error> {
        let mut cmd = Command::new(&self.program);
        cmd.arg("build").arg("--message-format=json-render-diagnostics").args(&self.args);
        cmd.current_dir(&ws.root).env("RUSTC_WRAPPER", &self.shim).env(RECORD_ENV, ws.record_dir());
        if let Some(inner) = std::env::var_os("RUSTC_WRAPPER").filter(|w| !w.is_empty()) {
            cmd.env(INNER_WRAPPER_ENV, inner);
        }
        if self.set_linker {
            cmd.env(LINKER_ENV, &self.shim);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("cannot run {}", self.program.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut exes = Vec::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                if msg["reason"] == "compiler-artifact" {
                    if let Some(exe) = msg["executable"].as_str() {
                        let name = msg["target"]["name"].as_str().unwrap_or_default().to_string();
                        exes.push(Executable { name, path: PathBuf::from(exe) });
                    }
                }
            }
            exes
        });
        let status = match wait_build(&mut child, program)? {
            Ok(status) => status,
            Err(why) => return Ok(Err(why)),
        };
        let exes = reader.join().unwrap_or_default();
        Ok(Ok(status.success().then_some(exes)))
    }
}
