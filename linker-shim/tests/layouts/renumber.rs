//! Closures renumbered under values of them that are alive (EDIT-MATRIX.md, *In place*): a closure
//! added before another with the same captures' types and signature takes its number and so its
//! symbol. The layouts app's `src/main.rs` is replaced by a small program of its own (the
//! template's dependencies stay built) whose closures live in the places where that would show:
//! a generic function's closure boxed at startup, a thread looping forever in a closure that
//! calls a closure of its own, closures handed to a generic function and to iterator adapters on
//! every call, boxed closures in a static and in `main`'s locals (`Fn` and `FnMut`).
//!
//! Each tick prints what every one of them answers; a closure value running another closure's
//! code shows as a wrong number.

use super::support::live::{scenario, status_for};
use super::MAIN;

const BASE: &str = r#"//! ipbp's test of renumbered closures (linker-shim/tests/layouts/renumber.rs).
use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

static WORKER: AtomicU64 = AtomicU64::new(0);
static HOOKS: Mutex<Vec<Box<dyn Fn(u64) -> u64 + Send>>> = Mutex::new(Vec::new());

#[inline(never)]
fn apply<F: Fn(u64) -> u64>(f: F, x: u64) -> u64 {
    f(x)
}

/// A generic function's closure, boxed at startup.
#[inline(never)]
fn make<T: Display + Clone + 'static>(t: T) -> Box<dyn Fn() -> String> {
    Box::new(move || format!("A{t}"))
}

/// A plain function's closure, boxed at startup.
#[inline(never)]
fn make_plain(k: u64) -> Box<dyn Fn(u64) -> u64> {
    Box::new(move |x| x + k)
}

/// A closure boxed at startup whose code hands a closure of its own to generic code.
#[inline(never)]
fn nest(k: u64) -> Box<dyn Fn(u64) -> u64> {
    Box::new(move |x| apply(move |y| y + x + k, 1))
}

/// Two boxed closures made at startup, each handing a closure of its own to generic code.
#[inline(never)]
fn pair(k: u64) -> (Box<dyn Fn(u64) -> u64>, Box<dyn Fn(u64) -> u64>) {
    let x = move |n: u64| apply(move |y| y + n + k, 1);
    let y = move |n: u64| apply(move |y| y * n * k, 1);
    (Box::new(x), Box::new(y))
}

/// Closures handed to a generic function and to iterator adapters, made on every call.
#[inline(never)]
fn step(n: u64) -> String {
    let a = apply(|x| x * 2, n);
    let s: u64 = (0..4u64).map(|x| x * n).sum();
    format!("a={a} s={s} b={}", n + 1)
}

/// Boxed closures kept in a static since startup.
#[inline(never)]
fn install(k: u64) {
    HOOKS.lock().unwrap().push(Box::new(move |x| x * 1000 + k));
}

