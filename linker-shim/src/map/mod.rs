//! Stage 2 — map: what a linked executable contains (segments, TLS, sections, every symbol), written
//! as JSON next to the build, plus the kept inputs a later patch diff compares against.

pub(crate) mod read;
pub(crate) mod record;
pub mod schema;
pub(crate) mod started;
