//! fullapp: a small program that exercises what a real Rust build links — a build script's output,
//! a proc-macro, C code through FFI, generics, unwinding, thread-locals and statics with interior
//! mutability. ipbp's integration tests build it through `ipbp-ld` and with the plain linker.

use std::cell::{Cell, RefCell};
use std::panic;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub use fullapp_macros::{fnv1a, Describe};

mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}
pub use generated::{C_SOURCE_CHECKSUM, C_SOURCE_LINES};

extern "C" {
    fn fullapp_c_mix(a: u32, b: u32) -> u32;
    fn fullapp_c_calls() -> u32;
}

/// The C function `fullapp_c_mix` (csrc/mix.c).
pub fn c_mix(a: u32, b: u32) -> u32 {
    // SAFETY: a pure C function of two integers.
    unsafe { fullapp_c_mix(a, b) }
}

/// How often C's `fullapp_c_mix` ran (a C static).
pub fn c_calls() -> u32 {
    // SAFETY: reads a C static; fullapp calls the C code from one thread at a time.
    unsafe { fullapp_c_calls() }
}

/// Computed at compile time by the proc-macro.
pub const NAME_HASH: u64 = fnv1a!("fullapp");

#[derive(Describe)]
pub struct Config {
    pub name: String,
    pub level: u32,
    pub tags: std::vec::Vec<u8>,
}

/// Events counted across all threads: a static with interior mutability.
pub static EVENTS: AtomicU64 = AtomicU64::new(0);
/// A log shared by all threads.
pub static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    /// Per-thread counter (const-initialised, no destructor: it lives directly in the TLS block).
    pub static TLS_COUNTER: Cell<u64> = const { Cell::new(0) };
    /// Per-thread name (lazily initialised, with a destructor).
    pub static TLS_NAME: RefCell<String> = RefCell::new(String::from("unnamed"));
}

/// Notes one event in the global and the per-thread counters; returns the per-thread count.
pub fn record(event: &str) -> u64 {
    EVENTS.fetch_add(1, Ordering::SeqCst);
    LOG.lock().unwrap().push(event.to_string());
    TLS_COUNTER.with(|c| {
        c.set(c.get() + 1);
        c.get()
    })
}

/// The largest element of a non-empty slice (a generic, instantiated for several types).
///
/// ```
/// assert_eq!(fullapp::largest(&[3, 9, 2]), 9);
/// assert_eq!(fullapp::largest(&["b", "c", "a"]), "c");
/// ```
pub fn largest<T: PartialOrd + Copy>(items: &[T]) -> T {
    let mut best = items[0];
    for &item in &items[1..] {
        if item > best {
            best = item;
        }
    }
    best
}

/// A simple checksum of bytes (ipbp's tests resolve addresses inside it and edit it).
#[inline(never)]
pub fn checksum(data: &[u8]) -> u32 {
    let mut sum: u32 = 0x1234;
    for (i, &b) in data.iter().enumerate() {
        sum = sum.rotate_left(5) ^ u32::from(b).wrapping_mul(i as u32 + 1);
    }
    // ipbp-test: edit here
    sum
} // end of checksum

/// Divides, panicking on zero; the panic is caught and reported as an error.
pub fn checked_div(a: u32, b: u32) -> Result<u32, String> {
    let previous = panic::take_hook();
    panic::set_hook(Box::new(|_| {})); // keep the expected panic off stderr
    let result = panic::catch_unwind(|| {
        if b == 0 {
            panic!("division of {a} by zero");
        }
        a / b
    });
    panic::set_hook(previous);
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".to_string())
    })
}

