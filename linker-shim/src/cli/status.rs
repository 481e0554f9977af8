//! `ipbp-ld status [PID]`: what a running program holds after its patches, so a developer can
//! decide to restart it.
//!
//! The process says how many patches it holds and how many functions of earlier patches it sends
//! on for good (`hello`: read-only, no lock taken, so it can be asked while a build patches it);
//! what that costs it is read from `/proc/<pid>`: the mappings of patches (each patch maps three
//! segments of its sealed copy, `/memfd:ipbp-patch`) and what of them is resident, and the
//! process's descriptors, mappings and resident memory in all.

use super::Outcome;
use crate::error::Error;
use ipbp::protocol::Hello;
use ipbp::registry::{self, OpenError, Registration, Registry};

#[derive(clap::Args)]
pub struct Args {
    /// The process (default: every process of this user that ipbp-ld can patch).
    pid: Option<u32>,
    /// Every process of this user that ipbp-ld can patch (the default).
    #[arg(long, conflicts_with = "pid")]
    all: bool,
}

/// What `/proc/<pid>` says about a process.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    pub descriptors: usize,
    pub mappings: usize,
    pub rss_kib: u64,
    /// Mappings of patches (their sealed copies), their size and what of it is resident.
    pub patch_mappings: usize,
    pub patch_kib: u64,
    pub patch_rss_kib: u64,
}

pub fn run(args: Args) -> Result<Outcome, Error> {
    let _ = args.all; // the default; the flag says so explicitly
    let registry = match Registry::existing() {
        Ok(r) => r,
        Err(OpenError::Missing) => {
            eprintln!("no program is registered for patching (nothing was linked through ipbp-ld here)");
            return Ok(Outcome::NothingFound);
        }
        Err(e) => crate::bail!("{e}"),
    };
    let mut found = false;
    for reg in registry.list() {
        if args.pid.is_some_and(|p| p != reg.pid) {
            continue;
        }
        if !reg.is_alive() {
            continue;
        }
        found = true;
        println!("{}", describe(&registry, &reg));
    }
    if !found {
        match args.pid {
            Some(pid) => eprintln!("process {pid} is not a running program registered for patching"),
            None => eprintln!("no running program is registered for patching"),
        }
        return Ok(Outcome::NothingFound);
    }
    Ok(Outcome::Found)
}

/// One paragraph about one process.
fn describe(registry: &Registry, reg: &Registration) -> String {
    let program = reg.exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let held = read_proc(reg.pid);
    let said = if registry::is_stopped(reg.pid) {
        Err("stopped (in a debugger?); it cannot answer".to_string())
    } else {
        crate::deliver::hello(registry, reg.pid).map_err(|e| e.to_string())
    };
    let mut out = format!("{program} (pid {})\n", reg.pid);
    match &said {
        Ok(h) => out.push_str(&patches_line(h)),
        Err(e) => out.push_str(&format!("  patches: unknown ({e})\n")),
    }
    match held {
        Some(h) => {
            out.push_str(&format!(
                "  patch memory: {} mappings, {} KiB mapped, {} KiB resident\n",
                h.patch_mappings, h.patch_kib, h.patch_rss_kib
            ));
            out.push_str(&format!(
                "  process: {} open descriptors, {} mappings, {:.1} MB resident",
                h.descriptors,
                h.mappings,
                h.rss_kib as f64 / 1024.0
            ));
        }
        None => out.push_str("  process: /proc cannot be read"),
    }
    if let Some(line) = debug_line(registry, reg) {
        out.push_str(&line);
    }
    out
}

/// How to attach a debugger that steps into patched code (README, *Debugging a patched
/// program*): ipbp's scripts of the target directory the process's build was linked in.
fn debug_line(registry: &Registry, reg: &Registration) -> Option<String> {
    let build = registry.build(&reg.build_id)?;
    let dir = crate::store::IpbpDir::for_output(&build.output);
    let (gdb, lldb) = (dir.gdb_script(), dir.lldb_script());
    if !gdb.is_file() || !lldb.is_file() {
        return None;
    }
    Some(format!(
        "\n  debug: gdb -p {pid} -x {}   or   lldb -p {pid} -o 'command script import {}'",
        gdb.display(),
        lldb.display(),
        pid = reg.pid
    ))
}

fn patches_line(h: &Hello) -> String {
    let live = h.slots.len() + h.redirects.len() + h.detours.len();
    format!(
        "  patches: {} applied, {} loaded; {} entries switched now, {} functions of earlier patches sent on for good; {} statics and {} thread-locals added\n",
        h.generation,
        h.loaded,
        live,
        h.settled,
        h.data.len(),
        h.tls.len()
    )
}

/// Descriptors, mappings and resident memory of process `pid`, and those of its patches.
pub fn read_proc(pid: u32) -> Option<Held> {
    let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut held = Held { descriptors, ..Held::default() };
    let mut in_patch = false;
    for line in smaps.lines() {
        let mut words = line.split_ascii_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((a, b)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            // A mapping's header line: `start-end perms offset dev inode [path]`.
            let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else { continue };
            held.mappings += 1;
            in_patch = is_patch_mapping(line);
            if in_patch {
                held.patch_mappings += 1;
                held.patch_kib += (b - a) / 1024;
            }
        } else if first == "Rss:" {
            let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            held.rss_kib += kib;
            if in_patch {
                held.patch_rss_kib += kib;
            }
        }
    }
    Some(held)
}

/// A mapping of a patch's sealed copy (the runtime's memfd, whatever name the loader shows).
fn is_patch_mapping(header: &str) -> bool {
    header.contains("/memfd:ipbp-patch")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read_from_proc() {
        let held = read_proc(std::process::id()).unwrap();
        assert!(held.descriptors >= 3 && held.mappings > 5 && held.rss_kib > 0, "{held:?}");
        assert_eq!((held.patch_mappings, held.patch_kib), (0, 0));
        assert!(is_patch_mapping("7f00-7f10 r-xp 00000000 00:01 42  /memfd:ipbp-patch (deleted)"));
        assert!(!is_patch_mapping("7f00-7f10 r-xp 00000000 00:01 42  /usr/lib/libc.so.6"));
    }
}
