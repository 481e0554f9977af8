//! A type edited twice in one process, and a static an earlier patch added (EDIT-MATRIX.md,
//! *Across patches*). The layouts app's `src/main.rs` is replaced by a small program of its own
//! (the template's dependencies stay built): `main` calls `tick` every 30 ms, and `Mode` is
//! `#[repr(C)]`, so the edits below move its fields where a test can see them.
//!
//! Every line the program prints about a `Mode` says `id=<i> level=<l>`; while every value meets
//! the code of its own layout, `l == 10 * i` (or `l == 0` before `level` exists).

use super::support::live::{scenario, status_for, Running, CONFIG};
use super::support::{Linker, Project};
use super::MAIN;

const BASE: &str = r#"//! ipbp's test of a type edited twice (linker-shim/tests/layouts/twice.rs).
#![allow(dead_code, unused_imports)]
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[repr(C)]
struct Mode {
    id: u64,
}

static STARTED: AtomicBool = AtomicBool::new(false);

/// Described through a trait method whose address `main` keeps as a bare `fn` pointer.
#[repr(C)]
struct Kind {
    a: u64,
}

trait Describe {
    fn describe(&self) -> String;
}

impl Describe for Kind {
    fn describe(&self) -> String {
        format!("a={} b=0", self.a)
    }
}

/// No type here names `Kind` but the pointer's.
struct Hooks {
    describe: fn(&Kind) -> String,
}

static HOOKS: Mutex<Option<Hooks>> = Mutex::new(None);

/// Made and formatted by `print_all` alone, which `ON_TICK` points at since the build.
#[derive(Clone, Copy, Debug)]
enum Mood {
    Calm,
    Busy,
}

#[inline(never)]
fn print_all(n: u64) {
    let m = if n % 2 == 0 { Mood::Calm } else { Mood::Busy };
    println!("hook n={n} mood={m:?}");
}

static ON_TICK: Mutex<fn(u64)> = Mutex::new(print_all);

#[inline(never)]
fn hook(n: u64) {
    let f = *ON_TICK.lock().unwrap();
    f(n);
}

#[inline(never)]
fn kind(n: u64) {
    let k = Kind { a: n };
    let describe = HOOKS.lock().unwrap().as_ref().unwrap().describe;
    println!("kind v0 {}", describe(&k));
}

#[inline(never)]
fn next(n: u64) -> Mode {
    Mode { id: n }
}

#[inline(never)]
fn tick(n: u64) {
    let m = next(n);
    println!("tick v0 id={} level=0", m.id);
}

fn main() {
    ipbp::init();
    println!("started pid={}", std::process::id());
    *HOOKS.lock().unwrap() = Some(Hooks { describe: <Kind as Describe>::describe });
    for n in 1.. {
        tick(n);
        kind(n);
        hook(n);
        std::thread::sleep(Duration::from_millis(30));
    }
}
"#;

/// Patch 1 of the worker case: `Mode` gains `level`, read by `show`, a function this patch adds,
/// and the new `tick` starts a worker thread (once) whose frame runs this patch's code for good,
/// with values of this patch's layout.
const WORKER_1: &[(&str, &str)] = &[
    ("struct Mode {\n    id: u64,\n}", "struct Mode {\n    id: u64,\n    level: u64,\n}"),
    ("Mode { id: n }", "Mode { id: n, level: 10 * n }"),
    (
        "#[inline(never)]\nfn tick(n: u64) {\n    let m = next(n);\n    println!(\"tick v0 id={} level=0\", m.id);\n}",
        r#"#[inline(never)]
fn show(m: &Mode) -> String {
    format!("id={} level={}", m.id, m.level)
}

#[inline(never)]
fn tick(n: u64) {
    if !STARTED.swap(true, Ordering::SeqCst) {
        std::thread::spawn(|| {
            for k in 1.. {
                let m = next(k);
                println!("worker {}", show(&m));
                std::thread::sleep(Duration::from_millis(30));
            }
        });
    }
    let m = next(n);
    println!("tick v1 {}", show(&m));
}"#,
    ),
];

/// Patch 2 of the worker case: `Mode`'s fields swap places (`show`'s code reads `id` at offset
/// 8 now), and `tick` says `v2`.
const WORKER_2: &[(&str, &str)] = &[
    ("struct Mode {\n    id: u64,\n    level: u64,\n}", "struct Mode {\n    level: u64,\n    id: u64,\n}"),
    ("println!(\"tick v1 {}\"", "println!(\"tick v2 {}\""),
];

