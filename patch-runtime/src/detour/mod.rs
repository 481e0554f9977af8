//! In-place patching: the entry of every changed function jumps to its newest version.
//!
//! A detour overwrites the first [`arch::JUMP_LEN`] bytes of a function with a jump into the patch
//! (which ipbp-ld places within ±2 GiB). Every caller — a direct call, a vtable, a `fn` pointer
//! stored at startup, a closure held by a framework — reaches the new code, and functions never
//! patched cost nothing. [`Detours::install`] takes the *whole* desired set: an entry it no longer
//! names gets its original bytes back (a revert), and all changes of one install become visible
//! to every thread at once, while every other thread is parked ([`stop`]).
//!
//! What the bytes may be rewritten under is checked twice: ipbp-ld only plans a detour for a
//! function at least as long as the jump, whose first bytes hold no call (a return address there
//! would land inside the jump) and are no branch target inside the function; and here, with every
//! thread parked, no program counter and no word of any thread's stack (return addresses, a
//! signal frame's saved program counter) may point strictly inside the bytes being rewritten —
//! else the threads are released and the install is retried a little later.

#[cfg_attr(target_arch = "x86_64", path = "x86_64.rs")]
mod arch;
mod maps;
pub mod stop;

use maps::Mapping;
use std::collections::BTreeMap;
use std::time::Duration;

pub use arch::JUMP_LEN;

/// How often an install is retried while a thread is inside the bytes to rewrite.
const ATTEMPTS: usize = 200;

/// The detours installed in this process.
#[derive(Default)]
pub struct Detours {
    /// Entry → the bytes it held before the first detour there.
    originals: BTreeMap<u64, [u8; JUMP_LEN]>,
    /// Entry → where its jump goes now.
    current: BTreeMap<u64, u64>,
}

/// What an install did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Installed {
    /// Entries written (jumps placed or originals restored).
    pub written: usize,
    /// Longest time any other thread was parked.
    pub longest_pause: Duration,
    pub threads: usize,
    /// Stops that were released without writing because a thread was inside the bytes.
    pub retries: usize,
    /// Reading the mappings and the original bytes, before the first stop.
    pub preparing: Duration,
    /// From the first signal of the last stop to every thread parked.
    pub gathering: Duration,
}

/// One entry's new bytes.
#[derive(Clone, Copy)]
struct Write {
    at: u64,
    bytes: [u8; JUMP_LEN],
}

impl Detours {
    /// Whether a jump is written at `entry` now.
    pub fn is_written(&self, entry: u64) -> bool {
        self.current.contains_key(&entry)
    }

    /// `(entry, target)` of every detour in place.
    pub fn current(&self) -> Vec<(u64, u64)> {
        self.current.iter().map(|(&a, &b)| (a, b)).collect()
    }

