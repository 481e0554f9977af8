//! Hot restart: `testdata/restart` built through ipbp-ld, started, and restarted into new builds
//! while it runs — by an edit no patch can make (a static's layout, `main`'s loop), or by
//! `ipbp-ld restart PID`. The app keeps a counter across restarts with an `on_restart` hook and,
//! with `RESTART_LISTEN`, serves TCP on `ipbp::listener`.

#[path = "../support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::live::{scenario, status_for, Running};
use support::Project;

const MAIN: &str = "src/main.rs";
const ON: (&str, &str) = ("IPBP_RESTART", "on");

/// The `key=value` fields of a line starting with `prefix`.
fn field(line: &str, key: &str) -> String {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .to_string()
}

fn number(line: &str, key: &str) -> u64 {
    field(line, key).parse().unwrap_or_else(|_| panic!("{key} is not a number in {line:?}"))
}

/// How many descriptors each app held once settled after its first start, by pid.
static FIRST_FDS: std::sync::Mutex<Vec<(u32, usize)>> = std::sync::Mutex::new(Vec::new());

/// A fresh copy of the app, built and running with `env`, its first tick seen.
fn running(env: &[(&str, &str)]) -> (Project, Running) {
    let project = scenario("restart");
    project.build();
    let app = project.start("restart", env);
    first_tick(&app);
    (project, app)
}

/// Waits for the app's first tick and counts the descriptors it holds then.
fn first_tick(app: &Running) {
    app.wait_for(0, "a first tick", |l| l.starts_with("tick "));
    let fds = settled_fds(app.pid);
    FIRST_FDS.lock().unwrap_or_else(|p| p.into_inner()).push((app.pid, fds));
}

/// The descriptors process `pid` holds for good: the fewest seen over 300 ms. A single count
/// also sees ones that come and go — ipbp's thread reading the executable's symbols once it
/// starts, a connection being served — and would call them leaked (CI saw `fds=8` against 7).
fn settled_fds(pid: u32) -> usize {
    (0..30)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(10));
            std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(usize::MAX, |d| d.count())
        })
        .min()
        .expect("samples")
}

/// Adds a field to the type of the static `STATS`: its live value cannot meet the new code.
fn edit_layout(project: &Project) {
    project.edit(
        MAIN,
        "struct Stats {\n    ticks: u64,\n}",
        "struct Stats {\n    ticks: u64,\n    extra: u64,\n}",
    );
    project.edit(MAIN, "Stats { ticks: 0 }", "Stats { ticks: 0, extra: 0 }");
    project.edit(MAIN, "\"one\"", "\"two\"");
}

/// Waits for the restarted build's `started` line after `mark` and checks the process is the same
/// one, child of the same parent, with its counter kept; returns that line.
#[track_caller]
fn restarted(app: &mut Running, mark: usize, restarts: u64, count_before: u64) -> String {
    let started = app.wait_for(mark, "the restarted build's first line", |l| l.starts_with("started "));
    assert_eq!(number(&started, "pid"), app.pid as u64, "{started}");
    assert_eq!(number(&started, "ppid"), std::process::id() as u64, "the parent changed: {started}");
    assert_eq!(number(&started, "restarts"), restarts, "{started}");
    assert!(
        number(&started, "count") >= count_before,
        "the counter was not kept: {started} (was {count_before})"
    );
    // At most as many descriptors as at its first start (stdio, the listener, ipbp's own): none
    // leaked. (Fewer when it inherited some from its parent: those are not passed on.)
    let first = FIRST_FDS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(pid, _)| *pid == app.pid)
        .map(|f| f.1);
    let now = settled_fds(app.pid);
    assert!(
        now <= first.expect("counted at its first start"),
        "descriptors leaked: {now} after {first:?}: {started}"
    );
    assert!(app.alive(), "{}", app.dump());
    started
}

fn last_count(app: &Running) -> u64 {
    let lines = app.lines_since(0);
    let tick = lines.iter().rev().find(|l| l.starts_with("tick ")).expect("a tick");
    number(tick, "count")
}

