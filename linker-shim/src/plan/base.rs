//! The running image: where the executable a process runs put each symbol, and its TLS layout.
//! Read from `/proc/<pid>/exe`, which stays readable while the process lives even after cargo
//! replaced the file.

use crate::error::{Context, Result};
use crate::map::read::Mapped;
use object::elf;
use object::read::elf::{ElfFile64, ProgramHeader, Sym};
use object::{Endianness, Object as _};
use std::collections::HashMap;
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

pub struct BaseImage {
    pub build_id: String,
    pub load_bias: u64,
    symbols: HashMap<String, Vec<BaseSymbol>>,
    /// Statics and thread-locals by path (demangled, no hash) → mangled names. rustc's symbol hash
    /// of a static covers its type, so a static whose type changed has a new mangled name but is
    /// still the same static of the running program.
    state_by_path: HashMap<String, Vec<String>>,
    /// `(p_vaddr, p_memsz, p_align)` of PT_TLS.
    pub tls: Option<(u64, u64, u64)>,
    /// Start and end of the image in the process (all PT_LOAD segments, biased).
    pub span: (u64, u64),
}

impl BaseImage {
    pub fn read(exe: &Path, load_bias: u64) -> Result<BaseImage> {
        let mapped = Mapped::open(exe)?;
        let data = mapped.bytes();
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
        let mut symbols: HashMap<String, Vec<BaseSymbol>> = HashMap::with_capacity(table.len());
        let mut state_by_path: HashMap<String, Vec<String>> = HashMap::new();
        for (_, sym) in table.enumerate() {
            if sym.st_shndx(e) == elf::SHN_UNDEF {
                continue;
            }
            let kind = match sym.st_type() {
                elf::STT_FUNC | elf::STT_GNU_IFUNC => BaseKind::Function,
                elf::STT_OBJECT | elf::STT_COMMON | elf::STT_NOTYPE => BaseKind::Data,
                elf::STT_TLS => BaseKind::Tls,
                _ => continue,
            };
            let Ok(name) = sym.name(e, strings) else { continue };
            let Ok(name) = std::str::from_utf8(name) else { continue };
            if name.is_empty() || name.starts_with(".L") {
                continue;
            }
            if kind != BaseKind::Function && is_rust_symbol(name) {
                state_by_path.entry(state_path(name)).or_default().push(name.to_string());
            }
            symbols.entry(name.to_string()).or_default().push(BaseSymbol {
                addr: sym.st_value(e),
                size: sym.st_size(e),
                kind,
                local: sym.st_bind() == elf::STB_LOCAL,
            });
        }
        Ok(BaseImage {
            build_id,
            load_bias,
            symbols,
            state_by_path,
            tls,
            span: (lo + load_bias, hi + load_bias),
        })
    }

    /// Every definition of `name` in the image.
    pub fn lookup(&self, name: &str) -> &[BaseSymbol] {
        self.symbols.get(name).map_or(&[], Vec::as_slice)
    }

    /// Statics or thread-locals of the image with the same path as `name` but another mangled
    /// name (a changed type).
    pub fn same_path_state(&self, name: &str) -> Vec<(&str, BaseSymbol)> {
        if !is_rust_symbol(name) {
            return Vec::new();
        }
        let Some(names) = self.state_by_path.get(&state_path(name)) else { return Vec::new() };
        names
            .iter()
            .filter(|n| n.as_str() != name)
            .flat_map(|n| self.lookup(n).iter().map(move |s| (n.as_str(), *s)))
            .collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.symbols.contains_key(name)
    }

    /// Thread-pointer offset of the executable's TLS block as glibc lays it out.
    pub fn tls_tp_offset(&self) -> Option<i64> {
        self.tls.map(|(vaddr, memsz, align)| crate::map::read::tls_tp_offset(vaddr, memsz, align))
    }

    /// The name of a TLS symbol containing `needle` (used to find ipbp's TLS reserve).
    pub fn find_tls(&self, needle: &str) -> Option<(&str, BaseSymbol)> {
        self.symbols.iter().find_map(|(n, v)| {
            let s = v.iter().find(|s| s.kind == BaseKind::Tls)?;
            n.contains(needle).then_some((n.as_str(), *s))
        })
    }
}

pub fn is_rust_symbol(name: &str) -> bool {
    name.starts_with("_ZN") || name.starts_with("_R")
}

/// The path that identifies a static across builds: demangled, without the hash.
pub fn state_path(name: &str) -> String {
    crate::map::read::demangle(name)
}
