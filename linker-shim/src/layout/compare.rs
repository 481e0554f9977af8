//! The exact comparison of two builds' types: which types changed layout, and how, in words.
//!
//! A type changed when its size or alignment differs, a field is added, removed, moved or retyped
//! (a field is known by name; a renamed field — gone under one name, present under another at the
//! same offset with the same type — is not a change), or an enum's tag or variants differ. Types
//! are matched by qualified name, and a field's type by its name: a type that only *contains* a
//! changed type (`Mutex<app::Config>`, `Vec<app::Item>`) is changed too, but is not reported on its
//! own; the innermost type is.

use super::model::{Field, Kind, Model, TypeRec, Variant};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// One type whose layout differs between the builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeChange {
    /// Qualified name.
    pub name: String,
    pub kind: Kind,
    /// What differs, most telling first (`field `retries: u32` added`, `16 -> 24 bytes`).
    pub details: Vec<String>,
}

impl TypeChange {
    /// `struct `app::Config``, `closure `app::main::{closure#2}`'s captures`,
    /// `async fn `app::task`'s state`.
    pub fn subject(&self) -> String {
        // Generic arguments may name closures too (`tokio::…::Cell<app::f::{async_fn_env#0}, S>`
        // is a struct): only the path before them says what the type is.
        let (path, args) = super::closures::split_args(&self.name);
        if let Some((owner, rest)) = path.rsplit_once("::{closure_env#") {
            let n = rest.trim_end_matches('}');
            return format!("the captures of closure `{owner}::{{closure#{n}}}{args}`");
        }
        if let Some((owner, _)) = path.split_once("::{async_fn_env#") {
            return format!("the state of async fn `{owner}`");
        }
        if let Some((owner, _)) = path.split_once("::{async_block_env#") {
            return format!("the state of an async block in `{owner}`");
        }
        let word = match self.kind {
            Kind::Enum | Kind::CEnum => "enum",
            Kind::Union => "union",
            _ => "struct",
        };
        format!("{word} `{}`", self.name)
    }

    /// `struct `app::Config` changed layout (field `retries: u32` added, 8 -> 16 bytes)`.
    pub fn describe(&self) -> String {
        format!("{} changed layout ({})", self.subject(), self.details.join(", "))
    }
}

/// Every type both builds describe whose layout differs, innermost first: a change explained by
/// a changed field type alone is left out.
#[cfg(test)]
pub fn changed_types(old: &Model, new: &Model) -> Vec<TypeChange> {
    changed_types_paired(old, new, &HashMap::new(), &HashMap::new())
}

/// Whether two descriptions of a type have the same layout.
pub fn same_layout(o: &TypeRec, n: &TypeRec) -> bool {
    o.kind == n.kind && own_differences(o, n).is_empty() && size_and_alignment(o, n).is_empty()
}

