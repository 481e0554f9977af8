//! The runtime half of ipbp: a running program opts in with [`init`], marks hot points with
//! `#[ipbp::hot]` or [`call`], and receives patches built by `ipbp-ld`.

pub mod registry;
