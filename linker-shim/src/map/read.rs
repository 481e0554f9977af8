//! Building a [`SymbolMap`] from a linked ELF executable (or any ELF file with a symbol table).

use super::schema::*;
use crate::error::{Context, Result};
use crate::{bail, err};
use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, SectionHeader, Sym};
use object::{Endianness, Object};
use std::path::Path;

/// A file mapped into memory read-only.
pub struct Mapped {
    map: memmap2::Mmap,
}

impl Mapped {
    pub fn open(path: &Path) -> Result<Self> {
        let file = fs_err::File::open(path).context("cannot open")?;
        // SAFETY: the map is read-only; a concurrent truncation could fault, which is the same risk
        // every linker and `objdump` takes.
        let map = unsafe { memmap2::Mmap::map(file.file()) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        Ok(Mapped { map })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}

/// Reads the map of the ELF file at `path`. `inputs` stays empty: only the linker knows them.
pub fn read_elf(path: &Path) -> Result<SymbolMap> {
    let mapped = Mapped::open(path)?;
    map_from_bytes(path, mapped.bytes())
        .with_context(|| format!("{} is not a usable ELF file", path.display()))
}

pub fn map_from_bytes(path: &Path, data: &[u8]) -> Result<SymbolMap> {
    if !is_elf(data) {
        bail!("not an ELF file (bad magic)");
    }
    let file = ElfFile64::<Endianness>::parse(data).context("malformed ELF")?;
    let e = file.endian();
    let header = file.elf_header();
    let arch = match header.e_machine(e) {
        elf::EM_X86_64 => "x86_64",
        elf::EM_AARCH64 => "aarch64",
        elf::EM_386 => "x86",
        elf::EM_RISCV => "riscv64",
        other => bail!("unsupported machine {other}"),
    };

    let mut segments = Vec::new();
    let mut tls = None;
    for ph in file.elf_program_headers() {
        let (vaddr, memsz, align) = (ph.p_vaddr(e), ph.p_memsz(e), ph.p_align(e));
        match ph.p_type(e) {
            elf::PT_LOAD => segments.push(Segment {
                vaddr,
                memsz,
                offset: ph.p_offset(e),
                filesz: ph.p_filesz(e),
                flags: segment_flags(ph.p_flags(e).0),
                align,
            }),
            elf::PT_TLS => {
                tls = Some(TlsLayout {
                    vaddr,
                    filesz: ph.p_filesz(e),
                    memsz,
                    align,
                    tp_offset: tls_tp_offset(vaddr, memsz, align),
                })
            }
            _ => {}
        }
    }

    let sections_table = file.elf_section_table();
    let mut sections = Vec::with_capacity(sections_table.len());
    let mut section_names: Vec<Option<String>> = Vec::with_capacity(sections_table.len());
    for sh in sections_table.iter() {
        let name = sections_table.section_name(e, sh).ok().map(|n| String::from_utf8_lossy(n).into_owned());
        if let Some(name) = &name {
            if !name.is_empty() && sh.sh_flags(e).0 & elf::SHF_ALLOC.0 != 0 {
                sections.push(Section { name: name.clone(), addr: sh.sh_addr(e), size: sh.sh_size(e) });
            }
        }
        section_names.push(name);
    }

    let symtab = file.elf_symbol_table();
    let strings = symtab.strings();
    let mut symbols = Vec::with_capacity(symtab.len());
    for (index, sym) in symtab.enumerate() {
        if index.0 == 0 {
            continue;
        }
        let shndx = symtab.symbol_section(e, sym, index).ok().flatten();
        let kind = match sym.st_type() {
            elf::STT_FUNC | elf::STT_GNU_IFUNC => SymbolKind::Function,
            elf::STT_OBJECT | elf::STT_COMMON => SymbolKind::Object,
            elf::STT_TLS => SymbolKind::Tls,
            elf::STT_SECTION => SymbolKind::Section,
            elf::STT_FILE => continue,
            _ => SymbolKind::Other,
        };
        let name = if kind == SymbolKind::Section {
            shndx.and_then(|i| section_names.get(i.0).cloned().flatten()).unwrap_or_default()
        } else {
            let raw = sym.name(e, strings).map_err(|_| err!("symbol {} has a bad name offset", index.0))?;
            String::from_utf8_lossy(raw).into_owned()
        };
        if name.is_empty() {
            continue;
        }
        let binding = match sym.st_bind() {
            elf::STB_GLOBAL | elf::STB_GNU_UNIQUE => Binding::Global,
            elf::STB_WEAK => Binding::Weak,
            _ => Binding::Local,
        };
        let section = shndx.and_then(|i| section_names.get(i.0).cloned().flatten());
        symbols.push(Symbol {
            demangled: demangle(&name),
            name,
            addr: sym.st_value(e),
            size: sym.st_size(e),
            kind,
            binding,
            section,
        });
    }

    let build_id = match file.build_id().ok().flatten() {
        Some(id) if !id.is_empty() => hex(id),
        _ => content_build_id(data),
    };

    Ok(SymbolMap {
        schema: SCHEMA_VERSION,
        tool: format!("ipbp-ld {}", env!("CARGO_PKG_VERSION")),
        output: path.to_path_buf(),
        build_id,
        arch: arch.to_string(),
        pie: header.e_type(e) == elf::ET_DYN,
        entry: header.e_entry(e),
        segments,
        tls,
        sections,
        symbols,
        inputs: Vec::new(),
    })
}

/// The build id of an ELF file (see [`SymbolMap::build_id`]) without reading its symbols.
pub fn read_build_id(path: &Path) -> Result<String> {
    let mapped = Mapped::open(path)?;
    let data = mapped.bytes();
    if !is_elf(data) {
        bail!("{} is not an ELF file", path.display());
    }
    let file = ElfFile64::<Endianness>::parse(data)
        .with_context(|| format!("{} is a malformed ELF file", path.display()))?;
    Ok(match file.build_id().ok().flatten() {
        Some(id) if !id.is_empty() => hex(id),
        _ => content_build_id(data),
    })
}

pub fn is_elf(data: &[u8]) -> bool {
    data.len() >= 4 && &data[..4] == b"\x7fELF"
}

/// rustc-demangle's alternate form (no hash suffix). Exactly rustc-demangle's output, so other
/// names come back unchanged except for a `.llvm.<hash>` suffix, which it drops.
pub fn demangle(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
}

/// The build id a binary without `.note.gnu.build-id` gets: a hash of its bytes. The runtime
/// computes the same value from `/proc/self/exe`.
pub fn content_build_id(data: &[u8]) -> String {
    format!("xxh3-{:032x}", xxhash_rust::xxh3::xxh3_128(data))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn segment_flags(flags: u32) -> String {
    let mut s = String::with_capacity(3);
    s.push(if flags & elf::PF_R.0 != 0 { 'r' } else { '-' });
    s.push(if flags & elf::PF_W.0 != 0 { 'w' } else { '-' });
    s.push(if flags & elf::PF_X.0 != 0 { 'x' } else { '-' });
    s
}

/// Where glibc puts the executable's TLS block on x86-64 (TLS variant II, first module):
/// `_dl_determine_tlsoffset` gives `off = roundup(memsz - firstbyte, align) + firstbyte` with
/// `firstbyte = -vaddr & (align - 1)`, and the block starts at `tp - off`.
pub fn tls_tp_offset(vaddr: u64, memsz: u64, align: u64) -> i64 {
    let align = align.max(1);
    let firstbyte = vaddr.wrapping_neg() & (align - 1);
    let off = (memsz.wrapping_sub(firstbyte)).div_ceil(align) * align + firstbyte;
    -(off as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_offset_matches_glibc_for_aligned_blocks() {
        assert_eq!(tls_tp_offset(0x56ab0, 0x80, 8), -0x80);
        assert_eq!(tls_tp_offset(0x1000, 0x81, 16), -0x90);
        // A block whose start is not aligned keeps its misalignment (firstbyte).
        assert_eq!(tls_tp_offset(0x1008, 0x10, 16), -0x18);
    }

    #[test]
    fn non_elf_input_is_rejected_with_a_reason() {
        let e = map_from_bytes(Path::new("x"), b"#!/bin/sh\n").unwrap_err();
        assert!(e.to_string().contains("not an ELF"), "{e}");
        let e = map_from_bytes(Path::new("x"), b"\x7fELF\x02\x01\x01").unwrap_err();
        assert!(e.to_string().contains("malformed"), "{e}");
    }
}
