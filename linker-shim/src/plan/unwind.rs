//! Finding a function's unwind record in its object's `.eh_frame`.
//!
//! `.eh_frame` is a list of length-prefixed records: CIEs (common information: code alignment,
//! personality routine) and FDEs (one per function: its address range, call frame instructions,
//! and a pointer to its landing-pad table in `.gcc_except_table`). An FDE's second word points
//! back to its CIE; its third is the function's start, written by a relocation against the
//! function's section. A patch needs the FDE of every function it carries, with its CIE.

use super::{EhRecord, Obj};
use crate::objects::{Object, SecIdx, SectionKind};
use std::collections::HashMap;

/// One record: byte range inside the object's `.eh_frame`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Record {
    pub start: usize,
    pub len: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct FdeInfo {
    pub eh_frame: SecIdx,
    pub cie: Record,
    pub fde: Record,
}

/// Text section → its FDE, for one object. Malformed tables yield no entries (the function is
/// then patched without unwind info, and ipbp-ld says so).
pub fn fdes_by_function(obj: &Object) -> HashMap<SecIdx, FdeInfo> {
    let mut out = HashMap::new();
    for (eh, sec) in obj.sections.iter().enumerate() {
        if sec.kind != SectionKind::EhFrame {
            continue;
        }
        let data = sec.data;
        let mut pos = 0usize;
        while pos + 8 <= data.len() {
            // In bounds: `pos + 8 <= data.len()`.
            let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("a slice of exactly 4 bytes"))
                as usize;
            if len == 0 || len == 0xffff_ffff || pos + 4 + len > data.len() {
                break; // terminator, 64-bit DWARF (never emitted here) or garbage
            }
            let id =
                u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("a slice of exactly 4 bytes"))
                    as usize;
            if id != 0 {
                let cie_start = (pos + 4).checked_sub(id);
                let pc_begin = (pos + 8) as u64;
                let target = sec.relocs().iter().find(|r| r.offset == pc_begin);
                if let (Some(cie_start), Some(r)) = (cie_start, target) {
                    if let Some(func) = obj.symbols[r.symbol].section() {
                        if let Some(cie_len) = record_len(data, cie_start) {
                            out.insert(
                                func,
                                FdeInfo {
                                    eh_frame: eh,
                                    cie: Record { start: cie_start, len: cie_len },
                                    fde: Record { start: pos, len: len + 4 },
                                },
                            );
                        }
                    }
                }
            }
            pos += 4 + len;
        }
    }
    out
}

fn record_len(data: &[u8], start: usize) -> Option<usize> {
    let len = u32::from_le_bytes(data.get(start..start + 4)?.try_into().ok()?) as usize;
    (start + 4 + len <= data.len()).then_some(len + 4)
}

/// The unwind records a patch carries, and what is known of each object's `.eh_frame`.
///
/// Invariants: a CIE is carried once per object and position (every FDE of that object using it
/// points at the same record), and every FDE's `cie` is the index of a CIE in `records`.
#[derive(Default)]
pub(super) struct UnwindRecords<'a> {
    records: Vec<EhRecord<'a>>,
    /// (object, CIE start in its `.eh_frame`) → index in `records`.
    cies: HashMap<(Obj, usize), usize>,
    /// Per object, read on first use: text section → its FDE.
    fdes: HashMap<Obj, HashMap<SecIdx, FdeInfo>>,
    /// Carried functions without unwind info (a panic inside them aborts).
    no_unwind: Vec<String>,
}

impl<'a> UnwindRecords<'a> {
    /// The FDE of text section `sec` of `obj` (whose object is `object`).
    pub(super) fn fde_of(&mut self, obj: Obj, object: &Object, sec: SecIdx) -> Option<FdeInfo> {
        self.fdes.entry(obj).or_insert_with(|| fdes_by_function(object)).get(&sec).copied()
    }

    /// The record of the CIE at `cie` in `obj`'s `.eh_frame`, if carried already.
    pub(super) fn cie(&self, obj: Obj, cie: Record) -> Option<usize> {
        self.cies.get(&(obj, cie.start)).copied()
    }

    /// Notes that record `index` is the CIE at `cie` in `obj`'s `.eh_frame`.
    pub(super) fn cie_added(&mut self, obj: Obj, cie: Record, index: usize) {
        self.cies.insert((obj, cie.start), index);
    }

    pub(super) fn push(&mut self, record: EhRecord<'a>) -> usize {
        debug_assert!(record.cie.is_none_or(|c| c < self.records.len() && self.records[c].cie.is_none()));
        self.records.push(record);
        self.records.len() - 1
    }

    pub(super) fn no_unwind(&mut self, function: String) {
        self.no_unwind.push(function);
    }

    /// The records, and the functions without unwind info.
    pub(super) fn finish(self) -> (Vec<EhRecord<'a>>, Vec<String>) {
        (self.records, self.no_unwind)
    }
}
