//! In-place patching: the entry of every changed function jumps to its newest version.
//!
//! A detour overwrites the first [`arch::JUMP_LEN`] bytes of a function with a jump into the patch
//! (which ipbp-ld places within ±2 GiB). Every caller — a direct call, a vtable, a `fn` pointer
//! stored at startup, a closure held by a framework — reaches the new code, and functions never
//! patched cost nothing. [`Detours::install`] takes the *whole* desired set: an entry it no longer
//! names gets its original bytes back (a revert).
//!
//! How bytes other threads may be running are rewritten:
//! - [`poke`], the usual way: the kernel's `text_poke_bp` sequence — a breakpoint first
//!   ([`trap`] sends a thread that meets it on), one check round ([`check`]) in which each
//!   thread makes sure it is not between two instructions of the bytes to change, the rest of the
//!   bytes, then the first byte, with every core serialised between steps ([`sync`]). No thread
//!   is held; each is interrupted once, briefly.
//! - [`park`], the fallback when breakpoints cannot be relied on: every other thread waits in a
//!   signal handler while all entries are written.
//!
//! Both rest on what ipbp-ld checked when it planned the detour: the function is at least as long
//! as the jump, its first bytes hold no call (a return address there would land inside the jump)
//! and are no branch target inside the function. At run time no program counter and no word of
//! any thread's stack (return addresses, a signal frame's saved program counter) may point
//! strictly inside the bytes being rewritten ([`hazard`]) — else the install waits and retries.

#[cfg_attr(target_arch = "x86_64", path = "x86_64.rs")]
mod arch;
mod check;
mod hazard;
mod maps;
mod park;
mod poke;
mod pristine;
pub mod signal;
mod sync;
mod threads;
mod trap;

use maps::Mapping;
use std::collections::BTreeMap;
use std::time::Duration;

pub use arch::JUMP_LEN;
/// Used by `restart` to hold every other thread while it executes the new build.
pub(crate) use park::with_threads_parked;

/// Tests that write code or run rounds take turns: rounds are one at a time per process, and a
/// thread parked by one test would look, to another, like a thread blocking signals.
#[cfg(test)]
static TEST_TURNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
fn test_turn() -> std::sync::MutexGuard<'static, ()> {
    TEST_TURNS.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often a parked install is retried while a thread is inside the bytes to rewrite.
const PARK_ATTEMPTS: usize = 200;

/// Prepares in-place patching when the runtime starts, while the program has few threads:
/// registering for core serialisation waits for an RCU grace period once threads exist.
pub fn prepare() {
    sync::register();
}

/// The detours installed in this process.
#[derive(Default)]
pub struct Detours {
    /// Entry → the bytes it held before the first detour there.
    originals: BTreeMap<u64, [u8; JUMP_LEN]>,
    /// Entry → where its jump goes now (the live set, which each install replaces whole).
    current: BTreeMap<u64, u64>,
    /// Entry of an earlier patch's function → its anchor: jumps written for good, which no later
    /// set names or reverts. Kept apart from `current`, so an install's work follows the live set
    /// and not the number of patches before it.
    settled: BTreeMap<u64, u64>,
}

/// How the bytes were written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Nothing to write.
    #[default]
    None,
    /// Breakpoint first, nobody held ([`poke`]).
    Breakpoint,
    /// Every other thread parked ([`park`]).
    Parked,
}

/// What an install did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Installed {
    pub method: Method,
    /// Entries written (jumps placed or originals restored).
    pub written: usize,
    /// Longest time the install kept any other thread from its own code: the CPU time it spent
    /// in the check round's handler, or (parked) from its arrival to the release.
    pub longest_pause: Duration,
    /// For the breakpoint way: the longest wall-clock time a thread was in the round's handler,
    /// which includes waiting for a core behind other busy threads.
    pub longest_wall: Duration,
    /// Threads the round reached (none when no round was needed).
    pub threads: usize,
    /// Rounds repeated because a thread was inside the bytes.
    pub retries: usize,
    /// Reading the mappings and the original bytes, before anything is written.
    pub preparing: Duration,
    /// From the start until every call of a changed function runs new code: the breakpoints are
    /// placed and every core serialised (later steps only make that path a plain jump), or the
    /// parked threads released.
    pub live: Duration,
    /// From the first signal of the last round to every thread's answer.
    pub gathering: Duration,
    /// Calls that met a breakpoint and were sent on during the install.
    pub traps: u64,
    /// Why the breakpoint sequence was not used, when it was not.
    pub fallback: Option<&'static str>,
}

