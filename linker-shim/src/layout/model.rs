//! What the layout guard knows about one build: the types its changed codegen units describe,
//! the statics and thread-locals they define, and their functions' parameters and locals — all
//! by name, so two builds can be compared and a type followed from one unit to another.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Struct,
    /// A Rust enum with data (a `variant_part`), or a state machine of an `async fn`.
    Enum,
    /// A C-like enum (`DW_TAG_enumeration_type`).
    CEnum,
    Union,
    /// Pointers, arrays, typedefs and base types: no layout of their own to compare, only what
    /// they lead to.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u64,
    /// The field type's qualified name (`u32`, `&layouts::Point`, `alloc::vec::Vec<…>`).
    pub ty: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// The variant's name (`Line`; `Suspend0` in an async state machine).
    pub name: String,
    /// Its discriminant value (`None`: the variant a niche layout stores without one).
    pub discr: Option<u64>,
    /// Its fields, at their offsets inside the enum.
    pub fields: Vec<Field>,
}

#[derive(Debug, Clone)]
pub struct TypeRec {
    pub kind: Kind,
    pub size: Option<u64>,
    pub align: Option<u64>,
    /// A struct's or union's fields (an enum's are in its variants).
    pub fields: Vec<Field>,
    /// An enum's tag: where it is and its type.
    pub tag: Option<Field>,
    pub variants: Vec<Variant>,
    /// The types a value of this type contains or points at: `(name, owned)`. Fields, variants'
    /// fields, array elements and generic arguments are owned; a pointer's target is not.
    pub edges: Vec<(String, bool)>,
}

#[cfg(test)]
impl TypeRec {
    /// A pointer to `to` (for tests that build a model by hand).
    pub fn pointer_to(to: &str) -> TypeRec {
        TypeRec {
            kind: Kind::Other,
            size: Some(8),
            align: Some(8),
            fields: vec![],
            tag: None,
            variants: vec![],
            edges: vec![(to.into(), false)],
        }
    }
}

/// A static or thread-local.
#[derive(Debug, Clone)]
pub struct StaticRec {
    /// As a user writes it (`app::CONFIG`; a `thread_local!`'s key, not its hidden storage).
    pub path: String,
    pub ty: String,
    pub tls: bool,
}

/// A function with code in one of the units.
#[derive(Debug, Clone)]
pub struct FnRec {
    pub linkage: String,
    /// Demangled, without the hash (`app::main::{{closure}}`).
    pub path: String,
    /// Parameter types, in order.
    pub params: Vec<String>,
    /// `None` for `()` (or a function that never returns).
    pub ret: Option<String>,
    /// Types of its locals, including those of calls inlined into it.
    pub locals: Vec<String>,
    /// `DW_AT_main_subprogram`: the program's `main`.
    pub main: bool,
    /// An instance's generic arguments (its template type parameters): `["layouts::Pos"]` for
    /// `store::Store::new::<layouts::Pos>`.
    pub generics: Vec<String>,
}

/// A closure's or async block's function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosureFn {
    /// `app::main::{closure#2}`, `app::main::{async_block#0}`.
    pub path: String,
    /// Its symbol.
    pub linkage: String,
}

/// Type names are hashed with xxh3 ([`NameHasher`]): loading a patch's unit models looks up every
/// type of every changed unit, several times faster than with SipHash. The names come from our
/// own builds' debug info: hash flooding is not a concern.
pub type Names = std::hash::BuildHasherDefault<NameHasher>;

/// One xxh3 of a name's bytes. A `str` is hashed as its bytes then a `0xff` byte: that byte is
/// mixed in without a second xxh3 (a bijection of the hash, so it adds no collision).
#[derive(Default)]
pub struct NameHasher(u64);

impl std::hash::Hasher for NameHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = self.0.rotate_left(5) ^ xxhash_rust::xxh3::xxh3_64(bytes);
    }

    fn write_u8(&mut self, byte: u8) {
        self.0 = self.0.rotate_left(5) ^ u64::from(byte);
    }
}

