//! Parsing relocatable ELF objects and archives into [`Object`]s.

use super::*;
use crate::error::{Context, Result};
use crate::{bail, err};
use object::elf::{FileHeader64, SectionHeader64};
use object::read::elf::{FileHeader, SectionHeader, Sym};
use object::LittleEndian as LE;
use std::path::Path;

/// Keeps the memory maps that loaded objects borrow from. Append-only: a map is never dropped or
/// moved before the arena, so slices of it can be handed out while more files are mapped (the
/// plan stage pulls archive members as it discovers it needs them). Each file is mapped once:
/// every unit of an archive reads its member through the same map, so a page is resident (and
/// counted) once however many members share it.
#[derive(Default)]
pub struct Arena {
    maps: std::cell::RefCell<Vec<memmap2::Mmap>>,
    /// Path → index in `maps` of the file's map.
    mapped: std::cell::RefCell<std::collections::HashMap<std::path::PathBuf, usize>>,
}

impl Arena {
    /// Keeps bytes made in memory (an index built on the fly) for the lifetime of the arena.
    pub fn keep(&self, bytes: Vec<u8>) -> Result<&[u8]> {
        let size = bytes.len();
        let mut map = memmap2::MmapMut::map_anon(size.max(1))
            .with_context(|| format!("cannot allocate {size} bytes for a link index"))?;
        map[..size].copy_from_slice(&bytes);
        let map = map.make_read_only().context("cannot seal a link index in memory")?;
        let slice: *const [u8] = &map[..bytes.len()];
        self.maps.borrow_mut().push(map);
        // SAFETY: as for `map`: the mapping lives, unmoved, as long as the arena.
        Ok(unsafe { &*slice })
    }

    /// Maps a file for the lifetime of the arena (once: a second call returns the same bytes).
    pub fn map(&self, path: &Path) -> Result<&[u8]> {
        if let Some(&i) = self.mapped.borrow().get(path) {
            let bytes: *const [u8] = &self.maps.borrow()[i][..];
            // SAFETY: as below; the map was pushed by an earlier call and lives as long as `self`.
            return Ok(unsafe { &*bytes });
        }
        let file = fs_err::File::open(path).context("cannot open link input")?;
        // SAFETY: read-only map; inputs are not modified while a patch is built (rustc writes new
        // files and deletes the old ones only after the link).
        let map = unsafe { memmap2::Mmap::map(file.file()) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        let bytes: *const [u8] = &map[..];
        let mut maps = self.maps.borrow_mut();
        maps.push(map);
        self.mapped.borrow_mut().insert(path.to_path_buf(), maps.len() - 1);
        // SAFETY: the mapping lives as long as `self` and does not move when its `Mmap` handle does.
        Ok(unsafe { &*bytes })
    }

    /// Lets the kernel drop the resident pages of `bytes`, part of a file this arena mapped, after
    /// a pass over all of it (hashing): the next read of them faults them in again from the page
    /// cache. Keeps a process that hashes every workspace unit from holding all of them resident
    /// at once.
    pub fn release(&self, bytes: &[u8]) {
        const PAGE: usize = 4096;
        let start = (bytes.as_ptr() as usize).next_multiple_of(PAGE);
        let end = (bytes.as_ptr() as usize + bytes.len()) / PAGE * PAGE;
        if end > start {
            // SAFETY: the range lies inside a private read-only file mapping this arena owns
            // (`bytes` came from `map`); MADV_DONTNEED on such a mapping only discards the
            // process's copies of pages, and a later access reads the same file content again, so
            // every slice borrowed from it stays valid and keeps its bytes (inputs are never
            // modified in place, see `map`).
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }
}

/// Parsed objects that must stay put while more are added (archive members pulled during
/// planning). Same idea as [`Arena`]: boxes are never dropped or moved before the arena.
#[derive(Default)]
pub struct ObjectArena<'a> {
    /// Boxed so each object keeps its address when the vector grows.
    #[allow(clippy::vec_box)]
    items: std::cell::RefCell<Vec<Box<Object<'a>>>>,
}

impl<'a> ObjectArena<'a> {
    pub fn alloc(&self, object: Object<'a>) -> usize {
        let mut items = self.items.borrow_mut();
        items.push(Box::new(object));
        items.len() - 1
    }

