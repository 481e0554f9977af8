//! The P5 microbenchmark: what a call through `#[ipbp::hot]` costs over a direct call.
//!
//! Two functions with the same body, neither inlined, called in a loop with black-boxed argument
//! and result; the loop overhead is the same for both, so the difference of the per-call times
//! is the dispatch cost. Each line read from stdin runs one measurement and prints
//!
//! ```text
//! measure hot_ns=<ns per call> direct_ns=<ns per call> plain_ns=<ns per call> value=<hot(1)>
//! ```
//!
//! `value` shows which version of `bump_hot` runs, so a benchmark can patch it and measure the
//! patched calls as well. An edit of `SCALE` changes `bump_hot` and `bump_plain` (a function
//! without hot point), never `bump_direct`: after it, `plain_ns - direct_ns` is what a function
//! patched in place costs per call (its old entry jumps to the new code).

use std::hint::black_box;
use std::io::BufRead;
use std::time::Instant;

/// How many calls one round times.
const CALLS: u64 = 20_000_000;
/// Rounds per measurement; the median round is reported.
const ROUNDS: usize = 7;

/// What the benchmark edits.
const SCALE: u64 = 3;

/// `#[ipbp::hot]` functions are never inlined while hot (a patch needs the function's own copy).
#[ipbp::hot]
fn bump_hot(x: u64) -> u64 {
    x.wrapping_mul(SCALE).wrapping_add(1)
}

/// No hot point: after an edit it is patched in place.
#[inline(never)]
fn bump_plain(x: u64) -> u64 {
    x.wrapping_mul(SCALE).wrapping_add(1)
}

/// The same body, not inlined either: the two loops differ only by the dispatch.
#[inline(never)]
fn bump_direct(x: u64) -> u64 {
    x.wrapping_mul(3).wrapping_add(1)
}

/// Nanoseconds per call of `f`, the loop included. `f` is a closure so that the loop calls the
/// function directly (not through a pointer), the way application code does.
fn ns_per_call(f: impl Fn(u64) -> u64) -> f64 {
    let start = Instant::now();
    let mut acc = 0u64;
    for i in 0..CALLS {
        acc = acc.wrapping_add(f(black_box(i)));
    }
    black_box(acc);
    start.elapsed().as_nanos() as f64 / CALLS as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median ns per call of the hot, the direct and the plain function; rounds alternate so that
/// drift in clock speed hits all alike.
fn measure() -> (f64, f64, f64) {
    let (mut hot, mut direct, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        hot.push(ns_per_call(bump_hot));
        direct.push(ns_per_call(bump_direct));
        plain.push(ns_per_call(bump_plain));
    }
    (median(hot), median(direct), median(plain))
}

fn main() {
    ipbp::init();
    println!("started pid={}", std::process::id());
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        let (hot, direct, plain) = measure();
        println!(
            "measure hot_ns={hot:.3} direct_ns={direct:.3} plain_ns={plain:.3} value={}",
            bump_hot(1) + bump_plain(0) - 1
        );
    }
}
