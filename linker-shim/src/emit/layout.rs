//! Where everything of a patch goes, relative to its (not yet chosen) base address.
//!
//! Three loadable segments — read-only, code, writable — each starting on a fresh page in memory
//! but packed densely in the file (a segment's address and file offset agree modulo the page
//! size, which is all `mmap` needs).

use super::records::{DYN_SIZE, EHDR_SIZE, PHDR_SIZE, RELA_SIZE, SYM_SIZE};
use crate::objects::SectionKind;
use crate::plan::{Plan, Target};
use object::elf::*;
use std::collections::HashMap;

pub const PAGE: u64 = 4096;
/// Three `PT_LOAD`, `PT_DYNAMIC`, `PT_GNU_EH_FRAME` (or `PT_NULL`), `PT_GNU_STACK`.
pub const PHDR_COUNT: u64 = 6;
/// `jmp *cell(%rip)`: how calls reach an imported function.
pub const STUB_SIZE: u64 = 8;

/// A memory word the patch needs for an indirect reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cell {
    /// GOT entry holding a target's address (absolute, or filled by the loader for an import).
    Address(Target),
    /// `GOTTPOFF`: the thread-pointer offset of a TLS variable (module offset).
    TpOff(u64),
    /// `TLSGD`: `{ module 1, offset }` for `__tls_get_addr`.
    TlsIndex(u64),
    /// `TLSLD`: `{ module 1, 0 }`.
    TlsModule,
}

impl Cell {
    pub fn size(self) -> u64 {
        match self {
            Cell::TlsIndex(_) | Cell::TlsModule => 16,
            _ => 8,
        }
    }
}

/// The output sections, in file order. Empty ones are left out of the section headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Out {
    DynSym,
    DynStr,
    Hash,
    RelaDyn,
    Rodata,
    ExceptTable,
    EhFrameHdr,
    EhFrame,
    Text,
    Dynamic,
    Got,
    Data,
    Bss,
}

impl Out {
    pub const ALL: [Out; 13] = [
        Out::DynSym,
        Out::DynStr,
        Out::Hash,
        Out::RelaDyn,
        Out::Rodata,
        Out::ExceptTable,
        Out::EhFrameHdr,
        Out::EhFrame,
        Out::Text,
        Out::Dynamic,
        Out::Got,
        Out::Data,
        Out::Bss,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Out::DynSym => ".dynsym",
            Out::DynStr => ".dynstr",
            Out::Hash => ".hash",
            Out::RelaDyn => ".rela.dyn",
            Out::Rodata => ".rodata",
            Out::ExceptTable => ".gcc_except_table",
            Out::EhFrameHdr => ".eh_frame_hdr",
            Out::EhFrame => ".eh_frame",
            Out::Text => ".text",
            Out::Dynamic => ".dynamic",
            Out::Got => ".got",
            Out::Data => ".data",
            Out::Bss => ".bss",
        }
    }

    pub fn segment(self) -> SegmentKind {
        match self {
            Out::Text => SegmentKind::Code,
            Out::Dynamic | Out::Got | Out::Data | Out::Bss => SegmentKind::Writable,
            _ => SegmentKind::ReadOnly,
        }
    }

    /// Where a chunk goes. Constant data holding an absolute pointer to an import goes with the
    /// writable data: the loader writes that pointer when it binds the import (read-only pages
    /// would fault, and nothing of the patch may run to make them writable again).
    fn of_chunk(c: &crate::plan::Chunk<'_>) -> Out {
        let loader_writes =
            c.relocs.iter().any(|r| matches!(r.target, Target::Import(_)) && r.kind == R_X86_64_64);
        match c.kind {
            SectionKind::Text => Out::Text,
            _ if loader_writes => Out::Data,
            SectionKind::ExceptTable => Out::ExceptTable,
            SectionKind::Data => Out::Data,
            SectionKind::Bss => Out::Bss,
            _ => Out::Rodata,
        }
    }
}

/// The patch's three loadable segments, in file and memory order (the index into
/// [`Layout::segments`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// Headers, dynamic symbols and strings, constants, unwind tables.
    ReadOnly = 0,
    Code = 1,
    /// `.dynamic`, the GOT, statics and `.bss`.
    Writable = 2,
}

/// One loadable segment: where it is in memory (relative to the base) and in the file. Empty
/// (all zero) when the patch has nothing for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    pub mem: u64,
    pub mem_size: u64,
    pub file: u64,
    pub file_size: u64,
}

