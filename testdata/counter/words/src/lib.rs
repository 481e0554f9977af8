//! A library crate of the counter workspace: edits here must be patched like edits in the binary.

/// The word the greeter says.
pub fn word() -> String {
    decorate("hi")
}

fn decorate(w: &str) -> String {
    format!("{w}!")
}
