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
    /// By object, section and depth ([`Numbered::depth`]; 0 outside [`Semantics::closures_of`]).
    memo: HashMap<(usize, SecIdx, u8), u128>,
    /// Canonical names of this build → the name the other build knows the same definition by.
    renames: HashMap<&'a str, &'a str>,
    /// Set by [`Semantics::closures_of`]: references to what rustc names after these closures are
    /// compared by content, and where to find the ones defined in other units.
    numbered: Option<Numbered<'o, 'a>>,
}

/// The closures of one function, whose names follow their numbers ([`Semantics::closures_of`]).
struct Numbered<'o, 'a> {
    /// `app::main::{{closure}}` (legacy) and `app::main::{closure#` (v0): every name whose
    /// demangled path contains either.
    paths: [String; 2],
    /// `main`: the function's own name, which every such symbol spells (a quick no for the others).
    last: String,
    defs: &'o HashMap<&'a str, Vec<super::DefAt>>,
    /// The names asked about so far, and the answers.
    seen: HashMap<&'a str, bool>,
    /// How many references to code compiled here the section being hashed is reached through
    /// (at most [`INSTANCE_DEPTH`]): a generic instance over one of the closures holds, in an
    /// optimised build, the closure's code inlined.
    depth: u8,
}

/// How deep references to code compiled in the compared units count by content among a
/// function's closures (beyond: by path): `apply::<f::{closure#0}::{closure#0}>`, and the
/// `Iterator::sum` → `fold` → `Map::fold` chains over a closure.
const INSTANCE_DEPTH: u8 = 4;

impl<'o, 'a> Semantics<'o, 'a> {
    pub fn new(objects: Vec<Option<&'o Object<'a>>>) -> Self {
        Semantics { objects, memo: HashMap::new(), renames: HashMap::new(), numbered: None }
    }

    /// Compares the code of the closures of the function at `owner` (`app::main`) by what it
    /// does rather than by the numbers rustc gave them: a reference to anything named after a
    /// closure of that function — another of its closures, or the drop glue of a closure's own
    /// type, which an async block's code calls — counts by the referenced code's meaning, not by
    /// its name. Such names follow the closures' numbers (and the legacy symbol hash follows the
    /// type's number even where the demangled name does not show it), so adding a closure before
    /// others would otherwise change the meaning of every closure after it. `defs` finds those
    /// defined in other units.
    pub fn closures_of(mut self, owner: &str, defs: &'o HashMap<&'a str, Vec<super::DefAt>>) -> Self {
        let plain = owner.split('<').next().unwrap_or(owner).trim_end_matches("::");
        let last = plain.rsplit("::").next().unwrap_or(plain).to_string();
        let paths = [format!("{owner}::{{{{closure}}}}"), format!("{owner}::{{closure#")];
        self.numbered = Some(Numbered { paths, last, defs, seen: HashMap::new(), depth: 0 });
        self
    }

    /// Under [`Semantics::closures_of`], whether `name` is named after one of those closures.
    fn follows_numbers(&mut self, name: &'a str) -> bool {
        let Some(n) = self.numbered.as_mut() else { return false };
        // v0 names spell no `closure`, but their numbers in the demangled path.
        if !(name.contains("closure") || name.starts_with("_R")) || !name.contains(n.last.as_str()) {
            return false;
        }
        *n.seen.entry(name).or_insert_with(|| {
            let path = names::path(name);
            n.paths.iter().any(|p| path.contains(p.as_str()))
        })
    }