/// Patch 1 of the static case: a static of `Mode`s, filled and read by the new `tick`.
const LOG_1: &[(&str, &str)] = &[
    ("static STARTED", "static LOG: Mutex<Vec<Mode>> = Mutex::new(Vec::new());\n\nstatic STARTED"),
    (
        "    let m = next(n);\n    println!(\"tick v0 id={} level=0\", m.id);",
        "    let mut log = LOG.lock().unwrap();\n    log.push(next(n));\n    let m = &log[log.len() - 1];\n    println!(\"tick v1 id={} level=0 logged={}\", m.id, log.len());",
    ),
];

/// Patch 2 of the static case: `Mode` gains `level` before `id`: the values in `LOG` are patch 1's.
const LOG_2: &[(&str, &str)] = &[
    ("struct Mode {\n    id: u64,\n}", "struct Mode {\n    level: u64,\n    id: u64,\n}"),
    ("Mode { id: n }", "Mode { id: n, level: 10 * n }"),
    (
        "println!(\"tick v1 id={} level=0 logged={}\", m.id, log.len());",
        "println!(\"tick v2 id={} level={} logged={}\", m.id, m.level, log.len());",
    ),
];

/// `Kind` gains `b` before `a`, which `kind` sets and `describe` prints: `kind` calls `describe`
/// through the `fn` pointer `main` stored at startup, which leads to the old code (not redirected:
/// it receives `&Kind`), which would read `a` where the new value keeps `b` (`a=50 b=0`).
const KIND_FIELD_ADDED: &[(&str, &str)] = &[
    ("struct Kind {\n    a: u64,\n}", "struct Kind {\n    b: u64,\n    a: u64,\n}"),
    ("format!(\"a={} b=0\", self.a)", "format!(\"a={} b={}\", self.a, self.b)"),
    ("Kind { a: n }", "Kind { a: n, b: 10 * n }"),
    ("println!(\"kind v0 {}\"", "println!(\"kind v1 {}\""),
];

/// `Mood` gains a variant, which the new `hook` makes and formats itself; it also calls through
/// `ON_TICK`, whose `print_all` leads to the old `<Mood as Debug>::fmt` (not redirected: its
/// receiver is the changed type) but hands it only values it made itself.
const MOOD_VARIANT_ADDED: &[(&str, &str)] = &[
    ("    Calm,\n    Busy,\n}", "    Calm,\n    Busy,\n    Sleepy,\n}"),
    (
        "    f(n);\n}",
        "    f(n);\n    if n % 3 == 0 {\n        println!(\"hook v1 mood={:?}\", Mood::Sleepy);\n    }\n}",
    ),
];

/// Starts the program as `BASE` has it, built, and waits for its first tick.
fn start_base(project: &Project) -> Running {
    project.write(MAIN, BASE);
    project.build();
    let app = project.start("layouts", &[]);
    app.wait_for(0, "a first tick", |l| l.starts_with("tick v0 "));
    app
}

/// `start_base`, then patch 1 of the worker case, its worker running.
fn with_worker(project: &Project) -> Running {
    let app = start_base(project);
    edit(project, WORKER_1);
    let mark = app.mark();
    let line = project.build_and_expect_patched(&app, "layouts");
    app.wait_for(mark, &format!("the worker patch 1 started, after: {line}"), |l| l.starts_with("worker "));
    app
}

/// Three more lines starting with `prefix`, one after the other: the program goes on.
#[track_caller]
fn goes_on(app: &Running, description: &str, prefix: &str) {
    for _ in 0..3 {
        let mark = app.mark();
        app.wait_for(mark, description, |l| l.starts_with(prefix));
    }
}

fn edit(project: &Project, edits: &[(&str, &str)]) {
    for (from, to) in edits {
        project.edit(MAIN, from, to);
    }
}

/// `(id, level)` of a line about a `Mode`, `(a, b)` of one about a `Kind`.
fn mode(line: &str) -> Option<(u64, u64)> {
    let field = |k: &str| line.split(' ').find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse::<u64>().ok());
    if line.starts_with("kind ") {
        return Some((field("a=")?, field("b=")?));
    }
    Some((field("id=")?, field("level=")?))
}

