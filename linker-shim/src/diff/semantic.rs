//! What a section *means*, independent of where the linker will put things: its bytes with every
//! relocation field masked, plus, for each relocation, what it refers to.
//!
//! A reference to a named symbol is compared by name (a function's own changes are judged on its
//! own). A reference to anonymous data (`.Lanon.*` strings, vtables, panic locations, reached
//! through section symbols) is compared by that data's own meaning, recursively: its name
//! (`.rodata..Lanon.<hash>.<n>`) is a counter that shifts whenever the codegen unit gains a
//! constant. Two sections with equal [`Semantics::section_hash`] behave the same once linked.
//!
//! Names are compared as [`names::canonical`] makes them (ThinLTO's `.llvm.<hash>` suffixes
//! dropped), through the diff's pairing of renamed definitions ([`Semantics::renamed`]); ThinLTO's
//! promoted constants (`anon.<hash>.<n>`) are anonymous data. A panic location
//! (`core::panic::Location`: file, line, column) is compared by its file alone: an edit that moves
//! the lines below it changes the line numbers of every panic site there, which is not a change of
//! the code — the running program keeps reporting the old line numbers for code the patch does not
//! carry.

use super::names;
use crate::objects::{Object, Reloc, SecIdx};
use std::collections::HashMap;
use xxhash_rust::xxh3::Xxh3;

/// What a relocation points at, independent of layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target<'a> {
    /// A symbol by name, plus the offset from it.
    Named(&'a str, i64),
    /// Data without a name, by content hash, plus the offset into it.
    Anon(u128, i64),
}

/// Memoised section hashes over the objects of one build.
pub struct Semantics<'o, 'a> {
    /// By unit index; `None` for units not parsed (never asked about: a section's anonymous
    /// targets live in its own object).
    objects: Vec<Option<&'o Object<'a>>>,
    memo: HashMap<(usize, SecIdx), u128>,
    /// Canonical names of this build → the name the other build knows the same definition by.
    renames: HashMap<&'a str, &'a str>,
}

impl<'o, 'a> Semantics<'o, 'a> {
    pub fn new(objects: Vec<Option<&'o Object<'a>>>) -> Self {
        Semantics { objects, memo: HashMap::new(), renames: HashMap::new() }
    }

    /// References to these (canonical) names count as references to their counterparts: the
    /// definitions the diff paired by path although their symbol hashes differ.
    pub fn renamed(mut self, renames: HashMap<&'a str, &'a str>) -> Self {
        self.renames = renames;
        self
    }

    /// How a reference to symbol `name` is compared.
    fn named(&self, name: &'a str) -> &'a str {
        let name = names::canonical(name);
        self.renames.get(name).copied().unwrap_or(name)
    }

    pub fn object(&self, obj: usize) -> &'o Object<'a> {
        self.objects[obj].expect("semantics asked about a unit that was not parsed")
    }

    /// What relocation `r` of object `obj` refers to.
    pub fn target(&mut self, obj: usize, r: &Reloc) -> Target<'a> {
        let o = self.object(obj);
        let sym = &o.symbols[r.symbol];
        if sym.is_named() && !names::is_promoted_anon(sym.name) {
            return Target::Named(self.named(sym.name), r.addend);
        }
        if let (true, Some(sec)) = (names::is_promoted_anon(sym.name), sym.section()) {
            let section = &o.sections[sec];
            let (start, end) = (sym.value as usize, (sym.value + sym.size) as usize);
            if section.merge.is_some() && sym.size > 0 && end <= section.data.len() {
                let piece = &section.data[start..end];
                return Target::Anon(xxhash_rust::xxh3::xxh3_128(piece), r.addend);
            }
        }
        if let Some((sec, start, end)) = o.merge_piece(r) {
            let piece = &o.sections[sec].data[start as usize..end as usize];
            // Offset into the piece, whichever way the piece was named.
            let into = sym.value as i64 + r.addend - start as i64;
            return Target::Anon(xxhash_rust::xxh3::xxh3_128(piece), into);
        }
        let Some(sec) = sym.section() else { return Target::Named(self.named(sym.name), r.addend) };
        let offset = r.addend + sym.value as i64;
        match o.primary_symbol(sec).filter(|p| !names::is_promoted_anon(p.name)) {
            Some(p) => Target::Named(self.named(p.name), offset - p.value as i64),
            None => Target::Anon(self.section_hash(obj, sec), offset),
        }
    }

