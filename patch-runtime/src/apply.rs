//! Applying a patch inside the running program: check it was made for us, load it where it was
//! linked to go, then install it. Every check happens before anything changes, and a refused
//! patch leaves the program exactly as it was.

use crate::dispatch;
use crate::image::Image;
use crate::install::{self, Desired, Outcome, PatchInfo};
use crate::protocol::{Applied, Apply, Hello, LedgerEntry, Reply};
use crate::seal::{self, Sealed};
use crate::{symbols, validate};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// What patches have done to this process so far.
pub struct State {
    pub image: Image,
    pub generation: u64,
    data: Vec<LedgerEntry>,
    tls: Vec<LedgerEntry>,
    /// Patches loaded whose functions no install has settled yet, in load order (normally the two
    /// newest): the next patch settles all but the newest, and sends that one's on with live
    /// jumps.
    unsettled: Vec<(u64, u64, PathBuf)>,
    /// How many patches are loaded in all.
    loaded: u64,
}

impl State {
    pub fn new(image: Image) -> Self {
        State { image, generation: 0, data: Vec::new(), tls: Vec::new(), unsettled: Vec::new(), loaded: 0 }
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
            patches: self.unsettled.clone(),
            loaded: self.loaded,
            settled: install::settled() as u64,
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
        validate::shape(&req, new_range)?;
        validate::reply_size(&req, Reply::Hello(self.hello()).encode().len())?;
        validate::thread_locals(&req, &self.tls)?;
        for &(slot, _) in &req.slots {
            if slot % 8 != 0 || !img.contains_writable(slot, 8) {
                return Err(format!("slot {slot:#x} is not in the program's writable data"));
            }
        }
        if let Some(&(from, _)) = req.redirects.iter().find(|r| !img.contains_code(r.0)) {
            return Err(format!("redirect from {from:#x}: not in the program's code"));
        }
        // The patch's bytes are fixed (sealed) and checked before its functions count as targets.
        let sealed = match (&req.file, new_range, req.hash) {
            (Some(file), Some((start, len)), Some(hash)) => Some(seal::seal(file, start, len, hash)?),
            _ => None,
        };
        validate::targets(&req, sealed.as_ref().map(|s| &s.functions))?;

        let mut loaded = None;
        if let (Some(file), Some(sealed), Some((start, len))) = (&req.file, sealed, new_range) {
            load(sealed, file, start, len)?;
            self.loaded += 1;
            loaded = Some((start, len, file.clone()));
        }
        let load_us = started.elapsed().as_micros() as u64;

        let installed = Instant::now();
        let settled_patches = req.settled_patches;
        let desired =
            Desired { slots: req.slots, redirects: req.redirects, detours: req.detours, settle: req.settle };
        let info = PatchInfo {
            generation: self.generation + 1,
            changed: req.changed,
            added: req.added,
            not_redirected: req.not_redirected,
            summary: req.summary,
        };
        let log = std::env::var_os("IPBP_LOG").is_some().then(|| info.summary.clone());
        let outcome = install::now_or_at_safe_point(desired, info);
        // The request was planned against the patches `hello` listed unsettled. A failed install
        // settled nothing, and leaves the new patch loaded but never live: the next one sees it.
        if outcome.is_ok() {
            // ipbp-ld settled the patches it names; the one live code ran in is sent on with live
            // jumps this time (so a failed link can still return to its code) and stays listed.
            self.unsettled.retain(|p| !settled_patches.contains(&p.0));
        }
        self.unsettled.extend(loaded);
        let outcome = outcome?;
        let install_us = installed.elapsed().as_micros() as u64;

        self.data.extend(req.data);
        self.tls.extend(req.tls);
        self.generation += 1;
        crate::process::set_generation(self.generation);
        let (pause_us, live_us, deferred) = match &outcome {
            Outcome::Installed(stop) => {
                (stop.longest_pause.as_micros() as u64, stop.live.as_micros() as u64, false)
            }
            Outcome::Deferred => (0, 0, true),
        };
        if let Some(summary) = log {
            let how = match outcome {
                Outcome::Installed(stop) => describe_install(install_us, &stop),
                Outcome::Deferred => "installed at the next safe point".into(),
            };
            eprintln!(
                "[ipbp] patch {} applied: {} (load {load_us} us, {how})",
                self.generation,
                if summary.is_empty() { "no changes" } else { &summary },
            );
        }
        Ok(Reply::Applied(Applied {
            generation: self.generation,
            load_us,
            install_us,
            live_us,
            pause_us,
            deferred,
        }))
    }
}

