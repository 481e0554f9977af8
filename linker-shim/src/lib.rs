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
pub mod link;
pub mod map;
pub mod objects;
pub mod patch;
pub mod plan;
pub mod status;

use std::ffi::OsString;

/// Entry point: a subcommand makes us a CLI, anything else is a link.
pub fn main_with_args(args: Vec<OsString>) -> ! {
    let first = args.first().and_then(|a| a.to_str());
    if first.is_some_and(|a| cli::SUBCOMMANDS.contains(&a)) {
        cli::run(args)
    } else {
        link::run(args)
    }
}
