//! Threads that reach an entry while its first byte is a breakpoint ([`arch::BREAKPOINT`]):
//! the SIGTRAP handler sends them where the entry's jump goes, as the kernel's `text_poke_bp`
//! emulates the instruction being written.
//!
//! While [`super::poke`] rewrites entries it publishes a table *entry → where to go*: the new
//! jump's target, or, for an entry going back to its original bytes, the jump it held until now.
//! Either is a complete version of the function, so a thread trapping at any moment of the
//! install runs one of the two. The table is withdrawn after the last byte is written, once no
//! handler reads it; a handler that runs later still (its trap was taken, then it waited for a
//! core) finds the byte rewritten and re-executes it.
//!
//! A trap that is not ours gets the default action, as if no handler were installed. The handler
//! is only installed when the program has none of its own (checked by [`install_handler`]).

use super::arch;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// The published table: sorted by entry.
struct Table {
    entries: *const (u64, u64),
    len: usize,
}

static TABLE: AtomicPtr<Table> = AtomicPtr::new(std::ptr::null_mut());
static READERS: AtomicUsize = AtomicUsize::new(0);
/// Bumped whenever a table is published or withdrawn: a handler that found no table and then a
/// breakpoint still in place knows, by a changed generation, that an install came and went in
/// between (the breakpoint is a newer install's) and looks again.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Traps taken at published entries, since the process started.
static HITS: AtomicU64 = AtomicU64::new(0);

/// Traps taken at published entries so far.
pub fn hits() -> u64 {
    HITS.load(Ordering::Relaxed)
}

/// Installs the SIGTRAP handler once, and checks before every install that it is still the one
/// in place: a program (a crash reporter, say) may install its own later, or reset it. Fails if
/// the program handles SIGTRAP itself.
pub fn install_handler() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: plain sigaction calls on zeroed, then filled, structures.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGTRAP, std::ptr::null(), &mut old) != 0 {
                return Err("cannot read the SIGTRAP handler".into());
            }
            if old.sa_sigaction != libc::SIG_DFL {
                return Err("the program handles SIGTRAP itself".into());
            }
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_trap as *const () as libc::sighandler_t;
            // SA_NODEFER: SIGTRAP stays unblocked while the handler runs (it runs no patched code,
            // so it never traps itself), and a thread that blocks SIGTRAP is always the
            // program's doing — which `poke::usable` looks for.
            act.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
            // Every asynchronous signal waits until this handler is done: a check round then never
            // sees a trapped context (its saved program counter lies inside an entry's bytes), and
            // no application handler can run — or `siglongjmp` out — while `READERS` counts us.
            // Synchronous signals stay open (blocked, the kernel would kill for them).
            act.sa_mask = super::signal::all_but_synchronous();
            if libc::sigaction(libc::SIGTRAP, &act, std::ptr::null_mut()) != 0 {
                return Err("cannot install the SIGTRAP handler".into());
            }
        }
        Ok(())
    })
    .clone()?;
    // SAFETY: reading the current disposition only.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    if unsafe { libc::sigaction(libc::SIGTRAP, std::ptr::null(), &mut current) } != 0 {
        return Err("cannot read the SIGTRAP handler".into());
    }
    if current.sa_sigaction != on_trap as *const () as libc::sighandler_t {
        return Err("the program replaced ipbp's SIGTRAP handler".into());
    }
    Ok(())
}

/// Publishes `entries` (entry → where to go, sorted by entry) until the guard is dropped.
pub fn publish(entries: &[(u64, u64)]) -> Published<'_> {
    debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
    let table = Box::new(Table { entries: entries.as_ptr(), len: entries.len() });
    let table = Box::into_raw(table);
    // SeqCst: ordered before the breakpoint bytes the caller writes next (a thread that traps on
    // one of them finds the table; the trap is a serialising event).
    TABLE.store(table, Ordering::SeqCst);
    GENERATION.fetch_add(1, Ordering::SeqCst);
    Published { table, _entries: std::marker::PhantomData }
}

/// A published table; dropping it withdraws the table once no handler reads it.
pub struct Published<'a> {
    table: *mut Table,
    _entries: std::marker::PhantomData<&'a [(u64, u64)]>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        TABLE.store(std::ptr::null_mut(), Ordering::SeqCst);
        GENERATION.fetch_add(1, Ordering::SeqCst);
        // SeqCst pairs with the handler's: either it saw the table withdrawn, or we see it here.
        while READERS.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
        // SAFETY: allocated by `publish`, withdrawn, and no handler holds it.
        drop(unsafe { Box::from_raw(self.table) });
    }
}

