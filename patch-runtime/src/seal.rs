//! The program loads exactly the bytes ipbp-ld built for it.
//!
//! A patch file on disk could be changed after it was checked (or after it was loaded: the
//! loader maps it from the file, and shared file mappings follow later writes). So the runtime
//! copies the file into a memfd, seals it (`F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK`, then
//! `F_SEAL_SEAL`), and only then checks it — on the sealed bytes: the hash the request names, and
//! that loading it can do nothing but map it in the planned range (see [`check`]). The loader then
//! opens `/proc/<pid>/fd/<memfd>`, which no one can change (by the numeric pid, not `/proc/self`:
//! a debugger reading the loader's list at that moment opens the name in its own process, where
//! `/proc/self/fd/<n>` is one of *its* descriptors — gdb 13 blocked forever reading its own pipe).
//!
//! Once loaded, the runtime names the object by the patch file and closes the descriptor
//! ([`Sealed::close`]): a patch keeps no descriptor. Sealing still holds then: the loader's
//! mappings keep the sealed inode alive, its seals belong to the inode, not to a descriptor, and
//! with the last descriptor gone nothing can open it again (its `/proc/<pid>/fd` entry is gone;
//! `map_files` needs `CAP_SYS_ADMIN`).

use crate::elf::{self, Segment};
use crate::symbols::FunctionTable;
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// No patch is anywhere near this large (a 100-function patch is ~100 KiB).
const MAX_PATCH: u64 = 256 << 20;

/// A patch copied into a sealed memfd and checked, ready to load.
pub struct Sealed {
    fd: OwnedFd,
    /// The functions its `.symtab` names, at their addresses once loaded.
    pub functions: FunctionTable,
}

impl Sealed {
    /// The name to give the loader: the sealed copy, not the file, by a path any process that may
    /// trace this one can open as well (debuggers read the loader's list and open its names).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd()))
    }

    /// Keeps the descriptor open for good (the loaded object's name still refers to it).
    pub fn keep(self) -> FunctionTable {
        let _ = self.fd.into_raw_fd();
        self.functions
    }

    /// Closes the descriptor, once the loaded object no longer goes by [`Sealed::path`]: its
    /// mappings keep the sealed file alive, seals and all.
    pub fn close(self) -> FunctionTable {
        drop(self.fd);
        self.functions
    }
}

