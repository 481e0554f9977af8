//! The state a program chooses to keep: `on_restart` hooks hand over bytes before the restart,
//! [`restored`] gives them back in the new build.
//!
//! The bytes travel in a sealed memfd (no one can change them after the hooks ran) whose
//! descriptor is the only one besides the listening sockets left open across `execve`; its
//! number is in `IPBP_RESTARTED=<pid> <fd> <restarts>`. The pid guards against a child process
//! that inherited the variable but not the descriptor: only the process that restarted reads it.

use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The variable that tells a restarted process what it was handed.
pub const ENV: &str = "IPBP_RESTARTED";
const MAGIC: &[u8] = b"ipbp-state 1\n";

type Hook = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;
static HOOKS: Mutex<Vec<(String, Hook)>> = Mutex::new(Vec::new());

pub fn add_hook(name: &str, hook: Hook) {
    let mut hooks = HOOKS.lock().unwrap_or_else(|p| p.into_inner());
    hooks.retain(|(n, _)| n != name);
    hooks.push((name.to_string(), hook));
}

/// What the hooks handed over, by name.
pub type States = Vec<(String, Vec<u8>)>;

/// Runs every hook, in the order they were added, on a thread of its own: a hook that has not
/// returned by `deadline` (or panics) abandons the restart. Its thread cannot be stopped: it
/// goes on running until it returns (or until a later restart's `execve` ends it).
pub fn run_hooks(deadline: Duration) -> Result<States, String> {
    let hooks: Vec<(String, Hook)> = HOOKS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if hooks.is_empty() {
        return Ok(Vec::new());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::Builder::new()
        .name("ipbp-restart".into())
        .spawn(move || {
            for (name, hook) in hooks {
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook()));
                let failed = out.is_err();
                let _ = tx.send((name, out.ok()));
                if failed {
                    return;
                }
            }
        })
        .map_err(|e| format!("cannot start a thread for the on_restart hooks: {e}"))?;
    let mut states = Vec::new();
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok((name, Some(bytes))) => states.push((name, bytes)),
            Ok((name, None)) => return Err(format!("the on_restart hook `{name}` panicked")),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(states),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "the on_restart hooks did not return within {} s",
                    deadline.as_secs_f64()
                ))
            }
        }
    }
}

/// The states in a sealed memfd (read-only from now on), or `None` when there are none.
pub fn seal(states: &States) -> Result<Option<OwnedFd>, String> {
    if states.is_empty() {
        return Ok(None);
    }
    let mut bytes = MAGIC.to_vec();
    for (name, data) in states {
        bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
        bytes.extend_from_slice(data);
    }
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create with a valid name.
    let fd = unsafe { libc::memfd_create(c"ipbp-restart-state".as_ptr(), flags) };
    if fd < 0 {
        return Err(format!(
            "cannot create a memory file for the state: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd.try_clone().map_err(|e| e.to_string())?);
    file.write_all(&bytes).map_err(|e| format!("cannot write the state: {e}"))?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our memfd; no mapping of it exists.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(format!("cannot seal the state: {}", std::io::Error::last_os_error()));
    }
    Ok(Some(fd))
}

/// The value of [`ENV`] for the new build.
pub fn env_value(state: Option<i32>) -> String {
    let fd = state.map_or("-".to_string(), |f| f.to_string());
    format!("{} {fd} {}", std::process::id(), restarts() + 1)
}

struct Restored {
    restarts: u64,
    states: Mutex<HashMap<String, Vec<u8>>>,
}

/// What this process was handed, read once (by `init` or the first [`restored`]).
fn handed() -> &'static Restored {
    static HANDED: OnceLock<Restored> = OnceLock::new();
    HANDED.get_or_init(|| {
        let none = || Restored { restarts: 0, states: Mutex::new(HashMap::new()) };
        let Some(value) = std::env::var_os(ENV) else { return none() };
        let value = value.to_string_lossy();
        let mut it = value.split(' ');
        let (Some(pid), Some(fd), Some(n)) = (it.next(), it.next(), it.next()) else { return none() };
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return none(); // inherited from a parent that restarted: not ours
        }
        let restarts = n.parse().unwrap_or(0);
        let states = fd.parse::<i32>().ok().and_then(read_states).unwrap_or_default();
        Restored { restarts, states: Mutex::new(states) }
    })
}

/// Reads and closes the state memfd `fd`, checking it is one (a sealed memfd of ours).
fn read_states(fd: i32) -> Option<HashMap<String, Vec<u8>>> {
    // SAFETY: F_GET_SEALS only succeeds on a memfd; anything else is left alone.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals < 0 || seals & libc::F_SEAL_WRITE == 0 {
        return None;
    }
    // SAFETY: the process that exec'd us left this descriptor open for us alone; we own it now.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // The writer's descriptor shared this one's offset: read from the start.
    file.seek(std::io::SeekFrom::Start(0)).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let mut rest = bytes.strip_prefix(MAGIC)?;
    let mut states = HashMap::new();
    while !rest.is_empty() {
        let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let name = String::from_utf8(rest.get(4..4 + n)?.to_vec()).ok()?;
        rest = &rest[4 + n..];
        let len = usize::try_from(u64::from_le_bytes(rest.get(..8)?.try_into().ok()?)).ok()?;
        states.insert(name, rest.get(8..8usize.checked_add(len)?)?.to_vec());
        rest = &rest[8 + len..];
    }
    Some(states)
}

/// Reads what the previous build handed over (called by `init`, so the memfd is closed early).
pub fn take_handover() {
    handed();
}

/// The bytes the previous build's `on_restart` hook `name` handed over; each is given once.
pub fn restored(name: &str) -> Option<Vec<u8>> {
    handed().states.lock().unwrap_or_else(|p| p.into_inner()).remove(name)
}

/// How many times this process has restarted into a new build.
pub fn restarts() -> u64 {
    handed().restarts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn sealed_states_read_back_whole_and_cannot_be_changed() {
        let states = vec![("count".to_string(), 42u64.to_le_bytes().to_vec()), ("empty".to_string(), vec![])];
        let fd = seal(&states).expect("sealed").expect("a memfd");
        let mut file = std::fs::File::from(fd.try_clone().expect("dup"));
        assert!(file.write_all(b"more").is_err(), "the state can be written after sealing");
        let read = read_states(fd.into_raw_fd()).expect("read back");
        assert_eq!(read.len(), 2);
        assert_eq!(read["count"], 42u64.to_le_bytes());
        assert!(read["empty"].is_empty());
        assert!(seal(&Vec::new()).expect("nothing").is_none());
    }

    #[test]
    fn a_descriptor_that_is_not_a_sealed_memfd_is_left_alone() {
        let file = std::fs::File::open("/proc/self/exe").expect("open");
        let fd = file.as_raw_fd();
        assert!(read_states(fd).is_none());
        // Still open: read_states did not take it.
        // SAFETY: F_GETFD on our own open descriptor.
        assert!(unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
    }
}
