//! What an executable link is for, decided from the command line alone (no file is read), before
//! the real linker runs — because what must be kept of the inputs has to be kept while it runs.
//!
//! A patch can only ever follow for a program that registers with `ipbp::init()`, and only a
//! program that links the `ipbp` runtime crate has that function. rustc names every crate of the
//! dependency graph on the link line as its rlib, `lib<crate>-<hash>.rlib` under cargo
//! (`lib<crate>.rlib` without `-C extra-filename`), whatever the dependency is called in
//! `Cargo.toml`, so "an input named `libipbp-*.rlib`" is exact for cargo builds and costs nothing.
//! (With fat LTO rustc links one merged object instead of rlibs: such a build is not recorded, and
//! its process does not register — see ARCHITECTURE.md's limits.)

use super::args::{InputArg, LinkCommand};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A program linking the runtime: its inputs are kept and its link index is written in the
    /// background, so the first patch of a running copy is fast.
    Program,
    /// A test harness (it links the sysroot's `libtest`) linking the runtime: its inputs are kept,
    /// but its link index is only built if a running copy is ever patched. Test executables are
    /// many and rarely run long.
    TestHarness,
    /// Does not link the runtime: it can never register, so no patch can ever follow. Only the
    /// list of its inputs is written (for `ipbp-ld map`); nothing is fingerprinted or kept.
    NoRuntime,
}

impl Role {
    pub fn of(cmd: &LinkCommand) -> Role {
        let names = cmd.inputs.iter().filter_map(|i| match i {
            InputArg::File(p) => p.file_name().map(|n| n.to_string_lossy()),
            InputArg::Library { .. } => None,
        });
        let (mut runtime, mut test) = (false, false);
        for name in names {
            runtime |= is_rlib_of(&name, "ipbp");
            test |= is_rlib_of(&name, "test");
        }
        match (runtime, test) {
            (false, _) => Role::NoRuntime,
            (true, true) => Role::TestHarness,
            (true, false) => Role::Program,
        }
    }

    /// Whether the inputs are fingerprinted and kept (a patch may need them).
    pub fn keeps_inputs(self) -> bool {
        self != Role::NoRuntime
    }
}

/// `lib<krate>.rlib` or `lib<krate>-<anything>.rlib`.
fn is_rlib_of(file_name: &str, krate: &str) -> bool {
    let Some(stem) = file_name.strip_prefix("lib").and_then(|n| n.strip_suffix(".rlib")) else {
        return false;
    };
    stem.strip_prefix(krate).is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

/// A doctest rustdoc links into its temporary directory (`<tmp>/rustdoctest<random>/rust_out`),
/// runs once and deletes: nothing of it may be recorded, neither there (the directory would be
/// recreated after rustdoc removed it) nor in the registry.
pub fn is_rustdoc_temp(output: &Path) -> bool {
    output.components().any(|c| c.as_os_str().to_string_lossy().starts_with("rustdoctest"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlib_names_are_matched_by_crate_name() {
        assert!(is_rlib_of("libipbp-0123456789abcdef.rlib", "ipbp"));
        assert!(is_rlib_of("libipbp.rlib", "ipbp"));
        assert!(!is_rlib_of("libipbp_macros-0123456789abcdef.rlib", "ipbp"));
        assert!(!is_rlib_of("libipbpx-01.rlib", "ipbp"));
        assert!(!is_rlib_of("libipbp-01.so", "ipbp"));
        assert!(is_rlib_of("libtest-9f2e.rlib", "test"));
        assert!(!is_rlib_of("libtesting-9f2e.rlib", "test"));
    }

    #[test]
    fn rustdoc_outputs_are_recognised() {
        assert!(is_rustdoc_temp(Path::new("/tmp/rustdoctestAbC123/rust_out")));
        assert!(!is_rustdoc_temp(Path::new("/home/u/app/target/debug/deps/app-0123")));
    }
}
