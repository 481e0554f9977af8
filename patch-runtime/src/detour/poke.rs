//! The usual install: the kernel's `text_poke_bp` sequence, which rewrites entries while every
//! thread keeps running. No thread is held; each is interrupted once, for microseconds.
//!
//! For each entry being rewritten (old bytes → new bytes, [`arch::JUMP_LEN`] long):
//!
//! 1. The first byte becomes a breakpoint, and every core is serialised ([`sync`]). From then on
//!    a thread that reaches the entry traps, and [`trap`] sends it where a jump there goes.
//! 2. If the old bytes hold more than one instruction (an original prologue, not a jump of
//!    ours), a thread may have stopped between two of them, or hold a return address or a saved
//!    context pointing there. A check round ([`check`]) interrupts every other thread once; each
//!    answers whether it is inside. One inside moves on in a few instructions: the round is
//!    retried a little later (a thread still inside after [`ATTEMPTS`] rounds fails the install,
//!    and the breakpoints are taken back). A thread that answered clear cannot get back in: the
//!    first byte traps.
//! 3. The rest of the bytes are written — no thread executes them — and every core is
//!    serialised, so none has the old rest in flight.
//! 4. The first byte becomes the new first byte, and every core is serialised again. A thread
//!    sees the breakpoint (and is sent on) or the whole new instruction, never a torn one.
//!
//! Threads that trap in the window pay a signal delivery per call (a few microseconds) — the
//! same cost the kernel's sequence puts on a CPU that meets its `int3`.
//!
//! **When this is not used** (then [`super::park`] is): a debugger traces the process (it would
//! stop at each breakpoint), the program handles SIGTRAP itself (checked before every install),
//! a thread blocks SIGTRAP (a blocked breakpoint trap kills the process), or the kernel cannot
//! serialise cores on request. A thread that starts blocking SIGTRAP during the window and then
//! calls a patched function would be killed: blocking a synchronous signal is undefined under
//! POSIX, but an application signal handler registered with a full `sa_mask` that calls program
//! functions does it while it runs (ARCHITECTURE.md, *Limits*).

use super::check::{self, NotClear};
use super::maps::{self, Mapping};
use super::{arch, signal, sync, threads, trap, Write};
use std::time::Duration;

/// How often a check round is repeated while a thread is inside the bytes to rewrite.
pub const ATTEMPTS: usize = 200;

