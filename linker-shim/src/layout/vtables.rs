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

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::model::Model;
use super::{live, Cache, Layouts};
use crate::diff::Diff;
use crate::error::{Context, Result};
use crate::objects::units::{Build, UnitId};
use crate::objects::{Object, Reloc, SectionKind, SymbolKind};

/// The relocation of a vtable's words: x86-64's absolute 64-bit pointer (architecture-specific;
/// aarch64's is `R_AARCH64_ABS64`).
const POINTER: object::elf::RelocationType = object::elf::R_X86_64_64;

/// One line per trait whose methods' slots differ between the running build and the new one, and
/// per vtable whose slot calls another function now, where values behind `dyn` made by the
/// running build can still be ([`live::dyn_places`]). Those places are judged from the running
/// build's description of the changed units and of every other unit of the workspace whose debug
/// info names `dyn` one of the traits; when it cannot be judged (no type descriptions, a unit
/// that cannot be read), every such change is refused.
pub fn refusals<'a>(
    base: &Build<'a>,
    current: &Build<'a>,
    diff: &Diff,
    layouts: &Layouts,
    cache: &Cache,
) -> Vec<String> {
    let moved = moved(base, current, diff);
    if moved.is_empty() {
        return Vec::new();
    }
    let unknown = |m: &Moved| {
        format!(
            "{}: values behind `dyn` made by the running code keep the old vtables, {} (restart to use it)",
            m.what, m.effect
        )
    };
    if layouts.units_with_types == 0 {
        return moved.iter().map(unknown).collect();
    }
    let crates: HashSet<String> = super::workspace_crates(base, current).into_iter().collect();
    let with_dyn: Vec<Option<Vec<String>>> = moved.iter().map(|m| dyn_traits(m, &layouts.old)).collect();
    // Formatting lends `&dyn Debug` for the moment of a call ([`live::dyn_places`]).
    let all: BTreeSet<&str> = with_dyn
        .iter()
        .flatten()
        .flatten()
        .map(String::as_str)
        .filter(|t| !t.starts_with("core::fmt::"))
        .collect();
    let Ok((others, _writes)) = naming_dyn(base, diff, &all, &super::unit_cache(base, current, cache)) else {
        return moved.iter().map(unknown).collect();
    };
    let mut out = Vec::new();
    for (m, traits) in moved.iter().zip(&with_dyn) {
        let Some(traits) = traits else {
            out.push(unknown(m));
            continue;
        };
        let traits: Vec<&str> = traits.iter().map(String::as_str).collect();
        let mut places = live::dyn_places(&layouts.old, &crates, &traits);
        for p in live::dyn_places(&others, &crates, &traits) {
            if !places.contains(&p) {
                places.push(p);
            }
        }
        if places.is_empty() {
            continue;
        }
        out.push(format!(
            "{}: values behind `dyn` made by the running code keep the old vtables ({}), {} (restart to use it)",
            m.what,
            live::some_of(places),
            m.effect
        ));
    }
    out
}

/// A trait whose methods moved between slots, or a vtable whose slot calls another function now.
struct Moved {
    /// What changed, for the reason.
    what: String,
    /// What old values would do.
    effect: &'static str,
    /// The traits of the vtables' methods (paths without generic arguments).
    traits: BTreeSet<String>,
    /// The types the vtables are for, where known.
    types: BTreeSet<String>,
}

/// Every trait a value behind whose `dyn` may hold one of `m`'s vtables: the traits of the
/// vtables' methods, and every trait the running build has a vtable of the types for (`dyn
/// Layered` where `Layered: Base + Extra` has no method of its own), without generic arguments.
/// `None` when the running build's changed units describe no vtable of those types: the `dyn`
/// trait may then be one no method names.
fn dyn_traits(m: &Moved, old: &Model) -> Option<Vec<String>> {
    let stem = |t: &str| super::closures::without_args(t).to_string();
    let types: BTreeSet<String> = m.types.iter().map(|t| stem(t)).collect();
    let described: Vec<String> =
        old.vtables.iter().filter(|(ty, _)| types.contains(&stem(ty))).map(|(_, tr)| stem(tr)).collect();
    if described.is_empty() {
        return None;
    }
    let mut traits = m.traits.clone();
    traits.extend(described);
    Some(traits.into_iter().collect())
}

