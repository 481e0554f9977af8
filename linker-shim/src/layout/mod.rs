//! The layout guard: whether an edit changed the layout of a type that values in the running
//! process still have, and what a changed function receives and returns.
//!
//! A type's layout change changes the DWARF of every codegen unit that describes the type, so every
//! unit that mentions a changed type is a changed unit for the diff. Reading the DWARF of the
//! changed units alone — the base build's kept copies and the new objects — therefore sees every
//! changed type, every static and function that can hold one ([`dwarf`], [`model`]). Patches are
//! cumulative (every unit changed since the process started is a changed unit), so what each
//! unit describes is kept on disk by the unit's content hash ([`cache`]): DWARF is read only for
//! units this edit changed, and the rest of the guard's cost is that of the few thousand types of
//! the workspace the changed units describe. [`compare`] finds the types whose layout
//! differs; [`live`] decides where old values of them can still be, and refuses the patch then.
//!
//! The decision is made from code and types, not from hot points: it holds for a patch that
//! switches hot points and for one that redirects every changed function's entry.

pub mod cache;
pub mod closures;
pub mod compare;
#[cfg(test)]
mod dump;
pub mod dwarf;
pub mod keys;
pub mod live;
pub mod model;
pub mod since;
pub mod vtables;

use crate::diff::Diff;
use crate::error::{Context, Result};
use crate::objects::units::Build;
pub use cache::Cache;
use compare::TypeChange;
use model::Model;
use std::collections::HashSet;

/// Both builds' side of the changed units, and the types whose layout differs.
#[derive(Debug, Default)]
pub struct Layouts {
    /// What the running build's changed units describe.
    pub old: Model,
    /// What the new build's changed units describe.
    pub new: Model,
    /// Types whose layout differs, innermost first.
    pub changes: Vec<TypeChange>,
    /// Crates of the workspace (their functions are the program's own code).
    pub crates: HashSet<String>,
    /// The closures of the changed units, paired across builds.
    pub closures: closures::Closures,
    /// Changed units that describe types in their debug info (none when the build has no debug
    /// info, or line tables only: then layout changes cannot be seen).
    pub units_with_types: usize,
    /// The unit models this patch read from DWARF, being kept in the cache (waited for when
    /// dropped).
    pub writes: cache::Writes,
}

/// What the guard decided for one patch.
#[derive(Debug, Default)]
pub struct Verdict {
    pub layouts: Layouts,
    /// Why the patch cannot be applied (one line per changed type with live old values).
    pub refusals: Vec<String>,
    pub notes: Vec<String>,
    /// Statics and thread-locals holding old values of a changed type (paths).
    pub live_statics: Vec<String>,
    /// Mangled names of functions whose copies in earlier patches keep their code: they receive
    /// or return a type whose layout changed since the newest patch ([`since`]).
    pub kept: HashSet<String>,
    /// The layout digests of the new side, when [`since`] computed them (for this patch's record).
    pub digests: Option<std::collections::HashMap<u64, u64>>,
}

impl Verdict {
    /// Whether a refusal about `symbol` (a static's or thread-local's path, as `plan` names it) is
    /// one of the guard's, which says more: the type and the field that changed.
    pub fn explains(&self, symbol: &str) -> bool {
        self.live_statics
            .iter()
            .any(|p| symbol == p || symbol.strip_prefix(p.as_str()).is_some_and(|r| r.starts_with("::")))
    }
}

/// Reads the layouts of the diff's changed units in both builds and decides.
pub fn guard<'a>(base: &Build<'a>, current: &Build<'a>, diff: &Diff, cache: &Cache) -> Result<Verdict> {
    // No definition changed: no new code can meet an old value (lines moved, comments edited).
    if diff.changed.is_empty() {
        return Ok(Verdict::default());
    }
    let layouts = read(base, current, diff, cache)?;
    let (mut refusals, live_statics) = live::refusals(&layouts, diff);
    refusals.extend(vtables::refusals(base, current, diff, &layouts, cache));
    refusals.extend(keys::placing_impls_changed(diff, &layouts));
    let mut notes = Vec::new();
    if layouts.units_with_types == 0 && !diff.changed.is_empty() {
        notes.push(
            "the build has no type descriptions in its debug info, so layout changes cannot be checked (keep `debug` at least `limited` in the dev profile)".into(),
        );
    }
    Ok(Verdict { layouts, refusals, notes, live_statics, kept: HashSet::new(), digests: None })
}

