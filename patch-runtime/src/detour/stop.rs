//! Stopping every other thread of the process at a known point while code is rewritten.
//!
//! **How.** The patching thread sends each other thread (listed from `/proc/self/task`) a signal,
//! [`stop_signal`]. Its handler records where the thread was interrupted (program counter and
//! stack pointer), says it has arrived, and waits on a futex until released. Once every thread has
//! arrived, the list of threads is read again: a thread can only be created by a running thread,
//! so when every listed thread is parked and the list did not grow, no thread of the process runs
//! user code but the patching one. The caller then inspects where each thread stopped, and either
//! gives up (release, retry later) or writes code; then every thread is released.
//!
//! **Why it is sound.**
//! - A thread blocked in a system call (`read`, `sleep`, a contended lock's futex) runs the handler
//!   as soon as the signal interrupts the call; `SA_RESTART` (or the caller's own `EINTR` loop)
//!   resumes it afterwards. A thread running user code is interrupted at an instruction boundary,
//!   and the handler sees that instruction's address. A thread that was inside the function being
//!   patched stays there, on the bytes it was running: only the first bytes of entries change, and
//!   the caller refuses to write while a program counter, or a return address on a stack, lies
//!   strictly inside them.
//! - While threads are parked the patching thread must not take any lock an application thread can
//!   hold (malloc's, stdio's, the loader's): everything it needs is allocated before the stop, the
//!   thread list is re-read with `getdents64` into a buffer allocated before, and the write itself
//!   is `mprotect` and plain stores.
//! - Cross-modifying code: each released thread executes a serialising instruction
//!   ([`arch::serialize_core`]) before it returns from the handler to the code it interrupted, so it
//!   fetches the new bytes; the release store (`Release`) orders the code writes before it and the
//!   parked thread's `Acquire` load sees them. Nothing executes the rewritten bytes while they are
//!   being written, so no thread can see a torn instruction, and every entry of one install is
//!   visible to every thread at once.
//! - A thread that cannot be stopped (the signal blocked, stopped by a debugger, stuck in an
//!   uninterruptible wait) makes the install fail after [`ARRIVAL_TIMEOUT`] with its name; the
//!   threads already parked are released and nothing was written. A signal still pending in such a
//!   thread runs the handler later, which sees that no stop is in progress and returns at once.

use super::arch;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long to wait for every thread to park before giving up.
pub const ARRIVAL_TIMEOUT: Duration = Duration::from_millis(500);
/// Threads that can be stopped at once (arrival records are preallocated).
const MAX_THREADS: usize = 4096;

/// Where a parked thread was interrupted.
#[derive(Debug, Clone, Copy)]
pub struct Parked {
    pub tid: i32,
    pub pc: u64,
    pub sp: u64,
}

/// The epoch being requested; a handler parks only while `RELEASED != REQUESTED`.
static REQUESTED: AtomicU32 = AtomicU32::new(0);
static RELEASED: AtomicU32 = AtomicU32::new(0);
/// Arrivals in the current epoch (futex word the patching thread waits on).
static ARRIVED: AtomicU32 = AtomicU32::new(0);
/// Arrival records, written by handlers before `ARRIVED` is incremented.
static RECORDS: [Record; MAX_THREADS] = [const { Record::new() }; MAX_THREADS];
static NEXT_RECORD: AtomicUsize = AtomicUsize::new(0);
struct Record {
    epoch: AtomicU32,
    tid: AtomicU32,
    pc: AtomicU64,
    sp: AtomicU64,
    /// When the thread arrived (CLOCK_MONOTONIC, ns).
    parked_at: AtomicU64,
}

impl Record {
    const fn new() -> Self {
        Record {
            epoch: AtomicU32::new(0),
            tid: AtomicU32::new(0),
            pc: AtomicU64::new(0),
            sp: AtomicU64::new(0),
            parked_at: AtomicU64::new(0),
        }
    }
}

/// The signal used to park threads: a real-time signal applications rarely use.
pub fn stop_signal() -> i32 {
    libc::SIGRTMIN() + 7
}

/// Installs the handler once. Fails if the application already handles the signal itself.
fn install_handler() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let sig = stop_signal();
        // SAFETY: plain sigaction calls on zeroed, then filled, structures.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                return Err(format!("cannot read the handler of signal {sig}"));
            }
            if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
                return Err(format!(
                    "the program handles signal {sig} (SIGRTMIN+7) itself, which in-place patching needs"
                ));
            }
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            // Nothing else runs on a parked thread: every signal waits until it is released.
            libc::sigfillset(&mut act.sa_mask);
            if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
                return Err(format!("cannot install the handler of signal {sig}"));
            }
        }
        Ok(())
    })
    .clone()
}

