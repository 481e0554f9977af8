//! The link index: what a patch needs to know about one build, in a file that is read by mapping
//! it, not by parsing.
//!
//! A patch compares the build being linked with the build a process runs (its *base*) and binds
//! everything it does not carry to the base image. Reading the base executable's symbol table and
//! every workspace object's symbol table on each patch would cost time proportional to the
//! program; the index answers the same questions with binary searches. It is written once per
//! build of a program linking the runtime, after the link, by a detached child (see
//! [`crate::link`]); a build without one (a test harness, an older build) has it built by its
//! first patch, which keeps it for the next.
//!
//! It holds, sorted by a 64-bit hash of the name:
//! - the executable's symbols (address, size, kind, local), and the names it imports from shared
//!   libraries;
//! - the workspace units (objects and rlib members, with content hash and whether they mention
//!   hot points), in link order;
//! - which unit and section defines each global symbol of the workspace;
//! - who refers to each workspace section (unit and section of the referrer), so a patch can walk
//!   from the changed code up to the hot points that reach it;
//! - the hot-point facts of each unit (see [`crate::plan::graph::Fact`]).
//!
//! This module is the format only and imports no stage; [`crate::hotpatch::link_index`] builds
//! an index from a build's units and the planner's graph.

//!
//! The file is a [`Header`] (magic, version, and where each table is), then the tables. Every
//! record is a `#[repr(C)]` struct of `object`'s little-endian integers, which are byte arrays:
//! records have alignment 1, so a table is read in place wherever it starts in the file (the
//! tables follow the strings and are not padded).

use object::endian::{LittleEndian, U32, U64};
use object::pod::{bytes_of, bytes_of_slice, from_bytes, slice_from_all_bytes, Pod};

/// The index is little-endian on every host.
type Le = LittleEndian;
const LE: Le = LittleEndian;

const MAGIC: &[u8; 8] = b"IPBPIDX1";
const VERSION: u32 = 1;
const TABLES: usize = 7;

/// Table numbers in the header.
const STRINGS: usize = 0;
const SYMBOLS: usize = 1;
const IMPORTS: usize = 2;
const UNITS: usize = 3;
const GLOBALS: usize = 4;
const REFS: usize = 5;
const FACTS: usize = 6;

/// The start of the file.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Header {
    magic: [u8; 8],
    /// Always [`VERSION`]; not checked (the table count tells the layouts apart).
    version: U32<Le>,
    /// [`TABLES`]; an index with another count is of another version.
    tables: U32<Le>,
    directory: [Table; TABLES],
}

/// Where a table is: byte offset from the start of the file, and byte length.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Table {
    offset: U64<Le>,
    size: U64<Le>,
}

/// A name: its [`name_hash`] (the sort key of the tables holding names) and its bytes in the
/// strings table. An import is only its name.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Name {
    hash: U64<Le>,
    at: U32<Le>,
    len: U32<Le>,
}

/// A symbol of the executable.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct SymbolRecord {
    name: Name,
    addr: U64<Le>,
    size: U64<Le>,
    /// 0 function, 1 data, 2 TLS (anything else reads as data).
    kind: u8,
    /// 0 or 1.
    local: u8,
    pad: [u8; 6],
}

/// A workspace unit; the table is in link order.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct UnitRecord {
    key_at: U32<Le>,
    key_len: U32<Le>,
    member_at: U32<Le>,
    member_len: U32<Le>,
    input: U32<Le>,
    /// The xxh3-128 hash, low half first (as `u128::to_le_bytes` lays it out).
    hash_lo: U64<Le>,
    hash_hi: U64<Le>,
    flags: U32<Le>,
    pad: [u8; 8],
}

/// The unit and section defining a global symbol of the workspace.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct GlobalRecord {
    name: Name,
    unit: U32<Le>,
    section: U32<Le>,
}

/// Section `from_section` of unit `from_unit` refers to section `to_section` of unit `to_unit`;
/// the table is sorted by all four.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct RefRecord {
    to_unit: U32<Le>,
    to_section: U32<Le>,
    from_unit: U32<Le>,
    from_section: U32<Le>,
}