/// `IPBP_LOG`'s account of an install: how the bytes were written and who waited how long.
fn describe_install(install_us: u64, i: &crate::detour::Installed) -> String {
    use crate::detour::Method;
    let rounds = if i.threads == 0 {
        "no thread interrupted".to_string()
    } else {
        let held = match i.method {
            Method::Parked => format!("parked for at most {} us", i.longest_pause.as_micros()),
            _ => format!(
                "checked, at most {} us of CPU in the handler ({} us by the wall clock)",
                i.longest_pause.as_micros(),
                i.longest_wall.as_micros()
            ),
        };
        format!(
            "{} threads {held}, {} retries, gathering the threads {} us",
            i.threads,
            i.retries,
            i.gathering.as_micros()
        )
    };
    let how = match i.method {
        Method::None => "nothing to write".to_string(),
        Method::Breakpoint => format!("breakpoint first, {} calls sent on meanwhile", i.traps),
        Method::Parked => format!("every thread parked ({})", i.fallback.unwrap_or("fallback")),
    };
    format!(
        "install {install_us} us, new code in effect after {} us; {} entries rewritten, {how}; {rounds}; preparing {} us",
        i.live.as_micros(),
        i.written,
        i.preparing.as_micros()
    )
}

/// Loads the sealed, checked copy of patch `file` at `start`, for good, and adds its functions to
/// the ones requests may name.
fn load(sealed: Sealed, file: &Path, start: u64, len: u64) -> Result<(), String> {
    if let Some(taken) = mapped_overlap(start, len) {
        return Err(format!(
            "the address range {start:#x}..{:#x} the patch was linked for is already in use ({taken})",
            start.saturating_add(len)
        ));
    }
    // The loader opens the sealed copy, never the file: nothing on disk can change the code.
    let name = sealed.path();
    let path =
        CString::new(name.as_os_str().as_bytes()).map_err(|_| "patch path contains NUL".to_string())?;
    // SAFETY: the sealed bytes were checked to be a shared object without constructors, needed
    // libraries or relocations outside its range (nothing runs on load); RTLD_NODELETE because
    // patched code must never be unmapped.
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
        // Nothing of it ran and nothing refers to it; it stays mapped (RTLD_NODELETE) but unused,
        // under its descriptor's name (kept, so that name never means another file).
        let _ = sealed.keep();
        return Err(format!(
            "{} was not loaded at the address it was linked for ({start:#x}); patch refused",
            file.display()
        ));
    }
    // From now on the loader (and every debugger, symbolizer and later `dlopen` reading its list)
    // knows the patch by its file, which ipbp-ld keeps while this process runs: the descriptor is
    // closed. Where the names cannot be changed, the descriptor is kept so they stay valid.
    let file = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
    // SAFETY: `map` is the patch's own link map entry, just returned by the loader.
    let named = unsafe { name_by_file(map, &path, &file) };
    let functions = if named { sealed.close() } else { sealed.keep() };
    let known_as = if named { file.as_path() } else { name.as_path() };
    // SAFETY: `map` is the patch's own link map entry, and no code of the patch can run yet.
    if !unsafe { describe_as_library(map, start, known_as) } && std::env::var_os("IPBP_LOG").is_some() {
        eprintln!("[ipbp] backtraces will not name functions of {}", file.display());
    }
    symbols::add_patch(start, len, functions);
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
/// by value, and the first time the change is checked through `dl_iterate_phdr` and undone if
/// anything disagrees. That check proves where this process's loader keeps `l_phdr`, which cannot
/// change while it runs: later patches use the same field, again only if it holds their program
/// headers, without the check — `dl_iterate_phdr` walks every loaded object, so it cost more with
/// every patch loaded (BENCHMARKS.md P12). The unwinder is not affected either way (glibc's
/// `_dl_find_object` recorded the patch at `dlopen`).
unsafe fn describe_as_library(map: *mut LinkMap, start: u64, file: &Path) -> bool {
    // SAFETY (whole function): `start` is the patch's first page, holding its ELF and program
    // headers (checked by `seal::check`); `map` points at a live link map entry of at least the
    // scanned size (glibc's is over 1 KiB).
    let phoff = unsafe { std::ptr::read_unaligned((start + 32) as *const u64) };
    let phnum = unsafe { std::ptr::read_unaligned((start + 56) as *const u16) } as usize;
    let phdrs = (start + phoff) as *const libc::Elf64_Phdr;
    let words = map as *mut usize;
    let proven = PHDR_FIELD.load(Ordering::Relaxed);
    let field = if proven != 0 {
        if unsafe { *words.add(proven) } != phdrs as usize {
            return false;
        }
        proven
    } else {
        let Some(field) = (5..160).find(|&i| unsafe { *words.add(i) } == phdrs as usize) else {
            return false;
        };
        field
    };
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
    if proven != 0 {
        return true;
    }
    if loader_sees(file, start, rebased) {
        PHDR_FIELD.store(field, Ordering::Relaxed);
        return true;
    }
    unsafe {
        *words.add(field) = phdrs as usize;
        (*map).l_addr = 0;
    }
    false
}

