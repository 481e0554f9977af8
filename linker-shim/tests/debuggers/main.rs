//! Debuggers and patched programs, with the real gdb and lldb (`.ci/run` installs them): a
//! debugger attaching to a patched program, or launching it, reaches its prompt and leaves the
//! program running, and the program keeps taking patches. `testdata/debuggee` calls `work(n)`
//! every 20 ms from two threads and prints `work thread=<t> n=<n> value=<work(n)>`.
//!
//! Every debugger runs in batch mode under `timeout -s KILL`: a debugger that hangs fails the
//! test instead of hanging it.

#[path = "../support/mod.rs"]
mod support;

use support::live::{scenario, status_for, Running};
use support::{Cmd, Project, Run};

const MAIN: &str = "src/main.rs";
const PROGRAM: &str = "debuggee";
/// Longest a debugger command may take before it counts as hung.
const LIMIT: &str = "120";

/// The value `work(n)` returns with `let result = doubled + <add>;`.
fn expected(n: u64, add: u64) -> u64 {
    2 * n + add
}

/// `(n, value)` of a `work` line.
fn work_line(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("work ")?;
    let field = |k: &str| rest.split(' ').find_map(|kv| kv.strip_prefix(k)?.parse::<u64>().ok());
    Some((field("n=")?, field("value=")?))
}

/// Waits until every thread calling `work` prints values computed with `+ add`.
#[track_caller]
fn wait_for_add(app: &Running, mark: usize, add: u64) {
    let worker = app.lines_since(0).iter().any(|l| l.contains("thread=worker "));
    for thread in ["main", "worker"].into_iter().take(if worker { 2 } else { 1 }) {
        app.wait_for(mark, &format!("`+ {add}` from thread {thread}"), |l| {
            l.contains(&format!("thread={thread} "))
                && work_line(l).is_some_and(|(n, value)| value == expected(n, add))
        });
    }
}

/// Edits `work`'s added constant from `from` to `to`, builds, expects `Patched`, and waits for
/// the new values.
#[track_caller]
fn patch(project: &Project, app: &Running, from: u64, to: u64) -> String {
    project.edit(MAIN, &format!("doubled + {from};"), &format!("doubled + {to};"));
    let mark = app.mark();
    let line = project.build_and_expect_patched(app, PROGRAM);
    wait_for_add(app, mark, to);
    line
}

fn project() -> Project {
    let project = scenario("debuggee");
    project.build();
    project
}

/// `timeout -s KILL <LIMIT> <args…>`: the process is killed if it hangs.
fn limited(args: &[&str]) -> Cmd {
    let mut all = vec!["-s", "KILL", LIMIT];
    all.extend_from_slice(args);
    Cmd::new("timeout", &all)
}

fn gdb_attach(pid: u32, commands: &[&str]) -> Run {
    let pid = pid.to_string();
    let mut args = vec!["gdb", "-nx", "-q", "-batch", "-p", &pid];
    for c in commands {
        args.extend(["-ex", c]);
    }
    let run = limited(&args).run();
    assert!(run.success(), "gdb did not finish in time or failed: {run}");
    run
}

fn lldb_attach(pid: u32, commands: &[&str]) -> Run {
    let pid = pid.to_string();
    let mut args = vec!["lldb", "--no-lldbinit", "-b", "-p", &pid];
    for c in commands {
        args.extend(["-o", c]);
    }
    let run = limited(&args).run();
    assert!(run.success(), "lldb did not finish in time or failed: {run}");
    run
}

/// The process `pid` is killed when this is dropped (a program launched by a debugger is not
/// the test's child).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: a signal to a process this test started.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// Where a debugger stopped: the frame's object, function, line, the argument `n` and the local
/// `doubled` after one step.
#[derive(Debug)]
struct Stop {
    object: String,
    n: u64,
    doubled: u64,
    /// The debugger's whole transcript, for failure messages.
    transcript: String,
}

/// `<name> = <number>` in a debugger's output (gdb: `n = 5`; lldb: `(unsigned long) n = 5`).
fn value_of(output: &str, name: &str) -> Option<u64> {
    let needle = format!(" {name} = ");
    output.lines().find_map(|l| {
        let l = format!(" {}", l.trim_start().trim_start_matches("(unsigned long)").trim_start());
        l.split_once(&needle)?.1.split_whitespace().next()?.parse().ok()
    })
}