impl Segment {
    /// The end of the segment in memory.
    pub fn mem_end(&self) -> u64 {
        self.mem + self.mem_size
    }

    /// The file offset of memory offset `mem` (which the caller found in this segment).
    pub fn file_of(&self, mem: u64) -> u64 {
        self.file + (mem - self.mem)
    }
}

/// Offsets are relative to the patch's base address (and equal file offsets within a segment
/// minus the segment's `delta`).
pub struct Layout {
    pub chunk_offset: Vec<u64>,
    pub chunk_out: Vec<Out>,
    /// Start offset (memory) and size of each output section.
    pub sections: HashMap<Out, (u64, u64)>,
    pub cells: HashMap<Cell, u64>,
    pub cell_order: Vec<Cell>,
    /// Import index → offset of its call stub.
    pub stubs: Vec<u64>,
    pub eh_record_offset: Vec<u64>,
    /// Indexed by [`SegmentKind`]: read-only, code, writable.
    pub segments: [Segment; 3],
    /// End of the file's loadable part.
    pub file_end: u64,
    /// Memory span from the base address.
    pub span: u64,
    pub dynstr: Vec<u8>,
    /// Import index → name offset in `.dynstr`.
    pub import_name: Vec<u32>,
}

impl Layout {
    pub fn segment(&self, kind: SegmentKind) -> Segment {
        self.segments[kind as usize]
    }
}

/// The cell a relocation of `kind` to `target` goes through, if it needs one.
pub fn cell_of(kind: RelocationType, target: Target) -> Option<Cell> {
    Some(match kind {
        R_X86_64_GOTPCREL | R_X86_64_GOTPCRELX | R_X86_64_REX_GOTPCRELX | R_X86_64_GOTPCREL64 => {
            Cell::Address(target)
        }
        R_X86_64_GOTTPOFF => match target {
            Target::Tls(off) => Cell::TpOff(off),
            _ => return None,
        },
        R_X86_64_TLSGD => match target {
            Target::Tls(off) => Cell::TlsIndex(off),
            _ => return None,
        },
        R_X86_64_TLSLD => Cell::TlsModule,
        _ => return None,
    })
}

