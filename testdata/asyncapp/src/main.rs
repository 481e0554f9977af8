//! The async app of ipbp's end-to-end tests: a tokio program without hot points whose futures
//! are in flight while it is patched.
//!
//! - `ticker` is one future that runs forever (never re-created): it prints
//!   `ticker n=<n> msg=<..>` and awaits a sleep; its state machine is in flight at every patch.
//! - `request` is a fresh future per request, spawned as a task every tick: it prints
//!   `request n=<n> reply=<..>`.
//! - `hot_request` is the same through `#[ipbp::hot]` (its futures are boxed behind a slot).
//! - With `ASYNCAPP_GATE=<file>`: `hot_job` (hot) and `plain_job` (not hot) are futures parked
//!   until that file exists. One of each is spawned with each of the first eight requests (ids
//!   0-7), then one `hot_job` (id 100 + n) with every request; each prints
//!   `job <kind> id=<id> parked v=<..> on=<thread>` when it starts and
//!   `job <kind> id=<id> done v=<..> on=<thread>` when it finishes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static REQUESTS: AtomicU64 = AtomicU64::new(0);

async fn ticker() {
    let mut n = 0u64;
    loop {
        n += 1;
        let msg = "steady";
        println!("ticker n={n} msg={msg}");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

async fn request(n: u64) -> String {
    tokio::time::sleep(Duration::from_millis(5)).await;
    format!("answer{}", n % 3)
}

#[ipbp::hot]
async fn hot_request(n: u64) -> String {
    tokio::time::sleep(Duration::from_millis(5)).await;
    format!("hot{}", n % 3)
}

/// Whether the file named by `ASYNCAPP_GATE` exists: parked jobs go on once the test creates it.
fn gate_open() -> bool {
    std::env::var_os("ASYNCAPP_GATE").is_some_and(|f| std::path::Path::new(&f).exists())
}

fn thread_tag() -> String {
    format!("{:?}", std::thread::current().id())
}

#[ipbp::hot]
async fn hot_job(id: u64) -> String {
    println!("job hot id={id} parked v=old on={}", thread_tag());
    while !gate_open() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    "v=old".to_string()
}

async fn plain_job(id: u64) -> String {
    println!("job plain id={id} parked v=old on={}", thread_tag());
    while !gate_open() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    "v=old".to_string()
}

fn spawn_job(hot: bool, id: u64) {
    tokio::spawn(async move {
        let (kind, v) = if hot { ("hot", hot_job(id).await) } else { ("plain", plain_job(id).await) };
        println!("job {kind} id={id} done {v} on={}", thread_tag());
    });
}

fn main() {
    ipbp::init();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_time().build().unwrap();
    rt.block_on(async {
        println!("started pid={}", std::process::id());
        tokio::spawn(ticker());
        let jobs = std::env::var_os("ASYNCAPP_GATE").is_some();
        loop {
            let n = REQUESTS.fetch_add(1, Ordering::SeqCst);
            let reply = tokio::spawn(request(n)).await.unwrap();
            let hot = tokio::spawn(hot_request(n)).await.unwrap();
            println!("request n={n} reply={reply} hot={hot}");
            if jobs && n < 8 {
                spawn_job(true, n);
                spawn_job(false, n);
            } else if jobs {
                spawn_job(true, 100 + n);
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
}