    pub fn get(&self, index: usize) -> &Object<'a> {
        let ptr: *const Object<'a> = &*self.items.borrow()[index];
        // SAFETY: the boxed object lives, unmoved, as long as `self`.
        unsafe { &*ptr }
    }
}

/// One member of an archive, or a whole object file.
pub struct Unit<'a> {
    pub origin: Origin,
    pub data: &'a [u8],
}

/// The object members of an archive (rlib metadata and other non-ELF members are skipped).
pub fn archive_members<'a>(path: &Path, data: &'a [u8]) -> Result<Vec<Unit<'a>>> {
    let archive = object::read::archive::ArchiveFile::parse(data)
        .with_context(|| format!("{} is not a valid archive", path.display()))?;
    let mut units = Vec::new();
    for member in archive.members() {
        let member = member.with_context(|| format!("{} has a malformed member", path.display()))?;
        let bytes =
            member.data(data).with_context(|| format!("{} has a truncated member", path.display()))?;
        if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
            continue;
        }
        let name = String::from_utf8_lossy(member.name()).into_owned();
        units.push(Unit { origin: Origin { path: path.to_path_buf(), member: Some(name) }, data: bytes });
    }
    Ok(units)
}

/// Names defined by each member, from the archive's symbol index: which member to pull for a
/// symbol without parsing them all.
pub fn archive_index(data: &[u8]) -> Result<Vec<(&[u8], u64)>> {
    let archive = object::read::archive::ArchiveFile::parse(data).context("not a valid archive")?;
    let mut out = Vec::new();
    if let Some(symbols) = archive.symbols().context("malformed archive symbol table")? {
        for s in symbols {
            let s = s.context("malformed archive symbol table")?;
            out.push((s.name(), s.offset().0));
        }
    }
    Ok(out)
}

/// The member at `offset` (from [`archive_index`]).
pub fn archive_member_at<'a>(path: &Path, data: &'a [u8], offset: u64) -> Result<Unit<'a>> {
    let archive = object::read::archive::ArchiveFile::parse(data).context("not a valid archive")?;
    let member = archive
        .member(object::read::archive::ArchiveOffset(offset))
        .with_context(|| format!("{}: bad member offset {offset}", path.display()))?;
    let name = String::from_utf8_lossy(member.name()).into_owned();
    let bytes = member.data(data).with_context(|| format!("{} has a truncated member", path.display()))?;
    Ok(Unit { origin: Origin { path: path.to_path_buf(), member: Some(name) }, data: bytes })
}

/// Parses one relocatable x86-64 ELF object.
pub fn parse<'a>(unit: &Unit<'a>) -> Result<Object<'a>> {
    parse_inner(unit.data)
        .with_context(|| format!("cannot read object {}", unit.origin))
        .map(|(sections, symbols)| Object { sections, symbols })
}

type Parsed<'a> = (Vec<Section<'a>>, Vec<Symbol<'a>>);

