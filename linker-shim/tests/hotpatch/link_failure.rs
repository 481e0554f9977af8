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
