//! `ipbp-ld`: the linker half of ipbp.
//!
//! The pipeline, one module each: `capture` → `map` → diff → plan → emit → deliver → apply (in
//! the `ipbp` runtime crate). `hotpatch` drives diff → deliver for each running process; `link`
//! drives it all when rustc calls us as its linker; `cli` is the inspection tool.
//!
//! Modules are `pub(crate)` unless the tests or the binary use them: only `map::schema`, for the
//! maps the tests read.

pub(crate) mod capture;
pub(crate) mod cli;
pub(crate) mod deliver;
pub(crate) mod diff;
pub(crate) mod emit;
pub(crate) mod error;
pub(crate) mod hotpatch;
pub(crate) mod index;
pub(crate) mod layout;
pub(crate) mod link;
pub mod map;
pub(crate) mod marks;
pub(crate) mod objects;
pub(crate) mod plan;
pub(crate) mod status;
pub(crate) mod store;
pub(crate) mod timing;

use std::ffi::OsString;

/// Entry point: a subcommand makes us a CLI, anything else is a link.
pub fn main_with_args(args: Vec<OsString>) -> ! {
    if let Some(dir) = cli::watch::wrapper_dir(&args) {
        // `watch`'s cargo builds: cargo runs us as RUSTC_WRAPPER.
        cli::watch::wrap_rustc(&dir, args)
    }
    if is_cli(&args) {
        cli::run(args)
    } else {
        link::run(args)
    }
}

/// rustc always starts a link with an option or a path (`-m64`, `/…/symbols.o`); a bare word
/// that is not a file is a (mistyped) subcommand, and no arguments at all asks for help.
fn is_cli(args: &[OsString]) -> bool {
    let Some(first) = args.first().and_then(|a| a.to_str()) else { return true };
    cli::SUBCOMMANDS.contains(&first)
        || (!first.is_empty()
            && first.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !first.starts_with('-')
            && !std::path::Path::new(first).exists())
}
