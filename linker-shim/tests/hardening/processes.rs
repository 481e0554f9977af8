//! Processes that must not silently stop being patched, or be changed by anything but a build.

use super::*;
use support::live::{status_lines, CONFIG};

/// The patch file of generation `generation` of process `pid`.
fn patch_file(project: &Project, pid: u32, generation: u64) -> std::path::PathBuf {
    let patches = project.target(CONFIG).join("ipbp/patches");
    let dir = std::fs::read_dir(&patches)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pid}-"))))
        .expect("a patch directory for the process");
    dir.join(format!("patch-{generation}.so"))
}

/// After a genuine patch, editing its file on disk changes nothing in the running program: it runs
/// a sealed copy. The file is written read-only.
#[test]
fn a_tampered_patch_file_does_not_change_the_running_program() {
    use std::os::unix::fs::PermissionsExt;
    let (project, app) = running_counter(&[]);
    let mark = app.mark();
    project.edit(MAIN, "let msg = \"hello\";", "let msg = \"patched\";");
    build_and_expect_patched(&project, &app);
    app.wait_for_ticks(mark, &THREADS, "the edit", |t| t.get("msg") == "patched");

    let file = patch_file(&project, app.pid, 1);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400, "{} is not read-only", file.display());
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", app.pid)).unwrap();
    assert!(!maps.contains(&file.display().to_string()), "the program maps the patch file itself:\n{maps}");
    assert!(maps.contains("memfd:ipbp-patch"), "the program does not map a sealed copy:\n{maps}");
    // ...and keeps no descriptor for it: the loader names the patch by its file.
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", app.pid))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    assert!(
        !fds.iter().any(|l| l.to_string_lossy().contains("ipbp-patch")),
        "the program keeps a descriptor per patch: {fds:?}"
    );

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let at = bytes.windows(7).position(|w| w == b"patched").expect("the patch holds the new text");
    let mut tampered = bytes.clone();
    tampered[at..at + 7].copy_from_slice(b"TAMPER!");
    // In place, as an editor or a hostile tool would: same inode, new bytes.
    std::fs::OpenOptions::new().write(true).open(&file).and_then(|mut f| f.write_all(&tampered)).unwrap();
    let mark = app.mark();
    for _ in 0..3 {
        app.wait_for_ticks(app.mark(), &THREADS, "more ticks", |_| true);
    }
    let ticks = app.ticks_since(mark);
    assert!(ticks.iter().all(|t| t.get("msg") == "patched"), "the running program changed: {}", app.dump());
}

/// A child forked after `ipbp::init` that calls `exit()` leaves its parent registered: later
/// builds still patch the parent.
#[test]
fn a_forked_child_that_exits_leaves_the_parent_registered() {
    let (project, app) = running_counter(&[("COUNTER_FORK_EXIT", "1")]);
    assert!(project.home.join(format!("{}.process", app.pid)).exists(), "the parent's registration is gone");
    assert!(project.home.join(format!("{}.sock", app.pid)).exists(), "the parent's socket is gone");
    let mark = app.mark();
    project.edit(MAIN, "let msg = \"hello\";", "let msg = \"parent\";");
    build_and_expect_patched(&project, &app);
    app.wait_for_ticks(mark, &THREADS, "the edit", |t| t.get("msg") == "parent");
}