/// gdb attaches to `app` (`gdb -p PID` alone: it reads the executable `/proc/PID/exe` names),
/// breaks on `debuggee::work` by name, continues to it, checks the frame (function,
/// `src/main.rs:10`), steps one line in that thread and reads the local, detaches.
#[track_caller]
fn gdb_stop_in_work(app: &Running) -> Stop {
    let gdb = gdb_attach(
        app.pid,
        &[
            "break debuggee::work",
            "continue",
            "bt 1",
            "info symbol $pc",
            "info args",
            "delete",
            "set scheduler-locking step",
            "next",
            "info locals",
            "detach",
        ],
    );
    let out = &gdb.stdout;
    assert!(
        out.contains("debuggee::work (n=") && out.contains("src/main.rs:10"),
        "gdb did not stop in `work` at src/main.rs:10: {gdb}"
    );
    let object = out
        .lines()
        .find(|l| l.starts_with("debuggee::work") && l.contains(" of "))
        .and_then(|l| l.rsplit(" of ").next())
        .unwrap_or("the executable")
        .to_string();
    Stop {
        object,
        n: value_of(out, "n").unwrap_or_else(|| panic!("no `n` in {gdb}")),
        doubled: value_of(out, "doubled").unwrap_or_else(|| panic!("no local `doubled` in {gdb}")),
        transcript: gdb.to_string(),
    }
}

/// The same with lldb.
#[track_caller]
fn lldb_stop_in_work(app: &Running) -> Stop {
    let lldb = lldb_attach(
        app.pid,
        &[
            "breakpoint set -n debuggee::work",
            "continue",
            "frame variable n",
            // No other stop meanwhile; and not `-m this-thread`: lldb 14 then detaches leaving the
            // process stopped.
            "breakpoint delete -f",
            "thread step-over",
            "frame variable doubled",
            "bt 1",
            "process detach",
        ],
    );
    let out = &lldb.stdout;
    let frame = out
        .lines()
        .find(|l| l.contains("frame #0") && l.contains("debuggee::work"))
        .unwrap_or_else(|| panic!("lldb did not stop in `work`: {lldb}"));
    assert!(frame.contains("main.rs:1"), "lldb's frame has no source line: {lldb}");
    Stop {
        object: frame.split('`').next().unwrap_or("").rsplit(' ').next().unwrap_or("").to_string(),
        n: value_of(out, "n").unwrap_or_else(|| panic!("no `n` in {lldb}")),
        doubled: value_of(out, "doubled").unwrap_or_else(|| panic!("no local `doubled` in {lldb}")),
        transcript: lldb.to_string(),
    }
}

