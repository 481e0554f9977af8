//! The in-place app of ipbp's end-to-end tests: no hot points at all, only `ipbp::init()`. Every
//! piece of code it runs on each tick is reached the way real programs reach code: a plain call
//! from `main`'s loop, a `dyn Trait` method of boxes built at startup, a `fn` pointer in a struct
//! field, boxed closures held by a library crate, a method of that library crate.
//!
//! `main` prints one line per tick:
//! `line n=<n> step=<..> shapes=<..> field=<..> closures=<..> lib=<..> risky=<..> hooked=<n> cb=<..>
//! global=<n> local=<n> fp_same=<bool>`.
//! `global` counts in a `static`, `local` in a `thread_local!`: both must keep counting across
//! patches. With `INPLACE_STRESS=1` more threads run:
//! - `spin`: calls `tiny` as fast as it can and reports how many results were neither the old
//!   nor a newer version's (`bad`), and the latest result;
//! - `slow`: sits inside `slow_step` (sleeping) most of the time;
//! - `rec`: has `depth` on its stack 64 times while it sleeps at the bottom.
//!
//! An `on_patch` callback prints `hook generation=<g> changed=<functions> added=<n>` after each
//! patch.

use plugins::Registry;
use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static TICKS: AtomicU64 = AtomicU64::new(0);
static HOOKED: AtomicU64 = AtomicU64::new(0);
/// A callback patched code may register once (`cb=` prints what it returns).
static CALLBACK: std::sync::OnceLock<fn(u64) -> String> = std::sync::OnceLock::new();

/// Empty: one `ret`, shorter than the jump a detour writes (the padding after it takes the rest).
#[inline(never)]
fn hook() {}

thread_local! {
    static LOCAL_TICKS: Cell<u64> = const { Cell::new(0) };
}

trait Shape: Send {
    fn area(&self) -> u64;
}

struct Square(u64);
struct Circle(u64);

impl Shape for Square {
    fn area(&self) -> u64 {
        self.0 * self.0
    }
}

impl Shape for Circle {
    fn area(&self) -> u64 {
        3 * self.0 * self.0
    }
}

struct Handler {
    name: &'static str,
    f: fn(u64) -> u64,
}

fn double(x: u64) -> u64 {
    x * 2
}

fn step(n: u64) -> String {
    format!("plain{}", n % 2)
}

/// Whether `step`'s address, taken here, is the one `main` took at startup.
fn fp_check(at_start: usize) -> bool {
    step as fn(u64) -> String as usize == at_start
}

fn risky(n: u64) -> u64 {
    n + 1
}

/// Called in a tight loop by the `spin` thread; versions return `x + k` for a constant `k`.
#[inline(never)]
fn tiny(x: u64) -> u64 {
    x + 1000
}

fn slow_step(round: u64) -> String {
    std::thread::sleep(Duration::from_millis(150));
    format!("old{round}")
}

fn depth(n: u32) -> u64 {
    if n == 0 {
        std::thread::sleep(Duration::from_millis(150));
        return 7;
    }
    depth(n - 1) + 1
}

fn spin_forever() {
    let (mut calls, mut bad, mut last) = (0u64, 0u64, 0u64);
    loop {
        for i in 0..2_000_000u64 {
            let r = tiny(std::hint::black_box(i));
            // Every version returns `i + k` with 1000 <= k < 2000.
            if !(i + 1000..i + 2000).contains(&r) {
                bad += 1;
            }
            last = r - i;
            calls += 1;
        }
        println!("spin calls={calls} bad={bad} last={last}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn main() {
    // `INPLACE_SAFE_POINT_FILE=<path>`: patches switch only at the safe point at the top of the
    // loop, which the program reaches only while that file exists.
    let gate = std::env::var_os("INPLACE_SAFE_POINT_FILE").map(std::path::PathBuf::from);
    if gate.is_some() {
        ipbp::init_with_safe_points();
    } else {
        ipbp::init();
    }
    ipbp::on_patch(|p| {
        println!("hook generation={} changed={} added={}", p.generation, p.changed.join(","), p.added.len())
    });
    std::panic::set_hook(Box::new(|info| {
        let bt = std::backtrace::Backtrace::force_capture();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "panic: {}", info.payload_as_str().unwrap_or("?"));
        for line in bt.to_string().lines() {
            let _ = writeln!(out, "bt: {}", line.trim());
        }
    }));
    let period = std::env::var("INPLACE_PERIOD_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let shapes: Vec<Box<dyn Shape>> = vec![Box::new(Square(2)), Box::new(Circle(1))];
    let handler = Handler { name: "double", f: double };
    let mut registry = Registry::new();
    registry.register("inc", Box::new(|n| format!("{}", n % 3 + 1)));
    let scale = 10;
    registry.register("scaled", Box::new(move |n| format!("{}", (n % 2) * scale)));
    let step_at_start = step as fn(u64) -> String as usize;
    println!("started pid={}", std::process::id());

    if std::env::var_os("INPLACE_STRESS").is_some() {
        std::thread::spawn(spin_forever);
        std::thread::spawn(|| {
            for round in 0.. {
                let s = slow_step(round);
                println!("slow {s}");
            }
        });
        std::thread::spawn(|| loop {
            println!("rec depth={}", depth(64));
        });
    }

    for n in 0u64.. {
        if gate.as_ref().is_some_and(|g| g.exists()) {
            ipbp::safe_point();
        }
        let global = TICKS.fetch_add(1, Ordering::SeqCst) + 1;
        let local = LOCAL_TICKS.with(|c| {
            c.set(c.get() + 1);
            c.get()
        });
        let areas: Vec<String> = shapes.iter().map(|s| s.area().to_string()).collect();
        hook();
        let risky = std::panic::catch_unwind(|| risky(n)).map_or("caught".to_string(), |v| v.to_string());
        println!(
            "line n={n} step={} shapes={} field={}:{} closures={} lib={} risky={risky} hooked={} cb={} global={global} local={local} fp_same={}",
            step(n),
            areas.join(","),
            handler.name,
            (handler.f)(n % 5),
            registry.run_all(n),
            registry.describe(),
            HOOKED.load(Ordering::SeqCst),
            CALLBACK.get().map_or("none".to_string(), |f| f(n)),
            fp_check(step_at_start),
        );
        std::thread::sleep(Duration::from_millis(period));
    }
}
