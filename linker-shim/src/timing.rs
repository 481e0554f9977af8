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

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
