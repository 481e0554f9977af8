//! Sending the functions of earlier patches on to the newest code.
//!
//! In place, the image's entry of a changed function jumps to the newest patch. But code of an
//! earlier patch can still be reached: a `fn` pointer to a function that patch *added* (a
//! callback it registered), or a frame of earlier patched code that never returned and calls its
//! own patch's functions directly. So every function an earlier, still loaded patch holds gets a
//! detour too: to its version in the new patch, or — when the function is no longer changed (an
//! edit was reverted) — back to the image's original. Earlier patches are read from the patch
//! directory this target directory keeps for the process, and only those the process reports
//! loaded at the address they were linked for are used.
//!
//! Except the functions the new patch keeps on old code for a layout change (and the unchanged code
//! it carries because it leads to them): an earlier patch's copy of one was built for the layout
//! that patch had, and its callers (that patch's frames, the image's entry it was redirected to)
//! hand it values of that layout. Sent on to the new version, it would hand them to code built for
//! another; it keeps its code, as the image's entry keeps the image's.

use crate::index::BaseKind;
use crate::plan::base::BaseImage;
use crate::plan::entry;
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Endianness, Object, ObjectSymbol, SymbolKind};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// What chaining found.
#[derive(Debug, Default)]
pub struct Chain {
    /// `(entry in an earlier patch, where it now goes)`.
    pub detours: Vec<(u64, u64)>,
    /// Functions of earlier patches whose entry cannot hold a jump (they keep their code).
    pub unfit: Vec<String>,
}

/// Detours for the functions of earlier patches loaded in the process (`loaded`: start, length,
/// as the process reported them). `newest` maps a mangled name to its entry in the new patch;
/// the functions named in `kept` keep their code (see the module's doc).
pub fn earlier_patches(
    patch_dir: &Path,
    loaded: &[(u64, u64, PathBuf)],
    newest: &HashMap<&str, u64>,
    kept: &HashSet<&str>,
    image: &BaseImage<'_>,
) -> Chain {
    let mut chain = Chain::default();
    let Ok(entries) = std::fs::read_dir(patch_dir) else { return chain };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "so") {
            continue;
        }
        let Ok(data) = std::fs::read(&path) else { continue };
        let Ok(file) = ElfFile64::<Endianness>::parse(&data[..]) else { continue };
        let endian = file.endian();
        let Some(start) = file
            .elf_program_headers()
            .iter()
            .find(|p| p.p_type(endian) == object::elf::PT_LOAD)
            .map(|p| p.p_vaddr(endian))
        else {
            continue;
        };
        if !loaded.iter().any(|&(s, _, _)| s == start) {
            continue; // not (or no longer) in the process
        }
        for sym in file.symbols() {
            if sym.kind() != SymbolKind::Text || sym.size() == 0 {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            let at = start + sym.address();
            let Some(to) = destination(name, newest, kept, image) else { continue };
            if to == at {
                continue;
            }
            let fits = code_at(&file, &data, sym.address(), sym.size())
                .is_some_and(|(code, after)| entry::check(code, after).is_ok());
            if fits {
                chain.detours.push((at, to));
            } else {
                chain.unfit.push(crate::map::read::demangle(name));
            }
        }
    }
    chain.detours.sort_unstable();
    chain.detours.dedup_by_key(|d| d.0);
    chain
}

/// Where an earlier patch's function `name` now goes: its version in the new patch, else the
/// image's (an edit reverted); `None` when it keeps its code — kept for a layout change, or added
/// by that patch and gone since (nothing calls it anew).
fn destination(
    name: &str,
    newest: &HashMap<&str, u64>,
    kept: &HashSet<&str>,
    image: &BaseImage<'_>,
) -> Option<u64> {
    if kept.contains(crate::diff::names::canonical(name)) || kept.contains(name) {
        return None;
    }
    match newest.get(name) {
        Some(&to) => Some(to),
        None => match image.lookup(name) {
            Some((s, _)) if s.kind == BaseKind::Function => Some(s.addr + image.load_bias),
            _ => None,
        },
    }
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