    /// A reference to `name` (`offset` from its start), by the meaning of its definition when it
    /// follows closure numbers and is defined in one of the units compared.
    fn by_content(
        &mut self,
        obj: usize,
        name: &'a str,
        defined: Option<(SecIdx, u64)>,
        offset: i64,
    ) -> Target<'a> {
        if self.follows_numbers(name) {
            if let Some((sec, value)) = defined {
                return Target::Anon(self.section_hash(obj, sec), offset + value as i64);
            }
            let elsewhere = self.numbered.as_ref().and_then(|n| n.defs.get(name)).map(|places| places[0]);
            if let Some((unit, sec)) = elsewhere.filter(|&(u, _)| self.objects[u.index()].is_some()) {
                return Target::Anon(self.section_hash(unit.index(), sec), offset);
            }
        }
        let named = self.named(name);
        // Among the closures, a generic instance compiled here (`apply::<f::{closure#0}::
        // {closure#0}>`, `Iterator::map::<_, …>` over a closure's own closure) has a symbol hash
        // that follows the numbers of the closures in its arguments although its path does not
        // show them: known by its content (which holds the closure's code where the optimiser
        // inlined it) a few references deep, then by its path alone, so that a closure handing
        // its own closures to generic code is still the same closure under another number. Two
        // closures that differ only in which instance of one generic function they call, deeper
        // than that, look the same here; this only pairs closures (`layout::closures`), and a
        // closure paired under another number keeps its code.
        let Some(n) = self.numbered.as_ref() else { return Target::Named(named, offset) };
        let at = match defined {
            Some((sec, value)) => Some((obj, sec, offset + value as i64)),
            None => n
                .defs
                .get(name)
                .map(|places| places[0])
                .filter(|&(u, _)| self.objects[u.index()].is_some())
                .map(|(u, sec)| (u.index(), sec, offset)),
        };
        let Some((o, sec, into)) = at else { return Target::Named(named, offset) };
        if n.depth >= INSTANCE_DEPTH {
            return Target::Named(names::without_hash(named), offset);
        }
        if let Some(n) = self.numbered.as_mut() {
            n.depth += 1;
        }
        let hash = self.section_hash(o, sec);
        if let Some(n) = self.numbered.as_mut() {
            n.depth -= 1;
        }
        Target::Anon(hash, into)
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

    /// Object `obj`, which the caller read (with its error handled) before asking: the diff reads
    /// every unit it compares, and a section's anonymous targets are in its own unit.
    pub fn object(&self, obj: usize) -> &'o Object<'a> {
        self.objects[obj].expect("semantics asked about a unit the diff did not read first")
    }

