//! A changed `Hash` or `Ord` of a workspace type.
//!
//! A hash table keeps each key where its hash put it, and an ordered map or a sorted `Vec` keeps
//! its keys in their order: both are invariants of live data that the old code's `Hash::hash` or
//! `Ord::cmp` decided. When that impl changes, every table the running code filled keeps its keys
//! where the old hash or order put them, and new code's lookups miss (measured: `Key`'s hash
//! changed, a `HashMap<Key, u32>` `main` filled at startup: `Patched`, then `get(&Key(3))` went
//! from `Some(30)` to `None`). Those tables' types need not be in any changed unit's debug info,
//! so where they live cannot be found; the edit is refused by the impl's name.

use std::collections::{BTreeSet, HashSet};

use super::Layouts;
use crate::diff::Diff;

/// The traits whose methods place keys in live tables, and each one's method.
const PLACING: [(&str, &str); 3] =
    [("core::hash::Hash", "hash"), ("core::cmp::Ord", "cmp"), ("core::cmp::PartialOrd", "partial_cmp")];

/// One line per changed `Hash`/`Ord` impl of a type of the workspace. A type whose layout changed
/// is left to the layout rule: where its old values are live that refuses the edit, and where
/// none is, no old table holds one either ([`layout_changed`]).
pub fn placing_impls_changed(diff: &Diff, layouts: &Layouts) -> Vec<String> {
    let mut impls: BTreeSet<String> = BTreeSet::new();
    for change in diff.changed.values() {
        let path = crate::diff::names::path(&change.name);
        if let Some((ty, name)) = placing_impl(&path, &layouts.crates) {
            let old_types = layouts.old.types.keys().map(String::as_str);
            if !layout_changed(&ty, layouts.changes.iter().map(|c| c.name.as_str()), old_types) {
                impls.insert(name);
            }
        }
    }
    impls
        .into_iter()
        .map(|i| {
            format!(
                "`{i}` changed: hash tables, ordered maps and sorted data the running code filled keep their keys where the old one put them, and lookups by the new one would miss (restart to use it)"
            )
        })
        .collect()
}

/// The path of a type without its generic arguments: `app::Pair<T>` and `app::Pair<u32>` →
/// `app::Pair` (legacy names print a generic impl's own parameters, DWARF the instance's).
fn stem(ty: &str) -> &str {
    super::closures::without_args(ty.trim_start_matches('&'))
}

/// Whether every value of the impl's type `ty` (`app::Pair<T>`: any instance) has a new layout:
/// an instance of it is among `changes`, and so is every instance the running build's changed
/// units describe (a changed impl's own unit describes the instance it is for, so an instance
/// whose layout did not change — `Pair<u32>` when only `Pair<app::Big>` changed — is seen).
fn layout_changed<'a>(
    ty: &str,
    changes: impl Iterator<Item = &'a str> + Clone,
    old_types: impl Iterator<Item = &'a str>,
) -> bool {
    let stem = stem(ty);
    let changed = |t: &str| changes.clone().any(|c| c == t);
    let of_ty = |t: &&str| super::closures::without_args(t) == stem;
    changes.clone().any(|c| of_ty(&c)) && old_types.filter(of_ty).all(changed)
}

/// `<app::Key as core::hash::Hash>::hash[::<H>]` → `<app::Key as core::hash::Hash>::hash`, for a
/// type of a workspace crate, with the type.
fn placing_impl(path: &str, crates: &HashSet<String>) -> Option<(String, String)> {
    let inner = path.strip_prefix('<')?;
    for (tr, method) in PLACING {
        let tail = format!(" as {tr}>::{method}");
        let Some(at) = inner.find(&tail) else { continue };
        let rest = &inner[at + tail.len()..];
        if !(rest.is_empty() || rest.starts_with("::<")) {
            continue;
        }
        let ty = &inner[..at];
        let krate = ty.trim_start_matches(['&', '(', '[']).split("::").next()?;
        if crates.contains(krate) {
            return Some((ty.to_string(), format!("<{ty}{tail}")));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn hash_and_ord_impls_of_workspace_types_are_found() {
        let crates: HashSet<String> = ["app".to_string()].into();
        let p = |s: &str| super::placing_impl(s, &crates).map(|(_, name)| name);
        assert_eq!(
            p("<app::Key as core::hash::Hash>::hash").as_deref(),
            Some("<app::Key as core::hash::Hash>::hash")
        );
        assert_eq!(
            p("<app::Key as core::hash::Hash>::hash::<std::hash::random::DefaultHasher>").as_deref(),
            Some("<app::Key as core::hash::Hash>::hash")
        );
        assert_eq!(
            p("<app::Key as core::cmp::Ord>::cmp").as_deref(),
            Some("<app::Key as core::cmp::Ord>::cmp")
        );
        // Another trait's method, a library's type, a closure inside the impl.
        assert_eq!(p("<app::Key as core::fmt::Debug>::fmt"), None);
        assert_eq!(p("<u32 as core::hash::Hash>::hash"), None);
        assert_eq!(p("<app::Key as core::hash::Hash>::hash_slice"), None);
    }

    #[test]
    fn a_generic_key_type_is_left_to_the_layout_rule_when_every_instance_changed_layout() {
        let changed = |ty: &str, changes: &[&str], old: &[&str]| {
            super::layout_changed(ty, changes.iter().copied(), old.iter().copied())
        };
        // Legacy names print the impl's parameters, DWARF the instance's arguments.
        assert!(changed("app::Pair<T>", &["app::Pair<u32>"], &["app::Pair<u32>", "u32"]));
        assert!(changed("app::Pair::<u32>", &["app::Pair<u32>"], &["app::Pair<u32>"]));
        assert!(changed("app::Flat", &["app::Flat"], &["app::Flat"]));
        assert!(changed("&app::Flat", &["app::Flat"], &["app::Flat"]));
        // An instance whose layout is the same may fill live tables: the keys rule decides.
        assert!(!changed(
            "app::Pair<T>",
            &["app::Pair<app::Big>"],
            &["app::Pair<app::Big>", "app::Pair<u32>"]
        ));
        // Another type, a longer path.
        assert!(!changed("app::Pair<T>", &["app::PairOf<u32>"], &["app::PairOf<u32>"]));
        assert!(!changed("app::Key", &["app::Key::Inner"], &["app::Key::Inner"]));
        assert!(!changed("app::Key", &[], &["app::Key"]));
    }
}
