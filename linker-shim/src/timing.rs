//! Timing the steps of a patch: a leaf every stage may use (the manifest reports the steps).

use std::time::Instant;

/// Named steps with their durations, for the manifest.
pub struct Clock {
    last: Instant,
    pub steps: Vec<(&'static str, f64)>,
}

impl Clock {
    pub fn new() -> Self {
        Clock::since(Instant::now())
    }

    /// A clock whose first step began at `start`.
    pub fn since(start: Instant) -> Self {
        Clock { last: start, steps: Vec::new() }
    }

    /// Takes over steps timed elsewhere (the next step starts now).
    pub fn absorb(&mut self, steps: &[(&'static str, f64)]) {
        self.steps.extend_from_slice(steps);
        self.last = Instant::now();
    }

    /// Records the time since the previous step under `name`.
    pub fn step(&mut self, name: &'static str) {
        let now = Instant::now();
        self.steps.push((name, (now - self.last).as_secs_f64() * 1e3));
        self.last = now;
    }
}

/// CPU time the calling thread has used (user and system): a step's cost on a machine busy with
/// other work, where its wall time also counts the waits for a CPU.
pub fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_THREAD_CPUTIME_ID always exists on
    // Linux.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
