//! `ipbp-ld`: the linker half of ipbp.
//!
//! The pipeline, one module each: [`capture`] → [`map`] → diff → plan → emit → deliver (see
//! [`patch`]) → apply (in the `ipbp` runtime crate). [`link`] drives it when rustc calls us as its
//! linker; [`cli`] is the inspection tool.

pub mod capture;
pub mod cli;
pub mod deliver;
pub mod diff;
pub mod emit;
pub mod error;
pub mod index;
pub mod layout;
pub mod link;
pub mod map;
pub mod objects;
pub mod patch;
pub mod plan;
pub mod status;
pub mod timing;

use std::ffi::OsString;

/// Entry point: a subcommand makes us a CLI, anything else is a link.
pub fn main_with_args(args: Vec<OsString>) -> ! {
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