impl Verdict {
    /// Adds what comparing the build of the newest patch the process holds with the new one
    /// decides ([`since`]): its refusals, the statics they name, the functions kept. The patch's
    /// unit models are in `prev_cache` (the cache of the target directory that made it), the new
    /// build's in `cache`.
    pub fn since_patch<'a>(
        &mut self,
        prev: &since::Previous<'_>,
        builds: (&Build<'a>, &Build<'a>),
        diff: &Diff,
        (prev_cache, cache): (&Cache, &Cache),
    ) {
        let crates = workspace_crates(builds.0, builds.1);
        let cache = (prev_cache.for_crates(&crates), cache.for_crates(&crates));
        // `guard` reads the changed units only when a definition changed.
        let described = (!diff.changed.is_empty()).then_some(&self.layouts.new);
        let closures = (&self.layouts.closures.envs, &self.layouts.closures.added);
        let sides = (described, &self.layouts.old, &self.refusals[..], closures);
        let s = since::check(prev, builds, diff, sides, ((&cache.0, &cache.1), &crates));
        self.refusals.extend(s.refusals);
        self.live_statics.extend(s.statics);
        self.kept.extend(s.kept);
        self.digests = s.digests;
    }
}

/// The cache of unit models for the workspace of these two builds ([`Cache::for_crates`]).
fn unit_cache<'a>(base: &Build<'a>, current: &Build<'a>, cache: &Cache) -> Cache {
    // What a model keeps depends on the workspace's crates, and so does the name a unit's model
    // is kept under.
    cache.for_crates(&workspace_crates(base, current))
}

/// Every crate with a unit in either build, sorted.
pub fn workspace_crates<'a>(base: &Build<'a>, current: &Build<'a>) -> Vec<String> {
    // Sorted as borrowed names, copied once each (a build has hundreds of units, a few crates).
    let mut crates: Vec<&str> =
        base.units.iter().chain(current.units.iter()).map(|u| u.crate_name()).collect();
    crates.sort_unstable();
    crates.dedup();
    crates.into_iter().map(str::to_string).collect()
}

/// The layouts the changed units describe, in both builds.
///
/// Each unit's model is read from `cache` when it holds one for the unit's content hash, and
/// kept there after its DWARF is read otherwise ([`cache`]).
pub fn read<'a>(base: &Build<'a>, current: &Build<'a>, diff: &Diff, cache: &Cache) -> Result<Layouts> {
    // The models read from DWARF, encoded, to be kept.
    let mut to_keep = Vec::new();
    let cache = unit_cache(base, current, cache);
    let mut layouts = Layouts::default();
    for (build, units, model) in [
        (base, &diff.changed_units_base, &mut layouts.old),
        (current, &diff.changed_units_current, &mut layouts.new),
    ] {
        for &u in units {
            let unit = &build.units[u];
            layouts.crates.insert(unit.crate_name().to_string());
            let described = match cache.load_into(unit.hash, model) {
                Some(described) => described,
                None => {
                    let mut one = Model::default();
                    let described = dwarf::read(unit.bytes()?, &mut one)
                        .with_context(|| format!("the debug info of {}", unit.origin()))?;
                    to_keep.push((unit.hash, cache::encode(&one, described)));
                    model.absorb(one);
                    described
                }
            };
            if described > 0 {
                layouts.units_with_types += 1;
            }
        }
    }
    layouts.writes = cache.write_later(to_keep);
    layouts.closures = closures::pair(&layouts.old, &layouts.new, diff);
    closures::keep_instances(&mut layouts.closures, &layouts.old);
    layouts.changes = compare::changed_types_paired(
        &layouts.old,
        &layouts.new,
        &layouts.closures.envs,
        &layouts.closures.renames(),
    );
    Ok(layouts)
}