/// A thread looping forever in a closure, calling a closure of its own.
#[inline(never)]
fn start_worker(k: u64) {
    std::thread::spawn(move || loop {
        let inner = |x: u64| x + k;
        WORKER.store(apply(inner, WORKER.load(Ordering::Relaxed) / 1000 * 1000 + 1000), Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
    });
}

/// A `FnMut` boxed at startup, called every tick.
#[inline(never)]
fn counter(start: u64) -> Box<dyn FnMut() -> u64> {
    let mut c = start;
    Box::new(move || {
        c += 1;
        c
    })
}

fn main() {
    ipbp::init();
    let g = make(7u32);
    let p = make_plain(100);
    let q = nest(10);
    let (x, y) = pair(10);
    install(5);
    start_worker(3);
    let mut cnt = counter(50);
    let mut n = 0u64;
    loop {
        n += 1;
        let h = HOOKS.lock().unwrap()[0](n);
        println!(
            "tick n={n} {} g={} p={} q={} x={} y={} h={h} w={} c={}",
            step(n),
            g(),
            p(n),
            q(n),
            x(n),
            y(n),
            WORKER.load(Ordering::Relaxed) % 1000,
            cnt()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}
"#;

/// Before each closure above, another with the same captures' types and signature, which takes
/// its number and symbol (`pair`'s two swap theirs); `step`'s `b` is now computed by the added
/// closure.
const ADDED_BEFORE: &[(&str, &str)] = &[
    (
        "    Box::new(move || format!(\"A{t}\"))",
        "    let t2 = t.clone();\n    let b = move || format!(\"B{t2}\");\n    let _ = b();\n    Box::new(move || format!(\"A{t}\"))",
    ),
    (
        "    Box::new(move |x| x + k)",
        "    let sub = move |x: u64| x.wrapping_sub(k);\n    let _ = sub(1);\n    Box::new(move |x| x + k)",
    ),
    (
        "    let a = apply(|x| x * 2, n);",
        "    let b = apply(|x| x + 1, n);\n    let a = apply(|x| x * 2, n);",
    ),
    ("format!(\"a={a} s={s} b={}\", n + 1)", "format!(\"a={a} s={s} b={b} new\")"),
    ("    HOOKS.lock().unwrap().push(", "    let m = move |x: u64| x * 7 + k;\n    let _ = m(0);\n    HOOKS.lock().unwrap().push("),
    (
        "fn start_worker(k: u64) {\n",
        "fn start_worker(k: u64) {\n    std::thread::spawn(move || {\n        let inner = |x: u64| x + k + 900;\n        let _ = inner(1);\n    });\n",
    ),
    (
        "    Box::new(move |x| apply(move |y| y + x + k, 1))",
        "    let other = move |x: u64| apply(move |y| y + x + k + 5, 1);\n    let _ = other(0);\n    Box::new(move |x| apply(move |y| y + x + k, 1))",
    ),
    (
        "    let x = move |n: u64| apply(move |y| y + n + k, 1);\n    let y = move |n: u64| apply(move |y| y * n * k, 1);\n",
        "    let y = move |n: u64| apply(move |y| y * n * k, 1);\n    let x = move |n: u64| apply(move |y| y + n + k, 1);\n",
    ),
    (
        "    let mut c = start;\n",
        "    let mut d = start;\n    let mut bump = move || {\n        d += 2;\n        d\n    };\n    let _ = bump();\n    let mut c = start;\n",
    ),
];

/// The value of `key=` in a tick line.
fn field<'l>(line: &'l str, key: &str) -> &'l str {
    let at = line.find(&format!(" {key}=")).unwrap_or_else(|| panic!("no {key}= in {line:?}"));
    line[at + key.len() + 2..].split(' ').next().unwrap_or("")
}

/// Whether a tick's numbers are what each closure made at startup, or made by `step`, answers.
fn right(line: &str) -> bool {
    let n: u64 = field(line, "n").parse().unwrap();
    field(line, "a") == (2 * n).to_string()
        && field(line, "s") == (6 * n).to_string()
        && field(line, "b") == (n + 1).to_string()
        && field(line, "g") == "A7"
        && field(line, "p") == (n + 100).to_string()
        && field(line, "q") == (n + 11).to_string()
        && field(line, "x") == (n + 11).to_string()
        && field(line, "y") == (10 * n).to_string()
        && field(line, "h") == (1000 * n + 5).to_string()
        && field(line, "w") == "3"
        && field(line, "c") == (50 + n).to_string()
}

/// Closures added before others with the same captures' types: each old closure value (boxed by
/// a generic function, in a static, in `main`'s locals, a thread's running closure and the
/// closure it calls) keeps its own code, and new code calls the new closures. Before, `make`'s
/// closure (a generic function's, never paired) answered `g=B7`, the worker's inner closure,
/// whose symbol the added thread's took, `w=903`, and `nest`'s closure — paired with the added
/// one, whose code is the same but for the closure it hands to `apply` — called the added one's
/// inner closure (`q=n+16`), and `pair`'s two closures, swapped (each then differs from the other
/// only in the closure it hands to `apply`), answered each other's (`x=10n y=n+11`), after
/// `Patched`.
#[test]
fn closures_added_before_live_ones_with_the_same_captures_keep_their_code() {
    added_before(Build::Plain);
}

/// The same in an optimising dev build (`opt-level = 3`): the inner closures have no code of their
/// own, it is inlined into `apply::<…{closure#0}::{closure#0}>`, whose symbol the instance over the
/// closure that took the number shares. Before, those instances were redirected (`q=n+16`, `x`
/// and `y` each other's), and `pair`'s two closures, equal but for the instance each calls, paired
/// with each other.
#[test]
fn in_an_optimised_build_closures_added_before_live_ones_keep_their_code() {
    added_before(Build::Optimised);
}

#[derive(PartialEq)]
enum Build {
    Plain,
    V0,
    Optimised,
}

/// The same with v0 symbol names, which show the closures' numbers: before, no closure was
/// recognised as one, none paired, and the swapped closures answered each other's.
#[test]
fn with_v0_symbol_names_closures_added_before_live_ones_keep_their_code() {
    added_before(Build::V0);
}

fn added_before(build: Build) {
    let project = scenario("layouts");
    if build == Build::V0 {
        project
            .write(".cargo/config.toml", "[build]\nrustflags = [\"-C\", \"symbol-mangling-version=v0\"]\n");
    }
    if build == Build::Optimised {
        let toml = project.read("Cargo.toml");
        project.write("Cargo.toml", &format!("{toml}\n[profile.dev]\nopt-level = 3\n"));
    }
    project.write(MAIN, BASE);
    project.build();
    let app = project.start("layouts", &[]);
    // The first ticks may come before the worker's first round (`w=0`).
    app.wait_for(0, "a first tick with every answer right", |l| l.starts_with("tick ") && right(l));
    for (from, to) in ADDED_BEFORE {
        project.edit(MAIN, from, to);
    }
    let mark = app.mark();
    project.build_and_expect_patched(&app, "layouts");
    let new = app.wait_for(mark, "a tick of the new code", |l| l.starts_with("tick ") && l.contains(" new "));
    let n: u64 = field(&new, "n").parse().unwrap();
    // The worker stores every 5 ms: by then it has been through its inner closure many times.
    app.wait_for(mark, "five more ticks", |l| l.starts_with("tick ") && field(l, "n").parse() == Ok(n + 5));
    for l in app.lines_since(mark).iter().filter(|l| l.starts_with("tick ")) {
        assert!(right(l), "a closure answered another's: {l}\n{}", app.dump());
    }
}

/// Closures made by a patch's code outlive the next patch: `make_hook`'s returned closure (`B`)
/// follows another (`A`) with the same captures' types and signature. Patch 1 removes `A`, so `B`
/// takes `A`'s number and symbol, and the hooks patch 1's `make_hook` makes run patch 1's copy
/// of that symbol; patch 2 puts `A` back. Patch 1's copy must keep `B`'s code (it is pinned): sent
/// on to the symbol's newest code, `A`'s, the hooks made under patch 1 would answer `x + k`.
const HOOKS: &str = r#"//! ipbp's test of closures made by a patch (linker-shim/tests/layouts/renumber.rs).
use std::sync::Mutex;
use std::time::Duration;

static HOOKS: Mutex<Vec<Box<dyn Fn(u64) -> u64 + Send>>> = Mutex::new(Vec::new());

#[inline(never)]
fn make_hook(k: u64) -> Box<dyn Fn(u64) -> u64 + Send> {
    let a = move |x: u64| x + k;
    let _ = a(0);
    Box::new(move |x: u64| x * k)
}

fn main() {
    ipbp::init();
    let mut n = 0u64;
    loop {
        n += 1;
        if n % 3 == 1 {
            HOOKS.lock().unwrap().push(make_hook(10));
        }
        let answers: Vec<String> = HOOKS.lock().unwrap().iter().map(|h| h(2).to_string()).collect();
        println!("tick n={n} hooks={}", answers.join(","));
        std::thread::sleep(Duration::from_millis(20));
    }
}
"#;

#[test]
fn closures_made_by_a_patch_keep_their_code_when_the_next_patch_renumbers_them_back() {
    let project = scenario("layouts");
    project.write(MAIN, HOOKS);
    project.build();
    let app = project.start("layouts", &[]);
    let all_b = |l: &str| l.starts_with("tick ") && field(l, "hooks").split(',').all(|h| h == "20");
    app.wait_for(0, "a first tick", |l| l.starts_with("tick ") && all_b(l));
    let a = "    let a = move |x: u64| x + k;\n    let _ = a(0);\n";
    for (step, (from, to)) in [(1, (a, "")), (2, ("", a))] {
        if step == 1 {
            project.edit(MAIN, from, to);
        } else {
            project.write(MAIN, HOOKS);
        }
        let run = project.build();
        let line = status_for(&run, app.pid);
        assert!(line.starts_with("Patched layouts ") || line.starts_with("Reverted layouts "), "{run}");
        // Two more hooks made by the code now running, then every hook still answers as `B`.
        let mark = app.mark();
        let count = |l: &str| field(l, "hooks").split(',').count();
        let first = app.wait_for(mark, "a tick", |l| l.starts_with("tick "));
        let more = count(&first) + 2;
        app.wait_for(mark, "two more hooks", |l| l.starts_with("tick ") && count(l) >= more);
        for l in app.lines_since(mark).iter().filter(|l| l.starts_with("tick ")) {
            assert!(all_b(l), "patch {step}: a hook answered another closure's: {l}\n{}", app.dump());
        }
    }
}

/// Closures added by two patches, the second before the one the first added, while values of
/// them are alive: `make_hooks` boxes the base build's closure `A` (`x * k`) and each patch adds
/// one (see the tests below); hooks are made every third tick and kept in a static.
const ADDED_TWICE: &str = r#"//! ipbp's test of closures added by two patches (linker-shim/tests/layouts/renumber.rs).
use std::sync::Mutex;
use std::time::Duration;

type Hook = Box<dyn Fn(u64) -> u64 + Send>;

static HOOKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());

