//! What this process knows about its own code, to check requests against: its hot slots and its
//! functions.
//!
//! - **Hot slots** are the `__IPBP_SLOT` statics `#[ipbp::hot]` puts in hot functions (legacy
//!   mangling: the name contains `11__IPBP_SLOT`). A request may only store into one of these.
//! - **Functions** are the `STT_FUNC` symbols of the executable's `.symtab` plus those of every
//!   patch loaded so far. A slot or redirect may only point at the *entry* of one of them, and the
//!   entry of a function tells how long it is ([`function_at`]).
//!
//! The executable's table is read once, lazily, from `/proc/self/exe` (the file the process was
//! started from even after a rebuild replaced it on disk); [`warm`] does it on the listener thread
//! so the first patch does not pay for it. A stripped executable has no table: then nothing can be
//! checked and every patch is refused.

use crate::elf;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::sync::{OnceLock, RwLock};

/// A function: its entry address and its size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    pub start: u64,
    pub size: u64,
}

/// Functions sorted by entry address (one entry per address: aliases share it).
#[derive(Debug, Default, Clone)]
pub struct FunctionTable {
    entries: Vec<(u64, u64)>,
}

impl FunctionTable {
    /// The `STT_FUNC` symbols of `table` with a size, at `bias + value`.
    pub fn from_symbols(table: &elf::SymbolTable, bias: u64) -> FunctionTable {
        let entries = table
            .symbols()
            .filter(|s| s.kind == elf::STT_FUNC && s.shndx != 0 && s.value != 0 && s.size != 0)
            .filter_map(|s| Some((bias.checked_add(s.value)?, s.size)))
            .collect();
        FunctionTable::new(entries)
    }

    /// A table of `(entry, size)` pairs, in any order.
    pub fn new(mut entries: Vec<(u64, u64)>) -> FunctionTable {
        // Aliases: keep the largest size per entry.
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        entries.dedup_by_key(|e| e.0);
        FunctionTable { entries }
    }

