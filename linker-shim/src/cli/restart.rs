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
    let (line, tone) = crate::hotpatch::restart::on_request(args.pid)?;
    Status::to_stderr().line("Restarted", tone, &line);
    // Exit 1 when the new build did not come up (it exited, or has not called `ipbp::init()`).
    Ok(if tone == Tone::Good { Outcome::Found } else { Outcome::NothingFound })
}
