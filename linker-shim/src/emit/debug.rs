//! The patch's debug info: the DWARF of every workspace unit whose code the patch carries, so a
//! debugger that loads the patch (as a shared library, from the loader's list) finds the new
//! versions of functions by name, with their lines, locals and source.
//!
//! A unit's debug sections are copied whole and concatenated per section name, as a linker
//! does, with their relocations applied: a reference to another debug section of the unit
//! points into that unit's copy; a reference to code or data the patch carries gets its address
//! relative to the patch's base (the same convention as section headers and `.symtab`; the
//! runtime presents the patch with load bias = base); a reference to anything else — functions
//! of the unit the patch does not carry, whose running code is the image's — resolves as a
//! linker resolves references to discarded sections: 0, or 1 in the DWARF 4 range and location
//! lists, where a (0, 0) pair would end the list.

use crate::objects::units::Build;
use crate::objects::{SecIdx, SectionKind};
use crate::plan::Plan;
use object::elf;
use std::collections::HashMap;

/// The DWARF sections a patch carries, in the order they are written.
const CARRIED: [&str; 11] = [
    ".debug_abbrev",
    ".debug_info",
    ".debug_line",
    ".debug_str",
    ".debug_line_str",
    ".debug_ranges",
    ".debug_rnglists",
    ".debug_loc",
    ".debug_loclists",
    ".debug_str_offsets",
    ".debug_addr",
];

/// The debug sections for `plan`, whose chunks lie at `chunk_offset` from the patch's base: name
/// and contents of each non-empty one. Units that cannot be read are left out (the patch is
/// then less debuggable, never wrong).
pub fn sections(plan: &Plan, chunk_offset: &[u64], build: &Build) -> Vec<(&'static str, Vec<u8>)> {
    let mut carried: HashMap<(crate::objects::units::UnitId, SecIdx), u64> = HashMap::new();
    let mut units = Vec::new();
    for (i, source) in plan.sources.iter().enumerate() {
        let Some((unit, sec)) = *source else { continue };
        carried.insert((unit, sec), chunk_offset[i]);
        if plan.chunks[i].kind == SectionKind::Text && !units.contains(&unit) {
            units.push(unit);
        }
    }
    let mut out: Vec<(&'static str, Vec<u8>)> = CARRIED.iter().map(|&n| (n, Vec::new())).collect();
    for unit in units {
        let Ok(o) = build.units[unit].object() else { continue };
        // Where each of the unit's debug sections starts in its output section.
        let mut placed: HashMap<SecIdx, (usize, usize)> = HashMap::new();
        for (i, s) in o.sections.iter().enumerate() {
            if let Some(k) = CARRIED.iter().position(|&n| n == s.name) {
                placed.insert(i, (k, out[k].1.len()));
                out[k].1.extend_from_slice(s.data);
            }
        }
        for (&sec, &(k, at)) in &placed {
            let tombstone = if matches!(CARRIED[k], ".debug_ranges" | ".debug_loc") { 1 } else { 0 };
            for r in o.sections[sec].relocs() {
                let sym = &o.symbols[r.symbol];
                let value = sym.section().and_then(|target| match placed.get(&target) {
                    Some(&(_, base)) => Some(base as u64 + sym.value),
                    None => carried.get(&(unit, target)).map(|&offset| offset + sym.value),
                });
                let value = value.map_or(tombstone, |v| v.wrapping_add_signed(r.addend));
                let bytes = &mut out[k].1;
                let Some(place) = usize::try_from(r.offset).ok().and_then(|o| o.checked_add(at)) else {
                    continue;
                };
                match r.kind {
                    elf::R_X86_64_64 => put(bytes, place, &value.to_le_bytes()),
                    elf::R_X86_64_32 | elf::R_X86_64_32S => put(bytes, place, &(value as u32).to_le_bytes()),
                    // A thread-local's offset in its TLS block: not known per unit; 0.
                    elf::R_X86_64_DTPOFF64 => put(bytes, place, &0u64.to_le_bytes()),
                    elf::R_X86_64_DTPOFF32 => put(bytes, place, &0u32.to_le_bytes()),
                    _ => {}
                }
            }
        }
    }
    out.retain(|(_, data)| !data.is_empty());
    // Without the unit descriptions, the rest is no use.
    if !out.iter().any(|(n, _)| *n == ".debug_info") {
        out.clear();
    }
    out
}

fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
    if let Some(place) = bytes.get_mut(at..at.saturating_add(value.len())) {
        place.copy_from_slice(value);
    }
}
