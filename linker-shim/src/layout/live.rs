//! Where values of a changed type can still exist in the running program, judged from the running
//! build's own description of its code (the old side of the changed units):
//!
//! - a **static or thread-local** whose type holds the type — by value, or behind a pointer,
//!   `Box`, `Vec` or any generic argument (conservative: what a pointer leads to may be old);
//! - a **running frame**: the program's `main` and every closure and async block nested in it
//!   (thread bodies, callbacks made at startup) — their parameters and locals, however indirect,
//!   since such frames may never return. A closure's captures or an async fn's state changed while
//!   its maker is `main` counts too: the value was made before the patch;
//! - an **unchanged function** of the workspace that receives or returns the type by value
//!   (directly or owned through a field, `Box`, `Vec`): its code moves values along and compiles
//!   the same for a same-size change, so its callers — new code among them — and it trade values
//!   of two layouts. One that holds values only in its own locals (`fn print_all() { for m in
//!   [Mode::Idle, Mode::Busy] { println!("{m:?}") } }`) makes them in old code and hands them
//!   only to old code: every function receiving the type is kept on its old code for old callers
//!   (review G4). Unchanged code that only borrows one reads it as it did; code of other crates
//!   (`Vec<T>::push`) and implementations of the standard library's traits (a derived `Clone`)
//!   move or copy a value for the moment of a call.
//!
//! - **type-erased storage** of another crate ([`erased_storage`]): ECS tables, arenas and type
//!   maps keep values as bytes with their `Layout` and a drop function, in types that do not name
//!   the values' type — so no static's or frame's type shows them. A generic instance over the
//!   type, of another crate's code, that handles a structure keeping a `Layout` (`store::Store::
//!   new::<app::Pos>` returns a `store::Store`) says values may be there.
//!
//! Everything else was made and dropped inside changed code, which the patch replaces as a whole.
//!
//! A `#[ipbp::hot]` async fn's body (`f::__ipbp_body`) is the exception to all of these: its
//! state machine, and the closures and async blocks in it, are made by the body and used only by
//! code named inside it (its poll and drop glue, reached through the boxed future's vtable), which
//! is never redirected — new calls get new futures through the slot. Old values of those types,
//! wherever they are held, meet only the old code they were made for.

use super::compare::mentions;
use super::model::Model;
use super::Layouts;
use crate::diff::{names, Diff};
use std::collections::{HashMap, HashSet};

/// Which types lead to which, backwards.
///
/// Behind `dyn Trait` the concrete type is unknown, so a type with a vtable for a trait counts as
/// held by whatever holds a `dyn Trait` (formatting traits excepted: `&dyn Debug` is lent for the
/// moment of a call).
pub struct Reach<'m> {
    model: &'m Model,
    /// Type → the types that contain (`true`) or point at (`false`) it.
    into: HashMap<&'m str, Vec<(&'m str, bool)>>,
}

impl<'m> Reach<'m> {
    pub fn new(model: &'m Model) -> Self {
        let mut into: HashMap<&str, Vec<(&str, bool)>> = HashMap::new();
        for (name, rec) in &model.types {
            for (to, owned) in &rec.edges {
                into.entry(to.as_str()).or_default().push((name.as_str(), *owned));
            }
        }
        Reach { model, into }
    }

    /// Every type whose values hold a value of type `name` (itself included); with `owned`, only
    /// by value or through an owning field or generic argument, not behind a plain pointer.
    ///
    /// A type used behind `dyn Trait` (it has a vtable for the trait) is held by every type that
    /// holds a `dyn Trait`: a `Box<dyn Fn()>` may be the closure whose captures changed.
    pub fn holders(&self, name: &'m str, owned: bool) -> HashSet<&'m str> {
        let mut seen: HashSet<&str> = HashSet::from([name]);
        // Generic instances over the type (`Vec<app::Item>`) hold it whatever their fields say.
        for other in self.model.types.keys() {
            if let Some(args) = other.find('<').map(|at| &other[at..]) {
                if mentions(args, name) {
                    seen.insert(other);
                }
            }
        }
        self.holders_of(seen, owned)
    }

    /// Every type whose values hold a value behind `dyn` one of `traits` (trait paths without
    /// generic arguments, as [`mentions_dyn`] takes them): the types naming `dyn Trait` and what
    /// holds those, as [`Self::holders`].
    pub fn dyn_holders(&self, traits: &[&str], owned: bool) -> HashSet<&'m str> {
        let seed = self.model.types.keys().filter(|t| traits.iter().any(|tr| mentions_dyn(t, tr)));
        self.holders_of(seed.map(String::as_str).collect(), owned)
    }