/// A stopped process (SIGSTOP, or a debugger) is reported at once, not waited for; once resumed,
/// the next build patches it.
#[test]
fn a_stopped_process_is_reported_and_patched_once_resumed() {
    let (project, app) = running_counter(&[]);
    // SAFETY: signals to the child process this test started.
    unsafe { libc::kill(app.pid as i32, libc::SIGSTOP) };
    let deadline = std::time::Instant::now() + support::live::PATIENCE;
    while !ipbp::registry::is_stopped(app.pid) {
        assert!(std::time::Instant::now() < deadline, "the process never stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
    project.edit(MAIN, "let msg = \"hello\";", "let msg = \"resumed\";");
    let run = project.build();
    assert_eq!(
        status_for(&run, app.pid),
        format!("Skipped counter (pid {}): stopped (in a debugger?); it keeps its code", app.pid),
        "{run}"
    );
    // SAFETY: as above.
    unsafe { libc::kill(app.pid as i32, libc::SIGCONT) };
    let mark = app.mark();
    project.touch(MAIN);
    build_and_expect_patched(&project, &app);
    app.wait_for_ticks(mark, &THREADS, "the edit", |t| t.get("msg") == "resumed");
}

/// The same program built in two target directories has one build id: builds in either patch the
/// process. A target directory that does not have the build says which one does.
#[test]
fn builds_in_a_second_target_dir_patch_the_process_too() {
    let project = scenario("counter");
    let second = "second";
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(project.target(CONFIG))
        .arg(project.target(second))
        .status()
        .unwrap();
    assert!(status.success());
    project.build();
    let build_second = || {
        let run = project.cargo(support::Linker::Shim, second, &["build"]).run();
        assert!(run.success(), "the build in the second target directory failed: {run}");
        run
    };
    build_second();
    let program = project.program("counter");
    let other = project.target(second).join("debug/counter");
    assert_eq!(
        std::fs::read(&program).unwrap(),
        std::fs::read(&other).unwrap(),
        "the two target directories linked different programs; this test needs identical ones"
    );
    let app = project.start("counter", &[("COUNTER_PERIOD_MS", "40")]);
    app.wait_for_ticks(0, &THREADS, "a first tick", |_| true);

    let mark = app.mark();
    project.edit(MAIN, "let msg = \"hello\";", "let msg = \"second\";");
    let run = build_second();
    assert!(status_for(&run, app.pid).starts_with("Patched counter"), "{run}");
    app.wait_for_ticks(mark, &THREADS, "the edit from the second target dir", |t| t.get("msg") == "second");

    let mark = app.mark();
    project.edit(MAIN, "let msg = \"second\";", "let msg = \"first\";");
    build_and_expect_patched(&project, &app);
    app.wait_for_ticks(mark, &THREADS, "the edit from the first target dir", |t| t.get("msg") == "first");

    // Without its record of the build, the first target directory names the one that has it.
    let maps = project.target(CONFIG).join("ipbp/maps");
    for dir in std::fs::read_dir(&maps).unwrap().flatten() {
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let _ = std::fs::remove_file(f.path());
        }
    }
    project.touch(MAIN);
    let run = project.build();
    let expected = format!(
        "Note counter (pid {}) runs a build of {}; builds there patch it",
        app.pid,
        project.target(second).display()
    );
    assert!(status_lines(&run).contains(&expected), "expected {expected:?}: {run}");
}

/// The kept copies of the running build's objects are removed from the store between the link
/// and the next build (by hand, or by a tool that cleans the target directory): the rebuild links
/// as usual, the patch is refused naming the kept file it cannot read and the object it stood for,
/// and the program runs on unharmed.
#[test]
fn a_kept_object_removed_from_the_store_refuses_the_patch_naming_the_file() {
    let (project, app) = running_counter(&[]);
    let global_before = app.ticks_since(0).iter().map(|t| t.global).max().unwrap_or(0);
    let store = project.target(CONFIG).join("ipbp/store");
    let mut removed = 0;
    for entry in std::fs::read_dir(&store).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "o") {
            std::fs::remove_file(entry.path()).unwrap();
            removed += 1;
        }
    }
    assert!(removed > 0, "no kept objects in {}", store.display());
    let mark = app.mark();
    project.edit(MAIN, "let msg = \"hello\";", "let msg = \"unkept\";");
    let run = project.build(); // asserts that the link succeeded
    let line = status_for(&run, app.pid);
    let prefix = format!("Skipped counter (pid {}): cannot read link input {}/", app.pid, store.display());
    assert!(line.starts_with(&prefix), "expected the patch refused naming the kept file: {run}");
    assert!(line.contains("(kept for ") && line.contains(".rcgu.o)"), "the object is not named: {line}");
    assert!(line.ends_with("; it keeps running its current code"), "{line}");
    assert!(project.program("counter").exists(), "the rebuild left no program: {run}");
    assert_unharmed(&app, mark, "hello", global_before);
}
