//! The signal in-place patching sends to every other thread of the process ([`stop_signal`]:
//! SIGRTMIN+7, or SIGPROF while a debugger traces the process), and the *rounds* built on it: the patching thread signals each thread listed in
//! `/proc/self/task` and waits until every one has answered from its handler.
//!
//! A round is one of two [`Kind`]s:
//! - **park** ([`super::park`]): the handler records where the thread was interrupted and waits on
//!   a futex until the round is over; meanwhile no other thread runs user code.
//! - **check** ([`super::check`]): the handler checks its own thread against the bytes about to
//!   change ([`super::hazard`]), records the answer and returns at once.
//!
//! **What a round guarantees.** A thread can only be created by a running thread, so once every
//! listed thread has answered and a second listing finds no new one, every thread of the process
//! has run the handler since the round began. Each handler runs a serialising instruction
//! ([`arch::serialize_core`]) before it answers: code written before the round began is what
//! that thread fetches from then on (Intel SDM vol. 3, 8.1.3, cross-modifying code).
//!
//! **Why the handler is safe to run anywhere.** A thread blocked in a system call (`read`,
//! `sleep`, a contended lock's futex) runs the handler as soon as the signal interrupts the call.
//! `SA_RESTART` resumes most calls afterwards; those the kernel never restarts (`epoll_wait`,
//! `poll`, `nanosleep`, calls with a timeout, see signal(7)) return `EINTR`, which Rust's std
//! (`thread::sleep`, locks, `read_exact`) and tokio retry, but which C code without an `EINTR`
//! loop sees as a spurious wakeup once per install. A thread running user
//! code is interrupted at an instruction boundary, and the handler sees that instruction's
//! address. The handler only uses atomics, raw system calls and the vDSO clock, and saves
//! `errno`. A signal that arrives after its round is over finds `RELEASED == REQUESTED` and
//! returns at once.
//!
//! A thread that cannot answer (the signal blocked, stopped by a debugger, stuck in an
//! uninterruptible wait) fails the round after [`ARRIVAL_TIMEOUT`], naming the thread.

use super::arch;
use super::hazard::{self, Hazard, Inside};
use super::maps::Mapping;
use super::threads::{parse_tid, thread_name};
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

/// How long to wait for every thread to answer before giving up.
pub const ARRIVAL_TIMEOUT: Duration = Duration::from_millis(500);
/// Threads that can answer one round (answer records are preallocated).
const MAX_THREADS: usize = 4096;

/// What a handler does in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Park = 0,
    Check = 1,
}

/// The round's kind; written before `REQUESTED`, read after it.
static KIND: AtomicU32 = AtomicU32::new(0);
/// The round being requested; a handler takes part only while `RELEASED != REQUESTED`.
static REQUESTED: AtomicU32 = AtomicU32::new(0);
static RELEASED: AtomicU32 = AtomicU32::new(0);
/// Answers in the current round (futex word the patching thread waits on).
static ARRIVED: AtomicU32 = AtomicU32::new(0);
/// Answer records, written by handlers before `ARRIVED` is incremented.
static RECORDS: [Record; MAX_THREADS] = [const { Record::new() }; MAX_THREADS];
static NEXT_RECORD: AtomicUsize = AtomicUsize::new(0);

/// What a check round compares against. Published before the round is requested and withdrawn
/// after it is released; `SPEC_READERS` counts handlers using it, so it is not freed under them.
pub struct Spec<'a> {
    pub inside: &'a Inside,
    pub mappings: &'a [Mapping],
}
static SPEC: AtomicPtr<Spec<'static>> = AtomicPtr::new(std::ptr::null_mut());
static SPEC_READERS: AtomicUsize = AtomicUsize::new(0);

struct Record {
    epoch: AtomicU32,
    tid: AtomicU32,
    pc: AtomicU64,
    sp: AtomicU64,
    /// When the handler started and when it answered (CLOCK_MONOTONIC, ns).
    arrived_at: AtomicU64,
    answered_at: AtomicU64,
    /// CPU time the thread spent in the handler until it answered (ns): without the time the
    /// scheduler gave other threads meanwhile.
    cpu_ns: AtomicU64,
    /// A check round's finding ([`Hazard::encode`]; kind 0 is none).
    hazard_kind: AtomicU32,
    hazard_addr: AtomicU64,
}

