//! Tests only: small relocatable x86-64 objects written in memory, for unit tests of the stages
//! that read objects (diff's semantic hash, the planner). [`ElfObject::bytes`] is a real ELF file
//! that [`super::load::parse`] reads like rustc's output; [`ElfObject::parse`] does that.
//!
//! Only what those tests need: sections of the kinds rustc emits, symbols (section symbols, local
//! and global definitions, undefined and weak references) and `.rela` sections.

use super::load::{parse, Unit};
use super::{Object, Origin};
use object::elf::*;
use object::endian::{LittleEndian, I64, U16, U32, U64};
use object::pod::{bytes_of, bytes_of_slice};

const LE: LittleEndian = LittleEndian;

/// What a section holds, as rustc would flag it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    ReadOnly,
    Data,
    Bss,
    Tdata,
    Tbss,
}

impl Kind {
    fn flags(self) -> u64 {
        match self {
            Kind::Text => SHF_ALLOC.0 | SHF_EXECINSTR.0,
            Kind::ReadOnly => SHF_ALLOC.0,
            Kind::Data | Kind::Bss => SHF_ALLOC.0 | SHF_WRITE.0,
            Kind::Tdata | Kind::Tbss => SHF_ALLOC.0 | SHF_WRITE.0 | SHF_TLS.0,
        }
    }

    fn nobits(self) -> bool {
        matches!(self, Kind::Bss | Kind::Tbss)
    }

    fn symbol_type(self) -> SymbolType {
        match self {
            Kind::Text => STT_FUNC,
            Kind::Tdata | Kind::Tbss => STT_TLS,
            _ => STT_OBJECT,
        }
    }
}

struct Sec {
    name: String,
    kind: Kind,
    data: Vec<u8>,
    size: u64,
    align: u64,
    /// Offset, type, symbol (builder handle), addend.
    relocs: Vec<(u64, RelocationType, usize, i64)>,
}

struct Sym {
    name: String,
    /// ELF section index (1-based), or `None` for an undefined symbol.
    section: Option<usize>,
    value: u64,
    size: u64,
    ty: SymbolType,
    bind: SymbolBind,
}

/// A relocatable object being written. Sections and symbols are referred to by the handles the
/// adding methods return.
#[derive(Default)]
pub struct ElfObject {
    sections: Vec<Sec>,
    symbols: Vec<Sym>,
}

impl ElfObject {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a section with these contents; returns its section index.
    pub fn section(&mut self, name: &str, kind: Kind, data: &[u8], align: u64) -> usize {
        let size = data.len() as u64;
        let data = if kind.nobits() { Vec::new() } else { data.to_vec() };
        self.sections.push(Sec { name: name.into(), kind, data, size, align, relocs: Vec::new() });
        self.sections.len()
    }

    /// A zero-filled section of `size` bytes (`.bss`, `.tbss`).
    pub fn zeroed(&mut self, name: &str, kind: Kind, size: u64, align: u64) -> usize {
        assert!(kind.nobits());
        self.sections.push(Sec {
            name: name.into(),
            kind,
            data: Vec::new(),
            size,
            align,
            relocs: Vec::new(),
        });
        self.sections.len()
    }

    fn symbol(&mut self, sym: Sym) -> usize {
        self.symbols.push(sym);
        self.symbols.len() - 1
    }

    /// The section symbol of `section` (what references to unnamed data go through).
    pub fn section_symbol(&mut self, section: usize) -> usize {
        let sym = Sym {
            name: String::new(),
            section: Some(section),
            value: 0,
            size: 0,
            ty: STT_SECTION,
            bind: STB_LOCAL,
        };
        self.symbol(sym)
    }

    /// A global definition at the start of `section` covering all of it, typed by the section's
    /// kind (function, object, thread-local).
    pub fn global(&mut self, name: &str, section: usize) -> usize {
        self.definition(name, section, STB_GLOBAL)
    }

    /// A local definition at the start of `section` covering all of it.
    pub fn local(&mut self, name: &str, section: usize) -> usize {
        self.definition(name, section, STB_LOCAL)
    }

    fn definition(&mut self, name: &str, section: usize, bind: SymbolBind) -> usize {
        let (size, ty) = (self.sections[section - 1].size, self.sections[section - 1].kind.symbol_type());
        self.symbol(Sym { name: name.into(), section: Some(section), value: 0, size, ty, bind })
    }

    /// A symbol this object refers to without defining it.
    pub fn undefined(&mut self, name: &str) -> usize {
        self.reference(name, STT_NOTYPE, STB_GLOBAL)
    }

    /// A thread-local this object refers to without defining it.
    pub fn undefined_tls(&mut self, name: &str) -> usize {
        self.reference(name, STT_TLS, STB_GLOBAL)
    }

