//! `ipbp-ld restart PID`: restarts a running program into the newest build of it, with no edit
//! (the same re-execution a build that cannot be patched in triggers).

use super::Outcome;
use crate::error::Error;
use crate::status::{Status, Tone};

#[derive(clap::Args)]
pub struct Args {
    /// The process (it must have called `ipbp::init()`).
    pid: u32,
}

pub fn run(args: Args) -> Result<Outcome, Error> {
    let line = crate::hotpatch::restart::on_request(args.pid)?;
    Status::new(None).line("Restarted", Tone::Good, &line);
    Ok(Outcome::Found)
}
