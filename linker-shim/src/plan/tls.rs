//! Room for new thread-locals in ipbp's TLS reserve.
//!
//! A thread-local a patch adds cannot get a TLS block of its own: threads already running were
//! given their static TLS block when they started. The ipbp crate puts a zero-filled reserve in the
//! executable's TLS block (so every thread has one), and patches place new thread-locals in it,
//! one after the other. Where earlier patches put theirs is in the process's ledger (`hello`):
//! those keep their place, and new ones go after the last of them.
//!
//! Invariants: a placement lies inside the reserve, is aligned as its section asks (relative to
//! the reserve's start, which the ipbp crate aligns to 64 bytes), and overlaps
//! no earlier placement, of this patch or an earlier one. Offsets handed out are *module* offsets
//! (from the start of the executable's TLS block), like those of the image's own thread-locals.

use ipbp::protocol::LedgerEntry;
use std::collections::HashMap;

/// Why a new thread-local gets no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    /// The program was built without ipbp's reserve.
    NoReserve,
    /// The reserve (this many bytes) has no room left.
    Full(u64),
}

impl std::fmt::Display for NoRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoRoom::NoReserve => {
                f.write_str("a new thread-local needs ipbp's TLS reserve, which this program does not have")
            }
            NoRoom::Full(size) => write!(f, "ipbp's TLS reserve ({size} bytes) is full; restart the program"),
        }
    }
}

/// The reserve of one process, as this patch fills it.
pub struct TlsReserve<'p> {
    /// Module offset of the reserve and its size; `None` when the program has none.
    reserve: Option<(u64, u64)>,
    /// What earlier patches placed (offsets inside the reserve).
    earlier: &'p [LedgerEntry],
    /// What this patch places (offsets inside the reserve), in order.
    placed: Vec<LedgerEntry>,
    by_name: HashMap<String, u64>,
    /// First free byte (inside the reserve), after everything placed so far.
    cursor: u64,
}

impl<'p> TlsReserve<'p> {
    pub fn new(reserve: Option<(u64, u64)>, earlier: &'p [LedgerEntry]) -> TlsReserve<'p> {
        let cursor = earlier.iter().map(|e| e.addr + e.size).max().unwrap_or(0);
        TlsReserve { reserve, earlier, placed: Vec::new(), by_name: HashMap::new(), cursor }
    }

    /// Fails when the program has no reserve, before anything can be looked up in it.
    pub fn check(&self) -> Result<(), NoRoom> {
        self.reserve.map(|_| ()).ok_or(NoRoom::NoReserve)
    }

    /// The module offset of `name`, when an earlier patch or this one already placed it.
    pub fn placed(&self, name: &str) -> Option<u64> {
        let (start, _) = self.reserve?;
        let at = self
            .earlier
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.addr)
            .or_else(|| self.by_name.get(name).copied())?;
        Some(start + at)
    }

    /// Places a new thread-local of `size` bytes aligned to `align`: its module offset.
    pub fn place(&mut self, name: &str, align: u64, size: u64) -> Result<u64, NoRoom> {
        let (start, reserve_size) = self.reserve.ok_or(NoRoom::NoReserve)?;
        if let Some(at) = self.placed(name) {
            return Ok(at);
        }
        let at = self.cursor.next_multiple_of(align.max(1));
        if at + size > reserve_size {
            return Err(NoRoom::Full(reserve_size));
        }
        self.cursor = at + size;
        self.by_name.insert(name.to_string(), at);
        self.placed.push(LedgerEntry { addr: at, size, name: name.to_string() });
        Ok(start + at)
    }

    /// What this patch placed, for the process's ledger (offsets inside the reserve).
    pub fn into_entries(self) -> Vec<LedgerEntry> {
        self.placed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, addr: u64, size: u64) -> LedgerEntry {
        LedgerEntry { addr, size, name: name.to_string() }
    }

    #[test]
    fn places_one_after_the_other_as_module_offsets() {
        let mut r = TlsReserve::new(Some((0x100, 64)), &[]);
        assert_eq!(r.place("a", 8, 8), Ok(0x100));
        assert_eq!(r.place("b", 4, 4), Ok(0x108));
        assert_eq!(r.placed("a"), Some(0x100));
        assert_eq!(r.placed("b"), Some(0x108));
        assert_eq!(r.placed("c"), None);
        assert_eq!(r.into_entries(), vec![entry("a", 0, 8), entry("b", 8, 4)]);
    }

    #[test]
    fn aligns_each_placement() {
        let mut r = TlsReserve::new(Some((0, 64)), &[]);
        assert_eq!(r.place("byte", 1, 1), Ok(0));
        assert_eq!(r.place("word", 8, 8), Ok(8));
        assert_eq!(r.place("zero-align", 0, 2), Ok(16), "alignment 0 means 1");
        assert_eq!(r.place("wide", 16, 16), Ok(32));
    }

    #[test]
    fn placing_a_name_twice_keeps_its_place() {
        let mut r = TlsReserve::new(Some((0, 64)), &[]);
        assert_eq!(r.place("a", 8, 8), Ok(0));
        assert_eq!(r.place("a", 8, 8), Ok(0));
        assert_eq!(r.into_entries().len(), 1);
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let mut r = TlsReserve::new(Some((0x40, 16)), &[]);
        assert_eq!(r.place("a", 8, 8), Ok(0x40));
        assert_eq!(r.place("b", 8, 16), Err(NoRoom::Full(16)));
        // A refused placement takes no room: what still fits still goes in.
        assert_eq!(r.place("c", 8, 8), Ok(0x48));
        assert_eq!(r.place("d", 1, 1), Err(NoRoom::Full(16)));
        assert_eq!(
            NoRoom::Full(16).to_string(),
            "ipbp's TLS reserve (16 bytes) is full; restart the program"
        );
    }

    #[test]
    fn respects_what_earlier_patches_placed() {
        let earlier = [entry("old1", 0, 8), entry("old2", 16, 4)];
        let mut r = TlsReserve::new(Some((0x200, 64)), &earlier);
        assert_eq!(r.placed("old2"), Some(0x210));
        assert_eq!(r.place("old1", 8, 8), Ok(0x200), "an earlier patch's thread-local keeps its place");
        assert_eq!(r.place("new", 8, 8), Ok(0x218), "after the end of the last earlier one");
        assert_eq!(r.into_entries(), vec![entry("new", 24, 8)], "the ledger gets only the new one");
    }

    #[test]
    fn without_a_reserve_nothing_is_placed() {
        let earlier = [entry("old", 0, 8)];
        let mut r = TlsReserve::new(None, &earlier);
        assert_eq!(r.check(), Err(NoRoom::NoReserve));
        assert_eq!(r.placed("old"), None);
        assert_eq!(r.place("new", 8, 8), Err(NoRoom::NoReserve));
        assert!(NoRoom::NoReserve.to_string().contains("does not have"));
    }
}