    /// `seen` and every type whose values hold one of them.
    fn holders_of(&self, mut seen: HashSet<&'m str>, owned: bool) -> HashSet<&'m str> {
        let mut todo: Vec<&str> = seen.iter().copied().collect();
        let mut dyn_traits: HashSet<&str> = HashSet::new();
        while let Some(t) = todo.pop() {
            for (ty, tr) in &self.model.vtables {
                // Formatting takes `&dyn Debug` of values it borrows for the moment of a call.
                if ty == t && !tr.starts_with("core::fmt::") && dyn_traits.insert(tr.as_str()) {
                    for other in self.model.types.keys() {
                        if mentions_dyn(other, tr) && seen.insert(other) {
                            todo.push(other);
                        }
                    }
                }
            }
            for &(from, is_owned) in self.into.get(t).into_iter().flatten() {
                if (is_owned || !owned) && seen.insert(from) {
                    todo.push(from);
                }
            }
        }
        seen
    }
}

/// Whether type name `ty` mentions `dyn tr`, where `tr` is a trait as a vtable's name gives it —
/// with its generic arguments, but not its associated types: `core::ops::function::Fn<(u8,)>`
/// is in `&dyn core::ops::function::Fn<(u8,), Output=u32>`, not in `dyn
/// core::ops::function::Fn<(), Output=u32>` (the hash table's rehashing closure over a changed type
/// is never the `&dyn Fn() -> String` a function receives).
fn mentions_dyn(ty: &str, tr: &str) -> bool {
    let (stem, with_args) = match tr.strip_suffix('>') {
        Some(stem) => (stem, true),
        None => (tr, false),
    };
    let needle = format!("dyn {stem}");
    ty.match_indices(&needle).any(|(at, m)| {
        let next = ty[at + m.len()..].chars().next();
        if with_args {
            matches!(next, Some('>' | ','))
        } else {
            !next.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        }
    })
}

/// One reason per changed type with live old values, and the statics and thread-locals found
/// holding old values.
pub fn refusals(layouts: &Layouts, diff: &Diff) -> (Vec<String>, Vec<String>) {
    refusals_in(layouts, diff, true)
}

/// [`refusals`]; without `frames`, only what outlives a frame counts — statics and
/// thread-locals, type-erased storage, futures in flight — not `main`'s frames nor unchanged code
/// holding a value: for the build of an earlier patch (`super::since`), whose `main` never runs
/// and whose frames call only that patch's copies of what handles the type, which keep their code.
pub fn refusals_in(layouts: &Layouts, diff: &Diff, frames: bool) -> (Vec<String>, Vec<String>) {
    let mut statics = Vec::new();
    if layouts.changes.is_empty() {
        return (Vec::new(), statics);
    }
    let old = &layouts.old;
    let reach = Reach::new(old);
    let running = running_in(old);
    let own_code = |path: &str| own_code(&layouts.crates, path);
    let mut out = Vec::new();
    for change in &layouts.changes {
        if made_by_hot_async_body(&change.name) {
            continue;
        }
        let mut places: Vec<String> = Vec::new();
        let mut add = |p: String| {
            if !places.contains(&p) {
                places.push(p);
            }
        };
        for (krate, function) in erased_storage(old, &change.name) {
            add(format!(
                "values of `{}` may live in storage of `{krate}`, which keeps them as bytes by their `Layout` (`{function}`)",
                change.name
            ));
        }
        let any = reach.holders(&change.name, false);
        let owned = reach.holders(&change.name, true);
        for s in &old.statics {
            if any.contains(s.ty.as_str()) {
                statics.push(s.path.clone());
                add(format!("{} `{}`", if s.tls { "thread-local" } else { "static" }, s.path));
            }
        }
        if let Some(maker) = maker(&change.name) {
            if frames && running(maker) {
                // Made by a frame that never returned: kept in its locals or moved on from there.
                add(format!("`{maker}`'s locals"));
            }
            // An `async fn`'s futures are handed to executors (tasks, boxes, join sets) where no
            // type of the program's own frames shows them: any may be in flight.
            let is_async =
                change.name.contains("::{async_fn_env#") || change.name.contains("::{async_block_env#");
            if is_async {
                add(format!("futures of `{maker}` in flight (tasks, boxed futures)"));
            }
        }
        for f in old.functions.iter().filter(|_| frames) {
            let holds = |set: &HashSet<&str>| {
                f.params.iter().chain(&f.locals).chain(f.ret.iter()).any(|t| set.contains(t.as_str()))
            };
            let trades = || f.params.iter().chain(f.ret.iter()).any(|t| owned.contains(t.as_str()));
            if running(&f.path) {
                if holds(&any) {
                    // A closure `main` made may be a thread's body, running for as long.
                    match f.path.split_once("::{{closure}}") {
                        Some((maker, _)) => add(format!("locals of closures in `{maker}`")),
                        None => add(format!("`{}`'s locals", f.path)),
                    }
                }
            } else if own_code(&f.path) && diff.unchanged.contains(names::canonical(&f.linkage)) && trades() {
                add(format!("unchanged `{}`'s parameters or return value", f.path));
            }
        }
        if places.is_empty() {
            continue;
        }
        out.push(format!(
            "{} and old values are live ({}); restart to use it",
            change.describe(),
            some_of(places)
        ));
    }
    (out, statics)
}

/// The first few of `places`, for a reason line: `a, b, c, d and 2 more`.
pub fn some_of(mut places: Vec<String>) -> String {
    const SHOWN: usize = 4;
    let more = places.len().saturating_sub(SHOWN);
    places.truncate(SHOWN);
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    format!("{}{more}", places.join(", "))
}

/// Whether the function at `path` runs in a frame that may never return: `main` of the model, or a
/// closure or async block nested in it.
fn running_in(model: &Model) -> impl Fn(&str) -> bool + '_ {
    let mains: Vec<&str> = model.functions.iter().filter(|f| f.main).map(|f| f.path.as_str()).collect();
    move |path: &str| mains.iter().any(|m| path == *m || path.starts_with(&format!("{m}::")))
}