extern "C" fn on_stop_signal(_sig: i32, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // Only async-signal-safe work: atomics, raw system calls, the vDSO clock.
    // SAFETY: errno is thread-local; saved and restored around the futex calls.
    let errno = unsafe { *libc::__errno_location() };
    let epoch = REQUESTED.load(Ordering::Acquire);
    if RELEASED.load(Ordering::Acquire) == epoch {
        return; // a late signal of a stop that is over
    }
    // SAFETY: the kernel passes the interrupted context to an SA_SIGINFO handler.
    let (pc, sp) = unsafe { arch::interrupted_pc_sp(ctx) };
    let parked_at = now_ns();
    let i = NEXT_RECORD.fetch_add(1, Ordering::Relaxed);
    if let Some(r) = RECORDS.get(i) {
        // SAFETY: gettid has no preconditions.
        r.tid.store(unsafe { libc::gettid() } as u32, Ordering::Relaxed);
        r.pc.store(pc, Ordering::Relaxed);
        r.sp.store(sp, Ordering::Relaxed);
        r.parked_at.store(parked_at, Ordering::Relaxed);
        r.epoch.store(epoch, Ordering::Release);
    }
    ARRIVED.fetch_add(1, Ordering::Release);
    futex_wake(&ARRIVED);
    while RELEASED.load(Ordering::Acquire) != epoch {
        futex_wait(&RELEASED, RELEASED.load(Ordering::Relaxed), None);
    }
    arch::serialize_core();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime is async-signal-safe and writes `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec { tv_sec: t.as_secs() as _, tv_nsec: t.subsec_nanos() as _ });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT on a valid aligned u32; returns at once if the value differs.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid aligned u32.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, i32::MAX);
    }
}

/// The other threads of this process, read with `getdents64` into preallocated memory.
struct TaskList {
    dir: std::fs::File,
    buf: Vec<u8>,
    tids: Vec<i32>,
}

impl TaskList {
    fn open() -> Result<Self, String> {
        let dir = std::fs::File::open("/proc/self/task").map_err(|e| format!("cannot list threads: {e}"))?;
        Ok(TaskList { dir, buf: vec![0; 64 << 10], tids: Vec::with_capacity(MAX_THREADS) })
    }

    /// Re-reads the list; allocates nothing once opened (capacity is fixed).
    fn read(&mut self) -> Result<&[i32], String> {
        use std::os::fd::AsRawFd;
        let fd = self.dir.as_raw_fd();
        // SAFETY: getpid/gettid have no preconditions.
        let me = unsafe { libc::gettid() };
        self.tids.clear();
        // SAFETY: rewinding a directory descriptor we own.
        unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
        loop {
            // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`.
            let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, self.buf.as_mut_ptr(), self.buf.len()) };
            if n < 0 {
                return Err("cannot list threads (getdents64 failed)".into());
            }
            if n == 0 {
                break;
            }
            let mut off = 0usize;
            while off + 19 < n as usize {
                // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }
                let reclen = u16::from_ne_bytes([self.buf[off + 16], self.buf[off + 17]]) as usize;
                let name = &self.buf[off + 19..off + reclen];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                if let Some(tid) = parse_tid(name) {
                    if tid != me {
                        if self.tids.len() == MAX_THREADS {
                            return Err(format!("more than {MAX_THREADS} threads"));
                        }
                        self.tids.push(tid);
                    }
                }
                off += reclen.max(1);
            }
        }
        Ok(&self.tids)
    }
}

fn parse_tid(name: &[u8]) -> Option<i32> {
    if name.is_empty() || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    name.iter().try_fold(0i32, |n, &d| n.checked_mul(10)?.checked_add((d - b'0') as i32))
}

/// What a stop achieved.
pub struct StopStats {
    /// Longest time any thread spent parked.
    pub longest_pause: Duration,
    pub threads: usize,
    /// From the first signal to the last thread parked.
    pub gathering: Duration,
}