#[test]
fn a_layout_edit_of_a_static_restarts_the_program_in_place_with_its_counter() {
    let (project, mut app) = running(&[ON]);
    edit_layout(&project);
    let before = last_count(&app);
    let mark = app.mark();
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(
        line.starts_with(&format!("Restarted restart (pid {}) into the new build: ", app.pid))
            && line.contains("Stats"),
        "expected a restart naming the static's type: {run}"
    );
    assert!(line.contains("kept 1 state (8 bytes)"), "{line}");
    restarted(&mut app, mark, 1, before);
    let tick =
        app.wait_for(mark, "a tick of the new build", |l| l.starts_with("tick ") && l.contains("restarts=1"));
    assert_eq!(field(&tick, "version"), "two", "the new code does not run: {tick}");

    // The restarted build is registered: a later edit patches it as usual.
    project.edit(MAIN, "\"two\"", "\"three\"");
    let mark = app.mark();
    project.build_and_expect_patched(&app, "restart");
    app.wait_for(mark, "a tick of the patched build", |l| {
        l.starts_with("tick ") && l.contains("version=three")
    });
}

#[test]
fn an_edit_of_mains_loop_restarts_the_program() {
    let (project, mut app) = running(&[ON]);
    project.edit(
        MAIN,
        "println!(\"tick count={n} version={} restarts={} word={}\"",
        "println!(\"tick count={n} version={} restarts={} word={} main=2\"",
    );
    let before = last_count(&app);
    let mark = app.mark();
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Restarted restart "), "expected a restart: {run}");
    restarted(&mut app, mark, 1, before);
    app.wait_for(mark, "a tick of the new main", |l| l.starts_with("tick ") && l.ends_with("main=2"));
}

#[test]
fn ipbp_restart_never_keeps_the_program_running_its_code() {
    let (project, mut app) = running(&[("IPBP_RESTART", "never")]);
    edit_layout(&project);
    let mark = app.mark();
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(
        line.starts_with("Skipped restart ")
            && line.contains("Stats")
            && line.ends_with("it keeps running its current code"),
        "expected today's refusal: {run}"
    );
    let tick = app.wait_for(mark, "a tick after the build", |l| l.starts_with("tick "));
    assert_eq!(field(&tick, "version"), "one");
    assert!(!app.lines_since(mark).iter().any(|l| l.starts_with("started ")), "it restarted: {}", app.dump());
    assert!(app.alive());
}

#[test]
fn a_program_with_safe_points_restarts_at_its_next_safe_point() {
    let project = scenario("restart");
    project.build();
    let gate = project.dir.join("safe-point-open");
    let mut app = project.start("restart", &[ON, ("RESTART_SAFE_POINT_FILE", gate.to_str().expect("utf-8"))]);
    first_tick(&app);
    let before = last_count(&app);
    let mark = app.mark();
    let pid = app.pid.to_string();
    let restart = {
        let home = project.home.clone();
        std::thread::spawn(move || support::ipbp_ld(&home, &["restart", &pid]))
    };
    // No safe point is reached while the gate is closed: the program runs on, not restarted.
    std::thread::sleep(Duration::from_millis(800));
    assert!(!app.lines_since(mark).iter().any(|l| l.starts_with("started ")), "{}", app.dump());
    app.wait_for(mark, "ticks while waiting", |l| l.starts_with("tick ") && l.contains("restarts=0"));
    std::fs::write(&gate, "").expect("open the gate");
    let run = restart.join().expect("ipbp-ld restart");
    assert!(run.success() && run.stderr.contains("for its safe point"), "{run}");
    restarted(&mut app, mark, 1, before);
}

#[test]
fn a_build_whose_link_fails_restarts_nothing_and_the_link_fails_as_it_would() {
    let (project, mut app) = running(&[ON]);
    edit_layout(&project);
    // Compiles, but no object defines the symbol: the real linker fails.
    project.edit(
        MAIN,
        "fn main() {",
        "extern \"C\" {\n    fn ipbp_test_undefined_symbol();\n}\n\nfn main() {\n    // SAFETY: never linked.\n    unsafe { ipbp_test_undefined_symbol() };",
    );
    let mark = app.mark();
    let run = project.cargo(support::Linker::Shim, support::live::CONFIG, &["build"]).run();
    assert!(!run.success() && run.stderr.contains("ipbp_test_undefined_symbol"), "{run}");
    let line = status_for(&run, app.pid);
    assert!(
        line.starts_with("Skipped restart ") && line.ends_with("it keeps running its current code"),
        "{run}"
    );
    let tick = app.wait_for(mark, "a tick after the failed build", |l| l.starts_with("tick "));
    assert_eq!((field(&tick, "version").as_str(), number(&tick, "restarts")), ("one", 0), "{tick}");
    assert!(!app.lines_since(mark).iter().any(|l| l.starts_with("started ")) && app.alive());
}

