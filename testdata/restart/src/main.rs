//! The restart app of ipbp's restart tests (`linker-shim/tests/restart`) and of
//! `scripts/demo.sh`: no hot point, only `ipbp::init()`; a counter kept across restarts by an
//! `on_restart` hook, a `dyn Speaker` built at startup (its method is patched in place), a static
//! whose type the tests change (a layout change no patch can make), and, with
//! `RESTART_LISTEN=<addr>[,<addr>…]`, a TCP service on `ipbp::listener` per address; with
//! `RESTART_BIND=<addr>`, the same service on a socket it binds itself (`TcpListener::bind`);
//! with `RESTART_SAFE_POINT_FILE`, safe points, reached at the top of the loop while that file
//! exists; with `RESTART_HOLES=<n>`, n descriptors opened first and closed once it serves (low
//! numbers free again); with `RESTART_EXIT_IF=<file>`, it exits at once (status 3) when it starts
//! while that file exists.
//!
//! Lines: `started pid=<pid> ppid=<ppid> restarts=<n> count=<c>`, then
//! `tick count=<c> version=<v> restarts=<n> word=<w>` every `RESTART_PERIOD_MS` (default 50) ms; with a
//! listener, `listening port=<port>` (`bound port=<port>` for `RESTART_BIND`) and, per connection, one reply line
//! `count=<c> version=<v> restarts=<n>`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lives in a static: the tests add a field (its old value cannot meet new code).
#[allow(dead_code)] // written, never read
struct Stats {
    ticks: u64,
}

static STATS: Mutex<Stats> = Mutex::new(Stats { ticks: 0 });

/// Kept across restarts by the `count` hook.
static COUNT: AtomicU64 = AtomicU64::new(0);

/// Set by the `serve` hook (when): the service finishes its connection and stops accepting
/// (connections wait in the socket's queue for the new build); it resumes if no restart follows.
static GATE: Mutex<Option<Instant>> = Mutex::new(None);

trait Speaker: Send {
    fn word(&self) -> String;
}

struct Plain;

impl Speaker for Plain {
    fn word(&self) -> String {
        "hello".to_string()
    }
}

fn version() -> &'static str {
    "one"
}

fn serve(listener: TcpListener) {
    listener.set_nonblocking(true).expect("nonblocking listener");
    loop {
        let mut gate = GATE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = *gate {
            // Draining for a restart; after 2 s none came (it failed): serve again.
            if since.elapsed() < Duration::from_secs(2) {
                drop(gate);
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            *gate = None;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                // The gate is held while a connection is served: the hook waits for it.
                let _ = stream.set_nonblocking(false);
                answer(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                drop(gate);
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => {
                eprintln!("accept: {e}");
                drop(gate);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn answer(stream: std::net::TcpStream) {
    let mut line = String::new();
    let mut reader = BufReader::new(&stream);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let reply = format!(
        "count={} version={} restarts={}\n",
        COUNT.load(Ordering::Relaxed),
        version(),
        ipbp::restarts()
    );
    let _ = (&stream).write_all(reply.as_bytes());
}

fn main() {
    if std::env::var_os("RESTART_EXIT_IF").is_some_and(|f| std::path::Path::new(&f).exists()) {
        eprintln!("exiting at start: RESTART_EXIT_IF exists");
        std::process::exit(3);
    }
    let holes: Vec<std::fs::File> =
        (0..std::env::var("RESTART_HOLES").ok().and_then(|n| n.parse().ok()).unwrap_or(0))
            .map(|_| std::fs::File::open("/dev/null").expect("open /dev/null"))
            .collect();
    // With `RESTART_SAFE_POINT_FILE=<path>`: safe points, reached only while that file exists.
    let gate = std::env::var_os("RESTART_SAFE_POINT_FILE").map(std::path::PathBuf::from);
    if gate.is_some() {
        ipbp::init_with_safe_points();
    } else {
        ipbp::init();
    }
    if let Some(bytes) = ipbp::restored("count") {
        let bytes: [u8; 8] = bytes.try_into().expect("8 bytes of count");
        COUNT.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
    }
    ipbp::on_restart("count", || COUNT.load(Ordering::Relaxed).to_le_bytes().to_vec());
    let period = std::env::var("RESTART_PERIOD_MS").ok().and_then(|p| p.parse().ok()).unwrap_or(50);
    let mut listeners = Vec::new();
    if let Ok(addrs) = std::env::var("RESTART_LISTEN") {
        for addr in addrs.split(',') {
            let listener = ipbp::listener(addr).expect("listen");
            println!("listening port={}", listener.local_addr().expect("bound").port());
            listeners.push(listener);
        }
    }
    if let Ok(addr) = std::env::var("RESTART_BIND") {
        // The most common shape: no ipbp code, the program binds its port itself.
        let listener = TcpListener::bind(addr.as_str()).expect("bind");
        println!("bound port={}", listener.local_addr().expect("bound").port());
        listeners.push(listener);
    }
    if !listeners.is_empty() {
        ipbp::on_restart("serve", || {
            *GATE.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            Vec::new()
        });
    }
    for listener in listeners {
        std::thread::spawn(move || serve(listener));
    }
    drop(holes);
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc_getppid() };
    println!(
        "started pid={} ppid={ppid} restarts={} count={}",
        std::process::id(),
        ipbp::restarts(),
        COUNT.load(Ordering::Relaxed),
    );
    let speaker: Box<dyn Speaker> = Box::new(Plain);
    loop {
        let n = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
        STATS.lock().unwrap_or_else(|p| p.into_inner()).ticks += 1;
        println!("tick count={n} version={} restarts={} word={}", version(), ipbp::restarts(), speaker.word());
        if gate.as_ref().is_some_and(|g| g.exists()) {
            ipbp::safe_point();
        }
        std::thread::sleep(Duration::from_millis(period));
    }
}

extern "C" {
    #[link_name = "getppid"]
    fn libc_getppid() -> i32;
}
