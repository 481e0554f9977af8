//! Sending the functions of earlier patches on to the newest code — once, for good.
//!
//! In place, the image's entry of a changed function jumps to the newest patch. But code of an
//! earlier patch can still be reached: a `fn` pointer to a function that patch *added* (a
//! callback it registered), or a frame of earlier patched code that never returned and calls its
//! own patch's functions directly. So every function of an earlier patch gets a jump too.
//!
//! Patches are cumulative (each carries every function changed since the process started), so
//! when a patch arrives, *every* function of the patches before it is superseded at once. The
//! patch live code runs in until now gets live jumps to the new versions (part of the request's
//! whole set, so a failed link can still send the process back to that patch's code, see
//! `hotpatch/revert.rs`); every older patch the process still lists is **settled**: each of its
//! functions sent, for good (`settle` in the request), to an **anchor** that always leads to the
//! function's current version, so its jump never has to change again:
//!
//! - a function the image has, whose image entry the new patch redirects (or does not touch,
//!   because the edit was reverted): its anchor is that image entry, which jumps to the newest
//!   version, or holds the original code again;
//! - a function a patch added (or one whose image entry cannot hold a jump): its anchor is its
//!   first copy still loaded, its **home**, which gets a *live* jump to the newest version in
//!   every request while the newest patch still has the function. A home whose function is gone
//!   from the newest patch is dropped: it and the copies settled on it keep the home's code.
//!
//! So a call through any old copy takes at most two jumps, and a patch reads only the patches
//! the process reports unsettled (the two before it, normally) and the homes (one per function
//! patches added): the work does not grow with the number of patches before it. The homes are
//! kept in `anchors.tsv` beside the patches of the process, written when a patch was applied and
//! taken only for homes the process still reports live.
//!
//! Except the functions the new patch keeps on old code for a layout change (and the unchanged code
//! it carries because it leads to them): an earlier patch's copy of one was built for the layout
//! that patch had, and its callers (that patch's frames, the image's entry it was redirected to)
//! hand it values of that layout. Sent on to the new version, it would hand them to code built for
//! another; it keeps its code, as the image's entry keeps the image's. So do the functions whose
//! types changed layout since the newest patch (`layout::since`: a type edited twice). Such a copy
//! is **pinned**: it keeps its code for good, in this patch and every later one (`pinned.tsv`
//! beside the patches lists them), since the frames that call it hold values of its layout
//! whatever later edits do; and a home of such a function loses its live jump (the copies settled
//! on it, all made while the home's layout was the newest, run the home's code).

use crate::index::BaseKind;
use crate::plan::base::BaseImage;
use crate::plan::entry;
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Endianness, Object, ObjectSymbol, SymbolKind};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The file beside a process's patches that lists the homes of functions patches added.
const ANCHORS: &str = "anchors.tsv";

/// The file beside a process's patches that lists the pinned copies (see the module's doc).
const PINNED: &str = "pinned.tsv";

/// What chaining found.
#[derive(Debug, Default)]
pub struct Chain {
    /// `(entry in an earlier patch, its anchor)`: jumps for good.
    pub settle: Vec<(u64, u64)>,
    /// `(home or entry of the patch live until now, newest version)`: live jumps, part of the
    /// request's whole set.
    pub live: Vec<(u64, u64)>,
    /// Starts of the patches settled (the process stops listing them).
    pub done: Vec<u64>,
    /// Functions of earlier patches whose entry cannot hold a jump (they keep their code).
    pub unfit: Vec<String>,
    /// The homes after this patch, to keep once it is applied ([`Homes::write`]).
    pub homes: Homes,
    /// The pinned copies after this patch, to keep once it is applied ([`Pins::write`]).
    pub pins: Pins,
}

/// Entries of copies in earlier patches that keep their code for good (see the module's doc).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pins(pub std::collections::BTreeSet<u64>);

impl Pins {
    /// The copies pinned in `patch_dir`. The file is written whole and renamed into place, so it
    /// is read whole or not at all; a line that does not parse is skipped.
    pub fn read(patch_dir: &Path) -> Pins {
        let text = std::fs::read_to_string(patch_dir.join(PINNED)).unwrap_or_default();
        Pins(text.lines().filter_map(|l| u64::from_str_radix(l.strip_prefix("0x")?, 16).ok()).collect())
    }

