//! Stages 3–6 — diff, plan, emit, deliver: turning the link inputs of a new build into a patch for
//! each running process of the previous one.

use crate::capture::args::LinkCommand;
use crate::map::schema::Input;
use crate::map::store::IpbpDir;
use crate::status::Status;
use std::path::Path;

/// Builds and delivers a patch to every live process of the program being linked.
pub fn for_running_processes(
    _cmd: &LinkCommand,
    _output: &Path,
    _inputs: &[Input],
    _dir: &IpbpDir,
    _status: &mut Status,
) {
}
