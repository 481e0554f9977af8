//! Applying a patch inside the running program: check it was made for us, load it where it was
//! linked to go, then install it. Every check happens before anything changes, and a refused
//! patch leaves the program exactly as it was.

use crate::detour::JUMP_LEN;
use crate::dispatch;
use crate::image::Image;
use crate::install::{self, Desired, Outcome, PatchInfo};
use crate::protocol::{Applied, Apply, Hello, LedgerEntry, Reply};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What patches have done to this process so far.
pub struct State {
    pub image: Image,
    pub generation: u64,
    data: Vec<LedgerEntry>,
    tls: Vec<LedgerEntry>,
    patches: Vec<(u64, u64, PathBuf)>,
}

impl State {
    pub fn new(image: Image) -> Self {
        State { image, generation: 0, data: Vec::new(), tls: Vec::new(), patches: Vec::new() }
    }

    pub fn hello(&self) -> Hello {
        let (slots, detours) = install::current();
        Hello {
            pid: std::process::id(),
            build_id: self.image.build_id.clone(),
            load_bias: self.image.load_bias,
            generation: self.generation,
            tls_reserve: Some((crate::tls::reserve_tp_offset(), crate::tls::RESERVE_SIZE as u64)),
            slots,
            redirects: dispatch::current(),
            detours,
            data: self.data.clone(),
            tls: self.tls.clone(),
            patches: self.patches.clone(),
        }
    }

    pub fn apply(&mut self, req: Apply) -> Reply {
        match self.try_apply(req) {
            Ok(reply) => reply,
            Err(e) => Reply::Error(e),
        }
    }

    fn try_apply(&mut self, req: Apply) -> Result<Reply, String> {
        // `load_us` covers the checks and the load; `install_us` the stores into slots and table.
        let started = Instant::now();
        let img = &self.image;
        if req.build_id != img.build_id {
            return Err(format!(
                "the patch is for build {}, this process runs build {}",
                req.build_id, img.build_id
            ));
        }
        if req.load_bias != img.load_bias {
            return Err(format!(
                "the patch assumes load bias {:#x}, this process is loaded at {:#x}",
                req.load_bias, img.load_bias
            ));
        }
        if req.generation != self.generation {
            return Err(format!(
                "the patch was planned against patch generation {}, this process is at {} (another build patched it meanwhile)",
                req.generation, self.generation
            ));
        }
        let new_range = match (&req.file, req.range) {
            (Some(_), Some(r)) => Some(r),
            (None, None) => None,
            _ => return Err("a patch file needs its load range and vice versa".into()),
        };
        let in_patch = |addr: u64| {
            let patches = self.patches.iter().map(|&(s, l, _)| (s, l)).chain(new_range);
            patches.clone().any(|(s, l)| s <= addr && addr < s + l)
        };
        for &(slot, value) in &req.slots {
            if slot % 8 != 0 || !img.contains_writable(slot, 8) {
                return Err(format!("slot {slot:#x} is not in the program's writable data"));
            }
            if !(img.contains_code(value) || in_patch(value)) {
                return Err(format!(
                    "slot {slot:#x} would point at {value:#x}, which is not code of this program"
                ));
            }
        }
        for &(from, to) in &req.redirects {
            if !img.contains_code(from) || !(img.contains_code(to) || in_patch(to)) {
                return Err(format!("redirect {from:#x} -> {to:#x} leaves the program's code"));
            }
        }
        for &(from, to) in &req.detours {
            // An entry of the image, or of a function an earlier patch loaded (its callers and
            // pointers to it are sent on to the newest version too).
            let end = from.checked_add(JUMP_LEN as u64).ok_or("detour entry out of range")?;
            let entry_ok = (img.contains_code(from) && img.contains_code(end - 1))
                || self.patches.iter().any(|&(s, l, _)| s <= from && end <= s.saturating_add(l));
            if !entry_ok || !(img.contains_code(to) || in_patch(to)) {
                return Err(format!("detour {from:#x} -> {to:#x} leaves the program's code"));
            }
        }

        if let (Some(file), Some((start, len))) = (&req.file, new_range) {
            load(file, start, len)?;
            self.patches.push((start, len, file.clone()));
        }
        let load_us = started.elapsed().as_micros() as u64;

        let installed = Instant::now();
        let desired = Desired { slots: req.slots, redirects: req.redirects, detours: req.detours };
        let info = PatchInfo {
            generation: self.generation + 1,
            changed: req.changed,
            added: req.added,
            not_redirected: req.not_redirected,
            summary: req.summary,
        };
        let log = std::env::var_os("IPBP_LOG").is_some().then(|| info.summary.clone());
        let outcome = install::now_or_at_safe_point(desired, info)?;
        let install_us = installed.elapsed().as_micros() as u64;

        self.data.extend(req.data);
        self.tls.extend(req.tls);
        self.generation += 1;
        crate::runtime::set_generation(self.generation);
        let (pause_us, deferred) = match &outcome {
            Outcome::Installed(stop) => (stop.longest_pause.as_micros() as u64, false),
            Outcome::Deferred => (0, true),
        };
        if let Some(summary) = log {
            let how = match outcome {
                Outcome::Installed(stop) => format!(
                    "install {install_us} us; {} entries rewritten, {} threads parked for at most {} us, {} retries",
                    stop.written,
                    stop.threads,
                    stop.longest_pause.as_micros(),
                    stop.retries
                ),
                Outcome::Deferred => "installed at the next safe point".into(),
            };
            eprintln!(
                "[ipbp] patch {} applied: {} (load {load_us} us, {how})",
                self.generation,
                if summary.is_empty() { "no changes" } else { &summary },
            );
        }
        Ok(Reply::Applied(Applied { generation: self.generation, load_us, install_us, pause_us, deferred }))
    }
}

