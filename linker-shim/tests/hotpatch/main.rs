//! Hot patching end to end: `testdata/counter` built through ipbp-ld with cargo, started as a
//! real process, edited and rebuilt while it runs; assertions on what the running process prints.
//!
//! The counter app runs three threads that call a hot function (`tick`) and a hot method
//! (`Greeter::greet`) in a loop, each printing a line with the message, the results of a chain of
//! private helpers, a call into the workspace library crate `words`, and two counters: `global`
//! (a `static AtomicUsize`) and `local` (a `thread_local!`). Every scenario works on its own copy.

#[path = "../support/mod.rs"]
mod support;

mod edits;
mod link_failure;
mod recording;
mod workday;

use support::live::{scenario, status_for, status_lines, Running, Tick};
use support::Project;

const MAIN: &str = "src/main.rs";
const THREADS: [u32; 3] = [1, 2, 3];

/// A fresh copy of the counter app, built and running (a tick every 40 ms per thread), with each
/// thread's first tick seen.
fn running_counter() -> (Project, Running) {
    let project = scenario("counter");
    project.build();
    let app = project.start("counter", &[("COUNTER_PERIOD_MS", "40")]);
    app.wait_for_ticks(0, &THREADS, "a first tick", |_| true);
    (project, app)
}

/// Builds after an edit; the build must succeed and report `Patched` for the process.
#[track_caller]
fn build_and_expect_patched(project: &Project, app: &Running) -> String {
    project.build_and_expect_patched(app, "counter")
}

/// Each thread's latest `local` counter and the highest `global` seen so far.
fn counters(ticks: &[Tick]) -> ([u64; 4], u64) {
    let mut local = [0; 4];
    let mut global = 0;
    for t in ticks {
        local[t.thread as usize] = local[t.thread as usize].max(t.local);
        global = global.max(t.global);
    }
    (local, global)
}

/// After a patch, every thread's counters carry on from where they were: the static and the
/// thread-local kept their values.
#[track_caller]
fn assert_state_kept(before: &[Tick], after: &[Tick], app: &Running) {
    let (local_before, global_before) = counters(before);
    for t in after {
        assert!(
            t.local > local_before[t.thread as usize],
            "thread {}'s thread-local counter went from {} back to {}: {}",
            t.thread,
            local_before[t.thread as usize],
            t.local,
            app.dump()
        );
        assert!(
            t.global > global_before,
            "the static counter went from {global_before} back to {}: {}",
            t.global,
            app.dump()
        );
    }
}

