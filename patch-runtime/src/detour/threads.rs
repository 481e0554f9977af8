//! The threads of this process as `/proc/self/task` lists them: their ids, names and blocked
//! signals. A leaf of `detour`: the signal rounds and the hazard messages both use it.

pub(super) fn parse_tid(name: &[u8]) -> Option<i32> {
    if name.is_empty() || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    name.iter().try_fold(0i32, |n, &d| n.checked_mul(10)?.checked_add((d - b'0') as i32))
}

/// Names of the process's threads, for messages (allocates: call only while nothing is parked).
pub fn thread_name(tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| tid.to_string())
}

/// A thread that blocks one of `signals` now, from each thread's `SigBlk` in `/proc`; or `Err`
/// if the threads cannot be read. Allocates: call before any round.
pub fn thread_blocking(signals: &[i32]) -> Result<Option<(i32, i32)>, String> {
    let dir = std::fs::read_dir("/proc/self/task").map_err(|e| format!("cannot list threads: {e}"))?;
    for entry in dir.flatten() {
        let Some(tid) = parse_tid(entry.file_name().as_encoded_bytes()) else { continue };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue }; // exited
        let blocked = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .ok_or_else(|| format!("no SigBlk in /proc/self/task/{tid}/status"))?;
        if let Some(&sig) = signals.iter().find(|&&s| (1..=64).contains(&s) && blocked & (1 << (s - 1)) != 0)
        {
            return Ok(Some((tid, sig)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tids_parse() {
        assert_eq!(parse_tid(b"1234"), Some(1234));
        assert_eq!(parse_tid(b"."), None);
        assert_eq!(parse_tid(b""), None);
        assert_eq!(parse_tid(b"99999999999"), None);
    }

    #[test]
    fn a_thread_blocking_a_signal_is_found() {
        let _turn = super::super::test_turn();
        let sig = libc::SIGUSR2;
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            // SAFETY: blocking one signal in this thread only.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, sig);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            }
            tx.send(unsafe { libc::gettid() }).unwrap();
            done_rx.recv().unwrap();
        });
        let tid = rx.recv().unwrap();
        // Another test's thread may block every signal for a moment (inside a handler).
        let found = (0..100).any(|_| {
            let b = thread_blocking(&[sig]).unwrap();
            std::thread::sleep(Duration::from_millis(2));
            b == Some((tid, sig))
        });
        assert!(found, "thread {tid} blocks signal {sig}, unseen");
        done_tx.send(()).unwrap();
        t.join().unwrap();
    }
}
