//! Just enough ELF64 reading for the runtime's checks: the file header, program headers, the
//! dynamic section and the symbol table. Every offset and count comes from a file that may be
//! hostile, so every read is bounds-checked and every sum checked; a bad file is an `Err`, never a
//! panic.

/// Reads `len` bytes at `offset` of the file, or `None` past its end.
pub type ReadAt<'a> = &'a dyn Fn(u64, usize) -> Option<Vec<u8>>;

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o.checked_add(2)?)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o.checked_add(4)?)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o.checked_add(8)?)?.try_into().ok()?))
}

pub const ET_DYN: u16 = 3;
pub const PT_LOAD: u32 = 1;
pub const PT_DYNAMIC: u32 = 2;
pub const PT_INTERP: u32 = 3;
pub const PT_TLS: u32 = 7;
pub const SHT_SYMTAB: u32 = 2;
pub const STT_OBJECT: u8 = 1;
pub const STT_FUNC: u8 = 2;

#[cfg(target_arch = "x86_64")]
pub const EM_HOST: u16 = 62;
#[cfg(target_arch = "aarch64")]
pub const EM_HOST: u16 = 183;

/// The fields of the file header the runtime uses.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub e_type: u16,
    pub machine: u16,
    pub phoff: u64,
    pub phnum: u16,
    pub shoff: u64,
    pub shnum: u16,
}

/// Reads the header of a 64-bit little-endian ELF file (its first 64 bytes).
pub fn header(first: &[u8]) -> Result<Header, &'static str> {
    if first.len() < 64 || &first[..4] != b"\x7fELF" || first[4] != 2 || first[5] != 1 {
        return Err("not a 64-bit little-endian ELF file");
    }
    let h = (|| {
        if u16_at(first, 54)? != 56 || (u16_at(first, 58)? != 64 && u16_at(first, 60)? != 0) {
            return None;
        }
        Some(Header {
            e_type: u16_at(first, 16)?,
            machine: u16_at(first, 18)?,
            phoff: u64_at(first, 32)?,
            phnum: u16_at(first, 56)?,
            shoff: u64_at(first, 40)?,
            shnum: u16_at(first, 60)?,
        })
    })();
    h.ok_or("unexpected ELF header sizes")
}

#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub p_type: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

pub fn segments(bytes: &[u8], h: &Header) -> Result<Vec<Segment>, &'static str> {
    let table = usize::try_from(h.phoff)
        .ok()
        .and_then(|at| bytes.get(at..at.checked_add(h.phnum as usize * 56)?))
        .ok_or("program headers out of bounds")?;
    Ok(table
        .chunks_exact(56)
        .filter_map(|p| {
            Some(Segment {
                p_type: u32_at(p, 0)?,
                offset: u64_at(p, 8)?,
                vaddr: u64_at(p, 16)?,
                filesz: u64_at(p, 32)?,
                memsz: u64_at(p, 40)?,
            })
        })
        .collect())
}

/// The file bytes a segment holds, if they are inside the file.
pub fn segment_bytes<'a>(bytes: &'a [u8], s: &Segment) -> Option<&'a [u8]> {
    let at = usize::try_from(s.offset).ok()?;
    bytes.get(at..at.checked_add(usize::try_from(s.filesz).ok()?)?)
}

/// `(tag, value)` pairs of a dynamic section, up to `DT_NULL`.
pub fn dynamic_entries(dynamic: &[u8]) -> Vec<(u64, u64)> {
    dynamic
        .chunks_exact(16)
        .map(|d| (u64_at(d, 0).unwrap_or(0), u64_at(d, 8).unwrap_or(0)))
        .take_while(|&(tag, _)| tag != 0)
        .collect()
}

/// One `.symtab` entry.
#[derive(Debug, Clone, Copy)]
pub struct Symbol<'a> {
    pub name: &'a [u8],
    pub kind: u8,
    pub shndx: u16,
    pub value: u64,
    pub size: u64,
}

/// The `.symtab` and its string table, read from a file by `read`.
pub struct SymbolTable {
    symtab: Vec<u8>,
    strtab: Vec<u8>,
}

/// At most this much symbol table is read (a 125-crate service has ~2 MiB of it).
const MAX_TABLE: u64 = 256 << 20;

impl SymbolTable {
    /// The static symbol table of the file, `Ok(None)` when it has none (stripped).
    pub fn read(h: &Header, read: ReadAt<'_>) -> Result<Option<SymbolTable>, &'static str> {
        let shdrs = read(h.shoff, h.shnum as usize * 64).ok_or("section headers out of bounds")?;
        let section = |i: usize| -> Option<(u32, u64, u64, u32)> {
            let s = shdrs.get(i.checked_mul(64)?..i.checked_mul(64)?.checked_add(64)?)?;
            Some((u32_at(s, 4)?, u64_at(s, 24)?, u64_at(s, 32)?, u32_at(s, 40)?))
        };
        let Some((_, off, size, link)) =
            (0..h.shnum as usize).filter_map(section).find(|&(kind, ..)| kind == SHT_SYMTAB)
        else {
            return Ok(None);
        };
        let (_, str_off, str_size, _) = section(link as usize).ok_or("bad string table index")?;
        if size > MAX_TABLE || str_size > MAX_TABLE {
            return Err("symbol table too large");
        }
        let symtab = read(off, size as usize).ok_or("symbol table out of bounds")?;
        let strtab = read(str_off, str_size as usize).ok_or("string table out of bounds")?;
        Ok(Some(SymbolTable { symtab, strtab }))
    }

    pub fn symbols(&self) -> impl Iterator<Item = Symbol<'_>> {
        self.symtab.chunks_exact(24).filter_map(|s| {
            let name_at = u32_at(s, 0)? as usize;
            let rest = self.strtab.get(name_at..)?;
            let name = &rest[..rest.iter().position(|&b| b == 0)?];
            Some(Symbol {
                name,
                kind: s[4] & 0xf,
                shndx: u16_at(s, 6)?,
                value: u64_at(s, 8)?,
                size: u64_at(s, 16)?,
            })
        })
    }
}

/// `ReadAt` over bytes in memory.
pub fn in_memory(bytes: &[u8]) -> impl Fn(u64, usize) -> Option<Vec<u8>> + '_ {
    move |off, len| {
        let at = usize::try_from(off).ok()?;
        bytes.get(at..at.checked_add(len)?).map(<[u8]>::to_vec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(header(b"").is_err());
        assert!(header(&[0x7f; 64]).is_err());
        let mut h = vec![0u8; 64];
        h[..6].copy_from_slice(b"\x7fELF\x02\x01");
        h[54] = 56;
        h[32..40].copy_from_slice(&u64::MAX.to_le_bytes()); // phoff
        h[56] = 0xff; // phnum
        h[40..48].copy_from_slice(&(u64::MAX - 3).to_le_bytes()); // shoff
        h[60] = 0xff; // shnum
        h[58] = 64;
        let hd = header(&h).unwrap();
        assert!(segments(&h, &hd).is_err());
        assert!(SymbolTable::read(&hd, &in_memory(&h)).is_err());
        assert!(dynamic_entries(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn reads_this_test_binarys_symbols() {
        let bytes = std::fs::read("/proc/self/exe").unwrap();
        let h = header(&bytes).unwrap();
        let table = SymbolTable::read(&h, &in_memory(&bytes)).unwrap().expect("tests are not stripped");
        assert!(table.symbols().any(|s| s.kind == STT_FUNC && s.name.ends_with(b"main")));
    }
}