/// One entry's new bytes.
#[derive(Clone, Copy)]
struct Write {
    at: u64,
    bytes: [u8; JUMP_LEN],
}

/// Which way to write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prefer {
    Breakpoint,
    Park,
}

impl Detours {
    /// Whether a jump is written at `entry` now.
    pub fn is_written(&self, entry: u64) -> bool {
        self.current.contains_key(&entry) || self.settled.contains_key(&entry)
    }

    /// Whether `entry` holds a jump for good.
    pub fn is_settled(&self, entry: u64) -> bool {
        self.settled.contains_key(&entry)
    }

    /// How many entries hold a jump for good.
    pub fn settled_len(&self) -> usize {
        self.settled.len()
    }

    /// `(entry, target)` of every detour in place.
    pub fn current(&self) -> Vec<(u64, u64)> {
        self.current.iter().map(|(&a, &b)| (a, b)).collect()
    }

    /// Makes the installed detours exactly `desired` (entry → target). The caller has checked that
    /// every entry is a function entry of this process's code at least `JUMP_LEN` bytes long and
    /// every target code of this process.
    ///
    /// `IPBP_INSTALL=park` in the program's environment makes every install park the threads
    /// (the fallback), e.g. to compare the two ways or to rule the breakpoint sequence out.
    ///
    /// `settle` adds jumps for good (entry of an earlier patch's function → its anchor): written
    /// in the same sequence, then kept out of every later set.
    pub fn install(&mut self, desired: &[(u64, u64)], settle: &[(u64, u64)]) -> Result<Installed, String> {
        static PREFER: std::sync::OnceLock<Prefer> = std::sync::OnceLock::new();
        let prefer = *PREFER.get_or_init(|| match std::env::var("IPBP_INSTALL").as_deref() {
            Ok("park") => Prefer::Park,
            _ => Prefer::Breakpoint,
        });
        self.install_preferring(desired, settle, prefer)
    }

    /// The settle entries not yet in place, checked: none is listed twice, named by the live set,
    /// live now, or settled elsewhere already.
    fn new_settles(
        &self,
        wanted: &BTreeMap<u64, u64>,
        settle: &[(u64, u64)],
    ) -> Result<BTreeMap<u64, u64>, String> {
        let mut fresh = BTreeMap::new();
        for &(from, to) in settle {
            // An entry live until now may be settled (its jump is retargeted), not one the new
            // set names.
            if wanted.contains_key(&from) {
                return Err(format!("entry {from:#x} holds a live detour; it cannot be settled"));
            }
            match self.settled.get(&from) {
                Some(&t) if t == to => continue,
                Some(_) => return Err(format!("entry {from:#x} is settled elsewhere already")),
                None => {}
            }
            if fresh.insert(from, to).is_some() {
                return Err(format!("settle entry {from:#x} is listed twice"));
            }
        }
        Ok(fresh)
    }

