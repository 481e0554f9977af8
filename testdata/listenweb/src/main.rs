//! An axum service that keeps its port across restarts the way Rust servers do under `systemfd`:
//! it takes its listening socket from `listenfd` (the systemd protocol), and binds only when none
//! was passed. ipbp's restart passes it, so nothing here knows about ipbp but `init` and the
//! drain hook. `GET /` answers `count=<c> version=<v> restarts=<n>`.
//!
//! The `drain` hook makes the server stop accepting and waits until every connection it accepted
//! is answered and closed (at most 3 s) before the restart; connections that arrive meanwhile wait
//! in the socket's queue for the new build. If no restart follows within 2 s, it serves again.
//! (axum's own graceful shutdown is not enough here: it closes a connection it accepted but whose
//! request has not arrived yet as idle, and that client sees a reset.)

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Lives in a static: the tests add a field (a layout change: restart).
#[allow(dead_code)] // written, never read
struct Stats {
    served: u64,
}

static STATS: Mutex<Stats> = Mutex::new(Stats { served: 0 });
static COUNT: AtomicU64 = AtomicU64::new(0);

fn version() -> &'static str {
    "one"
}

async fn root() -> String {
    let n = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
    STATS.lock().unwrap_or_else(|p| p.into_inner()).served += 1;
    format!("count={n} version={} restarts={}\n", version(), ipbp::restarts())
}

#[tokio::main]
async fn main() {
    ipbp::init();
    if let Some(b) = ipbp::restored("count") {
        COUNT.store(u64::from_le_bytes(b.try_into().expect("8 bytes")), Ordering::Relaxed);
    }
    let listener = match listenfd::ListenFd::from_env().take_tcp_listener(0).expect("LISTEN_FDS") {
        Some(l) => l,
        None => std::net::TcpListener::bind(std::env::var("LISTENWEB_ADDR").unwrap_or("127.0.0.1:0".into()))
            .expect("bind"),
    };
    listener.set_nonblocking(true).expect("nonblocking");
    println!("listening port={} restarts={}", listener.local_addr().expect("bound").port(), ipbp::restarts());

    // The hook asks the server to drain and waits until it has (or 4 s).
    let drain = Arc::new(tokio::sync::Notify::new());
    let (drained_tx, drained_rx) = mpsc::channel::<()>();
    let drained_rx = Mutex::new(drained_rx);
    ipbp::on_restart("count", || COUNT.load(Ordering::Relaxed).to_le_bytes().to_vec());
    let asked = Arc::clone(&drain);
    ipbp::on_restart("drain", move || {
        asked.notify_one();
        let _ = drained_rx.lock().unwrap_or_else(|p| p.into_inner()).recv_timeout(Duration::from_secs(4));
        Vec::new()
    });
    let app = axum::Router::new().route("/", axum::routing::get(root));
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                open.fetch_add(1, Ordering::SeqCst);
                let (open, service) = (Arc::clone(&open), TowerToHyperService::new(app.clone()));
                tokio::spawn(async move {
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
            _ = drain.notified() => {
                let since = std::time::Instant::now();
                while open.load(Ordering::SeqCst) > 0 && since.elapsed() < Duration::from_secs(3) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let _ = drained_tx.send(());
                // Drained for a restart; if none comes (it failed), serve again.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}
