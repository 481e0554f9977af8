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
//! `<T as Trait>::m` (or `Trait::m`, a default method) or at another vtable (a supertrait's, after
//! the first supertrait's methods). A change of the vtable's length is the
//! layout comparison's (`vtable` retyped) and is not repeated here.

use std::collections::{BTreeMap, BTreeSet};

use crate::diff::Diff;
use crate::objects::units::{Build, UnitId};
use crate::objects::{Object, SectionKind, SymbolKind};

/// One line per trait whose methods' slots differ between the running build and the new one, and
/// per vtable whose slot calls another function now.
pub fn reordered(base: &Build<'_>, current: &Build<'_>, diff: &Diff) -> Vec<String> {
    let old = read(base, &diff.changed_units_base);
    let new = read(current, &diff.changed_units_current);
    let mut out = Vec::new();
    let (old_orders, new_orders) = (orders(&old), orders(&new));
    for (methods, was) in &old_orders {
        let Some(now) = new_orders.get(methods) else { continue };
        if was == now {
            continue;
        }
        let (Some(was), Some(now)) = (was.iter().next(), now.iter().next()) else { continue };
        let traits: BTreeSet<&str> =
            methods.iter().filter_map(|m| m.rsplit_once("::").map(|(t, _)| t)).collect();
        let names = |o: &Vec<String>| {
            o.iter().map(|m| m.rsplit_once("::").map_or("_", |(_, n)| n)).collect::<Vec<_>>().join(", ")
        };
        let traits = traits.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(" and ");
        out.push(format!(
            "the methods of trait {traits} moved between vtable slots ({} -> {}): values behind `dyn` made by the running code keep the old vtables, which new code would call by the new slots (restart to use it)",
            names(was),
            names(now)
        ));
    }
    out.extend(retargeted(&old, &new));
    out
}

/// A vtable: each slot's method (`Trait::method`, empty when null) and the function it points
/// at (demangled path), and the type it is for when a slot or its drop glue names it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Vtable {
    methods: Vec<String>,
    targets: Vec<String>,
    ty: Option<String>,
}

impl Vtable {
    /// Its methods, sorted: the same whatever their order.
    fn key(&self) -> Vec<String> {
        let mut key: Vec<String> = self.methods.iter().filter(|s| !s.is_empty()).cloned().collect();
        key.sort();
        key
    }
}

/// The vtables of `units` with at least two methods (fewer have no order to change nor another
/// method to take a slot), each distinct one once.
fn read(build: &Build<'_>, units: &[UnitId]) -> BTreeSet<Vtable> {
    let mut out = BTreeSet::new();
    for &id in units {
        let Ok(obj) = build.units[id].object() else { continue };
        for sec in 0..obj.sections.len() {
            if let Some(v) = vtable(obj, sec) {
                if v.methods.iter().filter(|s| !s.is_empty()).count() >= 2 {
                    out.insert(v);
                }
            }
        }
    }
    out
}

/// The vtables by the set of their methods: each distinct slot order.
fn orders(vtables: &BTreeSet<Vtable>) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut out: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for v in vtables {
        out.entry(v.key()).or_default().insert(v.methods.clone());
    }
    out
}

/// One line per vtable of a type for a trait whose slot, in the same order, points at another
/// function now: an impl that overrides a default method it used, or stops overriding one. The
/// running program's boxes keep the old vtable and call the old function, which is not changed
/// (a default method's instance) or no longer exists, so nothing redirects it (measured: `Dog`
/// gained its own `describe`; old boxes went on printing the default's `dog/4` after `Patched`).
/// Vtables whose type no slot names, or that one build holds in more than one form, are not
/// paired.
fn retargeted(old: &BTreeSet<Vtable>, new: &BTreeSet<Vtable>) -> Vec<String> {
    let by_type = |set: &BTreeSet<Vtable>| {
        let mut m: BTreeMap<(String, Vec<String>), Vec<Vtable>> = BTreeMap::new();
        for v in set {
            if let Some(ty) = v.ty.as_ref().filter(|t| t.contains("::")) {
                m.entry((ty.clone(), v.methods.clone())).or_default().push(v.clone());
            }
        }
        m
    };
    let (old, new) = (by_type(old), by_type(new));
    let mut out = Vec::new();
    for (key, was) in &old {
        let (Some(now), [was]) = (new.get(key), was.as_slice()) else { continue };
        let [now] = now.as_slice() else { continue };
        for (i, (a, b)) in was.targets.iter().zip(&now.targets).enumerate() {
            if a != b && !was.methods[i].is_empty() {
                let method = was.methods[i].rsplit_once("::").map_or(was.methods[i].as_str(), |(_, m)| m);
                let traits: BTreeSet<&str> =
                    was.methods.iter().filter_map(|m| m.rsplit_once("::").map(|(t, _)| t)).collect();
                let traits = traits.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(" and ");
                out.push(format!(
                    "the vtable of `{}` for {traits} calls `{b}` for `{method}` now, `{a}` before: values behind `dyn` made by the running code keep the old vtable, and would go on calling the old function (restart to use it)",
                    key.0
                ));
            }
        }
    }
    out
}

