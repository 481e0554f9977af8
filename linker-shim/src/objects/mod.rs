//! Relocatable objects as the patch stages see them: sections with their relocations, and
//! symbols, borrowed straight from memory-mapped files (an rlib's members are slices of it).
//!
//! Only what diff and plan need is modelled; the rest of ELF stays in the bytes.

pub mod load;
#[cfg(test)]
pub mod testing;
pub mod units;

use object::elf;
use std::fmt;

/// Declares an id that is a position in one list and crosses modules (a build's units, a plan's
/// chunks): a `u32` newtype that indexes slices and `Vec`s directly. `$why` says why a list never
/// holds 2^32 of them.
macro_rules! position_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $why:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);

        impl $name {
            #[doc = concat!("The id of the ", $what, " at `position` of its list.")]
            pub fn at(position: usize) -> $name {
                $name(u32::try_from(position).expect(concat!("fewer than 2^32 ", $what, "s: ", $why)))
            }

            pub fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl<T> std::ops::Index<$name> for [T] {
            type Output = T;
            fn index(&self, id: $name) -> &T {
                &self[id.index()]
            }
        }

        impl<T> std::ops::IndexMut<$name> for [T] {
            fn index_mut(&mut self, id: $name) -> &mut T {
                &mut self[id.index()]
            }
        }

        impl<T> std::ops::Index<$name> for Vec<T> {
            type Output = T;
            fn index(&self, id: $name) -> &T {
                &self[id.index()]
            }
        }

        impl<T> std::ops::IndexMut<$name> for Vec<T> {
            fn index_mut(&mut self, id: $name) -> &mut T {
                &mut self[id.index()]
            }
        }
    };
}
pub(crate) use position_id;

pub type SecIdx = usize;
pub type SymIdx = usize;