    /// The meaning of a section: kind, size, masked bytes and relocation targets.
    pub fn section_hash(&mut self, obj: usize, sec: SecIdx) -> u128 {
        if let Some(&h) = self.memo.get(&(obj, sec)) {
            return h;
        }
        // A cycle of anonymous sections (rare) hashes the inner occurrence as 0.
        self.memo.insert((obj, sec), 0);
        let s = &self.object(obj).sections[sec];
        if let Some(file) = panic_location_file(self.object(obj), sec) {
            let digest = xxhash_rust::xxh3::xxh3_128(&[b"panic location\0".as_slice(), file].concat());
            self.memo.insert((obj, sec), digest);
            return digest;
        }
        let mut h = Xxh3::new();
        h.update(&[s.kind as u8]);
        h.update(&s.size.to_le_bytes());
        h.update(&masked(s.data, s.relocs()));
        for r in s.relocs() {
            h.update(&r.offset.to_le_bytes());
            h.update(&r.kind.0.to_le_bytes());
            match self.target(obj, r) {
                Target::Named(name, off) => {
                    h.update(b"N");
                    h.update(name.as_bytes());
                    h.update(&[0]);
                    h.update(&off.to_le_bytes());
                }
                Target::Anon(hash, off) => {
                    h.update(b"A");
                    h.update(&hash.to_le_bytes());
                    h.update(&off.to_le_bytes());
                }
            }
        }
        let digest = h.digest128();
        self.memo.insert((obj, sec), digest);
        digest
    }
}

/// The file name of a panic location: a section without a name of its own holding exactly a
/// `core::panic::Location { file: &str, line: u32, col: u32 }` (24 bytes; one absolute relocation
/// at 0 to a string whose length is at 8 and which names a `.rs` file).
fn panic_location_file<'a>(o: &Object<'a>, sec: SecIdx) -> Option<&'a [u8]> {
    let s = &o.sections[sec];
    if s.size != 24 || s.data.len() != 24 || s.merge.is_some() {
        return None;
    }
    if o.primary_symbol(sec).is_some_and(|p| !names::is_promoted_anon(p.name)) {
        return None;
    }
    let [r] = s.relocs() else { return None };
    if r.offset != 0 || r.kind != object::elf::R_X86_64_64 {
        return None;
    }
    let len = u64::from_le_bytes(s.data[8..16].try_into().ok()?) as usize;
    let sym = &o.symbols[r.symbol];
    let target = &o.sections[sym.section()?];
    let start = usize::try_from(sym.value as i64 + r.addend).ok()?;
    let file = target.data.get(start..start.checked_add(len)?)?;
    file.ends_with(b".rs").then_some(file)
}

/// The section's bytes with each relocated field zeroed.
pub fn masked(data: &[u8], relocs: &[Reloc]) -> Vec<u8> {
    let mut out = data.to_vec();
    for r in relocs {
        let start = r.offset as usize;
        let end = (start + field_size(r.kind)).min(out.len());
        if start < end {
            out[start..end].fill(0);
        }
    }
    out
}

/// Width of the field an x86-64 relocation writes.
pub fn field_size(kind: object::elf::RelocationType) -> usize {
    use object::elf::*;
    match kind {
        R_X86_64_64 | R_X86_64_PC64 | R_X86_64_DTPOFF64 | R_X86_64_TPOFF64 | R_X86_64_DTPMOD64
        | R_X86_64_GOTOFF64 | R_X86_64_GOTPC64 | R_X86_64_GOT64 | R_X86_64_GOTPCREL64 | R_X86_64_GOTPLT64
        | R_X86_64_PLTOFF64 | R_X86_64_SIZE64 => 8,
        R_X86_64_16 | R_X86_64_PC16 => 2,
        R_X86_64_8 | R_X86_64_PC8 => 1,
        R_X86_64_NONE => 0,
        _ => 4,
    }
}