    /// Makes the installed detours exactly `desired` (entry → target). The caller has checked that
    /// every entry is a function entry of this process's code at least `JUMP_LEN` bytes long and
    /// every target code of this process.
    pub fn install(&mut self, desired: &[(u64, u64)]) -> Result<Installed, String> {
        let wanted: BTreeMap<u64, u64> = desired.iter().copied().collect();
        if wanted.len() != desired.len() {
            return Err("a detour entry is listed twice".into());
        }
        let mut prev_end = 0u64;
        for &from in wanted.keys() {
            if from < prev_end {
                return Err(format!("detour entries overlap at {from:#x}"));
            }
            prev_end = from.checked_add(JUMP_LEN as u64).ok_or("detour entry out of range")?;
        }
        let mut writes = Vec::new();
        for (&from, &to) in &wanted {
            if self.current.get(&from) == Some(&to) {
                continue;
            }
            let bytes = arch::encode_jump(from, to)
                .ok_or_else(|| format!("detour {from:#x} -> {to:#x} is beyond a 32-bit jump"))?;
            writes.push(Write { at: from, bytes });
        }
        for (&from, original) in &self.originals {
            if !wanted.contains_key(&from) && self.current.contains_key(&from) {
                writes.push(Write { at: from, bytes: *original });
            }
        }
        if writes.is_empty() {
            self.current = wanted;
            return Ok(Installed::default());
        }
        writes.sort_unstable_by_key(|w| w.at);

        let prep_started = std::time::Instant::now();
        let mappings = maps::read()?;
        let pages = pages_to_unprotect(&writes, &mappings)?;
        // Record what each entry held before it is first rewritten (code is only written here,
        // under the caller's lock, so reading it while other threads run is a plain read).
        let mut first_seen = Vec::new();
        for w in &writes {
            if !self.originals.contains_key(&w.at) {
                let mut original = [0u8; JUMP_LEN];
                // SAFETY: `w.at..+JUMP_LEN` lies in a readable executable mapping (checked by
                // `pages_to_unprotect`).
                unsafe { std::ptr::copy_nonoverlapping(w.at as *const u8, original.as_mut_ptr(), JUMP_LEN) };
                first_seen.push((w.at, original));
            }
        }
        // Addresses strictly inside rewritten bytes: no thread may be there, or return there.
        let inside: Vec<(u64, u64)> = writes.iter().map(|w| (w.at + 1, w.at + JUMP_LEN as u64)).collect();

        let preparing = prep_started.elapsed();
        let mut retries = 0;
        let stats = loop {
            let mut hit: Option<Hazard> = None;
            let mut write_error: Option<(u64, i32)> = None;
            let outcome = stop::with_threads_parked(
                &mut |parked| {
                    hit = find_hazard(parked, &inside, &mappings);
                    if hit.is_some() {
                        Err(String::new())
                    } else {
                        Ok(())
                    }
                },
                &mut || {
                    // SAFETY: every other thread is parked outside the rewritten bytes (checked
                    // above), the pages are executable mappings of this process, and the
                    // original protections are restored before anyone runs again.
                    write_error = unsafe { write_all(&writes, &pages) };
                    if write_error.is_some() {
                        Err(String::new())
                    } else {
                        Ok(())
                    }
                },
            );
            match outcome {
                Ok(stats) => break stats,
                Err(_) if hit.is_some() && retries + 1 < ATTEMPTS => {
                    retries += 1;
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err(e) => {
                    if let Some((page, errno)) = write_error {
                        return Err(format!(
                            "cannot make code page {page:#x} writable: {}",
                            std::io::Error::from_raw_os_error(errno)
                        ));
                    }
                    return Err(match hit {
                        Some(h) => h.describe(ATTEMPTS),
                        None => e,
                    });
                }
            }
        };
        for (at, original) in first_seen {
            self.originals.insert(at, original);
        }
        self.current = wanted;
        Ok(Installed {
            written: writes.len(),
            longest_pause: stats.longest_pause,
            threads: stats.threads,
            retries,
            preparing,
            gathering: stats.gathering,
        })
    }
}

/// A thread found where bytes are about to change.
#[derive(Clone, Copy)]
enum Hazard {
    /// Its program counter is inside rewritten bytes.
    Running { tid: i32, pc: u64 },
    /// A word of its stack points inside rewritten bytes (a return address, a saved context).
    Returning { tid: i32, addr: u64 },
    /// Its stack is in no mapping read before the stop (created since).
    UnknownStack { tid: i32 },
}

impl Hazard {
    fn describe(self, attempts: usize) -> String {
        match self {
            Hazard::Running { tid, pc } => format!(
                "thread {} kept executing the first bytes of a changed function (at {pc:#x}) in {attempts} attempts",
                stop::thread_name(tid)
            ),
            Hazard::Returning { tid, addr } => format!(
                "thread {} holds a return address inside the first bytes of a changed function ({addr:#x}); \
                 the function cannot be redirected while that frame is live",
                stop::thread_name(tid)
            ),
            Hazard::UnknownStack { tid } => {
                format!("the stack of thread {} could not be located", stop::thread_name(tid))
            }
        }
    }
}

/// Runs while every other thread is parked: must not allocate.
fn find_hazard(parked: &[stop::Parked], inside: &[(u64, u64)], mappings: &[Mapping]) -> Option<Hazard> {
    let is_inside = |addr: u64| {
        let i = inside.partition_point(|&(start, _)| start <= addr);
        i > 0 && addr < inside[i - 1].1
    };
    for p in parked {
        if is_inside(p.pc) {
            return Some(Hazard::Running { tid: p.tid, pc: p.pc });
        }
        let Some(stack) = maps::containing(mappings, p.sp) else {
            return Some(Hazard::UnknownStack { tid: p.tid });
        };
        if !stack.readable {
            return Some(Hazard::UnknownStack { tid: p.tid });
        }
        // SAFETY: `[sp, stack.end)` is mapped readable memory of a parked thread's stack, which
        // does not change while it is parked; words are read with volatile loads.
        let mut at = p.sp & !7;
        while at + 8 <= stack.end {
            let word = unsafe { std::ptr::read_volatile(at as *const u64) };
            if is_inside(word) {
                return Some(Hazard::Returning { tid: p.tid, addr: word });
            }
            at += 8;
        }
    }
    None
}

/// Pages holding bytes to rewrite, with the protection to restore afterwards.
fn pages_to_unprotect(writes: &[Write], mappings: &[Mapping]) -> Result<Vec<(u64, i32)>, String> {
    let page = page_size();
    let mut pages: Vec<(u64, i32)> = Vec::new();
    for w in writes {
        let end = w.at + JUMP_LEN as u64;
        let m = maps::containing(mappings, w.at)
            .filter(|m| m.executable && m.readable && end <= m.end)
            .ok_or_else(|| format!("{:#x} is not in an executable mapping of this process", w.at))?;
        let mut p = w.at & !(page - 1);
        while p < end {
            if pages.last().map(|l| l.0) != Some(p) {
                pages.push((p, m.prot()));
            }
            p += page;
        }
    }
    pages.sort_unstable();
    pages.dedup_by_key(|p| p.0);
    Ok(pages)
}

/// Writes every entry; `Some((page, errno))` if a page could not be made writable (then nothing
/// was written and every protection is as before). Does not allocate.
///
/// # Safety
/// Every other thread must be parked outside the rewritten bytes; `pages` must cover `writes`.
unsafe fn write_all(writes: &[Write], pages: &[(u64, i32)]) -> Option<(u64, i32)> {
    let size = page_size() as usize;
    for (i, &(p, _)) in pages.iter().enumerate() {
        // The patching thread itself may be running code on these pages: keep them executable.
        // SAFETY: `p` is a page of an executable mapping of this process.
        if unsafe { libc::mprotect(p as *mut _, size, libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) }
            != 0
        {
            // SAFETY: errno is thread-local.
            let errno = unsafe { *libc::__errno_location() };
            for &(q, prot) in &pages[..i] {
                // SAFETY: restores the protection read from /proc/self/maps.
                unsafe { libc::mprotect(q as *mut _, size, prot) };
            }
            return Some((p, errno));
        }
    }
    for w in writes {
        // SAFETY: the page is writable now and no other thread runs (see the caller).
        unsafe { std::ptr::copy_nonoverlapping(w.bytes.as_ptr(), w.at as *mut u8, JUMP_LEN) };
    }
    for &(p, prot) in pages {
        // SAFETY: as above; back to the mapping's own protection.
        unsafe { libc::mprotect(p as *mut _, size, prot) };
    }
    None
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    #[inline(never)]
    extern "C" fn old_answer(x: u64) -> u64 {
        // Long enough to hold a jump, and not folded with `new_answer`.
        std::hint::black_box(x).wrapping_mul(3).wrapping_add(1)
    }

    #[inline(never)]
    extern "C" fn new_answer(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(5).wrapping_add(2)
    }

    /// A thread calls a function through a pointer in a tight loop while its entry is redirected
    /// and restored again and again: every result is the old or the new function's, never garbage.
    #[test]
    fn a_function_called_in_a_tight_loop_is_redirected_and_restored() {
        let f: extern "C" fn(u64) -> u64 = std::hint::black_box(old_answer);
        let stop = Arc::new(AtomicBool::new(false));
        let (olds, news) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let worker = {
            let (stop, olds, news) = (stop.clone(), olds.clone(), news.clone());
            std::thread::spawn(move || {
                let mut x = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = f(x);
                    if r == x.wrapping_mul(3).wrapping_add(1) {
                        olds.fetch_add(1, Ordering::Relaxed);
                    } else if r == x.wrapping_mul(5).wrapping_add(2) {
                        news.fetch_add(1, Ordering::Relaxed);
                    } else {
                        panic!("f({x}) = {r}: neither version");
                    }
                    x = x.wrapping_add(1);
                }
            })
        };
        let mut detours = Detours::default();
        let from = old_answer as *const () as u64;
        let to = new_answer as *const () as u64;
        for round in 0..10 {
            let desired = if round % 2 == 0 { vec![(from, to)] } else { vec![] };
            detours.install(&desired).unwrap();
            assert_eq!(old_answer(7), if round % 2 == 0 { 37 } else { 22 });
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        worker.join().expect("the worker saw a wrong result");
        assert!(olds.load(Ordering::Relaxed) > 0 && news.load(Ordering::Relaxed) > 0);
        assert!(detours.current().is_empty());
        // The code page is back to its own protection: executable, not writable.
        let maps = maps::read().unwrap();
        let page = maps::containing(&maps, from).unwrap();
        assert!(page.executable && !page.writable, "{page:?}");
    }

    #[test]
    fn overlapping_or_repeated_entries_are_refused() {
        let mut d = Detours::default();
        assert!(d.install(&[(0x1000, 0x2000), (0x1002, 0x3000)]).unwrap_err().contains("overlap"));
        assert!(d.install(&[(0x1000, 0x2000), (0x1000, 0x3000)]).unwrap_err().contains("twice"));
        assert!(d.install(&[(0x1000, 0x1000 + (3 << 30))]).unwrap_err().contains("32-bit"));
    }
}