    /// What relocation `r` of object `obj` refers to.
    pub fn target(&mut self, obj: usize, r: &Reloc) -> Target<'a> {
        let o = self.object(obj);
        let sym = &o.symbols[r.symbol];
        if sym.is_named() && !names::is_promoted_anon(sym.name) {
            return self.by_content(obj, sym.name, sym.section().map(|s| (s, sym.value)), r.addend);
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
            Some(p) => self.by_content(obj, p.name, Some((sec, p.value)), offset - p.value as i64),
            None => Target::Anon(self.section_hash(obj, sec), offset),
        }
    }

    /// The meaning of a section: kind, size, masked bytes and relocation targets.
    pub fn section_hash(&mut self, obj: usize, sec: SecIdx) -> u128 {
        let key = (obj, sec, self.numbered.as_ref().map_or(0, |n| n.depth));
        if let Some(&h) = self.memo.get(&key) {
            return h;
        }
        // A cycle of anonymous sections (rare) hashes the inner occurrence as 0.
        self.memo.insert(key, 0);
        let s = &self.object(obj).sections[sec];
        if let Some(file) = panic_location_file(self.object(obj), sec) {
            let digest = xxhash_rust::xxh3::xxh3_128(&[b"panic location\0".as_slice(), file].concat());
            self.memo.insert(key, digest);
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
        self.memo.insert(key, digest);
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

#[cfg(test)]
mod tests {
    //! Each test writes two versions of a small object, as rustc would emit them, and compares
    //! the semantic hash of the function `f` in both — the decisions of ARCHITECTURE.md's diff
    //! section, one test each.

    use super::*;
    use crate::objects::testing::{ElfObject, Kind};
    use object::elf::{R_X86_64_64, R_X86_64_PC32, R_X86_64_PLT32};

    /// `call <rel32>; lea <rel32>(%rip), %rax; ret`: relocations at 1 and 8.
    const CODE: [u8; 13] = [0xe8, 0, 0, 0, 0, 0x48, 0x8d, 0x05, 0, 0, 0, 0, 0xc3];

    /// An object whose function `f` runs `code`; `refs` adds what it refers to.
    fn unit(code: &[u8], refs: impl FnOnce(&mut ElfObject, usize)) -> Vec<u8> {
        let mut o = ElfObject::new();
        let text = o.section(".text.f", Kind::Text, code, 16);
        o.global("f", text);
        refs(&mut o, text);
        o.bytes()
    }

    /// `f` calls `callee`.
    fn calls(callee: &str) -> Vec<u8> {
        unit(&CODE, |o, text| {
            let s = o.undefined(callee);
            o.reloc(text, 1, R_X86_64_PLT32, s, -4);
        })
    }

    /// The semantic hash of `f`, with `renames` as the diff's pairing would set them.
    fn hash_renamed(bytes: &[u8], renames: &[(&'static str, &'static str)]) -> u128 {
        let obj = ElfObject::parse(bytes);
        let f = obj.sections.iter().position(|s| s.name == ".text.f").unwrap();
        let mut sem = Semantics::new(vec![Some(&obj)]).renamed(renames.iter().copied().collect());
        sem.section_hash(0, f)
    }

    fn hash(bytes: &[u8]) -> u128 {
        hash_renamed(bytes, &[])
    }

    #[test]
    fn the_same_code_and_targets_hash_equal_and_another_instruction_byte_does_not() {
        assert_eq!(hash(&calls("g")), hash(&calls("g")));
        let mut edited = CODE;
        edited[12] = 0x90; // `ret` -> `nop`
        let edited = unit(&edited, |o, text| {
            let s = o.undefined("g");
            o.reloc(text, 1, R_X86_64_PLT32, s, -4);
        });
        assert_ne!(hash(&calls("g")), hash(&edited));
    }

    #[test]
    fn bytes_under_a_relocation_are_not_compared() {
        // The assembler leaves the displacement of a relocated field as it likes; the linker
        // overwrites it.
        let mut garbage = CODE;
        garbage[1..5].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let other = unit(&garbage, |o, text| {
            let s = o.undefined("g");
            o.reloc(text, 1, R_X86_64_PLT32, s, -4);
        });
        assert_eq!(hash(&calls("g")), hash(&other));
    }

    #[test]
    fn another_relocation_target_or_addend_is_a_change() {
        assert_ne!(hash(&calls("g")), hash(&calls("h")));
        let other_addend = unit(&CODE, |o, text| {
            let s = o.undefined("g");
            o.reloc(text, 1, R_X86_64_PLT32, s, 4);
        });
        assert_ne!(hash(&calls("g")), hash(&other_addend));
    }

    /// An async block's code calling its own type's drop glue, whose legacy symbol hash follows
    /// the block's number (`drop_in_place<app::run::{{closure}}>`), and the glue defined beside it.
    fn block_dropping_itself(glue: &'static str, glue_code: &[u8]) -> Vec<u8> {
        unit(&CODE, |o, text| {
            let g = o.section(".text.glue", Kind::Text, glue_code, 16);
            let s = o.global(glue, g);
            o.reloc(text, 1, R_X86_64_PLT32, s, -4);
        })
    }

    fn hash_of_closures_of(bytes: &[u8], owner: &str) -> u128 {
        let obj = ElfObject::parse(bytes);
        let f = obj.sections.iter().position(|s| s.name == ".text.f").unwrap();
        let defs = HashMap::new();
        let mut sem = Semantics::new(vec![Some(&obj)]).closures_of(owner, &defs);
        sem.section_hash(0, f)
    }

    #[test]
    fn among_a_functions_closures_references_count_by_content_not_by_number() {
        const GLUE_0: &str =
            "_ZN4core3ptr58drop_in_place$LT$app..run..$u7b$$u7b$closure$u7d$$u7d$$GT$17h1111111111111111E";
        const GLUE_1: &str =
            "_ZN4core3ptr58drop_in_place$LT$app..run..$u7b$$u7b$closure$u7d$$u7d$$GT$17h2222222222222222E";
        let (a, b) = (block_dropping_itself(GLUE_0, &[0xc3]), block_dropping_itself(GLUE_1, &[0xc3]));
        // By name (every other comparison), renumbered glue is another function.
        assert_ne!(hash(&a), hash(&b));
        // Among `app::run`'s closures, the same glue under another number is the same.
        assert_eq!(hash_of_closures_of(&a, "app::run"), hash_of_closures_of(&b, "app::run"));
        // Glue that does something else is not.
        let other = block_dropping_itself(GLUE_1, &[0x90, 0xc3]);
        assert_ne!(hash_of_closures_of(&a, "app::run"), hash_of_closures_of(&other, "app::run"));
        // Another function's closures' names are compared by name (defined elsewhere), or by
        // path (defined here, as generic instances are: the next test).
        let (x, y) = (calls(GLUE_0), calls(GLUE_1));
        assert_ne!(hash_of_closures_of(&x, "app::other"), hash_of_closures_of(&y, "app::other"));
    }

    /// `apply::<run::{closure#0}::{closure#0}>` compiled in the unit: its symbol hash follows the
    /// inner closure's number, its path does not. Among `app::run`'s closures it is known by its
    /// code (which, optimised, holds the inner closure's inlined).
    #[test]
    fn among_a_functions_closures_generic_instances_compiled_here_count_by_content() {
        const APPLY_0: &str = "_ZN3app5apply17h1111111111111111E";
        const APPLY_1: &str = "_ZN3app5apply17h2222222222222222E";
        let (a, b) = (block_dropping_itself(APPLY_0, &[0xc3]), block_dropping_itself(APPLY_1, &[0xc3]));
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash_of_closures_of(&a, "app::run"), hash_of_closures_of(&b, "app::run"));
        // The instance over another closure, whose code is another's, is not.
        let other = block_dropping_itself(APPLY_1, &[0x90, 0xc3]);
        assert_ne!(hash_of_closures_of(&a, "app::run"), hash_of_closures_of(&other, "app::run"));
        // Defined elsewhere (not compiled for this crate): by name.
        assert_ne!(
            hash_of_closures_of(&calls(APPLY_0), "app::run"),
            hash_of_closures_of(&calls(APPLY_1), "app::run")
        );
    }

    #[test]
    fn thinlto_suffixes_are_not_a_change() {
        let a = calls("_ZN3app6helper17h0123456789abcdefE.llvm.4687289052701356509");
        let b = calls("_ZN3app6helper17h0123456789abcdefE.llvm.1111111111111111111");
        assert_eq!(hash(&a), hash(&b));
        assert_eq!(hash(&a), hash(&calls("_ZN3app6helper17h0123456789abcdefE")));
        assert_ne!(hash(&a), hash(&calls("_ZN3app6other17h0123456789abcdefE.llvm.4687289052701356509")));
    }

    #[test]
    fn a_callee_renamed_by_its_symbol_hash_counts_as_its_counterpart_once_the_diff_paired_them() {
        const OLD: &str = "_ZN3app6helper17h1111111111111111E";
        const NEW: &str = "_ZN3app6helper17h2222222222222222E";
        let (base, current) = (calls(OLD), calls(NEW));
        assert_ne!(hash(&base), hash(&current), "by name alone the references differ");
        assert_eq!(names::path(OLD), names::path(NEW), "the diff pairs them by path");
        // The base side compares references to the old name as references to the new one.
        assert_eq!(hash_renamed(&base, &[(OLD, NEW)]), hash(&current));
        // Only the paired name is renamed.
        assert_ne!(hash_renamed(&calls("_ZN3app5other17h1111111111111111E"), &[(OLD, NEW)]), hash(&current));
    }

    /// `f` loads the address of `.Lanon.<hash>.<n>` — anonymous constant data `bytes`, in a
    /// section of that name, referred to through the section symbol.
    fn refers_to_local_anon(n: u32, bytes: &[u8]) -> Vec<u8> {
        unit(&CODE, |o, text| {
            let g = o.undefined("g");
            o.reloc(text, 1, R_X86_64_PLT32, g, -4);
            let data = o.section(&format!(".rodata..Lanon.fad58de7366495db.{n}"), Kind::ReadOnly, bytes, 1);
            let s = o.section_symbol(data);
            o.reloc(text, 8, R_X86_64_PC32, s, -4);
        })
    }

    /// `f` loads the address of ThinLTO's promoted constant `anon.<hash>.<n>.llvm.<hash>`.
    fn refers_to_promoted_anon(name: &str, bytes: &[u8]) -> Vec<u8> {
        unit(&CODE, |o, text| {
            let g = o.undefined("g");
            o.reloc(text, 1, R_X86_64_PLT32, g, -4);
            let data = o.section(&format!(".rodata.{name}"), Kind::ReadOnly, bytes, 1);
            let s = o.global(name, data);
            o.reloc(text, 8, R_X86_64_PC32, s, -4);
        })
    }

    #[test]
    fn anonymous_constants_are_compared_by_content_not_by_their_numbered_names() {
        assert_eq!(hash(&refers_to_local_anon(1, b"hello")), hash(&refers_to_local_anon(7, b"hello")));
        assert_ne!(hash(&refers_to_local_anon(1, b"hello")), hash(&refers_to_local_anon(1, b"hellp")));

        let a = refers_to_promoted_anon(
            "anon.ebafb60624fd0317f0e5ca3f8fe5763b.3.llvm.4687289052701356509",
            b"table",
        );
        let b = refers_to_promoted_anon("anon.0d7a3b2f9c6e41aa8b5d3c2e1f0a9b8c.29.llvm.1234", b"table");
        let c = refers_to_promoted_anon(
            "anon.ebafb60624fd0317f0e5ca3f8fe5763b.3.llvm.4687289052701356509",
            b"tablE",
        );
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(hash(&a), hash(&c));
    }

    /// `f` loads the address of a `core::panic::Location` for `file`, `line`, `col`: an unnamed
    /// 24-byte section holding a pointer to the file name (its only relocation), the name's length,
    /// line and column; the name is anonymous data too.
    fn panics_at(file: &str, line: u32, col: u32) -> Vec<u8> {
        unit(&CODE, |o, text| {
            let g = o.undefined("_ZN4core9panicking5panic17h0000000000000000E");
            o.reloc(text, 1, R_X86_64_PLT32, g, -4);
            let name = o.section(".rodata..Lanon.fad58de7366495db.0", Kind::ReadOnly, file.as_bytes(), 1);
            let mut loc = vec![0u8; 8];
            loc.extend_from_slice(&(file.len() as u64).to_le_bytes());
            loc.extend_from_slice(&line.to_le_bytes());
            loc.extend_from_slice(&col.to_le_bytes());
            let location = o.section(".data.rel.ro..Lanon.fad58de7366495db.1", Kind::Data, &loc, 8);
            let name_sym = o.section_symbol(name);
            o.reloc(location, 0, R_X86_64_64, name_sym, 0);
            let loc_sym = o.section_symbol(location);
            o.reloc(text, 8, R_X86_64_PC32, loc_sym, -4);
        })
    }

    #[test]
    fn a_panic_location_is_compared_by_its_file_alone() {
        let base = hash(&panics_at("src/main.rs", 10, 5));
        assert_eq!(base, hash(&panics_at("src/main.rs", 12, 9)), "lines moved by an edit above");
        assert_ne!(base, hash(&panics_at("src/lib.rs", 10, 5)), "another file");
        // Data of the same shape that is not a location (the string names no `.rs` file) is
        // compared by content, line and column included.
        assert_ne!(hash(&panics_at("src/main.txt", 10, 5)), hash(&panics_at("src/main.txt", 12, 5)));
    }
}