#[inline(never)]
fn make_hooks(k: u64) -> Vec<Hook> {
    let mut hooks: Vec<Hook> = Vec::new();
    hooks.push(Box::new(move |x: u64| x * k));
    hooks
}

fn main() {
    ipbp::init();
    let mut n = 0u64;
    loop {
        n += 1;
        if n % 3 == 1 {
            let made = make_hooks(10);
            HOOKS.lock().unwrap().extend(made);
        }
        let answers: Vec<String> = HOOKS.lock().unwrap().iter().map(|h| h(2).to_string()).collect();
        println!("tick n={n} hooks={}", answers.join(","));
        std::thread::sleep(Duration::from_millis(20));
    }
}
"#;

/// Whether a tick's answers are batches of hooks in the order of the builds that made them:
/// `shapes[i]` is what a batch of build `i` answers. Returns how many batches each made; `None`
/// when they are not such batches (a hook answered another closure's).
fn batches(line: &str, shapes: &[&[&str]]) -> Option<Vec<usize>> {
    fn parse(answers: &[&str], shapes: &[&[&str]], from: usize, counts: &mut [usize]) -> bool {
        if answers.is_empty() {
            return true;
        }
        for (i, shape) in shapes.iter().enumerate().skip(from) {
            if answers.starts_with(shape) {
                counts[i] += 1;
                if parse(&answers[shape.len()..], shapes, i, counts) {
                    return true;
                }
                counts[i] -= 1;
            }
        }
        false
    }
    let answers: Vec<&str> = field(line, "hooks").split(',').collect();
    let mut counts = vec![0; shapes.len()];
    parse(&answers, shapes, 0, &mut counts).then_some(counts)
}