/// Whether the function at `path` is the workspace's own code. Implementations of the standard
/// library's traits (`<app::Config as core::clone::Clone>::clone`, mostly derived) copy, compare
/// or format a value for the moment of a call and are no frames that hold one for long — nor are
/// those of a library's traits, which that library calls (`<app::Pos as bevy_ecs::component::
/// Component>::relationship_accessor`, a default method instantiated for the type).
fn own_code(crates: &HashSet<String>, path: &str) -> bool {
    let first = path.trim_start_matches('<').split("::").next().unwrap_or("");
    let library_trait = path
        .split_once(" as ")
        .and_then(|(_, tr)| tr.split("::").next())
        .is_some_and(|c| !crates.contains(c));
    crates.contains(first) && !library_trait
}

/// Where values behind `dyn` one of `traits` (paths without generic arguments) made by the
/// running build can still be, judged from `model` (the running build's side of some units) as
/// [`refusals`] judges a changed type's values: statics and thread-locals holding one, however
/// indirectly; `main`'s frames and the closures and async blocks made there; futures in flight
/// holding one; type-erased storage of a type holding one; code of a library (not the standard
/// library) handling one, which may keep it. Formatting traits are left out (`&dyn Debug` is lent
/// for the moment of a call). Empty when the values live only while the running code's calls do
/// (`Box<dyn Error>` returned by `check`, formatted by a closure in `step` and dropped there).
///
/// Unlike a changed type's, an unchanged function receiving or returning one is no place: its code
/// does not depend on the vtable's order or targets (code calling a method whose slot moved
/// changed with the slot's offset; code making one references the vtable, whose content changed,
/// so it changed too), so it handles old and new values alike and holds neither past its call.
pub fn dyn_places(model: &Model, crates: &HashSet<String>, traits: &[&str]) -> Vec<String> {
    let traits: Vec<&str> = traits.iter().copied().filter(|t| !t.starts_with("core::fmt::")).collect();
    let reach = Reach::new(model);
    let any = reach.dyn_holders(&traits, false);
    let running = running_in(model);
    let mut places: Vec<String> = Vec::new();
    let mut add = |p: String| {
        if !places.contains(&p) {
            places.push(p);
        }
    };
    for s in model.statics.iter().filter(|s| any.contains(s.ty.as_str())) {
        add(format!("{} `{}`", if s.tls { "thread-local" } else { "static" }, s.path));
    }
    let mut holders: Vec<&str> = any.iter().copied().collect();
    holders.sort();
    for h in holders {
        if let Some(maker) = maker(h) {
            if running(maker) {
                add(format!("`{maker}`'s locals"));
            }
            if h.contains("::{async_fn_env#") || h.contains("::{async_block_env#") {
                add(format!("futures of `{maker}` in flight (tasks, boxed futures)"));
            }
        }
        if h.split("::").next().is_some_and(|c| crates.contains(c)) {
            for (krate, function) in erased_storage(model, h) {
                add(format!("storage of `{krate}` keeping values of `{h}` as bytes (`{function}`)"));
            }
        }
    }
    for f in &model.functions {
        let holds = f.params.iter().chain(&f.locals).chain(f.ret.iter()).any(|t| any.contains(t.as_str()));
        let library = library_of(crates, &f.path);
        if let Some(krate) = library.filter(|_| holds) {
            // A library's code (a generic instance in the workspace's units) handling one: the
            // library may keep it where no type of the workspace shows (a global dispatcher).
            add(format!("code of `{krate}` handling them (`{}`)", f.path));
        } else if running(&f.path) && holds {
            match f.path.split_once("::{{closure}}") {
                Some((maker, _)) => add(format!("locals of closures in `{maker}`")),
                None => add(format!("`{}`'s locals", f.path)),
            }
        }
    }
    places
}

