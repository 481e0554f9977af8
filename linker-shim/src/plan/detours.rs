//! In place: which changed functions get a detour at their entries in the running image, and why
//! the others cannot. Decided before anything is resolved, because what new code refers to
//! depends on it: a function that is not redirected keeps its old code at its old entry, so new
//! code must reach its new copy — directly, and through the unchanged code [`super::chain`]
//! carries.

use super::base::BaseImage;
use super::graph::{Index, Loc};
use super::{entry, is_hot_async_part, sorted, Inputs};
use crate::error::Context;
use crate::index::BaseKind;
use crate::objects::units::{Build, UnitId};
use crate::objects::{SectionKind, SymbolKind};
use std::collections::{HashMap, HashSet};

/// A changed function: its entries in the image, or why it is not redirected.
pub(super) struct Detour<'n> {
    pub at: Loc,
    /// Its mangled name now, and in the image.
    pub mangled: &'n str,
    pub base_name: &'n str,
    /// Unbiased entry addresses in the image, or why none is redirected.
    pub entries: crate::error::Result<Vec<u64>>,
    /// Not redirected because its signature, or the layout of what it receives or returns,
    /// changed: values the new code makes would be misread by its old code.
    pub layout: bool,
}

/// Decides for every changed function the patch copies (in place).
pub(super) fn decide<'p, 'a: 'p>(
    input: &Inputs<'p, 'a>,
    index: &Index<'_, 'a>,
    copy: &HashSet<Loc>,
    changed: &HashSet<Loc>,
    signatures: &crate::layout::Signatures,
) -> crate::error::Result<Vec<Detour<'p>>> {
    // Closures whose signature holds a changed type (one returning `Flat`): an instance over one
    // (`Map<I, app::step::{closure#3}>`) handles that type as much as one over `Flat` itself.
    let mut closures = Vec::new();
    for &at in copy.iter().filter(|at| changed.contains(at)) {
        let Some(mangled) = index.name(at)? else { continue };
        let base_name = input.diff.base_name(mangled);
        let path = crate::map::read::demangle(base_name);
        if path.contains("{closure#") && signatures.change(&path, Some((base_name, mangled))).is_some() {
            closures.push(path);
        }
    }
    let mut planned = Vec::new();
    for at in sorted(copy) {
        if !changed.contains(&at) || index.kind(at)? != SectionKind::Text {
            continue;
        }
        let Some(mangled) = index.name(at)? else { continue };
        if is_hot_async_part(&crate::map::read::demangle(mangled)) {
            continue; // switched through its slot, never detoured
        }
        let base_name = input.diff.base_name(mangled);
        // Callers built against the old function pass what it took: its entry may only lead to
        // new code that takes the same (the DWARF of both builds says).
        let path = crate::map::read::demangle(base_name);
        // A closure's symbol follows its number: after closures were added, removed or moved, the
        // old one may name another closure's new code (`layout::closures`).
        let (entries, layout) = if let Some(reason) =
            crate::layout::renumbered_closure(input.layouts, base_name)
        {
            (Err(crate::err!("{reason}")), false)
        } else {
            match signatures
                .change(&path, Some((base_name, mangled)))
                .or_else(|| instance_over(input.layouts, &closures, &path))
            {
                Some(reason) => (Err(crate::err!("{reason}; changed callers call the new version")), true),
                None => (detour_entries(input.base, base_name), false),
            }
        };
        planned.push(Detour { at, mangled, base_name, entries, layout });
    }
    refuse_shared_entries(&merged_functions(input.base_build, &input.diff.changed_units_base), &mut planned);
    Ok(planned)
}

/// Why a changed function whose name holds a type that changed layout — an instance over it
/// (`core::slice::sort::…::<app::Flat, …>`, `<[app::Flat]>::reverse`), an impl of it
/// (`<app::Flat as Ord>::cmp`), or one over a changed closure's captures — is not redirected:
/// it is built for the type's new layout, and old code reaches its entry with old values.
///
/// Its signature need not show the type: a closure nested in `map_fold::<u32, app::Flat, …>`
/// receives only its captures, and writes new `Flat`s through a pointer into a buffer that old
/// `extend_trusted` sized for old ones (review 5, finding 5). Legacy symbol names cover the
/// instance's generic arguments, so such an instance is renamed by the edit and shows as new,
/// never detoured; v0 names do not change, so this rule gives it the same fate: old code keeps
/// the old instance, new code (and the code [`super::chain`] carries) calls the new one.
fn instance_over(layouts: &crate::layout::Layouts, closures: &[String], path: &str) -> Option<String> {
    use crate::layout::compare::mentions;
    if let Some(change) = super::renamed::changed_type_in(layouts, path) {
        return Some(format!(
            "`{path}` is built for {} (an instance or impl over it keeps its name)",
            change.describe()
        ));
    }
    let closure = closures.iter().find(|c| c.as_str() != path && mentions(path, c))?;
    Some(format!(
        "`{path}` is built for closure `{closure}`, whose signature holds a type that changed layout (an instance over it keeps its name)"
    ))
}

