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

const MAGIC: &[u8; 8] = b"IPBPIDX1";
const TABLES: usize = 7;
const HEADER: usize = 16 + TABLES * 16;

/// Table numbers in the header.
const STRINGS: usize = 0;
const SYMBOLS: usize = 1;
const IMPORTS: usize = 2;
const UNITS: usize = 3;
const GLOBALS: usize = 4;
const REFS: usize = 5;
const FACTS: usize = 6;

const SYMBOL_SIZE: usize = 40;
const IMPORT_SIZE: usize = 16;
const UNIT_SIZE: usize = 48;
const GLOBAL_SIZE: usize = 24;
const REF_SIZE: usize = 16;
const FACT_SIZE: usize = 20;

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
    symbols: Vec<(u64, u32, u32, Symbol)>,
    imports: Vec<(u64, u32, u32)>,
    units: Vec<(u32, u32, u32, u32, u32, u128, u32)>,
    globals: Vec<(u64, u32, u32, u32, u32)>,
    refs: Vec<[u32; 4]>,
    facts: Vec<[u32; 5]>,
}

impl Writer {
    fn string(&mut self, s: &str) -> (u32, u32) {
        let at = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        (at, s.len() as u32)
    }

    pub fn symbol(&mut self, name: &str, s: Symbol) {
        let (at, len) = self.string(name);
        self.symbols.push((name_hash(name), at, len, s));
    }

    pub fn import(&mut self, name: &str) {
        let (at, len) = self.string(name);
        self.imports.push((name_hash(name), at, len));
    }

    /// Adds a unit; returns its number (for [`Writer::global`]).
    pub fn unit(&mut self, key: &str, member: &str, input: u32, hash: u128, flags: u32) -> u32 {
        let (k, kl) = self.string(key);
        let (m, ml) = self.string(member);
        self.units.push((k, kl, m, ml, input, hash, flags));
        self.units.len() as u32 - 1
    }

    pub fn global(&mut self, name: &str, unit: u32, section: u32) {
        let (at, len) = self.string(name);
        self.globals.push((name_hash(name), at, len, unit, section));
    }

    /// `from` (unit, section) refers to `to`.
    pub fn reference(&mut self, to: (u32, u32), from: (u32, u32)) {
        self.refs.push([to.0, to.1, from.0, from.1]);
    }

    /// A hot-point fact: kind and two locations (see [`crate::plan::graph::Fact`]).
    pub fn fact(&mut self, kind: u32, a: (u32, u32), b: (u32, u32)) {
        self.facts.push([kind, a.0, a.1, b.0, b.1]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.refs.sort_unstable();
        self.refs.dedup();
        self.symbols.sort_unstable_by_key(|s| (s.0, s.1));
        self.imports.sort_unstable_by_key(|s| (s.0, s.1));
        self.globals.sort_unstable_by_key(|s| (s.0, s.1));
        let mut tables: [Vec<u8>; TABLES] = Default::default();
        tables[STRINGS] = std::mem::take(&mut self.strings);
        for (h, at, len, s) in &self.symbols {
            let t = &mut tables[SYMBOLS];
            t.extend_from_slice(&h.to_le_bytes());
            t.extend_from_slice(&at.to_le_bytes());
            t.extend_from_slice(&len.to_le_bytes());
            t.extend_from_slice(&s.addr.to_le_bytes());
            t.extend_from_slice(&s.size.to_le_bytes());
            let kind = match s.kind {
                BaseKind::Function => 0u8,
                BaseKind::Data => 1,
                BaseKind::Tls => 2,
            };
            t.extend_from_slice(&[kind, s.local as u8, 0, 0, 0, 0, 0, 0]);
        }
        for (h, at, len) in &self.imports {
            let t = &mut tables[IMPORTS];
            t.extend_from_slice(&h.to_le_bytes());
            t.extend_from_slice(&at.to_le_bytes());
            t.extend_from_slice(&len.to_le_bytes());
        }
        for (k, kl, m, ml, input, hash, flags) in &self.units {
            let t = &mut tables[UNITS];
            for w in [k, kl, m, ml, input] {
                t.extend_from_slice(&w.to_le_bytes());
            }
            t.extend_from_slice(&hash.to_le_bytes());
            t.extend_from_slice(&flags.to_le_bytes());
            t.extend_from_slice(&[0u8; 8]);
        }
        for (h, at, len, unit, section) in &self.globals {
            let t = &mut tables[GLOBALS];
            t.extend_from_slice(&h.to_le_bytes());
            for w in [at, len, unit, section] {
                t.extend_from_slice(&w.to_le_bytes());
            }
        }
        for r in &self.refs {
            for w in r {
                tables[REFS].extend_from_slice(&w.to_le_bytes());
            }
        }
        for f in &self.facts {
            for w in f {
                tables[FACTS].extend_from_slice(&w.to_le_bytes());
            }
        }
        let mut out = Vec::with_capacity(HEADER + tables.iter().map(Vec::len).sum::<usize>());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&(TABLES as u32).to_le_bytes());
        let mut at = HEADER as u64;
        for t in &tables {
            out.extend_from_slice(&at.to_le_bytes());
            out.extend_from_slice(&(t.len() as u64).to_le_bytes());
            at += t.len() as u64;
        }
        for t in &tables {
            out.extend_from_slice(t);
        }
        out
    }
}