/// Where an object came from, for messages and for pairing a new build's objects with the old.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The file as linked (an object, or the archive holding it).
    pub path: std::path::PathBuf,
    /// The archive member, if any.
    pub member: Option<String>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.member {
            Some(m) => write!(f, "{}({m})", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

pub struct Object<'a> {
    pub sections: Vec<Section<'a>>,
    pub symbols: Vec<Symbol<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SectionKind {
    Text,
    /// `.rodata*`: constant data.
    ReadOnly,
    /// `.data.rel.ro*`: constant after relocation (vtables, `&'static` tables).
    ReadOnlyAfterReloc,
    Data,
    Bss,
    Tdata,
    Tbss,
    EhFrame,
    /// `.gcc_except_table*`: landing-pad tables referenced from `.eh_frame`.
    ExceptTable,
    /// Debug info, notes, comments, `.llvmbc`, group and other non-loaded sections.
    Other,
}

impl SectionKind {
    /// Holds state a running program may have changed (statics, thread-locals).
    pub fn is_writable_state(self) -> bool {
        matches!(self, SectionKind::Data | SectionKind::Bss | SectionKind::Tdata | SectionKind::Tbss)
    }

    pub fn is_tls(self) -> bool {
        matches!(self, SectionKind::Tdata | SectionKind::Tbss)
    }

    /// Loaded into memory at all.
    pub fn is_alloc(self) -> bool {
        !matches!(self, SectionKind::Other)
    }
}

pub struct Section<'a> {
    pub name: &'a str,
    pub kind: SectionKind,
    /// `SHF_MERGE`: a pool of constants or strings the linker may deduplicate; referenced piece by
    /// piece through `.L` symbols, never as a whole.
    pub merge: Option<Merge>,
    pub align: u64,
    pub size: u64,
    /// Contents; empty for `.bss`-like sections.
    pub data: &'a [u8],
    /// The raw `.rela` entries for this section, decoded by [`Section::relocs`] on first use:
    /// most sections of most objects are never looked at.
    pub rela: &'a [object::elf::Rela64<object::LittleEndian>],
    pub relocs_decoded: std::cell::OnceCell<Vec<Reloc>>,
    /// Symbol count of the object (to keep a corrupt relocation from indexing out of bounds).
    pub symbol_count: usize,
    /// Named symbols defined here, sorted by address.
    pub symbols: Vec<SymIdx>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merge {
    /// `SHF_STRINGS`: NUL-terminated strings of `entsize`-byte characters.
    pub strings: bool,
    pub entsize: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloc {
    pub offset: u64,
    pub kind: elf::RelocationType,
    pub symbol: SymIdx,
    pub addend: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolKind {
    Function,
    Object,
    Tls,
    Section,
    NoType,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Definition {
    Undefined,
    Absolute,
    Common,
    Section(SecIdx),
}

pub struct Symbol<'a> {
    pub name: &'a str,
    pub kind: SymbolKind,
    pub local: bool,
    pub weak: bool,
    pub def: Definition,
    pub value: u64,
    pub size: u64,
}

impl<'a> Symbol<'a> {
    pub fn section(&self) -> Option<SecIdx> {
        match self.def {
            Definition::Section(s) => Some(s),
            _ => None,
        }
    }

    /// A symbol with a name a linker would resolve by and that identifies what it names across
    /// builds: not a section or file symbol, not an assembler label numbered per object.
    pub fn is_named(&self) -> bool {
        !matches!(self.kind, SymbolKind::Section | SymbolKind::Other) && !self.is_anonymous()
    }

    /// Local labels the compiler numbers per object (`.Lanon.<hash>.<n>`, `GCC_except_table<n>`):
    /// their names change whenever an unrelated constant is added, so they are known by content.
    pub fn is_anonymous(&self) -> bool {
        self.local
            && (self.name.is_empty()
                || self.name.starts_with(".L")
                || self.name.starts_with("GCC_except_table"))
    }
}

impl Section<'_> {
    /// The relocations of this section, sorted by offset.
    pub fn relocs(&self) -> &[Reloc] {
        self.relocs_decoded.get_or_init(|| {
            use object::read::elf::Rela as _;
            let e = object::LittleEndian;
            let mut relocs: Vec<Reloc> = self
                .rela
                .iter()
                .map(|r| {
                    let symbol = r.r_sym(e, false) as usize;
                    Reloc {
                        offset: r.r_offset(e),
                        kind: r.r_type(e, false),
                        // A corrupt index becomes the null symbol, which resolves to nothing.
                        symbol: if symbol < self.symbol_count { symbol } else { 0 },
                        addend: r.r_addend(e),
                    }
                })
                .collect();
            if !relocs.is_sorted_by_key(|r| r.offset) {
                relocs.sort_by_key(|r| r.offset);
            }
            relocs
        })
    }
}

impl<'a> Object<'a> {
    /// The first named symbol of a section (by address): how a section is known across builds.
    pub fn primary_symbol(&self, sec: SecIdx) -> Option<&Symbol<'a>> {
        self.sections[sec].symbols.first().map(|&s| &self.symbols[s])
    }

    /// The piece of a merge section that relocation `r` refers to: `(section, start, end)`.
    ///
    /// Merge sections are referenced piece by piece, either through a `.L` label of the piece, or
    /// through the section symbol with the piece's offset as addend — which is exact only for
    /// absolute relocations (a PC-relative addend also holds the distance to the instruction's
    /// end). Other references (a PC-relative one through the section symbol) return `None`, and
    /// the caller treats the whole section as one thing.
    pub fn merge_piece(&self, r: &Reloc) -> Option<(SecIdx, u64, u64)> {
        let s = &self.symbols[r.symbol];
        let sec = s.section()?;
        let section = &self.sections[sec];
        section.merge?;
        let start = if s.kind == SymbolKind::Section {
            if !r.is_absolute() {
                return None;
            }
            u64::try_from(s.value as i64 + r.addend).ok()?
        } else if s.is_anonymous() {
            s.value
        } else {
            return None;
        };
        let start = start.min(section.size);
        let end = if s.kind != SymbolKind::Section && s.size > 0 {
            (start + s.size).min(section.size)
        } else {
            self.piece_end(sec, start)
        };
        Some((sec, start, end))
    }

    /// End of the merge piece starting at `start`: after its NUL for strings, one entry for
    /// constants.
    fn piece_end(&self, sec: SecIdx, start: u64) -> u64 {
        let section = &self.sections[sec];
        let merge = section.merge.expect("only merge_piece asks, for a merge section");
        let step = merge.entsize.max(1);
        if merge.strings {
            let data = &section.data[start as usize..];
            let len = data
                .chunks(step as usize)
                .position(|c| c.iter().all(|&b| b == 0))
                .map_or(data.len() as u64, |n| (n as u64 + 1) * step);
            start + len
        } else {
            (start + step).min(section.size)
        }
    }
}

impl Reloc {
    /// Writes the target's address itself (not relative to the place).
    pub fn is_absolute(&self) -> bool {
        matches!(self.kind, elf::R_X86_64_64 | elf::R_X86_64_32 | elf::R_X86_64_32S)
    }
}

pub fn section_kind(name: &str, sh_type: elf::SectionType, flags: u64) -> SectionKind {
    let alloc = flags & elf::SHF_ALLOC.0 != 0;
    if sh_type == elf::SHT_X86_64_UNWIND || name == ".eh_frame" {
        return SectionKind::EhFrame;
    }
    if !alloc {
        return SectionKind::Other;
    }
    let tls = flags & elf::SHF_TLS.0 != 0;
    let write = flags & elf::SHF_WRITE.0 != 0;
    let exec = flags & elf::SHF_EXECINSTR.0 != 0;
    let nobits = sh_type == elf::SHT_NOBITS;
    if tls {
        return if nobits { SectionKind::Tbss } else { SectionKind::Tdata };
    }
    if exec {
        return SectionKind::Text;
    }
    if name.starts_with(".gcc_except_table") {
        return SectionKind::ExceptTable;
    }
    if name.starts_with(".data.rel.ro") {
        return SectionKind::ReadOnlyAfterReloc;
    }
    if sh_type == elf::SHT_INIT_ARRAY || sh_type == elf::SHT_FINI_ARRAY || sh_type == elf::SHT_PREINIT_ARRAY {
        return SectionKind::Other;
    }
    match (write, nobits) {
        (true, true) => SectionKind::Bss,
        (true, false) => SectionKind::Data,
        _ => SectionKind::ReadOnly,
    }
}
