//! The planner: the chunks the patch carries, and the loop that resolves their relocations.
//!
//! [`Planner`] adds a section (or merge piece) to the patch once, with its unwind record, and
//! resolves each carried chunk's relocations, which may include more. Where each target lives is
//! decided in `resolve.rs`; `report.rs` turns the result into the [`super::Plan`].

use super::chain;
use super::graph::{self, HotPoints, Index, Loc};
use super::imports::Imports;
use super::pull::Archives;
use super::tls::TlsReserve;
use super::unwind::{self, UnwindRecords};
use super::worklist::Worklist;
use super::{Chunk, ChunkId, EhRecord, Inputs, Obj, PlannedReloc, Refusal};
use crate::objects::load::ObjectArena;
use crate::objects::{Object, SecIdx, SectionKind, SymbolKind};
use std::collections::{HashMap, HashSet};

/// Resolves the relocations of everything the patch carries, including what they lead to.
///
/// Its state is in independent parts, each keeping its own invariants: the chunks and what is left
/// to resolve ([`Worklist`]), archive members pulled in ([`Archives`]), unwind records
/// ([`UnwindRecords`]), dynamic imports ([`Imports`]), new thread-locals ([`TlsReserve`]).
pub(super) struct Planner<'p, 'g, 'a> {
    pub(super) input: &'p Inputs<'p, 'a>,
    pub(super) index: &'g Index<'g, 'a>,
    pub(super) hot: &'g HotPoints,
    pub(super) copy: &'g HashSet<Loc>,
    /// In place: changed functions that are not redirected → why, when it is a layout change.
    pub(super) stale: &'g HashMap<Loc, Option<String>>,
    /// In place: unchanged code leading to them, carried where the patch's code refers to it.
    pub(super) chains: &'g chain::Chains,
    pub(super) work: Worklist<'a>,
    pub(super) archives: Archives<'p, 'a>,
    pub(super) unwind: UnwindRecords<'a>,
    pub(super) imports: Imports,
    pub(super) tls: TlsReserve<'p>,
    /// Private null slots for patched copies of method-form hot functions: slot node → chunk.
    pub(super) private_slots: HashMap<Loc, ChunkId>,
    /// What cannot be patched safely, each (symbol, reason) once.
    pub(super) refusals: Vec<Refusal>,
}

