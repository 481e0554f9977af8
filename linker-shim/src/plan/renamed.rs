//! In place, v0 symbol names: the unchanged code that legacy names would have changed.
//!
//! Legacy symbol names cover an instance's generic arguments, so when a type changes layout every
//! instance over it (`<Vec<app::Flat>>::extend_trusted`, the sort, `drop_in_place`) gets a new
//! name, and every function calling one changes with it: `app::step`, which only collects and
//! sorts a `Vec<Flat>`, is changed and redirected, and its new code calls the new instances. v0
//! names do not change: `step` compiles to the same bytes, so the diff finds it unchanged, and old
//! `step` keeps calling the old instances — consistent, but the edit never runs: a closure of
//! `step` making each `Flat` (not redirected: it returns `Flat`) keeps its old code, and `step`
//! goes on printing the old value after `Patched` (review 5, finding 5).
//!
//! So, walking up from each function not redirected for a layout change through the code that
//! leads to it, the first unchanged function whose name holds no changed type, reached from an
//! instance or impl whose name holds one, is taken as changed ([`promoted`]) — the one legacy
//! names change. Its copy calls the new versions (through the code `chain` carries) and its
//! entry is redirected like any changed function's (unless its own signature holds a changed
//! type). Only functions without generic arguments are taken: an instance whose arguments name a
//! closure may handle the changed type through it, so its old callers must keep it. Functions not
//! taken keep their old code, and with it the old instances: consistent, but the edit runs only
//! where changed code calls it.

use super::graph::{Index, Loc};
use crate::layout::compare::TypeChange;
use crate::layout::Layouts;
use crate::objects::SectionKind;
use std::collections::{HashSet, VecDeque};

/// The type that changed layout the demangled `path` holds, if any (see `detours::instance_over`).
pub(super) fn changed_type_in<'l>(layouts: &'l Layouts, path: &str) -> Option<&'l TypeChange> {
    layouts.changes.iter().find(|c| crate::layout::compare::mentions(path, &c.name))
}

fn holds_changed_type(layouts: &Layouts, path: &str) -> bool {
    changed_type_in(layouts, path).is_some()
}

/// The unchanged functions to take as changed: see the module's documentation. `stale`: the
/// changed functions not redirected for a layout change; `changed`: every changed section.
pub(super) fn promoted(
    index: &Index,
    layouts: &Layouts,
    stale: &HashSet<Loc>,
    changed: &HashSet<Loc>,
) -> crate::error::Result<HashSet<Loc>> {
    let mut out = HashSet::new();
    if layouts.changes.is_empty() {
        return Ok(out);
    }
    let path = |at: Loc| -> crate::error::Result<Option<String>> {
        Ok(index.name(at)?.map(crate::map::read::demangle))
    };
    let mut queue: VecDeque<Loc> = stale.iter().copied().collect();
    let mut seen: HashSet<Loc> = stale.clone();
    while let Some(v) = queue.pop_front() {
        let v_holds = path(v)?.is_some_and(|p| holds_changed_type(layouts, &p));
        for u in index.referrers(v)? {
            // Changed code is new code already (redirected, or not redirected and walked from).
            // `seen` holds what was walked from: a function left as it is when reached from one
            // callee may be taken when reached from another, whose name holds a changed type.
            if changed.contains(&u) || seen.contains(&u) || out.contains(&u) {
                continue;
            }
            let kind = index.kind(u)?;
            if kind.is_writable_state() {
                continue; // `chain` decides what new code reading it may do
            }
            if !matches!(kind, SectionKind::Text | SectionKind::ReadOnly | SectionKind::ReadOnlyAfterReloc) {
                continue;
            }
            let Some(p) = path(u)? else { continue };
            if kind != SectionKind::Text || holds_changed_type(layouts, &p) {
                // Renamed under legacy names (or data): its referrers are what legacy changes.
                seen.insert(u);
                queue.push_back(u);
            } else if v_holds && !p.contains('<') && !super::is_main(&p) && !index.unchanged(u.0) {
                // In a changed unit: `detours` knows which bodies the optimiser merged there only
                // for those (a detour of a merged body would redirect the other names too). A
                // unit holding a call to an instance over a changed type describes that type, so
                // it changed whenever the type's change can be seen.
                out.insert(u);
            }
        }
    }
    Ok(out)
}