/// Test 1: edit the message of a hot function, then the text of a hot method. The new text shows
/// in every thread, and both counters continue from where they were.
#[test]
fn counter_edit_shows_new_text_and_keeps_static_and_thread_local_state() {
    let (project, app) = running_counter();
    let before = app.ticks_since(0);

    let mark = app.mark();
    project.edit(MAIN, r#"let msg = "hello";"#, r#"let msg = "bonjour";"#);
    let line = build_and_expect_patched(&project, &app);
    assert!(line.contains("1 changed"), "{line}");
    let after = app.wait_for_ticks(mark, &THREADS, "the new message", |t| t.get("msg") == "bonjour");
    assert_state_kept(&before, &after, &app);

    let mark = app.mark();
    let before = app.ticks_since(0);
    project.edit(
        MAIN,
        r#"format!("{}-says-{}", self.name, words::word())"#,
        r#"format!("{}-shouts-{}", self.name, words::word())"#,
    );
    build_and_expect_patched(&project, &app);
    let after = app.wait_for_ticks(mark, &THREADS, "the method's new text", |t| {
        t.get("greet").starts_with(&format!("g{}-shouts-hi!#", t.thread)) && t.get("msg") == "bonjour"
    });
    assert_state_kept(&before, &after, &app);
    assert_eq!(
        app.lines_since(0).iter().filter(|l| l.starts_with("started pid=")).count(),
        1,
        "the app restarted"
    );
}

/// Test 2: an edit in a library crate of the app's workspace is patched like one in the binary.
/// The library's own thread-local (reached general-dynamic, through `__tls_get_addr`) keeps
/// counting in every thread.
#[test]
fn workspace_library_edit_is_patched() {
    let (project, app) = running_counter();
    let before = app.wait_for_ticks(app.mark(), &THREADS, "a tick before the edit", |_| true);
    let mark = app.mark();
    project.edit("words/src/lib.rs", r#"format!("{w}!")"#, r#"format!("{w}?!")"#);
    build_and_expect_patched(&project, &app);
    let after = app
        .wait_for_ticks(mark, &THREADS, "the library's new text", |t| t.get("greet").contains("-says-hi?!#"));
    let calls = |t: &Tick| -> u64 { t.get("greet").rsplit('#').next().unwrap().parse().unwrap() };
    for (b, a) in before.iter().zip(&after) {
        assert!(
            calls(a) > calls(b),
            "thread {}'s thread-local in the library restarted: {b:?} then {a:?}",
            a.thread
        );
    }
}

/// Test 3: only a private helper three calls below the hot point changes.
#[test]
fn deep_private_helper_change_is_visible() {
    let (project, app) = running_counter();
    let mark = app.mark();
    project.edit(MAIN, r#"String::from("deep")"#, r#"String::from("DEEPER")"#);
    let line = build_and_expect_patched(&project, &app);
    assert!(line.contains("1 changed"), "{line}");
    app.wait_for_ticks(mark, &THREADS, "the helper's new text", |t| t.get("deep") == "DEEPER");
}

/// Test 4: an edit that brings a new function, a new static, a new generic instance, a std API the
/// program never called and a new lazily initialised `thread_local!`.
#[test]
fn new_functions_statics_generics_std_apis_and_thread_locals_work() {
    let (project, app) = running_counter();
    let mark = app.mark();
    edits::new_code(&project);
    let line = build_and_expect_patched(&project, &app);
    assert!(line.contains("added"), "{line}");
    // extra=new<n>-<len>-<sum>-8193: n counts calls in the new static (all threads), len is the
    // length of this thread's new thread-local Vec, sum uses Vec<NewThing>, 8193 = 0x2001 from a
    // parsed Ipv6Addr.
    let first =
        app.wait_for_ticks(mark, &THREADS, "the new code's output", |t| t.get("extra").starts_with("new"));
    let parse = |t: &Tick| -> (u64, u64, u64, String) {
        let parts: Vec<&str> = t.get("extra").trim_start_matches("new").split('-').collect();
        assert_eq!(parts.len(), 4, "unexpected extra field in {t:?}");
        (
            parts[0].parse().unwrap(),
            parts[1].parse().unwrap(),
            parts[2].parse().unwrap(),
            parts[3].to_string(),
        )
    };
    for t in &first {
        let (n, len, sum, ip) = parse(t);
        assert_eq!(len, 1, "the new thread-local did not start empty in thread {}: {t:?}", t.thread);
        assert_eq!(sum, n + 2, "Vec<NewThing> computed wrong: {t:?}");
        assert_eq!(ip, "8193", "the parsed Ipv6Addr is wrong: {t:?}");
    }
    // Later ticks: the new static keeps counting across threads, each thread's new thread-local
    // keeps growing on its own.
    let later = app.wait_for_ticks(app.mark(), &THREADS, "more ticks of the new code", |t| {
        t.get("extra").starts_with("new")
    });
    for (a, b) in first.iter().zip(&later) {
        let ((n1, len1, ..), (n2, len2, ..)) = (parse(a), parse(b));
        assert!(n2 > n1, "the new static did not keep counting: {a:?} then {b:?}");
        assert!(
            len2 > len1,
            "thread {}'s new thread-local did not keep its value: {a:?} then {b:?}",
            a.thread
        );
    }
    let manifest = project.manifest(app.pid, 1);
    let pulled = manifest["report"]["pulled"].as_array().expect("report.pulled");
    assert!(
        pulled.iter().any(|p| p.as_str().is_some_and(|s| s.contains("Ipv6Addr") || s.contains("net"))),
        "the std code for Ipv6Addr was not pulled from the std rlib: {manifest:#}"
    );
    assert!(
        !manifest["new_thread_locals"].as_array().unwrap().is_empty(),
        "no thread-local placed: {manifest:#}"
    );
    assert!(!manifest["new_statics"].as_array().unwrap().is_empty(), "no static added: {manifest:#}");
}

/// Test 5: patched code panics; `catch_unwind` in unpatched code catches it, and the backtrace
/// captured in the panic hook names the patched function.
#[test]
fn panic_in_patched_code_is_caught_and_named_in_the_backtrace() {
    let (project, app) = running_counter();
    let mark = app.mark();
    project.edit(
        MAIN,
        "fn level3() -> String {\n",
        "fn level3() -> String {\n    if TICKS.load(Ordering::SeqCst) % 4 == 0 {\n        panic!(\"boom from patched level3\");\n    }\n",
    );
    build_and_expect_patched(&project, &app);
    app.wait_for(mark, "the panic message", |l| l == "panic: boom from patched level3");
    app.wait_for(mark, "a backtrace frame naming the patched function", |l| {
        l.starts_with("bt: ") && l.contains("counter::level3")
    });
    app.wait_for(mark, "a caught panic", |l| l.contains("caught-panic"));
    // The threads go on ticking after catching.
    let after = app.mark();
    app.wait_for_ticks(after, &THREADS, "a tick after the panics", |_| true);
}

/// Test 6: edit, then revert to the original text: the original behaviour returns.
#[test]
fn reverting_an_edit_brings_the_original_code_back() {
    let (project, app) = running_counter();
    let original = project.read(MAIN);
    project.edit(MAIN, r#"let msg = "hello";"#, r#"let msg = "changed";"#);
    project.edit(MAIN, r#"String::from("deep")"#, r#"String::from("DEEPER")"#);
    let mark = app.mark();
    build_and_expect_patched(&project, &app);
    app.wait_for_ticks(mark, &THREADS, "the edit", |t| {
        t.get("msg") == "changed" && t.get("deep") == "DEEPER"
    });

    project.write(MAIN, &original);
    let mark = app.mark();
    let line = build_and_expect_patched(&project, &app);
    assert!(line.contains("back to the code it started with"), "{line}");
    app.wait_for_ticks(mark, &THREADS, "the original behaviour", |t| {
        t.get("msg") == "hello" && t.get("deep") == "deep"
    });
}

/// Test 7: ten edits in a row on one process: all applied, state intact.
#[test]
fn ten_edits_in_a_row_all_apply_and_keep_state() {
    let (project, app) = running_counter();
    let mut previous = r#"let msg = "hello";"#.to_string();
    let mut before = app.ticks_since(0);
    for i in 1..=10 {
        let next = format!(r#"let msg = "v{i}";"#);
        project.edit(MAIN, &previous, &next);
        previous = next;
        let mark = app.mark();
        build_and_expect_patched(&project, &app);
        let after =
            app.wait_for_ticks(mark, &THREADS, &format!("edit {i}"), |t| t.get("msg") == format!("v{i}"));
        assert_state_kept(&before, &after, &app);
        before = app.ticks_since(0);
    }
    let manifest = project.manifest(app.pid, 10);
    assert_eq!(manifest["generation"], 10, "{manifest:#}");
}

/// Test 8: edits the tool cannot patch. The build succeeds, the status line names the symbol and
/// the reason, and the process keeps running its current code.
#[test]
fn unpatchable_edits_are_explained_and_the_app_keeps_running() {
    let (project, mut app) = running_counter();
    let original = project.read(MAIN);

    // Only the initial value of a live static changes: state is kept, and the output says so.
    project.edit(
        MAIN,
        "static TICKS: AtomicUsize = AtomicUsize::new(0);",
        "static TICKS: AtomicUsize = AtomicUsize::new(1000);",
    );
    let run = project.build();
    let note = status_lines(&run).into_iter().find(|l| l.contains("initial value of `counter::TICKS`"));
    assert!(
        note.is_some_and(|n| n.contains("keeps its current value")),
        "no note about the initializer: {run}"
    );
    let mark = app.mark();
    let ticks = app.wait_for_ticks(mark, &THREADS, "a tick after the initializer edit", |_| true);
    assert!(
        ticks.iter().all(|t| t.global < 1000),
        "the static was reset to its new initial value: {}",
        app.dump()
    );
    project.write(MAIN, &original);

    // A live static changes type.
    project.edit(
        MAIN,
        "static TICKS: AtomicUsize = AtomicUsize::new(0);",
        "static TICKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);",
    );
    project.edit(
        MAIN,
        "let global = TICKS.fetch_add(1, Ordering::SeqCst) + 1;",
        "let global = TICKS.fetch_add(1, Ordering::SeqCst) as usize + 1;",
    );
    project.edit(MAIN, r#"let msg = "hello";"#, r#"let msg = "not-applied";"#);
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Skipped counter"), "{run}");
    assert!(
        line.contains("counter::TICKS") && line.contains("type changed"),
        "the reason does not name the static: {line}"
    );

    // The signature of a hot function changes.
    project.write(MAIN, &original);
    project.edit(
        MAIN,
        "fn tick(thread: usize, greeter: &mut Greeter) -> String {",
        "fn tick(thread: u8, greeter: &mut Greeter) -> String {",
    );
    project.edit(MAIN, "tick(t, &mut greeter)", "tick(t as u8, &mut greeter)");
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Skipped counter"), "{run}");
    assert!(
        line.contains("counter::tick") && line.contains("signature"),
        "the reason does not name the function: {line}"
    );

    // Still running the original code, counters going on.
    let mark = app.mark();
    let ticks = app.wait_for_ticks(mark, &THREADS, "a tick after the refused edits", |_| true);
    assert!(ticks.iter().all(|t| t.get("msg") == "hello"), "{}", app.dump());
    assert!(app.alive(), "the app died: {}", app.dump());

    // And a good edit afterwards is patched.
    project.write(MAIN, &original);
    project.edit(MAIN, r#"let msg = "hello";"#, r#"let msg = "recovered";"#);
    let mark = app.mark();
    build_and_expect_patched(&project, &app);
    app.wait_for_ticks(mark, &THREADS, "the good edit", |t| t.get("msg") == "recovered");
}

/// Test 9: two processes of the same binary are both patched.
#[test]
fn two_processes_of_one_binary_are_both_patched() {
    let (project, first) = running_counter();
    let second = project.start("counter", &[("COUNTER_PERIOD_MS", "40")]);
    second.wait_for_ticks(0, &THREADS, "a first tick", |_| true);
    let (m1, m2) = (first.mark(), second.mark());
    project.edit(MAIN, r#"let msg = "hello";"#, r#"let msg = "both";"#);
    let run = project.build();
    for app in [&first, &second] {
        let line = status_for(&run, app.pid);
        assert!(line.starts_with("Patched counter"), "{line}: {run}");
    }
    assert_eq!(status_lines(&run).iter().filter(|l| l.starts_with("Patched")).count(), 2, "{run}");
    first.wait_for_ticks(m1, &THREADS, "the edit in the first process", |t| t.get("msg") == "both");
    second.wait_for_ticks(m2, &THREADS, "the edit in the second process", |t| t.get("msg") == "both");
}

/// Closures run through `ipbp::call` and generic hot functions, both called from code that is
/// never patched (the thread loop): in place, their entries jump to the new versions.
#[test]
fn closures_through_ipbp_call_and_generic_hot_functions_are_patched() {
    let (project, app) = running_counter();
    let mark = app.mark();
    project.edit(MAIN, r#"format!("banner-{t}")"#, r#"format!("flag-{t}")"#);
    project.edit(MAIN, r#"format!("<{value}>")"#, r#"format!("[{value}]")"#);
    build_and_expect_patched(&project, &app);
    app.wait_for_ticks(mark, &THREADS, "the new closure and generic function", |t| {
        t.get("banner") == format!("flag-{}", t.thread) && t.get("gen") == format!("[{}]", t.thread)
    });
    let manifest = project.manifest(app.pid, 1);
    let detoured: Vec<&str> = manifest["installs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "detour")
        .map(|i| i["function"].as_str().unwrap())
        .collect();
    assert!(detoured.iter().any(|f| f.contains("{{closure}}")), "the closure was not detoured: {manifest:#}");
    assert!(detoured.contains(&"counter::describe"), "the generic instance was not detoured: {manifest:#}");
    assert!(
        manifest["installs"].as_array().unwrap().iter().all(|i| i["kind"] == "detour"),
        "in place, nothing goes through slots or the redirect table: {manifest:#}"
    );
}

/// The same edits with patches made for hot points only (`IPBP_MODE=hot-points`): the new
/// versions are found through the redirect table, and the thread loop that calls them is not
/// copied.
#[test]
fn hot_points_mode_patches_through_the_redirect_table() {
    let (project, app) = running_counter();
    let mark = app.mark();
    project.edit(MAIN, r#"format!("banner-{t}")"#, r#"format!("flag-{t}")"#);
    project.edit(MAIN, r#"format!("<{value}>")"#, r#"format!("[{value}]")"#);
    let run = project.build_for_hot_points();
    assert!(status_for(&run, app.pid).starts_with("Patched counter"), "{run}");
    app.wait_for_ticks(mark, &THREADS, "the new closure and generic function", |t| {
        t.get("banner") == format!("flag-{}", t.thread) && t.get("gen") == format!("[{}]", t.thread)
    });
    let manifest = project.manifest(app.pid, 1);
    let redirects =
        manifest["installs"].as_array().unwrap().iter().filter(|i| i["kind"] == "redirect").count();
    assert_eq!(redirects, 2, "expected one redirect for the closure and one for the generic: {manifest:#}");
}

/// Threads calling a hot function while a patch is applied see the old code or the new code,
/// never a mix: `pair()` returns the results of two helpers that an edit changes together, and a
/// thread calling it in bursts counts every call that saw one old and one new.
#[test]
fn calls_during_a_patch_see_old_or_new_code_never_a_mix() {
    let project = scenario("counter");
    project.build();
    let app = project.start("counter", &[("COUNTER_PERIOD_MS", "200"), ("COUNTER_PAIRS", "1")]);
    app.wait_for(0, "a pairs report", |l| l.starts_with("pairs "));
    let mark = app.mark();
    project.edit(MAIN, "fn left() -> u32 {\n    1\n}", "fn left() -> u32 {\n    2\n}");
    project.edit(MAIN, "fn right() -> u32 {\n    1\n}", "fn right() -> u32 {\n    2\n}");
    build_and_expect_patched(&project, &app);
    let new =
        app.wait_for(mark, "pairs from the new code", |l| l.starts_with("pairs ") && l.ends_with("last=2/2"));
    let reports: Vec<String> = app.lines_since(0).into_iter().filter(|l| l.starts_with("pairs ")).collect();
    assert!(reports.len() >= 2, "{}", app.dump());
    for r in &reports {
        assert!(r.contains(" mixed=0 "), "a call saw old and new code at once: {r}\n{}", app.dump());
    }
    assert!(new.contains(" mixed=0 "), "{new}");
}

/// A process that is gone (killed, so it could not unregister) is ignored by the next build, and
/// its registration removed.
#[test]
fn registrations_of_dead_processes_are_cleaned() {
    let (project, mut app) = running_counter();
    let pid = app.pid;
    let registration = project.home.join(format!("{pid}.process"));
    assert!(registration.exists());
    app.kill();
    project.edit(MAIN, r#"let msg = "hello";"#, r#"let msg = "nobody-listens";"#);
    let run = project.build();
    assert!(status_lines(&run).iter().all(|l| !l.contains(&format!("(pid {pid})"))), "{run}");
    assert!(!registration.exists(), "the registration of dead process {pid} was not removed");
    assert!(!project.home.join(format!("{pid}.sock")).exists(), "its socket was not removed");
}

/// An optimising dev build (`opt-level = 3`, debug assertions on) keeps every kind of hot point:
/// the optimiser sees no store to a slot and would fold it away unless the slot is kept, and it
/// inlines hot functions into their callers, whose inlined copies must still dispatch.
#[test]
fn optimised_dev_builds_keep_their_hot_points() {
    let project = scenario("counter");
    let toml = project.read("Cargo.toml");
    project.write("Cargo.toml", &format!("{toml}\n[profile.dev]\nopt-level = 3\n"));
    project.build();
    let app = project.start("counter", &[("COUNTER_PERIOD_MS", "40")]);
    app.wait_for_ticks(0, &THREADS, "a first tick", |_| true);

    // An edit of one function reports that function alone: ThinLTO's renamed local symbols
    // (`.llvm.<hash>`) and constants (`anon.<hash>.<n>`) do not make untouched code look changed.
    let mark = app.mark();
    project.edit(MAIN, r#"let msg = "hello";"#, r#"let msg = "fast";"#);
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Patched counter") && line.contains("1 changed"), "{run}");
    assert!(status_lines(&run).iter().all(|l| !l.starts_with("Note ")), "{run}");
    let changed = &project.manifest(app.pid, 1)["report"]["changed"];
    assert_eq!(changed, &serde_json::json!(["counter::tick"]), "{run}");
    app.wait_for_ticks(mark, &THREADS, "the new message", |t| t.get("msg") == "fast");

    let mark = app.mark();
    project.edit(
        MAIN,
        r#"format!("{}-says-{}", self.name, words::word())"#,
        r#"format!("{}-runs-{}", self.name, words::word())"#,
    );
    project.edit(MAIN, r#"format!("banner-{t}")"#, r#"format!("flag-{t}")"#);
    project.edit(MAIN, r#"format!("<{value}>")"#, r#"format!("[{value}]")"#);
    build_and_expect_patched(&project, &app);
    app.wait_for_ticks(mark, &THREADS, "new code in every kind of hot point", |t| {
        t.get("msg") == "fast"
            && t.get("greet").starts_with(&format!("g{}-runs-", t.thread))
            && t.get("banner") == format!("flag-{}", t.thread)
            && t.get("gen") == format!("[{}]", t.thread)
    });
}