    /// Records the pins (after the patch that made them was applied).
    pub fn write(&self, patch_dir: &Path) -> std::io::Result<()> {
        let text: String = self.0.iter().map(|a| format!("{a:#x}\n")).collect();
        let tmp = patch_dir.join(format!(".{PINNED}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, patch_dir.join(PINNED))
    }
}

/// Mangled name → the entry of its home (the first copy still loaded of a function a patch
/// added).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Homes(BTreeMap<String, u64>);

impl Homes {
    /// The homes recorded in `patch_dir`, keeping only those the process reports holding a live
    /// jump (`live`: entries of its `hello` detours): a record the process does not confirm is
    /// stale, and is dropped rather than trusted.
    pub fn read(patch_dir: &Path, live: &HashSet<u64>) -> Homes {
        let text = std::fs::read_to_string(patch_dir.join(ANCHORS)).unwrap_or_default();
        let homes = text
            .lines()
            .filter_map(|l| {
                let (addr, name) = l.split_once(' ')?;
                let addr = u64::from_str_radix(addr.strip_prefix("0x")?, 16).ok()?;
                live.contains(&addr).then(|| (name.to_string(), addr))
            })
            .collect();
        Homes(homes)
    }

    /// Records the homes (after the patch that made them was applied).
    pub fn write(&self, patch_dir: &Path) -> std::io::Result<()> {
        let mut text = String::new();
        for (name, addr) in &self.0 {
            text.push_str(&format!("{addr:#x} {name}\n"));
        }
        let tmp = patch_dir.join(format!(".{ANCHORS}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, patch_dir.join(ANCHORS))
    }
}

/// A patch a process reports loaded: start, length, file.
pub type LoadedPatch = (u64, u64, PathBuf);

/// Jumps for the functions of the patches the process reports unsettled (`unsettled`: start,
/// length, path, as its `hello` listed them; `current`: which of them live code runs in,
/// [`ipbp::protocol::Hello::running_patch`]), and the live jumps of the homes. `newest` maps a mangled name to its
/// entry in the new patch; `redirected` holds the image entries the new patch redirects; the
/// functions named in `kept`, and the copies `pins` names, keep their code (see the module's doc).
pub fn earlier_patches(
    patch_dir: &Path,
    (unsettled, current): (&[LoadedPatch], Option<usize>),
    (mut homes, mut pins): (Homes, Pins),
    newest: &HashMap<&str, u64>,
    redirected: &HashSet<u64>,
    kept: &HashSet<&str>,
    image: &BaseImage<'_>,
) -> Chain {
    let mut chain = Chain::default();
    // A pin is made by a plan for the copies of the patch live at the time, and holds once that
    // plan's patch has replaced it. Pins inside the patch still live now were made by a plan that
    // never took (its link failed and it was undone): they are decided anew below (`kept`), or a
    // later edit would leave a frame of this patch calling a copy that never learns new code.
    if let Some(&(start, len, _)) = current.and_then(|c| unsettled.get(c)) {
        pins.0.retain(|&at| !(start <= at && at < start.saturating_add(len)));
    }
    let mut sent_on: Vec<(u64, u64)> = Vec::new();
    for (i, (start, _, path)) in unsettled.iter().enumerate() {
        let settling = Some(i) != current;
        if settling {
            chain.done.push(*start);
        }
        // Only a patch file of this process's directory, by its own name.
        let Some(name) = path.file_name().filter(|n| n.to_string_lossy().starts_with("patch-")) else {
            continue;
        };
        let Ok(data) = std::fs::read(patch_dir.join(name)) else { continue };
        let Ok(file) = ElfFile64::<Endianness>::parse(&data[..]) else { continue };
        if first_load(&file) != Some(*start) {
            continue; // not the patch the process loaded there
        }
        for sym in file.symbols() {
            if sym.kind() != SymbolKind::Text || sym.size() == 0 {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            let at = start + sym.address();
            if kept.contains(crate::diff::names::canonical(name)) || kept.contains(name) {
                pins.0.insert(at); // kept on old code for a layout change: see the module's doc
                continue;
            }
            if pins.0.contains(&at) {
                continue;
            }
            let fits = || {
                code_at(&file, &data, sym.address(), sym.size())
                    .is_some_and(|(code, after)| entry::check(code, after).is_ok())
            };
            let in_image = match image.lookup(name) {
                Some((s, _)) if s.kind == BaseKind::Function => Some(s.addr + image.load_bias),
                _ => None,
            };
            if !settling {
                // Live until now: straight to the newest version, or back to the image's.
                let is_home = homes.0.get(name) == Some(&at);
                if let Some(to) = newest.get(name).copied().or(in_image).filter(|&to| to != at && !is_home) {
                    if fits() {
                        sent_on.push((at, to));
                    }
                }
                continue;
            }
            let anchor = match (in_image, newest.get(name)) {
                // The image's entry leads to the newest version, or is the original again.
                (Some(e), None) => Some(e),
                (Some(e), Some(_)) if redirected.contains(&e) => Some(e),
                // Added by a patch (or its image entry holds no jump), and still in the newest.
                (_, Some(_)) => match homes.0.get(name) {
                    Some(&home) if home == at => continue,
                    Some(&home) => Some(home),
                    None if fits() => {
                        homes.0.insert(name.to_string(), at);
                        continue;
                    }
                    None => None,
                },
                // Added by that patch and gone since: nothing calls it anew; it keeps its code.
                (None, None) => continue,
            };
            match anchor {
                Some(to) if fits() => chain.settle.push((at, to)),
                _ => chain.unfit.push(crate::map::read::demangle(name)),
            }
        }
    }
    // Homes of functions no longer in the newest patch go back to their own code, and so do
    // those of functions kept for a layout change.
    homes.0.retain(|name, _| {
        newest.contains_key(name.as_str())
            && !kept.contains(crate::diff::names::canonical(name))
            && !kept.contains(name.as_str())
    });
    chain.live = homes.0.iter().map(|(name, &home)| (home, newest[name.as_str()])).collect();
    chain.live.extend(sent_on);
    chain.live.sort_unstable();
    chain.live.dedup_by_key(|d| d.0);
    // An entry with two names (aliases) is decided once: a home is never settled, and no settled
    // jump leads to another entry being settled — each old copy takes at most two jumps.
    chain.settle.sort_unstable();
    chain.settle.dedup_by_key(|d| d.0);
    let at_home: HashSet<u64> = homes.0.values().copied().collect();
    chain.settle.retain(|(from, _)| !at_home.contains(from));
    let settling: HashSet<u64> = chain.settle.iter().map(|d| d.0).collect();
    chain.settle.retain(|(_, to)| !settling.contains(to));
    chain.live.retain(|(from, _)| !settling.contains(from));
    chain.homes = homes;
    chain.pins = pins;
    chain
}

/// Where a patch file's first segment is linked to load (its start in the process).
fn first_load(file: &ElfFile64<'_, Endianness>) -> Option<u64> {
    let endian = file.endian();
    file.elf_program_headers()
        .iter()
        .find(|p| p.p_type(endian) == object::elf::PT_LOAD)
        .map(|p| p.p_vaddr(endian))
}

/// A function's bytes in a patch file (addresses relative to the patch's base, as its section
/// headers hold them), and up to a jump's length of what follows.
fn code_at<'d>(
    file: &ElfFile64<'d, Endianness>,
    data: &'d [u8],
    addr: u64,
    size: u64,
) -> Option<(&'d [u8], &'d [u8])> {
    use object::ObjectSection;
    let section = file.sections().find(|s| s.address() <= addr && addr + size <= s.address() + s.size())?;
    let (offset, len) = section.file_range()?;
    let at = (offset + addr - section.address()) as usize;
    let end_of_section = (offset + len) as usize;
    let code = data.get(at..at + size as usize)?;
    let after =
        data.get(at + size as usize..(at + size as usize + entry::JUMP_LEN as usize).min(end_of_section))?;
    Some((code, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homes_round_trip_and_unconfirmed_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let homes =
            Homes(BTreeMap::from([("_ZN3app4new117h0E".to_string(), 0x5000), ("b".to_string(), 0x6000)]));
        homes.write(dir.path()).unwrap();
        assert_eq!(Homes::read(dir.path(), &HashSet::from([0x5000, 0x6000])), homes);
        let confirmed = Homes::read(dir.path(), &HashSet::from([0x6000]));
        assert_eq!(confirmed, Homes(BTreeMap::from([("b".to_string(), 0x6000)])));
        assert_eq!(Homes::read(&dir.path().join("none"), &HashSet::new()), Homes::default());
    }
}