/// The deterministic report `fullapp` prints.
pub fn report() -> Vec<String> {
    let mut out = Vec::new();
    out.push(format!("build script: C source has {C_SOURCE_LINES} lines, checksum {C_SOURCE_CHECKSUM}"));
    out.push(format!("proc-macro: fnv1a(\"fullapp\") = {NAME_HASH:#018x}"));
    out.push(format!("proc-macro: {}", Config::describe()));
    out.push(format!("c: fullapp_c_mix(7, 11) = {}", c_mix(7, 11)));
    out.push(format!("c: fullapp_c_mix(1, 2) = {}", c_mix(1, 2)));
    out.push(format!("c: calls = {}", c_calls()));
    out.push(format!("generic: largest i32 = {}", largest(&[3, -7, 42, 5])));
    out.push(format!("generic: largest f64 = {}", largest(&[0.5, 2.25, -1.0])));
    out.push(format!("generic: largest &str = {}", largest(&["pear", "apple", "zucchini"])));
    out.push(format!("checksum: {:#010x}", checksum(b"ipbp hot patching")));
    out.push(format!("panic: 84 / 2 = {:?}", checked_div(84, 2)));
    out.push(format!("panic: 1 / 0 = {:?}", checked_div(1, 0)));
    record("main:first");
    let main_count = record("main:second");
    TLS_NAME.with(|n| *n.borrow_mut() = "main".to_string());
    let worker = std::thread::spawn(|| {
        let count = record("worker");
        let name = TLS_NAME.with(|n| n.borrow().clone());
        (count, name)
    });
    let (worker_count, worker_name) = worker.join().unwrap();
    out.push(format!("thread_local: main counted {main_count}, worker counted {worker_count}"));
    out.push(format!(
        "thread_local: main name {:?}, worker name {:?}",
        TLS_NAME.with(|n| n.borrow().clone()),
        worker_name
    ));
    out.push(format!("static: {} events, log {:?}", EVENTS.load(Ordering::SeqCst), LOG.lock().unwrap()));
    out
}

/// A function whose run-time address, minus its address in the symbol map, is the load bias.
#[inline(never)]
pub fn tls_probe_anchor() -> usize {
    tls_probe_anchor as fn() -> usize as usize
}

/// The x86-64 thread pointer (`%fs:0` holds the TCB's own address under glibc).
#[cfg(target_arch = "x86_64")]
pub fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: reads one word of the current thread's TCB.
    unsafe { core::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags)) };
    tp
}

/// `tls <thread> <address of TLS_COUNTER> <thread pointer>`.
#[cfg(target_arch = "x86_64")]
pub fn tls_probe_line(thread: &str) -> String {
    let addr = TLS_COUNTER.with(|c| c as *const Cell<u64> as usize);
    format!("tls {thread} {addr:#x} {:#x}", thread_pointer())
}

/// What `fullapp --tls-probe` prints: where things are at run time, for checking the symbol map.
#[cfg(target_arch = "x86_64")]
pub fn tls_probe() -> Vec<String> {
    let mut out = vec![
        format!("anchor {:#x}", tls_probe_anchor()),
        format!("static {:#x}", &EVENTS as *const AtomicU64 as usize),
        tls_probe_line("main"),
    ];
    out.push(std::thread::spawn(|| tls_probe_line("worker")).join().unwrap());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_works_for_several_types() {
        assert_eq!(largest(&[1u8, 5, 3]), 5);
        assert_eq!(largest(&['x', 'a']), 'x');
    }

    #[test]
    fn c_code_is_linked_and_deterministic() {
        assert_eq!(c_mix(7, 11), c_mix(7, 11));
        assert_ne!(c_mix(7, 11), c_mix(11, 7));
    }

    #[test]
    fn proc_macro_hashes_at_compile_time() {
        assert_eq!(fnv1a!(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a!("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Config::describe(), "Config { name, level, tags }");
    }

    #[test]
    fn build_script_constant_is_generated() {
        let source = include_bytes!("../csrc/mix.c");
        assert_eq!(C_SOURCE_LINES, source.iter().filter(|&&b| b == b'\n').count());
        assert_eq!(C_SOURCE_CHECKSUM, source.iter().map(|&b| u64::from(b)).sum::<u64>());
    }

    #[test]
    fn caught_panic_becomes_an_error() {
        assert_eq!(checked_div(9, 3), Ok(3));
        assert_eq!(checked_div(9, 0), Err("division of 9 by zero".to_string()));
    }

    #[test]
    fn thread_locals_are_per_thread() {
        let here = record("test");
        let there = std::thread::spawn(|| record("test-thread")).join().unwrap();
        assert!(here >= 1);
        assert_eq!(there, 1);
    }
}
