//! A patch goes live while the real linker still runs; when that link fails, the build produced
//! no executable, and the running program returns to the code of its last good build.

use super::support::live::CONFIG;
use super::support::Linker;
use super::{build_and_expect_patched, running_counter, MAIN, THREADS};

/// An edit that compiles but cannot link (it asks for a library that does not exist): the patch
/// was applied during the link, the link fails, and the program is sent back to the last good
/// build (the earlier patch here, so "last good" is not "the code it started with") — the status
/// line says so and the program prints that build's text again. A good edit then goes live.
#[test]
fn a_failed_link_returns_the_program_to_its_last_good_build() {
    let (project, app) = running_counter();
    project.edit(MAIN, r#"let msg = "hello";"#, r#"let msg = "good1";"#);
    build_and_expect_patched(&project, &app);
    app.wait_for_ticks(app.mark(), &THREADS, "the first good build's text", |t| t.get("msg") == "good1");

    let good = project.read(MAIN);
    let broken = good.replacen(r#"let msg = "good1";"#, r#"let msg = "unlinked";"#, 1).replacen(
        "static TICKS",
        "#[link(name = \"ipbp_test_missing_library\")]\nextern \"C\" {}\n\nstatic TICKS",
        1,
    );
    project.write(MAIN, &broken);
    let run = project.cargo(Linker::Shim, CONFIG, &["build"]).run();
    assert!(!run.success(), "the link was meant to fail: {run}");
    assert!(run.stderr.contains("ipbp_test_missing_library"), "the linker's error is not shown: {run}");
    let pid = app.pid;
    let patched =
        run.stderr.lines().position(|l| l.trim().starts_with(&format!("Patched counter (pid {pid})")));
    let reverted = run.stderr.lines().position(|l| {
        l.trim()
            .starts_with(&format!("Reverted counter (pid {pid}) to the last good build: the link failed ("))
    });
    assert!(patched.is_some() && reverted > patched, "no `Patched` then `Reverted` line: {run}");

    // Every tick computed after the revert prints the last good build's text.
    let mark = app.mark();
    app.wait_for_ticks(mark, &THREADS, "the last good build's text", |t| t.get("msg") == "good1");
    let mark = app.mark();
    app.wait_for_ticks(mark, &THREADS, "another tick", |_| true);
    for t in app.ticks_since(mark) {
        assert_eq!(t.get("msg"), "good1", "code of the failed build still runs: {}", app.dump());
    }

    // The next edit that links goes live.
    project.write(MAIN, &good.replacen(r#"let msg = "good1";"#, r#"let msg = "good2";"#, 1));
    build_and_expect_patched(&project, &app);
    app.wait_for_ticks(app.mark(), &THREADS, "the next good build's text", |t| t.get("msg") == "good2");
}

/// The same with patches made for hot points only (`IPBP_MODE=hot-points`), where nothing but
/// slots and the redirect table tells which patch's code runs: after the failed link's patch is
/// undone, the next patch is checked against the build of the patch the program runs again
/// (patch 1 here), not against the failed build's. Patch 1 adds a static holding a new type; an
/// edit of that type's layout is then refused, naming the static and patch 1.
#[test]
fn after_a_failed_link_hot_points_are_checked_against_the_build_they_run() {
    let (project, app) = running_counter();
    let hot_points = |project: &super::support::Project| {
        project.cargo(Linker::Shim, CONFIG, &["build"]).env("IPBP_MODE", "hot-points").run()
    };
    project.edit(
        MAIN,
        "fn extra() -> String {\n    String::from(\"none\")\n}",
        "struct Seen {\n    n: u64,\n}\n\nstatic SEEN: std::sync::Mutex<Vec<Seen>> = std::sync::Mutex::new(Vec::new());\n\n\
         fn extra() -> String {\n    let mut seen = SEEN.lock().unwrap();\n    seen.push(Seen { n: 1 });\n    \
         format!(\"seen{}\", seen.iter().map(|s| s.n).sum::<u64>().min(1))\n}",
    );
    let run = hot_points(&project);
    assert!(super::status_for(&run, app.pid).starts_with("Patched counter"), "{run}");
    app.wait_for_ticks(app.mark(), &THREADS, "patch 1's text", |t| t.get("extra") == "seen1");

    let good = project.read(MAIN);
    project.write(
        MAIN,
        &good
            .replacen(
                "static TICKS",
                "#[link(name = \"ipbp_test_missing_library\")]\nextern \"C\" {}\n\nstatic TICKS",
                1,
            )
            .replacen(r#"let msg = "hello";"#, r#"let msg = "unlinked";"#, 1),
    );
    let run = hot_points(&project);
    assert!(!run.success(), "the link was meant to fail: {run}");
    let pid = app.pid;
    assert!(
        run.stderr
            .lines()
            .any(|l| l.trim().starts_with(&format!("Reverted counter (pid {pid}) to the last good build"))),
        "no `Reverted` line: {run}"
    );

    project.write(
        MAIN,
        &good.replacen("    n: u64,\n}", "    n: u64,\n    more: u64,\n}", 1).replacen(
            "Seen { n: 1 }",
            "Seen { n: 1, more: 2 }",
            1,
        ),
    );
    let run = hot_points(&project);
    let line = super::status_for(&run, pid);
    assert!(line.starts_with("Skipped counter"), "a layout change of values patch 1 keeps went live: {run}");
    assert!(
        line.contains("Seen") && line.contains("patch 1"),
        "not refused as values of patch 1's build: {run}"
    );
    assert!(!line.contains("patch 2"), "checked against the failed build's patch: {run}");
    app.wait_for_ticks(app.mark(), &THREADS, "patch 1's code, still", |t| {
        t.get("extra") == "seen1" && t.get("msg") == "hello"
    });
}
