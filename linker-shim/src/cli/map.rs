//! `ipbp-ld map`: where the map of a binary was recorded.

use super::Outcome;
use crate::error::Error;
use crate::map::store::IpbpDir;
use ipbp::registry::{self, BuildRecord};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// An executable linked through ipbp-ld (the `target/debug/<name>` copy works too).
    binary: PathBuf,
}

pub fn run(args: Args) -> Result<Outcome, Error> {
    let build_id = crate::map::read::read_build_id(&args.binary)?;
    match find_map(&args.binary, &build_id) {
        Some(path) => {
            println!("{}", path.display());
            Ok(Outcome::Found)
        }
        None => {
            eprintln!(
                "no map recorded for {} (build id {build_id}); was it linked through ipbp-ld?",
                args.binary.display()
            );
            Ok(Outcome::NothingFound)
        }
    }
}

/// The registry knows every build ipbp-ld linked; the target directory next to the binary is the
/// fallback (the registry lives in a runtime directory that does not survive a reboot).
pub fn find_map(binary: &Path, build_id: &str) -> Option<PathBuf> {
    if let Some(rec) = BuildRecord::load(&registry::root(), build_id) {
        if rec.map.is_file() {
            return Some(rec.map);
        }
    }
    let dir = IpbpDir::for_output(&binary.canonicalize().ok()?);
    let maps = std::fs::read_dir(dir.root.join("maps")).ok()?;
    maps.flatten().map(|out| out.path().join(format!("{build_id}.json"))).find(|p| p.is_file())
}
