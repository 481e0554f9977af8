//! The async app of ipbp's end-to-end tests: a tokio program without hot points whose futures
//! are in flight while it is patched.
//!
//! - `ticker` is one future that runs forever (never re-created): it prints
//!   `ticker n=<n> msg=<..>` and awaits a sleep; its state machine is in flight at every patch.
//! - `request` is a fresh future per request, spawned as a task every tick: it prints
//!   `request n=<n> reply=<..>`.
//! - `hot_request` is the same through `#[ipbp::hot]` (its futures are boxed behind a slot).

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

fn main() {
    ipbp::init();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
    rt.block_on(async {
        println!("started pid={}", std::process::id());
        tokio::spawn(ticker());
        loop {
            let n = REQUESTS.fetch_add(1, Ordering::SeqCst);
            let reply = tokio::spawn(request(n)).await.unwrap();
            let hot = tokio::spawn(hot_request(n)).await.unwrap();
            println!("request n={n} reply={reply} hot={hot}");
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
}
