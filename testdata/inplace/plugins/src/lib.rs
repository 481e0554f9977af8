//! A library crate of the workspace that holds callbacks, as a framework would: closures are
//! registered once at startup and called on every tick through the `Box<dyn Fn>` it keeps.

pub struct Registry {
    callbacks: Vec<(String, Box<dyn Fn(u64) -> String + Send>)>,
}

impl Registry {
    pub fn new() -> Self {
        Registry { callbacks: Vec::new() }
    }

    pub fn register(&mut self, name: &str, f: Box<dyn Fn(u64) -> String + Send>) {
        self.callbacks.push((name.to_string(), f));
    }

    /// Every callback's result, `name:result` joined by `+`.
    pub fn run_all(&self, n: u64) -> String {
        let parts: Vec<String> = self.callbacks.iter().map(|(name, f)| format!("{name}:{}", f(n))).collect();
        parts.join("+")
    }

    /// A method of a library crate, called from the binary's loop.
    pub fn describe(&self) -> String {
        format!("registry-of-{}", self.callbacks.len())
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}