/// Where a trap at `site` goes, from the published table.
fn lookup(site: u64) -> Option<u64> {
    READERS.fetch_add(1, Ordering::SeqCst);
    let table = TABLE.load(Ordering::SeqCst);
    let found = if table.is_null() {
        None
    } else {
        // SAFETY: the table and its entries stay alive while READERS counts us (see `Drop`).
        let t = unsafe { &*table };
        let entries = unsafe { std::slice::from_raw_parts(t.entries, t.len) };
        entries.binary_search_by_key(&site, |e| e.0).ok().map(|i| entries[i].1)
    };
    READERS.fetch_sub(1, Ordering::SeqCst);
    found
}

extern "C" fn on_trap(_sig: i32, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    handle(info, ctx);
    arch::scrub_stack();
}

/// Everything the handler does, in its own frame, which `scrub_stack` then overwrites: the
/// trapped program counter lies inside an entry's bytes, and a stale copy of it on the stack would
/// look to the next check round like a saved context there.
#[inline(never)]
fn handle(info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // Only async-signal-safe work: atomics, a volatile read of code, sigaction.
    // SAFETY: the kernel passes a valid siginfo and context to an SA_SIGINFO handler.
    let (is_breakpoint, pc) = unsafe { (arch::is_breakpoint_trap(&*info), arch::interrupted_pc_sp(ctx).0) };
    if is_breakpoint {
        let site = arch::breakpoint_site(pc);
        loop {
            let generation = GENERATION.load(Ordering::SeqCst);
            if let Some(to) = lookup(site) {
                HITS.fetch_add(1, Ordering::Relaxed);
                // SAFETY: `ctx` is the interrupted context; execution resumes at `to`, as the jump
                // being written there would have sent it.
                unsafe { arch::set_pc(ctx, to) };
                return;
            }
            // SAFETY: the thread just executed the breakpoint at `site`, so the byte is mapped.
            if unsafe { std::ptr::read_volatile(site as *const u8) } != arch::BREAKPOINT {
                // Rewritten after the trap was taken: run what is there now.
                // SAFETY: as above.
                unsafe { arch::set_pc(ctx, site) };
                return;
            }
            // A breakpoint and no table: ours only if an install published a table since we
            // looked (then look again); with the generation unchanged, it is not ours.
            if GENERATION.load(Ordering::SeqCst) == generation {
                break;
            }
        }
    }
    // Not ours: the default action, as without this handler. A breakpoint is executed again
    // (and now kills with a core dump); another SIGTRAP is raised again, pending until we return.
    // SAFETY: resetting a signal's disposition and re-raising it are async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTRAP, libc::SIG_DFL);
        if is_breakpoint {
            arch::set_pc(ctx, arch::breakpoint_site(pc));
        } else {
            libc::raise(libc::SIGTRAP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    extern "C" fn seven() -> u64 {
        std::hint::black_box(7)
    }

    #[inline(never)]
    extern "C" fn eleven() -> u64 {
        std::hint::black_box(11)
    }

    /// A program that installs its own SIGTRAP handler after ours (a crash reporter, say) makes
    /// the next install park the threads instead: the check runs before every install.
    #[test]
    fn a_replaced_handler_is_noticed() {
        let _turn = super::super::test_turn();
        install_handler().unwrap();
        // SAFETY: swapping SIGTRAP's disposition and putting ours back; no other test traps now.
        unsafe {
            let mut ours: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGTRAP, std::ptr::null(), &mut ours);
            let mut other: libc::sigaction = std::mem::zeroed();
            other.sa_sigaction = libc::SIG_IGN;
            libc::sigaction(libc::SIGTRAP, &other, std::ptr::null_mut());
            let refused = install_handler();
            libc::sigaction(libc::SIGTRAP, &ours, std::ptr::null_mut());
            assert!(refused.unwrap_err().contains("replaced"));
        }
        install_handler().unwrap();
    }

    /// A call that meets a published breakpoint runs the table's target; once the table is
    /// withdrawn and the byte restored, the function's own code again.
    #[test]
    fn a_breakpoint_in_the_table_goes_to_its_target() {
        let _turn = super::super::test_turn();
        install_handler().unwrap();
        let f: extern "C" fn() -> u64 = std::hint::black_box(seven);
        let entry = f as *const () as u64;
        let table = [(entry, eleven as *const () as u64)];
        let maps = super::super::maps::read().unwrap();
        let prot = super::super::maps::containing(&maps, entry).unwrap().prot();
        let page = entry & !4095;
        let before = hits();
        // SAFETY: the test's own function; no other thread calls `seven`.
        unsafe {
            assert_eq!(libc::mprotect(page as *mut _, 4096, prot | libc::PROT_WRITE), 0);
            let original = std::ptr::read_volatile(entry as *const u8);
            let published = publish(&table);
            std::ptr::write_volatile(entry as *mut u8, arch::BREAKPOINT);
            assert_eq!(f(), 11);
            std::ptr::write_volatile(entry as *mut u8, original);
            drop(published);
            libc::mprotect(page as *mut _, 4096, prot);
        }
        assert_eq!(f(), 7);
        assert!(hits() > before);
    }
}