/// A read-only view of an index (mapped from disk, or built in memory).
#[derive(Clone, Copy)]
pub struct LinkIndex<'i> {
    data: &'i [u8],
    tables: [(usize, usize); TABLES],
}

impl<'i> LinkIndex<'i> {
    /// Checks the header and every table's bounds; the rest is read on demand.
    pub fn parse(data: &'i [u8]) -> crate::error::Result<Self> {
        if data.len() < HEADER || &data[..8] != MAGIC {
            crate::bail!("not an ipbp link index");
        }
        if u32::from_le_bytes(data[12..16].try_into().expect("a slice of exactly 4 bytes")) as usize != TABLES
        {
            crate::bail!("a link index of another version");
        }
        let word = |at: usize| {
            u64::from_le_bytes(data[at..at + 8].try_into().expect("a slice of exactly 8 bytes")) as usize
        };
        let mut tables = [(0, 0); TABLES];
        let sizes = [1, SYMBOL_SIZE, IMPORT_SIZE, UNIT_SIZE, GLOBAL_SIZE, REF_SIZE, FACT_SIZE];
        for (i, t) in tables.iter_mut().enumerate() {
            let (at, len) = (word(16 + i * 16), word(24 + i * 16));
            if at.checked_add(len).is_none_or(|end| end > data.len()) || len % sizes[i] != 0 {
                crate::bail!("link index table {i} is out of bounds");
            }
            *t = (at, len);
        }
        Ok(LinkIndex { data, tables })
    }

