//! The ELF records of a patch, as `object`'s `#[repr(C)]` little-endian structs: the file header,
//! program and section headers, symbols, `Rela` entries and `.dynamic` entries. Writing them as
//! named fields (instead of byte offsets) keeps each value next to the field it fills.

use object::elf::{
    Dyn64, DynamicTag, FileHeader64, Ident, ProgramFlags, ProgramHeader64, ProgramType, Rela64,
    RelocationType, SectionFlags, SectionHeader64, SectionType, Sym64, SymbolBind, SymbolInfo, SymbolSection,
    SymbolType, ELFCLASS64, ELFDATA2LSB, ELFMAG, ELFOSABI_NONE, EM_X86_64, ET_DYN, EV_CURRENT,
};
use object::endian::{LittleEndian, I64, U16, U32, U64};
use object::pod::{bytes_of, bytes_of_slice, Pod};

/// x86-64 ELF is little-endian.
pub type Le = LittleEndian;
const LE: Le = LittleEndian;

pub const EHDR_SIZE: u64 = size_of::<FileHeader64<Le>>() as u64;
pub const PHDR_SIZE: u64 = size_of::<ProgramHeader64<Le>>() as u64;
pub const SHDR_SIZE: u64 = size_of::<SectionHeader64<Le>>() as u64;
pub const SYM_SIZE: u64 = size_of::<Sym64<Le>>() as u64;
pub const RELA_SIZE: u64 = size_of::<Rela64<Le>>() as u64;
pub const DYN_SIZE: u64 = size_of::<Dyn64<Le>>() as u64;

/// The ELF header of an x86-64 shared library with its program headers right after it.
pub fn file_header(phnum: u16, shoff: u64, shnum: u16, shstrndx: u16) -> FileHeader64<Le> {
    FileHeader64 {
        e_ident: Ident {
            magic: ELFMAG,
            class: ELFCLASS64,
            data: ELFDATA2LSB,
            version: EV_CURRENT,
            os_abi: ELFOSABI_NONE,
            abi_version: 0,
            padding: [0; 7],
        },
        e_type: U16::new(LE, ET_DYN),
        e_machine: U16::new(LE, EM_X86_64),
        e_version: U32::new(LE, u32::from(EV_CURRENT.0)),
        e_entry: U64::new(LE, 0),
        e_phoff: U64::new(LE, EHDR_SIZE),
        e_shoff: U64::new(LE, shoff),
        e_flags: U32::new(LE, Default::default()),
        e_ehsize: U16::new(LE, EHDR_SIZE as u16),
        e_phentsize: U16::new(LE, PHDR_SIZE as u16),
        e_phnum: U16::new(LE, phnum),
        e_shentsize: U16::new(LE, SHDR_SIZE as u16),
        e_shnum: U16::new(LE, shnum),
        e_shstrndx: U16::new(LE, SymbolSection(shstrndx)),
    }
}

/// A program header whose physical address is its virtual one.
pub fn program_header(
    p_type: ProgramType,
    flags: ProgramFlags,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
) -> ProgramHeader64<Le> {
    ProgramHeader64 {
        p_type: U32::new(LE, p_type),
        p_flags: U32::new(LE, flags),
        p_offset: U64::new(LE, offset),
        p_vaddr: U64::new(LE, vaddr),
        p_paddr: U64::new(LE, vaddr),
        p_filesz: U64::new(LE, filesz),
        p_memsz: U64::new(LE, memsz),
        p_align: U64::new(LE, align),
    }
}

/// A section header's fields, named as in the ELF specification (without `sh_`).
pub struct Section {
    pub name: u32,
    pub ty: SectionType,
    pub flags: SectionFlags,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
    pub link: u32,
    pub info: u32,
    pub addralign: u64,
    pub entsize: u64,
}

impl Section {
    /// Section 0: all zero.
    pub fn null() -> Section {
        let flags = SectionFlags(0);
        Section {
            name: 0,
            ty: SectionType(0),
            flags,
            addr: 0,
            offset: 0,
            size: 0,
            link: 0,
            info: 0,
            addralign: 0,
            entsize: 0,
        }
    }

    pub fn header(&self) -> SectionHeader64<Le> {
        SectionHeader64 {
            sh_name: U32::new(LE, self.name),
            sh_type: U32::new(LE, self.ty),
            sh_flags: U64::new(LE, self.flags),
            sh_addr: U64::new(LE, self.addr),
            sh_offset: U64::new(LE, self.offset),
            sh_size: U64::new(LE, self.size),
            sh_link: U32::new(LE, self.link),
            sh_info: U32::new(LE, self.info),
            sh_addralign: U64::new(LE, self.addralign),
            sh_entsize: U64::new(LE, self.entsize),
        }
    }
}

/// A symbol of default visibility.
pub fn symbol(name: u32, bind: SymbolBind, ty: SymbolType, shndx: u16, value: u64, size: u64) -> Sym64<Le> {
    Sym64 {
        st_name: U32::new(LE, name),
        st_info: SymbolInfo::new(bind, ty),
        st_other: Default::default(),
        st_shndx: U16::new(LE, SymbolSection(shndx)),
        st_value: U64::new(LE, value),
        st_size: U64::new(LE, size),
    }
}

/// A `Rela` entry: at `place`, relocation `kind` against dynamic symbol `symbol`, plus `addend`.
pub fn rela(place: u64, kind: RelocationType, symbol: u32, addend: i64) -> Rela64<Le> {
    Rela64 {
        r_offset: U64::new(LE, place),
        r_info: Rela64::r_info(LE, false, symbol, kind),
        r_addend: I64::new(LE, addend),
    }
}

/// A `.dynamic` entry.
pub fn dynamic(tag: DynamicTag, val: u64) -> Dyn64<Le> {
    Dyn64 { d_tag: I64::new(LE, tag), d_val: U64::new(LE, val) }
}

/// The bytes of one record.
pub fn bytes<T: Pod>(record: &T) -> &[u8] {
    bytes_of(record)
}

/// The bytes of a table of records.
pub fn table<T: Pod>(records: &[T]) -> &[u8] {
    bytes_of_slice(records)
}
