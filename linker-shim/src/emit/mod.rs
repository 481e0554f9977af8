//! Stage 5 — emit: the patch as a shared library, written directly (no external linker).
//!
//! Every address is known once the base address is chosen: the patch's own chunks, the running
//! image's symbols (already absolute in the plan), TLS offsets. So relocations are applied here
//! and the library needs no dynamic relocations except for symbols of shared libraries (libc),
//! which the loader binds through `GLOB_DAT` cells. It has no initialisers: loading it runs no code.
//! It keeps a `.symtab` so backtraces and debuggers name the patched functions, and an
//! `.eh_frame_hdr` so panics unwind through them.
//!
//! Program headers (and `.dynamic`) hold absolute addresses: the loader places the library where
//! its first segment says. Section headers and `.symtab` hold addresses relative to the base, as
//! in any shared library: the runtime presents the loaded patch as a library with load bias =
//! base (see `describe_as_library` in the ipbp crate), which is what backtrace symbolizers need.

pub mod debug;
mod layout;
mod records;

use crate::error::Result;
use crate::plan::{Plan, PlannedReloc, Target};
use crate::{bail, err};
use layout::{Cell, Layout, Out, SegmentKind, PHDR_COUNT, STUB_SIZE};
use object::elf::*;
use records::{Le, Section, EHDR_SIZE, RELA_SIZE};

/// `layout::cell_of` gives every GOT-relative relocation a cell, and the layout made one for each.
const GOT_CELL: &str = "layout gives every GOT-relative relocation a cell";

/// How TLS offsets become thread-pointer offsets in this process.
#[derive(Debug, Clone, Copy)]
pub struct TlsLayout {
    /// Thread pointer + this = start of the executable's TLS block.
    pub block_tp_offset: i64,
}

pub struct Emitted {
    pub bytes: Vec<u8>,
    /// Memory span from `base`.
    pub span: u64,
    /// Absolute address of every chunk.
    pub chunk_addr: Vec<u64>,
}

/// Lays the patch out without an address (to learn its size before choosing one).
pub fn layout(plan: &Plan) -> Layout {
    layout::compute(plan)
}

/// Writes the patch for loading at `base` (page aligned), without debug sections.
#[cfg(test)]
pub fn write(plan: &Plan, lay: &Layout, base: u64, tls: TlsLayout) -> Result<Emitted> {
    write_with_debug(plan, lay, base, tls, Vec::new())
}