/// A hot-point fact: its kind and two (unit, section) locations.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct FactRecord {
    kind: U32<Le>,
    a_unit: U32<Le>,
    a_section: U32<Le>,
    b_unit: U32<Le>,
    b_section: U32<Le>,
}

// SAFETY: each is `#[repr(C)]` of byte arrays and `object`'s endian integers (byte arrays
// themselves), so it has alignment 1, no padding, and every bit pattern is a valid value.
unsafe impl Pod for Header {}
unsafe impl Pod for Table {}
unsafe impl Pod for Name {}
unsafe impl Pod for SymbolRecord {}
unsafe impl Pod for UnitRecord {}
unsafe impl Pod for GlobalRecord {}
unsafe impl Pod for RefRecord {}
unsafe impl Pod for FactRecord {}

/// The layouts of the format (sizes as written since the first index) and the alignment that
/// lets a table be read at any offset.
const _: () = {
    const fn layout<T>(size: usize) -> bool {
        size_of::<T>() == size && align_of::<T>() == 1
    }
    assert!(layout::<Header>(16 + TABLES * 16));
    assert!(layout::<Table>(16));
    assert!(layout::<Name>(16));
    assert!(layout::<SymbolRecord>(40));
    assert!(layout::<UnitRecord>(48));
    assert!(layout::<GlobalRecord>(24));
    assert!(layout::<RefRecord>(16));
    assert!(layout::<FactRecord>(20));
};

/// A record whose table is sorted by its name's hash.
trait Named {
    fn name(&self) -> &Name;
}

impl Named for Name {
    fn name(&self) -> &Name {
        self
    }
}

impl Named for SymbolRecord {
    fn name(&self) -> &Name {
        &self.name
    }
}

impl Named for GlobalRecord {
    fn name(&self) -> &Name {
        &self.name
    }
}

impl Name {
    /// The order of a table of names: by hash, then by where the name is in the strings.
    fn order(&self) -> (u64, u32) {
        (self.hash.get(LE), self.at.get(LE))
    }
}

impl RefRecord {
    fn words(&self) -> [u32; 4] {
        [self.to_unit, self.to_section, self.from_unit, self.from_section].map(|w| w.get(LE))
    }
}

/// What a symbol of the executable is, as the index records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseKind {
    Function,
    Data,
    Tls,
}

/// The name the index records the runtime's TLS reserve under (besides its own), so a patch finds
/// it without a scan.
pub const TLS_RESERVE: &str = "ipbp.tls.reserve";

/// A unit mentions `#[ipbp::hot]` slots, dispatch keys or `ipbp::call` instances.
pub const UNIT_HOT: u32 = 1;

pub fn name_hash(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

/// A symbol of the executable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbol {
    pub addr: u64,
    pub size: u64,
    pub kind: BaseKind,
    pub local: bool,
}

impl From<&SymbolRecord> for Symbol {
    fn from(r: &SymbolRecord) -> Self {
        Symbol {
            addr: r.addr.get(LE),
            size: r.size.get(LE),
            kind: match r.kind {
                0 => BaseKind::Function,
                2 => BaseKind::Tls,
                _ => BaseKind::Data,
            },
            local: r.local != 0,
        }
    }
}

/// A workspace unit of the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit<'i> {
    /// The pairing key (see [`crate::objects::units::unit_key`]).
    pub key: &'i str,
    /// The archive member name, or empty for an object file.
    pub member: &'i str,
    /// Index of the input (in the build's `.inputs` list) the unit comes from.
    pub input: u32,
    /// xxh3-128 of the unit's bytes.
    pub hash: u128,
    pub flags: u32,
}

/// Collects the tables of an index before writing it.
#[derive(Default)]
pub struct Writer {
    strings: Vec<u8>,
    symbols: Vec<SymbolRecord>,
    imports: Vec<Name>,
    units: Vec<UnitRecord>,
    globals: Vec<GlobalRecord>,
    refs: Vec<RefRecord>,
    facts: Vec<FactRecord>,
}

