//! Hardening: nobody but the user gets in, no request corrupts the running program, and no process
//! silently stops being patched. Real programs throughout: `testdata/counter` built through
//! ipbp-ld, running while hostile registries, requests and files are thrown at it.
//!
//! - `registry`: registry directories of another user, planted records, symlinked locks and sockets.
//! - `requests`: every hostile request kind, slow and surplus clients, and a seeded generator of
//!   mutated requests.
//! - `inputs`: captured link inputs of the counter, mutated (bytes of headers, section tables,
//!   symbols, relocations, debug info; truncated, dropped, duplicated, garbage): each link through
//!   ipbp-ld ends as the plain link does.
//! - `processes`: a tampered patch file, a forked child that exits, a stopped process, two target
//!   directories of one program.

#[path = "../support/mod.rs"]
mod support;

mod inputs;
mod processes;
mod registry;
mod requests;

use object::{Object, ObjectSection, ObjectSymbol};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use support::live::{scenario, status_for, Running};
use support::Project;

const MAIN: &str = "src/main.rs";
const THREADS: [u32; 3] = [1, 2, 3];

/// A fresh copy of the counter app, built and running (a tick every 40 ms per thread), with each
/// thread's first tick seen.
fn running_counter(env: &[(&str, &str)]) -> (Project, Running) {
    let project = scenario("counter");
    project.build();
    let mut env = env.to_vec();
    env.push(("COUNTER_PERIOD_MS", "40"));
    let app = project.start("counter", &env);
    app.wait_for_ticks(0, &THREADS, "a first tick", |_| true);
    (project, app)
}

/// Builds after an edit; the build must report `Patched` for the process.
#[track_caller]
fn build_and_expect_patched(project: &Project, app: &Running) {
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Patched counter"), "expected the process to be patched: {run}");
}

/// Sends raw bytes to the program's socket as one request and returns its whole answer.
fn ask(project: &Project, pid: u32, request: &[u8]) -> String {
    let socket = project.home.join(format!("{pid}.sock"));
    let mut stream =
        UnixStream::connect(&socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The program may answer (and close) before reading all of a request it refuses.
    let _ = stream.write_all(request);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8(answer).expect("answers are text")
}

/// The program's `hello` answer, parsed.
fn hello(project: &Project, pid: u32) -> ipbp::protocol::Hello {
    let text = ask(project, pid, ipbp::protocol::Request::Hello.encode().as_bytes());
    match ipbp::protocol::Reply::parse(&text, true) {
        Ok(ipbp::protocol::Reply::Hello(h)) => h,
        other => panic!("hello answered {other:?}: {text}"),
    }
}

/// After `mark` every thread ticks again with the original message and a `global` counter above
/// `global_before`, and the program printed nothing but ticks (no panic, no message of ipbp's).
#[track_caller]
fn assert_unharmed(app: &Running, mark: usize, msg: &str, global_before: u64) {
    let mark2 = app.mark();
    let ticks = app.wait_for_ticks(mark2, &THREADS, "a tick after the requests", |_| true);
    for t in &ticks {
        assert_eq!(t.get("msg"), msg, "the program's output changed: {}", app.dump());
        assert!(t.global > global_before, "the static counter was disturbed: {}", app.dump());
    }
    let others: Vec<String> = app.lines_since(mark).into_iter().filter(|l| !l.starts_with("tick ")).collect();
    assert!(others.is_empty(), "the program printed something else: {others:?}");
}

/// Addresses (link-time, before the load bias) of the counter's symbols and sections.
struct Addresses {
    data: Vec<u8>,
}

impl Addresses {
    fn of(program: &std::path::Path) -> Addresses {
        Addresses { data: std::fs::read(program).unwrap() }
    }

    /// The first symbol whose name contains `part`.
    fn symbol(&self, part: &str) -> u64 {
        let file = object::File::parse(&*self.data).unwrap();
        file.symbols()
            .find(|s| s.name().is_ok_and(|n| n.contains(part)))
            .unwrap_or_else(|| panic!("no symbol containing {part}"))
            .address()
    }

    fn section(&self, name: &str) -> u64 {
        let file = object::File::parse(&*self.data).unwrap();
        file.section_by_name(name).unwrap_or_else(|| panic!("no section {name}")).address()
    }
}

/// A small xorshift generator: the same seed gives the same requests.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}