impl<'p, 'g, 'a> Planner<'p, 'g, 'a> {
    pub(super) fn new(
        input: &'p Inputs<'p, 'a>,
        index: &'g Index<'g, 'a>,
        hot: &'g HotPoints,
        (copy, stale, chains): (&'g HashSet<Loc>, &'g HashMap<Loc, Option<String>>, &'g chain::Chains),
        pulled: &'p ObjectArena<'a>,
    ) -> Self {
        Planner {
            input,
            index,
            hot,
            copy,
            stale,
            chains,
            work: Worklist::default(),
            archives: Archives::new(input.link_inputs, input.arena, pulled),
            unwind: UnwindRecords::default(),
            imports: Imports::default(),
            tls: TlsReserve::new(input.tls.reserve, &input.hello.tls),
            private_slots: HashMap::new(),
            refusals: Vec::new(),
        }
    }

    pub(super) fn object(&self, o: Obj) -> crate::error::Result<&'p Object<'a>> {
        match o {
            // The index's build: see `Index::object` for when this read fails.
            Obj::Unit(u) => graph::linked_unit(self.input.current, u),
            Obj::Pulled(i) => Ok(self.archives.object(i)),
        }
    }

    pub(super) fn refuse(&mut self, symbol: &str, reason: String) {
        let symbol = crate::map::read::demangle(symbol);
        if !self.refusals.iter().any(|r| r.symbol == symbol && r.reason == reason) {
            self.refusals.push(Refusal { symbol, reason, secondary: false });
        }
    }

    /// Adds a section (or merge piece) to the patch, once.
    pub(super) fn include(
        &mut self,
        obj: Obj,
        sec: SecIdx,
        piece: Option<(u64, u64)>,
    ) -> crate::error::Result<ChunkId> {
        let key = (obj, sec, piece);
        if let Some(id) = self.work.find(&key) {
            return Ok(id);
        }
        let o = self.object(obj)?;
        let s = &o.sections[sec];
        let (start, end) = piece.unwrap_or((0, s.size));
        let data: &'a [u8] = if s.data.is_empty() { &[] } else { &s.data[start as usize..end as usize] };
        let symbols = s
            .symbols
            .iter()
            .map(|&i| &o.symbols[i])
            .filter(|sym| sym.value >= start && sym.value < end.max(start + 1))
            .map(|sym| (sym.name.to_string(), sym.value - start, sym.size, sym.kind == SymbolKind::Function))
            .collect();
        let name = o.primary_symbol(sec).map_or_else(|| s.name.to_string(), |p| p.name.to_string());
        let id = self.work.include(
            key,
            Chunk {
                name,
                kind: s.kind,
                align: if piece.is_some() { s.merge.map_or(1, |m| m.entsize.max(1)) } else { s.align },
                size: end - start,
                data: std::borrow::Cow::Borrowed(data),
                relocs: Vec::new(),
                symbols,
            },
        );
        if s.kind == SectionKind::Text {
            self.include_unwind(obj, sec, id)?;
        }
        Ok(id)
    }

    pub(super) fn run(&mut self) -> crate::error::Result<()> {
        while let Some((id, (obj, sec, piece))) = self.work.next() {
            let (start, end) = piece.unwrap_or((0, u64::MAX));
            let relocs = self.plan_relocs(obj, sec, start, end, Some(id))?;
            self.work.set_relocs(id, relocs);
        }
        Ok(())
    }

    /// The relocations of `sec` in `[start, end)`, resolved, with offsets from `start`. `from`
    /// is the chunk making them (none for unwind records).
    fn plan_relocs(
        &mut self,
        obj: Obj,
        sec: SecIdx,
        start: u64,
        end: u64,
        from: Option<ChunkId>,
    ) -> crate::error::Result<Vec<PlannedReloc>> {
        let relocs: Vec<_> = self.object(obj)?.sections[sec]
            .relocs()
            .iter()
            .filter(|r| r.offset >= start && r.offset < end)
            .copied()
            .collect();
        let mut planned = Vec::with_capacity(relocs.len());
        for r in relocs {
            let target = self.resolve(obj, &r, from)?;
            let symbol = self.object(obj)?.symbols[r.symbol].name.to_string();
            planned.push(PlannedReloc {
                offset: r.offset - start,
                kind: r.kind,
                target,
                addend: r.addend,
                symbol,
            });
        }
        Ok(planned)
    }

    /// The FDE of a carried function, and its CIE (once per object and CIE).
    fn include_unwind(&mut self, obj: Obj, sec: SecIdx, chunk: ChunkId) -> crate::error::Result<()> {
        let Some(info) = self.unwind.fde_of(obj, self.object(obj)?, sec) else {
            let name = self.work.chunk(chunk).map(|c| c.name.clone()).unwrap_or_default();
            self.unwind.no_unwind(name);
            return Ok(());
        };
        let cie = match self.unwind.cie(obj, info.cie) {
            Some(c) => c,
            None => {
                let c = self.eh_record(obj, info.eh_frame, info.cie, None)?;
                self.unwind.cie_added(obj, info.cie, c);
                c
            }
        };
        self.eh_record(obj, info.eh_frame, info.fde, Some(cie))?;
        Ok(())
    }

    fn eh_record(
        &mut self,
        obj: Obj,
        eh: SecIdx,
        rec: unwind::Record,
        cie: Option<usize>,
    ) -> crate::error::Result<usize> {
        let (start, end) = (rec.start as u64, (rec.start + rec.len) as u64);
        let planned = self.plan_relocs(obj, eh, start, end, None)?;
        let data = &self.object(obj)?.sections[eh].data[rec.start..rec.start + rec.len];
        Ok(self.unwind.push(EhRecord { data, relocs: planned, cie }))
    }
}