/// Lets the load of [`load`] run 100 ms more, stops it, and asserts that every request succeeded
/// (and that there were enough to mean something).
fn stop_load(stop: &AtomicBool, client: std::thread::JoinHandle<(usize, Vec<String>)>) {
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = client.join().expect("the client");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 10, "too few requests were made: {ok}");
}

/// A client that connects, asks and reads the whole answer in a loop (a few hundred a second)
/// until told to stop; returns (answers, failures with their errors). `http`: `GET /` over HTTP/1.1
/// (a new connection each), else the restart app's one-line protocol.
fn load(port: u16, stop: Arc<AtomicBool>, http: bool) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut ok, mut failed) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            let result = (|| -> std::io::Result<String> {
                let mut s = TcpStream::connect(("127.0.0.1", port))?;
                s.set_read_timeout(Some(Duration::from_secs(20)))?;
                let request: &[u8] =
                    if http { b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" } else { b"get\n" };
                s.write_all(request)?;
                let mut answer = String::new();
                std::io::Read::read_to_string(&mut s, &mut answer)?;
                match answer.split_once("\r\n\r\n") {
                    Some((head, body)) if http && head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
                    _ if http => Ok(format!("bad answer {answer:?}")),
                    _ => Ok(answer),
                }
            })();
            match result {
                Ok(l) if l.starts_with("count=") => ok += 1,
                Ok(l) => failed.push(format!("answer {l:?}")),
                Err(e) => failed.push(e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(3));
        }
        (ok, failed)
    })
}

/// Sends `text` to the program's ipbp socket and returns its whole answer.
fn request(project: &Project, pid: u32, text: &str) -> String {
    let mut s =
        std::os::unix::net::UnixStream::connect(project.home.join(format!("{pid}.sock"))).expect("connect");
    s.write_all(text.as_bytes()).expect("send");
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).expect("answer");
    answer
}

fn ask(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"get\n").expect("send");
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).expect("answer");
    line
}

#[test]
fn a_server_keeps_its_port_through_ten_restarts_under_load() {
    let (project, mut app) = running(&[ON, ("RESTART_LISTEN", "127.0.0.1:0")]);
    let port = number(&app.wait_for(0, "its port", |l| l.starts_with("listening ")), "port") as u16;
    let stop = Arc::new(AtomicBool::new(false));
    let client = load(port, Arc::clone(&stop), false);
    for i in 1..=10u64 {
        let before = last_count(&app);
        let mark = app.mark();
        let run = project.ipbp_ld(&["restart", &app.pid.to_string()]);
        assert!(
            run.success() && run.stderr.contains("kept 1 listening socket, 2 states"),
            "restart {i}: {run}"
        );
        let started = restarted(&mut app, mark, i, before);
        assert_eq!(
            number(&app.wait_for(mark, "its port", |l| l.starts_with("listening ")), "port"),
            port as u64
        );
        let _ = started;
    }
    stop_load(&stop, client);
    assert!(ask(port).contains("restarts=10"));
}

