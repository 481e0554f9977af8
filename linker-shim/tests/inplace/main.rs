//! In-place patching end to end: `testdata/inplace`, a program with **no hot points** (only
//! `ipbp::init()`), built through ipbp-ld, running while it is edited and rebuilt. Its code is
//! reached the way real programs reach code — a plain call from `main`'s loop, `dyn Trait` boxes
//! and a `fn` field built at startup, closures held by a library crate, a library method — and
//! every edit must show in the running process with the static and thread-local counters going on.

#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;
use support::live::{scenario, status_for, status_lines, Running};
use support::Project;

const MAIN: &str = "src/main.rs";
const LIB: &str = "plugins/src/lib.rs";

/// `key=value` fields of a line the app printed after its first word.
fn fields(line: &str) -> HashMap<String, String> {
    line.split(' ').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn number(line: &str, key: &str) -> u64 {
    fields(line)
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number `{key}` in {line}"))
}

fn running(env: &[(&str, &str)]) -> (Project, Running) {
    let project = scenario("inplace");
    project.build();
    let app = project.start("inplace", env);
    app.wait_for(0, "a first line", |l| l.starts_with("line "));
    (project, app)
}

#[track_caller]
fn build_and_expect_patched(project: &Project, app: &Running) -> String {
    project.build_and_expect_patched(app, "inplace")
}

/// Every shape of indirect call an application keeps from startup, plus a plain call from
/// `main`'s loop, runs its new code after one build; the static and the thread-local keep
/// counting, and `main` itself is reported as running (it is not called again).
#[test]
fn code_reached_through_pointers_made_at_startup_runs_its_new_version() {
    let (project, app) = running(&[]);
    let before = app.wait_for(0, "a line", |l| l.starts_with("line "));
    let mark = app.mark();
    project.edit(MAIN, r#"format!("plain{}", n % 2)"#, r#"format!("fresh{}", n % 2)"#); // plain call
    project.edit(MAIN, "3 * self.0 * self.0", "4 * self.0 * self.0"); // dyn Trait in a Vec<Box<_>>
    project.edit(MAIN, "fn double(x: u64) -> u64 {\n    x * 2", "fn double(x: u64) -> u64 {\n    x * 20"); // fn field
    project.edit(MAIN, "format!(\"{}\", n % 3 + 1)", "format!(\"c{}\", n % 3 + 1)"); // boxed closure held by the library
    project.edit(LIB, r#"format!("registry-of-{}""#, r#"format!("registry-with-{}""#); // library method
    project.edit(MAIN, "fn hook() {}", "fn hook() { HOOKED.fetch_add(1, Ordering::SeqCst); }"); // a 1-byte function
    let line = build_and_expect_patched(&project, &app);
    assert!(line.contains("6 changed"), "{line}");
    let new = app.wait_for(mark, "every new version", |l| {
        let f = fields(l);
        l.starts_with("line ")
            && f["step"].starts_with("fresh")
            && f["shapes"] == "4,4"
            && f["field"] == format!("double:{}", number(l, "n") % 5 * 20)
            && f["closures"].starts_with("inc:c")
            && f["lib"] == "registry-with-2"
            && f["hooked"] != "0"
    });
    assert!(number(&new, "global") > number(&before, "global"), "the static restarted: {new}");
    assert!(number(&new, "local") > number(&before, "local"), "the thread-local restarted: {new}");
    assert_eq!(fields(&new)["fp_same"], "true", "{new}");

    // An edit of `main` itself: new code for `main` would never run; the build says so.
    // (No closure added: the layout guard knows closures by their number in the function.)
    project.edit(MAIN, ".unwrap_or(50);", ".unwrap_or(51);");
    let run = project.build();
    assert!(
        status_lines(&run).iter().any(|l| l.starts_with("Note ")
            && l.contains("`inplace::main` changed; it is running and is not called again")),
        "{run}"
    );
}

/// A thread calls a tiny function in a tight loop while it is patched 20 times in a row; another
/// sits inside a patched function (sleeping) and a third has a patched recursive function on its
/// stack 64 times. None crashes or computes a wrong value, and each sees the newest code on its
/// next call. Two copies run side by side, patched by the same builds: one installs breakpoint
/// first (the default), the other with every thread parked (`IPBP_INSTALL=park`, the fallback).
#[test]
fn busy_blocked_and_recursing_threads_survive_twenty_patches() {
    let (project, poked) = running(&[("INPLACE_STRESS", "1"), ("IPBP_LOG", "1")]);
    let parked =
        project.start("inplace", &[("INPLACE_STRESS", "1"), ("IPBP_LOG", "1"), ("IPBP_INSTALL", "park")]);
    let apps = [&poked, &parked];
    for app in apps {
        app.wait_for(0, "the spinning thread", |l| l.starts_with("spin "));
        app.wait_for(0, "the recursing thread", |l| l.starts_with("rec "));
    }
    let mut current = "x + 1000".to_string();
    for k in 1..=20 {
        let next = format!("x + {}", 1000 + k);
        project.edit(MAIN, &current, &next);
        if k == 10 {
            project.edit(MAIN, "format!(\"old{round}\")", "format!(\"new{round}\")");
            project.edit(MAIN, "        return 7;", "        return 1007;");
        }
        let marks = apps.map(|app| app.mark());
        let run = project.build();
        for (app, mark) in apps.into_iter().zip(marks) {
            let line = status_for(&run, app.pid);
            assert!(line.starts_with("Patched inplace "), "patch {k} of pid {}: {run}", app.pid);
            app.wait_for(mark, &format!("tiny's version {k}"), |l| {
                l.starts_with("spin ") && number(l, "last") == 1000 + k
            });
        }
        current = next;
    }
    for (app, how) in [(&poked, "breakpoint first"), (&parked, "every thread parked (IPBP_INSTALL=park)")] {
        let mark = app.mark();
        let spin = app.wait_for(mark, "a spin report", |l| l.starts_with("spin "));
        assert_eq!(number(&spin, "bad"), 0, "a call of tiny returned garbage: {}", app.dump());
        assert!(number(&spin, "calls") > 10_000_000, "{spin}");
        app.wait_for(0, "the slow thread's new code", |l| l.starts_with("slow new"));
        app.wait_for(0, "the recursion's new code", |l| l == "rec depth=1071");
        let lines = app.lines_since(0);
        for l in lines.iter().filter(|l| l.starts_with("rec ")) {
            assert!(l == "rec depth=71" || l == "rec depth=1071", "recursion computed {l}: {}", app.dump());
        }
        assert!(!lines.iter().any(|l| l.starts_with("panic")), "{}", app.dump());
        let installs = lines.iter().filter(|l| l.contains("[ipbp] patch ")).count();
        let written_so = lines.iter().filter(|l| l.contains("[ipbp] patch ") && l.contains(how)).count();
        assert!(
            installs >= 20 && written_so == installs,
            "every install of pid {} {how}: {}",
            app.pid,
            app.dump()
        );
    }
}

/// A panic raised in patched code unwinds through it, is caught by the old `main`, and the
/// backtrace names the patched function; editing back restores the original bytes.
#[test]
fn panics_unwind_through_new_code_and_a_revert_restores_the_original() {
    let (project, app) = running(&[]);
    let original = app.wait_for(0, "a line", |l| l.starts_with("line "));
    let mark = app.mark();
    project.edit(MAIN, "fn risky(n: u64) -> u64 {\n", "fn risky(n: u64) -> u64 {\n    if n % 2 == 0 {\n        panic!(\"boom from patched risky\");\n    }\n");
    build_and_expect_patched(&project, &app);
    app.wait_for(mark, "a caught panic", |l| l.starts_with("line ") && l.contains("risky=caught"));
    app.wait_for(mark, "the panic message", |l| l == "panic: boom from patched risky");
    app.wait_for(mark, "the patched function in the backtrace", |l| {
        l.starts_with("bt:") && l.contains("inplace::risky")
    });
    app.wait_for(mark, "lines after the panic", |l| l.starts_with("line ") && !l.contains("risky=caught"));

    let mark = app.mark();
    project.edit(MAIN, "    if n % 2 == 0 {\n        panic!(\"boom from patched risky\");\n    }\n", "");
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.contains("back to the code it started with"), "{run}");
    let back = app.wait_for(mark, "the original code on an even tick", |l| {
        l.starts_with("line ") && number(l, "n").is_multiple_of(2) && !l.contains("risky=caught")
    });
    assert!(number(&back, "n") > number(&original, "n"));
    assert_eq!(fields(&back)["risky"], (number(&back, "n") + 1).to_string(), "{back}");
    let later = app.mark();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !app.lines_since(later).iter().any(|l| l.contains("risky=caught")),
        "the reverted function still panics: {}",
        app.dump()
    );
}

/// An optimising dev build (`opt-level = 3`): functions are inlined and laid out differently, and
/// an edit still reaches the running code in place.
#[test]
fn optimised_dev_build_is_patched_in_place() {
    let project = scenario("inplace");
    let toml = project.read("Cargo.toml");
    project.write("Cargo.toml", &format!("{toml}\n[profile.dev]\nopt-level = 3\n"));
    project.build();
    let app = project.start("inplace", &[]);
    app.wait_for(0, "a first line", |l| l.starts_with("line "));
    let mark = app.mark();
    project.edit(MAIN, "3 * self.0 * self.0", "5 * self.0 * self.0");
    project.edit(LIB, r#"format!("registry-of-{}""#, r#"format!("registry-with-{}""#);
    build_and_expect_patched(&project, &app);
    app.wait_for(mark, "the new code", |l| {
        l.starts_with("line ") && fields(l)["shapes"] == "4,5" && fields(l)["lib"] == "registry-with-2"
    });
}

/// With safe points on, a patch is loaded at once but no thread runs its code until the program
/// reaches `ipbp::safe_point()`; then the `on_patch` callback sees what changed.
#[test]
fn safe_points_decide_when_and_the_callback_learns_what() {
    let project = scenario("inplace");
    project.build();
    let gate = project.root().join("safe-point-open");
    let app = project.start("inplace", &[("INPLACE_SAFE_POINT_FILE", gate.to_str().unwrap())]);
    app.wait_for(0, "a first line", |l| l.starts_with("line "));
    project.edit(MAIN, r#"format!("plain{}", n % 2)"#, r#"format!("gated{}", n % 2)"#);
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Patched inplace") && line.contains("next safe point"), "{run}");
    let closed = app.mark();
    std::thread::sleep(std::time::Duration::from_millis(400));
    let lines = app.lines_since(closed);
    assert!(lines.iter().filter(|l| l.starts_with("line ")).count() >= 3, "{}", app.dump());
    assert!(
        lines.iter().all(|l| !l.contains("step=gated") && !l.starts_with("hook ")),
        "new code ran before the safe point: {}",
        app.dump()
    );
    std::fs::write(&gate, "").unwrap();
    let open = app.mark();
    let hook = app.wait_for(open, "the callback", |l| l.starts_with("hook "));
    assert_eq!(hook, "hook generation=1 changed=inplace::step added=0", "{}", app.dump());
    // A tick already past the gate when it opened may still print its old line before the
    // safe point: the line that counts is the first one after the hook's.
    let hook_at = open + app.lines_since(open).iter().position(|l| l.starts_with("hook ")).expect("the hook");
    let after = app.wait_for(hook_at + 1, "a line after the hook", |l| l.starts_with("line "));
    assert!(
        after.contains("step=gated"),
        "the first line after the safe point runs old code: {}",
        app.dump()
    );
}

/// A function a patch *added* is reached later through a pointer that patch's code stored once;
/// the next patch changes it, and the stored pointer leads to the newest version too (the earlier
/// patch's copy is redirected). Reverting everything restores the original code.
#[test]
fn a_function_a_patch_added_follows_later_patches() {
    let (project, app) = running(&[]);
    project.edit(
        MAIN,
        "    format!(\"plain{}\", n % 2)\n}",
        "    CALLBACK.get_or_init(|| later);\n    format!(\"plain{}\", n % 2)\n}\n\nfn later(n: u64) -> String {\n    format!(\"first{}\", n % 2)\n}",
    );
    let mark = app.mark();
    build_and_expect_patched(&project, &app);
    app.wait_for(mark, "the registered callback", |l| {
        l.starts_with("line ") && fields(l)["cb"].starts_with("first")
    });

    project.edit(MAIN, r#"format!("first{}", n % 2)"#, r#"format!("second{}", n % 2)"#);
    let mark = app.mark();
    build_and_expect_patched(&project, &app);
    app.wait_for(mark, "the stored pointer reaching the newest version", |l| {
        l.starts_with("line ") && fields(l)["cb"].starts_with("second")
    });
    let manifest = project.manifest(app.pid, 2);
    assert!(
        manifest["installs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["kind"] == "detour" && i["function"] == "inplace::later"),
        "the first patch's `later` was not redirected: {manifest:#}"
    );

    // Two more patches: the first copy becomes the home of `later` (sent on live to each newest
    // copy), and the second copy is then settled on it for good; the stored pointer (to the first
    // copy) keeps reaching the newest version.
    for (from, to) in [("second", "third"), ("third", "fourth")] {
        project.edit(
            MAIN,
            &format!("format!(\"{from}{{}}\", n % 2)"),
            &format!("format!(\"{to}{{}}\", n % 2)"),
        );
        let mark = app.mark();
        build_and_expect_patched(&project, &app);
        app.wait_for(mark, &format!("the stored pointer reaching the {to} version"), |l| {
            l.starts_with("line ") && fields(l)["cb"].starts_with(to)
        });
    }
    let installs = project.manifest(app.pid, 4)["installs"].as_array().unwrap().clone();
    let live_later: Vec<&serde_json::Value> =
        installs.iter().filter(|i| i["kind"] == "detour" && i["function"] == "inplace::later").collect();
    assert!(
        live_later
            .iter()
            .any(|home| installs.iter().any(|i| i["kind"] == "settle" && i["new"] == home["at"])),
        "no copy of `later` is settled on its home: {installs:#?}"
    );
}

/// New code whose data points at a function of a shared library (a `static` holding libc's
/// `getpid`): the patch carries an absolute dynamic relocation for it, which the program's checks
/// of the sealed patch must accept, and the loader binds.
#[test]
fn a_new_static_pointing_into_libc_is_bound_by_the_loader() {
    let (project, app) = running(&[]);
    project.edit(
        MAIN,
        "fn step(n: u64) -> String {\n    format!(\"plain{}\", n % 2)\n}",
        "extern \"C\" {\n    #[link_name = \"getpid\"]\n    fn c_getpid() -> i32;\n}\n\nstatic GETPID: unsafe extern \"C\" fn() -> i32 = c_getpid;\n\nfn step(n: u64) -> String {\n    format!(\"pid{}-{}\", unsafe { std::hint::black_box(GETPID)() } as u32 == std::process::id(), n % 2)\n}",
    );
    let mark = app.mark();
    build_and_expect_patched(&project, &app);
    app.wait_for(mark, "the pid read through the static", |l| {
        l.starts_with("line ") && fields(l)["step"].starts_with("pidtrue")
    });
}