fn parse_inner(data: &[u8]) -> Result<Parsed<'_>> {
    let e = LE;
    let header = FileHeader64::<LE>::parse(data).context("not a 64-bit little-endian ELF file")?;
    if header.e_type(e) != elf::ET_REL {
        bail!("not a relocatable object");
    }
    if header.e_machine(e) != elf::EM_X86_64 {
        bail!("not an x86-64 object (machine {})", header.e_machine(e));
    }
    let table = header.sections(e, data).context("malformed section headers")?;
    let headers: &[SectionHeader64<LE>] = table.iter().as_slice();
    let mut sections = Vec::with_capacity(headers.len());
    for sh in headers {
        let name = table.section_name(e, sh).ok().and_then(|n| std::str::from_utf8(n).ok()).unwrap_or("");
        let sh_type = sh.sh_type(e);
        let kind = section_kind(name, sh_type, sh.sh_flags(e).0);
        let contents: &[u8] = if sh_type == elf::SHT_NOBITS || sh_type == elf::SHT_NULL {
            &[]
        } else {
            sh.data(e, data).map_err(|_| err!("section {name} lies outside the file"))?
        };
        let flags = sh.sh_flags(e).0;
        let merge = (flags & elf::SHF_MERGE.0 != 0)
            .then(|| Merge { strings: flags & elf::SHF_STRINGS.0 != 0, entsize: sh.sh_entsize(e) });
        sections.push(Section {
            name,
            kind,
            merge,
            align: sh.sh_addralign(e).max(1),
            size: sh.sh_size(e),
            data: contents,
            rela: &[],
            relocs_decoded: std::cell::OnceCell::new(),
            symbol_count: 0,
            symbols: Vec::new(),
        });
    }

    let symtab = table.symbols(e, data, elf::SHT_SYMTAB).context("malformed symbol table")?;
    let strings = symtab.strings();
    let mut symbols = Vec::with_capacity(symtab.len());
    for (i, sym) in symtab.enumerate() {
        let name = sym.name(e, strings).ok().and_then(|n| std::str::from_utf8(n).ok()).unwrap_or("");
        let shndx = sym.st_shndx(e);
        let def = match shndx {
            elf::SHN_UNDEF => Definition::Undefined,
            elf::SHN_ABS => Definition::Absolute,
            elf::SHN_COMMON => Definition::Common,
            _ => match symtab.symbol_section(e, sym, i) {
                Ok(Some(s)) if s.0 < sections.len() => Definition::Section(s.0),
                _ => bail!("symbol {name} refers to a section that does not exist"),
            },
        };
        let kind = match sym.st_type() {
            elf::STT_FUNC | elf::STT_GNU_IFUNC => SymbolKind::Function,
            elf::STT_OBJECT | elf::STT_COMMON => SymbolKind::Object,
            elf::STT_TLS => SymbolKind::Tls,
            elf::STT_SECTION => SymbolKind::Section,
            elf::STT_NOTYPE => SymbolKind::NoType,
            _ => SymbolKind::Other,
        };
        let name = if kind == SymbolKind::Section {
            match def {
                Definition::Section(s) => sections[s].name,
                _ => "",
            }
        } else {
            name
        };
        symbols.push(Symbol {
            name,
            kind,
            local: sym.st_bind() == elf::STB_LOCAL,
            weak: sym.st_bind() == elf::STB_WEAK,
            def,
            value: sym.st_value(e),
            size: sym.st_size(e),
        });
    }
    for (i, s) in symbols.iter().enumerate() {
        if let (Definition::Section(sec), true) = (s.def, s.is_named()) {
            sections[sec].symbols.push(i);
        }
    }
    for sec in &mut sections {
        sec.symbols.sort_by_key(|&i| (symbols[i].value, symbols[i].local));
    }

    for sh in headers {
        if sh.sh_type(e) != elf::SHT_RELA {
            continue;
        }
        let target = sh.sh_info(e) as usize;
        if target >= sections.len() {
            bail!("relocation section for missing section {target}");
        }
        // Debug sections' too: a patch carries its units' DWARF (`emit::debug`). Borrowed, and
        // decoded only when read.
        let (relas, _) =
            sh.rela(e, data).context("malformed relocations")?.context("malformed relocations")?;
        sections[target].rela = relas;
    }
    let count = symbols.len();
    for sec in &mut sections {
        sec.symbol_count = count;
    }
    Ok((sections, symbols))
}
