//! The direct path: the rustc commands cargo ran, run again for the edited crates, leaving the
//! target directory as cargo would have: the same outputs, cargo's copies of them
//! (`target/debug/<bin>`) linked again, and cargo's fingerprint of each rebuilt crate brought up
//! to date the way cargo does it after a compile (the `dep-*` file's mtime set to when rustc was
//! started), so a later `cargo build` finds nothing to do.
//!
//! That last step is only sound when the dep-info cargo translated still lists the same files:
//! when rustc's `.d` file changes (a module added or removed), the fingerprint is left stale and
//! the caller runs cargo, which rebuilds the crate and records the new list.

use super::record::Record;
use super::runner::{wait_build, Interrupted, Program};
use crate::error::{Context, Error};
use std::io::{BufRead, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

/// How one crate's rustc run ended.
pub enum Built {
    Ok(Duration),
    /// rustc failed (its errors were printed).
    Failed(Duration),
    /// It built, but cargo must take over (the reason).
    NeedsCargo(Duration, String),
}

/// Runs the recorded rustc command of one crate; see the module comment.
pub fn build(rec: &Record, program: &mut Option<Program>) -> Result<Result<Built, Interrupted>, Error> {
    let start = Instant::now();
    let (Some(output), Some(dep_info), Some(out_dir)) = (rec.main_output(), rec.dep_info(), rec.out_dir())
    else {
        crate::bail!("the recorded command of {} names no output", rec.stem());
    };
    let profile_dir = out_dir.parent().context("output directory")?.to_path_buf();
    let package = rec.env_var("CARGO_PKG_NAME").context("no CARGO_PKG_NAME in the recorded command")?;
    let fingerprint = profile_dir.join(".fingerprint").join(format!("{package}{}", rec.extra_filename()));
    let fingerprint_files = dep_files(&fingerprint)?;
    let old_dep_info = std::fs::read(&dep_info).ok();
    let copies = copies_of(&output, &profile_dir);

    // As cargo does: the fingerprint's reference time is when rustc was started.
    let invoked = fingerprint.join("invoked.timestamp");
    std::fs::write(&invoked, "This file has an mtime of when this was started.")
        .with_context(|| format!("cannot write {}", invoked.display()))?;
    let started = std::fs::metadata(&invoked).and_then(|m| m.modified()).context("invoked.timestamp")?;

    let mut cmd = rec.command();
    cmd.stdin(Stdio::null()).stdout(Stdio::inherit()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot run {}", rec.argv[0]))?;
    let stderr = child.stderr.take().expect("piped");
    let printer = std::thread::spawn(move || print_diagnostics(stderr));
    let status = match wait_build(&mut child, program)? {
        Ok(s) => s,
        Err(why) => return Ok(Err(why)),
    };
    let _ = printer.join();
    let took = start.elapsed();
    if !status.success() {
        return Ok(Ok(Built::Failed(took)));
    }
    for copy in &copies {
        relink(&output, copy)?;
    }
    if std::fs::read(&dep_info).ok() != old_dep_info {
        return Ok(Ok(Built::NeedsCargo(
            took,
            format!("the files of {} changed", rec.crate_name().unwrap_or("?")),
        )));
    }
    for file in fingerprint_files {
        set_mtime(&file, started)?;
    }
    Ok(Ok(Built::Ok(took)))
}

/// cargo's translated dep-info files of a unit (`dep-lib-words`); there must be one.
fn dep_files(fingerprint: &Path) -> Result<Vec<PathBuf>, Error> {
    let files: Vec<PathBuf> = std::fs::read_dir(fingerprint)
        .with_context(|| format!("no cargo fingerprint at {}", fingerprint.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("dep-")))
        .collect();
    if files.is_empty() {
        crate::bail!("no dep-info in cargo's fingerprint {}", fingerprint.display());
    }
    Ok(files)
}

/// cargo's copies of `output` in the profile directory (`target/debug/counter`, hard links of
/// `deps/counter-…`), found by inode before rustc replaces the file.
fn copies_of(output: &Path, profile_dir: &Path) -> Vec<PathBuf> {
    let Ok(meta) = std::fs::metadata(output) else { return Vec::new() };
    std::fs::read_dir(profile_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.metadata().is_ok_and(|m| m.is_file() && m.ino() == meta.ino() && m.dev() == meta.dev()))
        .map(|e| e.path())
        .collect()
}

/// Makes `copy` the new `output` again, as cargo does (a hard link, or a copy across devices).
fn relink(output: &Path, copy: &Path) -> Result<(), Error> {
    if std::fs::metadata(copy)
        .is_ok_and(|c| std::fs::metadata(output).is_ok_and(|o| o.ino() == c.ino() && o.dev() == c.dev()))
    {
        return Ok(());
    }
    let _ = std::fs::remove_file(copy);
    if std::fs::hard_link(output, copy).is_err() {
        std::fs::copy(output, copy)
            .with_context(|| format!("cannot copy {} to {}", output.display(), copy.display()))?;
    }
    Ok(())
}

fn set_mtime(path: &Path, time: SystemTime) -> Result<(), Error> {
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.set_modified(time).with_context(|| format!("cannot set the mtime of {}", path.display()))
}

/// rustc's JSON messages (cargo asks for them; the command is cargo's), shown as cargo shows them.
fn print_diagnostics(stderr: impl std::io::Read) {
    use std::io::IsTerminal;
    let mut out = std::io::stderr();
    let color = out.is_terminal() && std::env::var_os("NO_COLOR").is_none();
    for line in std::io::BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(msg) if msg.get("$message_type").is_some_and(|t| t == "artifact") => {}
            Ok(msg) => {
                if let Some(text) = msg["rendered"].as_str() {
                    let text = if color { text.to_string() } else { strip_ansi(text) };
                    let _ = out.write_all(text.as_bytes());
                }
            }
            Err(_) => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
}

/// `text` without its ANSI escape sequences (cargo asked rustc for colored diagnostics; cargo
/// itself removes the colors when its output is not a terminal, and so do we).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, ending with a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn strips_colors() {
        assert_eq!(super::strip_ansi("\x1b[1m\x1b[91merror\x1b[0m: x"), "error: x");
    }
}
