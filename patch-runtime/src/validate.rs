//! Checks an `apply` request against what the process knows, before anything changes.
//!
//! Address ranges are not enough: a "slot" in plain data would overwrite a static, one in RELRO or
//! in the middle of a function would crash the program. So a slot must be one of the
//! executable's own hot slots, and every address a slot or redirect points to must be the entry of
//! a function — of the executable, of a patch loaded earlier, or of the patch being applied (its
//! sealed copy's symbol table). Ledger entries must lie inside the new patch (statics) or the TLS
//! reserve (thread-locals), and the process's `hello` reply must stay far below what ipbp-ld
//! accepts, so that a flood of entries cannot make the process unpatchable.

use crate::detour::JUMP_LEN;
use crate::protocol::{Apply, LedgerEntry, MAX_MESSAGE};
use crate::symbols::{self, FunctionTable};

/// Largest patch range accepted (patches are kilobytes to a few megabytes).
pub const MAX_RANGE: u64 = 1 << 30;

/// Longest ledger name (a mangled symbol name).
pub const MAX_NAME: usize = 4096;

/// The `hello` reply after this request must stay below this (a quarter of [`MAX_MESSAGE`]).
pub const MAX_HELLO: usize = MAX_MESSAGE / 4;

/// The shape of the request on its own: the range, the ledger entries, no duplicates.
/// `new_range` is the new patch's `(start, len)`, if it brings one.
pub fn shape(req: &Apply, new_range: Option<(u64, u64)>) -> Result<(), String> {
    if let Some((start, len)) = new_range {
        if len == 0 || len > MAX_RANGE || start % 4096 != 0 || start.checked_add(len).is_none() {
            return Err(format!("range {start:#x} + {len:#x} is not a range a patch can use"));
        }
        if req.hash.is_none() {
            return Err("the request does not say the patch's hash".into());
        }
    }
    if let Some(file) = &req.file {
        if !file.is_absolute() {
            return Err(format!("patch file {} is not an absolute path", file.display()));
        }
    }
    // The summary goes to the program's stderr (with IPBP_LOG): no terminal escapes, no floods.
    if req.summary.len() > MAX_NAME || req.summary.chars().any(char::is_control) {
        return Err("the summary is not a short line of text".into());
    }
    let mut slots: Vec<u64> = req.slots.iter().map(|s| s.0).collect();
    slots.sort_unstable();
    if let Some(w) = slots.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("slot {:#x} is named twice", w[0]));
    }
    let mut froms: Vec<u64> = req.redirects.iter().map(|r| r.0).collect();
    froms.sort_unstable();
    if let Some(w) = froms.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("redirect from {:#x} is named twice", w[0]));
    }
    let mut entries: Vec<u64> = req.detours.iter().map(|r| r.0).collect();
    entries.sort_unstable();
    if let Some(w) = entries.windows(2).find(|w| w[1] < w[0].saturating_add(JUMP_LEN as u64)) {
        return Err(format!("detours at {:#x} and {:#x} overlap", w[0], w[1]));
    }
    // What the program is told about the patch goes to its `on_patch` callbacks.
    let names = req.changed.iter().chain(&req.added).chain(&req.not_redirected);
    if names.clone().count() > 100_000
        || names.clone().any(|n| n.len() > MAX_NAME || n.chars().any(char::is_control))
    {
        return Err("the lists of changed functions are not names".into());
    }
    for e in &req.data {
        check_name(e)?;
        let inside = new_range.is_some_and(|(start, len)| {
            e.addr >= start && e.addr.checked_add(e.size).is_some_and(|end| end <= start + len)
        });
        if !inside {
            return Err(format!("new static {} at {:#x} is not inside the new patch", e.name, e.addr));
        }
    }
    for e in &req.tls {
        check_name(e)?;
        if e.addr.checked_add(e.size).is_none_or(|end| end > crate::tls::RESERVE_SIZE as u64) {
            return Err(format!("new thread-local {} does not fit in ipbp's TLS reserve", e.name));
        }
    }
    Ok(())
}

/// New thread-locals come with the patch that uses them, and none overlaps another (`existing`:
/// the ledger so far): two variables sharing reserve bytes would corrupt each other.
pub fn thread_locals(req: &Apply, existing: &[LedgerEntry]) -> Result<(), String> {
    if req.tls.is_empty() {
        return Ok(());
    }
    if req.file.is_none() {
        return Err("new thread-locals without a patch that uses them".into());
    }
    let mut all: Vec<(u64, u64, &str)> = existing
        .iter()
        .chain(&req.tls)
        .map(|e| (e.addr, e.addr.saturating_add(e.size), e.name.as_str()))
        .collect();
    all.sort_unstable();
    if let Some(w) = all.windows(2).find(|w| w[1].0 < w[0].1) {
        return Err(format!("new thread-local {} overlaps {} in ipbp's TLS reserve", w[1].2, w[0].2));
    }
    Ok(())
}

