//! The counter app of ipbp's end-to-end tests: three threads call hot points in a loop and print
//! what they see, so a test can edit the source, rebuild, and watch the running process change.
//!
//! Each line: `tick thread=<t> msg=<..> greet=<..> deep=<..> extra=<..> global=<n> local=<n>
//! banner=<..> gen=<..>`; `banner` comes from a closure run through `ipbp::call`, `gen` from a
//! generic hot function, both called from the (never patched) thread loop.
//! `global` counts calls in a `static`, `local` in a `thread_local!`: both must keep counting
//! across patches.

use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

static TICKS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static LOCAL_TICKS: Cell<u64> = const { Cell::new(0) };
}

struct Greeter {
    name: String,
    calls: u64,
}

impl Greeter {
    #[ipbp::hot]
    fn greet(&mut self) -> String {
        self.calls += 1;
        format!("{}-says-{}", self.name, words::word())
    }
}

#[ipbp::hot]
fn tick(thread: usize, greeter: &mut Greeter) -> String {
    let global = TICKS.fetch_add(1, Ordering::SeqCst) + 1;
    let local = LOCAL_TICKS.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    let msg = "hello";
    format!(
        "tick thread={thread} msg={msg} greet={} deep={} extra={} global={global} local={local}",
        greeter.greet(),
        level1(),
        extra()
    )
}

fn level1() -> String {
    level2()
}

fn level2() -> String {
    level3()
}

fn level3() -> String {
    String::from("deep")
}

fn extra() -> String {
    String::from("none")
}

#[ipbp::hot]
fn describe<T: std::fmt::Display>(value: T) -> String {
    format!("<{value}>")
}

/// Two values that must always agree: a call sees both helpers old or both new, never a mix.
#[ipbp::hot]
fn pair() -> (u32, u32) {
    (left(), right())
}

fn left() -> u32 {
    1
}

fn right() -> u32 {
    1
}

/// Calls `pair` in bursts (as fast as it can, then a short rest) and reports how many calls saw a
/// mixed result.
fn pairs_forever() {
    let (mut calls, mut mixed) = (0u64, 0u64);
    loop {
        let mut last = (0, 0);
        for _ in 0..20_000 {
            last = pair();
            calls += 1;
            if last.0 != last.1 {
                mixed += 1;
            }
        }
        println!("pairs calls={calls} mixed={mixed} last={}/{}", last.0, last.1);
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn main() {
    ipbp::init();
    if std::env::var_os("COUNTER_FORK_EXIT").is_some() {
        // A child forked after `ipbp::init` that exits (running exit handlers) must leave the
        // parent's registration alone.
        unsafe extern "C" {
            fn fork() -> i32;
        }
        // SAFETY: only ipbp's listener thread exists yet; the child only calls `exit`.
        if unsafe { fork() } == 0 {
            std::process::exit(0);
        }
    }
    std::panic::set_hook(Box::new(|info| {
        let bt = std::backtrace::Backtrace::force_capture();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "panic: {}", info.payload_as_str().unwrap_or("?"));
        for line in bt.to_string().lines() {
            let _ = writeln!(out, "bt: {}", line.trim());
        }
    }));
    let period = std::env::var("COUNTER_PERIOD_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    println!("started pid={}", std::process::id());
    let threads: Vec<_> = (1..=3)
        .map(|t| {
            std::thread::spawn(move || {
                let mut greeter = Greeter { name: format!("g{t}"), calls: 0 };
                loop {
                    let line = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tick(t, &mut greeter)))
                        .unwrap_or_else(|_| format!("tick thread={t} caught-panic"));
                    let banner = ipbp::call(|| format!("banner-{t}"));
                    println!("{line} banner={banner} gen={}", describe(t));
                    std::thread::sleep(Duration::from_millis(period));
                }
            })
        })
        .collect();
    if std::env::var_os("COUNTER_PAIRS").is_some() {
        std::thread::spawn(pairs_forever);
    }
    for t in threads {
        let _ = t.join();
    }
}