/// Parks every other thread, calls `inspect` with where each one stopped and, if it says so,
/// `write`; then releases them. `inspect` returns `Err(reason)` to release without writing;
/// neither closure may allocate or take a lock an application thread could hold.
pub fn with_threads_parked(
    inspect: &mut dyn FnMut(&[Parked]) -> Result<(), String>,
    write: &mut dyn FnMut() -> Result<(), String>,
) -> Result<StopStats, String> {
    install_handler()?;
    // One stop at a time per process (the epoch words are global).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut tasks = TaskList::open()?;
    let mut parked: Vec<Parked> = Vec::with_capacity(MAX_THREADS);
    let mut signalled: Vec<i32> = Vec::with_capacity(MAX_THREADS);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let sig = stop_signal();

    let epoch = REQUESTED.load(Ordering::Relaxed).wrapping_add(1);
    ARRIVED.store(0, Ordering::Relaxed);
    NEXT_RECORD.store(0, Ordering::Relaxed);
    REQUESTED.store(epoch, Ordering::Release);

    // Parked threads are released however this function is left — a panic of ours included: a
    // thread left parked would hang the program.
    struct ReleaseOnDrop(u32);
    impl Drop for ReleaseOnDrop {
        fn drop(&mut self) {
            RELEASED.store(self.0, Ordering::Release);
            futex_wake(&RELEASED);
        }
    }
    let release = ReleaseOnDrop(epoch);
    let started = Instant::now();
    let mut gathered = Duration::ZERO;
    let result = (|| {
        loop {
            let listed = tasks.read()?;
            let mut new = 0;
            for &tid in listed {
                if signalled.contains(&tid) {
                    continue;
                }
                // SAFETY: tgkill to a thread of our own process.
                if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) } == 0 {
                    signalled.push(tid);
                    new += 1;
                }
                // ESRCH: it exited since it was listed.
            }
            if new == 0 && arrived_all(&signalled, epoch, pid) {
                break;
            }
            wait_for_arrivals(&signalled, epoch, pid, started)?;
        }
        gathered = started.elapsed();
        parked.clear();
        let n = NEXT_RECORD.load(Ordering::Acquire).min(MAX_THREADS);
        for r in &RECORDS[..n] {
            if r.epoch.load(Ordering::Acquire) == epoch {
                parked.push(Parked {
                    tid: r.tid.load(Ordering::Relaxed) as i32,
                    pc: r.pc.load(Ordering::Relaxed),
                    sp: r.sp.load(Ordering::Relaxed),
                });
            }
        }
        inspect(&parked)?;
        write()?;
        arch::serialize_core();
        Ok(())
    })();

    // The longest any thread was held: from the first arrival to the release (not to when the
    // scheduler next runs it — with more busy threads than cores that wait happens patch or not).
    let n = NEXT_RECORD.load(Ordering::Acquire).min(MAX_THREADS);
    let first = RECORDS[..n]
        .iter()
        .filter(|r| r.epoch.load(Ordering::Acquire) == epoch)
        .map(|r| r.parked_at.load(Ordering::Relaxed))
        .min();
    let released_at = now_ns();
    drop(release);
    result.map(|()| StopStats {
        longest_pause: Duration::from_nanos(first.map_or(0, |t| released_at.saturating_sub(t))),
        threads: signalled.len(),
        gathering: gathered,
    })
}

/// Whether every signalled thread that still exists has arrived in `epoch`.
fn arrived_all(signalled: &[i32], epoch: u32, pid: i32) -> bool {
    let n = NEXT_RECORD.load(Ordering::Acquire).min(MAX_THREADS);
    signalled.iter().all(|&tid| {
        RECORDS[..n]
            .iter()
            .any(|r| r.epoch.load(Ordering::Acquire) == epoch && r.tid.load(Ordering::Relaxed) as i32 == tid)
            || !thread_exists(pid, tid)
    })
}

fn wait_for_arrivals(signalled: &[i32], epoch: u32, pid: i32, started: Instant) -> Result<(), String> {
    loop {
        let seen = ARRIVED.load(Ordering::Acquire);
        if arrived_all(signalled, epoch, pid) {
            return Ok(());
        }
        if started.elapsed() > ARRIVAL_TIMEOUT {
            let n = NEXT_RECORD.load(Ordering::Acquire).min(MAX_THREADS);
            let missing = signalled.iter().copied().find(|&tid| {
                thread_exists(pid, tid)
                    && !RECORDS[..n].iter().any(|r| {
                        r.epoch.load(Ordering::Acquire) == epoch
                            && r.tid.load(Ordering::Relaxed) as i32 == tid
                    })
            });
            return Err(match missing {
                Some(tid) => format!(
                    "thread {tid} did not stop within {} ms (it blocks signal {} or is stopped in a debugger)",
                    ARRIVAL_TIMEOUT.as_millis(),
                    stop_signal()
                ),
                None => "threads did not stop in time".into(),
            });
        }
        futex_wait(&ARRIVED, seen, Some(Duration::from_millis(1)));
    }
}

fn thread_exists(pid: i32, tid: i32) -> bool {
    // SAFETY: signal 0 only checks that the thread exists.
    unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) == 0 }
}

/// Names of the process's threads, for messages (allocates: call only while nothing is parked).
pub fn thread_name(tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| tid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn tids_parse() {
        assert_eq!(parse_tid(b"1234"), Some(1234));
        assert_eq!(parse_tid(b"."), None);
        assert_eq!(parse_tid(b""), None);
        assert_eq!(parse_tid(b"99999999999"), None);
    }

    /// Busy threads, sleeping threads and threads blocked on a lock all park, and none of them
    /// runs while parked.
    #[test]
    fn every_thread_parks_and_none_runs_while_parked() {
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicU64::new(0));
        let lock = Arc::new(std::sync::Mutex::new(()));
        let guard = lock.lock().unwrap();
        let mut handles = Vec::new();
        for kind in 0..6 {
            let (stop, counter, lock) = (stop.clone(), counter.clone(), lock.clone());
            handles.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match kind % 3 {
                        0 => {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        1 => std::thread::sleep(Duration::from_millis(5)),
                        _ => drop(lock.lock().unwrap()),
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(20));
        let mut seen = 0;
        let mut still = true;
        let stats = with_threads_parked(
            &mut |parked| {
                seen = parked.len();
                Ok(())
            },
            &mut || {
                let a = counter.load(Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
                still = counter.load(Ordering::Relaxed) == a;
                Ok(())
            },
        )
        .unwrap();
        assert!(seen >= 6, "only {seen} threads parked");
        assert!(still, "a parked thread kept running");
        assert!(stats.threads >= 6);
        drop(guard);
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().unwrap();
        }
    }
}
