//! `ipbp-ld symbols`: the symbol table of a binary or map, filtered, or one address resolved.

use super::{load_any, print_json, Outcome};
use crate::error::Error;
use crate::map::schema::{Symbol, SymbolKind, SymbolMap};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// An ELF binary (recorded or not) or a map JSON written by ipbp-ld.
    file: PathBuf,
    /// Only symbols whose demangled or mangled name contains TEXT.
    #[arg(long, value_name = "TEXT")]
    grep: Option<String>,
    /// Only symbols of this kind: function, object, tls, section or other.
    #[arg(long, value_name = "KIND", value_parser = parse_kind)]
    kind: Option<SymbolKind>,
    /// Resolve an address (0x...) to symbol+offset, and to file:line where DWARF says.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    addr: Option<u64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_kind(s: &str) -> Result<SymbolKind, Error> {
    SymbolKind::parse(s)
        .ok_or_else(|| crate::err!("unknown kind `{s}` (function, object, tls, section, other)"))
}

fn parse_addr(s: &str) -> Result<u64, Error> {
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"));
    match hex {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|_| crate::err!("`{s}` is not an address (use 0x... or decimal)"))
}

pub fn run(args: Args) -> Result<Outcome, Error> {
    let map = load_any(&args.file)?;
    if let Some(addr) = args.addr {
        return resolve(&args, &map, addr);
    }
    let mut selected: Vec<&Symbol> = map
        .symbols
        .iter()
        .filter(|s| args.kind.is_none_or(|k| s.kind == k))
        .filter(|s| args.grep.as_deref().is_none_or(|g| s.demangled.contains(g) || s.name.contains(g)))
        .collect();
    selected.sort_by(|a, b| (a.addr, &a.name).cmp(&(b.addr, &b.name)));
    if args.json {
        print_json(&selected)?;
    } else {
        print_table(&selected)?;
    }
    Ok(if selected.is_empty() { Outcome::NothingFound } else { Outcome::Found })
}

fn print_table(symbols: &[&Symbol]) -> Result<(), Error> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write = || -> std::io::Result<()> {
        writeln!(out, "{:<18} {:>8} {:<8} {:<6} NAME", "ADDRESS", "SIZE", "KIND", "BIND")?;
        for s in symbols {
            writeln!(
                out,
                "{:#018x} {:>8} {:<8} {:<6} {}",
                s.addr,
                s.size,
                s.kind.as_str(),
                s.binding.as_str(),
                s.demangled
            )?;
        }
        out.flush()
    };
    write().map_err(|e| crate::err!("cannot write to stdout: {e}"))
}

/// Where an address falls: the symbol that contains it, or the closest one below it.
#[derive(serde::Serialize)]
struct Resolved<'a> {
    addr: u64,
    symbol: &'a str,
    demangled: &'a str,
    offset: u64,
    /// False when the address lies past the end of the nearest symbol below it.
    inside: bool,
    file: Option<String>,
    line: Option<u32>,
    column: Option<u32>,
}

fn resolve(args: &Args, map: &SymbolMap, addr: u64) -> Result<Outcome, Error> {
    let Some((sym, inside)) = containing_symbol(map, addr) else {
        eprintln!("no symbol at or below {addr:#x} in {}", args.file.display());
        return Ok(Outcome::NothingFound);
    };
    let location = dwarf_binary(&args.file, map).and_then(|bin| source_location(&bin, addr));
    let (file, line, column) = location.unwrap_or_default();
    let r = Resolved {
        addr,
        symbol: &sym.name,
        demangled: &sym.demangled,
        offset: addr - sym.addr,
        inside,
        file,
        line,
        column,
    };
    if args.json {
        print_json(&r)?;
    } else {
        let mut text = format!("{:#x} {}+{:#x}", addr, r.demangled, r.offset);
        if !inside {
            text.push_str(" (past its end)");
        }
        if let Some(f) = &r.file {
            text.push_str(&format!(" at {f}"));
            if let Some(l) = r.line {
                text.push_str(&format!(":{l}"));
                if let Some(c) = r.column {
                    text.push_str(&format!(":{c}"));
                }
            }
        }
        println!("{text}");
    }
    Ok(Outcome::Found)
}

/// The function or object whose range holds `addr`, else the nearest one below it.
fn containing_symbol(map: &SymbolMap, addr: u64) -> Option<(&Symbol, bool)> {
    let candidates = map
        .symbols
        .iter()
        .filter(|s| matches!(s.kind, SymbolKind::Function | SymbolKind::Object | SymbolKind::Other))
        .filter(|s| s.section.is_some() && s.addr <= addr);
    let inside = candidates.clone().filter(|s| addr < s.addr + s.size.max(1)).max_by_key(|s| s.addr);
    match inside {
        Some(s) => Some((s, true)),
        None => candidates.max_by_key(|s| s.addr).map(|s| (s, false)),
    }
}

/// The binary holding DWARF for this map: the file itself, or the map's output if it is still the
/// same build.
fn dwarf_binary(file: &Path, map: &SymbolMap) -> Option<PathBuf> {
    let is_elf = std::fs::read(file).ok().is_some_and(|b| b.starts_with(b"\x7fELF"));
    if is_elf {
        return Some(file.to_path_buf());
    }
    let same_build = crate::map::read::read_elf(&map.output).ok()?.build_id == map.build_id;
    same_build.then(|| map.output.clone())
}

fn source_location(binary: &Path, addr: u64) -> Option<(Option<String>, Option<u32>, Option<u32>)> {
    let loader = addr2line::Loader::new(binary).ok()?;
    let loc = loader.find_location(addr).ok()??;
    Some((loc.file.map(str::to_string), loc.line, loc.column))
}
