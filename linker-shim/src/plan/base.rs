//! The running image: where the executable a process runs put each symbol, and its TLS layout.
//! Read from `/proc/<pid>/exe`, which stays readable while the process lives even after cargo
//! replaced the file. Names are borrowed from the mapped file: indexing tens of thousands of
//! symbols must cost a few milliseconds, not an allocation each.

use crate::error::{Context, Result};
use crate::objects::load::Arena;
use object::elf;
use object::read::elf::{ElfFile64, ProgramHeader, Sym};
use object::{Endianness, Object as _};
use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseSymbol {
    /// Link-time address (add the load bias for the running process); for TLS symbols the offset
    /// inside the TLS block.
    pub addr: u64,
    pub size: u64,
    pub kind: BaseKind,
    pub local: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseKind {
    Function,
    Data,
    Tls,
}

pub struct BaseImage<'a> {
    pub build_id: String,
    pub load_bias: u64,
    /// Name → its first definition; names defined more than once (local copies of one generic
    /// instance, C statics of different files) also appear in `more`.
    first: HashMap<&'a str, BaseSymbol>,
    more: HashMap<&'a str, Vec<BaseSymbol>>,
    /// Symbols the executable takes from shared libraries (undefined in its symbol table).
    imports: HashSet<&'a str>,
    /// Statics and thread-locals by path (demangled, no hash) → mangled names, built on first
    /// use: rustc's symbol hash of a static covers its type, so a static whose type changed has a
    /// new mangled name but is still the same static of the running program.
    state_by_path: OnceCell<HashMap<String, Vec<&'a str>>>,
    /// `(p_vaddr, p_memsz, p_align)` of PT_TLS.
    pub tls: Option<(u64, u64, u64)>,
    /// Start and end of the image in the process (all PT_LOAD segments, biased).
    pub span: (u64, u64),
}

impl<'a> BaseImage<'a> {
    pub fn read(arena: &'a Arena, exe: &Path, load_bias: u64) -> Result<BaseImage<'a>> {
        let data = arena.map(exe)?;
        let file = ElfFile64::<Endianness>::parse(data)
            .with_context(|| format!("{} is not a readable ELF executable", exe.display()))?;
        let e = file.endian();
        let build_id = file.build_id().ok().flatten().map(crate::map::read::hex).unwrap_or_default();
        let mut tls = None;
        let (mut lo, mut hi) = (u64::MAX, 0);
        for ph in file.elf_program_headers() {
            match ph.p_type(e) {
                elf::PT_TLS => tls = Some((ph.p_vaddr(e), ph.p_memsz(e), ph.p_align(e))),
                elf::PT_LOAD => {
                    lo = lo.min(ph.p_vaddr(e));
                    hi = hi.max(ph.p_vaddr(e) + ph.p_memsz(e));
                }
                _ => {}
            }
        }
        let table = file.elf_symbol_table();
        let strings = table.strings();
        let mut first: HashMap<&'a str, BaseSymbol> = HashMap::with_capacity(table.len());
        let mut more: HashMap<&'a str, Vec<BaseSymbol>> = HashMap::new();
        let mut imports = HashSet::new();
        for (_, sym) in table.enumerate() {
            let Some(name) = sym.name(e, strings).ok().and_then(|n| std::str::from_utf8(n).ok()) else {
                continue;
            };
            if name.is_empty() || name.starts_with(".L") {
                continue;
            }
            if sym.st_shndx(e) == elf::SHN_UNDEF {
                if sym.st_bind() != elf::STB_LOCAL {
                    imports.insert(name);
                }
                continue;
            }
            let kind = match sym.st_type() {
                elf::STT_FUNC | elf::STT_GNU_IFUNC => BaseKind::Function,
                elf::STT_OBJECT | elf::STT_COMMON | elf::STT_NOTYPE => BaseKind::Data,
                elf::STT_TLS => BaseKind::Tls,
                _ => continue,
            };
            let s = BaseSymbol {
                addr: sym.st_value(e),
                size: sym.st_size(e),
                kind,
                local: sym.st_bind() == elf::STB_LOCAL,
            };
            match first.entry(name) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(s);
                }
                std::collections::hash_map::Entry::Occupied(o) => {
                    more.entry(name).or_insert_with(|| vec![*o.get()]).push(s);
                }
            }
        }
        Ok(BaseImage {
            build_id,
            load_bias,
            first,
            more,
            imports,
            state_by_path: OnceCell::new(),
            tls,
            span: (lo + load_bias, hi + load_bias),
        })
    }

    /// The first definition of `name`, and how many there are.
    pub fn lookup(&self, name: &str) -> Option<(BaseSymbol, usize)> {
        let first = *self.first.get(name)?;
        Some((first, self.more.get(name).map_or(1, Vec::len)))
    }

    /// Every definition of `name`.
    pub fn all(&self, name: &str) -> Vec<BaseSymbol> {
        match (self.more.get(name), self.first.get(name)) {
            (Some(all), _) => all.clone(),
            (None, Some(one)) => vec![*one],
            (None, None) => Vec::new(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.first.contains_key(name)
    }

    /// Whether the executable takes `name` from a shared library.
    pub fn imports(&self, name: &str) -> bool {
        self.imports.contains(name)
    }

    /// Statics or thread-locals of the image with the same path as `name` but another mangled
    /// name (a changed type).
    pub fn same_path_state(&self, name: &str) -> Vec<(&'a str, BaseSymbol)> {
        if !is_rust_symbol(name) {
            return Vec::new();
        }
        let by_path = self.state_by_path.get_or_init(|| {
            let mut m: HashMap<String, Vec<&'a str>> = HashMap::new();
            for (&n, s) in &self.first {
                if s.kind != BaseKind::Function && is_rust_symbol(n) {
                    m.entry(state_path(n)).or_default().push(n);
                }
            }
            m
        });
        let Some(names) = by_path.get(&state_path(name)) else { return Vec::new() };
        names
            .iter()
            .filter(|&&n| n != name)
            .flat_map(|&n| self.all(n).into_iter().map(move |s| (n, s)))
            .collect()
    }

    /// Thread-pointer offset of the executable's TLS block as glibc lays it out.
    pub fn tls_tp_offset(&self) -> Option<i64> {
        self.tls.map(|(vaddr, memsz, align)| crate::map::read::tls_tp_offset(vaddr, memsz, align))
    }

    /// A TLS symbol whose name contains `needle` (used to find ipbp's TLS reserve).
    pub fn find_tls(&self, needle: &str) -> Option<(&'a str, BaseSymbol)> {
        self.first.iter().find(|(n, s)| s.kind == BaseKind::Tls && n.contains(needle)).map(|(&n, &s)| (n, s))
    }
}

pub fn is_rust_symbol(name: &str) -> bool {
    name.starts_with("_ZN") || name.starts_with("_R")
}

/// The path that identifies a static across builds: demangled, without the hash.
pub fn state_path(name: &str) -> String {
    crate::map::read::demangle(name)
}