/// The base build's closure `A` in `make_hooks` (`ADDED_TWICE`).
const A: &str = "    hooks.push(Box::new(move |x: u64| x * k));\n";

/// Patch 1 adds `X` (`x + k + 1000`, capturing `k`) before `A`, and patch 2 adds `Y` (`x +
/// tag.len() + 5000`, capturing a `String`) before `X`. `X` is `{closure#0}` in patch 1's build
/// and `{closure#1}` in patch 2's, where `{closure#0}` is `Y`, with other captures: the two are
/// paired by their code (recorded with patch 1), not by number. Before, patch 1's `X` was
/// compared with `Y`, and patch 2 refused: "the captures of closure `layouts::make_hooks::
/// {closure#0}` changed layout (…) since patch 1".
#[test]
fn a_closure_added_before_one_an_earlier_patch_added_leaves_that_ones_values_running() {
    let x = "    hooks.push(Box::new(move |x: u64| x + k + 1000));\n";
    let y = "    let tag = format!(\"y{k}\");\n    hooks.push(Box::new(move |x: u64| x + tag.len() as u64 + 5000));\n";
    // Patch 1 adds `X` before `A`, patch 2 `Y` before `X`.
    let steps = [(A, format!("{x}{A}")), (x, format!("{y}{x}"))];
    added_by_patches(&steps, &[&["20"], &["1012", "20"], &["5005", "1012", "20"]]);
}

/// The same shape where no base closure is renumbered: patch 1 adds `Z` after `A`, patch 2 `W`
/// before `Z`, both capturing `k` as `Z` does, so that `W` takes `Z`'s number and symbol. Only
/// patch 1's record tells `Z` from `W`: without it, patch 1's copy of `Z`'s code would be sent
/// on to `W`'s. Before, `Patched`, and the hooks made under patch 1 answered `20,4012` (`W`'s
/// code) for `20,3012`.
#[test]
fn a_closure_added_before_one_an_earlier_patch_added_after_the_others_takes_nothing_of_it() {
    let z = "    hooks.push(Box::new(move |x: u64| x + k + 3000));\n";
    let w = "    hooks.push(Box::new(move |x: u64| x + k + 4000));\n";
    let steps = [(A, format!("{A}{z}")), (z, format!("{w}{z}"))];
    added_by_patches(&steps, &[&["20"], &["20", "3012"], &["20", "4012", "3012"]]);
}