/// gdb and lldb attach to a program patched once, then 20 times, by its pid alone: the patch is
/// listed under its file, a breakpoint on `debuggee::work` by name stops in the newest patch with its line, the
/// argument and a local print, and after detaching the program goes on and takes the next patch.
#[test]
fn gdb_and_lldb_break_in_the_newest_patch_of_a_program_patched_once_and_twenty_times() {
    let project = project();
    // One thread: when two threads stop at the breakpoint together and it is deleted, lldb 14
    // turns the other's hit into a SIGTRAP stop and detaching leaves the program stopped.
    let app = project.start(PROGRAM, &[("DEBUGGEE_ONE_THREAD", "1")]);
    app.wait_for(0, "a first line", |l| l.starts_with("work "));
    let exe = format!("/proc/{}/exe", app.pid);
    patch(&project, &app, 1, 1000);

    let gdb = gdb_attach(app.pid, &["info sharedlibrary", "detach"]);
    assert!(gdb.stdout.contains("/patch-1.so"), "gdb does not list the patch by its file: {gdb}");
    let lldb = lldb_attach(app.pid, &["image list", "process detach"]);
    assert!(lldb.stdout.contains("/patch-1.so"), "lldb does not list the patch by its file: {lldb}");

    let mut add = 1000;
    for generation in [1, 20] {
        while app_generation(&project, &app) < generation {
            let next = add + 1;
            patch(&project, &app, add, next);
            add = next;
        }
        let newest = format!("/patch-{generation}.so");
        let stop = gdb_stop_in_work(&app);
        assert!(stop.object.ends_with(&newest), "gdb stopped in {stop:?}, not in {newest}");
        assert_eq!(stop.doubled, 2 * stop.n, "{stop:?}");
        goes_on(&app, &stop);
        wait_for_add(&app, app.mark(), add);

        let stop = lldb_stop_in_work(&app);
        assert!(stop.object.ends_with(&newest[1..]), "lldb stopped in {stop:?}, not in {newest}");
        assert_eq!(stop.doubled, 2 * stop.n, "{stop:?}");
        goes_on(&app, &stop);
        wait_for_add(&app, app.mark(), add);
    }
    lldb_steps_into_the_newest_version(&project, &app, 20);
    wait_for_add(&app, app.mark(), add);
    // A patch installs while gdb is attached and running the program (the parked install).
    let pid = app.pid.to_string();
    let exe = exe.as_str();
    let gdb =
        limited(&["gdb", "-nx", "-q", "-batch", "-p", &pid, exe, "-ex", STOP_ON_USR1, "-ex", "continue"])
            .into_command()
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot start gdb");
    running_under_a_debugger(&app);
    let line = patch(&project, &app, add, 3);
    assert!(line.starts_with(&format!("Patched {PROGRAM} (pid {})", app.pid)), "{line}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop_gdb_continue(&app);
    let out = gdb.wait_with_output().unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(transcript.contains("detached"), "gdb did not detach: {transcript}");
    goes_on(&app, &Stop { object: String::new(), n: 0, doubled: 0, transcript });
    let mark = app.mark();
    wait_for_add(&app, mark, 3);
}

/// Makes a gdb that runs `continue` stop the program at SIGUSR1 without passing it on, so the
/// batch goes on to its end and detaches. (Interrupting gdb with SIGINT instead sometimes ended
/// the program with that SIGINT after the detach.)
const STOP_ON_USR1: &str = "handle SIGUSR1 stop print nopass";

/// Ends a gdb sitting in `continue` with [`STOP_ON_USR1`].
fn stop_gdb_continue(app: &Running) {
    // SAFETY: a signal to the program this test started; gdb intercepts it.
    unsafe { libc::kill(app.pid as i32, libc::SIGUSR1) };
}

/// Waits until a debugger traces `app` and has let it run again.
fn running_under_a_debugger(app: &Running) {
    let status = format!("/proc/{}/status", app.pid);
    let deadline = std::time::Instant::now() + support::live::PATIENCE;
    while std::fs::read_to_string(&status).unwrap().contains("TracerPid:\t0") {
        assert!(std::time::Instant::now() < deadline, "the debugger never attached");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // gdb holds the program while it reads the symbols, then continues it: two lines printed
    // one after the other since the attach show it running again.
    for _ in 0..2 {
        app.wait_for(app.mark(), "a line with the debugger attached", |l| l.starts_with("work "));
    }
}

/// A debugger's software breakpoint on the entry of a function the patch must redirect (a
/// conditional one, so the program keeps running) refuses the patch, naming the function — never
/// saved as the entry's bytes nor overwritten; the program keeps its code and, once the debugger
/// is gone, takes the next patch.
#[test]
fn a_debugger_breakpoint_on_the_entry_of_a_patched_function_refuses_the_patch_by_name() {
    let project = project();
    let app = project.start(PROGRAM, &[]);
    patch(&project, &app, 1, 2);
    let pid = app.pid.to_string();
    let exe = format!("/proc/{}/exe", app.pid);
    let gdb = limited(&[
        "gdb",
        "-nx",
        "-q",
        "-batch",
        "-p",
        &pid,
        &exe,
        "-ex",
        "break *debuggee::work if n == 0",
        "-ex",
        STOP_ON_USR1,
        "-ex",
        "continue",
    ])
    .into_command()
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("cannot start gdb");
    running_under_a_debugger(&app);
    let mut add = 2;
    let mut refused = None;
    // The condition stops the program for a moment at every call: a build that finds it so
    // says `stopped` and is tried again with the next edit.
    for next in 100..110 {
        project.edit(MAIN, &format!("doubled + {add};"), &format!("doubled + {next};"));
        add = next;
        let line = status_for(&project.build(), app.pid);
        if line.contains("a debugger has a breakpoint") {
            refused = Some(line);
            break;
        }
        assert!(line.starts_with(&format!("Skipped {PROGRAM} ")) && line.contains("stopped"), "{line}");
    }
    let line = refused.expect("no build met the breakpoint while the program ran");
    assert!(line.starts_with(&format!("Skipped {PROGRAM} ")) && line.contains("`debuggee::work`"), "{line}");
    wait_for_add(&app, app.mark(), 2);

    stop_gdb_continue(&app);
    let out = gdb.wait_with_output().unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(transcript.contains("detached"), "gdb did not detach: {transcript}");
    goes_on(&app, &Stop { object: String::new(), n: 0, doubled: 0, transcript });
    wait_for_add(&app, app.mark(), 2);
    patch(&project, &app, add, 7);
}

/// After a debugger detached, the program runs (is not left stopped).
#[track_caller]
fn goes_on(app: &Running, stop: &Stop) {
    std::thread::sleep(std::time::Duration::from_millis(200));
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", app.pid)).unwrap_or_default();
    let state = stat.rsplit(") ").next().and_then(|r| r.chars().next()).unwrap_or('?');
    assert!(!matches!(state, 'T' | 't'), "the debugger left the program stopped: {}", stop.transcript);
    // A zombie: it ended (the last field of `stat` is its exit status).
    assert!(!matches!(state, 'Z' | 'X' | '?'), "the program ended ({stat}): {}", stop.transcript);
}

/// How many patches the process has applied (from the patch files ipbp-ld wrote for it).
fn app_generation(project: &Project, app: &Running) -> u64 {
    let patches = project.target(support::live::CONFIG).join("ipbp/patches");
    std::fs::read_dir(patches)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with(&format!("{}-", app.pid)))
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "json"))
        .count() as u64
}

