//! The order of a trait's methods in its vtables.
//!
//! A `dyn Trait` value is a data pointer and a vtable pointer; code calls a method through the
//! vtable's slot for it, a fixed offset the trait's method order decides (`drop_in_place`, size,
//! align, then the methods as the trait declares them, supertraits' first). A vtable made by the
//! running build and kept in a live `Box<dyn Trait>` has the old order. When the order changes
//! but not the number of methods, the `vtable: &[usize; N]` field of every `dyn Trait` pointer
//! keeps its type, so the layout comparison sees nothing, yet new code calling slot 3 of an old
//! vtable runs another method (measured: `describe` moved above `name`, both
//! `fn(&self) -> String`: new code called the old `name`, or crashed where the signatures
//! differ). So a trait whose methods moved between slots is refused by name.
//!
//! The vtables are read from the changed units' constant data: a section of `.data.rel.ro`
//! whose first word is empty or points at `core::ptr::drop_in_place`, whose second and third are
//! a size and a power-of-two alignment, and whose other words point at methods named
//! `<T as Trait>::m` (or `Trait::m`, a default method). A change of the vtable's length is the
//! layout comparison's (`vtable` retyped) and is not repeated here.

use std::collections::{BTreeMap, BTreeSet};

use crate::diff::Diff;
use crate::objects::units::{Build, UnitId};
use crate::objects::{Object, SectionKind, SymbolKind};

/// One line per trait whose methods' slots differ between the running build and the new one.
pub fn reordered(base: &Build<'_>, current: &Build<'_>, diff: &Diff) -> Vec<String> {
    let old = orders(base, &diff.changed_units_base);
    let new = orders(current, &diff.changed_units_current);
    let mut out = Vec::new();
    for (methods, old_orders) in &old {
        let Some(new_orders) = new.get(methods) else { continue };
        if old_orders == new_orders {
            continue;
        }
        let (Some(was), Some(now)) = (old_orders.iter().next(), new_orders.iter().next()) else { continue };
        let traits: BTreeSet<&str> =
            methods.iter().filter_map(|m| m.rsplit_once("::").map(|(t, _)| t)).collect();
        let names = |o: &Vec<String>| {
            o.iter()
                .map(|m| m.rsplit_once("::").map_or(m.as_str(), |(_, n)| n))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let traits = traits.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(" and ");
        out.push(format!(
            "the methods of trait {traits} moved between vtable slots ({} -> {}): values behind `dyn` made by the running code keep the old vtables, which new code would call by the new slots (restart to use it)",
            names(was),
            names(now)
        ));
    }
    out
}

/// The vtables of `units`, by the set of their methods: each distinct slot order.
fn orders(build: &Build<'_>, units: &[UnitId]) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut out: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for &id in units {
        let Ok(obj) = build.units[id].object() else { continue };
        for sec in 0..obj.sections.len() {
            if let Some(slots) = vtable(obj, sec) {
                // Vtables with fewer than two methods have no order to change.
                if slots.iter().filter(|s| !s.is_empty()).count() < 2 {
                    continue;
                }
                let mut key: Vec<String> = slots.iter().filter(|s| !s.is_empty()).cloned().collect();
                key.sort();
                out.entry(key).or_default().insert(slots);
            }
        }
    }
    out
}

/// The methods of the vtable section `sec` holds, slot by slot (`Trait::method`, empty for a null
/// slot), or `None` when it is not a vtable.
fn vtable(obj: &Object<'_>, sec: usize) -> Option<Vec<String>> {
    let s = &obj.sections[sec];
    if s.kind != SectionKind::ReadOnlyAfterReloc
        || s.size < 32
        || !s.size.is_multiple_of(8)
        || s.data.len() as u64 != s.size
    {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(s.data[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    let relocs = s.relocs();
    let at = |off: u64| relocs.iter().find(|r| r.offset == off);
    if at(8).is_some() || at(16).is_some() || !word(2).is_power_of_two() {
        return None;
    }
    if let Some(r) = at(0) {
        if !target(obj, r.symbol)?.starts_with("core::ptr::drop_in_place") {
            return None;
        }
    } else if word(0) != 0 {
        return None;
    }
    let mut slots = Vec::new();
    for i in 3..(s.size / 8) as usize {
        match at(i as u64 * 8) {
            Some(r) => slots.push(method(&target(obj, r.symbol)?)?),
            None if word(i) == 0 => slots.push(String::new()),
            None => return None,
        }
    }
    Some(slots)
}

/// The demangled path of what symbol `sym` stands for (a section symbol: its section's first
/// named symbol, or the function the `.text.<name>` section is named for).
fn target(obj: &Object<'_>, sym: usize) -> Option<String> {
    let s = obj.symbols.get(sym)?;
    let name = if s.kind == SymbolKind::Section {
        let sec = s.section()?;
        match obj.primary_symbol(sec) {
            Some(p) => p.name,
            None => obj.sections[sec].name.strip_prefix(".text.")?,
        }
    } else {
        s.name
    };
    Some(crate::diff::names::path(name))
}

/// `<app::Dog as app::Animal>::name` → `app::Animal::name`; `app::Animal::describe` (a default
/// method) as it is. Generic arguments of the trait are dropped (legacy names have none).
fn method(path: &str) -> Option<String> {
    let Some(rest) = path.strip_prefix('<') else {
        return path.contains("::").then(|| path.to_string());
    };
    // The ` as ` at depth 0 of `<T as Trait>`, then the `>` closing it.
    let (mut depth, mut as_at, mut close) = (0i32, None, None);
    for (i, c) in rest.char_indices() {
        match c {
            '<' => depth += 1,
            '>' if depth == 0 => {
                close = Some(i);
                break;
            }
            '>' => depth -= 1,
            ' ' if depth == 0 && as_at.is_none() && rest[i..].starts_with(" as ") => as_at = Some(i),
            _ => {}
        }
    }
    let (as_at, close) = (as_at?, close?);
    let tr = &rest[as_at + 4..close];
    let tr = tr.split_once('<').map_or(tr, |(t, _)| t);
    let m = rest[close + 1..].strip_prefix("::")?;
    Some(format!("{tr}::{m}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn methods_are_named_by_their_trait() {
        assert_eq!(super::method("<app::Dog as app::Animal>::name").as_deref(), Some("app::Animal::name"));
        assert_eq!(super::method("app::Animal::describe").as_deref(), Some("app::Animal::describe"));
        assert_eq!(
            super::method("<alloc::vec::Vec<u8> as core::ops::Fn<(u32,)>>::call").as_deref(),
            Some("core::ops::Fn::call")
        );
        assert_eq!(super::method("<app::W<a::X as b::Y> as app::T>::m").as_deref(), Some("app::T::m"));
    }
}