/// An entry that several functions share (the optimiser merged identical bodies) can only be
/// redirected if every name there is redirected to the same new code: otherwise callers of a
/// function that did not change would run another function's new code.
fn refuse_shared_entries(merged: &HashMap<&str, Vec<&str>>, planned: &mut [Detour]) {
    let target: HashMap<&str, Loc> = planned.iter().map(|d| (d.base_name, d.at)).collect();
    for d in planned.iter_mut() {
        if d.entries.is_err() {
            continue;
        }
        let others = merged.get(d.base_name).into_iter().flatten();
        if let Some(other) = others.copied().find(|&n| target.get(n) != Some(&d.at)) {
            d.entries = Err(crate::err!(
                "its code is shared with `{}`, which the optimiser merged with it",
                crate::map::read::demangle(other)
            ));
        }
    }
}

/// Function names the optimiser gave one body in the running build (LLVM merges identical
/// functions of one codegen unit into aliases): name → the other names of its body. Only the
/// changed units are read — a merged pair lives in one unit, and a changed function's unit changed.
fn merged_functions<'a>(base: &Build<'a>, changed_units: &[UnitId]) -> HashMap<&'a str, Vec<&'a str>> {
    let mut out: HashMap<&'a str, Vec<&'a str>> = HashMap::new();
    for &u in changed_units {
        let Ok(obj) = base.units[u].object() else { continue };
        for sec in obj.sections.iter().filter(|s| s.kind == SectionKind::Text) {
            let mut at: HashMap<u64, Vec<&'a str>> = HashMap::new();
            for &i in &sec.symbols {
                let sym = &obj.symbols[i];
                if sym.kind == SymbolKind::Function && sym.is_named() {
                    at.entry(sym.value).or_default().push(sym.name);
                }
            }
            for names in at.into_values().filter(|n| n.len() > 1) {
                for &n in &names {
                    out.entry(n).or_default().extend(names.iter().copied().filter(|&m| m != n));
                }
            }
        }
    }
    out
}

/// The entries (unbiased) of every copy of function `mangled` in the running image (a local symbol
/// can be defined in several codegen units, all the same code), each checked to hold a jump.
/// None when the image does not have it (a new function).
fn detour_entries(base: &BaseImage<'_>, mangled: &str) -> crate::error::Result<Vec<u64>> {
    let mut out = Vec::new();
    for s in base.all(mangled).into_iter().filter(|s| s.kind == BaseKind::Function) {
        let code = base.code(s.addr, s.size).context("its code is not in the image's executable segments")?;
        let after = base.code(s.addr + s.size, entry::JUMP_LEN).unwrap_or(&[]);
        entry::check(code, after).map_err(|e| crate::err!("{e}"))?;
        out.push(s.addr);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::instance_over;
    use crate::layout::compare::TypeChange;
    use crate::layout::model::Kind;
    use crate::layout::Layouts;

    /// v0 paths of instances and impls over a changed type are not redirected; its inherent
    /// functions' paths, other types with the same prefix and unrelated instances are.
    #[test]
    fn instances_and_impls_over_a_changed_type_are_not_redirected() {
        let flat = TypeChange {
            name: "app::Flat".into(),
            kind: Kind::Struct,
            details: vec!["8 -> 12 bytes".into()],
        };
        let layouts = Layouts { changes: vec![flat], ..Layouts::default() };
        for path in [
            "core::iter::adapters::map::map_fold::<u32, app::Flat, (), app::step::{closure#3}>::{closure#0}",
            "<[app::Flat]>::reverse",
            "<app::Flat as core::cmp::Ord>::cmp",
            "core::ptr::drop_in_place::<alloc::vec::Vec<app::Flat>>",
        ] {
            let reason = instance_over(&layouts, &[], path).unwrap_or_else(|| panic!("{path} redirected"));
            assert!(reason.contains("struct `app::Flat` changed layout (8 -> 12 bytes)"), "{reason}");
        }
        for path in [
            "app::Flat::new",
            "app::Flatter::new",
            "<app::Flatter as core::cmp::Ord>::cmp",
            "<[u32]>::reverse",
        ] {
            assert_eq!(instance_over(&layouts, &[], path), None, "{path}");
        }
        // A closure returning `Flat`: instances over it, not the closure itself nor one inside it.
        let closures = ["app::step::{closure#3}".to_string()];
        let over = "<core::iter::adapters::map::Map<core::ops::range::Range<u32>, app::step::{closure#3}> as core::iter::traits::iterator::Iterator>::next";
        assert!(instance_over(&layouts, &closures, over)
            .is_some_and(|r| r.contains("closure `app::step::{closure#3}`")));
        assert_eq!(instance_over(&layouts, &closures, "app::step::{closure#3}"), None);
        assert_eq!(instance_over(&layouts, &closures, "app::step::{closure#3}::{closure#0}"), None);
    }
}
