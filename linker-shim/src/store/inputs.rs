//! The record of one link input — what it is and what was kept of it — as capture makes it,
//! the `.inputs` list stores it and diff reads it. A leaf, so capture needs nothing of map.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One link input and what was kept of it for later patch diffs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    /// As named on the command line (absolute for `-l` libraries that were found).
    pub path: PathBuf,
    pub kind: InputKind,
    /// `xxh3:<32 hex>` of the content; `None` for libraries that were not found on disk.
    pub fingerprint: Option<String>,
    /// Where a copy of this exact content is kept (under `<target>/ipbp/store/`), when the original
    /// may change or disappear (rustc deletes its `*.rcgu.o` right after the link).
    pub stored: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputKind {
    /// A relocatable object (`*.rcgu.o`, `symbols.o`, C objects).
    Object,
    /// An rlib or a static library outside the Rust sysroot.
    Archive,
    /// An rlib of the Rust toolchain's sysroot (immutable, not copied).
    SysrootArchive,
    /// A shared library (named directly or found for `-l`).
    Shared,
    /// `-lname` that could not be found in the search path (system default dirs).
    Library,
}

/// The Rust toolchain's own libraries: immutable for the life of a toolchain.
pub fn is_sysroot(path: &Path) -> bool {
    path.to_string_lossy().contains("/lib/rustlib/")
}