/// The word of glibc's `struct link_map` that holds `l_phdr`, once [`describe_as_library`] has
/// seen `dl_iterate_phdr` report a value stored there; 0 until then.
static PHDR_FIELD: AtomicUsize = AtomicUsize::new(0);

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
        // The rebased program headers are ours alone: one comparison per object passes over the
        // others without reading their names (the list holds every patch loaded before).
        if info.dlpi_name.is_null() || info.dlpi_phdr != want.phdrs {
            return 0;
        }
        // SAFETY: non-null names are NUL-terminated.
        let name = unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes();
        want.ok = name == want.name && info.dlpi_addr == want.start;
        1
    }
    let mut want = Want { name: file.as_os_str().as_bytes(), start, phdrs, ok: false };
    // SAFETY: the callback only reads the entries during the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), &mut want as *mut Want as *mut libc::c_void) };
    want.ok
}

/// Makes the loader name the patch by `file` instead of `loaded_as` (its descriptor's path), in
/// `l_name` — what `dl_iterate_phdr`, `r_debug` readers (gdb, lldb) and symbolizers see — and in
/// the name list `dlopen` matches new requests against (so a later patch opened through a reused
/// descriptor number is never taken for this one). Returns false, changing nothing, unless the
/// entry is laid out as glibc's: after the public part come `l_real` (the entry itself), `l_ns`,
/// then `l_libname`, a list whose one element names `loaded_as`.
///
/// Each change is one aligned pointer store, from one valid string to another (leaked: the entry
/// lives for good), so a thread reading the list concurrently (another `dlopen`,
/// `dl_iterate_phdr`) sees either name, both valid; a debugger stopping the process between the
/// two stores sees a name it can open either way, since the descriptor is closed only after.
unsafe fn name_by_file(map: *mut LinkMap, loaded_as: &CString, file: &Path) -> bool {
    let Ok(file) = CString::new(file.as_os_str().as_bytes()) else { return false };
    let words = map as *mut usize;
    // SAFETY (whole function): `map` points at a live glibc link map entry, far larger than the
    // words read; each pointer is checked before it is followed.
    unsafe {
        if *words.add(5) != map as usize {
            return false;
        }
        // struct libname_list { const char *name; struct libname_list *next; int dont_free; }
        let libname = *words.add(7) as *mut *const libc::c_char;
        if libname.is_null() || (*libname).is_null() || !(*libname.add(1)).is_null() {
            return false;
        }
        if std::ffi::CStr::from_ptr(*libname) != loaded_as.as_c_str()
            || std::ffi::CStr::from_ptr((*map).l_name) != loaded_as.as_c_str()
        {
            return false;
        }
        let file = names::keep(&file);
        *libname = file;
        (*map).l_name = file;
    }
    true
}