impl Writer {
    /// Adds `s` to the strings; returns where it is and its length.
    fn string(&mut self, s: &str) -> (U32<Le>, U32<Le>) {
        let at = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        (U32::new(LE, at), U32::new(LE, s.len() as u32))
    }

    fn name(&mut self, name: &str) -> Name {
        let (at, len) = self.string(name);
        Name { hash: U64::new(LE, name_hash(name)), at, len }
    }

    pub fn symbol(&mut self, name: &str, s: Symbol) {
        let name = self.name(name);
        let kind = match s.kind {
            BaseKind::Function => 0,
            BaseKind::Data => 1,
            BaseKind::Tls => 2,
        };
        self.symbols.push(SymbolRecord {
            name,
            addr: U64::new(LE, s.addr),
            size: U64::new(LE, s.size),
            kind,
            local: s.local.into(),
            pad: [0; 6],
        });
    }

    pub fn import(&mut self, name: &str) {
        let name = self.name(name);
        self.imports.push(name);
    }

    /// Adds a unit; returns its number (for [`Writer::global`]).
    pub fn unit(&mut self, key: &str, member: &str, input: u32, hash: u128, flags: u32) -> u32 {
        let (key_at, key_len) = self.string(key);
        let (member_at, member_len) = self.string(member);
        self.units.push(UnitRecord {
            key_at,
            key_len,
            member_at,
            member_len,
            input: U32::new(LE, input),
            hash_lo: U64::new(LE, hash as u64),
            hash_hi: U64::new(LE, (hash >> 64) as u64),
            flags: U32::new(LE, flags),
            pad: [0; 8],
        });
        self.units.len() as u32 - 1
    }

    pub fn global(&mut self, name: &str, unit: u32, section: u32) {
        let name = self.name(name);
        self.globals.push(GlobalRecord { name, unit: U32::new(LE, unit), section: U32::new(LE, section) });
    }

    /// `from` (unit, section) refers to `to`.
    pub fn reference(&mut self, to: (u32, u32), from: (u32, u32)) {
        self.refs.push(RefRecord {
            to_unit: U32::new(LE, to.0),
            to_section: U32::new(LE, to.1),
            from_unit: U32::new(LE, from.0),
            from_section: U32::new(LE, from.1),
        });
    }

    /// A hot-point fact: kind and two locations (see [`crate::plan::graph::Fact`]).
    pub fn fact(&mut self, kind: u32, a: (u32, u32), b: (u32, u32)) {
        self.facts.push(FactRecord {
            kind: U32::new(LE, kind),
            a_unit: U32::new(LE, a.0),
            a_section: U32::new(LE, a.1),
            b_unit: U32::new(LE, b.0),
            b_section: U32::new(LE, b.1),
        });
    }

    pub fn finish(mut self) -> Vec<u8> {
        // The records' integers are little-endian bytes, so they are sorted by their values.
        self.refs.sort_unstable_by_key(RefRecord::words);
        self.refs.dedup_by_key(|r| r.words());
        self.symbols.sort_unstable_by_key(|s| s.name.order());
        self.imports.sort_unstable_by_key(Name::order);
        self.globals.sort_unstable_by_key(|s| s.name.order());
        let mut tables: [&[u8]; TABLES] = Default::default();
        tables[STRINGS] = &self.strings;
        tables[SYMBOLS] = bytes_of_slice(&self.symbols);
        tables[IMPORTS] = bytes_of_slice(&self.imports);
        tables[UNITS] = bytes_of_slice(&self.units);
        tables[GLOBALS] = bytes_of_slice(&self.globals);
        tables[REFS] = bytes_of_slice(&self.refs);
        tables[FACTS] = bytes_of_slice(&self.facts);
        let mut header = Header {
            magic: *MAGIC,
            version: U32::new(LE, VERSION),
            tables: U32::new(LE, TABLES as u32),
            directory: [Table { offset: U64::default(), size: U64::default() }; TABLES],
        };
        let mut at = size_of::<Header>() as u64;
        for (entry, t) in header.directory.iter_mut().zip(&tables) {
            *entry = Table { offset: U64::new(LE, at), size: U64::new(LE, t.len() as u64) };
            at += t.len() as u64;
        }
        let mut out = Vec::with_capacity(at as usize);
        out.extend_from_slice(bytes_of(&header));
        for t in &tables {
            out.extend_from_slice(t);
        }
        out
    }
}