    /// A weak reference: resolves to 0 when nothing defines it.
    pub fn weak_undefined(&mut self, name: &str) -> usize {
        self.reference(name, STT_NOTYPE, STB_WEAK)
    }

    fn reference(&mut self, name: &str, ty: SymbolType, bind: SymbolBind) -> usize {
        self.symbol(Sym { name: name.into(), section: None, value: 0, size: 0, ty, bind })
    }

    /// A relocation of `kind` at `offset` in `section` against `symbol`.
    pub fn reloc(&mut self, section: usize, offset: u64, kind: RelocationType, symbol: usize, addend: i64) {
        self.sections[section - 1].relocs.push((offset, kind, symbol, addend));
    }

    /// The object file: sections in the order added, then their `.rela` sections, `.symtab`,
    /// `.strtab`, `.shstrtab`; local symbols before global ones.
    pub fn bytes(&self) -> Vec<u8> {
        // Symbol table order: null, locals, globals; `order[handle]` is the ELF index.
        let mut handles: Vec<usize> = (0..self.symbols.len()).collect();
        handles.sort_by_key(|&h| self.symbols[h].bind != STB_LOCAL);
        let mut order = vec![0u32; self.symbols.len()];
        for (i, &h) in handles.iter().enumerate() {
            order[h] = i as u32 + 1;
        }
        let first_global = 1 + self.symbols.iter().filter(|s| s.bind == STB_LOCAL).count() as u32;

        let mut strtab = vec![0u8];
        let mut syms = vec![Sym64::<LittleEndian>::default()];
        for &h in &handles {
            let s = &self.symbols[h];
            let name = if s.name.is_empty() {
                0
            } else {
                strtab.extend_from_slice(s.name.as_bytes());
                strtab.push(0);
                (strtab.len() - s.name.len() - 1) as u32
            };
            syms.push(Sym64 {
                st_name: U32::new(LE, name),
                st_info: SymbolInfo::new(s.bind, s.ty),
                st_other: Default::default(),
                st_shndx: U16::new(LE, SymbolSection(s.section.map_or(0, |i| i as u16))),
                st_value: U64::new(LE, s.value),
                st_size: U64::new(LE, s.size),
            });
        }

        // Section headers: null, user sections, their `.rela`, `.symtab`, `.strtab`, `.shstrtab`.
        let mut shstrtab = vec![0u8];
        let mut name_of = |name: &str| {
            shstrtab.extend_from_slice(name.as_bytes());
            shstrtab.push(0);
            (shstrtab.len() - name.len() - 1) as u32
        };
        let with_relocs: Vec<usize> =
            (0..self.sections.len()).filter(|&i| !self.sections[i].relocs.is_empty()).collect();
        let symtab_index = 1 + self.sections.len() + with_relocs.len();
        let mut file = vec![0u8; size_of::<FileHeader64<LittleEndian>>()];
        let put = |file: &mut Vec<u8>, bytes: &[u8], align: u64| {
            file.resize((file.len() as u64).next_multiple_of(align.max(1)) as usize, 0);
            let at = file.len() as u64;
            file.extend_from_slice(bytes);
            at
        };
        let header = |name: u32,
                      ty: SectionType,
                      flags: u64,
                      offset: u64,
                      size: u64,
                      link: u32,
                      info: u32,
                      align: u64,
                      entsize: u64| {
            SectionHeader64::<LittleEndian> {
                sh_name: U32::new(LE, name),
                sh_type: U32::new(LE, ty),
                sh_flags: U64::new(LE, SectionFlags(flags)),
                sh_addr: U64::new(LE, 0),
                sh_offset: U64::new(LE, offset),
                sh_size: U64::new(LE, size),
                sh_link: U32::new(LE, link),
                sh_info: U32::new(LE, info),
                sh_addralign: U64::new(LE, align),
                sh_entsize: U64::new(LE, entsize),
            }
        };
        let mut headers = vec![header(0, SectionType(0), 0, 0, 0, 0, 0, 0, 0)];
        for s in &self.sections {
            let offset = put(&mut file, &s.data, s.align);
            let ty = if s.kind.nobits() { SHT_NOBITS } else { SHT_PROGBITS };
            headers.push(header(name_of(&s.name), ty, s.kind.flags(), offset, s.size, 0, 0, s.align, 0));
        }
        for &i in &with_relocs {
            let s = &self.sections[i];
            let relas: Vec<Rela64<LittleEndian>> = s
                .relocs
                .iter()
                .map(|&(offset, kind, sym, addend)| Rela64 {
                    r_offset: U64::new(LE, offset),
                    r_info: Rela64::r_info(LE, false, order[sym], kind),
                    r_addend: I64::new(LE, addend),
                })
                .collect();
            let offset = put(&mut file, bytes_of_slice(&relas), 8);
            let size = (relas.len() * size_of::<Rela64<LittleEndian>>()) as u64;
            let name = name_of(&format!(".rela{}", s.name));
            let (link, info) = (symtab_index as u32, i as u32 + 1);
            headers.push(header(name, SHT_RELA, SHF_INFO_LINK.0, offset, size, link, info, 8, 24));
        }
        let offset = put(&mut file, bytes_of_slice(&syms), 8);
        let size = (syms.len() * size_of::<Sym64<LittleEndian>>()) as u64;
        let name = name_of(".symtab");
        headers.push(header(name, SHT_SYMTAB, 0, offset, size, symtab_index as u32 + 1, first_global, 8, 24));
        let offset = put(&mut file, &strtab, 1);
        let name = name_of(".strtab");
        headers.push(header(name, SHT_STRTAB, 0, offset, strtab.len() as u64, 0, 0, 1, 0));
        let name = name_of(".shstrtab");
        let shstrtab_at = file.len() as u64;
        file.extend_from_slice(&shstrtab);
        headers.push(header(name, SHT_STRTAB, 0, shstrtab_at, shstrtab.len() as u64, 0, 0, 1, 0));
        let shoff = put(&mut file, bytes_of_slice(&headers), 8);

        let ehdr = FileHeader64::<LittleEndian> {
            e_ident: Ident {
                magic: ELFMAG,
                class: ELFCLASS64,
                data: ELFDATA2LSB,
                version: EV_CURRENT,
                os_abi: ELFOSABI_NONE,
                abi_version: 0,
                padding: [0; 7],
            },
            e_type: U16::new(LE, ET_REL),
            e_machine: U16::new(LE, EM_X86_64),
            e_version: U32::new(LE, u32::from(EV_CURRENT.0)),
            e_entry: U64::new(LE, 0),
            e_phoff: U64::new(LE, 0),
            e_shoff: U64::new(LE, shoff),
            e_flags: U32::new(LE, Default::default()),
            e_ehsize: U16::new(LE, size_of::<FileHeader64<LittleEndian>>() as u16),
            e_phentsize: U16::new(LE, 0),
            e_phnum: U16::new(LE, 0),
            e_shentsize: U16::new(LE, size_of::<SectionHeader64<LittleEndian>>() as u16),
            e_shnum: U16::new(LE, headers.len() as u16),
            e_shstrndx: U16::new(LE, SymbolSection(headers.len() as u16 - 1)),
        };
        file[..size_of::<FileHeader64<LittleEndian>>()].copy_from_slice(bytes_of(&ehdr));
        file
    }