/// The names the loader knows patches by, kept for good and packed one after another.
///
/// Every `dlopen` compares its name with every loaded object's names (`_dl_map_object`), in load
/// order. Allocated one by one, each patch's name sat on its own heap page, and the comparison
/// with it cost a cold page walk per patch already loaded (BENCHMARKS.md P12); packed in load
/// order, the names of a thousand patches fill a few pages, read front to back.
mod names {
    use std::ffi::CStr;
    use std::sync::Mutex;

    const CHUNK: usize = 64 << 10;

    /// The free part of the current chunk: its start and length.
    static FREE: Mutex<(usize, usize)> = Mutex::new((0, 0));

    /// A copy of `name` that lives as long as the process.
    pub fn keep(name: &CStr) -> *const libc::c_char {
        let bytes = name.to_bytes_with_nul();
        if bytes.len() > CHUNK / 4 {
            return name.to_owned().into_raw();
        }
        let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
        if free.1 < bytes.len() {
            let chunk: &'static mut [u8] = Box::leak(vec![0u8; CHUNK].into_boxed_slice());
            *free = (chunk.as_mut_ptr() as usize, CHUNK);
        }
        let at = free.0 as *mut u8;
        // SAFETY: `[at, at + len)` is an unused part of a leaked chunk, handed out once (the lock
        // is held), and never written again: the copy is a valid C string for good.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), at, bytes.len()) };
        *free = (free.0 + bytes.len(), free.1 - bytes.len());
        at as *const libc::c_char
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn names_are_kept_whole_and_packed_in_order() {
            let kept: Vec<_> = (0..2000)
                .map(|i| (i, keep(&std::ffi::CString::new(format!("/p/patch-{i}.so")).unwrap())))
                .collect();
            for (i, at) in &kept {
                // SAFETY: `keep` returns C strings that live for good.
                assert_eq!(unsafe { CStr::from_ptr(*at) }.to_str().unwrap(), format!("/p/patch-{i}.so"));
            }
            // Consecutive names are neighbours (other tests may keep names meanwhile: most, not all).
            let adjacent = kept
                .windows(2)
                .filter(|w| w[1].1 as usize == w[0].1 as usize + format!("/p/patch-{}.so", w[0].0).len() + 1)
                .count();
            assert!(adjacent > 1900, "{adjacent}");
            let long = "x".repeat(CHUNK);
            assert_eq!(
                unsafe { CStr::from_ptr(keep(&std::ffi::CString::new(long.clone()).unwrap())) }
                    .to_str()
                    .unwrap(),
                long
            );
        }
    }
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

/// What is mapped in `[start, start+len)`, if anything.
///
/// Asked of the kernel directly rather than read from `/proc/self/maps`, whose length grows with
/// every patch loaded (three mappings each): a `PROT_NONE` reservation with
/// `MAP_FIXED_NOREPLACE` fails with `EEXIST` exactly when some page of the range is mapped, and
/// is undone at once. (A kernel older than 4.17 takes the flag for a hint and may place it
/// elsewhere: that counts as taken too.) The reservation is never touched and lives for two
/// system calls; nothing else of the process maps into ipbp's patch range meanwhile, since the
/// listener applies one request at a time and the loader maps the patch only after this.
fn mapped_overlap(start: u64, len: u64) -> Option<String> {
    let size = usize::try_from(len).ok()?;
    // SAFETY: a fresh anonymous PROT_NONE mapping that replaces nothing (NOREPLACE); unmapped
    // below only when it is ours (it landed at `start`).
    let at = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            size,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if at == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error();
        return Some(if e.raw_os_error() == Some(libc::EEXIST) {
            "something is mapped there".to_string()
        } else {
            format!("cannot reserve it: {e}")
        });
    }
    // SAFETY: `at` is the mapping just made, of `size` bytes, which nothing uses.
    unsafe { libc::munmap(at, size) };
    (at as u64 != start).then(|| "the kernel placed a probe elsewhere".to_string())
}