fn check_name(e: &LedgerEntry) -> Result<(), String> {
    if e.name.is_empty()
        || e.name.len() > MAX_NAME
        || e.name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        let shown: String = e.name.chars().take(80).collect();
        return Err(format!("ledger name {shown:?} is not a symbol name"));
    }
    Ok(())
}

/// Every slot is a hot slot of the executable, every redirect starts at a function of it, and
/// everything they point to is the entry of a function of a patch — loaded earlier, or `new`, the
/// one being applied. (Not of the executable: ipbp-ld always installs patch code, and a slot
/// pointing at the executable's own function — its own owner, say — would loop forever. Going
/// back to the original code is done by leaving a slot or redirect out.)
pub fn targets(req: &Apply, new: Option<&FunctionTable>) -> Result<(), String> {
    symbols::available()?;
    let is_patch_entry =
        |addr: u64| symbols::is_patch_function(addr) || new.is_some_and(|t| t.entry(addr).is_some());
    let settling: std::collections::HashSet<u64> = req.settle.iter().map(|s| s.0).collect();
    for &(slot, value) in &req.slots {
        if !symbols::is_hot_slot(slot) {
            return Err(format!("{slot:#x} is not a hot slot of this program"));
        }
        if !is_patch_entry(value) {
            return Err(format!(
                "slot {slot:#x} would point at {value:#x}, which is not the entry of a function of a patch"
            ));
        }
    }
    for &(from, to) in &req.redirects {
        if !symbols::is_image_function(from) {
            return Err(format!("redirect from {from:#x}: not the entry of a function of this program"));
        }
        if !is_patch_entry(to) {
            return Err(format!("redirect to {to:#x}: not the entry of a function of a patch"));
        }
    }
    for &(from, to) in &req.detours {
        detour_entry(from)?;
        // An image entry leads to a patch. A function of an earlier patch leads to its newest
        // version, or back to the image's original when an edit was reverted — to an entry this
        // request does not redirect itself, so no jump can lead to another.
        let back_to_image = symbols::is_patch_function(from)
            && symbols::is_image_function(to)
            && !req.detours.iter().any(|&(f, _)| f == to);
        if !is_patch_entry(to) && !back_to_image {
            return Err(format!("detour to {to:#x}: not the entry of a function of a patch"));
        }
        // A live jump never leads to another jump (settled ones lead to at most one more).
        if crate::install::is_settled(to) || settling.contains(&to) {
            return Err(format!("detour to {to:#x}: that entry is sent on itself"));
        }
    }
    settles(req, &settling)
}

/// Every `settle` entry sends a function of an earlier patch on for good, to an *anchor*: the
/// entry of a function of the executable or of an earlier patch that is not settled itself — so
/// a call through an old copy takes at most two jumps (old copy, anchor's live jump) and no jump
/// can lead back to where it came from (live jumps lead to no jump at all, checked above).
fn settles(req: &Apply, settling: &std::collections::HashSet<u64>) -> Result<(), String> {
    for &(from, to) in &req.settle {
        if !symbols::is_patch_function(from) {
            return Err(format!("settle from {from:#x}: not the entry of a function of an earlier patch"));
        }
        detour_entry(from)?;
        if !symbols::is_image_function(to) && !symbols::is_patch_function(to) {
            return Err(format!(
                "settle to {to:#x}: not the entry of a function of this program or an earlier patch"
            ));
        }
        if crate::install::is_settled(to) || settling.contains(&to) {
            return Err(format!("settle to {to:#x}: that entry is settled itself"));
        }
    }
    Ok(())
}

/// A detour is written over the first [`JUMP_LEN`] bytes at `from`: it must be a function entry of
/// the executable or of a loaded patch, and those bytes must be the function's own — or, for a
/// shorter function, the `int3` padding after it (which nothing executes).
fn detour_entry(from: u64) -> Result<(), String> {
    let Some(size) = symbols::function_size(from) else {
        return Err(format!("detour from {from:#x}: not the entry of a function of this program"));
    };
    let len = JUMP_LEN as u64;
    // An entry detoured already holds the jump: it was checked when first written.
    if size < len && !crate::install::is_detoured(from) {
        let (end, pad) = (from + size, (len - size) as usize);
        // SAFETY: `from` is a function of the executable's symbol table, mapped executable; its
        // padding up to the next 16-byte boundary is in the same mapping.
        let bytes = unsafe { std::slice::from_raw_parts(end as *const u8, pad) };
        if end.next_multiple_of(16) < from + len || bytes.iter().any(|&b| b != 0xCC) {
            return Err(format!(
                "detour from {from:#x}: the function is {size} bytes and nothing but padding may follow it"
            ));
        }
    }
    Ok(())
}