/// A read-only view of an index (mapped from disk, or built in memory).
#[derive(Clone, Copy)]
pub struct LinkIndex<'i> {
    strings: &'i [u8],
    symbols: &'i [SymbolRecord],
    imports: &'i [Name],
    units: &'i [UnitRecord],
    globals: &'i [GlobalRecord],
    refs: &'i [RefRecord],
    facts: &'i [FactRecord],
}

impl<'i> LinkIndex<'i> {
    /// Checks the header and every table's bounds; the rest is read on demand.
    pub fn parse(data: &'i [u8]) -> crate::error::Result<Self> {
        let header = match from_bytes::<Header>(data) {
            Ok((header, _)) if &header.magic == MAGIC => header,
            _ => crate::bail!("not an ipbp link index"),
        };
        if header.tables.get(LE) as usize != TABLES {
            crate::bail!("a link index of another version");
        }
        // Table `i`'s bytes: within the file, and a whole number of its records.
        let table = |i: usize| {
            let Table { offset, size } = header.directory[i];
            let (at, len) = (usize::try_from(offset.get(LE)).ok()?, usize::try_from(size.get(LE)).ok()?);
            data.get(at..at.checked_add(len)?)
        };
        fn records<T: Pod>(i: usize, bytes: Option<&[u8]>) -> crate::error::Result<&[T]> {
            match bytes.map(slice_from_all_bytes) {
                Some(Ok(records)) => Ok(records),
                _ => crate::bail!("link index table {i} is out of bounds"),
            }
        }
        Ok(LinkIndex {
            strings: records(STRINGS, table(STRINGS))?,
            symbols: records(SYMBOLS, table(SYMBOLS))?,
            imports: records(IMPORTS, table(IMPORTS))?,
            units: records(UNITS, table(UNITS))?,
            globals: records(GLOBALS, table(GLOBALS))?,
            refs: records(REFS, table(REFS))?,
            facts: records(FACTS, table(FACTS))?,
        })
    }

