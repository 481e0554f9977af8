//! `ipbp-ld watch`: runs the program and rebuilds it on every save, so each save goes live in the
//! running process (the shim patches it during the link, as for any `cargo build`).
//!
//! The first build is cargo's ([`cargo`]), with ipbp-ld recording each rustc command
//! ([`record`]). After that an edit to the `.rs` files of workspace crates is built by running
//! those commands again for the edited crates and the workspace crates that use them
//! ([`units`], [`direct`]); anything else — a `Cargo.toml`, a build script or its inputs, a new
//! or removed file, a crate never recorded, a failed cargo build — goes through cargo, and the
//! progress line says why. Saves are seen through inotify ([`inotify`]); those arriving during a
//! build are read after it, into one more build. The session ends with the program, or on
//! Ctrl-C / SIGTERM ([`runner`]).

mod cargo;
mod direct;
mod inotify;
mod record;
mod runner;
mod session;
mod units;
mod workspace;

pub use record::{wrap_rustc, wrapper_dir};

use crate::error::{Context, Error};
use std::path::PathBuf;

/// `ipbp-ld watch [--bin NAME | -p PKG …] [-- ARGS…]`
#[derive(clap::Args)]
pub struct Args {
    /// The binary to run, as `cargo run --bin` (needed when the selection builds several).
    #[arg(long)]
    bin: Option<String>,
    /// The package(s) to build, as `cargo build -p`.
    #[arg(short = 'p', long = "package")]
    package: Vec<String>,
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
    /// Features to activate, as cargo takes them.
    #[arg(short = 'F', long)]
    features: Vec<String>,
    #[arg(long)]
    all_features: bool,
    #[arg(long)]
    no_default_features: bool,
    /// The workspace's (or package's) Cargo.toml; by default cargo's own search from here.
    #[arg(long)]
    manifest_path: Option<PathBuf>,
    /// Arguments for the program (after `--`).
    #[arg(last = true)]
    program_args: Vec<String>,
}

impl Args {
    fn cargo_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(bin) = &self.bin {
            out.extend(["--bin".to_string(), bin.clone()]);
        }
        for p in &self.package {
            out.extend(["-p".to_string(), p.clone()]);
        }
        if self.release {
            out.push("--release".into());
        }
        for f in &self.features {
            out.extend(["--features".to_string(), f.clone()]);
        }
        if self.all_features {
            out.push("--all-features".into());
        }
        if self.no_default_features {
            out.push("--no-default-features".into());
        }
        if let Some(m) = &self.manifest_path {
            out.extend(["--manifest-path".to_string(), m.display().to_string()]);
        }
        out
    }
}

/// Runs the session; the exit code is the program's (or 128 + the signal that stopped it all).
pub fn run(args: Args) -> Result<i32, Error> {
    runner::catch_stop_signals();
    let program = std::env::var_os("CARGO").map(PathBuf::from).unwrap_or_else(|| "cargo".into());
    let ws = workspace::Workspace::load(&program, args.manifest_path.as_deref())?;
    let here = std::env::current_dir().context("the current directory")?;
    let set_linker = !workspace::linker_configured(&here) && !workspace::linker_configured(&ws.root);
    let shim = std::env::current_exe().context("cannot find ipbp-ld itself")?;
    let cargo = cargo::Cargo { program, args: args.cargo_args(), shim, set_linker };
    say(
        "Watching",
        &format!(
            "{} ({}; Ctrl-C stops)",
            ws.root.display(),
            if set_linker {
                "linking through ipbp-ld, set by watch"
            } else {
                "linking through cargo's configured linker"
            }
        ),
    );
    session::Session::new(ws, cargo, args.bin, args.program_args)?.run()
}

/// `{verb:>12} {message}` on stderr, like cargo's status lines (bold cyan on a terminal).
pub(crate) fn say(verb: &str, message: &str) {
    use std::io::{IsTerminal, Write};
    let line = if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        format!("\x1b[1;36m{verb:>12}\x1b[0m {message}\n")
    } else {
        format!("{verb:>12} {message}\n")
    };
    let _ = std::io::stderr().write_all(line.as_bytes());
}