/// What the running build's units that are not changed but whose debug info names `dyn` one of
/// `traits` describe: where else such values may be held (a static whose unit the edit did not
/// change). An error when one of them cannot be read. Models read from DWARF are kept in `cache`
/// (written while the caller judges them; the returned writes wait when dropped), so a later
/// patch's rule reads them from there.
fn naming_dyn(
    base: &Build<'_>,
    diff: &Diff,
    traits: &BTreeSet<&str>,
    cache: &Cache,
) -> Result<(Model, super::cache::Writes)> {
    let finders: Vec<memchr::memmem::Finder<'_>> = traits
        .iter()
        .map(|t| format!("dyn {t}"))
        .map(|n| memchr::memmem::Finder::new(n.as_bytes()).into_owned())
        .collect();
    let changed: HashSet<UnitId> = diff.changed_units_base.iter().copied().collect();
    let (mut model, mut to_keep) = (Model::default(), Vec::new());
    for (id, unit) in base.enumerate() {
        if changed.contains(&id) {
            continue;
        }
        let bytes = unit.bytes()?;
        if !finders.iter().any(|f| f.find(bytes).is_some()) {
            continue;
        }
        let mut one = Model::default();
        if cache.load_into(unit.hash, &mut one).is_none() {
            let described = super::dwarf::read(bytes, &mut one)
                .with_context(|| format!("the debug info of {}", unit.origin()))?;
            to_keep.push((unit.hash, super::cache::encode(&one, described)));
        }
        model.absorb(one);
    }
    Ok((model, cache.write_later(to_keep)))
}

/// The traits whose methods moved between slots, and the vtables whose slot calls another
/// function now, in the changed units of both builds.
fn moved(base: &Build<'_>, current: &Build<'_>, diff: &Diff) -> Vec<Moved> {
    let old = read(base, &diff.changed_units_base);
    let new = read(current, &diff.changed_units_current);
    let mut out = reordered(&old, &new);
    out.extend(retargeted(&old, &new));
    out
}

/// One per set of methods whose vtables' slot orders differ between the builds.
fn reordered(old: &BTreeSet<Vtable>, new: &BTreeSet<Vtable>) -> Vec<Moved> {
    let mut out = Vec::new();
    let (old_orders, new_orders) = (orders(old), orders(new));
    for (methods, was) in &old_orders {
        let Some(now) = new_orders.get(methods) else { continue };
        if was == now {
            continue;
        }
        // An order only one build has (with several orders, the first two could be the same).
        let pick = |a: &BTreeSet<Vec<String>>, b: &BTreeSet<Vec<String>>| {
            a.iter().find(|o| !b.contains(*o)).or_else(|| a.iter().next()).cloned()
        };
        let (Some(was_o), Some(now_o)) = (pick(was, now), pick(now, was)) else { continue };
        // The traits whose methods changed slot.
        let shifted: BTreeSet<&str> = was_o
            .iter()
            .enumerate()
            .filter(|(i, m)| !m.is_empty() && now_o.get(*i) != Some(*m))
            .filter_map(|(_, m)| trait_of(m))
            .collect();
        let shifted =
            if shifted.is_empty() { methods.iter().filter_map(|m| trait_of(m)).collect() } else { shifted };
        let names = |o: &Vec<String>| {
            o.iter().map(|m| m.rsplit_once("::").map_or("_", |(_, n)| n)).collect::<Vec<_>>().join(", ")
        };
        out.push(Moved {
            what: format!(
                "the methods of trait {} moved between vtable slots ({} -> {})",
                listed(shifted.iter().copied()),
                names(&was_o),
                names(&now_o)
            ),
            effect: "which new code would call by the new slots",
            traits: methods.iter().filter_map(|m| trait_of(m)).map(str::to_string).collect(),
            types: old.iter().filter(|v| &v.key() == methods).filter_map(|v| v.ty.clone()).collect(),
        });
    }
    out
}

