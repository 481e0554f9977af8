//! The layout guard's comparison with the build of the patch a process runs
//! ([`crate::layout::since`]): which patch that is, and where its record and models are.

use super::Loaded;
use crate::diff;
use crate::layout::{Cache, Verdict};
use crate::store::IpbpDir;
use ipbp::protocol::Hello;
use std::path::Path;

/// Compares the build of the patch the process runs (if it took any) with the new one
/// ([`crate::layout::since`]): a type edited again, values made by that patch's code.
pub(super) fn since_newest_patch(
    layouts: &mut Verdict,
    hello: &Hello,
    patch_dir: &Path,
    (loaded, d): (&Loaded<'_>, &diff::Diff),
    dir: &IpbpDir,
) {
    use crate::layout::since;
    let Some(listed) = hello.running_patch().map(|at| hello.patches[at].2.as_path()) else { return };
    let Some(name) = listed.file_name() else { return };
    // A patch file of this process's directory, by its own name — or of the process's directory
    // in the target directory of another build of the program (`<target>/ipbp/patches/<pid>-
    // <start time>/`: builds in either patch it), whose unit models are kept beside it.
    let own = patch_dir.file_name();
    let other = listed.parent().filter(|d| {
        d.file_name() == own
            && d.parent().and_then(|p| p.file_name()) == Some(std::ffi::OsStr::new("patches"))
    });
    let (file, prev_cache) = match other {
        // Told apart by what the paths lead to, not by a file of the same name here: after a
        // restart by another target directory, this one may still hold an older `patch-1`.
        Some(d) if !same_dir(d, patch_dir) => {
            let layouts = d.parent().and_then(Path::parent).map(|ipbp| ipbp.join("layouts"));
            (d.join(name), layouts.map_or_else(Cache::none, Cache::at))
        }
        _ => (patch_dir.join(name), Cache::at(dir.layouts())),
    };
    let stem = name.to_string_lossy();
    let number = stem.strip_prefix("patch-").and_then(|n| n.strip_suffix(".so")).unwrap_or(&stem);
    let prev =
        since::Previous { label: format!("patch {number}"), record: since::read_record(&file), file: &file };
    let caches = (&prev_cache, &Cache::at(dir.layouts()));
    layouts.since_patch(&prev, (&loaded.base, &loaded.current), d, caches);
}

/// Whether `a` and `b` name one directory (however spelled).
fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}
