//! What an entry held before anyone wrote to it, read from the file it was loaded from.
//!
//! A debugger sets a software breakpoint by writing `int3` (0xCC) over the first byte of an
//! instruction, and puts the byte back when it stops the program or removes the breakpoint. If
//! such a byte sits in the bytes a detour rewrites, ipbp would either save the `int3` as the
//! entry's "original bytes" (a later revert writes it back, and the program traps with no
//! debugger left to handle it) or overwrite it, after which the debugger "restores" its saved
//! byte into the middle of ipbp's jump. So while a debugger traces the process, every entry
//! about to be rewritten must hold exactly what ipbp expects — the file's bytes, or the jump ipbp
//! wrote — or the install is refused, naming the function.

use super::JUMP_LEN;
use crate::elf;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

/// The file an entry's code was loaded from, and the address the file's program headers give it.
struct Source {
    file: File,
    vaddr: u64,
    /// What the file's symbol values are relative to.
    symbol_base: u64,
}

fn source(at: u64) -> Option<Source> {
    if crate::symbols::is_image_function(at) {
        let bias = crate::image::main_program()?.load_bias;
        let file = File::open("/proc/self/exe").ok()?;
        return Some(Source { file, vaddr: at - bias, symbol_base: bias });
    }
    // A patch: the loader names it by its file (the same bytes as the sealed copy it runs), and
    // its program headers hold absolute addresses (see `apply::describe_as_library`).
    // SAFETY: dladdr fills `info` for an address inside a loaded object.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    if unsafe { libc::dladdr(at as *const libc::c_void, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: a non-null dli_fname is a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let file = File::open(std::ffi::OsStr::from_bytes(name.to_bytes())).ok()?;
    Some(Source { file, vaddr: at, symbol_base: info.dli_fbase as u64 })
}

fn read(file: &File, off: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, off).ok().map(|()| buf)
}

/// The first [`JUMP_LEN`] bytes of the function entered at `at`, as its file holds them.
pub fn file_bytes(at: u64) -> Option<[u8; JUMP_LEN]> {
    let src = source(at)?;
    let h = elf::header(&read(&src.file, 0, 64)?).ok()?;
    let table = read(&src.file, h.phoff, h.phnum as usize * 56)?;
    let end = src.vaddr.checked_add(JUMP_LEN as u64)?;
    for p in table.chunks_exact(56) {
        let word = |i: usize| u64::from_le_bytes(p[i..i + 8].try_into().unwrap_or_default());
        let (kind, offset, vaddr, filesz) =
            (u32::from_le_bytes(p[0..4].try_into().ok()?), word(8), word(16), word(32));
        if kind == elf::PT_LOAD && vaddr <= src.vaddr && end <= vaddr.checked_add(filesz)? {
            let bytes = read(&src.file, offset + (src.vaddr - vaddr), JUMP_LEN)?;
            return bytes.try_into().ok();
        }
    }
    None
}

/// The name of the function entered at `at` (demangled when it is a Rust legacy name), or its
/// address.
pub fn name_of(at: u64) -> String {
    let found = (|| {
        let src = source(at)?;
        let h = elf::header(&read(&src.file, 0, 64)?).ok()?;
        let reader = |off: u64, len: usize| read(&src.file, off, len);
        let table = elf::SymbolTable::read(&h, &reader).ok()??;
        let value = at.checked_sub(src.symbol_base)?;
        let name = table
            .symbols()
            .find(|s| s.kind == elf::STT_FUNC && s.value == value && s.size != 0)?
            .name
            .to_vec();
        Some(demangle(&String::from_utf8_lossy(&name)))
    })();
    found.unwrap_or_else(|| format!("the function at {at:#x}"))
}

/// `_ZN8debuggee4work17h0123456789abcdefE` → `debuggee::work` (rustc's legacy mangling, hash
/// dropped); anything else as it is.
fn demangle(name: &str) -> String {
    let Some(mut rest) = name.strip_prefix("_ZN") else { return name.to_string() };
    let mut parts = Vec::new();
    while let Some(digits) = rest.find(|c: char| !c.is_ascii_digit()).filter(|&n| n > 0) {
        let Ok(len) = rest[..digits].parse::<usize>() else { break };
        let Some(part) = rest.get(digits..digits + len) else { break };
        parts.push(part);
        rest = &rest[digits + len..];
    }
    if parts.last().is_some_and(|p| p.len() == 17 && p.starts_with('h')) {
        parts.pop();
    }
    if parts.is_empty() || rest != "E" {
        return name.to_string();
    }
    parts.join("::").replace("$LT$", "<").replace("$GT$", ">").replace("$u20$", " ").replace("..", "::")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_names_demangle() {
        assert_eq!(demangle("_ZN8debuggee4work17h00a6f23e5e64376eE"), "debuggee::work");
        assert_eq!(demangle("main"), "main");
    }

    #[inline(never)]
    fn some_function(x: u64) -> u64 {
        std::hint::black_box(x) * 3 + 1
    }

    #[test]
    fn an_entry_of_this_executable_reads_as_in_memory() {
        let at = some_function as *const () as u64;
        std::hint::black_box(some_function(2));
        let mut mem = [0u8; JUMP_LEN];
        // SAFETY: reading the first bytes of a function of this executable.
        unsafe { std::ptr::copy_nonoverlapping(at as *const u8, mem.as_mut_ptr(), JUMP_LEN) };
        assert_eq!(file_bytes(at), Some(mem));
        assert!(name_of(at).ends_with("some_function"), "{}", name_of(at));
    }
}