/// The xxh3-128 hash of a patch file's bytes, as requests carry it.
pub fn hash(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

/// Copies `file` into a sealed memfd and checks the sealed bytes: their hash is `expected`, and
/// they are a patch fit to load at `[start, start + len)` ([`check`]).
pub fn seal(file: &Path, start: u64, len: u64, expected: u128) -> Result<Sealed, String> {
    let mut src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let meta = src.metadata().map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if !meta.is_file() || meta.len() > MAX_PATCH {
        return Err(format!("{} is not a patch file", file.display()));
    }
    let fd = memfd()?;
    let mut copy = File::from(fd);
    let mut buf = Vec::with_capacity(meta.len() as usize);
    (&mut src)
        .take(MAX_PATCH + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if buf.len() as u64 > MAX_PATCH {
        return Err(format!("{} is not a patch file", file.display()));
    }
    copy.write_all(&buf).map_err(|e| format!("cannot copy the patch into memory: {e}"))?;
    drop(buf);
    let fd = OwnedFd::from(copy);
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a memfd we own; no writable mapping of it exists.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(format!("cannot seal the patch's copy: {}", std::io::Error::last_os_error()));
    }
    let functions = with_mapped(&fd, |bytes| {
        let bad = |why: &str| format!("{} is not a valid patch: {why}", file.display());
        let actual = hash(bytes);
        if actual != expected {
            return Err(bad(&format!(
                "its hash is {actual:032x}, the request says {expected:032x} (changed after it was built?)"
            )));
        }
        check(bytes, start, len).map_err(&bad)?;
        let header = elf::header(bytes).map_err(&bad)?;
        let table = elf::SymbolTable::read(&header, &elf::in_memory(bytes)).map_err(&bad)?;
        Ok(table.map(|t| FunctionTable::from_symbols(&t, start)).unwrap_or_default())
    })?;
    Ok(Sealed { fd, functions })
}

fn memfd() -> Result<OwnedFd, String> {
    let name = CString::new("ipbp-patch").expect("no NUL");
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // MFD_EXEC: kernels with `vm.memfd_noexec` would otherwise make it non-executable; older
    // kernels do not know the flag (EINVAL) and allow executing memfds anyway.
    // SAFETY: memfd_create with a valid name.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), flags | libc::MFD_EXEC) };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(format!(
            "cannot create a memory file for the patch: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs `f` on the sealed file's bytes, mapped read-only.
fn with_mapped<T>(fd: &OwnedFd, f: impl FnOnce(&[u8]) -> Result<T, String>) -> Result<T, String> {
    let size =
        File::from(fd.try_clone().map_err(|e| e.to_string())?).metadata().map_err(|e| e.to_string())?.len()
            as usize;
    if size == 0 {
        return f(&[]);
    }
    // SAFETY: a private read-only mapping of a sealed memfd of `size` bytes: its contents cannot
    // change (F_SEAL_WRITE) nor shrink under us (F_SEAL_SHRINK), so reading it is sound.
    let at = unsafe {
        libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ, libc::MAP_PRIVATE, fd.as_raw_fd(), 0)
    };
    if at == libc::MAP_FAILED {
        return Err(format!("cannot map the patch's copy: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: see above; unmapped below, after the last use of the slice.
    let bytes = unsafe { std::slice::from_raw_parts(at as *const u8, size) };
    let result = f(bytes);
    // SAFETY: the mapping made above; `bytes` is not used after this.
    unsafe { libc::munmap(at, size) };
    result
}

#[cfg(target_arch = "x86_64")]
const R_GLOB_DAT: u32 = 6;
#[cfg(target_arch = "aarch64")]
const R_GLOB_DAT: u32 = 1025;
/// An absolute pointer to an import in the patch's data (ipbp-ld emits one per such pointer).
#[cfg(target_arch = "x86_64")]
const R_ABS64: u32 = 1;
#[cfg(target_arch = "aarch64")]
const R_ABS64: u32 = 257;

/// Dynamic tags ipbp-ld's patches use, plus harmless ones. Anything else (`DT_NEEDED`, which would
/// load and initialise another library; initialisers; filters and auditors; other relocation
/// tables) is refused.
const ALLOWED_TAGS: &[u64] = &[
    4,          // DT_HASH
    5,          // DT_STRTAB
    6,          // DT_SYMTAB
    7,          // DT_RELA
    8,          // DT_RELASZ
    9,          // DT_RELAENT
    10,         // DT_STRSZ
    11,         // DT_SYMENT
    14,         // DT_SONAME
    21,         // DT_DEBUG
    24,         // DT_BIND_NOW
    30,         // DT_FLAGS
    0x6ffffef5, // DT_GNU_HASH
    0x6ffffff9, // DT_RELACOUNT
    0x6ffffffb, // DT_FLAGS_1
];

/// Tags whose value is an address the loader reads from: it must lie inside the patch.
const ADDRESS_TAGS: &[u64] = &[4, 5, 6, 7, 0x6ffffef5];

/// A patch library must be a 64-bit shared object for this machine, every segment inside
/// `[start, start + len)` and backed by the file, no interpreter, no TLS segment, no dynamic tag
/// outside [`ALLOWED_TAGS`] (so no `DT_NEEDED`, no initialisers), and its only dynamic relocations
/// `GLOB_DAT` and absolute pointers (`R_X86_64_64`) into its own range: loading it maps it, binds
/// imports, and runs nothing.
pub fn check(bytes: &[u8], start: u64, len: u64) -> Result<(), &'static str> {
    let end = start.checked_add(len).ok_or("its range overflows")?;
    let inside = |at: u64, size: u64| at >= start && at.checked_add(size).is_some_and(|e| e <= end);
    let h = elf::header(bytes)?;
    if h.e_type != elf::ET_DYN {
        return Err("not a shared object");
    }
    if h.machine != elf::EM_HOST {
        return Err("built for another machine");
    }
    let segments = elf::segments(bytes, &h)?;
    let mut loads = Vec::new();
    let mut dynamic = None;
    for s in &segments {
        match s.p_type {
            elf::PT_INTERP => return Err("it asks for an interpreter"),
            elf::PT_TLS => return Err("it has its own TLS segment"),
            elf::PT_LOAD => {
                if s.filesz > s.memsz || elf::segment_bytes(bytes, s).is_none() {
                    return Err("a segment is not backed by the file");
                }
                loads.push(*s);
            }
            elf::PT_DYNAMIC => dynamic = Some(*s),
            _ => {}
        }
        if s.memsz != 0 && !inside(s.vaddr, s.memsz) {
            return Err("a segment lies outside the range it was planned for");
        }
    }
    if loads.is_empty() {
        return Err("no loadable segment");
    }
    let Some(dynamic) = dynamic else { return Err("no dynamic section") };
    let entries =
        elf::dynamic_entries(elf::segment_bytes(bytes, &dynamic).ok_or("dynamic section out of bounds")?);
    for &(tag, value) in &entries {
        if tag == 1 {
            return Err("it needs another library (DT_NEEDED)");
        }
        if matches!(tag, 12 | 13 | 25 | 26 | 32) {
            return Err("it has initialisers or finalisers");
        }
        if !ALLOWED_TAGS.contains(&tag) {
            return Err("it has a dynamic entry patches do not use");
        }
        if ADDRESS_TAGS.contains(&tag) && !inside(value, 1) {
            return Err("a dynamic entry points outside the patch");
        }
    }
    let tag = |t: u64| entries.iter().find(|e| e.0 == t).map(|e| e.1);
    if let Some(rela) = tag(7) {
        let size = tag(8).unwrap_or(0);
        if tag(9).is_some_and(|e| e != 24) || size % 24 != 0 || !inside(rela, size) {
            return Err("bad relocation table");
        }
        let table = file_bytes(bytes, &loads, rela, size).ok_or("relocation table not in the file")?;
        for r in table.chunks_exact(24) {
            let offset = u64::from_le_bytes(r[0..8].try_into().unwrap_or_default());
            let kind = u32::from_le_bytes(r[8..12].try_into().unwrap_or_default());
            if !matches!(kind, R_GLOB_DAT | R_ABS64) || !inside(offset, 8) {
                return Err("a dynamic relocation other than GLOB_DAT or ABS64 into the patch");
            }
        }
    }
    Ok(())
}

/// The file bytes behind `[vaddr, vaddr + size)`, within one loaded segment.
fn file_bytes<'a>(bytes: &'a [u8], loads: &[Segment], vaddr: u64, size: u64) -> Option<&'a [u8]> {
    let end = vaddr.checked_add(size)?;
    let s =
        loads.iter().find(|s| vaddr >= s.vaddr && s.vaddr.checked_add(s.filesz).is_some_and(|e| end <= e))?;
    let at = usize::try_from(s.offset.checked_add(vaddr - s.vaddr)?).ok()?;
    bytes.get(at..at.checked_add(usize::try_from(size).ok()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal patch-like object: one PT_LOAD at `start`, a PT_DYNAMIC with `tags`.
    fn object(start: u64, tags: &[(u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; 0x200];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[16..18].copy_from_slice(&3u16.to_le_bytes());
        b[18..20].copy_from_slice(&elf::EM_HOST.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&2u16.to_le_bytes());
        b[58..60].copy_from_slice(&64u16.to_le_bytes());
        let ph = |b: &mut Vec<u8>, i: usize, kind: u32, off: u64, size: u64| {
            let p = 64 + i * 56;
            b[p..p + 4].copy_from_slice(&kind.to_le_bytes());
            b[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
            b[p + 16..p + 24].copy_from_slice(&(start + off).to_le_bytes());
            b[p + 32..p + 40].copy_from_slice(&size.to_le_bytes());
            b[p + 40..p + 48].copy_from_slice(&size.to_le_bytes());
        };
        ph(&mut b, 0, elf::PT_LOAD, 0, 0x200);
        ph(&mut b, 1, elf::PT_DYNAMIC, 0x100, 0x100);
        for (i, (t, v)) in tags.iter().enumerate() {
            b[0x100 + i * 16..0x108 + i * 16].copy_from_slice(&t.to_le_bytes());
            b[0x108 + i * 16..0x110 + i * 16].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn a_plain_patch_passes_and_needed_libraries_initialisers_and_escapes_do_not() {
        let start = 0x5500_0000_0000;
        assert_eq!(check(&object(start, &[(5, start)]), start, 0x1000), Ok(()));
        assert!(check(&object(start, &[(1, 1)]), start, 0x1000).unwrap_err().contains("DT_NEEDED"));
        assert!(check(&object(start, &[(25, start)]), start, 0x1000).unwrap_err().contains("initialisers"));
        assert!(check(&object(start, &[(0x7fffffff, 1)]), start, 0x1000).is_err()); // DT_FILTER
        assert!(check(&object(start, &[(5, 0x1000)]), start, 0x1000).is_err());
        assert!(check(&object(start, &[]), start + 0x1000, 0x1000).unwrap_err().contains("outside"));
        assert!(check(&object(start, &[]), u64::MAX - 4, 0x1000).is_err());
        // A relocation that would make the loader write outside the patch.
        let mut evil = object(start, &[(7, start + 0x180), (8, 24)]);
        evil[0x180..0x188].copy_from_slice(&0x1234u64.to_le_bytes());
        evil[0x188..0x18c].copy_from_slice(&R_GLOB_DAT.to_le_bytes());
        assert!(check(&evil, start, 0x1000).unwrap_err().contains("GLOB_DAT"));
        for cut in [0, 10, 64, 100, 0x150] {
            assert!(check(&object(start, &[])[..cut], start, 0x1000).is_err());
        }
    }

    #[test]
    fn the_hash_of_the_sealed_copy_must_match() {
        let dir = std::env::temp_dir().join(format!("ipbp-seal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.so");
        let start = 0x5500_0000_0000;
        let bytes = object(start, &[(5, start)]);
        std::fs::write(&file, &bytes).unwrap();
        let sealed = seal(&file, start, 0x1000, hash(&bytes)).unwrap();
        // The copy cannot be written to any more, through any descriptor.
        let mut again = std::fs::OpenOptions::new().write(true).open(sealed.path()).unwrap();
        assert!(again.write_all(b"x").is_err());
        let e = seal(&file, start, 0x1000, hash(&bytes) ^ 1).err().unwrap();
        assert!(e.contains("hash"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