/// The library (neither the workspace's nor the standard library's crate) whose code the function
/// at `path` is: `registry::register<app::E>` → `registry`. `None` for the workspace's code and
/// impls of its types (`<app::E as lib::Trait>::m`), and for the standard library's (`<T as
/// core::convert::Into<U>>::into`, whose self type is a parameter).
fn library_of<'p>(crates: &HashSet<String>, path: &'p str) -> Option<&'p str> {
    let krate = |p: &'p str| {
        let p = p.trim_start_matches(['<', '&', '(', '[', '*']);
        let p = ["const ", "mut ", "dyn "].iter().fold(p, |p, k| p.strip_prefix(k).unwrap_or(p));
        p.split_once("::").map(|(c, _)| c)
    };
    let found: Vec<&str> = match path.strip_prefix('<').and_then(|inner| inner.split_once(" as ")) {
        Some((ty, tr)) => [krate(ty), krate(tr)].into_iter().flatten().collect(),
        None => krate(path).into_iter().collect(),
    };
    if found.iter().any(|c| crates.contains(*c)) {
        return None;
    }
    found.into_iter().find(|c| !STD_CRATES.contains(c))
}

/// The standard library's crates (and its hash table's): their containers name the type they hold
/// (`Vec<T>`, `HashMap<K, V>`), so values in them are found by type.
const STD_CRATES: [&str; 4] = ["core", "alloc", "std", "hashbrown"];

/// The `Layout` type-erased storage keeps next to the bytes of its values.
const LAYOUT: &str = "core::alloc::layout::Layout";

