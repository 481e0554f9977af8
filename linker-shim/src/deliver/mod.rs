//! Stage 6 — deliver: talking to a running program (its socket), and choosing where in its
//! address space a patch will live.
//!
//! The socket is reached through the checked registry ([`Registry::connect`]: `<pid>.sock`, a
//! socket of this user served by that very process), never by a path read from a file. Every
//! exchange has a deadline in total, so a program that trickles its answer cannot stall a build.

pub mod address;
pub mod chain;

use crate::error::{Context, Result};
use ipbp::protocol::{Applied, Apply, Hello, Reply, Request, Restart, RestartReply, MAX_MESSAGE};
use ipbp::registry::Registry;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// How long a program may take to say who it is. Answering takes microseconds; a program that
/// does not answer in this time is reported, and the build goes on.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a program may take to apply a patch (checks, `dlopen`, install: milliseconds).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a program may take to restart: its `on_restart` hooks and its safe point have 5 s
/// each; `execve` then closes the connection.
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(12);

fn exchange(
    registry: &Registry,
    pid: u32,
    request: &Request,
    hello: bool,
    timeout: Duration,
) -> Result<Reply> {
    let text = exchange_text(registry, pid, request, timeout)?;
    Reply::parse(&text, hello).map_err(|e| crate::err!("cannot understand the program's answer: {e}"))
}

/// Sends `request` and reads the whole answer, until the program closes the connection.
fn exchange_text(registry: &Registry, pid: u32, request: &Request, timeout: Duration) -> Result<String> {
    match exchange_until(registry, pid, request, timeout)? {
        (text, false) => Ok(text),
        (_, true) => crate::bail!("the program did not answer within {} s", timeout.as_secs()),
    }
}

/// Sends `request` and reads until the program closes the connection or `timeout` passed: the
/// text read, and whether the time ran out.
fn exchange_until(
    registry: &Registry,
    pid: u32,
    request: &Request,
    timeout: Duration,
) -> Result<(String, bool)> {
    let deadline = Instant::now() + timeout;
    let mut stream = registry.connect(pid).context("cannot reach the program")?;
    stream.set_write_timeout(Some(timeout)).context("socket timeout")?;
    stream.write_all(request.encode().as_bytes()).context("cannot send to the program")?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        stream.set_read_timeout(Some(left)).context("socket timeout")?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                continue
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("cannot read the program's answer"),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_MESSAGE {
            crate::bail!("the program's answer is too large");
        }
    }
    let text = String::from_utf8(buf).map_err(|_| crate::err!("the program's answer is not text"))?;
    Ok((text, timed_out))
}

/// Asks program `pid` to re-execute itself into `restart.file`. The answer ends when its
/// `execve` closes the connection (or with the reason it is still running its current code).
pub fn restart(registry: &Registry, pid: u32, restart: Restart) -> Result<RestartReply> {
    let (text, timed_out) = exchange_until(registry, pid, &Request::Restart(restart), RESTART_TIMEOUT)?;
    if timed_out && !text.starts_with("restarting\n") {
        crate::bail!("the program did not answer within {} s", RESTART_TIMEOUT.as_secs());
    }
    // `restarting` then no end within the time: it was executing (the registration, awaited
    // next, confirms it or says it did not come up) — never reported as a program that kept
    // its code.
    RestartReply::parse(&text).map_err(|e| crate::err!("cannot understand the program's answer: {e}"))
}

/// Asks program `pid` for its state.
pub fn hello(registry: &Registry, pid: u32) -> Result<Hello> {
    match exchange(registry, pid, &Request::Hello, true, HELLO_TIMEOUT)? {
        Reply::Hello(h) => Ok(h),
        Reply::Error(e) => crate::bail!("{e}"),
        Reply::Applied { .. } => crate::bail!("unexpected answer to hello"),
    }
}

/// Sends a patch; returns the new generation and the program's load and install times.
pub fn apply(registry: &Registry, pid: u32, apply: Apply) -> Result<Applied> {
    match exchange(registry, pid, &Request::Apply(apply), false, REPLY_TIMEOUT)? {
        Reply::Applied(applied) => Ok(applied),
        Reply::Error(e) => crate::bail!("{e}"),
        Reply::Hello(_) => crate::bail!("unexpected answer to apply"),
    }
}