    fn table(&self, t: usize) -> &'i [u8] {
        let (at, len) = self.tables[t];
        &self.data[at..at + len]
    }

    fn string(&self, at: u32, len: u32) -> &'i str {
        let s = self.table(STRINGS);
        s.get(at as usize..at as usize + len as usize).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or("")
    }

    /// Records of `table` (each `size` bytes, sorted by a leading u64 hash) with this name.
    fn find(&self, table: usize, size: usize, name: &str) -> impl Iterator<Item = &'i [u8]> + '_ {
        let t = self.table(table);
        let count = t.len() / size;
        let hash = name_hash(name);
        let rec = move |i: usize| &t[i * size..(i + 1) * size];
        let h = |r: &[u8]| u64::from_le_bytes(r[..8].try_into().expect("a slice of exactly 8 bytes"));
        let start = {
            let (mut lo, mut hi) = (0, count);
            while lo < hi {
                let mid = (lo + hi) / 2;
                if h(rec(mid)) < hash {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        let name = name.to_string();
        (start..count).map(rec).take_while(move |r| h(r) == hash).filter(move |r| {
            let at = u32::from_le_bytes(r[8..12].try_into().expect("a slice of exactly 4 bytes"));
            let len = u32::from_le_bytes(r[12..16].try_into().expect("a slice of exactly 4 bytes"));
            self.string(at, len) == name
        })
    }

    /// Every definition of `name` in the executable.
    pub fn symbols(&self, name: &str) -> impl Iterator<Item = Symbol> + '_ {
        self.find(SYMBOLS, SYMBOL_SIZE, name).map(decode_symbol)
    }

    /// Every symbol of the executable, with its name (for the rare questions not asked by name).
    pub fn all_symbols(&self) -> impl Iterator<Item = (&'i str, Symbol)> + '_ {
        self.table(SYMBOLS).chunks_exact(SYMBOL_SIZE).map(|r| {
            let w =
                |a: usize| u32::from_le_bytes(r[a..a + 4].try_into().expect("a slice of exactly 4 bytes"));
            (self.string(w(8), w(12)), decode_symbol(r))
        })
    }

    pub fn imports(&self, name: &str) -> bool {
        self.find(IMPORTS, IMPORT_SIZE, name).next().is_some()
    }

    pub fn units(&self) -> impl Iterator<Item = Unit<'i>> + '_ {
        self.table(UNITS).chunks_exact(UNIT_SIZE).map(|r| {
            let w =
                |a: usize| u32::from_le_bytes(r[a..a + 4].try_into().expect("a slice of exactly 4 bytes"));
            Unit {
                key: self.string(w(0), w(4)),
                member: self.string(w(8), w(12)),
                input: w(16),
                hash: u128::from_le_bytes(r[20..36].try_into().expect("a slice of exactly 16 bytes")),
                flags: w(36),
            }
        })
    }

    /// The unit (its number in [`LinkIndex::units`]) and section defining global `name`.
    pub fn global(&self, name: &str) -> Option<(u32, u32)> {
        self.find(GLOBALS, GLOBAL_SIZE, name).next().map(|r| {
            let w =
                |a: usize| u32::from_le_bytes(r[a..a + 4].try_into().expect("a slice of exactly 4 bytes"));
            (w(16), w(20))
        })
    }
}

fn decode_symbol(r: &[u8]) -> Symbol {
    let u = |a: usize| u64::from_le_bytes(r[a..a + 8].try_into().expect("a slice of exactly 8 bytes"));
    Symbol {
        addr: u(16),
        size: u(24),
        kind: match r[32] {
            0 => BaseKind::Function,
            2 => BaseKind::Tls,
            _ => BaseKind::Data,
        },
        local: r[33] != 0,
    }
}

impl LinkIndex<'_> {
    /// Who refers to section `section` of unit `unit`: (unit, section) pairs.
    pub fn referrers(&self, unit: u32, section: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        let t = self.table(REFS);
        let count = t.len() / REF_SIZE;
        let word = move |i: usize, k: usize| {
            u32::from_le_bytes(t[i * REF_SIZE + k * 4..][..4].try_into().expect("a slice of exactly 4 bytes"))
        };
        let key = (unit, section);
        let (mut lo, mut hi) = (0, count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if (word(mid, 0), word(mid, 1)) < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        (lo..count)
            .take_while(move |&i| (word(i, 0), word(i, 1)) == key)
            .map(move |i| (word(i, 2), word(i, 3)))
    }

    /// Every hot-point fact: kind and two (unit, section) locations.
    pub fn facts(&self) -> impl Iterator<Item = (u32, (u32, u32), (u32, u32))> + '_ {
        self.table(FACTS).chunks_exact(FACT_SIZE).map(|r| {
            let w = |k: usize| {
                u32::from_le_bytes(r[k * 4..k * 4 + 4].try_into().expect("a slice of exactly 4 bytes"))
            };
            (w(0), (w(1), w(2)), (w(3), w(4)))
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
}
