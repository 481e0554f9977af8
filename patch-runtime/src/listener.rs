//! The program's side of the patch channel: a thread that accepts one request per connection on
//! `<registry>/<pid>.sock`, answers it, and never lets a failure escape into the program.

use crate::apply::State;
use crate::protocol::{Reply, Request, MAX_MESSAGE};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Mutex;
use std::time::Duration;

pub fn spawn(listener: UnixListener, state: State) -> std::io::Result<()> {
    let state = Mutex::new(state);
    std::thread::Builder::new().name("ipbp".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            // A panic here (a bug of ours) must not take the program down.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(stream, &state)));
        }
    })?;
    Ok(())
}

fn serve(mut stream: UnixStream, state: &Mutex<State>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let reply = if !same_user(&stream) {
        Reply::Error("only the user running this program may patch it".into())
    } else {
        match read_message(&mut stream) {
            Err(e) => Reply::Error(e),
            Ok(text) => match Request::parse(&text) {
                Err(e) => Reply::Error(e),
                Ok(request) => {
                    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                    match request {
                        Request::Hello => Reply::Hello(state.hello()),
                        Request::Apply(apply) => state.apply(apply),
                    }
                }
            },
        }
    };
    let _ = stream.write_all(reply.encode().as_bytes());
}

/// Reads up to a line `end`.
fn read_message(stream: &mut UnixStream) -> Result<String, String> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).map_err(|e| format!("reading the request: {e}"))?;
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
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a `struct ucred` of the given length.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    // SAFETY: getuid has no preconditions.
    rc == 0 && cred.uid == unsafe { libc::getuid() }
}
