//! How the diff knows a definition across two builds when its symbol name is not stable.
//!
//! Two things rename a definition without changing it:
//! - ThinLTO (optimised dev builds) promotes local symbols to hidden globals named
//!   `<name>.llvm.<module hash>`; the hash changes with any edit of the codegen unit, so the suffix
//!   is dropped ([`canonical`]). Promoted anonymous constants (`anon.<cgu hash>.<n>.llvm.<hash>`)
//!   are numbered per unit like `.Lanon.*` labels and are known by content ([`is_promoted_anon`]).
//! - rustc's legacy symbol hash (`_ZN…17h<hash>E`) covers a function's generic arguments and a
//!   static's type, so an edit of a type renames every function whose symbol hash involves it.
//!   Definitions are therefore also paired by their demangled path without the hash ([`path`]).

/// `name` without a `.llvm.<digits>` suffix.
pub fn canonical(name: &str) -> &str {
    match name.rfind(".llvm.") {
        Some(at) if name[at + 6..].bytes().all(|b| b.is_ascii_digit()) && at + 6 < name.len() => &name[..at],
        _ => name,
    }
}

/// A constant without a name of its own that ThinLTO made global: `anon.<hash>.<n>[.llvm.<hash>]`.
pub fn is_promoted_anon(name: &str) -> bool {
    name.starts_with("anon.")
}

/// The demangled path without the legacy hash (`counter::tick`), or the name itself when it is
/// not a Rust symbol.
pub fn path(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(canonical(name)))
}

/// A legacy symbol without its hash (`_ZN3app5apply17h0123456789abcdefE` → `_ZN3app5apply`): what
/// the instances of one generic function share. Other names as they are.
pub fn without_hash(name: &str) -> &str {
    let b = name.as_bytes();
    let legacy = name.starts_with("_ZN")
        && b.len() > 23
        && b[b.len() - 1] == b'E'
        && &b[b.len() - 20..b.len() - 17] == b"17h"
        && b[b.len() - 17..b.len() - 1].iter().all(u8::is_ascii_hexdigit);
    if legacy {
        &name[..name.len() - 20]
    } else {
        name
    }
}

/// Whether a symbol is a closure's or an async block's code: legacy `…::{{closure}}`, the last
/// segment of its path (rustc numbers them only in debug info), or v0 `_RNC…`, a path whose last
/// segment is in the closure namespace (`…::{closure#2}`: v0 names show the numbers).
pub fn is_closure(name: &str) -> bool {
    name.contains("$u7b$$u7b$closure$u7d$$u7d$17h") || name.starts_with("_RNC")
}

/// The function a closure's demangled path ([`path`]) is in: `app::main` of legacy
/// `app::main::{{closure}}::{{closure}}` and of v0 `app::main::{closure#1}::{closure#0}`.
pub fn closure_owner(path: &str) -> &str {
    let at = [path.find("::{{closure}}"), path.find("::{closure#")].into_iter().flatten().min();
    at.map_or(path, |at| &path[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_hashes_are_dropped_on_request() {
        assert_eq!(without_hash("_ZN3app5apply17h0123456789abcdefE"), "_ZN3app5apply");
        assert_eq!(without_hash("_ZN3app5apply17hxyz"), "_ZN3app5apply17hxyz");
        assert_eq!(without_hash("getpid"), "getpid");
    }

    #[test]
    fn llvm_suffixes_and_hashes_are_dropped() {
        assert_eq!(
            canonical("_ZN7counter4pair17h41b3973466349cc8E.llvm.4687289052701356509"),
            "_ZN7counter4pair17h41b3973466349cc8E"
        );
        assert_eq!(canonical("foo.llvm."), "foo.llvm.");
        assert_eq!(canonical("foo.llvm.x1"), "foo.llvm.x1");
        assert_eq!(
            path("_ZN7counter4tick17h1111111111111111E"),
            path("_ZN7counter4tick17h2222222222222222E")
        );
        assert_eq!(path("_ZN7counter4tick17h1111111111111111E"), "counter::tick");
        assert!(is_closure("_ZN7layouts4main28_$u7b$$u7b$closure$u7d$$u7d$17h0c3e0a0f8f4b1b2aE"));
        assert!(!is_closure("_ZN7layouts4main17h0c3e0a0f8f4b1b2aE"));
        // v0: `probe::start_worker::{closure#0}`, and an instance over one, which is no closure.
        assert!(is_closure("_RNCNvCsblGeLuuturI_5probe12start_worker0B3_"));
        assert!(!is_closure("_RINvCsblGeLuuturI_5probe5applyNCNCNvB2_12start_workers_00EB2_"));
        assert_eq!(closure_owner("app::main::{{closure}}::{{closure}}"), "app::main");
        assert_eq!(closure_owner("app::make::<u32>::{closure#1}::{closure#0}"), "app::make::<u32>");
        assert_eq!(closure_owner("app::main"), "app::main");
        assert!(is_promoted_anon("anon.ebafb60624fd0317f0e5ca3f8fe5763b.29.llvm.4687289052701356509"));
    }
}
