//! Stopping every other thread while code is rewritten: the fallback install ([`super::poke`] is
//! the usual one), used when a breakpoint trap cannot be relied on — a debugger traces the
//! process, the program handles SIGTRAP itself or a thread blocks it, or the kernel cannot
//! serialise the process's cores on request.
//!
//! **Why it is sound.** Every other thread waits in the signal handler of a park round
//! ([`super::signal`]) while the caller inspects where each one stopped and, if none is inside
//! the bytes to rewrite, writes them; the round's release store (`Release`) orders the writes
//! before it, and each released thread serialises its core before it returns to the code it
//! interrupted. Nothing executes the rewritten bytes while they are written, and every entry of
//! one install is visible to every thread at once. While threads are parked the patching thread
//! must not take a lock an application thread can hold (malloc's, stdio's, the loader's):
//! everything it needs is allocated before the round.
//!
//! **Its cost.** Every thread is held from its arrival until the last thread has arrived and the
//! code is written. With more busy threads than cores, a runnable thread handles its signal only
//! when the scheduler next runs it, so the first arrivals wait for that (milliseconds).

use super::arch;
use super::signal::{self, Answer, Kind, Round};
use std::time::Duration;

/// What a stop achieved.
pub struct StopStats {
    /// Longest time any thread spent parked.
    pub longest_pause: Duration,
    pub threads: usize,
    /// From the first signal to the last thread parked.
    pub gathering: Duration,
}

/// Parks every other thread, calls `inspect` with where each one stopped and, if it says so,
/// `write`; then releases them. `inspect` returns `Err(reason)` to release without writing;
/// neither closure may allocate or take a lock an application thread could hold.
pub fn with_threads_parked(
    inspect: &mut dyn FnMut(&[Answer]) -> Result<(), String>,
    write: &mut dyn FnMut() -> Result<(), String>,
) -> Result<StopStats, String> {
    let mut parked: Vec<Answer> = Vec::with_capacity(4096);
    // SAFETY: a park round has no spec.
    let mut round = unsafe { Round::begin(Kind::Park, None)? };
    // Nothing here may allocate while threads are parked, errors included: a round's error is
    // turned into a message only after the release.
    let result = (|| {
        let gathering = round.gather().map_err(Err)?;
        round.answers(&mut parked);
        inspect(&parked).map_err(Ok)?;
        write().map_err(Ok)?;
        arch::serialize_core();
        Ok(gathering)
    })();
    // The longest any thread was held: from the first arrival to the release (not to when the
    // scheduler next runs it — with more busy threads than cores that wait happens patch or not).
    let first = parked.iter().map(|p| p.arrived_at).min();
    let released_at = signal::now_ns();
    let threads = round.threads();
    drop(round);
    let result = result.map_err(|e: Result<String, signal::RoundError>| e.unwrap_or_else(|r| r.describe()));
    result.map(|gathering| StopStats {
        longest_pause: Duration::from_nanos(first.map_or(0, |t| released_at.saturating_sub(t))),
        threads,
        gathering,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    /// Busy threads, sleeping threads and threads blocked on a lock all park, and none of them
    /// runs while parked.
    #[test]
    fn every_thread_parks_and_none_runs_while_parked() {
        let _turn = super::super::test_turn();
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicU64::new(0));
        let lock = Arc::new(std::sync::Mutex::new(()));
        let guard = lock.lock().unwrap();
        let mut handles = Vec::new();
        for kind in 0..6 {
            let (stop, counter, lock) = (stop.clone(), counter.clone(), lock.clone());
            handles.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match kind % 3 {
                        0 => {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        1 => std::thread::sleep(Duration::from_millis(5)),
                        _ => drop(lock.lock().unwrap()),
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(20));
        let mut seen = 0;
        let mut still = true;
        let stats = with_threads_parked(
            &mut |parked| {
                seen = parked.len();
                Ok(())
            },
            &mut || {
                let a = counter.load(Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
                still = counter.load(Ordering::Relaxed) == a;
                Ok(())
            },
        )
        .unwrap();
        assert!(seen >= 6, "only {seen} threads parked");
        assert!(still, "a parked thread kept running");
        assert!(stats.threads >= 6);
        drop(guard);
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().unwrap();
        }
    }
}
