//! A check round: every other thread, interrupted once by the round's signal, checks itself
//! against the bytes about to change and goes on at once — nobody is held.
//!
//! [`super::poke`] runs it after the entries' first bytes became breakpoints. A thread that
//! answers clear can no longer reach the rest of those bytes: it was not inside them, held no
//! return address or saved context pointing inside them, and the only way in is through the
//! first byte, which now traps ([`super::trap`]). So once every thread has answered clear, the
//! rest can be written while all of them run.

use super::hazard::{Hazard, Inside};
use super::maps::Mapping;
use super::signal::{Answer, Kind, Round, Spec};
use std::time::Duration;

/// What a clear round measured.
#[derive(Debug, Clone, Copy)]
pub struct CheckStats {
    pub threads: usize,
    /// The most CPU time any thread spent in the handler: how long the round kept it from its
    /// own code.
    pub longest_pause: Duration,
    /// The longest any thread was in the handler by the wall clock, including time the scheduler
    /// gave to other threads (it would have, handler or not).
    pub longest_wall: Duration,
    /// From the first signal to the last answer.
    pub gathering: Duration,
}

#[derive(Debug)]
pub enum NotClear {
    /// A thread is where the bytes change; it moves on, so a later round may be clear.
    Hazard(Hazard),
    /// The round itself failed (a thread did not answer).
    Failed(String),
}

/// Interrupts every other thread once; each checks whether it is strictly inside one of `inside`
/// or holds a stack word pointing there (its stack found in `mappings`).
pub fn every_thread(inside: &Inside, mappings: &[Mapping]) -> Result<CheckStats, NotClear> {
    let spec = Spec { inside, mappings };
    // SAFETY: `spec` outlives `round`, which is dropped before this function returns.
    let mut round = unsafe { Round::begin(Kind::Check, Some(&spec)) }.map_err(NotClear::Failed)?;
    let gathering = round.gather().map_err(|e| NotClear::Failed(e.describe()))?;
    let mut answers: Vec<Answer> = Vec::with_capacity(round.threads());
    round.answers(&mut answers);
    let threads = round.threads();
    drop(round);
    if let Some(h) = answers.iter().find_map(|a| a.hazard) {
        return Err(NotClear::Hazard(h));
    }
    let wall = answers.iter().map(|a| a.answered_at.saturating_sub(a.arrived_at)).max().unwrap_or(0);
    let cpu = answers.iter().map(|a| a.cpu_ns).max().unwrap_or(0);
    Ok(CheckStats {
        threads,
        longest_pause: Duration::from_nanos(cpu),
        longest_wall: Duration::from_nanos(wall),
        gathering,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    /// A marker no code address can be: recognisable on a stack.
    const MARK: u64 = 0x00AB_CDEF_1234_5678;

    #[inline(never)]
    fn hold_mark_on_stack(release: std::sync::mpsc::Receiver<()>) -> u64 {
        let words = std::hint::black_box([MARK; 4]);
        release.recv().unwrap();
        std::hint::black_box(words)[0]
    }

    /// Busy, sleeping and waiting threads all answer without being held, and a thread whose stack
    /// holds a word inside the ranges is found.
    #[test]
    fn every_thread_answers_and_a_word_inside_is_found() {
        let _turn = super::super::test_turn();
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for kind in 0..4 {
            let (stop, counter) = (stop.clone(), counter.clone());
            handles.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if kind % 2 == 0 {
                        counter.fetch_add(1, Ordering::Relaxed);
                    } else {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            }));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || hold_mark_on_stack(rx));
        std::thread::sleep(Duration::from_millis(20));
        // Another test's thread may start after the mappings were read: read them again then.
        let round = |inside: &Inside| loop {
            let maps = super::super::maps::read().unwrap();
            match every_thread(inside, &maps) {
                Err(NotClear::Hazard(Hazard::UnknownStack { .. })) => continue,
                other => break other,
            }
        };
        let elsewhere = [(MARK + 0x1001, MARK + 0x1005)];
        let clear = match round(&elsewhere) {
            Ok(clear) => clear,
            Err(e) => panic!("no thread holds such a word, yet: {e:?}"),
        };
        assert!(clear.threads >= 5, "{clear:?}");

        match round(&[(MARK - 1, MARK + 3)]) {
            Err(NotClear::Hazard(Hazard::Returning { addr, .. })) => assert_eq!(addr, MARK),
            Err(NotClear::Hazard(h)) => panic!("another hazard: {h:?}"),
            Err(NotClear::Failed(e)) => panic!("{e}"),
            Ok(s) => panic!("the marked stack was not seen: {s:?}"),
        }
        tx.send(()).unwrap();
        assert_eq!(holder.join().unwrap(), MARK);
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().unwrap();
        }
    }
}