    fn install_preferring(
        &mut self,
        desired: &[(u64, u64)],
        settle: &[(u64, u64)],
        prefer: Prefer,
    ) -> Result<Installed, String> {
        let wanted: BTreeMap<u64, u64> = desired.iter().copied().collect();
        if wanted.len() != desired.len() {
            return Err("a detour entry is listed twice".into());
        }
        let fresh = self.new_settles(&wanted, settle)?;
        if let Some(from) = wanted.keys().find(|f| self.settled.contains_key(f)) {
            return Err(format!("entry {from:#x} is settled for good; it cannot be live again"));
        }
        // No two jumps written now overlap, nor one of them a settled jump.
        let mut written: Vec<u64> = wanted.keys().chain(fresh.keys()).copied().collect();
        written.sort_unstable();
        let mut prev_end = 0u64;
        for &from in &written {
            if from < prev_end {
                return Err(format!("detour entries overlap at {from:#x}"));
            }
            prev_end = from.checked_add(JUMP_LEN as u64).ok_or("detour entry out of range")?;
            let near = from.saturating_sub(JUMP_LEN as u64 - 1)..from.saturating_add(JUMP_LEN as u64);
            if self.settled.range(near).any(|(&at, _)| at != from) {
                return Err(format!("detour entry {from:#x} overlaps a settled one"));
            }
        }
        let mut writes = Vec::new();
        for (&from, &to) in fresh.iter() {
            let bytes = arch::encode_jump(from, to)
                .ok_or_else(|| format!("detour {from:#x} -> {to:#x} is beyond a 32-bit jump"))?;
            writes.push(Write { at: from, bytes });
        }
        for (&from, &to) in &wanted {
            if self.current.get(&from) == Some(&to) {
                continue;
            }
            let bytes = arch::encode_jump(from, to)
                .ok_or_else(|| format!("detour {from:#x} -> {to:#x} is beyond a 32-bit jump"))?;
            writes.push(Write { at: from, bytes });
        }
        for (&from, original) in &self.originals {
            if !wanted.contains_key(&from) && !fresh.contains_key(&from) && self.current.contains_key(&from) {
                writes.push(Write { at: from, bytes: *original });
            }
        }
        if writes.is_empty() {
            self.current = wanted;
            return Ok(Installed::default());
        }
        writes.sort_unstable_by_key(|w| w.at);

        let started = std::time::Instant::now();
        let entries: Vec<u64> = writes.iter().map(|w| w.at).collect();
        let mappings = maps::read_around(&entries)?;
        let pages = pages_to_unprotect(&writes, &mappings)?;
        // What each entry holds now (code is only written here, under the caller's lock, so
        // reading it while other threads run is a plain read).
        let olds: Vec<[u8; JUMP_LEN]> = writes
            .iter()
            .map(|w| {
                let mut old = [0u8; JUMP_LEN];
                // SAFETY: `w.at..+JUMP_LEN` lies in a readable executable mapping (checked by
                // `pages_to_unprotect`).
                unsafe { std::ptr::copy_nonoverlapping(w.at as *const u8, old.as_mut_ptr(), JUMP_LEN) };
                old
            })
            .collect();
        if signal::traced() {
            self.no_foreign_bytes(&writes, &olds)?;
        }
        let fallback = match prefer {
            Prefer::Park => Some("IPBP_INSTALL=park"),
            Prefer::Breakpoint => poke::usable().err().map(|why| {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| eprintln!("ipbp: in-place installs park every thread: {why}"));
                "breakpoints cannot be used"
            }),
        };
        let preparing = started.elapsed();

