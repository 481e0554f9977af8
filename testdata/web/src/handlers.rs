//! The request handlers: plain `async fn`s routed by axum, each marked `#[ipbp::hot]` so a rebuilt
//! version can be patched into the running server.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// How often `/count` was called, process-wide.
pub static COUNT: AtomicU64 = AtomicU64::new(0);

/// How many requests any handler answered.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Longest message `/echo` accepts, in characters.
const MAX_ECHO_CHARS: usize = 4096;

/// State shared by all handlers.
pub struct AppState {
    started: Instant,
    started_at: time::OffsetDateTime,
    /// Greetings handed out, per name.
    greeted: DashMap<String, u64>,
}

impl AppState {
    pub fn new() -> Self {
        AppState {
            started: Instant::now(),
            started_at: time::OffsetDateTime::now_utc(),
            greeted: DashMap::new(),
        }
    }
}

/// The greeting `/hello` answers with.
pub fn greeting(name: &str) -> String {
    format!("Hello, {name}!")
}

/// Names longer than this, or with characters other than these, are greeted as "stranger".
fn clean_name(name: Option<&str>) -> &str {
    match name.map(str::trim) {
        None | Some("") => "world",
        Some(n) if n.len() <= 64 && n.chars().all(|c| c.is_alphanumeric() || " -_.'".contains(c)) => n,
        Some(_) => "stranger",
    }
}

#[derive(Debug, Deserialize)]
pub struct HelloParams {
    name: Option<String>,
}

#[ipbp::hot]
pub async fn hello(State(state): State<Arc<AppState>>, Query(params): Query<HelloParams>) -> String {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    let name = clean_name(params.name.as_deref());
    *state.greeted.entry(name.to_string()).or_insert(0) += 1;
    let mut text = greeting(name);
    text.push('\n');
    text
}

#[ipbp::hot]
pub async fn count() -> String {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    let n = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
    format!("{n}\n")
}

#[derive(Debug, Deserialize)]
pub struct EchoRequest {
    pub message: String,
    /// Repeat the message this many times (1 when absent, at most 16).
    #[serde(default)]
    pub repeat: Option<u32>,
    /// Upper-case the echoed message.
    #[serde(default)]
    pub shout: bool,
}

#[derive(Debug, Serialize)]
pub struct EchoResponse {
    pub message: String,
    pub chars: usize,
    pub words: usize,
    /// Base64 of the SHA-256 of the echoed message.
    pub sha256: String,
    pub id: uuid::Uuid,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("message is longer than {MAX_ECHO_CHARS} characters")]
    TooLong,
    #[error("repeat must be between 1 and 16")]
    BadRepeat,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        (StatusCode::UNPROCESSABLE_ENTITY, body).into_response()
    }
}

/// What `/echo` sends back for a request.
pub fn echo_reply(req: &EchoRequest) -> Result<EchoResponse, ApiError> {
    let repeat = req.repeat.unwrap_or(1);
    if !(1..=16).contains(&repeat) {
        return Err(ApiError::BadRepeat);
    }
    if req.message.chars().count() > MAX_ECHO_CHARS {
        return Err(ApiError::TooLong);
    }
    let one = if req.shout { req.message.to_uppercase() } else { req.message.clone() };
    let message = vec![one; repeat as usize].join(" ");
    let digest = Sha256::digest(message.as_bytes());
    Ok(EchoResponse {
        chars: message.chars().count(),
        words: message.split_whitespace().count(),
        sha256: base64::engine::general_purpose::STANDARD.encode(digest),
        id: uuid::Uuid::new_v4(),
        message,
    })
}

#[ipbp::hot]
pub async fn echo(headers: HeaderMap, Json(req): Json<EchoRequest>) -> Result<Response, ApiError> {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    let reply = echo_reply(&req)?;
    tracing::debug!(chars = reply.chars, agent = ?headers.get(header::USER_AGENT), "echo");
    let etag = HeaderValue::from_str(&format!("\"{}\"", reply.sha256)).ok();
    let mut response = Json(reply).into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

#[derive(Debug, Serialize)]
pub struct Stats {
    pub started_at: String,
    pub uptime_secs: f64,
    pub requests: u64,
    pub count: u64,
    pub greeted: std::collections::BTreeMap<String, u64>,
}

#[ipbp::hot]
pub async fn stats(State(state): State<Arc<AppState>>) -> Json<Stats> {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    let started_at = state
        .started_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".to_string());
    Json(Stats {
        started_at,
        uptime_secs: state.started.elapsed().as_secs_f64(),
        requests: REQUESTS.load(Ordering::Relaxed),
        count: COUNT.load(Ordering::Relaxed),
        greeted: state.greeted.iter().map(|e| (e.key().clone(), *e.value())).collect(),
    })
}

#[ipbp::hot]
pub async fn health() -> &'static str {
    "ok\n"
}

pub async fn not_found(uri: Uri) -> (StatusCode, String) {
    (StatusCode::NOT_FOUND, format!("no route for {}\n", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_by_cleaned_name() {
        assert_eq!(greeting(clean_name(None)), "Hello, world!");
        assert_eq!(greeting(clean_name(Some("  Ada "))), "Hello, Ada!");
        assert_eq!(greeting(clean_name(Some("<script>"))), "Hello, stranger!");
    }

    #[test]
    fn echo_repeats_and_checks_limits() {
        let req = EchoRequest { message: "hi there".into(), repeat: Some(2), shout: true };
        let reply = echo_reply(&req).unwrap();
        assert_eq!(reply.message, "HI THERE HI THERE");
        assert_eq!(reply.words, 4);
        let bad = EchoRequest { message: "x".into(), repeat: Some(0), shout: false };
        assert!(matches!(echo_reply(&bad), Err(ApiError::BadRepeat)));
    }
}