/// [`changed_types`], where the types named in `paired` (old name → the new name of the same
/// type, or `None`: no counterpart) are compared with that counterpart instead of by name
/// (closures' captures: see [`super::closures`]), and types named after those in `renames` (a
/// part of `paired`) are compared with the type the new build names after their counterparts.
pub fn changed_types_paired(
    old: &Model,
    new: &Model,
    paired: &HashMap<String, Option<String>>,
    renames: &HashMap<String, Option<String>>,
) -> Vec<TypeChange> {
    let mut candidates = Vec::new();
    for (name, o) in &old.types {
        if o.kind == Kind::Other || old.variant_types.contains(name) {
            continue;
        }
        let counterpart = match paired.get(name) {
            Some(Some(other)) => new.types.get(other),
            Some(None) => None,
            None if renames.is_empty() => new.types.get(name),
            None => match renamed(name, renames) {
                Some(Some(other)) => new.types.get(&other),
                Some(None) => None,
                None => new.types.get(name),
            },
        };
        let Some(n) = counterpart else { continue };
        // Fields of types named after renumbered closures, as the new build names them.
        let o: Cow<TypeRec> = match renames.is_empty() {
            true => Cow::Borrowed(o),
            false => match renamed_fields(o, renames) {
                Some(Some(r)) => Cow::Owned(r),
                Some(None) => continue,
                None => Cow::Borrowed(o),
            },
        };
        // Most types are described alike on both sides: nothing to tell.
        if identical(&o, n) {
            continue;
        }
        let details = own_differences(&o, n);
        let resized = size_and_alignment(&o, n);
        if !details.is_empty() || !resized.is_empty() {
            candidates.push((name, o, n, details, resized));
        }
    }
    let changed: HashSet<&str> = candidates.iter().map(|c| c.0.as_str()).collect();
    let mut out = Vec::new();
    for (name, o, n, mut details, resized) in candidates {
        // A generic instance over a changed type (`Mutex<app::Config>`) changes with it.
        if let Some(args) = name.find('<').map(|at| &name[at..]) {
            if changed.iter().any(|c| mentions(args, c)) {
                continue;
            }
        }
        // A size change with no field of its own changed, explained by a field whose type
        // changed, is that field type's change.
        if details.is_empty() {
            let explained = o
                .fields
                .iter()
                .chain(o.variants.iter().flat_map(|v| &v.fields))
                .chain(n.fields.iter())
                .any(|f| changed.contains(f.ty.as_str()) || changed.iter().any(|c| mentions(&f.ty, c)));
            if explained {
                continue;
            }
        }
        details.extend(resized);
        out.push(TypeChange { name: name.clone(), kind: o.kind, details });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The new name of a type that mentions paired closures whose numbers changed
/// (`tokio::…::Cell<app::run::{async_block_env#0}, S>` → `…{async_block_env#1}…`): `None` when
/// it mentions none, `Some(None)` when one of them has no counterpart. All are replaced in one
/// pass, so closures that swapped numbers are each replaced once.
fn renamed(name: &str, paired: &HashMap<String, Option<String>>) -> Option<Option<String>> {
    let renumbered = || paired.iter().filter(|(o, n)| n.as_ref() != Some(*o));
    if !renumbered().any(|(o, _)| name.contains(o.as_str())) {
        return None;
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    let mut replaced = false;
    // A path starts where no other one goes on (`xapp::run::…` and `web::app::run::…` are not
    // `app::run::…`).
    let mut starts = true;
    'scan: while !rest.is_empty() {
        if starts {
            for (old, new) in renumbered() {
                if let Some(after) = rest.strip_prefix(old.as_str()) {
                    let Some(new) = new else { return Some(None) };
                    out.push_str(new);
                    rest = after;
                    replaced = true;
                    continue 'scan;
                }
            }
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
        starts = !(c.is_alphanumeric() || c == '_' || c == ':');
    }
    replaced.then_some(Some(out))
}

/// `o` with the types of its fields and tag as the new build names them ([`renamed`]): `None`
/// when none mentions a renumbered closure, `Some(None)` when one has no counterpart.
fn renamed_fields(o: &TypeRec, paired: &HashMap<String, Option<String>>) -> Option<Option<TypeRec>> {
    let fields = o.fields.iter().chain(&o.tag).chain(o.variants.iter().flat_map(|v| &v.fields));
    let types: Vec<Option<Option<String>>> = fields.map(|f| renamed(&f.ty, paired)).collect();
    if types.iter().all(Option::is_none) {
        return None;
    }
    if types.contains(&Some(None)) {
        return Some(None);
    }
    let mut out = o.clone();
    let all =
        out.fields.iter_mut().chain(&mut out.tag).chain(out.variants.iter_mut().flat_map(|v| &mut v.fields));
    for (f, ty) in all.zip(types) {
        if let Some(Some(ty)) = ty {
            f.ty = ty;
        }
    }
    Some(Some(out))
}

/// Whether two descriptions are the same in everything [`own_differences`] and
/// [`size_and_alignment`] compare (then both find nothing).
fn identical(o: &TypeRec, n: &TypeRec) -> bool {
    o.size == n.size
        && o.align == n.align
        && o.fields == n.fields
        && o.tag == n.tag
        && o.variants == n.variants
}

/// Whether type name `ty` mentions type `name` as a whole path.
pub fn mentions(ty: &str, name: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == ':' || c == '#' || c == '{' || c == '}';
    ty.match_indices(name).any(|(at, _)| {
        let before = ty[..at].chars().next_back();
        let after = ty[at + name.len()..].chars().next();
        before.is_none_or(|c| !ident(c)) && after.is_none_or(|c| !ident(c))
    })
}

fn size_and_alignment(o: &TypeRec, n: &TypeRec) -> Vec<String> {
    let mut out = Vec::new();
    if o.size != n.size {
        out.push(format!("{} -> {} bytes", o.size.unwrap_or(0), n.size.unwrap_or(0)));
    }
    if o.align != n.align && o.align.is_some() && n.align.is_some() {
        out.push(format!("alignment {} -> {}", o.align.unwrap_or(0), n.align.unwrap_or(0)));
    }
    out
}

/// Differences in the type's own fields, tag and variants.
fn own_differences(o: &TypeRec, n: &TypeRec) -> Vec<String> {
    let mut out = fields(&o.fields, &n.fields, "");
    match (&o.tag, &n.tag) {
        (Some(a), Some(b)) if a.ty != b.ty => out.push(format!("tag retyped {} -> {}", a.ty, b.ty)),
        (Some(a), Some(b)) if a.offset != b.offset => {
            out.push(format!("tag moved (offset {} -> {})", a.offset, b.offset))
        }
        (None, Some(_)) => out.push("tag added".into()),
        (Some(_), None) => out.push("tag removed".into()),
        _ => {}
    }
    for v in &o.variants {
        match n.variants.iter().find(|w| w.name == v.name) {
            None => out.push(format!("variant `{}` removed", v.name)),
            Some(w) => {
                if v.discr != w.discr {
                    let show = |d: Option<u64>| d.map_or("none".into(), |d| d.to_string());
                    out.push(format!(
                        "variant `{}` discriminant {} -> {}",
                        v.name,
                        show(v.discr),
                        show(w.discr)
                    ));
                }
                out.extend(fields(&v.fields, &w.fields, &format!("variant `{}`: ", v.name)));
            }
        }
    }
    for w in &n.variants {
        if !o.variants.iter().any(|v| v.name == w.name) {
            out.push(format!("variant `{}` added", variant_sig(w)));
        }
    }
    out
}

fn variant_sig(v: &Variant) -> String {
    if v.fields.is_empty() {
        return v.name.clone();
    }
    let tuple = v.fields.iter().all(|f| f.name.starts_with("__"));
    let tys: Vec<String> =
        v.fields.iter().map(|f| if tuple { f.ty.clone() } else { format!("{}: {}", f.name, f.ty) }).collect();
    if tuple {
        format!("{}({})", v.name, tys.join(", "))
    } else {
        format!("{} {{ {} }}", v.name, tys.join(", "))
    }
}

/// Field differences: by name; a field gone under one name and present under another at the same
/// offset with the same type is a rename, not a change.
fn fields(old: &[Field], new: &[Field], prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut later = Vec::new();
    let mut gone: Vec<&Field> = Vec::new();
    for f in old {
        match new.iter().find(|g| g.name == f.name) {
            None => gone.push(f),
            Some(g) => {
                if f.ty != g.ty {
                    later.push(format!("{prefix}field `{}` retyped {} -> {}", f.name, f.ty, g.ty));
                } else if f.offset != g.offset {
                    later.push(format!(
                        "{prefix}field `{}` moved (offset {} -> {})",
                        f.name, f.offset, g.offset
                    ));
                }
            }
        }
    }
    let mut came: Vec<&Field> = new.iter().filter(|g| !old.iter().any(|f| f.name == g.name)).collect();
    gone.retain(|f| match came.iter().position(|g| g.offset == f.offset && g.ty == f.ty) {
        Some(i) => {
            came.remove(i);
            false
        }
        None => true,
    });
    for g in came {
        out.push(format!("{prefix}field `{}: {}` added", g.name, g.ty));
    }
    for f in gone {
        out.push(format!("{prefix}field `{}: {}` removed", f.name, f.ty));
    }
    out.extend(later);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, offset: u64, ty: &str) -> Field {
        Field { name: name.into(), offset, ty: ty.into() }
    }

    #[test]
    fn a_change_names_its_type_also_when_generic_arguments_name_closures() {
        let subject =
            |name: &str| TypeChange { name: name.into(), kind: Kind::Struct, details: vec![] }.subject();
        assert_eq!(
            subject("tokio::core::Cell<app::request::{async_fn_env#0}, S>"),
            "struct `tokio::core::Cell<app::request::{async_fn_env#0}, S>`"
        );
        assert_eq!(
            subject("tokio::spawn_inner::{closure_env#0}<app::request::{async_fn_env#0}>"),
            "the captures of closure `tokio::spawn_inner::{closure#0}<app::request::{async_fn_env#0}>`"
        );
        assert_eq!(subject("app::main::{closure_env#2}"), "the captures of closure `app::main::{closure#2}`");
        assert_eq!(subject("app::job::{async_fn_env#0}"), "the state of async fn `app::job`");
    }

    #[test]
    fn types_named_after_renumbered_closures_are_named_as_the_new_build_names_them() {
        let env = |n: u32| format!("app::run::{{async_block_env#{n}}}");
        // #0 and #1 swapped; #2 edited or removed; #3 kept its number.
        let paired: HashMap<String, Option<String>> =
            [(env(0), Some(env(1))), (env(1), Some(env(0))), (env(2), None), (env(3), Some(env(3)))]
                .into_iter()
                .collect();
        let cell = |a: u32, b: u32| format!("tokio::Cell<{}, (Stage<{}>, u8)>", env(a), env(b));
        assert_eq!(renamed(&cell(0, 1), &paired), Some(Some(cell(1, 0))));
        assert_eq!(renamed(&cell(0, 3), &paired), Some(Some(cell(1, 3))));
        assert_eq!(renamed(&cell(0, 2), &paired), Some(None));
        assert_eq!(renamed(&cell(3, 3), &paired), None);
        assert_eq!(renamed("app::Config", &paired), None);
        // Only whole paths: not inside another crate's or module's.
        assert_eq!(renamed(&format!("Vec<x{}>", env(0)), &paired), None);
        assert_eq!(renamed(&format!("Vec<web::{}>", env(0)), &paired), None);
        assert_eq!(renamed(&format!("&{}", env(2)), &paired), Some(None));
        // `#1` is not a prefix of `#10`.
        let ten = format!("Vec<{}>", env(10));
        assert_eq!(renamed(&ten, &paired), None);
    }

    fn strukt(size: u64, fields: Vec<Field>) -> TypeRec {
        TypeRec {
            kind: Kind::Struct,
            size: Some(size),
            align: Some(4),
            edges: fields.iter().map(|f| (f.ty.clone(), true)).collect(),
            fields,
            tag: None,
            variants: vec![],
        }
    }

    fn model(types: Vec<(&str, TypeRec)>) -> Model {
        Model { types: types.into_iter().map(|(n, t)| (n.to_string(), t)).collect(), ..Default::default() }
    }

    #[test]
    fn added_retyped_swapped_and_renamed_fields() {
        let base = vec![field("x", 0, "u32"), field("y", 4, "u32")];
        let old = model(vec![("a::P", strukt(8, base.clone()))]);
        let cases = [
            (
                strukt(16, vec![field("x", 0, "u32"), field("y", 4, "u32"), field("z", 8, "u64")]),
                Some("field `z: u64` added, 8 -> 16 bytes"),
            ),
            (
                strukt(8, vec![field("x", 0, "u32"), field("y", 4, "f32")]),
                Some("field `y` retyped u32 -> f32"),
            ),
            (
                strukt(8, vec![field("y", 0, "u32"), field("x", 4, "u32")]),
                Some("field `x` moved (offset 0 -> 4), field `y` moved (offset 4 -> 0)"),
            ),
            (strukt(8, vec![field("x", 0, "u32"), field("why", 4, "u32")]), None),
        ];
        for (new, expected) in cases {
            let got = changed_types(&old, &model(vec![("a::P", new)]));
            assert_eq!(got.first().map(|c| c.details.join(", ")), expected.map(String::from));
        }
    }

    #[test]
    fn a_container_of_a_changed_type_is_not_reported_itself() {
        let old = model(vec![
            ("a::C", strukt(8, vec![field("x", 0, "u32")])),
            ("M<a::C>", strukt(12, vec![field("lock", 0, "u32"), field("data", 4, "UnsafeCell<a::C>")])),
            ("UnsafeCell<a::C>", strukt(8, vec![field("value", 0, "a::C")])),
        ]);
        let new = model(vec![
            ("a::C", strukt(16, vec![field("x", 0, "u32"), field("y", 8, "u64")])),
            ("M<a::C>", strukt(24, vec![field("lock", 0, "u32"), field("data", 8, "UnsafeCell<a::C>")])),
            ("UnsafeCell<a::C>", strukt(16, vec![field("value", 0, "a::C")])),
        ]);
        let got = changed_types(&old, &new);
        let names: Vec<&str> = got.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a::C"]);
        assert!(mentions("M<a::C>", "a::C") && !mentions("a::CC", "a::C"));
    }
}