/// Every line about a `Mode` agrees with the layout its code expects.
#[track_caller]
fn all_consistent(app: &Running) {
    for l in app.lines_since(0) {
        let Some((id, level)) = mode(&l) else { continue };
        let old = ["tick v0 ", "kind v0 "].iter().any(|p| l.starts_with(p));
        let ok = if old || (l.contains(" logged=") && l.starts_with("tick v1 ")) {
            level == 0
        } else {
            level == 10 * id
        };
        assert!(ok, "a value met code of another layout: {l}\n{}", app.dump());
    }
    for l in app.lines_since(0).iter().filter(|l| l.starts_with("hook ")) {
        let n = l.split(' ').find_map(|w| w.strip_prefix("n=")).and_then(|v| v.parse::<u64>().ok());
        let ok = match n {
            Some(n) => l.ends_with(if n % 2 == 0 { " mood=Calm" } else { " mood=Busy" }),
            None => l == "hook v1 mood=Sleepy",
        };
        assert!(ok, "a value met code of another layout: {l}\n{}", app.dump());
    }
}

/// Built with v0 symbol names (`-C symbol-mangling-version=v0`), which do not change with a
/// type's definition (with legacy names, `show` and `LOG` get new names when `Mode` changes, and
/// the earlier patch's copies are not taken for the new ones), five processes in turn:
///
/// - `Mode` gains a field (patch 1) and then swaps its fields (patch 2), while a thread patch 1
///   started runs patch 1's code for good, with values of patch 1's layout, calling `show`, a
///   function patch 1 added. Patch 2 is applied: new ticks run its code, and the worker keeps
///   patch 1's `show` (without the check against patch 1's build it was sent on to patch 2's,
///   which read `id` where patch 1's values keep `level`: `worker id=50 level=5`).
/// - The same patch 1, then every edit undone and the lines moved (no definition differs from the
///   running build's, its units do): the worker goes on with patch 1's code and values.
/// - Patch 1 adds `static LOG: Mutex<Vec<Mode>>`; patch 2 changes `Mode`'s layout. Patch 2's code
///   would bind to patch 1's `LOG` (the ledger matches it by name and size, which the edit keeps)
///   and read its values with the new layout: refused, naming the static and the patch.
/// - `Kind` changes layout, and `kind` calls the trait method `<Kind as Describe>::describe`
///   through a bare `fn` pointer `main` stored at startup: refused, naming the method and `main`
///   (without, `Patched` and `kind v1 a=70 b=0`: the old method read the new value).
/// - `Mood` gains a variant; the new `hook` calls through `static ON_TICK: Mutex<fn(u64)> =
///   Mutex::new(print_all)`, whose unchanged `print_all` leads to the old `<Mood as Debug>::fmt`
///   but makes every value it formats: `Patched` (was refused), its lines as before.
#[test]
fn with_v0_symbol_names_values_of_an_earlier_patchs_layout_meet_only_its_code() {
    let project = scenario("layouts");
    project.write(".cargo/config.toml", "[build]\nrustflags = [\"-C\", \"symbol-mangling-version=v0\"]\n");

    let mut app = with_worker(&project);
    edit(&project, WORKER_2);
    project.build_and_expect_patched(&app, "layouts");
    let after = app.mark();
    app.wait_for(after, "patch 2's tick", |l| l.starts_with("tick v2 "));
    goes_on(&app, "the worker going on", "worker ");
    all_consistent(&app);
    app.kill();

    // Patch 1, then a build that changes `Mode` again and whose link fails: it is undone, and with
    // it the pins it made on patch 1's copies. A later edit of `show` alone reaches the worker
    // (without, patch 1's `show` stayed pinned on its old code after `Patched`).
    let mut app = with_worker(&project);
    let good = project.read(MAIN);
    let mut broken = good.clone();
    for (from, to) in WORKER_2 {
        broken = broken.replacen(from, to, 1);
    }
    let broken = broken.replacen(
        "static STARTED",
        "#[link(name = \"ipbp_test_missing_library\")]\nextern \"C\" {}\n\nstatic STARTED",
        1,
    );
    project.write(MAIN, &broken);
    let run = project.cargo(Linker::Shim, CONFIG, &["build"]).run();
    assert!(!run.success(), "the link was meant to fail: {run}");
    assert!(run.stderr.contains(&format!("Reverted layouts (pid {})", app.pid)), "{run}");
    project.write(MAIN, &good.replacen("\"id={} level={}\", m.id", "\"id={} level={} v=3\", m.id", 1));
    let line = project.build_and_expect_patched(&app, "layouts");
    let after = app.mark();
    app.wait_for(after, &format!("the worker running the new `show`, after: {line}"), |l| {
        l.starts_with("worker ") && l.ends_with(" v=3")
    });
    all_consistent(&app);
    app.kill();

    // Patch 1, then every edit undone: the diff against the build the process started from is
    // empty ("back to the code it started with"), but patch 1's worker goes on with patch 1's
    // values, and its `next` and `show` keep their code (without, its `next` was sent on to the
    // image's, which returns the old, smaller `Mode`).
    let mut app = with_worker(&project);
    // A line more at the top: the units differ from the running build's (their line tables), no
    // definition does.
    project.write(MAIN, &BASE.replacen('\n', "\n// every edit undone, the lines below moved\n", 1));
    let line = project.build_and_expect_patched(&app, "layouts");
    assert!(line.contains("back to the code it started with"), "{line}");
    let after = app.mark();
    app.wait_for(after, "the original tick", |l| l.starts_with("tick v0 "));
    goes_on(&app, "the worker going on", "worker ");
    all_consistent(&app);
    app.kill();

    let app = start_base(&project);
    edit(&project, LOG_1);
    let mark = app.mark();
    project.build_and_expect_patched(&app, "layouts");
    app.wait_for(mark, "patch 1's tick", |l| l.contains(" logged=3"));
    edit(&project, LOG_2);
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Skipped layouts"), "expected a refusal: {run}");
    for name in ["struct `layouts::Mode` changed layout", "since patch 1", "static `layouts::LOG`"] {
        assert!(line.contains(name), "the reason does not name {name:?}: {line}");
    }
    let after = app.mark();
    app.wait_for(after, "patch 1's ticks go on", |l| l.starts_with("tick v1 "));
    all_consistent(&app);
    drop(app);

    let app = start_base(&project);
    edit(&project, KIND_FIELD_ADDED);
    let run = project.build();
    let line = status_for(&run, app.pid);
    goes_on(&app, "kind going on", "kind ");
    all_consistent(&app);
    assert!(line.starts_with("Skipped layouts"), "expected a refusal: {run}");
    for name in [
        "`<layouts::Kind as layouts::Describe>::describe` receives `&layouts::Kind`",
        "struct `layouts::Kind` changed layout",
        "is taken by `layouts::main`",
    ] {
        assert!(line.contains(name), "the reason does not name {name:?}: {line}");
    }
    drop(app);

    // A writable static pointing at code that leads to old code, but hands it only values of its
    // own making (review G4): `Patched`, where it was refused.
    let app = start_base(&project);
    edit(&project, MOOD_VARIANT_ADDED);
    let mark = app.mark();
    project.build_and_expect_patched(&app, "layouts");
    app.wait_for(mark, "the new hook's Sleepy", |l| l.starts_with("hook v1 "));
    goes_on(&app, "print_all going on", "hook n=");
    all_consistent(&app);

    // `Mood` changed again since patch 1, whose unit models are gone from the cache: the two
    // builds cannot be compared, refused, saying so.
    std::fs::remove_dir_all(project.target(CONFIG).join("ipbp/layouts")).expect("the unit models");
    project.edit(MAIN, "    Sleepy,\n}", "    Sleepy,\n    Grumpy,\n}");
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Skipped layouts"), "expected a refusal: {run}");
    assert!(
        line.contains("the type descriptions of the build patch 1 was made from are no longer kept"),
        "{line}"
    );
    project.edit(MAIN, "    Sleepy,\n    Grumpy,\n}", "    Sleepy,\n}");

    // Without the record of the build patch 1 was made from, the next patch cannot be compared
    // with it: refused, saying so.
    let patches = project.target(CONFIG).join("ipbp/patches");
    let dir = std::fs::read_dir(&patches)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{}-", app.pid))))
        .expect("the patches of the process");
    // A record of an older ipbp-ld's (no version line: it does not say which closures its patch
    // added) is not read either.
    let record = dir.join("patch-1.units");
    let text = std::fs::read_to_string(&record).expect("patch 1's record");
    let older = text.strip_prefix("V 2\n").expect("a record of this ipbp-ld's names its format");
    std::fs::write(&record, older).unwrap();
    project.edit(MAIN, "hook v1 mood", "hook v2 mood");
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Skipped layouts"), "expected a refusal: {run}");
    assert!(line.contains("patch-1.units was written by an older ipbp-ld"), "{line}");
    std::fs::remove_file(&record).expect("patch 1's record");
    project.edit(MAIN, "hook v2 mood", "hook v3 mood");
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Skipped layouts"), "expected a refusal: {run}");
    assert!(line.contains("the types of the build patch 1 was made from are not known"), "{line}");
}
