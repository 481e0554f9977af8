//! The running image: where the executable a process runs put each symbol, and its TLS layout.
//! Symbols come from the base build's link index (binary searches in a mapped file); the program
//! headers from `/proc/<pid>/exe`, which stays readable while the process lives even after cargo
//! replaced the file.

use crate::error::{Context, Result};
use crate::index::{BaseKind, LinkIndex};
use crate::objects::load::Arena;
use object::elf;
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Endianness, Object as _};
use std::cell::OnceCell;
use std::collections::HashMap;
use std::path::Path;

pub type BaseSymbol = crate::index::Symbol;

pub struct BaseImage<'a> {
    pub build_id: String,
    pub load_bias: u64,
    index: LinkIndex<'a>,
    /// Statics and thread-locals by path (demangled, no hash) → mangled names, built on first
    /// use: rustc's symbol hash of a static covers its type, so a static whose type changed has a
    /// new mangled name but is still the same static of the running program.
    state_by_path: OnceCell<HashMap<String, Vec<&'a str>>>,
    /// `(p_vaddr, p_memsz, p_align)` of PT_TLS.
    pub tls: Option<(u64, u64, u64)>,
    /// Start and end of the image in the process (all PT_LOAD segments, biased).
    pub span: (u64, u64),
    /// The executable's bytes, and its executable segments as `(p_vaddr, p_offset, p_filesz)`:
    /// the code as the process runs it (the image is never written on disk).
    file: &'a [u8],
    code_segments: Vec<(u64, u64, u64)>,
}

impl<'a> BaseImage<'a> {
    pub fn read(arena: &'a Arena, exe: &Path, load_bias: u64, index: LinkIndex<'a>) -> Result<BaseImage<'a>> {
        let data = arena.map(exe)?;
        let file = ElfFile64::<Endianness>::parse(data)
            .with_context(|| format!("{} is not a readable ELF executable", exe.display()))?;
        let e = file.endian();
        let build_id = file.build_id().ok().flatten().map(crate::map::read::hex).unwrap_or_default();
        let mut tls = None;
        let (mut lo, mut hi) = (u64::MAX, 0);
        let mut code_segments = Vec::new();
        for ph in file.elf_program_headers() {
            match ph.p_type(e) {
                elf::PT_TLS => tls = Some((ph.p_vaddr(e), ph.p_memsz(e), ph.p_align(e))),
                elf::PT_LOAD => {
                    lo = lo.min(ph.p_vaddr(e));
                    hi = hi.max(ph.p_vaddr(e) + ph.p_memsz(e));
                    if ph.p_flags(e).0 & elf::PF_X.0 != 0 {
                        code_segments.push((ph.p_vaddr(e), ph.p_offset(e), ph.p_filesz(e)));
                    }
                }
                _ => {}
            }
        }
        Ok(BaseImage {
            build_id,
            load_bias,
            index,
            state_by_path: OnceCell::new(),
            tls,
            span: (lo + load_bias, hi + load_bias),
            file: data,
            code_segments,
        })
    }

    /// The image's code from `addr` (unbiased) up to `len` bytes, or fewer at the end of its
    /// segment; `None` outside code.
    pub fn code(&self, addr: u64, len: u64) -> Option<&'a [u8]> {
        let &(vaddr, offset, filesz) =
            self.code_segments.iter().find(|&&(v, _, size)| v <= addr && addr < v + size)?;
        let start = (offset + (addr - vaddr)) as usize;
        let end = (offset + filesz).min(offset + (addr - vaddr) + len) as usize;
        self.file.get(start..end)
    }

    /// The first definition of `name`, and how many there are.
    pub fn lookup(&self, name: &str) -> Option<(BaseSymbol, usize)> {
        let mut all = self.index.symbols(name);
        let first = all.next()?;
        Some((first, 1 + all.count()))
    }

    /// Every definition of `name`.
    pub fn all(&self, name: &str) -> Vec<BaseSymbol> {
        self.index.symbols(name).collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.symbols(name).next().is_some()
    }

    /// Whether the executable takes `name` from a shared library.
    pub fn imports(&self, name: &str) -> bool {
        self.index.imports(name)
    }

    /// Statics or thread-locals of the image with the same path as `name` but another mangled
    /// name (a changed type).
    pub fn same_path_state(&self, name: &str) -> Vec<(&'a str, BaseSymbol)> {
        if !is_rust_symbol(name) {
            return Vec::new();
        }
        let by_path = self.state_by_path.get_or_init(|| {
            let mut m: HashMap<String, Vec<&'a str>> = HashMap::new();
            for (n, s) in self.index.all_symbols() {
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

    /// ipbp's TLS reserve in the image.
    pub fn tls_reserve(&self) -> Option<BaseSymbol> {
        self.index.symbols(crate::index::TLS_RESERVE).next()
    }
}

pub fn is_rust_symbol(name: &str) -> bool {
    name.starts_with("_ZN") || name.starts_with("_R")
}

/// The path that identifies a static across builds: demangled, without the hash.
pub fn state_path(name: &str) -> String {
    crate::map::read::demangle(name)
}