    fn string(&self, at: U32<Le>, len: U32<Le>) -> &'i str {
        let (at, len) = (at.get(LE) as usize, len.get(LE) as usize);
        self.strings.get(at..at + len).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or("")
    }

    /// The records of `table` (sorted by their names' hashes) with this name.
    fn find<T: Named>(&self, table: &'i [T], name: &str) -> impl Iterator<Item = &'i T> + '_ {
        let hash = name_hash(name);
        let start = table.partition_point(|r| r.name().hash.get(LE) < hash);
        let name = name.to_string();
        table[start..].iter().take_while(move |r| r.name().hash.get(LE) == hash).filter(move |r| {
            let n = r.name();
            self.string(n.at, n.len) == name
        })
    }

    /// Every definition of `name` in the executable.
    pub fn symbols(&self, name: &str) -> impl Iterator<Item = Symbol> + '_ {
        self.find(self.symbols, name).map(Symbol::from)
    }

    /// Every symbol of the executable, with its name (for the rare questions not asked by name).
    pub fn all_symbols(&self) -> impl Iterator<Item = (&'i str, Symbol)> + '_ {
        self.symbols.iter().map(|r| (self.string(r.name.at, r.name.len), Symbol::from(r)))
    }

    pub fn imports(&self, name: &str) -> bool {
        self.find(self.imports, name).next().is_some()
    }

    pub fn units(&self) -> impl Iterator<Item = Unit<'i>> + '_ {
        self.units.iter().map(|r| Unit {
            key: self.string(r.key_at, r.key_len),
            member: self.string(r.member_at, r.member_len),
            input: r.input.get(LE),
            hash: u128::from(r.hash_hi.get(LE)) << 64 | u128::from(r.hash_lo.get(LE)),
            flags: r.flags.get(LE),
        })
    }

    /// The unit (its number in [`LinkIndex::units`]) and section defining global `name`.
    pub fn global(&self, name: &str) -> Option<(u32, u32)> {
        self.find(self.globals, name).next().map(|r| (r.unit.get(LE), r.section.get(LE)))
    }

    /// Who refers to section `section` of unit `unit`: (unit, section) pairs.
    pub fn referrers(&self, unit: u32, section: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        let key = (unit, section);
        let to = |r: &RefRecord| (r.to_unit.get(LE), r.to_section.get(LE));
        let start = self.refs.partition_point(|r| to(r) < key);
        self.refs[start..]
            .iter()
            .take_while(move |r| to(r) == key)
            .map(|r| (r.from_unit.get(LE), r.from_section.get(LE)))
    }

    /// Every hot-point fact: kind and two (unit, section) locations.
    pub fn facts(&self) -> impl Iterator<Item = (u32, (u32, u32), (u32, u32))> + '_ {
        self.facts.iter().map(|r| {
            (r.kind.get(LE), (r.a_unit.get(LE), r.a_section.get(LE)), (r.b_unit.get(LE), r.b_section.get(LE)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_and_lookups_compare_names() {
        let mut w = Writer::default();
        let f = Symbol { addr: 0x1000, size: 16, kind: BaseKind::Function, local: false };
        let t = Symbol { addr: 0x20, size: 8, kind: BaseKind::Tls, local: true };
        w.symbol("main", f);
        w.symbol("dup", f);
        w.symbol("dup", t);
        w.symbol("tls", t);
        w.import("memcpy");
        let u = w.unit("app.cgu.rcgu.o", "", 3, 0xabc, UNIT_HOT);
        w.global("app::run", u, 7);
        w.reference((0, 7), (0, 9));
        w.reference((0, 7), (0, 4));
        w.reference((0, 5), (0, 7));
        w.fact(2, (0, 9), (0, 11));
        let bytes = w.finish();
        let ix = LinkIndex::parse(&bytes).unwrap();
        assert_eq!(ix.symbols("main").collect::<Vec<_>>(), vec![f]);
        assert_eq!(ix.symbols("dup").count(), 2);
        assert_eq!(ix.symbols("tls").next().unwrap().kind, BaseKind::Tls);
        assert_eq!(ix.symbols("nope").count(), 0);
        assert!(ix.imports("memcpy") && !ix.imports("main"));
        assert_eq!(ix.global("app::run"), Some((0, 7)));
        assert_eq!(ix.referrers(0, 7).collect::<Vec<_>>(), vec![(0, 4), (0, 9)]);
        assert_eq!(ix.referrers(0, 5).collect::<Vec<_>>(), vec![(0, 7)]);
        assert_eq!(ix.referrers(0, 6).count(), 0);
        assert_eq!(ix.facts().collect::<Vec<_>>(), vec![(2, (0, 9), (0, 11))]);
        let units: Vec<_> = ix.units().collect();
        assert_eq!(
            units,
            vec![Unit { key: "app.cgu.rcgu.o", member: "", input: 3, hash: 0xabc, flags: UNIT_HOT }]
        );
    }

    /// An index with every table non-empty and values that fill each field's high bytes.
    fn sample() -> Vec<u8> {
        let mut w = Writer::default();
        w.symbol(
            "main",
            Symbol { addr: 0x5555_0000_1000, size: 0x40, kind: BaseKind::Function, local: false },
        );
        w.symbol(
            "DATA",
            Symbol { addr: 0x0102_0304_0506_0708, size: 0x1122, kind: BaseKind::Data, local: true },
        );
        w.symbol(TLS_RESERVE, Symbol { addr: 0x20, size: 0x8000, kind: BaseKind::Tls, local: false });
        w.import("memcpy");
        w.import("pthread_create");
        let a = w.unit(
            "app.app.1a2b-cgu.0.rcgu.o",
            "",
            0x0a0b_0c0d,
            0x0011_2233_4455_6677_8899_aabb_ccdd_eeff,
            UNIT_HOT,
        );
        let b = w.unit("dep.cgu.rcgu.o", "libdep.rlib(dep.cgu.rcgu.o)", 2, u128::MAX - 1, 0);
        w.global("app::run", a, 0x0102_0304);
        w.global("dep::helper", b, 9);
        w.reference((b, 9), (a, 0x7f00_0001));
        w.reference((a, 3), (b, 4));
        w.reference((a, 3), (a, 1));
        w.reference((a, 3), (b, 4));
        w.fact(1, (a, 3), (b, 9));
        w.fact(0xdead_beef, (b, 0xffff_ffff), (a, 0));
        w.finish()
    }

    /// `sample()` as written by the byte-offset encoder (before the record structs), so the format
    /// stays byte-identical and indexes written by earlier builds still read.
    const SAMPLE_FIXTURE: &str = concat!(
        "495042504944583101000000070000008000000000000000810000000000000001010000000000007800000000000000",
        "7901000000000000200000000000000099010000000000006000000000000000f9010000000000003000000000000000",
        "29020000000000003000000000000000590200000000000028000000000000006d61696e44415441697062702e746c73",
        "2e726573657276656d656d637079707468726561645f6372656174656170702e6170702e316132622d6367752e302e72",
        "6367752e6f6465702e6367752e726367752e6f6c69626465702e726c6962286465702e6367752e726367752e6f296170",
        "703a3a72756e6465703a3a68656c706572e55ef57acb89de490000000004000000001000005555000040000000000000",
        "00000000000000000062426f3313f7e18808000000100000002000000000000000008000000000000002000000000000",
        "00e9f01b03ef74b0f20400000004000000080706050403020122110000000000000101000000000000e26edf42c0a5b9",
        "071800000006000000fd5f647d41cab41d1e0000000e0000002c0000001900000045000000000000000d0c0b0affeedd",
        "ccbbaa99887766554433221100010000000000000000000000450000000e000000530000001b00000002000000feffff",
        "ffffffffffffffffffffffffff00000000000000000000000078e08bfb0eb1f73b760000000b00000001000000090000",
        "00adba9c76fc28f4e66e0000000800000000000000040302010000000003000000000000000100000000000000030000",
        "0001000000040000000100000009000000000000000100007f0100000000000000030000000100000009000000efbead",
        "de01000000ffffffff0000000000000000",
    );

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn the_format_is_byte_identical_to_the_fixture() {
        assert_eq!(sample(), unhex(SAMPLE_FIXTURE));
    }

    #[test]
    fn the_fixture_reads_back() {
        let bytes = unhex(SAMPLE_FIXTURE);
        let ix = LinkIndex::parse(&bytes).unwrap();
        assert_eq!(
            ix.symbols("DATA").collect::<Vec<_>>(),
            vec![Symbol { addr: 0x0102_0304_0506_0708, size: 0x1122, kind: BaseKind::Data, local: true }]
        );
        assert_eq!(ix.symbols(TLS_RESERVE).next().unwrap().kind, BaseKind::Tls);
        assert_eq!(ix.all_symbols().count(), 3);
        assert!(ix.all_symbols().any(|(n, s)| n == "main" && s.addr == 0x5555_0000_1000 && s.size == 0x40));
        assert!(ix.imports("pthread_create") && ix.imports("memcpy") && !ix.imports("main"));
        assert_eq!(
            ix.units().collect::<Vec<_>>(),
            vec![
                Unit {
                    key: "app.app.1a2b-cgu.0.rcgu.o",
                    member: "",
                    input: 0x0a0b_0c0d,
                    hash: 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff,
                    flags: UNIT_HOT
                },
                Unit {
                    key: "dep.cgu.rcgu.o",
                    member: "libdep.rlib(dep.cgu.rcgu.o)",
                    input: 2,
                    hash: u128::MAX - 1,
                    flags: 0
                },
            ]
        );
        assert_eq!(ix.global("app::run"), Some((0, 0x0102_0304)));
        assert_eq!(ix.global("dep::helper"), Some((1, 9)));
        assert_eq!(ix.referrers(0, 3).collect::<Vec<_>>(), vec![(0, 1), (1, 4)]);
        assert_eq!(ix.referrers(1, 9).collect::<Vec<_>>(), vec![(0, 0x7f00_0001)]);
        assert_eq!(
            ix.facts().collect::<Vec<_>>(),
            vec![(1, (0, 3), (1, 9)), (0xdead_beef, (1, 0xffff_ffff), (0, 0))]
        );
    }

    #[test]
    fn damaged_indexes_are_refused() {
        assert!(LinkIndex::parse(b"garbage").is_err());
        let mut bytes = Writer::default().finish();
        bytes[16] = 0xff; // a table offset beyond the end
        assert!(LinkIndex::parse(&bytes).is_err());
    }

    #[test]
    fn records_keep_the_sizes_of_the_format() {
        // The sizes the byte-offset encoder wrote; alignment 1 lets a table start anywhere.
        assert_eq!(size_of::<Header>(), 16 + 7 * 16);
        assert_eq!(size_of::<SymbolRecord>(), 40);
        assert_eq!(size_of::<Name>(), 16); // an import
        assert_eq!(size_of::<UnitRecord>(), 48);
        assert_eq!(size_of::<GlobalRecord>(), 24);
        assert_eq!(size_of::<RefRecord>(), 16);
        assert_eq!(size_of::<FactRecord>(), 20);
        for align in [
            align_of::<Header>(),
            align_of::<SymbolRecord>(),
            align_of::<Name>(),
            align_of::<UnitRecord>(),
            align_of::<GlobalRecord>(),
            align_of::<RefRecord>(),
            align_of::<FactRecord>(),
        ] {
            assert_eq!(align, 1);
        }
    }

    #[test]
    fn an_index_reads_at_any_address() {
        let bytes = unhex(SAMPLE_FIXTURE);
        let mut buffer = vec![0u8; bytes.len() + 8];
        for shift in 0..8 {
            buffer[shift..shift + bytes.len()].copy_from_slice(&bytes);
            let ix = LinkIndex::parse(&buffer[shift..shift + bytes.len()]).unwrap();
            assert_eq!(ix.global("dep::helper"), Some((1, 9)));
            assert_eq!(ix.units().count(), 2);
        }
    }

    #[test]
    fn damaged_headers_and_tables_are_refused() {
        let good = unhex(SAMPLE_FIXTURE);
        // Cut short anywhere: the last table ends the file, so every cut loses part of one.
        for len in 0..good.len() {
            assert!(LinkIndex::parse(&good[..len]).is_err(), "cut at {len}");
        }
        let patched = |at: usize, value: u64| {
            let mut bytes = good.clone();
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
            LinkIndex::parse(&bytes).is_err()
        };
        let mut magic = good.clone();
        magic[0] ^= 1;
        assert!(LinkIndex::parse(&magic).is_err());
        let mut count = good.clone();
        count[12] = 8;
        assert!(LinkIndex::parse(&count).is_err());
        for table in 0..TABLES {
            let (offset, size) = (16 + table * 16, 24 + table * 16);
            assert!(patched(offset, u64::MAX), "table {table}: offset overflows");
            assert!(patched(size, u64::MAX), "table {table}: size overflows");
            assert!(patched(offset, good.len() as u64), "table {table}: starts at the end");
            if table != STRINGS {
                // A size that is not a whole number of records.
                let size_now = u64::from_le_bytes(good[size..size + 8].try_into().unwrap());
                assert!(patched(size, size_now - 1), "table {table}: a partial record");
            }
        }
    }

    #[test]
    fn any_byte_changed_reads_without_panicking() {
        let good = unhex(SAMPLE_FIXTURE);
        for at in 0..good.len() {
            for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut bytes = good.clone();
                bytes[at] = value;
                let Ok(ix) = LinkIndex::parse(&bytes) else { continue };
                for name in ["main", "DATA", TLS_RESERVE, "memcpy", "app::run", "dep::helper"] {
                    let _ = (ix.symbols(name).count(), ix.imports(name), ix.global(name));
                }
                let _ = (ix.all_symbols().count(), ix.units().count(), ix.facts().count());
                let _ = (ix.referrers(0, 3).count(), ix.referrers(1, 9).count());
            }
        }
    }
}