    /// Parses `bytes` (from [`ElfObject::bytes`]) as the stages would.
    pub fn parse(bytes: &[u8]) -> Object<'_> {
        let origin = Origin { path: "test.o".into(), member: None };
        parse(&Unit { origin, data: bytes }).expect("a test object parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{Definition, SectionKind, SymbolKind};

    #[test]
    fn a_written_object_parses_back_with_its_sections_symbols_and_relocations() {
        let mut o = ElfObject::new();
        let text = o.section(".text.f", Kind::Text, &[0xe8, 0, 0, 0, 0, 0xc3], 16);
        let bss = o.zeroed(".bss.Z", Kind::Bss, 32, 8);
        let g = o.undefined("g");
        o.global("f", text);
        o.local("Z", bss);
        o.reloc(text, 1, R_X86_64_PLT32, g, -4);
        let bytes = o.bytes();
        let obj = ElfObject::parse(&bytes);

        let names: Vec<(&str, SectionKind, u64)> =
            obj.sections.iter().skip(1).take(2).map(|s| (s.name, s.kind, s.size)).collect();
        assert_eq!(names, [(".text.f", SectionKind::Text, 6), (".bss.Z", SectionKind::Bss, 32)]);
        let f = obj.symbols.iter().find(|s| s.name == "f").unwrap();
        assert_eq!(
            (f.kind, f.local, f.def, f.size),
            (SymbolKind::Function, false, Definition::Section(text), 6)
        );
        let z = obj.symbols.iter().position(|s| s.name == "Z").unwrap();
        let f_at = obj.symbols.iter().position(|s| s.name == "f").unwrap();
        assert!(z < f_at, "locals come before globals");
        let [r] = obj.sections[text].relocs() else { panic!("one relocation") };
        assert_eq!((r.offset, r.kind, obj.symbols[r.symbol].name, r.addend), (1, R_X86_64_PLT32, "g", -4));
        assert_eq!(obj.symbols[r.symbol].def, Definition::Undefined);
    }
}