/// A program started by gdb, and one started by lldb, take two patches while the debugger runs
/// it, without stopping (the install parks threads with a signal neither debugger stops at).
#[test]
fn a_program_launched_under_gdb_or_lldb_takes_two_patches() {
    for debugger in ["gdb", "lldb"] {
        let project = project();
        let program = project.program(PROGRAM).display().to_string();
        let cmd = match debugger {
            "gdb" => limited(&["gdb", "-nx", "-q", "-batch", "-ex", "run", "--args", &program]),
            _ => limited(&["lldb", "--no-lldbinit", "-b", "-o", "run", "--", &program]),
        };
        let app = Running::start_under(cmd, &project.home);
        let _kill = KillOnDrop(app.pid);
        let first = patch(&project, &app, 1, 1000);
        patch(&project, &app, 1000, 7);
        assert!(!first.contains("did not answer"), "{debugger}: {first}");
    }
}

/// gdb holds the program stopped at a breakpoint in `work`, the function being patched: the
/// build says so at once and the program keeps its code; once gdb detaches, the next build
/// patches it.
#[test]
fn a_program_stopped_at_a_breakpoint_in_the_patched_function_is_reported_then_patched() {
    let project = project();
    let app = project.start(PROGRAM, &[]);
    let stopped = project.root().join("gdb-stopped");
    let go_on = project.root().join("gdb-go-on");
    let pid = app.pid.to_string();
    let wait =
        format!("shell touch {}; while [ ! -e {} ]; do sleep 0.05; done", stopped.display(), go_on.display());
    let gdb = limited(&[
        "gdb",
        "-nx",
        "-q",
        "-batch",
        "-p",
        &pid,
        "-ex",
        "break debuggee::work",
        "-ex",
        "continue",
        "-ex",
        "bt 1",
        "-ex",
        &wait,
        "-ex",
        "detach",
    ])
    .into_command()
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("cannot start gdb");
    let deadline = std::time::Instant::now() + support::live::PATIENCE;
    while !stopped.exists() {
        assert!(std::time::Instant::now() < deadline, "gdb never stopped the program in `work`");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    project.edit(MAIN, "doubled + 1;", "doubled + 1000;");
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with(&format!("Skipped {PROGRAM} ")) && line.contains("stopped"), "{line}");

    std::fs::write(&go_on, "").unwrap();
    let out = gdb.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "gdb: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("debuggee::work"), "gdb did not stop in `work`: {stdout}");
    let mark = app.mark();
    wait_for_add(&app, mark, 1);
    patch(&project, &app, 1000, 7);
}