impl Record {
    const fn new() -> Self {
        Record {
            epoch: AtomicU32::new(0),
            tid: AtomicU32::new(0),
            pc: AtomicU64::new(0),
            sp: AtomicU64::new(0),
            arrived_at: AtomicU64::new(0),
            answered_at: AtomicU64::new(0),
            cpu_ns: AtomicU64::new(0),
            hazard_kind: AtomicU32::new(0),
            hazard_addr: AtomicU64::new(0),
        }
    }
}

/// Why a round failed. Built while threads may be parked, so it holds no heap data; turned
/// into a message ([`RoundError::describe`]) once the round is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundError {
    /// `getdents64` on `/proc/self/task` failed.
    ListThreads,
    /// More threads than answer records.
    TooManyThreads,
    /// A thread could not be sent the signal (`errno`), other than because it exited.
    Signal { tid: i32, errno: i32 },
    /// A thread did not answer in time (it blocks the signal, or is stopped).
    NoAnswer { tid: i32 },
    /// The listed threads kept changing until the deadline.
    Timeout,
}

impl RoundError {
    /// The message (allocates: call once the round is over).
    pub fn describe(self) -> String {
        match self {
            RoundError::ListThreads => "cannot list threads (getdents64 failed)".into(),
            RoundError::TooManyThreads => format!("more than {MAX_THREADS} threads"),
            RoundError::Signal { tid, errno } => format!(
                "cannot signal thread {}: {}",
                thread_name(tid),
                std::io::Error::from_raw_os_error(errno)
            ),
            RoundError::NoAnswer { tid } => format!(
                "thread {} did not answer signal {} within {} ms (it blocks the signal or is stopped in a debugger)",
                thread_name(tid),
                stop_signal(),
                ARRIVAL_TIMEOUT.as_millis(),
            ),
            RoundError::Timeout => "threads did not answer in time".into(),
        }
    }
}

/// One thread's answer to a round.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub tid: i32,
    pub pc: u64,
    pub sp: u64,
    pub arrived_at: u64,
    pub answered_at: u64,
    pub cpu_ns: u64,
    pub hazard: Option<Hazard>,
}

/// The signal of the current (or last) round; 0 until the first.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The signal rounds use: a real-time signal applications rarely use (SIGRTMIN+7) — or, while a
/// debugger traces the process, the first of [`TRACED_SIGNALS`] the program leaves alone.
pub fn stop_signal() -> i32 {
    match SIGNAL.load(Ordering::Relaxed) {
        0 => untraced_signal(),
        sig => sig,
    }
}

fn untraced_signal() -> i32 {
    libc::SIGRTMIN() + 7
}

/// Signals a debugger passes to the program without stopping or printing by default, unlike the
/// real-time one, at which gdb 13 stops ("SIG41, Real-time event 41"): a round under a debugger
/// would stop the whole program there, and the patch would wait for the user to type `continue`.
/// SIGPROF is silent in both gdb 13 (`info signals`: No No Yes) and lldb 14 (`process handle`:
/// true false false); SIGURG (Go's preemption signal, for the same reason) is silent in gdb only
/// and is the second choice, for a program that handles SIGPROF itself (a profiler). Used only
/// while traced; a stray one arriving outside a round (a profiling timer the program set without
/// a handler) is then ignored instead of ending the process.
const TRACED_SIGNALS: [i32; 2] = [libc::SIGPROF, libc::SIGURG];

/// The signal for a round beginning now, with ipbp's handler installed for it (a restart asks
/// before it runs the program's hooks: a program that handles that signal cannot be parked).
pub(crate) fn choose_signal() -> Result<i32, String> {
    if traced() {
        if let Some(sig) = TRACED_SIGNALS.into_iter().find(|&s| install_handler(s).is_ok()) {
            return Ok(sig);
        }
    }
    let sig = untraced_signal();
    install_handler(sig)?;
    Ok(sig)
}

