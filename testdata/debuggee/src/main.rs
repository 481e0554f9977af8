//! The app of ipbp's debugger tests: `work(n)` is called every 20 ms by the main thread and by a
//! worker thread (unless `DEBUGGEE_ONE_THREAD` is set), and prints what it computed, so a test can patch `work` and stop in it with
//! gdb or lldb.

use std::io::Write;
use std::time::Duration;

#[inline(never)]
fn work(n: u64) -> u64 {
    let doubled = n * 2;
    let result = doubled + 1;
    std::hint::black_box(result)
}

fn run(thread: &str) {
    let mut n = 0u64;
    loop {
        n += 1;
        let value = work(n);
        let line = format!("work thread={thread} n={n} value={value}\n");
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    ipbp::init();
    println!("started pid={}", std::process::id());
    // `DEBUGGEE_ONE_THREAD=1`: no worker (lldb 14 leaves a program stopped after detaching when
    // two threads met a breakpoint together).
    if std::env::var_os("DEBUGGEE_ONE_THREAD").is_none() {
        std::thread::Builder::new().name("worker".into()).spawn(|| run("worker")).expect("spawn");
    }
    run("main");
}