/// Crates whose type-erased storage may hold values of type `name`, each with the first instance
/// that says so: a generic instance over the type (of a crate other than the type's own and the
/// standard library's) that receives, returns or holds — directly or behind a pointer — a
/// structure keeping a `Layout` without naming the type. `store::Store::new::<app::Pos>` returning
/// a `store::Store { bytes: Vec<u8>, layout: Layout, drop: unsafe fn(*mut u8), .. }` is one;
/// `Vec<app::Pos>` names its type, and a bare `Layout` (computed to allocate) is none.
pub fn erased_storage(model: &Model, name: &str) -> Vec<(String, String)> {
    let Some(own) = name.split("::").next() else { return Vec::new() };
    if maker(name).is_some() {
        return Vec::new(); // captures and async states are not stored by their layout
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for f in &model.functions {
        let krate = f.path.trim_start_matches('<').split("::").next().unwrap_or("");
        if krate == own || STD_CRATES.contains(&krate) || out.iter().any(|(k, _)| k == krate) {
            continue;
        }
        if !f.generics.iter().any(|g| mentions(g, name)) {
            continue;
        }
        let handled = f.params.iter().chain(&f.locals).chain(f.ret.iter());
        if handled.into_iter().any(|t| keeps_layout_erased(model, t, name)) {
            out.push((krate.to_string(), f.path.clone()));
        }
    }
    out
}

/// Whether type `ty`, or what it points to (two pointers deep), is a structure that owns a
/// `Layout` (through its fields, a few levels deep) and does not name type `name`.
fn keeps_layout_erased(model: &Model, ty: &str, name: &str) -> bool {
    let mut at = ty;
    for _ in 0..3 {
        let Some(rec) = model.types.get(at) else { return false };
        if rec.kind != super::model::Kind::Other {
            break;
        }
        match rec.edges.as_slice() {
            [(to, false)] => at = to.as_str(),
            _ => return false,
        }
    }
    if at == LAYOUT || mentions(at, name) {
        return false;
    }
    let mut todo: Vec<(&str, u32)> = vec![(at, 0)];
    let mut seen: HashSet<&str> = HashSet::new();
    while let Some((t, depth)) = todo.pop() {
        if t == LAYOUT {
            return true;
        }
        if depth == 4 || !seen.insert(t) {
            continue;
        }
        let edges = model.types.get(t).map_or(&[][..], |r| r.edges.as_slice());
        todo.extend(edges.iter().filter(|(_, owned)| *owned).map(|(to, _)| (to.as_str(), depth + 1)));
    }
    false
}

/// The function that makes values of a closure's captures or an async fn's state:
/// `app::main` for `app::main::{closure_env#2}`, also inside generic arguments (`app::request`
/// for tokio's `Cell<app::request::{async_fn_env#0}, S>`, a task holding such a future).
fn maker(type_name: &str) -> Option<&str> {
    let at = ["::{closure_env#", "::{async_fn_env#", "::{async_block_env#"]
        .iter()
        .find_map(|m| type_name.find(m))?;
    // Back to where that path starts: an unmatched `<`, or a `,`/` ` outside brackets.
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in type_name[..at].char_indices().rev() {
        match c {
            '>' => depth += 1,
            '<' if depth == 0 => {
                start = i + 1;
                break;
            }
            '<' => depth -= 1,
            ',' | ' ' | '&' | '*' | '(' | '[' if depth == 0 => {
                start = i + 1;
                break;
            }
            _ => {}
        }
    }
    Some(&type_name[start..at])
}

/// Whether values of a type are made inside a `#[ipbp::hot]` async fn's body: its state
/// (`app::f::{async_fn#0}::__ipbp_body::{async_fn_env#0}`) or a closure or async block in it. The
/// plan never redirects code named inside the body (`plan::is_hot_async_part`), so a future in
/// flight finishes in its old code whatever holds it (a task, the `Pin<Box<dyn Future>>` the
/// entry returned, which the vtable rule would match with every other boxed future).
fn made_by_hot_async_body(type_name: &str) -> bool {
    maker(type_name).is_some_and(|m| m.contains("::__ipbp_body"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_maker_of_a_closures_captures_is_found_also_inside_generic_arguments() {
        assert_eq!(maker("app::main::{closure_env#2}"), Some("app::main"));
        assert_eq!(maker("tokio::core::Cell<app::request::{async_fn_env#0}, S>"), Some("app::request"));
        assert_eq!(maker("alloc::vec::Vec<(u8, app::S<u8>::f::{closure_env#0})>"), Some("app::S<u8>::f"));
        assert_eq!(maker("app::Config"), None);
    }
    use crate::layout::compare::changed_types;
    use crate::layout::model::{Field, FnRec, Kind, StaticRec, TypeRec};

    fn strukt(size: u64, fields: &[(&str, u64, &str)]) -> TypeRec {
        let fields: Vec<Field> =
            fields.iter().map(|&(n, o, t)| Field { name: n.into(), offset: o, ty: t.into() }).collect();
        TypeRec {
            kind: Kind::Struct,
            size: Some(size),
            align: Some(8),
            edges: fields.iter().map(|f| (f.ty.clone(), true)).collect(),
            fields,
            tag: None,
            variants: vec![],
        }
    }

    fn function(path: &str, params: &[&str], locals: &[&str], main: bool) -> FnRec {
        FnRec {
            linkage: format!("{path}#sym"),
            path: path.into(),
            params: params.iter().map(|p| p.to_string()).collect(),
            ret: None,
            locals: locals.iter().map(|p| p.to_string()).collect(),
            main,
            generics: vec![],
        }
    }

    /// `app::A` changed; where it lives decides.
    fn layouts(old_extra: impl FnOnce(&mut Model)) -> Layouts {
        let mut old = Model::default();
        old.types.insert("app::A".into(), strukt(8, &[("x", 0, "u64")]));
        old.types.insert("&app::A".into(), TypeRec::pointer_to("app::A"));
        old.types.insert("app::Holder".into(), strukt(8, &[("a", 0, "app::A")]));
        old.types.insert("alloc::vec::Vec<app::A>".into(), strukt(24, &[("len", 16, "usize")]));
        old_extra(&mut old);
        let mut new = Model::default();
        new.types.insert("app::A".into(), strukt(16, &[("x", 0, "u64"), ("y", 8, "u64")]));
        compared(old, new)
    }

    /// The two models of crate `app`, their changed types found.
    fn compared(old: Model, new: Model) -> Layouts {
        let changes = changed_types(&old, &new);
        Layouts {
            old,
            new,
            changes,
            crates: HashSet::from(["app".to_string()]),
            units_with_types: 1,
            ..Default::default()
        }
    }

    fn reasons(l: &Layouts, unchanged: &[&str]) -> Vec<String> {
        let diff =
            Diff { unchanged: unchanged.iter().map(|s| s.to_string()).collect(), ..Default::default() };
        refusals(l, &diff).0
    }

    #[test]
    fn old_values_in_statics_running_frames_and_unchanged_code_are_found() {
        let l = layouts(|m| {
            m.statics.push(StaticRec { path: "app::S".into(), ty: "app::Holder".into(), tls: false })
        });
        let r = reasons(&l, &[]);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].contains("struct `app::A` changed layout (field `y: u64` added, 8 -> 16 bytes)"),
            "{r:?}"
        );
        assert!(r[0].contains("(static `app::S`)"), "{r:?}");

        let l = layouts(|m| m.functions.push(function("app::main", &[], &["alloc::vec::Vec<app::A>"], true)));
        assert!(reasons(&l, &[])[0].contains("`app::main`'s locals"));
        let l = layouts(|m| m.functions.push(function("app::main::{{closure}}", &["&app::A"], &[], false)));
        assert!(reasons(&l, &[]).is_empty(), "no main: a closure of a function that is not running");
        let l = layouts(|m| {
            m.functions.push(function("app::main", &[], &[], true));
            m.functions.push(function("app::main::{{closure}}", &["&app::A"], &[], false));
            m.functions.push(function("app::main::{{closure}}::{{closure}}", &["&app::A"], &[], false));
        });
        let r = reasons(&l, &[]);
        assert!(
            r[0].contains("are live (locals of closures in `app::main`);"),
            "one place, named by its maker: {r:?}"
        );

        // Unchanged code of the workspace holding a value keeps making old ones; borrowing one, or
        // changed code, or another crate's code, does not count.
        let l = layouts(|m| {
            m.functions.push(function("app::keep", &["app::Holder"], &[], false));
            m.functions.push(function("app::print_all", &[], &["app::Holder"], false));
            m.functions.push(function(
                "<app::A as core::clone::Clone>::clone",
                &["&app::A"],
                &["app::A"],
                false,
            ));
            m.functions.push(function("app::peek", &["&app::A"], &[], false));
            m.functions.push(function("alloc::vec::Vec<T>::push", &["app::A"], &[], false));
        });
        let all = ["app::keep#sym", "app::peek#sym", "alloc::vec::Vec<T>::push#sym"];
        let r = reasons(&l, &all);
        assert!(r[0].contains("(unchanged `app::keep`'s parameters or return value)"), "{r:?}");
        // Values made and used in an unchanged frame alone meet only old code.
        assert!(reasons(&l, &["app::print_all#sym"]).is_empty());
        assert!(reasons(&l, &["app::peek#sym"]).is_empty());
        assert!(reasons(&l, &["<app::A as core::clone::Clone>::clone#sym"]).is_empty());
    }

    #[test]
    fn values_behind_dyn_are_held_by_whoever_holds_the_trait_object() {
        let l = layouts(|m| {
            m.vtables.push(("app::A".into(), "app::Job".into()));
            m.types.insert("alloc::boxed::Box<dyn app::Job>".into(), strukt(16, &[]));
            m.statics.push(StaticRec {
                path: "app::JOBS".into(),
                ty: "alloc::boxed::Box<dyn app::Job>".into(),
                tls: true,
            });
        });
        assert!(reasons(&l, &[])[0].contains("thread-local `app::JOBS`"));
    }

    #[test]
    fn a_hot_async_fns_state_is_never_refused_a_plain_ones_is() {
        // Both state machines gain a field; each future is boxed as `dyn Future`, which a
        // running task holds (and so do unchanged functions and a static).
        let changed = |name: &str| {
            let mut old = Model::default();
            old.types.insert(name.into(), strukt(8, &[("n", 0, "u64")]));
            let dyn_future =
                "core::pin::Pin<alloc::boxed::Box<dyn core::future::future::Future<Output=u64>>>";
            old.types.insert(dyn_future.into(), strukt(16, &[]));
            old.types.insert("app::Task".into(), strukt(16, &[("f", 0, dyn_future)]));
            old.vtables.push((name.into(), "core::future::future::Future".into()));
            old.statics.push(StaticRec { path: "app::TASK".into(), ty: "app::Task".into(), tls: false });
            old.functions.push(function("app::run", &[], &["app::Task"], false));
            let mut new = Model::default();
            new.types.insert(name.into(), strukt(16, &[("n", 0, "u64"), ("kept", 8, "u64")]));
            let layouts = compared(old, new);
            assert_eq!(layouts.changes.len(), 1);
            layouts
        };
        let hot = changed("app::job::{async_fn#0}::__ipbp_body::{async_fn_env#0}");
        assert!(reasons(&hot, &["app::run#sym"]).is_empty(), "{:?}", reasons(&hot, &["app::run#sym"]));
        let r = reasons(&changed("app::job::{async_fn_env#0}"), &["app::run#sym"]);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].contains("the state of async fn `app::job`"), "{r:?}");
        assert!(r[0].contains("futures of `app::job` in flight"), "{r:?}");
        assert!(r[0].contains("static `app::TASK`"), "{r:?}");
    }

    #[test]
    fn values_kept_as_bytes_by_their_layout_are_found_through_the_instances_over_their_type() {
        let layout = "core::alloc::layout::Layout";
        let storage = |m: &mut Model, name: &str, ty: &str| {
            m.types
                .insert(name.into(), strukt(56, &[("bytes", 0, "alloc::vec::Vec<u8>"), ("layout", 24, ty)]));
            m.types.insert(format!("&mut {name}"), TypeRec::pointer_to(name));
        };
        let instance = |path: &str, params: &[&str], ret: Option<&str>| FnRec {
            ret: ret.map(String::from),
            generics: vec!["app::A".into()],
            ..function(path, params, &[], false)
        };
        let l = layouts(|m| {
            m.types.insert(layout.into(), strukt(16, &[("size", 0, "usize"), ("align", 8, "usize")]));
            storage(m, "store::Store", layout);
            m.functions.push(instance("store::Store::new", &[], Some("store::Store")));
            m.functions.push(instance("store::Store::push", &["&mut store::Store", "app::A"], None));
        });
        let r = reasons(&l, &[]);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].contains("(values of `app::A` may live in storage of `store`, which keeps them as bytes by their `Layout` (`store::Store::new`))"),
            "{r:?}"
        );

        // Typed containers name the type (their values are found by type); std's are not storage
        // of a crate; a bare `Layout` computed to allocate keeps nothing.
        let l = layouts(|m| {
            m.types.insert(layout.into(), strukt(16, &[("size", 0, "usize"), ("align", 8, "usize")]));
            storage(m, "typed::Table<app::A>", layout);
            m.functions.push(instance("typed::Table<T>::new", &[], Some("typed::Table<app::A>")));
            m.functions.push(instance("smallvec::SmallVec<A>::grow", &[], Some(layout)));
            storage(m, "alloc::rc::Inner", layout);
            m.functions.push(instance("alloc::rc::Rc<T>::new", &[], Some("alloc::rc::Inner")));
        });
        assert!(reasons(&l, &[]).is_empty(), "{:?}", reasons(&l, &[]));
    }

    #[test]
    fn implementations_of_a_library_trait_are_no_frames_that_hold_values() {
        // Bevy's `Component::relationship_accessor`, a default method instantiated for the type.
        let l = layouts(|m| {
            m.functions.push(function(
                "<app::A as lib::Component>::relationship_accessor",
                &[],
                &["app::Holder"],
                false,
            ))
        });
        let unchanged = ["<app::A as lib::Component>::relationship_accessor#sym"];
        assert!(reasons(&l, &unchanged).is_empty(), "{:?}", reasons(&l, &unchanged));
    }

    #[test]
    fn a_dyn_trait_is_matched_with_its_generic_arguments() {
        let fn_unit = "core::ops::function::Fn<()>";
        assert!(mentions_dyn("&dyn core::ops::function::Fn<(), Output=alloc::string::String>", fn_unit));
        assert!(!mentions_dyn("&dyn core::ops::function::Fn<(u8), Output=u64>", fn_unit));
        assert!(!mentions_dyn(
            "&dyn core::ops::function::FnMut<(), Output=u64>",
            "core::ops::function::Fn<()>"
        ));
        assert!(mentions_dyn("alloc::boxed::Box<dyn app::Job, alloc::alloc::Global>", "app::Job"));
        assert!(mentions_dyn("&dyn app::Job<Item=u8>", "app::Job"));
        assert!(!mentions_dyn("&dyn app::Jobs", "app::Job"));
    }

    #[test]
    fn values_behind_dyn_are_found_where_they_can_outlive_the_changed_code() {
        let crates = HashSet::from(["app".to_string()]);
        let places = |m: &Model| dyn_places(m, &crates, &["core::error::Error", "core::fmt::Debug"]);
        let boxed = "alloc::boxed::Box<dyn core::error::Error, alloc::alloc::Global>";
        let result =
            "core::result::Result<u64, alloc::boxed::Box<dyn core::error::Error, alloc::alloc::Global>>";
        let mut m = Model::default();
        m.types.insert(boxed.into(), strukt(16, &[]));
        m.types.insert(result.into(), strukt(16, &[("e", 0, boxed)]));
        m.types.insert("&dyn core::fmt::Debug".into(), strukt(16, &[]));
        // Made by `check`, dropped by `step` (whether their code changed or not: an unchanged
        // function handles old and new vtables alike).
        m.functions.push(function("app::check", &["u64"], &[], false));
        m.functions.last_mut().unwrap().ret = Some(result.into());
        m.functions.push(function("app::step", &["u64"], &[result, "&dyn core::fmt::Debug"], false));
        m.functions.push(function("app::main", &["&dyn core::fmt::Debug"], &[], true));
        assert_eq!(places(&m), Vec::<String>::new());
        // Kept in a static, or in `main`'s locals.
        let mut kept = m.clone();
        kept.types.insert("app::Errors".into(), strukt(24, &[("last", 0, boxed)]));
        kept.statics.push(StaticRec { path: "app::ERRORS".into(), ty: "app::Errors".into(), tls: false });
        kept.functions.push(function("app::main", &[], &[result], true));
        assert_eq!(places(&kept), ["static `app::ERRORS`", "`app::main`'s locals"]);
        // Handed to a library's code, which may keep it.
        let mut handed = m.clone();
        handed.functions.push(function("registry::register<app::E>", &[boxed], &[], false));
        assert_eq!(places(&handed), ["code of `registry` handling them (`registry::register<app::E>`)"]);
        // The standard library's generic code formats, converts and drops them for a call.
        let mut std_code = m.clone();
        for f in [
            "<T as core::convert::Into<U>>::into",
            "<&T as core::fmt::Display>::fmt",
            "alloc::boxed::Box<T>::new",
        ] {
            std_code.functions.push(function(f, &[boxed], &[], false));
        }
        assert_eq!(places(&std_code), Vec::<String>::new());
        let library = |p: &'static str| super::library_of(&crates, p);
        assert_eq!(library("<app::E as tracing_core::Subscriber>::enabled"), None);
        assert_eq!(library("<tracing::Dispatch as core::clone::Clone>::clone"), Some("tracing"));
        assert_eq!(library("<T as core::convert::Into<U>>::into"), None);
        // Inherent impls of the standard library's types over the workspace's (v0 names).
        assert_eq!(library("<[alloc::boxed::Box<dyn app::Animal>]>::iter"), None);
        assert_eq!(library("<core::slice::iter::Iter<alloc::boxed::Box<dyn app::Animal>>>::new"), None);
        assert_eq!(
            library("<registry::Table<alloc::boxed::Box<dyn app::Animal>>>::insert"),
            Some("registry")
        );
        assert_eq!(library("app::step"), None);
    }

    #[test]
    fn a_type_no_old_value_can_meet_is_allowed() {
        let l = layouts(|m| m.functions.push(function("app::step", &["&app::A"], &["app::A"], false)));
        assert!(reasons(&l, &[]).is_empty(), "step changed: its values are new");
    }
}