/// Whether this process can use the sequence now; `Err` says why not.
pub fn usable() -> Result<(), String> {
    if signal::traced() {
        return Err("a debugger traces the process".into());
    }
    trap::install_handler()?;
    if !sync::register() {
        return Err("the kernel cannot serialise this process's cores (membarrier SYNC_CORE)".into());
    }
    // A new thread starts with every signal blocked until glibc has set it up, and may wait a
    // while for a core to get there: only a block that lasts counts. (A thread blocking the
    // round signal is no danger: the round times out and the breakpoints are taken back.)
    let deadline = std::time::Instant::now() + Duration::from_millis(50);
    loop {
        let Some((tid, sig)) = threads::thread_blocking(&[libc::SIGTRAP])? else { return Ok(()) };
        if std::time::Instant::now() >= deadline {
            return Err(format!("thread {} blocks signal {sig}", threads::thread_name(tid)));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What one sequence measured.
#[derive(Debug, Clone, Copy)]
pub struct Poked {
    /// Check rounds that were not clear and were repeated.
    pub retries: usize,
    /// The last (clear) round, if one was needed.
    pub round: Option<check::CheckStats>,
    /// Threads sent on by the trap handler during the install.
    pub traps: u64,
    /// When the breakpoints were placed and every core serialised: from then on every call of a
    /// changed entry runs the new code.
    pub live_at: std::time::Instant,
}

/// One entry being rewritten.
pub struct Poke {
    pub write: Write,
    /// What the entry holds now.
    pub old: [u8; arch::JUMP_LEN],
    /// Where a thread that traps at the entry goes: the target of the jump it holds now or will
    /// hold (an entry always has a jump on one side).
    pub goto: u64,
    /// The old bytes may hold an instruction boundary strictly inside them.
    pub old_has_boundaries: bool,
}

/// Runs the sequence over `pokes` (sorted by entry); `mappings` were read before (for the check
/// round's stack scan). On `Err` every entry holds its old bytes again.
///
/// # Safety
/// Each entry must be the start of a function of this process's code, at least
/// `arch::JUMP_LEN` bytes long, with no branch target inside those bytes (ipbp-ld checks), and
/// its page writable; no other install runs; [`usable`] said yes.
pub unsafe fn write_all(pokes: &[Poke], mappings: &[Mapping]) -> Result<Poked, String> {
    let table: Vec<(u64, u64)> = pokes.iter().map(|p| (p.write.at, p.goto)).collect();
    let traps_before = trap::hits();
    // Declared first, dropped last: a `fork()` waits until no breakpoint is left.
    let _no_fork = NoFork::hold();
    let published = trap::publish(&table);

    // 1. Breakpoints. From here until step 4 every entry holds a breakpoint, and the table must
    //    stay published while one does: `Breakpoints` takes them back, however this function is
    //    left before step 4 (an error, or a panic), before `published` is dropped.
    let mut breakpoints = Breakpoints { pokes, tails_written: false, armed: true };
    for p in pokes {
        // SAFETY: the caller's contract; one byte, so every fetch sees the old or the new one.
        unsafe { std::ptr::write_volatile(p.write.at as *mut u8, arch::BREAKPOINT) };
    }
    let mut poked = Poked { retries: 0, round: None, traps: 0, live_at: std::time::Instant::now() };
    if !sync::all_cores() {
        return Err("the kernel did not serialise this process's cores (membarrier)".to_string());
    }
    poked.live_at = std::time::Instant::now();

    // 2. Nobody between two instructions of old bytes.
    let inside: Vec<(u64, u64)> = pokes
        .iter()
        .filter(|p| p.old_has_boundaries)
        .map(|p| (p.write.at + 1, p.write.at + arch::JUMP_LEN as u64))
        .collect();
    if !inside.is_empty() {
        let mut mappings = std::borrow::Cow::Borrowed(mappings);
        loop {
            match check::every_thread(&inside, &mappings) {
                Ok(stats) => {
                    poked.round = Some(stats);
                    break;
                }
                Err(NotClear::Hazard(_)) if poked.retries + 1 < ATTEMPTS => {
                    // The mappings again before the next round: a new thread's stack, or a
                    // mapping that changed since (the scan reads each stack to its mapping's end).
                    mappings = std::borrow::Cow::Owned(maps::read()?);
                    poked.retries += 1;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(NotClear::Hazard(h)) => return Err(h.describe(ATTEMPTS)),
                Err(NotClear::Failed(e)) => return Err(e),
            }
        }
    }

    // 3. The rest of each entry; no thread executes these bytes (step 2), nor fetches them
    //    through the first byte, which traps.
    for p in pokes {
        // SAFETY: the caller's contract.
        unsafe {
            std::ptr::copy_nonoverlapping(
                p.write.bytes[1..].as_ptr(),
                (p.write.at + 1) as *mut u8,
                arch::JUMP_LEN - 1,
            )
        };
    }
    breakpoints.tails_written = true;
    serialise_every_core(mappings);
    // 4. The first byte.
    for p in pokes {
        // SAFETY: as in step 1.
        unsafe { std::ptr::write_volatile(p.write.at as *mut u8, p.write.bytes[0]) };
    }
    breakpoints.disarm();
    serialise_every_core(mappings);
    arch::serialize_core();
    drop(published);
    poked.traps = trap::hits() - traps_before;
    Ok(poked)
}

/// Held while entries hold breakpoints: `fork()` waits for it (a `pthread_atfork` handler), so a
/// child never starts with breakpoints and a half-written entry that no install of its own would
/// ever finish. glibc runs the prepare handlers before it takes its own locks (malloc's, stdio's),
/// so the patching thread, which allocates meanwhile, cannot wait on the forking one; and a
/// thread waiting here still answers a check round (the signal interrupts the wait).
struct NoFork;

static NO_FORK: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// The guard `prepare_fork` took, released by the parent and the child after the fork.
static mut FORK_GUARD: Option<std::sync::MutexGuard<'static, ()>> = None;

impl NoFork {
    fn hold() -> std::sync::MutexGuard<'static, ()> {
        static REGISTERED: std::sync::Once = std::sync::Once::new();
        REGISTERED.call_once(|| {
            // SAFETY: registering plain extern "C" functions.
            unsafe { libc::pthread_atfork(Some(prepare_fork), Some(after_fork), Some(after_fork)) };
        });
        NO_FORK.lock().unwrap_or_else(|p| p.into_inner())
    }
}

extern "C" fn prepare_fork() {
    let guard = NO_FORK.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: only the forking thread runs between prepare and the parent/child handlers, and
    // forks are serialised by the lock itself.
    unsafe { *std::ptr::addr_of_mut!(FORK_GUARD) = Some(guard) };
}

extern "C" fn after_fork() {
    // SAFETY: as in `prepare_fork`; in the child the forking thread is the only thread and owns
    // the (copied) lock.
    unsafe { *std::ptr::addr_of_mut!(FORK_GUARD) = None };
}

/// Between steps 3 and 4 there is no way back (the rest of the bytes is new), so a failed
/// `membarrier` (ENOMEM, with the kernel's cpumasks off the stack) is retried, and then replaced
/// by a round in which every thread serialises its own core.
fn serialise_every_core(mappings: &[Mapping]) {
    for _ in 0..100 {
        if sync::all_cores() {
            return;
        }
        std::thread::yield_now();
    }
    // Each handler of a round runs `cpuid`; no range to check.
    let _ = check::every_thread(&[], mappings);
}

/// The entries' first bytes while they hold breakpoints. Dropped armed (an error or a panic
/// before step 4), it ends the breakpoints before the table is withdrawn: before step 3 by
/// putting each entry's old first byte back (its other bytes are untouched), after it by writing
/// the new first byte (the other bytes are new); then it serialises every core.
struct Breakpoints<'a> {
    pokes: &'a [Poke],
    tails_written: bool,
    armed: bool,
}

impl Breakpoints<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Breakpoints<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.tails_written {
            let _ = sync::all_cores(); // as between steps 3 and 4
        }
        for p in self.pokes {
            let first = if self.tails_written { p.write.bytes[0] } else { p.old[0] };
            // SAFETY: as in step 1 of `write_all`: one byte of an entry the caller vouched for.
            unsafe { std::ptr::write_volatile(p.write.at as *mut u8, first) };
        }
        let _ = sync::all_cores();
    }
}