/// The vtable section `sec` holds, or `None` when it is not a vtable.
fn vtable(obj: &Object<'_>, sec: usize) -> Option<Vtable> {
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
    let mut ty = None;
    if let Some(r) = at(0) {
        ty = Some(dropped_type(&target(obj, r.symbol)?)?.to_string());
    } else if word(0) != 0 {
        return None;
    }
    let (mut methods, mut targets) = (Vec::new(), Vec::new());
    for i in 3..(s.size / 8) as usize {
        match at(i as u64 * 8) {
            // A pointer to another vtable (a supertrait's after the first, for upcasting): no
            // method of its own; its slot still counts in the order.
            Some(r) if points_at_data(obj, r.symbol) => {
                methods.push(String::new());
                targets.push("(a supertrait's vtable)".into());
            }
            Some(r) => {
                let t = target(obj, r.symbol)?;
                let (m, self_ty) = method(&t)?;
                if ty.is_none() {
                    ty = self_ty;
                }
                methods.push(m);
                targets.push(t);
            }
            None if word(i) == 0 => {
                methods.push(String::new());
                targets.push(String::new());
            }
            None => return None,
        }
    }
    Some(Vtable { methods, targets, ty })
}

/// The type a drop glue instance drops: `core::ptr::drop_in_place<app::Dog>` (legacy names) or
/// `core::ptr::drop_in_place::<app::Dog>` (v0 names) → `app::Dog`; `None` for another function.
fn dropped_type(path: &str) -> Option<&str> {
    let inner = path.strip_prefix("core::ptr::drop_in_place")?;
    let inner = inner.strip_prefix("::").unwrap_or(inner);
    inner.strip_prefix('<')?.strip_suffix('>')
}