/// Installs the handler for `sig` unless it is installed; fails if the application handles the
/// signal itself (checked each time: a program may install its own handler later).
fn install_handler(sig: i32) -> Result<(), String> {
    // SAFETY: plain sigaction calls on zeroed, then filled, structures.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
            return Err(format!("cannot read the handler of signal {sig}"));
        }
        if old.sa_sigaction == on_signal as *const () as libc::sighandler_t {
            return Ok(());
        }
        if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
            return Err(format!(
                "the program handles signal {sig} ({}) itself, which in-place patching needs",
                signal_name(sig)
            ));
        }
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        // Nothing else runs on a parked thread: every signal waits until it is released —
        // but synchronous ones (a fault, a breakpoint), which the kernel delivers even when
        // blocked, by killing the process. Leaving SIGTRAP open also keeps a thread inside
        // this handler from looking like one that blocks it ([`super::poke::usable`]).
        act.sa_mask = all_but_synchronous();
        if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
            return Err(format!("cannot install the handler of signal {sig}"));
        }
    }
    Ok(())
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGPROF => "SIGPROF".into(),
        libc::SIGURG => "SIGURG".into(),
        _ => format!("SIGRTMIN+{}", sig - libc::SIGRTMIN()),
    }
}

/// Every signal but the synchronous ones (a fault, a breakpoint), which the kernel delivers even
/// when blocked — by killing the process: the mask ipbp's handlers run with.
pub fn all_but_synchronous() -> libc::sigset_t {
    // SAFETY: filling a zeroed set, then taking signals out of it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for s in [libc::SIGTRAP, libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE] {
            libc::sigdelset(&mut set, s);
        }
        set
    }
}

