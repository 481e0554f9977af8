//! `ipbp-ld watch` end to end: the counter workspace (a binary and a library crate) started by
//! `watch`, edited the ways editors save, each save live in the same process; then the target
//! directory must be cargo's own: `cargo build` finds nothing to do and `cargo test` passes.

#[path = "../support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;
use support::live::{scenario, Tick, CONFIG, PATIENCE};
use support::{shim, Cmd, Linker, Project, LINKER_VAR};

const MAIN: &str = "src/main.rs";
const LIB: &str = "words/src/lib.rs";

/// `ipbp-ld watch` running on a project, its stdout and stderr (the program's too) collected.
struct Watch {
    child: Child,
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Watch {
    fn start(project: &Project, env: &[(&str, &str)]) -> Watch {
        let manifest = project.dir.join("Cargo.toml");
        let mut cmd = Cmd::new(shim(), &["watch".as_ref(), "--manifest-path".as_ref(), manifest.as_os_str()])
            .env("IPBP_HOME", &project.home)
            .env("CARGO_TARGET_DIR", project.target(CONFIG))
            .env("CARGO_TERM_COLOR", "never")
            .env("COUNTER_PERIOD_MS", "30");
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let mut command = cmd.into_command();
        command.current_dir(&project.dir).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("cannot start ipbp-ld watch");
        let lines: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let streams: [Box<dyn std::io::Read + Send>; 2] =
            [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        for stream in streams {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.0.lock().unwrap().push(line.trim().to_string());
                    lines.1.notify_all();
                }
            });
        }
        Watch { child, lines }
    }

    fn mark(&self) -> usize {
        self.lines.0.lock().unwrap().len()
    }

    /// The first line after `mark` satisfying `what`.
    #[track_caller]
    fn wait_for(&self, mark: usize, description: &str, what: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut lines = self.lines.0.lock().unwrap();
        loop {
            if let Some(l) = lines[mark.min(lines.len())..].iter().find(|l| what(l)) {
                return l.clone();
            }
            let now = Instant::now();
            assert!(now < deadline, "watch never printed {description}: {}", dump(&lines));
            lines = self.lines.1.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Waits for a tick whose `msg` is `msg`, from the one process watch started.
    #[track_caller]
    fn wait_for_msg(&self, mark: usize, msg: &str) {
        self.wait_for(mark, &format!("a tick with msg={msg}"), |l| {
            Tick::parse(l).is_some_and(|t| t.get("msg") == msg)
        });
    }

    fn lines_since(&self, mark: usize) -> Vec<String> {
        self.lines.0.lock().unwrap()[mark..].to_vec()
    }

    fn dump(&self) -> String {
        dump(&self.lines.0.lock().unwrap())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines that are not the program's ticks.
fn dump(lines: &[String]) -> String {
    let shown: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| !l.starts_with("tick ") && !l.starts_with("pairs "))
        .collect();
    format!("{} lines, ticks left out:\n{}", lines.len(), shown.join("\n"))
}

/// Saves `text` as an editor that writes a temporary file and renames it over the original.
fn save_by_rename(project: &Project, path: &str, text: &str) {
    let target = project.dir.join(path);
    let tmp = target.with_file_name(format!(".{}.swp", target.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &target).unwrap();
}

fn replace(project: &Project, path: &str, from: &str, to: &str) -> String {
    let text = project.read(path);
    assert!(text.contains(from), "{path} does not contain {from:?}");
    text.replacen(from, to, 1)
}

fn started_pid(watch: &Watch) -> u32 {
    let line = watch.wait_for(0, "the program's start", |l| l.starts_with("started pid="));
    line["started pid=".len()..].parse().unwrap()
}

/// Ends the session with SIGTERM; the program must be gone with it.
fn stop(mut watch: Watch, pid: u32) {
    // SAFETY: signals our own child, not yet reaped.
    unsafe { libc::kill(watch.child.id() as i32, libc::SIGTERM) };
    let status = watch.child.wait().unwrap();
    assert!(!status.success(), "watch exits with 128 + the signal: {status}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the program (pid {pid}) outlived watch: {}",
        watch.dump()
    );
    watch.wait_for(0, "Stopped", |l| l.starts_with("Stopped "));
}

/// `cargo build` after the session: nothing to compile, the target directory is cargo's.
fn assert_cargo_finds_nothing_to_do(project: &Project, linker: Linker) {
    let run =
        project.cargo(linker, CONFIG, &["build", "-v"]).env(LINKER_VAR, shim().canonicalize().unwrap()).run();
    run.assert_success();
    assert!(
        !run.stderr.contains("Compiling") && !run.stderr.contains("Dirty"),
        "cargo build after watch rebuilt something: {run}"
    );
}

#[test]
fn saves_go_live_in_one_process_and_leave_cargos_target_dir() {
    let project = scenario("counter");
    // The template was built before watch existed: a save makes cargo compile (and watch record)
    // both crates.
    project.touch(LIB);
    let watch = Watch::start(&project, &[]);
    let pid = started_pid(&watch);
    watch.wait_for(0, "the first build", |l| {
        l.starts_with("Built ") && l.contains("→ cargo (the first build)")
    });
    watch.wait_for_msg(0, "hello");

    // Ten edits of the binary crate, saved alternately by rename and in place.
    let mut msg = "hello".to_string();
    for i in 1..=10 {
        let next = format!("e{i}");
        let text =
            replace(&project, MAIN, &format!("let msg = \"{msg}\";"), &format!("let msg = \"{next}\";"));
        let mark = watch.mark();
        if i % 2 == 1 {
            save_by_rename(&project, MAIN, &text);
        } else {
            project.write(MAIN, &text);
        }
        let line = watch
            .wait_for(mark, "a progress line", |l| l.starts_with("Rebuilt ") || l.starts_with("Failed "));
        assert!(
            line.starts_with("Rebuilt src/main.rs → rustc directly: counter "),
            "edit {i}: {line}\n{}",
            watch.dump()
        );
        watch.wait_for(mark, "a Patched line", |l| l.starts_with(&format!("Patched counter (pid {pid})")));
        watch.wait_for_msg(mark, &next);
        msg = next;
    }

    // The library: rebuilt directly, with the binary that uses it.
    let mark = watch.mark();
    project.write(LIB, &replace(&project, LIB, "format!(\"{w}!\")", "format!(\"{w}?\")"));
    let line =
        watch.wait_for(mark, "a progress line", |l| l.starts_with("Rebuilt ") || l.starts_with("Failed "));
    assert!(
        line.starts_with("Rebuilt words/src/lib.rs → rustc directly: words "),
        "{line}\n{}",
        watch.dump()
    );
    assert!(line.contains(", counter "), "the binary is rebuilt after the library: {line}");
    watch.wait_for(mark, "the library's edit", |l| {
        Tick::parse(l).is_some_and(|t| t.get("greet").contains("hi?#"))
    });

    // A build error: reported, the program keeps running its code; the next good save goes live.
    let mark = watch.mark();
    project.write(MAIN, &replace(&project, MAIN, &format!("let msg = \"{msg}\";"), "let msg = not_a_value;"));
    let line = watch.wait_for(mark, "the failure", |l| l.starts_with("Rebuilt ") || l.starts_with("Failed "));
    assert!(line.starts_with("Failed src/main.rs → rustc directly: counter failed"), "{line}");
    watch.wait_for(mark, "rustc's error", |l| l.contains("cannot find value `not_a_value`"));
    let after_failure = watch.mark();
    watch.wait_for_msg(after_failure, &msg);
    let mark = watch.mark();
    save_by_rename(
        &project,
        MAIN,
        &replace(&project, MAIN, "let msg = not_a_value;", "let msg = \"fixed\";"),
    );
    let line =
        watch.wait_for(mark, "a progress line", |l| l.starts_with("Rebuilt ") || l.starts_with("Failed "));
    assert!(line.starts_with("Rebuilt src/main.rs → rustc directly: counter "), "{line}");
    watch.wait_for_msg(mark, "fixed");

    // Cargo.toml: cargo builds, and says why; the next source edit is direct again.
    let mark = watch.mark();
    let manifest = project.read("Cargo.toml");
    save_by_rename(
        &project,
        "Cargo.toml",
        &manifest.replace("publish = false", "publish = false\nauthors = [\"watch\"]"),
    );
    let line =
        watch.wait_for(mark, "a progress line", |l| l.starts_with("Rebuilt ") || l.starts_with("Failed "));
    assert!(line.starts_with("Rebuilt Cargo.toml → cargo (Cargo.toml changed)"), "{line}\n{}", watch.dump());
    let mark = watch.mark();
    project.write(MAIN, &replace(&project, MAIN, "let msg = \"fixed\";", "let msg = \"last\";"));
    let line =
        watch.wait_for(mark, "a progress line", |l| l.starts_with("Rebuilt ") || l.starts_with("Failed "));
    assert!(line.starts_with("Rebuilt src/main.rs → "), "{line}");
    watch.wait_for_msg(mark, "last");

    let starts = watch.lines_since(0).iter().filter(|l| l.starts_with("started pid=")).count();
    assert_eq!(starts, 1, "every save went live in the one process: {}", watch.dump());
    stop(watch, pid);

    assert_cargo_finds_nothing_to_do(&project, Linker::Shim);
    let run =
        project.cargo(Linker::Shim, CONFIG, &["test"]).env(LINKER_VAR, shim().canonicalize().unwrap()).run();
    run.assert_success();
}

/// With the linker named in the project's `.cargo/config.toml` (as README tells users to do),
/// watch leaves cargo's configuration alone; Ctrl-C (SIGINT) ends the session and the program.
#[test]
fn config_lines_and_ctrl_c() {
    let project = scenario("counter");
    let shim_path = shim().canonicalize().unwrap();
    project.write(
        ".cargo/config.toml",
        &format!("[target.x86_64-unknown-linux-gnu]\nlinker = {:?}\n", shim_path.display().to_string()),
    );
    // Everything is compiled before the session: watch has recorded no rustc command yet, so
    // each crate's first edit goes through cargo (which records it), the next one goes direct.
    project.cargo(Linker::Plain, CONFIG, &["build"]).run().assert_success();
    let watch = Watch::start(&project, &[]);
    let pid = started_pid(&watch);
    watch.wait_for(0, "the first build", |l| {
        l.starts_with("Watching ") && l.contains("cargo's configured linker")
    });
    watch.wait_for_msg(0, "hello");
    for (i, (from, to)) in [("hello", "configured"), ("configured", "direct")].into_iter().enumerate() {
        let mark = watch.mark();
        project.write(
            MAIN,
            &replace(&project, MAIN, &format!("let msg = \"{from}\";"), &format!("let msg = \"{to}\";")),
        );
        let line = watch
            .wait_for(mark, "a progress line", |l| l.starts_with("Rebuilt ") || l.starts_with("Failed "));
        let expected = if i == 0 {
            "Rebuilt src/main.rs → cargo (no recorded rustc command for "
        } else {
            "Rebuilt src/main.rs → rustc directly: counter "
        };
        assert!(line.starts_with(expected), "{line}\n{}", watch.dump());
        watch.wait_for_msg(mark, to);
    }

    // The library was compiled before this session: its first edit goes through cargo (which
    // records it), the next one goes direct.
    for (i, (from, to)) in [("{w}!", "{w}+"), ("{w}+", "{w}=")].into_iter().enumerate() {
        let mark = watch.mark();
        project.write(LIB, &replace(&project, LIB, from, to));
        let line = watch
            .wait_for(mark, "a progress line", |l| l.starts_with("Rebuilt ") || l.starts_with("Failed "));
        let expected = if i == 0 {
            "Rebuilt words/src/lib.rs → cargo (words-"
        } else {
            "Rebuilt words/src/lib.rs → rustc directly: words "
        };
        assert!(line.starts_with(expected), "{line}\n{}", watch.dump());
        let shown = to.replace("{w}", "hi");
        watch.wait_for(mark, "the library's edit", |l| {
            Tick::parse(l).is_some_and(|t| t.get("greet").contains(&format!("{shown}#")))
        });
    }

    // A new module in a new directory: cargo must discover the file; after that, it is watched
    // and built directly like any other.
    let mark = watch.mark();
    project.write("src/more/mod.rs", "pub fn value() -> String {\n    String::from(\"more\")\n}\n");
    let extra = "fn extra() -> String {\n    String::from(\"none\")\n}";
    project.write(
        MAIN,
        &replace(&project, MAIN, extra, "mod more;\n\nfn extra() -> String {\n    more::value()\n}"),
    );
    watch.wait_for(mark, "the new module", |l| Tick::parse(l).is_some_and(|t| t.get("extra") == "more"));
    watch.wait_for(mark, "a cargo build", |l| l.starts_with("Rebuilt ") && l.contains("→ cargo ("));
    let mark = watch.mark();
    project.write("src/more/mod.rs", "pub fn value() -> String {\n    String::from(\"even-more\")\n}\n");
    // (A second build for the new module, if the saves came in two batches, may still end after
    // this mark: its line names src/main.rs, and this save may have joined it.)
    let line = watch.wait_for(mark, "a progress line", |l| {
        (l.starts_with("Rebuilt ") && l.contains("src/more/mod.rs")) || l.starts_with("Failed ")
    });
    assert!(
        line.starts_with("Rebuilt ") && line.contains(" → rustc directly: counter "),
        "{line}\n{}",
        watch.dump()
    );
    watch.wait_for(mark, "the module's edit", |l| {
        Tick::parse(l).is_some_and(|t| t.get("extra") == "even-more")
    });

    let mut watch = watch;
    // SAFETY: signals our own child, not yet reaped.
    unsafe { libc::kill(watch.child.id() as i32, libc::SIGINT) };
    let status = watch.child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "watch exits with 128 + SIGINT");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the program outlived watch");

    // The same cargo configuration finds nothing to do.
    let run = project.cargo(Linker::Plain, CONFIG, &["build", "-v"]).run();
    run.assert_success();
    assert!(!run.stderr.contains("Compiling"), "cargo build after watch rebuilt something: {run}");
}