/// Why the old entry of the changed function `base_name` (the running build's symbol) must keep
/// its code: it is a closure whose number now names another closure, or a generic instance over
/// such a closure's type ([`closures`]). `None` for every other function.
pub fn renumbered_closure<'l>(layouts: &'l Layouts, base_name: &str) -> Option<&'l str> {
    layouts.closures.kept.get(crate::diff::names::canonical(base_name)).map(String::as_str)
}

/// Whether the function at `fn_path` (demangled, without hash: `app::tick`) changed its signature,
/// or receives or returns a type whose layout changed — directly, or inside or behind what it
/// receives (`&mut app::State` where `app::State` gained a field). Code compiled against the old
/// function (its callers, and frames running it) then passes or expects values of the old shape,
/// so the old entry must not lead to the new code. Returns the reason, naming the type and what
/// changed in it; `None` when the function is new, gone, or receives and returns what it did.
///
/// For in-place patching: call it for each changed function whose old entry stays reachable.
///
/// `linkage`, the function's mangled names in the running build and in the new one, picks the
/// instance with that name on each side: instances of one generic function share a path
/// (`alloc::vec::Vec<T,A>::extend_trusted`), and comparing one instance's signature with
/// another's finds a change that is not there. By path when a name is not described.
#[cfg(test)]
pub fn signature_change(layouts: &Layouts, fn_path: &str, linkage: Option<(&str, &str)>) -> Option<String> {
    Signatures::new(layouts).change(fn_path, linkage)
}

/// [`signature_change`] for every changed function of a patch: the types holding or pointing at
/// each changed type are found once (each search follows every type of the changed units).
pub struct Signatures<'l> {
    layouts: &'l Layouts,
    /// For each of `layouts.changes`, in order: the types whose values hold or point at it.
    holders: Vec<HashSet<&'l str>>,
}

impl<'l> Signatures<'l> {
    pub fn new(layouts: &'l Layouts) -> Self {
        let reach = live::Reach::new(&layouts.old);
        let holders = layouts.changes.iter().map(|c| reach.holders(&c.name, false)).collect();
        Signatures { layouts, holders }
    }

    /// See [`signature_change`].
    pub fn change(&self, fn_path: &str, linkage: Option<(&str, &str)>) -> Option<String> {
        fn pick<'m>(model: &'m Model, fn_path: &'m str, name: Option<&str>) -> Option<&'m model::FnRec> {
            let name = name.map(crate::diff::names::canonical);
            name.and_then(|n| model.functions.iter().find(|f| f.linkage == n))
                .or_else(|| model.functions_at(fn_path).next())
        }
        let old = pick(&self.layouts.old, fn_path, linkage.map(|l| l.0))?;
        let new = pick(&self.layouts.new, fn_path, linkage.map(|l| l.1))?;
        let sig = |f: &model::FnRec| {
            let ret = f.ret.as_deref().map(|r| format!(" -> {r}")).unwrap_or_default();
            format!("fn({}){ret}", f.params.join(", "))
        };
        if old.params != new.params || old.ret != new.ret {
            return Some(format!("the signature of `{fn_path}` changed ({} -> {})", sig(old), sig(new)));
        }
        for ty in old.params.iter().chain(old.ret.iter()) {
            for (change, holders) in self.layouts.changes.iter().zip(&self.holders) {
                if holders.contains(ty.as_str()) {
                    let how = if old.ret.as_deref() == Some(ty.as_str()) { "returns" } else { "receives" };
                    return Some(format!("`{fn_path}` {how} `{ty}`, and {}", change.describe()));
                }
            }
        }
        None
    }

    /// Whether a caller of the function at `path` (demangled; `linkage`: its mangled names in the
    /// running build and in the new one) hands it, or gets back from it, a value of a changed type
    /// it did not pair with the function itself: through a parameter or the return type, the
    /// receiver excepted — a trait method's `self` and a closure's captures, which a `dyn` vtable
    /// or `core::fmt`'s argument pairs with the method when the pointer is made (old code pairs
    /// old values with old methods, new code new ones). Returns the reason, naming the parameter's
    /// type and the change. `None` when neither build's changed units describe the function: an
    /// unchanged unit describes no changed type, so its functions receive none.
    ///
    /// For in-place patching: such a function whose old code stays reachable through a pointer made
    /// at run time reads a new value with old code when new code calls through that pointer.
    pub fn forwards(&self, path: &str, linkage: (&str, &str)) -> Option<String> {
        self.handed(path, linkage, true)
    }

