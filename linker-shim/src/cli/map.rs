//! `ipbp-ld map`: where the map of a binary was recorded.

use super::Outcome;
use crate::error::Error;
use crate::store::IpbpDir;
use ipbp::registry::{self, BuildRecord};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// An executable linked through ipbp-ld (the `target/debug/<name>` copy works too).
    binary: PathBuf,
}

pub fn run(args: Args) -> Result<Outcome, Error> {
    let build_id = crate::map::read::read_build_id(&args.binary)?;
    match find_map(&args.binary, &build_id)? {
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

/// The map of a build, written now from `binary` if this is the first time it is asked for
/// (ipbp-ld records the list of a build's inputs at link time; the map itself, which only people
/// and tools read, is made on demand). `None` when ipbp-ld did not record the build.
pub fn find_map(binary: &Path, build_id: &str) -> Result<Option<PathBuf>, Error> {
    match find_inputs(binary, build_id) {
        Some(inputs) => crate::map::record::ensure_map(&inputs, binary).map(Some),
        None => Ok(None),
    }
}

/// The recorded input list of a build. The registry knows every build of a program linking the
/// runtime; the target directory next to the binary is the fallback (the registry lives in a
/// runtime directory that does not survive a reboot) and knows the others. Waits for a build
/// still being recorded.
pub fn find_inputs(binary: &Path, build_id: &str) -> Option<PathBuf> {
    let ready = |list: PathBuf| {
        if let Some(dir) = list.parent() {
            crate::map::record::wait_for_writer(dir);
        }
        list.is_file().then_some(list)
    };
    // Only an input list where ipbp-ld writes them (`…/maps/<output>/<build-id>.inputs`) is read:
    // the record names it, and a record must not make us read anything else.
    let in_layout = |list: &Path| {
        list.file_name().is_some_and(|n| n.to_string_lossy() == format!("{build_id}.inputs"))
            && list.parent().and_then(Path::parent).and_then(Path::file_name).is_some_and(|n| n == "maps")
    };
    if let Some(rec) = BuildRecord::load(&registry::root(), build_id).filter(|r| in_layout(&r.inputs)) {
        if let Some(list) = ready(rec.inputs) {
            return Some(list);
        }
    }
    let dir = IpbpDir::for_output(&binary.canonicalize().ok()?);
    let maps = std::fs::read_dir(dir.root.join("maps")).ok()?;
    let candidates: Vec<PathBuf> =
        maps.flatten().map(|out| out.path().join(format!("{build_id}.inputs"))).collect();
    candidates.into_iter().find_map(|p| if p.is_file() { ready(p) } else { None })
}
