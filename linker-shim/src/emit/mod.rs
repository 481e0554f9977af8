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

pub mod layout;

use crate::error::Result;
use crate::plan::{Plan, PlannedReloc, Target};
use crate::{bail, err};
use layout::{Cell, Layout, Out, EHDR_SIZE, PHDR_COUNT, PHDR_SIZE, STUB_SIZE};
use object::elf::*;

/// How TLS offsets become thread-pointer offsets in this process.
#[derive(Debug, Clone, Copy)]
pub struct TlsLayout {
    /// Thread pointer + this = start of the executable's TLS block.
    pub block_tp_offset: i64,
}

pub struct Emitted {
    pub bytes: Vec<u8>,
    pub base: u64,
    /// Memory span from `base`.
    pub span: u64,
    /// Absolute address of every chunk.
    pub chunk_addr: Vec<u64>,
}

/// Lays the patch out without an address (to learn its size before choosing one).
pub fn layout(plan: &Plan, soname: &str) -> Layout {
    layout::compute(plan, soname)
}

/// Writes the patch for loading at `base` (page aligned).
pub fn write(plan: &Plan, lay: &Layout, base: u64, tls: TlsLayout) -> Result<Emitted> {
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
    let tail = non_alloc_sections(plan, lay);
    let shoff = bytes.len().next_multiple_of(8) as u64;
    bytes.resize(shoff as usize, 0);
    let (section_headers, shstrndx) = tail.section_headers(lay, shoff);
    bytes.extend_from_slice(&tail.data);
    let shoff_real = bytes.len().next_multiple_of(8);
    bytes.resize(shoff_real, 0);
    let shnum = section_headers.len() / 64;
    bytes.extend_from_slice(&section_headers);
    write_headers(&mut bytes, lay, base, shoff_real as u64, shnum as u16, shstrndx);
    let chunk_addr = lay.chunk_offset.iter().map(|o| base + o).collect();
    Ok(Emitted { bytes, base, span: lay.span, chunk_addr })
}

struct Writer<'p, 'a> {
    plan: &'p Plan<'a>,
    lay: &'p Layout,
    base: u64,
    tls: TlsLayout,
    out: Vec<u8>,
    /// (place, type, dynsym index, addend)
    dynrel: Vec<(u64, u32, u32, i64)>,
}