    /// [`Self::forwards`], the receiver included: what a caller hands the function through a
    /// bare `fn` pointer to a trait method (`let f: fn(&Mode) -> String = <Mode as
    /// Describe>::describe;`), which pairs it with no receiver.
    pub fn forwards_with_receiver(&self, path: &str, linkage: (&str, &str)) -> Option<String> {
        self.handed(path, linkage, false)
    }

    fn handed(&self, path: &str, linkage: (&str, &str), skip_receiver: bool) -> Option<String> {
        let find = |model: &'l Model, name: &str| {
            let name = crate::diff::names::canonical(name);
            model.functions.iter().find(|f| f.linkage == name)
        };
        // An unchanged function can be renamed (its symbol hash covers a changed type): the new
        // build's description under its new name; by path when neither build names it so.
        let (old, new) = (find(&self.layouts.old, linkage.0), find(&self.layouts.new, linkage.1));
        let at_path = || {
            let mut described =
                self.layouts.old.functions_at(path).chain(self.layouts.new.functions_at(path));
            described.next()
        };
        let old = old.or(new).or_else(at_path)?;
        // `<T as Trait>::method`, a closure, and the `Fn*` traits' methods a `dyn Fn*` vtable
        // holds (`core::ops::function::FnOnce::call_once` of a closure, its `self` first).
        let receiver = skip_receiver
            && (path.starts_with('<') && path.contains(" as ")
                || path.contains("{closure")
                || path.starts_with("core::ops::function::Fn"));
        let skip = usize::from(receiver);
        if new
            .is_some_and(|n| n.params.iter().skip(skip).ne(old.params.iter().skip(skip)) || n.ret != old.ret)
        {
            return Some(format!("the signature of `{path}` changed"));
        }
        for ty in old.params.iter().skip(skip).chain(old.ret.iter()) {
            for (change, holders) in self.layouts.changes.iter().zip(&self.holders) {
                if holders.contains(ty.as_str()) {
                    let how = if old.ret.as_deref() == Some(ty.as_str()) { "returns" } else { "receives" };
                    return Some(format!("`{path}` {how} `{ty}`, and {}", change.describe()));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::model::{Field, FnRec, Kind, TypeRec};
    use super::*;

    fn model(point_fields: &[(&str, u64)], params: &[&str]) -> Model {
        let mut m = Model::default();
        let fields: Vec<Field> = point_fields
            .iter()
            .map(|&(n, o)| Field { name: n.into(), offset: o, ty: "u32".into() })
            .collect();
        m.types.insert(
            "app::Point".into(),
            TypeRec {
                kind: Kind::Struct,
                size: Some(4 * fields.len() as u64),
                align: Some(4),
                edges: vec![("u32".into(), true)],
                fields,
                tag: None,
                variants: vec![],
            },
        );
        m.types.insert("&mut app::Point".into(), TypeRec::pointer_to("app::Point"));
        m.functions.push(FnRec {
            linkage: "_ZN3app4step17h0E".into(),
            path: "app::step".into(),
            params: params.iter().map(|p| p.to_string()).collect(),
            ret: Some("u64".into()),
            locals: vec![],
            main: false,
            generics: vec![],
        });
        m
    }

    fn layouts(old: Model, new: Model) -> Layouts {
        let changes = compare::changed_types(&old, &new);
        Layouts { old, new, changes, ..Default::default() }
    }

    #[test]
    fn signature_changes_name_the_type_and_field() {
        let same =
            layouts(model(&[("x", 0)], &["&mut app::Point"]), model(&[("x", 0)], &["&mut app::Point"]));
        assert_eq!(signature_change(&same, "app::step", None), None);
        assert_eq!(signature_change(&same, "app::other", None), None);

        let grown = layouts(
            model(&[("x", 0)], &["&mut app::Point"]),
            model(&[("x", 0), ("y", 4)], &["&mut app::Point"]),
        );
        assert_eq!(
            signature_change(&grown, "app::step", None).as_deref(),
            Some("`app::step` receives `&mut app::Point`, and struct `app::Point` changed layout (field `y: u32` added, 4 -> 8 bytes)")
        );

        let retyped = layouts(model(&[("x", 0)], &["&mut app::Point"]), model(&[("x", 0)], &["u8"]));
        assert_eq!(
            signature_change(&retyped, "app::step", None).as_deref(),
            Some("the signature of `app::step` changed (fn(&mut app::Point) -> u64 -> fn(u8) -> u64)")
        );
    }

    /// A method's receiver is paired with it where its address is taken (a vtable, `fmt`'s
    /// argument): only what a caller hands it besides counts; a closure's captures are its receiver.
    #[test]
    fn what_callers_hand_a_function_besides_its_receiver_is_what_it_forwards() {
        let mut old = model(&[("x", 0)], &["&mut app::Point"]);
        let mut new = model(&[("x", 0), ("y", 4)], &["&mut app::Point"]);
        let functions = [
            ("<app::Point as core::fmt::Debug>::fmt", &["&app::Point", "&mut core::fmt::Formatter"][..]),
            ("<app::Printer as app::Handler>::handle", &["&app::Printer", "&mut app::Point"][..]),
            ("app::main::{closure#0}", &["&app::main::{closure_env#0}", "&mut app::Point"][..]),
            ("app::main::{closure#1}", &["&mut app::Point"][..]),
        ];
        for m in [&mut old, &mut new] {
            for (path, params) in functions {
                m.functions.push(FnRec {
                    linkage: path.into(),
                    path: path.into(),
                    params: params.iter().map(|p| p.to_string()).collect(),
                    ret: None,
                    locals: vec![],
                    main: false,
                    generics: vec![],
                });
            }
        }
        let l = layouts(old, new);
        let s = Signatures::new(&l);
        let forwards = |path: &str| s.forwards(path, (path, path));
        assert_eq!(forwards("<app::Point as core::fmt::Debug>::fmt"), None, "only its receiver");
        assert_eq!(forwards("app::main::{closure#1}"), None, "only its captures");
        assert_eq!(
            forwards("<app::Printer as app::Handler>::handle").as_deref(),
            Some("`<app::Printer as app::Handler>::handle` receives `&mut app::Point`, and struct `app::Point` changed layout (field `y: u32` added, 4 -> 8 bytes)")
        );
        assert!(forwards("app::main::{closure#0}").is_some());
        assert!(
            s.forwards("app::step", ("_ZN3app4step17h0E", "_ZN3app4step17h1E")).is_some(),
            "by its old name"
        );
        assert!(
            s.forwards("app::step", ("_ZN3app4step17h2E", "_ZN3app4step17h0E")).is_some(),
            "by its new name"
        );
        assert!(s.forwards("app::step", ("h2", "h3")).is_some(), "by its path");
        assert_eq!(forwards("app::elsewhere"), None, "not described: receives no changed type");
    }

    #[test]
    fn instances_sharing_a_path_are_told_apart_by_their_names() {
        // Two instances of `app::step` (a generic function): `<u8>` first on one side, second on
        // the other. By path they seem to change signature; by name each kept its own.
        let instance = |linkage: &str, param: &str| FnRec {
            linkage: linkage.into(),
            path: "app::step".into(),
            params: vec![param.into()],
            ret: None,
            locals: vec![],
            main: false,
            generics: vec![param.into()],
        };
        let mut old = Model::default();
        old.functions.extend([instance("step_u8", "u8"), instance("step_u16", "u16")]);
        let mut new = Model::default();
        new.functions.extend([instance("step_u16.llvm.42", "u16"), instance("step_u8", "u8")]);
        let l = layouts(old, new);
        assert!(signature_change(&l, "app::step", None).is_some(), "by path: the first of each side");
        assert_eq!(signature_change(&l, "app::step", Some(("step_u16", "step_u16.llvm.42"))), None);
        assert_eq!(signature_change(&l, "app::step", Some(("step_u8", "step_u8"))), None);
    }
}