/// `step` from `debuggee::run` (unpatched) into `work` (patched `generation` times) with ipbp's
/// gdb command file stops in the newest version's body, at its first line, whose local then
/// holds the new value; the program goes on. (Without the file gdb 13 aims at the old body's
/// prologue end, past the jump at its entry, and runs on: ARCHITECTURE.md, *Debuggers*.)
#[track_caller]
fn gdb_steps_into_the_newest_version(project: &Project, app: &Running, generation: u64) {
    // The command `ipbp-ld status` gives for attaching.
    let status = project.ipbp_ld(&["status", &app.pid.to_string()]);
    let script = (status.stdout.split_once(" -x ").and_then(|(_, rest)| rest.split_whitespace().next()))
        .unwrap_or_else(|| panic!("`ipbp-ld status` names no gdb script: {status}"))
        .to_string();
    assert!(script.ends_with("ipbp/debug/ipbp.gdb"), "{status}");
    let call =
        project.read(MAIN).lines().position(|l| l.contains("= work(n);")).expect("the call of `work`") + 1;
    let pid = app.pid.to_string();
    // The user's own `hook-step`, defined before ipbp's file is loaded, keeps running, its
    // Python block (which `show user` prints unindented) included.
    let hook = project.root().join("user-hook.gdb");
    let user = "define hook-step\n  echo user-hook-step\\n\n  python\nif True:\n    print(\"user-hook-python\")\n  end\nend\n";
    std::fs::write(&hook, user).unwrap();
    let run = limited(&[
        "gdb",
        "-nx",
        "-q",
        "-batch",
        "-p",
        &pid,
        "-x",
        hook.to_str().unwrap(),
        "-x",
        &script,
        "-ex",
        &format!("break src/main.rs:{call}"),
        "-ex",
        "continue",
        "-ex",
        "delete",
        "-ex",
        "set scheduler-locking step",
        "-ex",
        "step",
        "-ex",
        "info symbol $pc",
        "-ex",
        "info args",
        "-ex",
        "next",
        "-ex",
        "info locals",
        "-ex",
        "detach",
    ])
    .run();
    assert!(run.success(), "gdb did not finish in time or failed: {run}");
    let out = &run.stdout;
    let stepped =
        out.lines().position(|l| l.starts_with("debuggee::work (n=") && l.ends_with("src/main.rs:10"));
    assert!(stepped.is_some(), "`step` did not stop in `work` at src/main.rs:10: {run}");
    assert!(
        out.lines().any(|l| l == "user-hook-step") && out.lines().any(|l| l == "user-hook-python"),
        "the user's `hook-step` was replaced or garbled: {run}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("debuggee::work") && l.ends_with(&format!("/patch-{generation}.so"))),
        "`step` did not stop in the newest patch: {run}"
    );
    let (n, doubled) = (value_of(out, "n").unwrap_or(0), value_of(out, "doubled"));
    assert!(n > 0 && doubled == Some(2 * n), "the new body's local does not print: {run}");
    goes_on(app, &Stop { object: String::new(), n, doubled: 2 * n, transcript: run.to_string() });
}

/// The same with lldb and ipbp's Python module (one thread: see `lldb_stop_in_work`).
#[track_caller]
fn lldb_steps_into_the_newest_version(project: &Project, app: &Running, generation: u64) {
    let script = project.target(support::live::CONFIG).join("ipbp/debug/ipbp_lldb.py");
    let call =
        project.read(MAIN).lines().position(|l| l.contains("= work(n);")).expect("the call of `work`") + 1;
    let pid = app.pid.to_string();
    let commands = [
        format!("command script import {}", script.display()),
        format!("breakpoint set -f main.rs -l {call}"),
        "continue".into(),
        "breakpoint delete -f".into(),
        "step".into(),
        "frame variable n".into(),
        "thread step-over".into(),
        "frame variable doubled".into(),
        "process detach".into(),
    ];
    let mut args = vec!["lldb", "--no-lldbinit", "-b", "-p", &pid];
    for c in &commands {
        args.extend(["-o", c.as_str()]);
    }
    let mut cmd = limited(&args);
    if let Some(python) = lldb_python_path() {
        cmd = cmd.env("PYTHONPATH", python);
    }
    let run = cmd.run();
    assert!(run.success(), "lldb did not finish in time or failed: {run}");
    let out = &run.stdout;
    let newest = format!("patch-{generation}.so`debuggee::work");
    assert!(
        out.lines().any(|l| l.contains("frame #0") && l.contains(&newest) && l.contains("main.rs:10")),
        "`step` did not stop in `work` of {newest} at main.rs:10: {run}"
    );
    let (n, doubled) = (value_of(out, "n").unwrap_or(0), value_of(out, "doubled"));
    assert!(n > 0 && doubled == Some(2 * n), "the new body's local does not print: {run}");
    goes_on(app, &Stop { object: String::new(), n, doubled: 2 * n, transcript: run.to_string() });
}