/// [`write`], with non-alloc `debug` sections ([`debug::sections`]) after the symbol table.
pub fn write_with_debug(
    plan: &Plan,
    lay: &Layout,
    base: u64,
    tls: TlsLayout,
    debug: Vec<(&'static str, Vec<u8>)>,
) -> Result<Emitted> {
    let mut w = Writer { plan, lay, base, tls, out: vec![0u8; lay.file_end as usize], dynrel: Vec::new() };
    w.chunks();
    w.stubs();
    w.cells()?;
    w.relocations()?;
    w.eh_frame()?;
    w.dynamic_tables();
    let mut bytes = w.out;
    let dynrel = w.dynrel;
    write_rela_dyn(&mut bytes, lay, &dynrel);
    let tail = non_alloc_sections(plan, lay, debug);
    let shoff = bytes.len().next_multiple_of(8) as u64;
    bytes.resize(shoff as usize, 0);
    let (section_headers, shstrndx) = tail.section_headers(lay, shoff);
    bytes.extend_from_slice(&tail.data);
    let shoff_real = bytes.len().next_multiple_of(8);
    bytes.resize(shoff_real, 0);
    let shnum = section_headers.len();
    bytes.extend_from_slice(records::table(&section_headers));
    write_headers(&mut bytes, lay, base, shoff_real as u64, shnum as u16, shstrndx);
    let chunk_addr = lay.chunk_offset.iter().map(|o| base + o).collect();
    Ok(Emitted { bytes, span: lay.span, chunk_addr })
}

struct Writer<'p, 'a> {
    plan: &'p Plan<'a>,
    lay: &'p Layout,
    base: u64,
    tls: TlsLayout,
    out: Vec<u8>,
    /// `.rela.dyn`: what the loader fills in (import cells, pointers to imports in data).
    dynrel: Vec<Rela64<Le>>,
}

impl Writer<'_, '_> {
    /// File offset of memory offset `mem`.
    fn file_of(&self, mem: u64) -> usize {
        for seg in &self.lay.segments {
            if mem >= seg.mem && mem < seg.mem + seg.mem_size.max(1) {
                return seg.file_of(mem) as usize;
            }
        }
        panic!("offset {mem:#x} is in no segment")
    }

    fn put(&mut self, mem: u64, bytes: &[u8]) {
        let at = self.file_of(mem);
        self.out[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn chunks(&mut self) {
        for (i, c) in self.plan.chunks.iter().enumerate() {
            if !c.data.is_empty() && self.lay.chunk_out[i] != Out::Bss {
                let data = c.data.clone();
                self.put(self.lay.chunk_offset[i], &data);
            }
        }
    }

    /// `jmp *cell(%rip)` for each imported function, padded with `int3`.
    fn stubs(&mut self) {
        for (i, &stub) in self.lay.stubs.clone().iter().enumerate() {
            let cell = self.lay.cells[&Cell::Address(Target::Import(i))];
            let rel = (cell as i64 - (stub as i64 + 6)) as i32;
            let mut code = vec![0xff, 0x25];
            code.extend_from_slice(&rel.to_le_bytes());
            code.resize(STUB_SIZE as usize, 0xcc);
            self.put(stub, &code);
        }
    }

    fn target_value(&self, t: Target) -> Result<u64> {
        Ok(match t {
            Target::Chunk(c, off) => (self.base + self.lay.chunk_offset[c]).wrapping_add(off),
            Target::Absolute(a) => a,
            Target::Import(i) => self.base + self.lay.stubs[i],
            Target::Zero => 0,
            Target::Tls(_) => bail!("a thread-local used as an address"),
        })
    }

    fn tp_offset(&self, module_offset: u64) -> i64 {
        self.tls.block_tp_offset + module_offset as i64
    }

    fn cells(&mut self) -> Result<()> {
        for cell in self.lay.cell_order.clone() {
            let at = self.lay.cells[&cell];
            match cell {
                Cell::Address(Target::Import(i)) => {
                    self.dynrel.push(records::rela(self.base + at, R_X86_64_GLOB_DAT, i as u32 + 1, 0));
                }
                Cell::Address(t) => {
                    let v = self.target_value(t)?;
                    self.put(at, &v.to_le_bytes());
                }
                Cell::TpOff(off) => {
                    let v = self.tp_offset(off);
                    self.put(at, &v.to_le_bytes());
                }
                Cell::TlsIndex(off) => {
                    self.put(at, &1u64.to_le_bytes());
                    self.put(at + 8, &off.to_le_bytes());
                }
                Cell::TlsModule => self.put(at, &1u64.to_le_bytes()),
            }
        }
        Ok(())
    }

    fn relocations(&mut self) -> Result<()> {
        for (i, c) in self.plan.chunks.iter().enumerate() {
            let at = self.lay.chunk_offset[i];
            for r in &c.relocs {
                self.apply(at, r).map_err(|e| err!("in `{}`: {e}", crate::map::read::demangle(&c.name)))?;
            }
        }
        Ok(())
    }

    /// Applies relocation `r` of the thing placed at memory offset `at`.
    fn apply(&mut self, at: u64, r: &PlannedReloc) -> Result<()> {
        let place_mem = at + r.offset;
        let p = self.base + place_mem;
        let a = r.addend;
        let cell = |w: &Self| layout::cell_of(r.kind, r.target).map(|c| w.base + w.lay.cells[&c]);
        let tls_off = || match r.target {
            Target::Tls(o) => Ok(o),
            _ => Err(err!("{} against `{}`, which is not a thread-local", rel_name(r.kind), r.symbol)),
        };
        let value: (i128, usize, Range) = match r.kind {
            R_X86_64_NONE => return Ok(()),
            R_X86_64_64 => {
                if let Target::Import(i) = r.target {
                    self.dynrel.push(records::rela(p, R_X86_64_64, i as u32 + 1, a));
                    return Ok(());
                }
                (self.target_value(r.target)? as i128 + a as i128, 8, Range::Any)
            }
            R_X86_64_PC64 => (self.target_value(r.target)? as i128 + a as i128 - p as i128, 8, Range::Any),
            R_X86_64_PC32 | R_X86_64_PLT32 => {
                (self.target_value(r.target)? as i128 + a as i128 - p as i128, 4, Range::Signed)
            }
            R_X86_64_32 => (self.target_value(r.target)? as i128 + a as i128, 4, Range::Unsigned),
            R_X86_64_32S => (self.target_value(r.target)? as i128 + a as i128, 4, Range::Signed),
            R_X86_64_GOTPCREL | R_X86_64_GOTPCRELX | R_X86_64_REX_GOTPCRELX => {
                (cell(self).expect(GOT_CELL) as i128 + a as i128 - p as i128, 4, Range::Signed)
            }
            R_X86_64_GOTPCREL64 => {
                (cell(self).expect(GOT_CELL) as i128 + a as i128 - p as i128, 8, Range::Any)
            }
            R_X86_64_TPOFF32 => (self.tp_offset(tls_off()?) as i128 + a as i128, 4, Range::Signed),
            R_X86_64_TPOFF64 => (self.tp_offset(tls_off()?) as i128 + a as i128, 8, Range::Any),
            R_X86_64_DTPOFF32 => (tls_off()? as i128 + a as i128, 4, Range::Signed),
            R_X86_64_DTPOFF64 => (tls_off()? as i128 + a as i128, 8, Range::Any),
            R_X86_64_GOTTPOFF | R_X86_64_TLSGD | R_X86_64_TLSLD => {
                let c = cell(self).ok_or_else(|| {
                    err!("{} against `{}` has no thread-local target", rel_name(r.kind), r.symbol)
                })?;
                (c as i128 + a as i128 - p as i128, 4, Range::Signed)
            }
            other => bail!(
                "relocation {} against `{}` is not supported in patches",
                rel_name(other),
                crate::map::read::demangle(&r.symbol)
            ),
        };
        let (v, width, range) = value;
        let fits = match (range, width) {
            (Range::Any, _) => true,
            (Range::Signed, 4) => v >= i32::MIN as i128 && v <= i32::MAX as i128,
            (Range::Unsigned, 4) => v >= 0 && v <= u32::MAX as i128,
            _ => true,
        };
        if !fits {
            bail!(
                "relocation {} to `{}` does not reach from {:#x} (value {v:#x}); the patch was placed too far away",
                rel_name(r.kind),
                crate::map::read::demangle(&r.symbol),
                p
            );
        }
        let bytes = (v as i64).to_le_bytes();
        self.put(place_mem, &bytes[..width]);
        Ok(())
    }

    /// `.eh_frame`: the carried CIEs and FDEs, with each FDE's CIE pointer rewritten for its new
    /// position, then the search table of `.eh_frame_hdr`.
    fn eh_frame(&mut self) -> Result<()> {
        let Some(&(eh, _)) = self.lay.sections.get(&Out::EhFrame) else { return Ok(()) };
        let mut table = Vec::new();
        for (i, rec) in self.plan.eh_records.iter().enumerate() {
            let at = eh + self.lay.eh_record_offset[i];
            self.put(at, rec.data);
            if let Some(cie) = rec.cie {
                let cie_at = eh + self.lay.eh_record_offset[cie];
                let pointer = (at + 4 - cie_at) as u32;
                self.put(at + 4, &pointer.to_le_bytes());
            }
            for r in &rec.relocs {
                self.apply(at, r).map_err(|e| err!("in unwind info: {e}"))?;
            }
            if rec.cie.is_some() {
                // pc_begin: the relocation at offset 8 says which function this FDE covers.
                if let Some(r) = rec.relocs.iter().find(|r| r.offset == 8) {
                    let start = self.target_value(r.target)?.wrapping_add(r.addend as u64);
                    table.push((start, self.base + at));
                }
            }
        }
        let Some(&(hdr, _)) = self.lay.sections.get(&Out::EhFrameHdr) else { return Ok(()) };
        table.sort_unstable();
        let hdr_addr = self.base + hdr;
        let mut h = vec![1u8, 0x1b, 0x03, 0x3b];
        h.extend_from_slice(&((self.base + eh) as i64 - (hdr_addr + 4) as i64).to_le_bytes()[..4]);
        h.extend_from_slice(&(table.len() as u32).to_le_bytes());
        for (start, fde) in table {
            h.extend_from_slice(&((start as i64 - hdr_addr as i64) as i32).to_le_bytes());
            h.extend_from_slice(&((fde as i64 - hdr_addr as i64) as i32).to_le_bytes());
        }
        self.put(hdr, &h);
        Ok(())
    }

    /// `.dynsym`, `.dynstr`, `.hash` and `.dynamic`.
    fn dynamic_tables(&mut self) {
        let lay = self.lay;
        let sec = |o: Out| lay.sections.get(&o).copied().unwrap_or((0, 0));
        let null = records::symbol(0, STB_LOCAL, STT_NOTYPE, 0, 0, 0);
        let imports =
            lay.import_name.iter().map(|&name| records::symbol(name, STB_GLOBAL, STT_NOTYPE, 0, 0, 0));
        let dynsym: Vec<Sym64<Le>> = std::iter::once(null).chain(imports).collect();
        self.put(sec(Out::DynSym).0, records::table(&dynsym));
        self.put(sec(Out::DynStr).0, &lay.dynstr.clone());
        // A one-bucket SysV hash table: enough for the loader, which looks nothing up in a patch.
        let nsyms = lay.import_name.len() as u32 + 1;
        let mut hash = Vec::new();
        for w in [1u32, nsyms, 0].into_iter().chain(std::iter::repeat_n(0, nsyms as usize)) {
            hash.extend_from_slice(&w.to_le_bytes());
        }
        self.put(sec(Out::Hash).0, &hash);
        let b = self.base;
        let mut entries = vec![
            records::dynamic(DT_HASH, b + sec(Out::Hash).0),
            records::dynamic(DT_STRTAB, b + sec(Out::DynStr).0),
            records::dynamic(DT_SYMTAB, b + sec(Out::DynSym).0),
            records::dynamic(DT_STRSZ, lay.dynstr.len() as u64),
            records::dynamic(DT_SYMENT, records::SYM_SIZE),
        ];
        if !lay.import_name.is_empty() {
            entries.push(records::dynamic(DT_RELA, b + sec(Out::RelaDyn).0));
            entries.push(records::dynamic(DT_RELASZ, sec(Out::RelaDyn).1));
            entries.push(records::dynamic(DT_RELAENT, RELA_SIZE));
        }
        entries.push(records::dynamic(DT_FLAGS_1, DF_1_NODELETE.0));
        entries.push(records::dynamic(DT_NULL, 0));
        self.put(sec(Out::Dynamic).0, records::table(&entries));
    }
}

#[derive(Clone, Copy)]
enum Range {
    Any,
    Signed,
    Unsigned,
}

/// `.rela.dyn`, once every entry is known (layout counted them).
fn write_rela_dyn(bytes: &mut [u8], lay: &Layout, dynrel: &[Rela64<Le>]) {
    let Some(&(at, size)) = lay.sections.get(&Out::RelaDyn) else { return };
    let file = lay.segments.iter().find(|s| at >= s.mem && at < s.mem_end()).map_or(at, |s| s.file_of(at));
    let table = records::table(&dynrel[..dynrel.len().min((size / RELA_SIZE) as usize)]);
    let pos = file as usize;
    bytes[pos..pos + table.len()].copy_from_slice(table);
}

/// The relocation's name, for messages.
pub fn rel_name(kind: RelocationType) -> String {
    let name = match kind {
        R_X86_64_64 => "R_X86_64_64",
        R_X86_64_PC32 => "R_X86_64_PC32",
        R_X86_64_PLT32 => "R_X86_64_PLT32",
        R_X86_64_32 => "R_X86_64_32",
        R_X86_64_32S => "R_X86_64_32S",
        R_X86_64_PC64 => "R_X86_64_PC64",
        R_X86_64_GOTPCREL => "R_X86_64_GOTPCREL",
        R_X86_64_GOTPCRELX => "R_X86_64_GOTPCRELX",
        R_X86_64_REX_GOTPCRELX => "R_X86_64_REX_GOTPCRELX",
        R_X86_64_TPOFF32 => "R_X86_64_TPOFF32",
        R_X86_64_GOTTPOFF => "R_X86_64_GOTTPOFF",
        R_X86_64_TLSGD => "R_X86_64_TLSGD",
        R_X86_64_TLSLD => "R_X86_64_TLSLD",
        R_X86_64_DTPOFF32 => "R_X86_64_DTPOFF32",
        R_X86_64_DTPOFF64 => "R_X86_64_DTPOFF64",
        R_X86_64_GOTOFF64 => "R_X86_64_GOTOFF64",
        R_X86_64_GOTPC32 => "R_X86_64_GOTPC32",
        R_X86_64_SIZE32 => "R_X86_64_SIZE32",
        R_X86_64_SIZE64 => "R_X86_64_SIZE64",
        _ => return format!("relocation type {}", kind.0),
    };
    name.to_string()
}

/// `.symtab`, `.strtab` and `.shstrtab`: not loaded, for debuggers and backtraces.
struct Tail {
    data: Vec<u8>,
    symtab: (u64, u64),
    strtab: (u64, u64),
    shstrtab: (u64, u64),
    names: Vec<u32>,
    local_count: u32,
    /// Debug sections after `.shstrtab`: name (in `.shstrtab`), offset and size in `data`.
    debug: Vec<(u32, (u64, u64))>,
}

fn non_alloc_sections(plan: &Plan, lay: &Layout, debug: Vec<(&'static str, Vec<u8>)>) -> Tail {
    let index_of = |out: Out| -> u16 {
        1 + Out::ALL.iter().filter(|o| lay.sections.contains_key(o)).position(|&o| o == out).unwrap_or(0)
            as u16
    };
    let mut strtab = vec![0u8];
    let mut symtab = vec![records::symbol(0, STB_LOCAL, STT_NOTYPE, 0, 0, 0)];
    for (i, c) in plan.chunks.iter().enumerate() {
        let shndx = index_of(lay.chunk_out[i]);
        for (name, off, size, func) in &c.symbols {
            let name_off = strtab.len() as u32;
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
            let ty = if *func { STT_FUNC } else { STT_OBJECT };
            symtab.push(records::symbol(name_off, STB_LOCAL, ty, shndx, lay.chunk_offset[i] + off, *size));
        }
    }
    let local_count = symtab.len() as u32;
    let symtab = records::table(&symtab);
    let mut shstrtab = vec![0u8];
    let mut names = Vec::new();
    for out in Out::ALL.iter().filter(|o| lay.sections.contains_key(o)) {
        names.push(shstrtab.len() as u32);
        shstrtab.extend_from_slice(out.name().as_bytes());
        shstrtab.push(0);
    }
    for n in [".symtab", ".strtab", ".shstrtab"] {
        names.push(shstrtab.len() as u32);
        shstrtab.extend_from_slice(n.as_bytes());
        shstrtab.push(0);
    }
    let mut data = Vec::new();
    let symtab_at = (0u64, symtab.len() as u64);
    data.extend_from_slice(symtab);
    let strtab_at = (data.len() as u64, strtab.len() as u64);
    data.extend_from_slice(&strtab);
    let mut debug_at = Vec::new();
    for (name, _) in &debug {
        debug_at.push((shstrtab.len() as u32, (0, 0)));
        shstrtab.extend_from_slice(name.as_bytes());
        shstrtab.push(0);
    }
    let shstrtab_at = (data.len() as u64, shstrtab.len() as u64);
    data.extend_from_slice(&shstrtab);
    for ((_, bytes), (_, at)) in debug.iter().zip(&mut debug_at) {
        *at = (data.len() as u64, bytes.len() as u64);
        data.extend_from_slice(bytes);
    }
    Tail {
        data,
        symtab: symtab_at,
        strtab: strtab_at,
        shstrtab: shstrtab_at,
        names,
        local_count,
        debug: debug_at,
    }
}

impl Tail {
    /// Section headers; the non-alloc sections start at file offset `tail_at`. Also the index of
    /// `.shstrtab`.
    fn section_headers(&self, lay: &Layout, tail_at: u64) -> (Vec<SectionHeader64<Le>>, u16) {
        let present: Vec<Out> = Out::ALL.iter().copied().filter(|o| lay.sections.contains_key(o)).collect();
        let index = |o: Out| present.iter().position(|&p| p == o).map_or(0, |i| i as u32 + 1);
        let mut sh = vec![Section::null().header()];
        for (i, &out) in present.iter().enumerate() {
            let (mem, size) = lay.sections[&out];
            let file = lay
                .segments
                .iter()
                .find(|s| mem >= s.mem && mem <= s.mem_end())
                .map_or(0, |s| s.file_of(mem));
            let (ty, flags, link, info, entsize, addralign) = match out {
                Out::DynSym => (SHT_DYNSYM, SHF_ALLOC, index(Out::DynStr), 1, records::SYM_SIZE, 8),
                Out::DynStr => (SHT_STRTAB, SHF_ALLOC, 0, 0, 0, 1),
                Out::Hash => (SHT_HASH, SHF_ALLOC, index(Out::DynSym), 0, 4, 8),
                Out::RelaDyn => (SHT_RELA, SHF_ALLOC, index(Out::DynSym), 0, RELA_SIZE, 8),
                Out::Rodata | Out::ExceptTable | Out::EhFrameHdr => (SHT_PROGBITS, SHF_ALLOC, 0, 0, 0, 8),
                Out::EhFrame => (SHT_X86_64_UNWIND, SHF_ALLOC, 0, 0, 0, 8),
                Out::Text => (SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, 0, 0, 0, 16),
                Out::Dynamic => {
                    (SHT_DYNAMIC, SHF_ALLOC | SHF_WRITE, index(Out::DynStr), 0, records::DYN_SIZE, 8)
                }
                Out::Got | Out::Data => (SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, 0, 0, 0, 16),
                Out::Bss => (SHT_NOBITS, SHF_ALLOC | SHF_WRITE, 0, 0, 0, 16),
            };
            let name = self.names[i];
            sh.push(
                Section { name, ty, flags, addr: mem, offset: file, size, link, info, addralign, entsize }
                    .header(),
            );
        }
        let n = present.len();
        let strtab_index = n as u32 + 2;
        let tables = [
            (self.symtab, SHT_SYMTAB, strtab_index, self.local_count, 8, records::SYM_SIZE),
            (self.strtab, SHT_STRTAB, 0, 0, 1, 0),
            (self.shstrtab, SHT_STRTAB, 0, 0, 1, 0),
        ];
        for (i, ((at, size), ty, link, info, addralign, entsize)) in tables.into_iter().enumerate() {
            let (name, flags, offset) = (self.names[n + i], SectionFlags(0), tail_at + at);
            sh.push(
                Section { name, ty, flags, addr: 0, offset, size, link, info, addralign, entsize }.header(),
            );
        }
        for &(name, (at, size)) in &self.debug {
            let (ty, flags, offset) = (SHT_PROGBITS, SectionFlags(0), tail_at + at);
            sh.push(
                Section {
                    name,
                    ty,
                    flags,
                    addr: 0,
                    offset,
                    size,
                    link: 0,
                    info: 0,
                    addralign: 1,
                    entsize: 0,
                }
                .header(),
            );
        }
        (sh, n as u16 + 3)
    }
}

/// ELF header and program headers.
fn write_headers(bytes: &mut [u8], lay: &Layout, base: u64, shoff: u64, shnum: u16, shstrndx: u16) {
    let header = records::file_header(PHDR_COUNT as u16, shoff, shnum, shstrndx);
    bytes[..EHDR_SIZE as usize].copy_from_slice(records::bytes(&header));

    let null = || records::program_header(PT_NULL, ProgramFlags(0), 0, 0, 0, 0, 0);
    let flags = [PF_R, PF_R | PF_X, PF_R | PF_W];
    let mut ph = Vec::new();
    for (seg, flags) in lay.segments.iter().zip(flags) {
        if seg.mem_size == 0 {
            ph.push(null());
        } else {
            let (offset, vaddr) = (seg.file, base + seg.mem);
            ph.push(records::program_header(
                PT_LOAD,
                flags,
                offset,
                vaddr,
                seg.file_size,
                seg.mem_size,
                layout::PAGE,
            ));
        }
    }
    let (dmem, dsize) = lay.sections[&Out::Dynamic];
    let dfile = lay.segment(SegmentKind::Writable).file_of(dmem);
    ph.push(records::program_header(PT_DYNAMIC, PF_R | PF_W, dfile, base + dmem, dsize, dsize, 8));
    // The read-only segment starts the file at offset 0: its memory and file offsets agree.
    match lay.sections.get(&Out::EhFrameHdr) {
        Some(&(hmem, hsize)) => {
            ph.push(records::program_header(PT_GNU_EH_FRAME, PF_R, hmem, base + hmem, hsize, hsize, 4))
        }
        None => ph.push(null()),
    }
    ph.push(records::program_header(PT_GNU_STACK, PF_R | PF_W, 0, 0, 0, 0, 16));
    debug_assert_eq!(ph.len() as u64, PHDR_COUNT);
    let table = records::table(&ph);
    let at = EHDR_SIZE as usize;
    bytes[at..at + table.len()].copy_from_slice(table);
}

#[cfg(test)]
mod tests {
    //! Emits a small synthetic plan and reads the library back with `object`'s ELF reader.

    use super::*;
    use crate::objects::SectionKind;
    use crate::plan::{Chunk, ChunkId, Report};
    use object::read::elf::{ElfFile64, FileHeader as _, ProgramHeader as _, SectionHeader as _, Sym as _};
    use object::LittleEndian as LE;
    use std::borrow::Cow;

    const BASE: u64 = 0x5555_0000_0000;

    fn reloc(offset: u64, kind: RelocationType, target: Target, addend: i64, symbol: &str) -> PlannedReloc {
        PlannedReloc { offset, kind, target, addend, symbol: symbol.to_string() }
    }

    fn chunk(
        name: &str,
        kind: SectionKind,
        data: Vec<u8>,
        size: u64,
        relocs: Vec<PlannedReloc>,
    ) -> Chunk<'static> {
        let func = kind == SectionKind::Text;
        Chunk {
            name: name.to_string(),
            kind,
            align: if func { 16 } else { 8 },
            size,
            data: Cow::Owned(data),
            relocs,
            symbols: vec![(name.to_string(), 0, size, func)],
        }
    }

    /// `f` calls the import `write` and reads `COUNTER`; `TABLE` points at `f` and at `write`;
    /// `ZEROED` is zero-filled.
    fn plan() -> Plan<'static> {
        let code = vec![0xe8, 0, 0, 0, 0, 0x48, 0x8b, 0x05, 0, 0, 0, 0, 0xc3];
        let f = chunk(
            "f",
            SectionKind::Text,
            code,
            13,
            vec![
                reloc(1, R_X86_64_PLT32, Target::Import(0), -4, "write"),
                reloc(8, R_X86_64_PC32, Target::Chunk(ChunkId(1), 0), -4, "COUNTER"),
            ],
        );
        let counter = chunk("COUNTER", SectionKind::Data, vec![7, 0, 0, 0, 0, 0, 0, 0], 8, vec![]);
        let table = chunk(
            "TABLE",
            SectionKind::Data,
            vec![0; 16],
            16,
            vec![
                reloc(0, R_X86_64_64, Target::Chunk(ChunkId(0), 0), 0, "f"),
                reloc(8, R_X86_64_64, Target::Import(0), 0, "write"),
            ],
        );
        let zeroed = chunk("ZEROED", SectionKind::Bss, vec![], 32, vec![]);
        Plan {
            sources: Vec::new(),
            steps: vec![],
            stats: vec![],
            chunks: vec![f, counter, table, zeroed],
            eh_records: vec![],
            imports: vec!["write".to_string()],
            installs: vec![],
            new_data: vec![],
            new_tls: vec![],
            report: Report::default(),
            refusals: vec![],
        }
    }

    #[test]
    fn a_synthetic_plan_reads_back_as_the_library_it_describes() {
        let plan = plan();
        let lay = layout(&plan);
        let out = write(&plan, &lay, BASE, TlsLayout { block_tp_offset: -64 }).unwrap();
        assert_eq!(out.span % layout::PAGE, 0);
        assert_eq!(out.chunk_addr, lay.chunk_offset.iter().map(|o| BASE + o).collect::<Vec<_>>());
        let data = out.bytes.as_slice();
        let elf = ElfFile64::<LE>::parse(data).expect("the patch parses as ELF");
        let e = LE;
        let header = elf.elf_header();
        assert_eq!(header.e_type(e), ET_DYN);
        assert_eq!(header.e_machine(e), EM_X86_64);
        assert_eq!(header.e_phoff(e), EHDR_SIZE);
        assert_eq!(u64::from(header.e_phnum(e)), PHDR_COUNT);

        // Program headers: three loads (R, RX, RW) at absolute addresses, each at the same page
        // offset in the file as in memory; the dynamic section; no executable stack.
        let ph = elf.elf_program_headers();
        let types: Vec<_> = ph.iter().map(|p| p.p_type(e)).collect();
        assert_eq!(types, [PT_LOAD, PT_LOAD, PT_LOAD, PT_DYNAMIC, PT_NULL, PT_GNU_STACK]);
        let flags: Vec<_> = ph[..3].iter().map(|p| p.p_flags(e)).collect();
        assert_eq!(flags, [PF_R, PF_R | PF_X, PF_R | PF_W]);
        for (p, seg) in ph[..3].iter().zip(&lay.segments) {
            assert_eq!(p.p_vaddr(e), BASE + seg.mem);
            assert_eq!(p.p_offset(e), seg.file);
            assert_eq!(p.p_memsz(e), seg.mem_size);
            assert_eq!(p.p_vaddr(e) % layout::PAGE, p.p_offset(e) % layout::PAGE);
        }
        assert_eq!(ph[0].p_offset(e), 0, "the first load maps the headers");
        assert!(ph[2].p_memsz(e) > ph[2].p_filesz(e), ".bss takes memory, not file");
        assert_eq!(ph[5].p_flags(e), PF_R | PF_W);

        // Section headers: base-relative addresses, in file order, then the non-loaded tables.
        let sections = elf.elf_section_table();
        let names: Vec<&str> = sections
            .iter()
            .skip(1)
            .map(|s| std::str::from_utf8(sections.section_name(e, s).unwrap()).unwrap())
            .collect();
        assert_eq!(
            names,
            [
                ".dynsym",
                ".dynstr",
                ".hash",
                ".rela.dyn",
                ".text",
                ".dynamic",
                ".got",
                ".data",
                ".bss",
                ".symtab",
                ".strtab",
                ".shstrtab"
            ]
        );
        for (i, name) in names.iter().enumerate().take(9) {
            let out = Out::ALL.into_iter().find(|o| o.name() == *name).unwrap();
            assert_eq!(
                sections.section(object::SectionIndex(i + 1)).unwrap().sh_addr(e),
                lay.sections[&out].0
            );
        }

        // `.dynsym`, `.rela.dyn` and `.dynamic`.
        let dynsyms = sections.symbols(e, data, SHT_DYNSYM).unwrap();
        assert_eq!(dynsyms.len(), 2);
        let write_sym = dynsyms.symbol(object::SymbolIndex(1)).unwrap();
        assert_eq!(dynsyms.symbol_name(e, write_sym).unwrap(), b"write");
        assert_eq!((write_sym.st_bind(), write_sym.st_type()), (STB_GLOBAL, STT_NOTYPE));
        let rela_dyn = sections.iter().find(|s| s.sh_type(e) == SHT_RELA).unwrap();
        let (relas, _) = rela_dyn.rela(e, data).unwrap().unwrap();
        let relas: Vec<_> = relas
            .iter()
            .map(|r| (r.r_offset.get(e), r.r_type(e, false), r.r_sym(e, false), r.r_addend.get(e)))
            .collect();
        let cell = BASE + lay.cells[&Cell::Address(Target::Import(0))];
        assert_eq!(relas, [(cell, R_X86_64_GLOB_DAT, 1, 0), (out.chunk_addr[2] + 8, R_X86_64_64, 1, 0)]);
        let (dynamic, _) = sections.dynamic(e, data).unwrap().unwrap();
        let tag = |t: DynamicTag| dynamic.iter().find(|d| d.d_tag.get(e) == t).map(|d| d.d_val.get(e));
        assert_eq!(tag(DT_FLAGS_1), Some(DF_1_NODELETE.0));
        assert_eq!(tag(DT_SYMTAB), Some(BASE + lay.sections[&Out::DynSym].0));
        assert_eq!(tag(DT_RELA), Some(BASE + lay.sections[&Out::RelaDyn].0));
        assert_eq!(tag(DT_RELASZ), Some(2 * RELA_SIZE));
        assert_eq!(tag(DT_SONAME), None);
        assert_eq!(dynamic.last().map(|d| d.d_tag.get(e)), Some(DT_NULL));
        // HASH STRTAB SYMTAB STRSZ SYMENT, RELA RELASZ RELAENT, FLAGS_1, NULL.
        assert_eq!(dynamic.len(), 10);

        // `.symtab` names the chunks at base-relative addresses.
        let symtab = sections.symbols(e, data, SHT_SYMTAB).unwrap();
        let syms: Vec<(String, u64, SymbolType)> = symtab
            .iter()
            .skip(1)
            .map(|s| {
                let name = String::from_utf8(symtab.symbol_name(e, s).unwrap().to_vec()).unwrap();
                (name, s.st_value(e), s.st_type())
            })
            .collect();
        let at = |i: usize| lay.chunk_offset[i];
        assert_eq!(
            syms,
            [
                ("f".to_string(), at(0), STT_FUNC),
                ("COUNTER".to_string(), at(1), STT_OBJECT),
                ("TABLE".to_string(), at(2), STT_OBJECT),
                ("ZEROED".to_string(), at(3), STT_OBJECT),
            ]
        );

        // Relocations applied: `f` calls the stub, which jumps through the import's cell; it reads
        // `COUNTER`; `TABLE` holds `f`'s address.
        let file =
            |mem: u64| lay.segments.iter().find(|s| mem >= s.mem && mem < s.mem_end()).unwrap().file_of(mem);
        let word = |mem: u64| i32::from_le_bytes(data[file(mem) as usize..][..4].try_into().unwrap()) as i64;
        let f = at(0);
        assert_eq!(f as i64 + 5 + word(f + 1), lay.stubs[0] as i64);
        assert_eq!(f as i64 + 12 + word(f + 8), at(1) as i64);
        assert_eq!(&data[file(lay.stubs[0]) as usize..][..2], [0xff, 0x25]);
        assert_eq!(lay.stubs[0] as i64 + 6 + word(lay.stubs[0] + 2), (cell - BASE) as i64);
        let table = file(at(2)) as usize;
        assert_eq!(u64::from_le_bytes(data[table..table + 8].try_into().unwrap()), out.chunk_addr[0]);
        assert_eq!(&data[table + 8..table + 16], [0; 8], "the loader fills the import's pointer");
    }

    /// A function with one 32-bit PC-relative reference to `target` in the running image.
    fn reaching(target: u64) -> Plan<'static> {
        let code = vec![0xe8, 0, 0, 0, 0, 0xc3];
        let reference =
            reloc(1, R_X86_64_PLT32, Target::Absolute(target), -4, "_ZN3app6helper17h0123456789abcdefE");
        Plan {
            sources: Vec::new(),
            chunks: vec![chunk("f", SectionKind::Text, code, 6, vec![reference])],
            imports: vec![],
            ..plan()
        }
    }

    #[test]
    fn references_reach_within_2_gib_of_the_base_and_fail_naming_their_target_beyond() {
        let tls = TlsLayout { block_tp_offset: -64 };
        for target in [BASE + 0x7000_0000, BASE - 0x7000_0000] {
            let plan = reaching(target);
            let lay = layout(&plan);
            let out = write(&plan, &lay, BASE, tls).expect("within reach");
            let at = lay.segment(SegmentKind::Code).file_of(lay.chunk_offset[0]) as usize;
            let rel = i32::from_le_bytes(out.bytes[at + 1..at + 5].try_into().unwrap());
            assert_eq!(out.chunk_addr[0] as i64 + 5 + i64::from(rel), target as i64);
        }
        for target in [BASE + 0x8010_0000, BASE - 0x8010_0000] {
            let plan = reaching(target);
            let lay = layout(&plan);
            let Err(e) = write(&plan, &lay, BASE, tls) else { panic!("{target:#x} cannot be reached") };
            let e = e.to_string();
            assert!(e.contains("`app::helper`") && e.contains("does not reach"), "{e}");
        }
    }
}
