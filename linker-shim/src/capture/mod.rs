//! Stage 1 — capture: understanding the link rustc asked for, forwarding it unchanged, and
//! keeping what a later patch will need (input fingerprints and copies).

pub(crate) mod args;
pub(crate) mod forward;
pub(crate) mod inputs;
pub(crate) mod role;
