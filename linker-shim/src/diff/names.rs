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

/// Whether a legacy symbol is a closure's or an async block's code (`…::{{closure}}`, the last
/// segment of its path: rustc numbers them only in debug info).
pub fn is_closure(name: &str) -> bool {
    name.contains("$u7b$$u7b$closure$u7d$$u7d$17h")
}

/// The mangled part of a closure's legacy symbol that names its outermost function, the same in
/// every build (`_ZN3app4main28` of `_ZN3app4main28_$u7b$$u7b$closure$u7d$$u7d$17h…E`, with the
/// closure segment's length): the closures of one function, told without demangling them.
pub fn closure_owner(name: &str) -> &str {
    name.find("_$u7b$$u7b$closure$u7d$$u7d$").map_or(name, |at| &name[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            closure_owner("_ZN7layouts4main28_$u7b$$u7b$closure$u7d$$u7d$28_$u7b$$u7b$closure$u7d$$u7d$17h0c3e0a0f8f4b1b2aE"),
            "_ZN7layouts4main28"
        );
        assert!(is_promoted_anon("anon.ebafb60624fd0317f0e5ca3f8fe5763b.29.llvm.4687289052701356509"));
    }
}