/// Checks the file is a patch library fit to load at `start`, then loads it there for good.
fn load(file: &Path, start: u64, len: u64) -> Result<(), String> {
    check_file(file, start, len)?;
    if let Some(taken) = mapped_overlap(start, len) {
        return Err(format!(
            "the address range {start:#x}..{:#x} the patch was linked for is already in use ({taken})",
            start + len
        ));
    }
    let path =
        CString::new(file.as_os_str().as_bytes()).map_err(|_| "patch path contains NUL".to_string())?;
    // SAFETY: the file was checked to be a shared object without constructors (nothing runs on
    // load); RTLD_NODELETE because patched code must never be unmapped.
    let handle =
        unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL | libc::RTLD_NODELETE) };
    if handle.is_null() {
        return Err(format!("dlopen {}: {}", file.display(), dlerror()));
    }
    let mut map: *mut LinkMap = std::ptr::null_mut();
    // SAFETY: RTLD_DI_LINKMAP writes a `struct link_map *`.
    let rc = unsafe { libc::dlinfo(handle, libc::RTLD_DI_LINKMAP, &mut map as *mut _ as *mut libc::c_void) };
    // SAFETY: on success `map` points at the loader's link map entry for the patch.
    if rc != 0 || map.is_null() || unsafe { (*map).l_addr } != 0 {
        // Nothing of it ran and nothing refers to it; it stays mapped (RTLD_NODELETE) but unused.
        return Err(format!(
            "{} was not loaded at the address it was linked for ({start:#x}); patch refused",
            file.display()
        ));
    }
    // SAFETY: `map` is the patch's own link map entry, and no code of the patch can run yet.
    if !unsafe { describe_as_library(map, start, file) } && std::env::var_os("IPBP_LOG").is_some() {
        eprintln!("[ipbp] backtraces will not name functions of {}", file.display());
    }
    Ok(())
}

/// Makes the loader describe the patch as an ordinary library loaded at `start`, instead of an
/// object with load bias 0.
///
/// A patch is linked to run at `start` and lands there, so its load bias is 0 — and backtrace
/// symbolizers (Rust's among them) take an object with bias 0 for the static executable and look
/// its addresses up in the wrong file. The patch file's symbol table and section addresses are
/// written relative to `start`; here the link map entry gets `l_addr = start` and program headers
/// rebased to 0 (a copy, leaked: the entry keeps pointing at it). Every consumer then computes the
/// same absolute addresses. `l_phdr` is not a public field of `struct link_map`, so it is found
/// by value, and the change is checked through `dl_iterate_phdr` and undone if anything disagrees.
/// The unwinder is not affected either way (glibc's `_dl_find_object` recorded the patch at
/// `dlopen`).
unsafe fn describe_as_library(map: *mut LinkMap, start: u64, file: &Path) -> bool {
    // SAFETY (whole function): `start` is the patch's first page, holding its ELF and program
    // headers (checked by `check_file`); `map` points at a live link map entry of at least the
    // scanned size (glibc's is over 1 KiB).
    let phoff = unsafe { std::ptr::read_unaligned((start + 32) as *const u64) };
    let phnum = unsafe { std::ptr::read_unaligned((start + 56) as *const u16) } as usize;
    let phdrs = (start + phoff) as *const libc::Elf64_Phdr;
    let words = map as *mut usize;
    let Some(field) = (5..160).find(|&i| unsafe { *words.add(i) } == phdrs as usize) else { return false };
    let rebased: Vec<libc::Elf64_Phdr> = (0..phnum)
        .map(|i| {
            let mut p = unsafe { *phdrs.add(i) };
            if p.p_vaddr >= start {
                p.p_vaddr -= start;
                p.p_paddr = p.p_vaddr;
            }
            p
        })
        .collect();
    let rebased = Box::leak(rebased.into_boxed_slice()).as_ptr();
    unsafe {
        *words.add(field) = rebased as usize;
        (*map).l_addr = start as usize;
    }
    if loader_sees(file, start, rebased) {
        return true;
    }
    unsafe {
        *words.add(field) = phdrs as usize;
        (*map).l_addr = 0;
    }
    false
}