/// Where lldb 14's Python modules are: Debian 12's `python3-lldb-14` links
/// `/usr/lib/python3/dist-packages/lldb` to a directory that lacks them, and lldb's Python then
/// fails (`No module named 'lldb.embedded_interpreter'`).
fn lldb_python_path() -> Option<std::path::PathBuf> {
    let llvm = std::fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"));
    llvm.flat_map(|l| std::fs::read_dir(l.path().join("lib")).into_iter().flatten().flatten())
        .map(|p| p.path().join("dist-packages"))
        .find(|d| d.join("lldb/embedded_interpreter.py").is_file())
}

/// The build id of the ELF file at `path`.
fn build_id(path: &std::path::Path) -> String {
    support::elf_build_id(path)
}

/// The executable a process started from stays findable by build id after cargo replaced it, for
/// as long as the process runs (collection keeps three builds per output, plus running ones):
/// the entry the process started from was moved there before the first link, so
/// `/proc/PID/exe` names it and `gdb -p PID` / `lldb -p PID` alone read the running build. A
/// link that fails loses nothing (`target/debug/<bin>` is still the started build), cargo still
/// puts each new build at `target/debug/<bin>`. Once the process is gone, collection drops it.
#[test]
fn the_build_a_process_started_from_is_kept_by_build_id_while_it_runs() {
    let project = project();
    let mut app = project.start(PROGRAM, &[]);
    let proc_exe = std::path::PathBuf::from(format!("/proc/{}/exe", app.pid));
    let started = build_id(&proc_exe);
    let kept = project
        .target(support::live::CONFIG)
        .join("ipbp/debug/.build-id")
        .join(&started[..2])
        .join(format!("{}.debug", &started[2..]));
    let program = project.program(PROGRAM);
    assert_eq!(
        std::fs::read_link(&proc_exe).unwrap(),
        program.canonicalize().unwrap(),
        "the test starts the program from cargo's path"
    );

    // A build whose link fails: the started build stays at cargo's path, and is kept.
    let good = project.read(MAIN);
    project.write(
        MAIN,
        &good.replacen(
            "fn run(",
            "#[link(name = \"ipbp_test_missing_library\")]\nextern \"C\" {}\n\nfn run(",
            1,
        ),
    );
    assert!(!project.cargo(support::Linker::Shim, support::live::CONFIG, &["build"]).run().success());
    assert_eq!(build_id(&program), started, "a failed link changed {}", program.display());
    assert_eq!(std::fs::read_link(&proc_exe).unwrap(), kept);
    project.write(MAIN, &good);

    let mut add = 1;
    for next in [1000, 7, 3, 5] {
        patch(&project, &app, add, next);
        add = next;
    }
    assert!(kept.is_file(), "the started build is not kept at {}", kept.display());
    assert_eq!(build_id(&kept), started);
    assert_eq!(std::fs::read_link(&proc_exe).unwrap(), kept, "/proc/PID/exe does not name the kept build");
    assert_ne!(build_id(&program), started, "cargo did not put the new build at {}", program.display());
    let gdb = gdb_attach(app.pid, &["thread apply all bt", "detach"]);
    assert!(
        gdb.stdout.contains("debuggee::run") && !gdb.stderr.contains("Error reading attached process"),
        "`gdb -p PID` did not read the program's frames from the kept build: {gdb}"
    );
    gdb_steps_into_the_newest_version(&project, &app, 4);
    let lldb = lldb_attach(app.pid, &["image list", "bt all", "process detach"]);
    let executable = lldb.stdout.lines().find(|l| l.trim_start().starts_with("[  0]")).unwrap_or_default();
    assert!(executable.contains(&kept.display().to_string()), "lldb did not read the kept build: {lldb}");
    assert!(lldb.stdout.contains("debuggee::run"), "lldb did not name the program's frames: {lldb}");

    app.kill();
    project.edit(MAIN, &format!("doubled + {add};"), "doubled + 9;");
    project.build();
    let deadline = std::time::Instant::now() + support::live::PATIENCE;
    while kept.exists() {
        assert!(std::time::Instant::now() < deadline, "{} was kept after its process ended", kept.display());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