/// One build's side of the comparison.
#[derive(Debug, Default, Clone)]
pub struct Model {
    /// By qualified name (namespace path + name).
    pub types: HashMap<String, TypeRec, Names>,
    pub statics: Vec<StaticRec>,
    pub functions: Vec<FnRec>,
    /// Names of the structs that are an enum's variants (compared as part of their enum).
    pub variant_types: std::collections::HashSet<String>,
    /// Closures and async blocks with code in the units, by their DWARF path
    /// (`app::main::{closure#2}`, generic arguments left out) and symbol: rustc numbers them in
    /// source order within their function, so the number is no identity across builds
    /// ([`super::closures`]).
    pub closures: Vec<ClosureFn>,
    /// `(type, trait)` for every vtable: values of the type can hide behind `dyn trait`. The trait
    /// is its path with the generic arguments the vtable's name gives (`core::ops::function::Fn<()>`):
    /// a closure behind `dyn Fn(u8)` is never behind `dyn Fn() -> String`.
    pub vtables: Vec<(String, String)>,
}

/// `<app::Job as app::Task<u8>>::{vtable}` → `("app::Job", "app::Task<u8>")`.
pub fn vtable_of(name: &str) -> Option<(String, String)> {
    let inner = name.strip_prefix('<')?.strip_suffix(">::{vtable}")?;
    let mut depth = 0i32;
    for (at, c) in inner.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' => depth -= 1,
            ' ' if depth == 0 && inner[at..].starts_with(" as ") => {
                let ty = &inner[..at];
                let tr = &inner[at + 4..];
                return Some((ty.to_string(), tr.to_string()));
            }
            _ => {}
        }
    }
    None
}

impl Model {
    /// Adds what another unit describes. A type described by several units is the same type
    /// (anonymous ones are named by their layout: `dwarf`), so the first description is kept.
    pub fn absorb(&mut self, unit: Model) {
        if self.is_empty() {
            // The first unit of a side: its model is the side's, as it is.
            *self = unit;
            return;
        }
        // The larger table takes the smaller one's entries (the first unit's record of a type
        // wins either way): a unit read after a small one would otherwise be re-inserted type by
        // type (0.3 ms for a thousand types on web, P11).
        if unit.types.len() > self.types.len() {
            let earlier = std::mem::replace(&mut self.types, unit.types);
            self.types.extend(earlier);
        } else {
            for (name, rec) in unit.types {
                self.types.entry(name).or_insert(rec);
            }
        }
        self.statics.extend(unit.statics);
        self.functions.extend(unit.functions);
        self.variant_types.extend(unit.variant_types);
        self.vtables.extend(unit.vtables);
        self.closures.extend(unit.closures);
    }

    fn is_empty(&self) -> bool {
        self.types.is_empty()
            && self.statics.is_empty()
            && self.functions.is_empty()
            && self.variant_types.is_empty()
            && self.closures.is_empty()
            && self.vtables.is_empty()
    }

    /// The functions of the model with this path.
    pub fn functions_at<'m>(&'m self, path: &'m str) -> impl Iterator<Item = &'m FnRec> + 'm {
        self.functions.iter().filter(move |f| f.path == path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absorbing_units_keeps_the_first_description_of_a_type() {
        let unit = |size: u64, f: &str| {
            let mut m = Model::default();
            let mut t = TypeRec::pointer_to("u8");
            t.size = Some(size);
            m.types.insert("app::T".into(), t);
            m.types.insert(format!("app::{f}"), TypeRec::pointer_to("u8"));
            m.statics.push(StaticRec { path: format!("app::S{f}"), ty: "app::T".into(), tls: false });
            m
        };
        let mut all = Model::default();
        all.absorb(unit(1, "a"));
        all.absorb(unit(2, "b"));
        assert_eq!(all.types["app::T"].size, Some(1));
        assert!(all.types.contains_key("app::a") && all.types.contains_key("app::b"));
        let statics: Vec<&str> = all.statics.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(statics, ["app::Sa", "app::Sb"]);
    }

    #[test]
    fn vtable_names_name_a_type_and_a_trait() {
        assert_eq!(
            super::vtable_of("<app::main::{closure_env#2} as core::ops::function::Fn<()>>::{vtable}"),
            Some(("app::main::{closure_env#2}".into(), "core::ops::function::Fn<()>".into()))
        );
        assert_eq!(
            super::vtable_of("<a::W<a::X as b::Y> as core::fmt::Debug>::{vtable}").map(|v| v.1),
            Some("core::fmt::Debug".into())
        );
    }
}