    /// The function whose entry is exactly `addr`.
    pub fn entry(&self, addr: u64) -> Option<Function> {
        let i = self.entries.binary_search_by_key(&addr, |e| e.0).ok()?;
        Some(Function { start: addr, size: self.entries[i].1 })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The executable's hot slots (sorted) and functions.
struct ImageCode {
    slots: Vec<u64>,
    functions: FunctionTable,
}

static IMAGE: OnceLock<Result<ImageCode, String>> = OnceLock::new();

/// Functions of the patches loaded so far, one table per patch, by the patch's range: start →
/// (end, functions). A lookup finds the one patch whose range holds the address (patches never
/// overlap: each is loaded only where nothing was mapped), so it costs the same after the
/// thousandth patch as after the first.
static PATCHES: RwLock<BTreeMap<u64, (u64, FunctionTable)>> = RwLock::new(BTreeMap::new());

/// The function of a loaded patch whose entry is exactly `addr`.
fn patch_function_at(addr: u64) -> Option<Function> {
    let patches = PATCHES.read().unwrap_or_else(|p| p.into_inner());
    let (_, (end, table)) = patches.range(..=addr).next_back()?;
    if addr >= *end {
        return None;
    }
    table.entry(addr)
}

fn image() -> Result<&'static ImageCode, &'static str> {
    IMAGE.get_or_init(read_image).as_ref().map_err(String::as_str)
}

fn read_image() -> Result<ImageCode, String> {
    let bias = crate::image::main_program().map(|i| i.load_bias).unwrap_or(0);
    let file =
        std::fs::File::open("/proc/self/exe").map_err(|e| format!("cannot read the executable: {e}"))?;
    let read = |off: u64, len: usize| {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, off).ok().map(|()| buf)
    };
    let header = elf::header(&read(0, 64).ok_or("the executable is not an ELF file")?)?;
    let table = elf::SymbolTable::read(&header, &read)
        .map_err(|e| format!("the executable's symbol table: {e}"))?
        .ok_or("the executable has no symbol table (stripped?); its patches cannot be checked")?;
    let mut slots: Vec<u64> = table
        .symbols()
        .filter(|s| s.kind == elf::STT_OBJECT && s.shndx != 0 && is_slot_name(s.name))
        .filter_map(|s| bias.checked_add(s.value))
        .collect();
    slots.sort_unstable();
    slots.dedup();
    Ok(ImageCode { slots, functions: FunctionTable::from_symbols(&table, bias) })
}

/// `…11__IPBP_SLOT…`: the static `#[ipbp::hot]` declares (legacy mangling).
fn is_slot_name(name: &[u8]) -> bool {
    let mark = crate::marks::SLOT_MARK.as_bytes();
    name.windows(mark.len()).any(|w| w == mark)
}

/// Reads the executable's symbol table now, if not done yet.
pub fn warm() {
    let _ = image();
}

/// Whether the executable's table could be read; the reason when not.
pub fn available() -> Result<(), String> {
    image().map(|_| ()).map_err(str::to_string)
}

/// Whether `addr` is one of the executable's hot slots.
pub fn is_hot_slot(addr: u64) -> bool {
    image().is_ok_and(|i| i.slots.binary_search(&addr).is_ok())
}

/// How many hot slots the executable has.
pub fn hot_slot_count() -> usize {
    image().map_or(0, |i| i.slots.len())
}

/// The function of the executable or of a loaded patch whose entry is exactly `addr`.
pub fn function_at(addr: u64) -> Option<Function> {
    if let Some(f) = image().ok().and_then(|i| i.functions.entry(addr)) {
        return Some(f);
    }
    patch_function_at(addr)
}

/// Whether `addr` is the entry of a function of the executable or of a loaded patch.
pub fn is_function_entry(addr: u64) -> bool {
    function_at(addr).is_some()
}

/// The size of the function entered at `addr` (see [`function_at`]).
pub fn function_size(addr: u64) -> Option<u64> {
    function_at(addr).map(|f| f.size)
}

/// Whether `addr` is the entry of a function of the executable itself (not of a patch).
pub fn is_image_function(addr: u64) -> bool {
    image().is_ok_and(|i| i.functions.entry(addr).is_some())
}

/// Whether `addr` is the entry of a function of a loaded patch.
pub fn is_patch_function(addr: u64) -> bool {
    patch_function_at(addr).is_some()
}

/// From the lowest start to the highest end of the patches loaded, if any: ipbp's patch region,
/// which holds nothing but patches unless the program mapped something into a gap between two.
pub fn patch_span() -> Option<(u64, u64)> {
    let patches = PATCHES.read().unwrap_or_else(|p| p.into_inner());
    let (&start, _) = patches.first_key_value()?;
    let (_, &(end, _)) = patches.last_key_value()?;
    Some((start, end))
}

/// Adds the functions of a patch that was just loaded at `[start, start + len)` (those outside
/// its range are not its functions and are left out).
pub(crate) fn add_patch(start: u64, len: u64, functions: FunctionTable) {
    let end = start.saturating_add(len);
    let inside =
        functions.entries.into_iter().filter(|&(a, size)| a >= start && a.saturating_add(size) <= end);
    let table = FunctionTable { entries: inside.collect() };
    PATCHES.write().unwrap_or_else(|p| p.into_inner()).insert(start, (end, table));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_keep_one_entry_and_only_entries_match() {
        let t = FunctionTable::new(vec![(0x2000, 16), (0x1000, 8), (0x1000, 32)]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.entry(0x1000), Some(Function { start: 0x1000, size: 32 }));
        assert_eq!(t.entry(0x1007), None);
        assert_eq!(t.entry(0x2000).map(|f| f.size), Some(16));
    }

    #[test]
    fn slot_names_are_recognised() {
        assert!(is_slot_name(b"_ZN7counter4tick11__IPBP_SLOT17h0123456789abcdefE"));
        assert!(!is_slot_name(b"_ZN7counter5TICKS17h0123456789abcdefE"));
    }

    #[test]
    fn this_test_binary_has_functions_and_statics_are_not_entries() {
        available().unwrap();
        let f = this_test_binary_has_functions_and_statics_are_not_entries as fn() as usize as u64;
        let entry = function_at(f).expect("a test function is an entry");
        assert!(entry.size > 0);
        assert!(!is_function_entry(f + 1));
        static PLAIN: u64 = 7;
        assert!(!is_function_entry(&PLAIN as *const u64 as u64));
        assert!(!is_hot_slot(&PLAIN as *const u64 as u64));
    }
}