/// Whether symbol `sym` is defined in a data section of this object.
fn points_at_data(obj: &Object<'_>, sym: usize) -> bool {
    let section = obj.symbols.get(sym).and_then(|s| s.section());
    section.and_then(|s| obj.sections.get(s)).is_some_and(|s| s.kind != SectionKind::Text)
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

/// `<app::Dog as app::Animal>::name` → (`app::Animal::name`, `app::Dog`); `app::Animal::describe`
/// (a default method) → (itself, no type). Generic arguments of the trait are dropped (legacy
/// names have none).
fn method(path: &str) -> Option<(String, Option<String>)> {
    let Some(rest) = path.strip_prefix('<') else {
        return path.contains("::").then(|| (path.to_string(), None));
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
    Some((format!("{tr}::{m}"), Some(rest[..as_at].to_string())))
}

#[cfg(test)]
mod tests {
    use crate::objects::testing::{ElfObject, Kind};
    use object::elf::R_X86_64_64;

    /// An object holding one vtable of a type with drop glue: `[drop glue, 24, 8, method, method]`,
    /// the functions named by these (mangled) symbols.
    fn vtable_object(drop: &str, methods: [&str; 2]) -> Vec<u8> {
        let mut o = ElfObject::new();
        let mut words = vec![0u8; 40];
        words[8..16].copy_from_slice(&24u64.to_le_bytes());
        words[16..24].copy_from_slice(&8u64.to_le_bytes());
        let table = o.section(".data.rel.ro..Lanon.0123.4", Kind::Data, &words, 8);
        for (offset, name) in [(0, drop), (24, methods[0]), (32, methods[1])] {
            let text = o.section(&format!(".text.{name}"), Kind::Text, &[0xc3], 16);
            let sym = o.local(name, text);
            o.reloc(table, offset, R_X86_64_64, sym, 0);
        }
        o.bytes()
    }

    /// The vtable the object's `.data.rel.ro` section holds, if it is one.
    fn read(bytes: &[u8]) -> Option<super::Vtable> {
        let obj = ElfObject::parse(bytes);
        let sec = obj.sections.iter().position(|s| s.name.starts_with(".data.rel.ro"))?;
        super::vtable(&obj, sec)
    }

    #[test]
    fn vtables_of_types_with_drop_glue_are_read_under_both_manglings() {
        let legacy = vtable_object(
            "_ZN4core3ptr28drop_in_place$LT$r5..Dog$GT$17h88c634df410e25c7E",
            [
                "_ZN38_$LT$r5..Dog$u20$as$u20$r5..Animal$GT$4name17h445a55a33975fb73E",
                "_ZN38_$LT$r5..Dog$u20$as$u20$r5..Animal$GT$4legs17ha6e626de94479720E",
            ],
        );
        let v0 = vtable_object(
            "_RINvNtCsgEmfK2I1SDS_4core3ptr13drop_in_placeNtCs58X8ChI66xE_2r53DogEBI_",
            [
                "_RNvXCs58X8ChI66xE_2r5NtB2_3DogNtB2_6Animal4name",
                "_RNvXCs58X8ChI66xE_2r5NtB2_3DogNtB2_6Animal4legs",
            ],
        );
        for bytes in [legacy, v0] {
            let v = read(&bytes).expect("a vtable of a type with drop glue is read");
            assert_eq!(v.ty.as_deref(), Some("r5::Dog"));
            assert_eq!(v.methods, ["r5::Animal::name", "r5::Animal::legs"]);
            assert_eq!(v.targets, ["<r5::Dog as r5::Animal>::name", "<r5::Dog as r5::Animal>::legs"]);
        }
        // The first word pointing at another function: no vtable.
        let bytes = vtable_object(
            "_ZN38_$LT$r5..Dog$u20$as$u20$r5..Animal$GT$4legs17ha6e626de94479720E",
            [
                "_ZN38_$LT$r5..Dog$u20$as$u20$r5..Animal$GT$4name17h445a55a33975fb73E",
                "_ZN38_$LT$r5..Dog$u20$as$u20$r5..Animal$GT$4legs17ha6e626de94479721E",
            ],
        );
        assert!(read(&bytes).is_none());
    }

    #[test]
    fn drop_glue_names_its_type_under_both_manglings() {
        assert_eq!(super::dropped_type("core::ptr::drop_in_place<r5::Dog>"), Some("r5::Dog"));
        assert_eq!(super::dropped_type("core::ptr::drop_in_place::<r5::Dog>"), Some("r5::Dog"));
        assert_eq!(
            super::dropped_type("core::ptr::drop_in_place::<alloc::vec::Vec<r5::Dog>>"),
            Some("alloc::vec::Vec<r5::Dog>")
        );
        assert_eq!(super::dropped_type("core::ptr::drop_in_place_slice::<r5::Dog>"), None);
        assert_eq!(super::dropped_type("<r5::Dog as r5::Animal>::name"), None);
    }

    #[test]
    fn methods_are_named_by_their_trait() {
        let method = |p: &str| super::method(p).map(|(m, _)| m);
        assert_eq!(
            super::method("<app::Dog as app::Animal>::name"),
            Some(("app::Animal::name".into(), Some("app::Dog".into())))
        );
        assert_eq!(super::method("app::Animal::describe"), Some(("app::Animal::describe".into(), None)));
        assert_eq!(
            method("<alloc::vec::Vec<u8> as core::ops::Fn<(u32,)>>::call").as_deref(),
            Some("core::ops::Fn::call")
        );
        assert_eq!(
            super::method("<app::W<a::X as b::Y> as app::T>::m"),
            Some(("app::T::m".into(), Some("app::W<a::X as b::Y>".into())))
        );
    }
}
