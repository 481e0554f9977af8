//! Stage 1 — capture: understanding the link rustc asked for, forwarding it unchanged, and
//! keeping what a later patch will need (input fingerprints and copies).

pub mod args;
pub mod forward;
pub mod inputs;
pub mod role;
