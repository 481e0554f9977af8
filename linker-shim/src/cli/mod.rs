//! `ipbp-ld <subcommand>`: inspecting binaries, recorded maps and running programs, restarting a
//! running program.
//!
//! Exit codes: 0 success, 1 nothing found, 2 bad usage or unreadable input (clap's own usage errors
//! are 2 as well).

mod diff;
mod map;
mod restart;
mod status;
mod symbols;
pub mod watch;

use crate::error::Error;
use crate::map::read::read_elf;
use crate::map::record::load_map;
use crate::map::schema::SymbolMap;
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::Path;

/// The words that make `ipbp-ld` a command-line tool instead of a linker.
pub const SUBCOMMANDS: &[&str] =
    &["symbols", "map", "diff", "status", "restart", "watch", "help", "--help", "-h", "--version", "-V"];

/// ipbp's linker: put `linker = "ipbp-ld"` in .cargo/config.toml and build as usual.
///
/// Called by rustc with cc-style arguments, ipbp-ld forwards the link to the real linker (cc, or
/// $IPBP_LINKER), records a symbol map of each executable, and hot-patches running processes of
/// the program being rebuilt. Called with a subcommand, it inspects binaries and maps.
#[derive(Parser)]
#[command(name = "ipbp-ld", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the symbols of an ELF binary or a recorded map.
    Symbols(symbols::Args),
    /// Print the path of the map recorded for a binary (found by build id).
    Map(map::Args),
    /// Compare the symbols of two binaries or maps.
    Diff(diff::Args),
    /// Show what running programs hold after their patches (patches, memory, mappings,
    /// descriptors), to decide when to restart one.
    Status(status::Args),
    /// Restart a running program into the newest build of it (same pid; listening sockets and
    /// its `ipbp::on_restart` state kept).
    Restart(restart::Args),
    /// Run the program and rebuild it on every save: each save goes live in the running process.
    Watch(watch::Args),
}

pub enum Outcome {
    Found,
    NothingFound,
}

pub fn run(args: Vec<OsString>) -> ! {
    let cli = Cli::parse_from(std::iter::once(OsString::from("ipbp-ld")).chain(args));
    let result = match cli.command {
        Command::Symbols(a) => symbols::run(a),
        Command::Map(a) => map::run(a),
        Command::Diff(a) => diff::run(a),
        Command::Status(a) => status::run(a),
        Command::Restart(a) => restart::run(a),
        Command::Watch(a) => match watch::run(a) {
            Ok(code) => std::process::exit(code),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(Outcome::Found) => std::process::exit(0),
        Ok(Outcome::NothingFound) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2)
        }
    }
}

/// A binary (read now) or a JSON map (read from disk), told apart by content.
pub fn load_any(path: &Path) -> Result<SymbolMap, Error> {
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .map_err(|e| crate::err!("cannot read {}: {e}", path.display()))?;
    if n == 4 && &head == b"\x7fELF" {
        read_elf(path)
    } else if head[..n].first() == Some(&b'{') || path.extension().is_some_and(|e| e == "json") {
        load_map(path)
    } else {
        Err(crate::err!("{} is neither an ELF binary nor an ipbp map (JSON)", path.display()))
    }
}

/// Writes JSON to stdout, ending with a newline.
fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Error> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    serde_json::to_writer_pretty(&mut out, value).map_err(|e| crate::err!("cannot write JSON: {e}"))?;
    writeln!(out).and_then(|()| out.flush()).map_err(|e| crate::err!("cannot write to stdout: {e}"))
}