pub fn compute(plan: &Plan) -> Layout {
    let mut cells: HashMap<Cell, u64> = HashMap::new();
    let mut cell_order = Vec::new();
    let relocs = plan
        .chunks
        .iter()
        .flat_map(|c| c.relocs.iter())
        .chain(plan.eh_records.iter().flat_map(|r| r.relocs.iter()));
    // Every import has a cell: its call stub jumps through it, and the loader fills it.
    let import_cells = (0..plan.imports.len()).map(|i| Cell::Address(Target::Import(i)));
    let wanted = import_cells.chain(relocs.filter_map(|r| cell_of(r.kind, r.target)));
    let mut got_size = 0u64;
    for cell in wanted {
        if let std::collections::hash_map::Entry::Vacant(e) = cells.entry(cell) {
            got_size = got_size.next_multiple_of(cell.size().min(8));
            e.insert(got_size);
            cell_order.push(cell);
            got_size += cell.size();
        }
    }

    // .dynstr: "\0" imports... No `DT_SONAME`: every later `dlopen` in the process would read
    // each loaded patch's soname from the patch's own pages (two cold pages per patch per
    // `dlopen`: the apply grew with every patch loaded, BENCHMARKS.md P12), and nothing asks for
    // a patch by its soname.
    let mut dynstr = vec![0u8];
    let mut import_name = Vec::new();
    for name in &plan.imports {
        import_name.push(dynstr.len() as u32);
        dynstr.extend_from_slice(name.as_bytes());
        dynstr.push(0);
    }
    let nsyms = plan.imports.len() as u64 + 1;
    let has_imports = !plan.imports.is_empty();
    // HASH STRTAB SYMTAB STRSZ SYMENT FLAGS_1 NULL, plus RELA RELASZ RELAENT.
    let dynamic_entries = 7 + if has_imports { 3 } else { 0 };

    let mut sizes: HashMap<Out, (u64, u64)> = HashMap::new(); // size, align
    sizes.insert(Out::DynSym, (nsyms * SYM_SIZE, 8));
    sizes.insert(Out::DynStr, (dynstr.len() as u64, 1));
    sizes.insert(Out::Hash, ((2 + 1 + nsyms) * 4, 8));
    sizes.insert(Out::RelaDyn, (count_dynamic_relocs(plan) * RELA_SIZE, 8));
    sizes.insert(Out::Dynamic, (dynamic_entries * DYN_SIZE, 8));
    sizes.insert(Out::Got, (got_size, 16));

    // Chunks within their output sections.
    let mut chunk_offset = vec![0u64; plan.chunks.len()];
    let mut chunk_out = Vec::with_capacity(plan.chunks.len());
    let mut fill: HashMap<Out, (u64, u64)> = HashMap::new();
    fill.insert(Out::Text, (plan.imports.len() as u64 * STUB_SIZE, 16));
    for (i, c) in plan.chunks.iter().enumerate() {
        let out = Out::of_chunk(c);
        let (size, align) = fill.entry(out).or_insert((0, 1));
        let at = size.next_multiple_of(c.align.max(1));
        chunk_offset[i] = at;
        *size = at + c.size;
        *align = (*align).max(c.align.max(1));
        chunk_out.push(out);
    }
    for (out, v) in fill {
        sizes.insert(out, v);
    }

    // .eh_frame: records back to back, then a zero terminator; .eh_frame_hdr: 12 + 8 per FDE.
    let mut eh_record_offset = Vec::with_capacity(plan.eh_records.len());
    let mut eh = 0u64;
    for r in &plan.eh_records {
        eh_record_offset.push(eh);
        eh += r.data.len() as u64;
    }
    let fde_count = plan.eh_records.iter().filter(|r| r.cie.is_some()).count() as u64;
    if !plan.eh_records.is_empty() {
        sizes.insert(Out::EhFrame, (eh + 4, 8));
        sizes.insert(Out::EhFrameHdr, (12 + 8 * fde_count, 4));
    }

    // Place output sections into the three segments. Each segment after the first starts on a
    // fresh page in memory, at the same page offset as its first byte in the file.
    let mut sections = HashMap::new();
    let mut bounds: [Option<(u64, u64, u64, u64)>; 3] = [None; 3]; // mem start, file start, mem end, file end
    let mut file = EHDR_SIZE + PHDR_SIZE * PHDR_COUNT;
    let mut mem = file;
    bounds[SegmentKind::ReadOnly as usize] = Some((0, 0, mem, file));
    for out in Out::ALL {
        let Some(&(size, align)) = sizes.get(&out) else { continue };
        let always = matches!(out, Out::Dynamic | Out::DynSym | Out::DynStr | Out::Hash);
        if size == 0 && !always {
            continue;
        }
        let seg = out.segment() as usize;
        if bounds[seg].is_none() {
            mem = mem.next_multiple_of(PAGE) + file % PAGE;
            bounds[seg] = Some((mem, file, mem, file));
        }
        let pad = mem.next_multiple_of(align) - mem;
        mem += pad;
        file += pad;
        sections.insert(out, (mem, size));
        mem += size;
        if out != Out::Bss {
            file += size;
        }
        let b = bounds[seg].as_mut().expect("opened above when it was None");
        b.2 = mem;
        b.3 = file;
    }
    let mut segments = [Segment::default(); 3];
    for (i, b) in bounds.iter().enumerate() {
        if let Some((m0, f0, m1, f1)) = *b {
            segments[i] = Segment { mem: m0, mem_size: m1 - m0, file: f0, file_size: f1 - f0 };
        }
    }

    for (i, out) in chunk_out.iter().enumerate() {
        chunk_offset[i] += sections[out].0;
    }
    let text = sections.get(&Out::Text).map_or(0, |s| s.0);
    let stubs = (0..plan.imports.len() as u64).map(|i| text + i * STUB_SIZE).collect();
    let got = sections.get(&Out::Got).map_or(0, |s| s.0);
    for v in cells.values_mut() {
        *v += got;
    }
    Layout {
        chunk_offset,
        chunk_out,
        sections,
        cells,
        cell_order,
        stubs,
        eh_record_offset,
        segments,
        file_end: file,
        span: mem.next_multiple_of(PAGE),
        dynstr,
        import_name,
    }
}

