//! The program's side of the patch channel: a thread that accepts connections on
//! `<registry>/<pid>.sock`, one request per connection, and never lets a failure escape into the
//! program.
//!
//! No client can hold the channel hostage: each connection is served on a thread of its own (at
//! most [`MAX_CLIENTS`] at once; more are told to come back), and has [`DEADLINE`] in total to send
//! its request — a client that sends a byte now and then is cut off when its time is up, not when
//! it pauses. Requests that change the program are still applied one at a time (the state's mutex).

use crate::apply::State;
use crate::protocol::{Reply, Request, MAX_MESSAGE};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connections served at the same time.
pub const MAX_CLIENTS: usize = 8;

/// Time a client has to send its whole request, and the program to write its reply. ipbp-ld
/// sends a request (a few KiB) in one write.
pub const DEADLINE: Duration = Duration::from_secs(3);

pub fn spawn(listener: UnixListener, state: State) -> std::io::Result<()> {
    crate::restart::fds::set_control(std::os::fd::AsRawFd::as_raw_fd(&listener));
    let state = Arc::new(Mutex::new(state));
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new().name("ipbp".into()).spawn(move || {
        // Read the executable's symbols now, off the program's threads, not in the first patch.
        crate::symbols::warm();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if active.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                active.fetch_sub(1, Ordering::AcqRel);
                refuse_busy(stream);
                continue;
            }
            let (state, done) = (Arc::clone(&state), Arc::clone(&active));
            let spawned = std::thread::Builder::new().name("ipbp-client".into()).spawn(move || {
                // A panic here (a bug of ours) must not take the program down.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(stream, &state)));
                done.fetch_sub(1, Ordering::AcqRel);
            });
            if spawned.is_err() {
                active.fetch_sub(1, Ordering::AcqRel);
            }
        }
    })?;
    Ok(())
}

fn refuse_busy(stream: UnixStream) {
    let _ = stream.set_nonblocking(true);
    let reply = Reply::Error(format!("busy: {MAX_CLIENTS} other connections are being served; try again"));
    let _ = (&stream).write_all(reply.encode().as_bytes());
}

fn serve(mut stream: UnixStream, state: &Mutex<State>) {
    let connected = Instant::now();
    let deadline = connected + DEADLINE;
    let reply = if !same_user(&stream) {
        Reply::Error("only the user running this program may patch it".into())
    } else {
        match read_message(&mut stream, deadline) {
            Err(e) => Reply::Error(e),
            Ok(text) => match Request::parse(&text) {
                Err(e) => Reply::Error(e),
                Ok(request) => {
                    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                    match request {
                        Request::Hello => Reply::Hello(state.hello()),
                        Request::Apply(apply) => state.apply(apply),
                        // Holding the state: no patch is installed while it restarts.
                        Request::Restart(restart) => crate::restart::serve(restart, &mut stream, connected),
                    }
                }
            },
        }
    };
    let _ = stream.set_write_timeout(Some(DEADLINE));
    let _ = stream.write_all(reply.encode().as_bytes());
}

/// Reads up to a line `end` (or the end of the stream), within `deadline` in total.
fn read_message(stream: &mut UnixStream, deadline: Instant) -> Result<String, String> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("the request was not complete within {} s", DEADLINE.as_secs()));
        }
        let _ = stream.set_read_timeout(Some(left));
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                continue; // the deadline check above ends it
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading the request: {e}")),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.ends_with(b"\nend\n") {
            break;
        }
        if buf.len() > MAX_MESSAGE {
            return Err("request too large".into());
        }
    }
    String::from_utf8(buf).map_err(|_| "request is not UTF-8".into())
}

fn same_user(stream: &UnixStream) -> bool {
    // SAFETY: getuid has no preconditions.
    crate::registry::peer(stream).is_some_and(|(_, uid)| uid == unsafe { libc::getuid() })
}
