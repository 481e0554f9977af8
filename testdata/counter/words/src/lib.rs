//! A library crate of the counter workspace: edits here must be patched like edits in the binary.

use std::cell::Cell;

thread_local! {
    /// Calls of `word` in this thread: a library crate's thread-local, which its code reaches
    /// through `__tls_get_addr` (general-dynamic TLS).
    static CALLS: Cell<u64> = const { Cell::new(0) };
}

/// The word the greeter says, with how often this thread asked (`hi!#3`).
pub fn word() -> String {
    let n = CALLS.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    format!("{}#{n}", decorate("hi"))
}

fn decorate(w: &str) -> String {
    format!("{w}!")
}