/// Patch 1 adds `Z` after `A`; patch 2 adds `W` before it and edits `Z` (`+ 3500`), all three
/// capturing `k`: `W` takes `Z`'s number and symbol, and `Z`'s code is nowhere in the new build.
/// Without a counterpart by content, `Z` cannot be told from `W` by name (edited in place or
/// replaced, in a function that gained a closure): the hooks made under patch 1 keep patch 1's
/// code. Before (review 4, finding 1a), `Patched`, and they answered `20,4012` (`W`'s code).
#[test]
fn a_closure_an_earlier_patch_added_edited_as_another_takes_its_number_keeps_its_code() {
    let z = "    hooks.push(Box::new(move |x: u64| x + k + 3000));\n";
    let w = "    hooks.push(Box::new(move |x: u64| x + k + 4000));\n";
    let z2 = "    hooks.push(Box::new(move |x: u64| x + k + 3500));\n";
    let steps = [(A, format!("{A}{z}")), (z, format!("{w}{z2}"))];
    added_by_patches(&steps, &[&["20"], &["20", "3012"], &["20", "4012", "3512"]]);
}

/// The same with `W` capturing a `String`: `Z`'s captures are not compared with `W`'s (its values
/// keep their code). Before (review 4, finding 1c), refused: "the captures of closure
/// `layouts::make_hooks::{closure#1}` changed layout (…) since patch 1".
#[test]
fn a_closure_an_earlier_patch_added_edited_as_another_with_other_captures_takes_its_number_keeps_its_code() {
    let z = "    hooks.push(Box::new(move |x: u64| x + k + 3000));\n";
    let w = "    let tag = format!(\"w{k}\");\n    hooks.push(Box::new(move |x: u64| x + tag.len() as u64 + 4000));\n";
    let z2 = "    hooks.push(Box::new(move |x: u64| x + k + 3500));\n";
    let steps = [(A, format!("{A}{z}")), (z, format!("{w}{z2}"))];
    added_by_patches(&steps, &[&["20"], &["20", "3012"], &["20", "4005", "3512"]]);
}

/// Patch 1 adds `X` before `A`; patch 2 adds `Y` before `X` and edits `X` (`+ 1500`), all three
/// capturing `k`: `A` is renumbered twice, and `X` (patch 1's `{closure#0}`, now `{closure#1}`)
/// has no counterpart by content. Its values keep patch 1's code. Before (review 4, finding 1b),
/// `X` was compared by name with `Y` (same captures), and the hooks made under patch 1 answered
/// `5012` (`Y`'s code).
#[test]
fn a_closure_an_earlier_patch_added_edited_as_another_is_added_before_it_keeps_its_code() {
    let x = "    hooks.push(Box::new(move |x: u64| x + k + 1000));\n";
    let y = "    hooks.push(Box::new(move |x: u64| x + k + 5000));\n";
    let x2 = "    hooks.push(Box::new(move |x: u64| x + k + 1500));\n";
    let steps = [(A, format!("{x}{A}")), (x, format!("{y}{x2}"))];
    added_by_patches(&steps, &[&["20"], &["1012", "20"], &["5012", "1512", "20"]]);
}

/// Runs `ADDED_TWICE` and patches it with each edit of `steps` in turn (`from` → `to` in
/// `make_hooks`): each is `Patched`, and every tick's hooks answer as the build that made them
/// (`shapes`, see [`batches`]).
fn added_by_patches(steps: &[(&str, String)], shapes: &[&[&str]]) {
    let project = scenario("layouts");
    project.write(MAIN, ADDED_TWICE);
    project.build();
    let app = project.start("layouts", &[]);
    let ticks = |l: &str, step: usize| batches(l, shapes).is_some_and(|c| c[step] >= 2);
    app.wait_for(0, "two batches of hooks", |l| l.starts_with("tick ") && ticks(l, 0));
    for (step, (from, to)) in steps.iter().enumerate() {
        project.edit(MAIN, from, to);
        project.build_and_expect_patched(&app, "layouts");
        let mark = app.mark();
        // Seven ticks of the new code (a batch every three), every hook made before still
        // answering its own.
        let first = app.wait_for(mark, "a tick", |l| l.starts_with("tick "));
        let n: u64 = field(&first, "n").parse().unwrap();
        let last = app.wait_for(mark, "seven more ticks", |l| {
            l.starts_with("tick ") && field(l, "n").parse::<u64>().is_ok_and(|m| m >= n + 7)
        });
        for l in app.lines_since(mark).iter().filter(|l| l.starts_with("tick ")) {
            assert!(
                batches(l, shapes).is_some(),
                "patch {}: a hook answered another closure's: {l}\n{}",
                step + 1,
                app.dump()
            );
        }
        assert!(ticks(&last, step + 1), "patch {}: the new code made no hooks: {last}", step + 1);
    }
}