/// The `hello` reply after applying `req` would stay within [`MAX_HELLO`]. `current` is the size
/// of today's reply.
pub fn reply_size(req: &Apply, current: usize) -> Result<(), String> {
    // Slots and redirects replace the current ones; ledger entries and the patch line add up.
    let line = |e: &LedgerEntry| e.name.len() + 48;
    let added = req.data.iter().chain(&req.tls).map(line).sum::<usize>()
        + req.file.as_ref().map_or(0, |f| f.as_os_str().len() + 48)
        + (req.slots.len() + req.redirects.len() + req.detours.len()) * 48;
    if current.saturating_add(added) > MAX_HELLO {
        return Err(format!(
            "the process's state would grow past {} KiB; restart it to patch it further",
            MAX_HELLO >> 10
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Apply {
        Apply {
            build_id: "ab".into(),
            file: Some("/p/patch-1.so".into()),
            range: Some((0x5000_0000_0000, 0x3000)),
            hash: Some(1),
            ..Apply::default()
        }
    }

    #[test]
    fn ranges_and_ledgers_are_bounded() {
        let r = Some((0x5000_0000_0000, 0x3000));
        assert_eq!(shape(&req(), r), Ok(()));
        assert!(shape(&req(), Some((u64::MAX - 0xfff, 0x2000))).is_err());
        assert!(shape(&req(), Some((0x5000_0000_0000, 0))).is_err());
        assert!(shape(&Apply { hash: None, ..req() }, r).is_err());
        let entry = |addr, size, name: &str| LedgerEntry { addr, size, name: name.into() };
        let data = vec![entry(0x5000_0000_1000, 8, "_ZN3app3NEW17h0E")];
        assert_eq!(shape(&Apply { data: data.clone(), ..req() }, r), Ok(()));
        for bad in
            [entry(0x1000, 8, "x"), entry(0x5000_0000_2ff9, 8, "x"), entry(0x5000_0000_1000, u64::MAX, "x")]
        {
            assert!(shape(&Apply { data: vec![bad], ..req() }, r).is_err());
        }
        assert!(shape(&Apply { data: vec![entry(0x5000_0000_1000, 8, "a b")], ..req() }, r).is_err());
        assert!(shape(&Apply { tls: vec![entry(8190, 8, "t")], ..req() }, r).is_err());
        assert!(shape(&Apply { tls: vec![entry(u64::MAX, 2, "t")], ..req() }, r).is_err());
        assert!(shape(&Apply { slots: vec![(8, 1), (8, 2)], ..req() }, r).is_err());
        assert!(shape(&Apply { summary: "1 changed\x1b[2J".into(), ..req() }, r).is_err());
        assert_eq!(shape(&Apply { summary: "1 changed, 2 added".into(), ..req() }, r), Ok(()));
        let t = |addr| entry(addr, 16, "t");
        assert_eq!(thread_locals(&Apply { tls: vec![t(16)], ..req() }, &[t(0)]), Ok(()));
        assert!(thread_locals(&Apply { tls: vec![t(8)], ..req() }, &[t(0)]).is_err());
        assert!(thread_locals(&Apply { tls: vec![t(32), t(40)], ..req() }, &[]).is_err());
        assert!(thread_locals(&Apply { tls: vec![t(32)], file: None, ..req() }, &[]).is_err());
        let flood = vec![entry(0, 0, &"n".repeat(1000)); 5000];
        assert!(reply_size(&Apply { tls: flood, ..req() }, 100).is_err());
        assert_eq!(reply_size(&req(), 100), Ok(()));
    }

    #[test]
    fn only_hot_slots_and_function_entries_are_targets() {
        static PLAIN: u64 = 0;
        let plain = &PLAIN as *const u64 as u64;
        let f = only_hot_slots_and_function_entries_are_targets as fn() as usize as u64;
        assert!(targets(&Apply { slots: vec![(plain, f)], ..req() }, None)
            .unwrap_err()
            .contains("not a hot slot"));
        assert!(targets(&Apply { redirects: vec![(f, f + 7)], ..req() }, None).is_err());
        assert!(targets(&Apply { redirects: vec![(f + 1, f)], ..req() }, None).is_err());
        assert!(targets(&Apply { redirects: vec![(f, f)], ..req() }, None)
            .unwrap_err()
            .contains("of a patch"));
        // A settled jump starts at a function of an earlier patch, never at the program's own.
        let g = ranges_and_ledgers_are_bounded as fn() as usize as u64;
        assert!(targets(&Apply { settle: vec![(f, g)], ..req() }, None)
            .unwrap_err()
            .contains("earlier patch"));
        let new = FunctionTable::new(vec![(0x5000_0000_0000, 64)]);
        assert_eq!(targets(&Apply { redirects: vec![(f, 0x5000_0000_0000)], ..req() }, Some(&new)), Ok(()));
    }
}