/// The most common server binds its port itself (`TcpListener::bind`): that socket is not passed
/// (the new build binds the same port again, which a socket still listening there would refuse);
/// those of `ipbp::listener` are, even when the executable's descriptor lands among their
/// targets (descriptors closed after start leave low numbers free). Then a restart into the same
/// build whose new image exits before `ipbp::init()` is reported as such, not as running.
#[test]
fn a_server_that_binds_its_own_port_restarts_and_binds_it_again() {
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("port").port();
    let own = format!("127.0.0.1:{port}");
    let project = scenario("restart");
    project.build();
    let exit_if = project.dir.join("exit-at-start");
    let env = [
        ON,
        ("RESTART_LISTEN", "127.0.0.1:0,127.0.0.1:0,127.0.0.1:0,127.0.0.1:0"),
        ("RESTART_BIND", own.as_str()),
        // fd 3.. free again once it serves: the executable's descriptor lands among the
        // sockets' targets (3..7), after the connection and whatever else is open meanwhile.
        ("RESTART_HOLES", "4"),
        ("RESTART_EXIT_IF", exit_if.to_str().expect("utf-8")),
    ];
    let mut app = project.start("restart", &env);
    first_tick(&app);
    assert!(ask(port).contains("restarts=0"));
    let before = last_count(&app);
    let mark = app.mark();
    let run = project.ipbp_ld(&["restart", &app.pid.to_string()]);
    assert!(run.success() && run.stderr.contains("kept 4 listening sockets, 2 states"), "{run}");
    restarted(&mut app, mark, 1, before);
    let bound = app.wait_for(mark, "its own port bound again", |l| l.starts_with("bound "));
    assert_eq!(number(&bound, "port"), port as u64, "{bound}");
    assert!(ask(port).contains("restarts=1"), "the service on its own port does not answer");
    let passed: Vec<u64> = app
        .lines_since(mark)
        .iter()
        .filter(|l| l.starts_with("listening "))
        .map(|l| number(l, "port"))
        .collect();
    let first: Vec<u64> = app
        .lines_since(0)
        .iter()
        .filter(|l| l.starts_with("listening "))
        .take(4)
        .map(|l| number(l, "port"))
        .collect();
    assert_eq!(passed, first, "the ipbp::listener ports changed");
    for p in passed {
        assert!(ask(p as u16).contains("restarts=1"));
    }

    // The new image exits before it registers: said so (exit 1), never "running again".
    std::fs::write(&exit_if, "").expect("create the file");
    let run = project.ipbp_ld(&["restart", &app.pid.to_string()]);
    assert!(
        !run.success()
            && run.stderr.contains("exited before it called ipbp::init()")
            && !run.stderr.contains("running again"),
        "{run}"
    );
}

/// The case: an axum server that takes its socket from `listenfd` (no ipbp code but
/// `init` and an `on_restart` hook that drains its requests with axum's graceful shutdown).
#[test]
fn an_axum_server_using_listenfd_keeps_its_port_through_ten_restarts_under_load() {
    let project = scenario("listenweb");
    project.build();
    let app = project.start("listenweb", &[ON]);
    let port = number(&app.wait_for(0, "its port", |l| l.starts_with("listening ")), "port") as u16;
    let stop = Arc::new(AtomicBool::new(false));
    let client = load(port, Arc::clone(&stop), true);
    for i in 1..=10u64 {
        let mark = app.mark();
        let run = project.ipbp_ld(&["restart", &app.pid.to_string()]);
        assert!(
            run.success() && run.stderr.contains("kept 1 listening socket, 2 states"),
            "restart {i}: {run}"
        );
        let again = app.wait_for(mark, "the restarted build's port", |l| l.starts_with("listening "));
        assert_eq!((number(&again, "port"), number(&again, "restarts")), (port as u64, i), "{again}");
    }
    stop_load(&stop, client);
}