/// Dynamic relocations: one `GLOB_DAT` per import (its cell), one `R_X86_64_64` per pointer to an
/// import in data.
fn count_dynamic_relocs(plan: &Plan) -> u64 {
    let cells = plan.imports.len() as u64;
    let pointers = plan
        .chunks
        .iter()
        .flat_map(|c| c.relocs.iter())
        .filter(|r| matches!(r.target, Target::Import(_)) && r.kind == R_X86_64_64)
        .count() as u64;
    cells + pointers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Chunk, EhRecord, PlannedReloc, Report};
    use std::borrow::Cow;

    fn reloc(offset: u64, kind: RelocationType, target: Target) -> PlannedReloc {
        PlannedReloc { offset, kind, target, addend: 0, symbol: format!("{target:?}") }
    }

    fn chunk(
        name: &str,
        kind: SectionKind,
        align: u64,
        size: u64,
        relocs: Vec<PlannedReloc>,
    ) -> Chunk<'static> {
        let data = if matches!(kind, SectionKind::Bss) { vec![] } else { vec![0xab; size as usize] };
        Chunk { name: name.into(), kind, align, size, data: Cow::Owned(data), relocs, symbols: vec![] }
    }

    const CIE: [u8; 20] = [0; 20];
    const FDE: [u8; 24] = [0; 24];

    /// Two functions (one reaching a static through the GOT, one using thread-locals each way),
    /// constants, a vtable-like constant pointing at an import, statics, `.bss`, two imports and
    /// the unwind records of one function.
    fn plan() -> Plan<'static> {
        let tls = vec![
            reloc(3, R_X86_64_GOTTPOFF, Target::Tls(0x40)),
            reloc(10, R_X86_64_TLSGD, Target::Tls(0x48)),
            reloc(20, R_X86_64_TLSLD, Target::Tls(0)),
            reloc(30, R_X86_64_TPOFF32, Target::Tls(0x50)),
        ];
        let got = vec![
            reloc(3, R_X86_64_REX_GOTPCRELX, Target::Absolute(0x5555_0000_1000)),
            reloc(9, R_X86_64_GOTPCREL, Target::Absolute(0x5555_0000_1000)),
            reloc(15, R_X86_64_PLT32, Target::Import(1)),
        ];
        Plan {
            sources: Vec::new(),
            steps: vec![],
            stats: vec![],
            chunks: vec![
                chunk("f", SectionKind::Text, 16, 37, got),
                chunk("CONST", SectionKind::ReadOnly, 32, 5, vec![]),
                chunk("g", SectionKind::Text, 64, 40, tls),
                chunk(
                    "VTABLE",
                    SectionKind::ReadOnlyAfterReloc,
                    8,
                    16,
                    vec![reloc(8, R_X86_64_64, Target::Import(0))],
                ),
                chunk("STATE", SectionKind::Data, 8, 12, vec![]),
                chunk("ZEROED", SectionKind::Bss, 64, 100, vec![]),
                chunk("LANDING", SectionKind::ExceptTable, 4, 6, vec![]),
                chunk("MORE_ZEROED", SectionKind::Bss, 8, 8, vec![]),
            ],
            eh_records: vec![
                EhRecord { data: &CIE, relocs: vec![], cie: None },
                EhRecord { data: &FDE, relocs: vec![], cie: Some(0) },
            ],
            imports: vec!["write".into(), "malloc".into()],
            installs: vec![],
            new_data: vec![],
            new_tls: vec![],
            report: Report::default(),
            refusals: vec![],
        }
    }

    fn within(inner: (u64, u64), outer: (u64, u64)) -> bool {
        inner.0 >= outer.0 && inner.0 + inner.1 <= outer.0 + outer.1
    }

    #[test]
    fn three_segments_on_fresh_pages_packed_in_the_file() {
        let lay = compute(&plan());
        let [ro, code, rw] = lay.segments;
        assert_eq!((ro.mem, ro.file), (0, 0), "the read-only segment maps the headers");
        assert!(ro.mem_size >= EHDR_SIZE + PHDR_SIZE * PHDR_COUNT);
        for (prev, seg) in [(ro, code), (code, rw)] {
            assert!(seg.mem_size > 0);
            assert!(
                seg.mem >= prev.mem_end().next_multiple_of(PAGE),
                "a fresh page: {prev:x?} then {seg:x?}"
            );
            assert_eq!(seg.mem % PAGE, seg.file % PAGE, "mmap needs address ≡ offset (mod page)");
            assert_eq!(seg.file, prev.file + prev.file_size, "packed in the file");
            assert!(seg.mem - prev.mem_end() < 2 * PAGE, "no more than the page rule asks");
        }
        assert_eq!(ro.mem_size, ro.file_size);
        assert_eq!(code.mem_size, code.file_size);
        let bss = lay.sections[&Out::Bss];
        assert_eq!(rw.mem_size - rw.file_size, bss.1, "`.bss` takes memory, not file");
        assert_eq!(lay.file_end, rw.file + rw.file_size);
        assert_eq!(lay.span, rw.mem_end().next_multiple_of(PAGE));
    }

    #[test]
    fn output_sections_lie_in_their_segment_aligned_in_file_order() {
        let plan = plan();
        let lay = compute(&plan);
        let mut last_end = 0;
        for out in Out::ALL {
            let Some(&(at, size)) = lay.sections.get(&out) else { continue };
            let seg = lay.segment(out.segment());
            assert!(within((at, size), (seg.mem, seg.mem_size)), "{out:?} at {at:#x}+{size:#x} in {seg:x?}");
            assert!(at >= last_end, "{out:?} overlaps the section before it");
            last_end = at + size;
        }
        let align = |out: Out| lay.sections[&out].0;
        assert_eq!(align(Out::Got) % 16, 0);
        assert_eq!(align(Out::Dynamic) % 8, 0);
        assert_eq!(align(Out::Text) % 64, 0, "as its most aligned chunk");
        assert_eq!(align(Out::Rodata) % 32, 0);
        assert_eq!(align(Out::Bss) % 64, 0);
        assert_eq!(
            lay.sections[&Out::RelaDyn].1,
            3 * RELA_SIZE,
            "a cell per import, one pointer to an import"
        );
        assert_eq!(
            lay.sections[&Out::EhFrame].1,
            (CIE.len() + FDE.len() + 4) as u64,
            "records and a terminator"
        );
        assert_eq!(lay.sections[&Out::EhFrameHdr].1, 12 + 8, "one FDE");
        assert_eq!(lay.eh_record_offset, [0, CIE.len() as u64]);
    }

    #[test]
    fn chunks_go_to_their_section_aligned_without_overlap() {
        let plan = plan();
        let lay = compute(&plan);
        let outs: Vec<Out> = lay.chunk_out.clone();
        assert_eq!(
            outs,
            [Out::Text, Out::Rodata, Out::Text, Out::Data, Out::Data, Out::Bss, Out::ExceptTable, Out::Bss],
            "a constant holding a pointer to an import is writable: the loader fills it"
        );
        let mut placed: Vec<(u64, u64)> = Vec::new();
        for (i, c) in plan.chunks.iter().enumerate() {
            let at = lay.chunk_offset[i];
            assert_eq!(at % c.align, 0, "{} aligned", c.name);
            assert!(within((at, c.size), lay.sections[&lay.chunk_out[i]]), "{} inside its section", c.name);
            assert!(placed.iter().all(|&(a, s)| at >= a + s || at + c.size <= a), "{} overlaps", c.name);
            placed.push((at, c.size));
        }
        // Import stubs open `.text`, before every function.
        let text = lay.sections[&Out::Text].0;
        assert_eq!(lay.stubs, [text, text + STUB_SIZE]);
        assert!(lay.chunk_offset[0] >= text + 2 * STUB_SIZE);
    }

    #[test]
    fn each_indirect_reference_gets_one_cell_in_the_got() {
        let lay = compute(&plan());
        let expected = [
            Cell::Address(Target::Import(0)),
            Cell::Address(Target::Import(1)),
            Cell::Address(Target::Absolute(0x5555_0000_1000)),
            Cell::TlsIndex(0x48),
            Cell::TlsModule,
            Cell::TpOff(0x40),
        ];
        let mut order = lay.cell_order.clone();
        assert_eq!(&order[..2], &expected[..2], "imports' cells first, in import order");
        order.sort_by_key(|c| format!("{c:?}"));
        let mut want = expected.to_vec();
        want.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(order, want, "two references to one address share a cell; TPOFF32 needs none");
        let got = lay.sections[&Out::Got];
        let mut cells: Vec<(u64, u64)> = lay.cell_order.iter().map(|c| (lay.cells[c], c.size())).collect();
        cells.sort_unstable();
        for w in cells.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "cells overlap: {cells:x?}");
        }
        for &(at, size) in &cells {
            assert_eq!(at % 8, 0);
            assert!(within((at, size), got));
        }
        assert_eq!(cells.iter().map(|c| c.1).sum::<u64>(), got.1, "the GOT is exactly its cells");
    }
}
