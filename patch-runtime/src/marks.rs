//! How the names `#[ipbp::hot]` (`macros/src/lib.rs`) and this crate put into a program look once
//! rustc has mangled them: the one place they are spelled. This crate checks slot names with them
//! ([`crate::symbols`]), and ipbp-ld recognises hot points and the TLS reserve by them.

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
/// The mangled-name fragment of this crate's TLS reserve (`ipbp::tls::RESERVE`).
pub const TLS_RESERVE_MARK: &str = "4ipbp3tls7RESERVE";
