//! `web`: a small HTTP service on tokio + axum, the realistic test app of ipbp.
//!
//! It binds to `$PORT` (default 0: an ephemeral port) on `$HOST` (default 127.0.0.1), prints one
//! line `listening on <addr>` to stdout once it accepts connections, and serves until it is killed
//! (SIGINT/SIGTERM end it gracefully). Logs go to stderr (`RUST_LOG`, default `info`).
//!
//! Routes (handlers in [`handlers`], all `#[ipbp::hot]`):
//!
//! | route              | answer                                                        |
//! | ------------------ | ------------------------------------------------------------- |
//! | `GET /hello`       | a greeting (`?name=` to greet someone else)                   |
//! | `GET /count`       | increments a process-wide counter and returns its new value  |
//! | `POST /echo`       | echoes a JSON message back with some facts about it           |
//! | `GET /stats`       | uptime, request counts and greetings per name, as JSON       |
//! | `GET /health`      | `ok`                                                          |

mod handlers;

use anyhow::Context as _;
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::cors::CorsLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(version, about = "A small HTTP service (ipbp test app)")]
struct Config {
    /// Address to bind to.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to bind to; 0 picks a free one.
    #[arg(long, env = "PORT", default_value_t = 0)]
    port: u16,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "BODY_LIMIT", default_value_t = 64 * 1024)]
    body_limit: usize,
    /// Seconds a request may take before it is answered with 408.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value_t = 10)]
    request_timeout: u64,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "LOG_JSON")]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    ipbp::init();
    let config = Config::parse();
    init_logging(config.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(serve(config))
}

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The application: routes, shared state and the middleware stack.
fn app(config: &Config) -> Router {
    let state = Arc::new(handlers::AppState::new());
    let middleware = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(config.request_timeout),
        ))
        .layer(CompressionLayer::new())
        .layer(CorsLayer::permissive())
        .layer(axum::extract::DefaultBodyLimit::max(config.body_limit));
    Router::new()
        .route("/hello", get(handlers::hello))
        .route("/count", get(handlers::count))
        .route("/echo", post(handlers::echo))
        .route("/stats", get(handlers::stats))
        .route("/health", get(handlers::health))
        .fallback(handlers::not_found)
        .with_state(state)
        .layer(middleware)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = SocketAddr::new(config.host, config.port);
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot bind to {addr}"))?;
    let local = listener.local_addr().context("cannot read the bound address")?;
    let app = app(&config);
    // Tests and benchmarks wait for exactly this line (stdout is line-buffered).
    println!("listening on {local}");
    tracing::info!(%local, pid = std::process::id(), "serving");
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.context("server error")?;
    tracing::info!("shut down");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
