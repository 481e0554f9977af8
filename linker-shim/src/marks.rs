//! The names by which the shim recognises what the `ipbp` runtime crate and its `#[ipbp::hot]`
//! macro put into a program. They are spelled once, beside the code that generates them
//! (`patch-runtime/src/marks.rs`); this leaf hands them to every stage.

pub use ipbp::marks::{CALL_MARK, KEY_MARK, KEY_SUFFIX, SLOT_MARK, SLOT_SUFFIX, TLS_RESERVE_MARK};

/// A symbol that marks a unit as holding hot points: a slot, a dispatch key or an `ipbp::call`
/// instance.
pub fn is_hot_name(name: &str) -> bool {
    name.contains(SLOT_MARK) || name.contains(KEY_MARK) || name.starts_with(CALL_MARK)
}