        let mut installed = if fallback.is_some() {
            // Parked, the new code takes effect when the threads are released: at the end.
            let parked = self.write_parked(&writes, &pages, &mappings)?;
            Installed { live: started.elapsed(), ..parked }
        } else {
            let pokes: Vec<poke::Poke> = writes
                .iter()
                .zip(&olds)
                .map(|(w, old)| {
                    let now = self.current.get(&w.at).copied();
                    let next = wanted.get(&w.at).or_else(|| fresh.get(&w.at)).copied();
                    poke::Poke {
                        write: *w,
                        old: *old,
                        // An entry always has a jump on one side: the new one, or (for a revert)
                        // the one it holds now.
                        goto: next.or(now).expect("a write places or removes a jump"),
                        old_has_boundaries: now.is_none(),
                    }
                })
                .collect();
            // SAFETY: the pages are made writable around the sequence; entries were checked by
            // ipbp-ld and the caller (see `install`), and installs are serialised by its lock.
            let poked = with_pages_writable(&pages, || unsafe { poke::write_all(&pokes, &mappings) })
                .map_err(Unwritable::describe)??;
            let live = poked.live_at.duration_since(started);
            Installed {
                method: Method::Breakpoint,
                longest_pause: poked.round.map_or(Duration::ZERO, |r| r.longest_pause),
                longest_wall: poked.round.map_or(Duration::ZERO, |r| r.longest_wall),
                threads: poked.round.map_or(0, |r| r.threads),
                gathering: poked.round.map_or(Duration::ZERO, |r| r.gathering),
                retries: poked.retries,
                traps: poked.traps,
                live,
                ..Installed::default()
            }
        };
        for (w, old) in writes.iter().zip(&olds) {
            if !self.current.contains_key(&w.at) && !fresh.contains_key(&w.at) {
                self.originals.entry(w.at).or_insert(*old);
            }
        }
        self.current = wanted;
        for from in fresh.keys() {
            self.originals.remove(from); // never restored: it is settled for good
        }
        self.settled.extend(fresh);
        installed.written = writes.len();
        installed.preparing = preparing;
        installed.fallback = fallback;
        Ok(installed)
    }

    /// Under a debugger: every entry about to be rewritten holds what ipbp expects — the jump it
    /// wrote there, or the bytes of the file it was loaded from — and no software breakpoint
    /// ([`pristine`]). The debugger's breakpoints stay inserted while the program runs, so
    /// one there now would be saved as original bytes or overwritten (and later "restored"
    /// into the jump).
    fn no_foreign_bytes(&self, writes: &[Write], olds: &[[u8; JUMP_LEN]]) -> Result<(), String> {
        for (w, old) in writes.iter().zip(olds) {
            let expected = match self.current.get(&w.at) {
                Some(&to) => arch::encode_jump(w.at, to),
                None => pristine::file_bytes(w.at),
            };
            let foreign = match expected {
                Some(expected) => expected != *old,
                None => old.contains(&arch::BREAKPOINT),
            };
            if foreign {
                return Err(format!(
                    "a debugger has a breakpoint in the first {JUMP_LEN} bytes of `{}`, which the patch rewrites; delete or disable it (or detach) and build again",
                    pristine::name_of(w.at)
                ));
            }
        }
        Ok(())
    }

    /// The fallback: every other thread parked while all entries are written.
    fn write_parked(
        &self,
        writes: &[Write],
        pages: &[(u64, i32)],
        mappings: &[Mapping],
    ) -> Result<Installed, String> {
        // Addresses strictly inside rewritten bytes: no thread may be there, or return there.
        let inside: Vec<(u64, u64)> = writes.iter().map(|w| (w.at + 1, w.at + JUMP_LEN as u64)).collect();
        let mut mappings = std::borrow::Cow::Borrowed(mappings);
        let mut retries = 0;
        loop {
            let mut hit: Option<hazard::Hazard> = None;
            let mut write_error: Option<Unwritable> = None;
            let outcome = park::with_threads_parked(
                &mut |parked| {
                    // SAFETY: every thread in `parked` is parked; its stack does not change.
                    hit = parked
                        .iter()
                        .find_map(|p| unsafe { hazard::of(p.tid, p.pc, p.sp, &inside, &mappings) });
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
                    let written = with_pages_writable(pages, || {
                        for w in writes {
                            unsafe {
                                std::ptr::copy_nonoverlapping(w.bytes.as_ptr(), w.at as *mut u8, JUMP_LEN)
                            };
                        }
                    });
                    written.map_err(|e| {
                        write_error = Some(e);
                        String::new() // empty: allocates nothing
                    })
                },
            );
            match outcome {
                Ok(stats) => {
                    return Ok(Installed {
                        method: Method::Parked,
                        longest_pause: stats.longest_pause,
                        threads: stats.threads,
                        retries,
                        gathering: stats.gathering,
                        ..Installed::default()
                    })
                }
                Err(_) if hit.is_some() && retries + 1 < PARK_ATTEMPTS => {
                    // The mappings again before the next stop: a new thread's stack, or a mapping
                    // that changed since (the scan reads each stack to its mapping's end).
                    mappings = std::borrow::Cow::Owned(maps::read()?);
                    retries += 1;
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err(e) => {
                    return Err(match (write_error, hit) {
                        (Some(w), _) => w.describe(),
                        (None, Some(h)) => h.describe(PARK_ATTEMPTS),
                        (None, None) => e,
                    })
                }
            }
        }
    }
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

/// A code page that could not be made writable, and the `errno`.
#[derive(Debug, Clone, Copy)]
struct Unwritable(u64, i32);

impl Unwritable {
    fn describe(self) -> String {
        format!("cannot make code page {:#x} writable: {}", self.0, std::io::Error::from_raw_os_error(self.1))
    }
}

/// Runs `write` with `pages` writable (and still executable: the patching thread, or a parked
/// one, may run code on them), then gives each page its own protection back. If a page cannot
/// be made writable nothing is written and every protection is as before. Allocates nothing
/// (the parked install runs it while threads are parked).
fn with_pages_writable<T>(pages: &[(u64, i32)], write: impl FnOnce() -> T) -> Result<T, Unwritable> {
    let size = page_size() as usize;
    for (i, &(p, _)) in pages.iter().enumerate() {
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
            return Err(Unwritable(p, errno));
        }
    }
    let result = write();
    for &(p, prot) in pages {
        // SAFETY: as above; back to the mapping's own protection.
        unsafe { libc::mprotect(p as *mut _, size, prot) };
    }
    Ok(result)
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

    // Each test rewrites its own functions: tests run in parallel in one process. The bodies
    // differ (no folding) and are long enough to hold a jump.
    #[inline(never)]
    extern "C" fn answer_a(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(3).wrapping_add(1)
    }
    #[inline(never)]
    extern "C" fn answer_a1(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(5).wrapping_add(2)
    }
    #[inline(never)]
    extern "C" fn answer_a2(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(7).wrapping_add(3)
    }
    #[inline(never)]
    extern "C" fn answer_b(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(11).wrapping_add(4)
    }
    #[inline(never)]
    extern "C" fn answer_b1(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(13).wrapping_add(5)
    }
    #[inline(never)]
    extern "C" fn answer_b2(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(17).wrapping_add(6)
    }

    type Answer = extern "C" fn(u64) -> u64;

    /// Busy threads call `versions[0]` through a pointer in a tight loop while its entry is
    /// redirected to the other versions, retargeted and restored again and again: every result
    /// is one of the versions', never garbage, and the calling thread sees each install at once.
    fn redirect_under_load(prefer: Prefer, versions: [Answer; 3]) -> Vec<Installed> {
        let _turn = test_turn();
        let f: Answer = std::hint::black_box(versions[0]);
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
        let started = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (stop, seen, started) = (stop.clone(), seen.clone(), started.clone());
                std::thread::spawn(move || {
                    started.fetch_add(1, Ordering::Relaxed);
                    let mut x = 1u64;
                    while !stop.load(Ordering::Relaxed) {
                        let r = f(x);
                        let which = [3, 5, 7, 11, 13, 17]
                            .iter()
                            .zip([1, 2, 3, 4, 5, 6])
                            .position(|(m, a)| r == x.wrapping_mul(*m).wrapping_add(a))
                            .unwrap_or_else(|| panic!("f({x}) = {r}: no version's result"));
                        seen[which % 3].fetch_add(1, Ordering::Relaxed);
                        x = x.wrapping_add(1);
                    }
                })
            })
            .collect();
        // Every worker runs (a thread being created blocks every signal for a moment).
        while started.load(Ordering::Relaxed) < 4 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut detours = Detours::default();
        let entry = versions[0] as *const () as u64;
        let mut installs = Vec::new();
        for step in [1, 2, 0, 2, 1, 0, 1, 0, 2, 0] {
            let desired = if step == 0 { vec![] } else { vec![(entry, versions[step] as *const () as u64)] };
            installs.push(detours.install_preferring(&desired, &[], prefer).unwrap());
            assert_eq!(f(7), versions[step](7), "step {step}");
            std::thread::sleep(Duration::from_millis(3));
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().expect("a worker saw a wrong result");
        }
        assert!(seen.iter().all(|n| n.load(Ordering::Relaxed) > 0), "every version ran: {seen:?}");
        assert!(detours.current().is_empty());
        // The code page is back to its own protection: executable, not writable.
        let maps = maps::read().unwrap();
        let page = maps::containing(&maps, entry).unwrap();
        assert!(page.executable && !page.writable, "{page:?}");
        installs
    }

    #[test]
    fn breakpoint_installs_redirect_retarget_and_restore_a_busy_function() {
        let installs = redirect_under_load(Prefer::Breakpoint, [answer_a, answer_a1, answer_a2]);
        assert!(installs.iter().all(|i| i.method == Method::Breakpoint), "{installs:?}");
        // A check round only when an original prologue is replaced; jumps are rewritten without.
        assert!(installs[0].threads >= 4, "{:?}", installs[0]);
        assert_eq!(installs[1].threads, 0, "a jump retargeted without a round: {:?}", installs[1]);
        assert_eq!(installs[2].threads, 0, "restored without a round: {:?}", installs[2]);
    }

    #[inline(never)]
    extern "C" fn answer_c(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(19).wrapping_add(7)
    }
    #[inline(never)]
    extern "C" fn answer_c1(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(23).wrapping_add(8)
    }

    /// A thread forks again and again while entries are rewritten breakpoint first: no child
    /// starts with a breakpoint at an entry (nothing in the child would ever finish that install).
    #[test]
    fn a_fork_waits_until_no_breakpoint_is_left() {
        let _turn = test_turn();
        let entry = answer_c as *const () as u64;
        let stop = Arc::new(AtomicBool::new(false));
        let forker = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut children, mut trapped) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: the child only reads a byte of code and exits.
                    match unsafe { libc::fork() } {
                        0 => unsafe {
                            let first = std::ptr::read_volatile(entry as *const u8);
                            libc::_exit(i32::from(first == arch::BREAKPOINT));
                        },
                        pid if pid > 0 => {
                            let mut status = 0;
                            // SAFETY: waiting for our own child.
                            unsafe { libc::waitpid(pid, &mut status, 0) };
                            children += 1;
                            trapped += i32::from(libc::WEXITSTATUS(status) != 0);
                        }
                        _ => panic!("fork failed"),
                    }
                }
                (children, trapped)
            })
        };
        let mut detours = Detours::default();
        let installs: Vec<Installed> = (0..20)
            .map(|i| {
                let desired = if i % 2 == 0 { vec![(entry, answer_c1 as *const () as u64)] } else { vec![] };
                detours.install_preferring(&desired, &[], Prefer::Breakpoint).unwrap()
            })
            .collect();
        stop.store(true, Ordering::Relaxed);
        let (children, trapped) = forker.join().unwrap();
        assert!(installs.iter().all(|i| i.method == Method::Breakpoint), "{installs:?}");
        assert!(children > 0);
        assert_eq!(trapped, 0, "{trapped} of {children} children started with a breakpoint at the entry");
    }

    #[test]
    fn parked_installs_redirect_retarget_and_restore_a_busy_function() {
        let installs = redirect_under_load(Prefer::Park, [answer_b, answer_b1, answer_b2]);
        assert!(installs.iter().all(|i| i.method == Method::Parked && i.threads >= 4), "{installs:?}");
    }

    #[inline(never)]
    extern "C" fn answer_d(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(29).wrapping_add(9)
    }
    #[inline(never)]
    extern "C" fn answer_d1(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(31).wrapping_add(10)
    }
    #[inline(never)]
    extern "C" fn answer_d2(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(37).wrapping_add(11)
    }

    #[inline(never)]
    extern "C" fn answer_e(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(41).wrapping_add(12)
    }
    #[inline(never)]
    extern "C" fn answer_e1(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(43).wrapping_add(13)
    }

    /// An old copy settled on its anchor follows the anchor's live jump, stays when later sets do
    /// not name it (the anchor going back to its own code included), and cannot be moved or made
    /// live again.
    #[test]
    fn settled_jumps_follow_their_anchor_and_stay_out_of_later_sets() {
        let _turn = test_turn();
        let (old, anchor, newest) =
            (answer_d as *const () as u64, answer_d1 as *const () as u64, answer_d2 as *const () as u64);
        let call = |f: u64, x: u64| {
            // SAFETY: `f` is one of the `extern "C" fn(u64) -> u64` above.
            let f: Answer = unsafe { std::mem::transmute(f as usize) };
            f(x)
        };
        let mut d = Detours::default();
        d.install(&[(anchor, newest)], &[(old, anchor)]).unwrap();
        assert_eq!(call(old, 5), answer_d2(5), "old copy -> anchor -> newest");
        assert_eq!(d.current(), vec![(anchor, newest)], "the live set does not list settled jumps");
        assert_eq!(d.settled_len(), 1);
        // The next set names only the anchor's jump (here: none, a revert): the old copy stays sent on.
        d.install(&[], &[]).unwrap();
        assert_eq!(call(old, 5), std::hint::black_box(answer_d1)(5), "old copy -> anchor's own code");
        assert!(d.is_written(old) && !d.is_written(anchor));
        d.install(&[], &[(old, anchor)]).unwrap(); // the same settle again: nothing to do
        assert!(d.install(&[], &[(old, newest)]).unwrap_err().contains("settled elsewhere"));
        assert!(d.install(&[(anchor, newest)], &[(anchor, old)]).unwrap_err().contains("live"));
        // An entry live until now is settled by retargeting its jump.
        let (e, e1) = (answer_e as *const () as u64, answer_e1 as *const () as u64);
        d.install(&[(e, newest)], &[]).unwrap();
        d.install(&[], &[(e, e1)]).unwrap();
        assert_eq!(call(e, 4), std::hint::black_box(answer_e1)(4), "live, then settled elsewhere");
        assert!(d.current().is_empty() && d.is_settled(e));
        assert!(d.install(&[(old + 2, newest)], &[]).unwrap_err().contains("settled"));
        assert!(d.install(&[(old, newest)], &[]).unwrap_err().contains("settled"));
        assert_eq!(call(old, 6), std::hint::black_box(answer_d1)(6), "refused sets changed nothing");
    }

    #[test]
    fn overlapping_or_repeated_entries_are_refused() {
        let mut d = Detours::default();
        assert!(d.install(&[(0x1000, 0x2000), (0x1002, 0x3000)], &[]).unwrap_err().contains("overlap"));
        assert!(d.install(&[(0x1000, 0x2000), (0x1000, 0x3000)], &[]).unwrap_err().contains("twice"));
        assert!(d.install(&[(0x1000, 0x1000 + (3 << 30))], &[]).unwrap_err().contains("32-bit"));
    }
}
