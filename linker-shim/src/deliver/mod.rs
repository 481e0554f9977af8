//! Stage 6 — deliver: talking to a running program (its socket), and choosing where in its
//! address space a patch will live.

pub mod address;

use crate::error::{Context, Result};
use ipbp::protocol::{Applied, Apply, Hello, Reply, Request, MAX_MESSAGE};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long a program may take to answer. Applying a patch takes milliseconds; a program that
/// does not answer in this time is reported, and the build goes on.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

fn exchange(socket: &Path, request: &Request, hello: bool) -> Result<Reply> {
    let mut stream =
        UnixStream::connect(socket).with_context(|| format!("cannot connect to {}", socket.display()))?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).context("socket timeout")?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT)).context("socket timeout")?;
    stream.write_all(request.encode().as_bytes()).context("cannot send to the program")?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                crate::bail!("the program did not answer within {} s", REPLY_TIMEOUT.as_secs())
            }
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
    Reply::parse(&text, hello).map_err(|e| crate::err!("cannot understand the program's answer: {e}"))
}

/// Asks a program for its state.
pub fn hello(socket: &Path) -> Result<Hello> {
    match exchange(socket, &Request::Hello, true)? {
        Reply::Hello(h) => Ok(h),
        Reply::Error(e) => crate::bail!("{e}"),
        Reply::Applied { .. } => crate::bail!("unexpected answer to hello"),
    }
}

/// Sends a patch; returns the new generation and the program's load and install times.
pub fn apply(socket: &Path, apply: Apply) -> Result<Applied> {
    match exchange(socket, &Request::Apply(apply), false)? {
        Reply::Applied(applied) => Ok(applied),
        Reply::Error(e) => crate::bail!("{e}"),
        Reply::Hello(_) => crate::bail!("unexpected answer to apply"),
    }
}