/// `app::Animal` of `app::Animal::name`.
fn trait_of(method: &str) -> Option<&str> {
    method.rsplit_once("::").map(|(t, _)| t)
}

/// `` `a` and `b` ``.
fn listed<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.map(|t| format!("`{t}`")).collect::<Vec<_>>().join(" and ")
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
fn retargeted(old: &BTreeSet<Vtable>, new: &BTreeSet<Vtable>) -> Vec<Moved> {
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
                let m = &was.methods[i];
                let (tr, method) = m.rsplit_once("::").unwrap_or(("", m.as_str()));
                out.push(Moved {
                    what: format!(
                        "the vtable of `{}` for `{tr}` calls `{b}` for `{method}` now, `{a}` before",
                        key.0
                    ),
                    effect: "and would go on calling the old function",
                    traits: was.methods.iter().filter_map(|m| trait_of(m)).map(str::to_string).collect(),
                    types: BTreeSet::from([key.0.clone()]),
                });
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
    // Sorted by offset.
    let at = |off: u64| relocs.get(relocs.partition_point(|r| r.offset < off)).filter(|r| r.offset == off);
    // Every word a vtable's relocations fill is a whole pointer.
    if relocs.iter().any(|r| r.kind != POINTER || !r.offset.is_multiple_of(8)) {
        return None;
    }
    if at(8).is_some() || at(16).is_some() || !word(2).is_power_of_two() {
        return None;
    }
    let mut ty = None;
    if let Some(r) = at(0) {
        ty = Some(dropped_type(&target(obj, r)?)?.to_string());
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
                let t = target(obj, r)?;
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

/// The demangled path of the function relocation `r` points at: its symbol's, or for a section
/// symbol the symbol defined at the addend in that section (its first named symbol, or the
/// function a `.text.<name>` section is named for, at offset 0). `None` for a pointer into a
/// symbol's middle.
fn target(obj: &Object<'_>, r: &Reloc) -> Option<String> {
    let s = obj.symbols.get(r.symbol)?;
    let name = if s.kind == SymbolKind::Section {
        let sec = s.section()?;
        let at = obj.sections[sec].symbols.iter().map(|&i| &obj.symbols[i]);
        match at.clone().find(|d| d.value as i64 == r.addend && !d.name.is_empty()) {
            Some(d) => d.name,
            None if r.addend == 0 => match obj.primary_symbol(sec) {
                Some(p) => p.name,
                None => obj.sections[sec].name.strip_prefix(".text.")?,
            },
            None => return None,
        }
    } else if r.addend == 0 {
        s.name
    } else {
        return None;
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
    use object::elf::{RelocationType, R_X86_64_64};

    /// An object holding one vtable of a type with drop glue: `[drop glue, 24, 8, method, method]`,
    /// the functions named by these (mangled) symbols.
    fn vtable_object(drop: &str, methods: [&str; 2]) -> Vec<u8> {
        vtable_object_with(drop, methods, R_X86_64_64, 0)
    }

    /// The same, the second method's word filled by a relocation of `kind` with `addend`.
    fn vtable_object_with(drop: &str, methods: [&str; 2], kind: RelocationType, addend: i64) -> Vec<u8> {
        let mut o = ElfObject::new();
        let mut words = vec![0u8; 40];
        words[8..16].copy_from_slice(&24u64.to_le_bytes());
        words[16..24].copy_from_slice(&8u64.to_le_bytes());
        let table = o.section(".data.rel.ro..Lanon.0123.4", Kind::Data, &words, 8);
        for (offset, name) in [(0, drop), (24, methods[0]), (32, methods[1])] {
            let text = o.section(&format!(".text.{name}"), Kind::Text, &[0xc3], 16);
            let sym = o.local(name, text);
            let (kind, addend) = if offset == 32 { (kind, addend) } else { (R_X86_64_64, 0) };
            o.reloc(table, offset, kind, sym, addend);
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
        // A word filled by a PC-relative relocation, or pointing into a function's middle: no
        // vtable's method.
        let methods = [
            "_ZN38_$LT$r5..Dog$u20$as$u20$r5..Animal$GT$4name17h445a55a33975fb73E",
            "_ZN38_$LT$r5..Dog$u20$as$u20$r5..Animal$GT$4legs17ha6e626de94479720E",
        ];
        let drop = "_ZN4core3ptr28drop_in_place$LT$r5..Dog$GT$17h88c634df410e25c7E";
        assert!(read(&vtable_object_with(drop, methods, object::elf::R_X86_64_PC32, 0)).is_none());
        assert!(read(&vtable_object_with(drop, methods, R_X86_64_64, 4)).is_none());
        assert!(read(&vtable_object_with(drop, methods, R_X86_64_64, 0)).is_some());
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

    fn table(ty: &str, methods: &[&str]) -> super::Vtable {
        super::Vtable {
            methods: methods.iter().map(|m| m.to_string()).collect(),
            targets: methods.iter().map(|m| format!("<{ty} as {m}>")).collect(),
            ty: Some(ty.into()),
        }
    }

    #[test]
    fn moved_methods_name_the_trait_whose_slots_changed_and_orders_only_one_build_has() {
        let (a, b, x) = ("app::Base::a", "app::Base::b", "app::Extra::x");
        let old = [table("app::L", &[a, b, x]), table("app::M", &[x, a, b])].into();
        let new = [table("app::L", &[b, a, x]), table("app::M", &[x, a, b])].into();
        let moved = super::reordered(&old, &new);
        let [m] = moved.as_slice() else { panic!("one change expected") };
        // Only `Base`'s methods moved; the order both builds have is not shown.
        assert_eq!(
            m.what,
            "the methods of trait `app::Base` moved between vtable slots (a, b, x -> b, a, x)"
        );
        assert_eq!(m.types, ["app::L".to_string(), "app::M".to_string()].into());
        assert_eq!(m.traits, ["app::Base".to_string(), "app::Extra".to_string()].into());
        assert!(super::reordered(&old, &old).is_empty());
        // The dyn traits: the methods', and those the running build has vtables of the types for.
        let mut model = crate::layout::model::Model::default();
        model.vtables.push(("app::L".into(), "app::Layered".into()));
        model.vtables.push(("app::Other".into(), "app::Unrelated".into()));
        assert_eq!(
            super::dyn_traits(m, &model),
            Some(vec!["app::Base".into(), "app::Extra".into(), "app::Layered".into()])
        );
        // No vtable of the types described: which `dyn` trait holds them is not known.
        assert_eq!(super::dyn_traits(m, &crate::layout::model::Model::default()), None);
    }

    #[test]
    fn a_retargeted_slot_names_its_trait() {
        let old = [table("app::E", &["core::fmt::Debug::fmt", "core::error::Error::source"])].into();
        let mut now = table("app::E", &["core::fmt::Debug::fmt", "core::error::Error::source"]);
        now.targets[1] = "<app::E as core::error::Error>::source".into();
        let moved = super::retargeted(&old, &[now].into());
        let [m] = moved.as_slice() else { panic!("one change expected") };
        assert!(m.what.starts_with("the vtable of `app::E` for `core::error::Error` calls `<app::E as core::error::Error>::source` for `source` now"), "{}", m.what);
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