impl Writer<'_, '_> {
    /// File offset of memory offset `mem`.
    fn file_of(&self, mem: u64) -> usize {
        for (m, msz, f, _) in self.lay.segments {
            if mem >= m && mem < m + msz.max(1) {
                return (f + (mem - m)) as usize;
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
                    self.dynrel.push((self.base + at, R_X86_64_GLOB_DAT.0, i as u32 + 1, 0));
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
                    self.dynrel.push((p, R_X86_64_64.0, i as u32 + 1, a));
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
                (cell(self).unwrap() as i128 + a as i128 - p as i128, 4, Range::Signed)
            }
            R_X86_64_GOTPCREL64 => (cell(self).unwrap() as i128 + a as i128 - p as i128, 8, Range::Any),
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
        let mut dynsym = vec![0u8; 24];
        for &name in &lay.import_name {
            let mut s = [0u8; 24];
            s[0..4].copy_from_slice(&name.to_le_bytes());
            s[4] = (STB_GLOBAL.0 << 4) | STT_NOTYPE.0;
            dynsym.extend_from_slice(&s);
        }
        self.put(sec(Out::DynSym).0, &dynsym);
        self.put(sec(Out::DynStr).0, &lay.dynstr.clone());
        // A one-bucket SysV hash table: enough for the loader, which looks nothing up in a patch.
        let nsyms = lay.import_name.len() as u32 + 1;
        let mut hash = Vec::new();
        for w in [1u32, nsyms, 0].into_iter().chain(std::iter::repeat_n(0, nsyms as usize)) {
            hash.extend_from_slice(&w.to_le_bytes());
        }
        self.put(sec(Out::Hash).0, &hash);
        let b = self.base;
        let mut entries: Vec<(i64, u64)> = vec![
            (DT_HASH.0, b + sec(Out::Hash).0),
            (DT_STRTAB.0, b + sec(Out::DynStr).0),
            (DT_SYMTAB.0, b + sec(Out::DynSym).0),
            (DT_STRSZ.0, lay.dynstr.len() as u64),
            (DT_SYMENT.0, 24),
            (DT_SONAME.0, lay.soname as u64),
        ];
        if !lay.import_name.is_empty() {
            entries.push((DT_RELA.0, b + sec(Out::RelaDyn).0));
            entries.push((DT_RELASZ.0, sec(Out::RelaDyn).1));
            entries.push((DT_RELAENT.0, 24));
        }
        entries.push((DT_FLAGS_1.0, DF_1_NODELETE.0));
        let mut d = Vec::new();
        for (tag, val) in entries {
            d.extend_from_slice(&tag.to_le_bytes());
            d.extend_from_slice(&val.to_le_bytes());
        }
        d.extend_from_slice(&[0u8; 16]); // DT_NULL
        self.put(sec(Out::Dynamic).0, &d);
    }
}

#[derive(Clone, Copy)]
enum Range {
    Any,
    Signed,
    Unsigned,
}

fn write_rela_dyn(bytes: &mut [u8], lay: &Layout, dynrel: &[(u64, u32, u32, i64)]) {
    let Some(&(at, size)) = lay.sections.get(&Out::RelaDyn) else { return };
    let file = lay.segments.iter().find(|s| at >= s.0 && at < s.0 + s.1).map_or(at, |s| s.2 + (at - s.0));
    let mut pos = file as usize;
    for &(place, kind, sym, addend) in dynrel.iter().take((size / 24) as usize) {
        bytes[pos..pos + 8].copy_from_slice(&place.to_le_bytes());
        bytes[pos + 8..pos + 16].copy_from_slice(&(((sym as u64) << 32) | kind as u64).to_le_bytes());
        bytes[pos + 16..pos + 24].copy_from_slice(&addend.to_le_bytes());
        pos += 24;
    }
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
}

fn non_alloc_sections(plan: &Plan, lay: &Layout) -> Tail {
    let index_of = |out: Out| -> u16 {
        1 + Out::ALL.iter().filter(|o| lay.sections.contains_key(o)).position(|&o| o == out).unwrap_or(0)
            as u16
    };
    let mut strtab = vec![0u8];
    let mut symtab = vec![0u8; 24];
    for (i, c) in plan.chunks.iter().enumerate() {
        let shndx = index_of(lay.chunk_out[i]);
        for (name, off, size, func) in &c.symbols {
            let name_off = strtab.len() as u32;
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
            let mut s = [0u8; 24];
            s[0..4].copy_from_slice(&name_off.to_le_bytes());
            s[4] = (STB_LOCAL.0 << 4) | if *func { STT_FUNC.0 } else { STT_OBJECT.0 };
            s[6..8].copy_from_slice(&shndx.to_le_bytes());
            s[8..16].copy_from_slice(&(lay.chunk_offset[i] + off).to_le_bytes());
            s[16..24].copy_from_slice(&size.to_le_bytes());
            symtab.extend_from_slice(&s);
        }
    }
    let local_count = (symtab.len() / 24) as u32;
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
    data.extend_from_slice(&symtab);
    let strtab_at = (data.len() as u64, strtab.len() as u64);
    data.extend_from_slice(&strtab);
    let shstrtab_at = (data.len() as u64, shstrtab.len() as u64);
    data.extend_from_slice(&shstrtab);
    Tail { data, symtab: symtab_at, strtab: strtab_at, shstrtab: shstrtab_at, names, local_count }
}

impl Tail {
    /// Section headers; the non-alloc sections start at file offset `tail_at`.
    fn section_headers(&self, lay: &Layout, tail_at: u64) -> (Vec<u8>, u16) {
        let present: Vec<Out> = Out::ALL.iter().copied().filter(|o| lay.sections.contains_key(o)).collect();
        let index = |o: Out| present.iter().position(|&p| p == o).map_or(0, |i| i as u32 + 1);
        let mut sh = vec![0u8; 64];
        for (i, &out) in present.iter().enumerate() {
            let (mem, size) = lay.sections[&out];
            let file =
                lay.segments.iter().find(|s| mem >= s.0 && mem <= s.0 + s.1).map_or(0, |s| s.2 + (mem - s.0));
            let (ty, flags, link, info, entsize, align) = match out {
                Out::DynSym => (SHT_DYNSYM, SHF_ALLOC.0, index(Out::DynStr), 1, 24, 8),
                Out::DynStr => (SHT_STRTAB, SHF_ALLOC.0, 0, 0, 0, 1),
                Out::Hash => (SHT_HASH, SHF_ALLOC.0, index(Out::DynSym), 0, 4, 8),
                Out::RelaDyn => (SHT_RELA, SHF_ALLOC.0, index(Out::DynSym), 0, 24, 8),
                Out::Rodata | Out::ExceptTable | Out::EhFrameHdr => (SHT_PROGBITS, SHF_ALLOC.0, 0, 0, 0, 8),
                Out::EhFrame => (SHT_X86_64_UNWIND, SHF_ALLOC.0, 0, 0, 0, 8),
                Out::Text => (SHT_PROGBITS, SHF_ALLOC.0 | SHF_EXECINSTR.0, 0, 0, 0, 16),
                Out::Dynamic => (SHT_DYNAMIC, SHF_ALLOC.0 | SHF_WRITE.0, index(Out::DynStr), 0, 16, 8),
                Out::Got | Out::Data => (SHT_PROGBITS, SHF_ALLOC.0 | SHF_WRITE.0, 0, 0, 0, 16),
                Out::Bss => (SHT_NOBITS, SHF_ALLOC.0 | SHF_WRITE.0, 0, 0, 0, 16),
            };
            sh.extend_from_slice(&shdr(
                self.names[i],
                ty.0,
                flags,
                mem,
                file,
                size,
                link,
                info,
                align,
                entsize,
            ));
        }
        let n = present.len();
        let strtab_index = n as u32 + 2;
        sh.extend_from_slice(&shdr(
            self.names[n],
            SHT_SYMTAB.0,
            0,
            0,
            tail_at + self.symtab.0,
            self.symtab.1,
            strtab_index,
            self.local_count,
            8,
            24,
        ));
        sh.extend_from_slice(&shdr(
            self.names[n + 1],
            SHT_STRTAB.0,
            0,
            0,
            tail_at + self.strtab.0,
            self.strtab.1,
            0,
            0,
            1,
            0,
        ));
        sh.extend_from_slice(&shdr(
            self.names[n + 2],
            SHT_STRTAB.0,
            0,
            0,
            tail_at + self.shstrtab.0,
            self.shstrtab.1,
            0,
            0,
            1,
            0,
        ));
        (sh, n as u16 + 3)
    }
}

#[allow(clippy::too_many_arguments)]
fn shdr(
    name: u32,
    ty: u32,
    flags: u64,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
    align: u64,
    entsize: u64,
) -> [u8; 64] {
    let mut h = [0u8; 64];
    h[0..4].copy_from_slice(&name.to_le_bytes());
    h[4..8].copy_from_slice(&ty.to_le_bytes());
    h[8..16].copy_from_slice(&flags.to_le_bytes());
    h[16..24].copy_from_slice(&addr.to_le_bytes());
    h[24..32].copy_from_slice(&offset.to_le_bytes());
    h[32..40].copy_from_slice(&size.to_le_bytes());
    h[40..44].copy_from_slice(&link.to_le_bytes());
    h[44..48].copy_from_slice(&info.to_le_bytes());
    h[48..56].copy_from_slice(&align.to_le_bytes());
    h[56..64].copy_from_slice(&entsize.to_le_bytes());
    h
}

/// ELF header and program headers.
fn write_headers(bytes: &mut [u8], lay: &Layout, base: u64, shoff: u64, shnum: u16, shstrndx: u16) {
    let mut e = [0u8; EHDR_SIZE as usize];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = ELFCLASS64.0;
    e[5] = ELFDATA2LSB.0;
    e[6] = EV_CURRENT.0;
    e[16..18].copy_from_slice(&ET_DYN.0.to_le_bytes());
    e[18..20].copy_from_slice(&EM_X86_64.0.to_le_bytes());
    e[20..24].copy_from_slice(&u32::from(EV_CURRENT.0).to_le_bytes());
    e[32..40].copy_from_slice(&EHDR_SIZE.to_le_bytes());
    e[40..48].copy_from_slice(&shoff.to_le_bytes());
    e[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    e[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    e[56..58].copy_from_slice(&(PHDR_COUNT as u16).to_le_bytes());
    e[58..60].copy_from_slice(&64u16.to_le_bytes());
    e[60..62].copy_from_slice(&shnum.to_le_bytes());
    e[62..64].copy_from_slice(&shstrndx.to_le_bytes());
    bytes[..EHDR_SIZE as usize].copy_from_slice(&e);

    let flags = [PF_R.0, PF_R.0 | PF_X.0, PF_R.0 | PF_W.0];
    let mut ph = Vec::new();
    for (i, &(mem, msz, file, fsz)) in lay.segments.iter().enumerate() {
        if msz == 0 {
            ph.push(phdr(PT_NULL.0, 0, 0, 0, 0, 0, 0));
        } else {
            ph.push(phdr(PT_LOAD.0, flags[i], file, base + mem, fsz, msz, layout::PAGE));
        }
    }
    let (dmem, dsize) = lay.sections[&Out::Dynamic];
    let dfile = lay.segments[2].2 + (dmem - lay.segments[2].0);
    ph.push(phdr(PT_DYNAMIC.0, PF_R.0 | PF_W.0, dfile, base + dmem, dsize, dsize, 8));
    match lay.sections.get(&Out::EhFrameHdr) {
        Some(&(hmem, hsize)) => ph.push(phdr(PT_GNU_EH_FRAME.0, PF_R.0, hmem, base + hmem, hsize, hsize, 4)),
        None => ph.push(phdr(PT_NULL.0, 0, 0, 0, 0, 0, 0)),
    }
    ph.push(phdr(PT_GNU_STACK.0, PF_R.0 | PF_W.0, 0, 0, 0, 0, 16));
    let at = EHDR_SIZE as usize;
    let flat: Vec<u8> = ph.concat();
    bytes[at..at + flat.len()].copy_from_slice(&flat);
}

fn phdr(ty: u32, flags: u32, offset: u64, vaddr: u64, filesz: u64, memsz: u64, align: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(PHDR_SIZE as usize);
    p.extend_from_slice(&ty.to_le_bytes());
    p.extend_from_slice(&flags.to_le_bytes());
    p.extend_from_slice(&offset.to_le_bytes());
    p.extend_from_slice(&vaddr.to_le_bytes());
    p.extend_from_slice(&vaddr.to_le_bytes());
    p.extend_from_slice(&filesz.to_le_bytes());
    p.extend_from_slice(&memsz.to_le_bytes());
    p.extend_from_slice(&align.to_le_bytes());
    p
}