#[test]
fn a_new_build_that_cannot_start_is_reported_and_the_program_goes_on() {
    let (project, mut app) = running(&[ON, ("RESTART_LISTEN", "127.0.0.1:0")]);
    let port = number(&app.wait_for(0, "its port", |l| l.starts_with("listening ")), "port") as u16;
    // The executable ipbp-ld linked (cargo's `debug/restart` is a hard link to it).
    let deps = project.target(support::live::CONFIG).join("debug/deps");
    let exe = std::fs::read_dir(&deps)
        .expect("deps")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("restart-"))
                && p.extension().is_none()
        })
        .expect("the linked executable");
    let pid = app.pid.to_string();

    // Not executable: execve fails after the hooks ran and the descriptors moved; all is put back.
    let mode = |m: u32| {
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(m)).expect("chmod")
    };
    mode(0o644);
    let mark = app.mark();
    let run = project.ipbp_ld(&["restart", &pid]);
    assert!(
        !run.success()
            && run.stderr.contains("could not restart")
            && run.stderr.contains("Permission denied"),
        "{run}"
    );
    app.wait_for(mark, "a tick after the failed restart", |l| {
        l.starts_with("tick ") && l.contains("restarts=0")
    });
    assert!(ask(port).contains("restarts=0"), "the service stopped");
    assert!(app.alive());

    // Replaced by another program (not a build ipbp-ld recorded): refused before anything runs.
    mode(0o755);
    let saved = exe.with_extension("saved");
    std::fs::rename(&exe, &saved).expect("rename");
    std::fs::copy("/bin/true", &exe).expect("copy");
    let run = project.ipbp_ld(&["restart", &pid]);
    assert!(!run.success() && run.stderr.contains("was not recorded by ipbp-ld"), "{run}");
    std::fs::rename(&saved, &exe).expect("rename back");

    // Requests that name another file than the build's, or a build never recorded: refused.
    let build_id = support::elf_build_id(&exe);
    let other = format!("ipbp-patch 1\nop restart\nbuild-id {build_id}\nfile /bin/true\nend\n");
    let reply = request(&project, app.pid, &other);
    assert!(reply.starts_with("error ") && reply.contains("was recorded for"), "{reply}");
    let unknown =
        format!("ipbp-patch 1\nop restart\nbuild-id {}\nfile {}\nend\n", "ab".repeat(20), exe.display());
    let reply = request(&project, app.pid, &unknown);
    assert!(reply.starts_with("error ") && reply.contains("was not recorded by ipbp-ld"), "{reply}");
    let relative = format!("ipbp-patch 1\nop restart\nbuild-id {build_id}\nfile restart\nend\n");
    assert!(request(&project, app.pid, &relative).starts_with("error "));
    assert!(app.alive() && ask(port).contains("restarts=0"));

    // Put right, it restarts.
    let before = last_count(&app);
    let mark = app.mark();
    project.ipbp_ld(&["restart", &pid]).assert_success();
    restarted(&mut app, mark, 1, before);
    assert!(ask(port).contains("restarts=1"));
}

#[test]
fn a_program_run_by_cargo_run_stays_attached_to_it() {
    let project = scenario("restart");
    project.build();
    let mut command = project
        .cargo(support::Linker::Shim, support::live::CONFIG, &["run", "-q"])
        .env("IPBP_RESTART", "on")
        .into_command();
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    let mut cargo = command.spawn().expect("cargo run");
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = BufReader::new(cargo.stdout.take().expect("piped"));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        reader.lines().map_while(Result::ok).for_each(|l| sink.lock().unwrap().push(l))
    });
    let wait_for = |what: &dyn Fn(&str) -> bool| -> String {
        let deadline = std::time::Instant::now() + support::live::PATIENCE;
        loop {
            if let Some(l) = lines.lock().unwrap().iter().find(|l| what(l)) {
                return l.clone();
            }
            assert!(std::time::Instant::now() < deadline, "never printed: {:?}", lines.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let first = wait_for(&|l| l.starts_with("started "));
    let pid = number(&first, "pid") as u32;
    // `cargo run` execs the program on Unix (rustup's proxy execs cargo): the process this test
    // started is the program, and this test its parent. A restart must keep both.
    assert_eq!(pid, cargo.id(), "{first}");
    let parent = number(&first, "ppid");
    assert_eq!(parent, std::process::id() as u64, "{first}");
    let registered = project.home.join(format!("{pid}.process"));
    while !registered.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }

    edit_layout(&project);
    let run = project.build();
    assert!(status_for(&run, pid).starts_with("Restarted restart "), "{run}");
    let again = wait_for(&|l| l.starts_with("started ") && l.contains("restarts=1"));
    assert_eq!(number(&again, "pid"), pid as u64, "{again}");
    assert_eq!(number(&again, "ppid"), parent, "cargo run lost its child: {again}");
    wait_for(&|l| l.contains("version=two"));
    assert!(matches!(cargo.try_wait(), Ok(None)), "cargo run ended");

    // The process `cargo run` started is still the program: when it ends, its parent sees it.
    // SAFETY: kill a process this test started (through cargo).
    unsafe { libc_kill(pid as i32, 15) };
    let status = cargo.wait().expect("cargo run ends");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(15), "{status}");
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
