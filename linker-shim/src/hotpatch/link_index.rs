//! Building a link index from a linked executable and its kept inputs: the units model, the
//! planner's reference graph and hot-point facts, written in the index format. Above plan, so the
//! format (`crate::index`) imports no stage; run by the link's detached writer ([`crate::link`])
//! and, for a build without an index, by its first patch.

use crate::error::{Context, Result};
use crate::index::{BaseKind, Symbol, Writer, TLS_RESERVE, UNIT_HOT};
use crate::marks::{is_hot_name, TLS_RESERVE_MARK};
use crate::objects::load::Arena;
use crate::objects::units::{Build, Workspace};
use crate::plan::graph::{unit_facts, Index};
use crate::store::inputs::Input;
use object::elf;
use object::read::elf::{ElfFile64, Sym};
use object::Endianness;
use std::path::Path;

/// The index of the build that produced `exe` from `inputs` (read from their kept copies when
/// `stored`, else from their paths). Reads every workspace unit: this is the work a patch later
/// avoids, done once per build after the link.
pub fn build(
    arena: &Arena,
    exe: Option<&Path>,
    inputs: &[Input],
    workspace: &Workspace,
    stored: bool,
) -> Result<Vec<u8>> {
    let mut w = Writer::default();
    if let Some(exe) = exe {
        executable_symbols(arena, exe, &mut w)?;
    }
    let units = Build::all(arena, inputs, workspace, stored)?;
    let graph = Index::new(&units, None)?;
    for (u, unit) in units.enumerate() {
        let obj = unit.object()?;
        let hot = obj.symbols.iter().any(|s| is_hot_name(s.name));
        let member = unit.member().unwrap_or("");
        let flags = if hot { UNIT_HOT } else { 0 };
        let number = w.unit(&unit.key, member, unit.input, unit.hash, flags);
        debug_assert_eq!(number, u.0);
        for s in &obj.symbols {
            if let (Some(sec), true, false) = (s.section(), s.is_named(), s.local) {
                if obj.sections[sec].kind.is_alloc() {
                    w.global(s.name, number, sec as u32);
                }
            }
        }
        if hot {
            for fact in unit_facts(&graph, u)? {
                let (kind, a, b) = fact.encode();
                w.fact(kind, (a.0 .0, a.1 as u32), (b.0 .0, b.1 as u32));
            }
        }
    }
    for ((tu, ts), (fu, fs)) in graph.reference_pairs() {
        w.reference((tu.0, ts as u32), (fu.0, fs as u32));
    }
    Ok(w.finish())
}

fn executable_symbols(arena: &Arena, exe: &Path, w: &mut Writer) -> Result<()> {
    let data = arena.map(exe)?;
    let file = ElfFile64::<Endianness>::parse(data)
        .with_context(|| format!("{} is not a readable ELF executable", exe.display()))?;
    let e = file.endian();
    let table = file.elf_symbol_table();
    let strings = table.strings();
    for (_, sym) in table.enumerate() {
        let Some(name) = sym.name(e, strings).ok().and_then(|n| std::str::from_utf8(n).ok()) else {
            continue;
        };
        if name.is_empty() || name.starts_with(".L") {
            continue;
        }
        if sym.st_shndx(e) == elf::SHN_UNDEF {
            if sym.st_bind() != elf::STB_LOCAL {
                w.import(name);
            }
            continue;
        }
        let kind = match sym.st_type() {
            elf::STT_FUNC | elf::STT_GNU_IFUNC => BaseKind::Function,
            elf::STT_OBJECT | elf::STT_COMMON | elf::STT_NOTYPE => BaseKind::Data,
            elf::STT_TLS => BaseKind::Tls,
            _ => continue,
        };
        let local = sym.st_bind() == elf::STB_LOCAL;
        let s = Symbol { addr: sym.st_value(e), size: sym.st_size(e), kind, local };
        w.symbol(name, s);
        if kind == BaseKind::Tls && name.contains(TLS_RESERVE_MARK) {
            w.symbol(TLS_RESERVE, s);
        }
    }
    Ok(())
}