extern "C" fn on_signal(_sig: i32, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // Only async-signal-safe work: atomics, raw system calls, the vDSO clock.
    // SAFETY: errno is thread-local; saved and restored around the system calls.
    let errno = unsafe { *libc::__errno_location() };
    let epoch = REQUESTED.load(Ordering::Acquire);
    if RELEASED.load(Ordering::Acquire) != epoch {
        answer(epoch, ctx);
        arch::scrub_stack();
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

#[inline(never)]
fn answer(epoch: u32, ctx: *mut libc::c_void) {
    let kind = KIND.load(Ordering::Acquire);
    // SAFETY: the kernel passes the interrupted context to an SA_SIGINFO handler.
    let (pc, sp) = unsafe { arch::interrupted_pc_sp(ctx) };
    let arrived_at = now_ns();
    let cpu_at = thread_cpu_ns();
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // From here on this thread fetches every byte of code written before the round began.
    arch::serialize_core();
    let (hazard_kind, hazard_addr) =
        if kind == Kind::Check as u32 { check_self(tid, pc, sp) } else { (0, 0) };
    let i = NEXT_RECORD.fetch_add(1, Ordering::Relaxed);
    if let Some(r) = RECORDS.get(i) {
        r.tid.store(tid as u32, Ordering::Relaxed);
        r.pc.store(pc, Ordering::Relaxed);
        r.sp.store(sp, Ordering::Relaxed);
        r.arrived_at.store(arrived_at, Ordering::Relaxed);
        r.answered_at.store(now_ns(), Ordering::Relaxed);
        r.cpu_ns.store(thread_cpu_ns().saturating_sub(cpu_at), Ordering::Relaxed);
        r.hazard_kind.store(hazard_kind, Ordering::Relaxed);
        r.hazard_addr.store(hazard_addr, Ordering::Relaxed);
        r.epoch.store(epoch, Ordering::Release);
    }
    ARRIVED.fetch_add(1, Ordering::Release);
    futex_wake(&ARRIVED);
    if kind == Kind::Park as u32 {
        // Only while this round is the one requested: a handler that ran late, after its round
        // was over and a newer one began, must not wait for a release that already happened.
        while RELEASED.load(Ordering::Acquire) != epoch && REQUESTED.load(Ordering::Acquire) == epoch {
            futex_wait(&RELEASED, RELEASED.load(Ordering::Relaxed), Some(Duration::from_millis(50)));
        }
        // Code written while this thread was parked is what it runs next.
        arch::serialize_core();
    }
}

/// A check round's handler: this thread, against the published spec.
fn check_self(tid: i32, pc: u64, sp: u64) -> (u32, u64) {
    // SeqCst pairs with `SpecGuard::drop`: either this load sees the spec withdrawn, or the
    // withdrawing thread sees this reader and waits for it.
    SPEC_READERS.fetch_add(1, Ordering::SeqCst);
    let spec = SPEC.load(Ordering::SeqCst);
    let found = if spec.is_null() || on_alternate_stack() {
        // A stale round, or a thread interrupted on an alternate signal stack (the frames below
        // it, on its own stack, are not scanned): counts as not clear, and the round is retried.
        Some(Hazard::UnknownStack { tid })
    } else {
        // SAFETY: the spec stays alive while `SPEC_READERS` counts us; this thread is the one
        // whose stack is scanned, and it is running this handler, so the stack above `sp` is
        // still.
        let spec = unsafe { &*spec };
        unsafe { hazard::of(tid, pc, sp, spec.inside, spec.mappings) }
    };
    SPEC_READERS.fetch_sub(1, Ordering::SeqCst);
    found.map_or((0, 0), Hazard::encode)
}

/// Whether this thread runs on its alternate signal stack (`sigaltstack`: async-signal-safe).
fn on_alternate_stack() -> bool {
    // SAFETY: querying only; `ss` is written by the kernel.
    let mut ss: libc::stack_t = unsafe { std::mem::zeroed() };
    unsafe { libc::sigaltstack(std::ptr::null(), &mut ss) == 0 && ss.ss_flags & libc::SS_ONSTACK != 0 }
}

pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime is async-signal-safe and writes `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time this thread has used (ns).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime is async-signal-safe and writes `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
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
    fn read(&mut self) -> Result<&[i32], RoundError> {
        use std::os::fd::AsRawFd;
        let fd = self.dir.as_raw_fd();
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() };
        self.tids.clear();
        // SAFETY: rewinding a directory descriptor we own.
        unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
        loop {
            // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`.
            let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, self.buf.as_mut_ptr(), self.buf.len()) };
            if n < 0 {
                return Err(RoundError::ListThreads);
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
                            return Err(RoundError::TooManyThreads);
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

/// One round in progress. Dropping it ends the round — parked threads are released however the
/// caller leaves, a panic included: a thread left parked would hang the program.
pub struct Round {
    epoch: u32,
    tasks: TaskList,
    signalled: Vec<i32>,
    pid: i32,
    _spec: SpecGuard,
    _one_at_a_time: MutexGuard<'static, ()>,
}

/// Withdraws a check round's spec, after the round is released, once no handler reads it.
struct SpecGuard(bool);

impl Drop for SpecGuard {
    fn drop(&mut self) {
        if self.0 {
            SPEC.store(std::ptr::null_mut(), Ordering::SeqCst);
            while SPEC_READERS.load(Ordering::SeqCst) != 0 {
                std::thread::yield_now();
            }
        }
    }
}

impl Round {
    /// Begins a round of `kind`; a check round compares against `spec`, which must outlive it.
    ///
    /// # Safety
    /// For a check round, `spec` must stay alive until the `Round` is dropped.
    pub unsafe fn begin(kind: Kind, spec: Option<&Spec<'_>>) -> Result<Round, String> {
        // One round at a time per process (the epoch words are global).
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        SIGNAL.store(choose_signal()?, Ordering::Relaxed);
        let tasks = TaskList::open()?;
        let spec_guard = SpecGuard(spec.is_some());
        if let Some(spec) = spec {
            // The lifetime is erased; the caller keeps `spec` alive and `SpecGuard` withdraws it
            // (after `Round::drop` released the round) before `begin`'s caller can drop it.
            SPEC.store(spec as *const Spec<'_> as *mut Spec<'static>, Ordering::SeqCst);
        }
        let epoch = REQUESTED.load(Ordering::Relaxed).wrapping_add(1);
        ARRIVED.store(0, Ordering::Relaxed);
        NEXT_RECORD.store(0, Ordering::Relaxed);
        KIND.store(kind as u32, Ordering::Relaxed);
        REQUESTED.store(epoch, Ordering::Release);
        Ok(Round {
            epoch,
            tasks,
            signalled: Vec::with_capacity(MAX_THREADS),
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() },
            _spec: spec_guard,
            _one_at_a_time: one,
        })
    }

    /// Signals every other thread and waits until each has answered or exited; allocates
    /// nothing (errors too: threads may be parked). Returns how long that took.
    pub fn gather(&mut self) -> Result<Duration, RoundError> {
        let started = Instant::now();
        let sig = stop_signal();
        loop {
            let listed = self.tasks.read()?;
            let mut unsent = 0;
            for &tid in listed {
                if self.signalled.contains(&tid) {
                    continue;
                }
                // SAFETY: tgkill to a thread of our own process.
                if unsafe { libc::syscall(libc::SYS_tgkill, self.pid, tid, sig) } == 0 {
                    self.signalled.push(tid);
                    unsent += 1; // new this pass: list again once it answered
                    continue;
                }
                // SAFETY: errno is thread-local.
                match unsafe { *libc::__errno_location() } {
                    libc::ESRCH => {} // it exited since it was listed
                    // The real-time signal queue is full (a per-user limit): try again below,
                    // until the deadline. Never count such a thread as answered.
                    libc::EAGAIN if started.elapsed() < ARRIVAL_TIMEOUT => unsent += 1,
                    errno => return Err(RoundError::Signal { tid, errno }),
                }
            }
            if unsent == 0 && self.answered_all() {
                return Ok(started.elapsed());
            }
            self.wait_for_answers(started)?;
        }
    }

    /// Threads signalled so far.
    pub fn threads(&self) -> usize {
        self.signalled.len()
    }

    /// The answers of this round, into `out` (which must have capacity: no allocation).
    pub fn answers(&self, out: &mut Vec<Answer>) {
        out.clear();
        let n = NEXT_RECORD.load(Ordering::Acquire).min(MAX_THREADS);
        for r in &RECORDS[..n] {
            if r.epoch.load(Ordering::Acquire) == self.epoch {
                let tid = r.tid.load(Ordering::Relaxed) as i32;
                out.push(Answer {
                    tid,
                    pc: r.pc.load(Ordering::Relaxed),
                    sp: r.sp.load(Ordering::Relaxed),
                    arrived_at: r.arrived_at.load(Ordering::Relaxed),
                    answered_at: r.answered_at.load(Ordering::Relaxed),
                    cpu_ns: r.cpu_ns.load(Ordering::Relaxed),
                    hazard: Hazard::decode(
                        tid,
                        r.hazard_kind.load(Ordering::Relaxed),
                        r.hazard_addr.load(Ordering::Relaxed),
                    ),
                });
            }
        }
    }

    fn has_answered(&self, tid: i32) -> bool {
        let n = NEXT_RECORD.load(Ordering::Acquire).min(MAX_THREADS);
        RECORDS[..n].iter().any(|r| {
            r.epoch.load(Ordering::Acquire) == self.epoch && r.tid.load(Ordering::Relaxed) as i32 == tid
        })
    }

    /// Whether every signalled thread that still exists has answered.
    fn answered_all(&self) -> bool {
        self.signalled.iter().all(|&tid| self.has_answered(tid) || !thread_exists(self.pid, tid))
    }

    fn wait_for_answers(&self, started: Instant) -> Result<(), RoundError> {
        loop {
            let seen = ARRIVED.load(Ordering::Acquire);
            if self.answered_all() {
                return Ok(());
            }
            if started.elapsed() > ARRIVAL_TIMEOUT {
                let missing = self
                    .signalled
                    .iter()
                    .copied()
                    .find(|&tid| thread_exists(self.pid, tid) && !self.has_answered(tid));
                return Err(missing.map_or(RoundError::Timeout, |tid| RoundError::NoAnswer { tid }));
            }
            futex_wait(&ARRIVED, seen, Some(Duration::from_millis(1)));
        }
    }
}

impl Drop for Round {
    fn drop(&mut self) {
        RELEASED.store(self.epoch, Ordering::Release);
        futex_wake(&RELEASED);
    }
}

fn thread_exists(pid: i32, tid: i32) -> bool {
    // SAFETY: signal 0 only checks that the thread exists.
    unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) == 0 }
}

/// Whether a debugger traces this process (it would see, and stop at, every breakpoint trap).
pub fn traced() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("TracerPid:")).map(|p| p.trim() != "0"))
        .unwrap_or(true)
}
