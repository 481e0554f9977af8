//! The names by which the shim recognises what the `ipbp` runtime crate and its `#[ipbp::hot]`
//! macro put into a program: one place for every spelling, a leaf any stage may use.
//!
//! The runtime does not export these strings (its own check of a slot name, in
//! `patch-runtime/src/symbols.rs`, spells `11__IPBP_SLOT` privately); they follow from the names
//! the macro generates (`patch-runtime/macros/src/lib.rs`) under rustc's legacy mangling.

/// The mangled-name fragment of every `#[ipbp::hot]` slot (`…::__IPBP_SLOT`, length-prefixed in
/// both legacy and v0 mangling).
pub const SLOT_MARK: &str = "11__IPBP_SLOT";
/// The key functions `#[ipbp::hot]` nests in generic hot functions (`…::__ipbp_key::<…>`).
pub const KEY_MARK: &str = "10__ipbp_key";
/// `ipbp::call::<F, R>` instances.
pub const CALL_MARK: &str = "_ZN4ipbp4call17h";
/// The last path segment of a slot, demangled: `app::tick::__IPBP_SLOT` belongs to `app::tick`.
pub const SLOT_SUFFIX: &str = "::__IPBP_SLOT";
/// The last path segment of a dispatch key, demangled (without its generic arguments).
pub const KEY_SUFFIX: &str = "::__ipbp_key";
/// The mangled-name fragment of the runtime's TLS reserve (`ipbp::tls::RESERVE`).
pub const TLS_RESERVE_MARK: &str = "4ipbp3tls7RESERVE";

/// A symbol that marks a unit as holding hot points: a slot, a dispatch key or an `ipbp::call`
/// instance.
pub fn is_hot_name(name: &str) -> bool {
    name.contains(SLOT_MARK) || name.contains(KEY_MARK) || name.starts_with(CALL_MARK)
}
