//! The recorded symbol map: everything the patcher and the inspection commands need to know about
//! one linked executable. Written as JSON (see ARCHITECTURE.md for the file layout).
//!
//! Addresses are link-time virtual addresses (add the load bias for a running PIE). For TLS symbols
//! `addr` is the offset inside the PT_TLS block, as in the ELF symbol table.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub use crate::store::inputs::{Input, InputKind};

/// Bumped whenever a field changes meaning or disappears.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SymbolMap {
    pub schema: u32,
    /// `ipbp-ld <version>` that wrote the map.
    pub tool: String,
    pub output: PathBuf,
    /// Hex of `.note.gnu.build-id`, or `xxh3:<hex>` of the file when the note is missing.
    pub build_id: String,
    pub arch: String,
    pub pie: bool,
    pub entry: u64,
    pub segments: Vec<Segment>,
    pub tls: Option<TlsLayout>,
    pub sections: Vec<Section>,
    pub symbols: Vec<Symbol>,
    /// Link inputs in command-line order. Empty for a map made from a binary on the fly.
    #[serde(default)]
    pub inputs: Vec<Input>,
}

/// A PT_LOAD program header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub filesz: u64,
    /// `r`, `w`, `x` or `-` in that order, like `/proc/pid/maps`.
    pub flags: String,
    pub align: u64,
}

/// The PT_TLS segment and where the executable's TLS block sits relative to the thread pointer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsLayout {
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
    /// Start of the executable's TLS block = thread pointer + `tp_offset` (x86-64 TLS variant II,
    /// glibc's placement of the first module: always negative). A TLS symbol lives at
    /// `tp + tp_offset + symbol.addr` in every thread.
    pub tp_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub name: String,
    pub addr: u64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symbol {
    /// The name as in `.symtab` (mangled).
    pub name: String,
    /// rustc-demangle's output without the hash suffix (`{:#}`); equal to `name` for C symbols.
    pub demangled: String,
    pub addr: u64,
    pub size: u64,
    pub kind: SymbolKind,
    pub binding: Binding,
    /// Name of the defining section; `None` for absolute and undefined symbols.
    pub section: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SymbolKind {
    Function,
    Object,
    Tls,
    Section,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Binding {
    Local,
    Global,
    Weak,
}

impl SymbolKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SymbolKind::Function => "function",
            SymbolKind::Object => "object",
            SymbolKind::Tls => "tls",
            SymbolKind::Section => "section",
            SymbolKind::Other => "other",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "function" | "func" | "fn" => SymbolKind::Function,
            "object" | "data" => SymbolKind::Object,
            "tls" => SymbolKind::Tls,
            "section" => SymbolKind::Section,
            "other" => SymbolKind::Other,
            _ => return None,
        })
    }
}

impl Binding {
    pub fn as_str(self) -> &'static str {
        match self {
            Binding::Local => "local",
            Binding::Global => "global",
            Binding::Weak => "weak",
        }
    }
}
