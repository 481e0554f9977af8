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
/// Waits for a map still being written (ipbp-ld finishes maps after the link returns).
pub fn find_map(binary: &Path, build_id: &str) -> Option<PathBuf> {
    let ready = |map: PathBuf| {
        if let Some(dir) = map.parent() {
            crate::map::record::wait_for_writer(dir);
        }
        map.is_file().then_some(map)
    };
    // Only a map where ipbp-ld writes maps (`…/maps/<output>/<build-id>.json`) is read: the record
    // names it, and a record must not make us read anything else.
    let in_layout = |map: &Path| {
        map.file_name().is_some_and(|n| n.to_string_lossy() == format!("{build_id}.json"))
            && map.parent().and_then(Path::parent).and_then(Path::file_name).is_some_and(|n| n == "maps")
    };
    if let Some(rec) = BuildRecord::load(&registry::root(), build_id).filter(|r| in_layout(&r.map)) {
        if let Some(map) = ready(rec.map) {
            return Some(map);
        }
    }
    let dir = IpbpDir::for_output(&binary.canonicalize().ok()?);
    let maps = std::fs::read_dir(dir.root.join("maps")).ok()?;
    let candidates: Vec<PathBuf> =
        maps.flatten().map(|out| out.path().join(format!("{build_id}.json"))).collect();
    candidates.into_iter().find_map(|p| {
        let inputs = p.with_extension("inputs");
        if inputs.is_file() || p.is_file() {
            ready(p)
        } else {
            None
        }
    })
}