/// Whether `dl_iterate_phdr` reports `file` at bias `start` with the rebased program headers.
fn loader_sees(file: &Path, start: u64, phdrs: *const libc::Elf64_Phdr) -> bool {
    struct Want<'a> {
        name: &'a [u8],
        start: u64,
        phdrs: *const libc::Elf64_Phdr,
        ok: bool,
    }
    unsafe extern "C" fn visit(info: *mut libc::dl_phdr_info, _: usize, data: *mut libc::c_void) -> i32 {
        // SAFETY: dl_iterate_phdr passes valid entries and our `Want`.
        let (info, want) = unsafe { (&*info, &mut *(data as *mut Want)) };
        if info.dlpi_name.is_null() {
            return 0;
        }
        // SAFETY: non-null names are NUL-terminated.
        let name = unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes();
        if name == want.name {
            want.ok = info.dlpi_addr == want.start && info.dlpi_phdr == want.phdrs;
            return 1;
        }
        0
    }
    let mut want = Want { name: file.as_os_str().as_bytes(), start, phdrs, ok: false };
    // SAFETY: the callback only reads the entries during the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), &mut want as *mut Want as *mut libc::c_void) };
    want.ok
}

/// The public prefix of glibc's `struct link_map`.
#[repr(C)]
struct LinkMap {
    l_addr: usize,
    l_name: *const libc::c_char,
    l_ld: *mut libc::c_void,
    l_next: *mut LinkMap,
    l_prev: *mut LinkMap,
}

fn dlerror() -> String {
    // SAFETY: dlerror returns a thread-local C string or null.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null dlerror results are NUL-terminated.
        unsafe { std::ffi::CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// A patch library must be a 64-bit shared object for this machine whose every segment lies in
/// `[start, start+len)`, with no interpreter, no TLS segment and no initialisers: loading it
/// must not run any code.
fn check_file(file: &Path, start: u64, len: u64) -> Result<(), String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let bad = |why: &str| Err(format!("{} is not a valid patch: {why}", file.display()));
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return bad("not a 64-bit little-endian ELF file");
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    if u16_at(16) != 3 {
        return bad("not a shared object");
    }
    if u16_at(18) != EM_HOST {
        return bad("built for another machine");
    }
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54) as usize, u16_at(56) as usize);
    if phentsize != 56 || phoff.checked_add(phnum * 56).is_none_or(|end| end > bytes.len()) {
        return bad("program headers out of bounds");
    }
    let mut loads = 0;
    for i in 0..phnum {
        let ph = phoff + i * 56;
        let (p_type, p_offset, p_vaddr, p_filesz, p_memsz) =
            (u32_at(ph), u64_at(ph + 8) as usize, u64_at(ph + 16), u64_at(ph + 32) as usize, u64_at(ph + 40));
        match p_type {
            1 => {
                loads += 1;
                if p_vaddr < start || p_vaddr.saturating_add(p_memsz) > start + len {
                    return bad("a segment lies outside the range it was planned for");
                }
            }
            3 => return bad("it asks for an interpreter"),
            7 => return bad("it has its own TLS segment"),
            2 => {
                if p_offset.checked_add(p_filesz).is_none_or(|end| end > bytes.len()) {
                    return bad("dynamic section out of bounds");
                }
                for d in bytes[p_offset..p_offset + p_filesz].chunks_exact(16) {
                    let tag = u64::from_le_bytes(d[..8].try_into().unwrap());
                    // DT_INIT, DT_FINI, DT_INIT_ARRAY, DT_FINI_ARRAY, DT_PREINIT_ARRAY
                    if matches!(tag, 12 | 13 | 25 | 26 | 32) {
                        return bad("it has initialisers or finalisers");
                    }
                }
            }
            _ => {}
        }
    }
    if loads == 0 {
        return bad("no loadable segment");
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
const EM_HOST: u16 = 62;
#[cfg(target_arch = "aarch64")]
const EM_HOST: u16 = 183;

/// The first line of `/proc/self/maps` overlapping `[start, start+len)`, if any.
fn mapped_overlap(start: u64, len: u64) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .find(|l| {
            let range = l.split(' ').next().unwrap_or("");
            let (a, b) = range.split_once('-').unwrap_or(("0", "0"));
            let (a, b) = (u64::from_str_radix(a, 16).unwrap_or(0), u64::from_str_radix(b, 16).unwrap_or(0));
            a < start + len && start < b
        })
        .map(str::to_string)
}
