//! Unit tests of closure pairing (`super`).

use super::*;
use crate::layout::model::{ClosureFn, Field, Kind};

fn env(fields: &[(&str, &str)]) -> TypeRec {
    let fields: Vec<Field> = fields
        .iter()
        .enumerate()
        .map(|(i, &(n, t))| Field { name: n.into(), offset: 8 * i as u64, ty: t.into() })
        .collect();
    TypeRec {
        kind: Kind::Struct,
        size: Some(8 * fields.len() as u64),
        align: Some(8),
        edges: fields.iter().map(|f| (f.ty.clone(), true)).collect(),
        fields,
        tag: None,
        variants: vec![],
    }
}

/// `main`'s closures in order: (captures, code).
fn build(closures: &[(&[(&str, &str)], u128)], side: usize, diff: &mut Diff) -> Model {
    let mut m = Model::default();
    for (n, (captures, body)) in closures.iter().enumerate() {
        let linkage = format!("main-closure-{side}-{n}");
        m.types.insert(format!("app::main::{{closure_env#{n}}}"), env(captures));
        m.closures.push(ClosureFn { path: format!("app::main::{{closure#{n}}}"), linkage: linkage.clone() });
        diff.closure_bodies[side].insert(linkage, *body);
    }
    m
}

fn paired(old: &[(&[(&str, &str)], u128)], new: &[(&[(&str, &str)], u128)]) -> Closures {
    let mut diff = Diff::default();
    let (o, n) = (build(old, 0, &mut diff), build(new, 1, &mut diff));
    pair(&o, &n, &diff)
}

/// A model of `app::run`'s async blocks: (number, symbol).
fn blocks(numbered: &[(u32, &str)]) -> Model {
    let mut m = Model::default();
    for &(n, linkage) in numbered {
        m.types.insert(format!("app::run::{{async_block_env#{n}}}"), env(&[]));
        m.closures
            .push(ClosureFn { path: format!("app::run::{{async_block#{n}}}"), linkage: linkage.into() });
    }
    m
}

#[test]
fn an_earlier_patchs_closures_pair_with_the_new_builds_through_the_base_build() {
    let env = |n: u32| format!("app::run::{{async_block_env#{n}}}");
    // Patch 1 added a block before the base's #0 (now #1); the new build takes it out again.
    let then = HashMap::from([(env(0), Some(env(1)))]);
    let now = HashMap::new();
    let p1 = blocks(&[(0, "added"), (1, "real")]);
    let s = through_base((&then, &Bodies::new()), (&now, &Bodies::new()), &p1, &blocks(&[(0, "real")]));
    assert_eq!(s.paired, HashMap::from([(env(1), Some(env(0))), (env(0), None)]));
    assert_eq!(s.renames, s.paired);
    // Neither is the new build's closure of its number: patch 1's copies keep their code.
    assert_eq!(s.moved, HashSet::from([env(0), env(1)]));
    let mut pinned = pins(&p1, &s.moved);
    pinned.sort();
    assert_eq!(pinned, ["added", "real"]);
    // The added block had the other's symbol (same captures): types named after it are
    // compared by name, and its copy keeps its code.
    let s = through_base(
        (&then, &Bodies::new()),
        (&now, &Bodies::new()),
        &blocks(&[(0, "real"), (1, "real1")]),
        &blocks(&[(0, "real")]),
    );
    assert_eq!(s.paired, HashMap::from([(env(1), Some(env(0)))]));
    assert_eq!(s.renames, s.paired);
    assert_eq!(s.moved, HashSet::from([env(0), env(1)]));
    // Kept in the new build too (another edit): compared by name, nothing moved.
    let now = then.clone();
    let s = through_base((&then, &Bodies::new()), (&now, &Bodies::new()), &p1, &p1);
    assert!(s.paired.is_empty() && s.moved.is_empty(), "{s:?}");
    // A closure patch 1 removed (the base's #0; #1 took its number) put back: patch 1's #0
    // is the base's #1, which the new build has as #1 again.
    let then = HashMap::from([(env(0), None), (env(1), Some(env(0)))]);
    let p1 = blocks(&[(0, "h0")]);
    let s = through_base(
        (&then, &Bodies::new()),
        (&HashMap::new(), &Bodies::new()),
        &p1,
        &blocks(&[(0, "h0"), (1, "h1")]),
    );
    assert_eq!(s.paired, HashMap::from([(env(0), Some(env(1)))]));
    assert_eq!(pins(&p1, &s.moved), ["h0"]);
    // A closure's own closures are pinned with it: only the last segment of a nested
    // closure's path is its own (`app::run::{async_block#0}::{closure#1}`'s captures are
    // `app::run::{async_block#0}::{closure_env#1}`).
    let mut p1 = blocks(&[(0, "outer")]);
    p1.closures
        .push(ClosureFn { path: "app::run::{async_block#0}::{closure#1}".into(), linkage: "inner".into() });
    let moved = HashSet::from([env(0), "app::run::{async_block#0}::{closure_env#1}".to_string()]);
    let mut pinned = pins(&p1, &moved);
    pinned.sort();
    assert_eq!(pinned, ["inner", "outer"]);
    // Nothing renumbered anywhere: nothing to say.
    let s = through_base(
        (&HashMap::new(), &Bodies::new()),
        (&HashMap::new(), &Bodies::new()),
        &Model::default(),
        &Model::default(),
    );
    assert!(s.paired.is_empty() && s.moved.is_empty());
}

/// Closures an earlier patch added are no base closure: they are paired with the new build's by
/// their code and captures, recorded with that patch ([`Closures::added`]).
#[test]
fn closures_an_earlier_patch_added_pair_with_the_new_builds_by_content() {
    const X: (&[(&str, &str)], u128) = (&[("k", "u64")], 4);
    let env = |n: u32| format!("app::main::{{closure_env#{n}}}");
    // Each build's model, and how its guard paired the base build's closures with it.
    let patch = |closures: &[(&[(&str, &str)], u128)]| {
        let mut diff = Diff::default();
        let (base, new) = (build(&[MAP], 0, &mut diff), build(closures, 1, &mut diff));
        (pair(&base, &new, &diff), new)
    };
    let since = |p1: &[(&[(&str, &str)], u128)], p2: &[(&[(&str, &str)], u128)]| {
        let ((then, old), (now, new)) = (patch(p1), patch(p2));
        let s = through_base((&then.envs, &then.added), (&now.envs, &now.added), &old, &new);
        let changes = crate::layout::compare::changed_types_paired(&old, &new, &s.paired, &s.renames);
        (s, changes.into_iter().map(|c| c.name).collect::<Vec<_>>())
    };
    // Patch 1 added X before the base's closure, patch 2 adds another (other captures) before
    // X: X is the new build's #1, and patch 1's copy of #0 keeps X's code.
    let (s, changed) = since(&[X, MAP], &[LABEL, X, MAP]);
    assert_eq!(s.paired.get(&env(0)), Some(&Some(env(1))), "{s:?}");
    assert_eq!(s.paired.get(&env(1)), Some(&Some(env(2))), "{s:?}");
    assert!(changed.is_empty(), "{changed:?}");
    assert_eq!(s.moved, HashSet::from([env(0), env(1)]));
    // Added after the base's closure, then another before it with the same captures: nothing
    // renumbered a base closure, and by name X would meet the other's code.
    let (s, changed) = since(&[MAP, X], &[MAP, (X.0, 5), X]);
    assert_eq!(s.paired.get(&env(1)), Some(&Some(env(2))), "{s:?}");
    assert!(changed.is_empty() && s.moved.contains(&env(1)), "{s:?} {changed:?}");
    // Two of X's code and captures, neither under its number: not told apart, patch 1's copy
    // keeps its code and its captures are compared by name (refused here, naming them).
    let (s, changed) = since(&[X, MAP], &[LABEL, X, X, MAP]);
    assert!(!s.paired.contains_key(&env(0)) && s.moved.contains(&env(0)), "{s:?}");
    assert_eq!(changed, [env(0)]);
    // X edited (other captures) as another is added before it: no counterpart by content, in a
    // function that gained a closure. Edited or replaced cannot be told apart: no counterpart,
    // and patch 1's copy keeps X's code (not compared with the other's captures).
    let (s, changed) = since(&[X, MAP], &[LABEL, (&[("k", "u32")], 6), MAP]);
    assert_eq!(s.paired.get(&env(0)), Some(&None), "{s:?}");
    assert!(changed.is_empty() && s.moved.contains(&env(0)), "{s:?} {changed:?}");
    // The same with the same captures (review 4, 1b): by name X would meet the other's code.
    let (s, changed) = since(&[X, MAP], &[(X.0, 5), (X.0, 6), MAP]);
    assert_eq!(s.paired.get(&env(0)), Some(&None), "{s:?}");
    assert!(changed.is_empty() && s.moved.contains(&env(0)), "{s:?} {changed:?}");
    // Added after the base's closure, then edited as another is added before it (review 4, 1a):
    // no base closure renumbered, the family gained a closure.
    let (s, changed) = since(&[MAP, X], &[MAP, (X.0, 5), (X.0, 6)]);
    assert_eq!(s.paired.get(&env(1)), Some(&None), "{s:?}");
    assert!(changed.is_empty() && s.moved.contains(&env(1)), "{s:?} {changed:?}");
    // Edited in place, the family's numbers kept: compared by name, as any edit, not moved.
    let (s, changed) = since(&[MAP, X], &[MAP, (X.0, 6)]);
    assert!(!s.paired.contains_key(&env(1)) && !s.moved.contains(&env(1)), "{s:?}");
    assert!(changed.is_empty(), "{changed:?}");
    let (s, changed) = since(&[MAP, X], &[MAP, (&[("k", "u32")], 6)]);
    assert!(!s.paired.contains_key(&env(1)) && !s.moved.contains(&env(1)), "{s:?}");
    assert_eq!(changed, [env(1)]);
    // Removed: the family lost a closure; nothing of the new build is X.
    let (s, _) = since(&[MAP, X], &[MAP]);
    assert_eq!(s.paired.get(&env(1)), Some(&None), "{s:?}");
    assert!(s.moved.contains(&env(1)), "{s:?}");
    // X kept where it is, another edit: X is the new build's X.
    let (s, _) = since(&[X, MAP], &[X, (MAP.0, 7)]);
    assert!(!s.paired.contains_key(&env(0)) && !s.moved.contains(&env(0)), "{s:?}");
}

const LABEL: (&[(&str, &str)], u128) = (&[("name", "alloc::string::String")], 1);
const MAP: (&[(&str, &str)], u128) = (&[], 2);
const ADDED: (&[(&str, &str)], u128) = (&[], 3);

#[test]
fn added_removed_and_moved_closures_keep_their_identity() {
    let env = |n: u32| format!("app::main::{{closure_env#{n}}}");
    // Unchanged numbering: nothing to say.
    assert!(paired(&[MAP, LABEL], &[MAP, LABEL]).envs.is_empty());
    // A closure edited in place keeps its number: compared by name, as before.
    assert!(paired(&[MAP, LABEL], &[MAP, (LABEL.0, 9)]).envs.is_empty());

    // Added before the others.
    let c = paired(&[MAP, LABEL], &[ADDED, MAP, LABEL]);
    assert_eq!(c.envs[&env(0)], Some(env(1)));
    assert_eq!(c.envs[&env(1)], Some(env(2)));
    assert!(c.kept["main-closure-0-1"].contains("`app::main::{closure#1}` is `app::main::{closure#2}` now"));

    // Removed before the others.
    let c = paired(&[MAP, LABEL], &[LABEL]);
    assert_eq!((c.envs[&env(0)].clone(), c.envs[&env(1)].clone()), (None, Some(env(0))));
    assert!(c.kept["main-closure-0-0"].contains("was edited or removed"));

    // Moved: two closures with the same (empty) captures are told apart by their code.
    let c = paired(&[MAP, ADDED], &[ADDED, MAP]);
    assert_eq!((c.envs[&env(0)].clone(), c.envs[&env(1)].clone()), (Some(env(1)), Some(env(0))));

    // Added before and edited: the edited one has no counterpart; its old code is kept.
    let c = paired(&[MAP, LABEL], &[ADDED, MAP, (LABEL.0, 9)]);
    assert_eq!(c.envs[&env(1)], None);
    assert!(c.kept.contains_key("main-closure-0-1"));
}

/// Review 4, finding 7: DWARF describes pointers to captures types (`*mut app::main::
/// {closure_env#0}`), which are no closures' family.
#[test]
fn pointers_to_captures_are_no_closures() {
    assert_eq!(numbered("*mut app::main::{closure_env#0}", &ENVS), None);
    assert_eq!(numbered("&app::main::{closure_env#0}", &ENVS), None);
    assert_eq!(family_of("app::main::{closure_env#0}"), Some(("app::main".into(), "closure", String::new())));
    // A family that gained a closure, with pointers to both builds' captures: nothing paired.
    let mut diff = Diff::default();
    let (mut o, mut n) = (build(&[MAP], 0, &mut diff), build(&[MAP, LABEL], 1, &mut diff));
    for (m, count) in [(&mut o, 1), (&mut n, 2)] {
        for k in 0..count {
            m.types.insert(format!("*mut app::main::{{closure_env#{k}}}"), env(&[]));
        }
    }
    let c = pair(&o, &n, &diff);
    assert!(c.envs.is_empty() && c.moved.is_empty(), "{c:?}");
    assert_eq!(c.added.keys().collect::<Vec<_>>(), ["app::main::{closure_env#1}"]);
}

/// A captures type with no fields, for tests.
fn tests_env() -> TypeRec {
    TypeRec {
        kind: Kind::Struct,
        size: Some(0),
        align: Some(1),
        edges: vec![],
        fields: vec![],
        tag: None,
        variants: vec![],
    }
}

mod nested_and_generic {
    use super::*;

    /// Closures by path (`…::{closure#N}`, with generic arguments if any): (path, symbol, code).
    /// Every one captures nothing.
    fn model(closures: &[(&str, &str, u128)], side: usize, diff: &mut Diff) -> Model {
        let mut m = Model::default();
        for &(path, linkage, body) in closures {
            let env = env_of(path).expect("a closure's path");
            m.types.insert(env, super::tests_env());
            m.closures.push(ClosureFn { path: path.into(), linkage: linkage.into() });
            diff.closure_bodies[side].insert(linkage.into(), body);
        }
        m
    }

    fn paired(old: &[(&str, &str, u128)], new: &[(&str, &str, u128)]) -> Closures {
        let mut diff = Diff::default();
        let (o, n) = (model(old, 0, &mut diff), model(new, 1, &mut diff));
        pair(&o, &n, &diff)
    }

    #[test]
    fn generic_arguments_are_split_off_a_closures_path() {
        assert_eq!(split_args("app::make::{closure#0}<u32>"), ("app::make::{closure#0}", "<u32>"));
        assert_eq!(
            split_args("std::spawn::{closure#0}<app::f::{closure_env#1}, ()>"),
            ("std::spawn::{closure#0}", "<app::f::{closure_env#1}, ()>")
        );
        assert_eq!(split_args("app::main::{closure#2}"), ("app::main::{closure#2}", ""));
        assert_eq!(split_args("<app::S as core::fmt::Debug>"), ("", "<app::S as core::fmt::Debug>"));
    }

    /// A generic function's closures are paired per instance: a closure added before the boxed
    /// one (`make::<u32>`, run at startup) takes its number and symbol, and its old code stays.
    #[test]
    fn a_generic_functions_closures_are_paired_in_each_instance() {
        let c = paired(
            &[("app::make::{closure#0}<u32>", "boxed", 1), ("app::make::{closure#0}<u8>", "boxed8", 1)],
            &[
                ("app::make::{closure#0}<u32>", "boxed", 2),
                ("app::make::{closure#1}<u32>", "boxed-now", 1),
                ("app::make::{closure#0}<u8>", "boxed8", 2),
                ("app::make::{closure#1}<u8>", "boxed8-now", 1),
            ],
        );
        assert!(
            c.kept["boxed"].contains("`app::make::{closure#0}<u32>` is `app::make::{closure#1}<u32>` now")
        );
        assert!(c.kept["boxed8"].contains("`app::make::{closure#0}<u8>` is `app::make::{closure#1}<u8>` now"));
        assert_eq!(
            c.envs["app::make::{closure_env#0}<u32>"].as_deref(),
            Some("app::make::{closure_env#1}<u32>")
        );
        assert!(c.shared_symbols.contains("app::make::{closure_env#0}<u32>"));
    }

    /// A thread's closure (`f::{closure#0}`) with a closure inside, and another such added before
    /// it: the inner closures follow their outer one, and the old inner one's symbol, now the added
    /// thread's inner closure's, keeps its code (the running thread calls it).
    #[test]
    fn the_closures_of_a_renumbered_closure_follow_it() {
        let old = [("app::f::{closure#0}", "outer", 1), ("app::f::{closure#0}::{closure#0}", "inner", 10)];
        let c = paired(
            &old,
            &[
                ("app::f::{closure#0}", "outer", 2),
                ("app::f::{closure#0}::{closure#0}", "inner", 20),
                ("app::f::{closure#1}", "outer-now", 1),
                ("app::f::{closure#1}::{closure#0}", "inner-now", 10),
            ],
        );
        assert!(c.kept["outer"].contains("is `app::f::{closure#1}` now"), "{:?}", c.kept);
        assert!(c.kept["inner"].contains("`app::f::{closure#0}` was renumbered to `app::f::{closure#1}`"));
        assert!(c.kept["inner"].contains("is `app::f::{closure#1}::{closure#0}` now"));
        assert_eq!(
            c.envs["app::f::{closure#0}::{closure_env#0}"].as_deref(),
            Some("app::f::{closure#1}::{closure_env#0}")
        );

        // The outer closure's code differs once renumbered (it refers to generic code over its
        // own closure, whose symbol follows the number): it has no counterpart, and neither has
        // its inner one; both keep their code.
        let c = paired(
            &old,
            &[
                ("app::f::{closure#0}", "outer", 2),
                ("app::f::{closure#0}::{closure#0}", "inner", 20),
                ("app::f::{closure#1}", "outer-now", 3),
                ("app::f::{closure#1}::{closure#0}", "inner-now", 10),
            ],
        );
        assert!(c.kept["outer"].contains("`app::f` gained or lost closures"), "{:?}", c.kept);
        assert!(c.kept["inner"].contains("`app::f::{closure#0}` was edited or removed"));

        // A closure added before one spawning an async block, with the same code (`tokio::spawn`
        // over its own block, whose symbol follows the number): the outer ones differ by their
        // blocks only, and neither keeps the other's code.
        let c = paired(
            &[("app::g::{closure#0}", "outer", 1), ("app::g::{closure#0}::{async_block#0}", "block", 10)],
            &[
                ("app::g::{closure#0}", "outer", 1),
                ("app::g::{closure#0}::{async_block#0}", "block", 20),
                ("app::g::{closure#1}", "outer-now", 2),
                ("app::g::{closure#1}::{async_block#0}", "block-now", 10),
            ],
        );
        assert!(c.kept["outer"].contains("`app::g` gained or lost closures"), "{:?}", c.kept);
        assert!(c.kept["block"].contains("`app::g::{closure#0}` was edited or removed"));
        assert!(c.shared_symbols.contains("app::g::{closure#0}::{async_block_env#0}"));

        // The instance of generic code over the old inner closure (in an optimised build it
        // holds the inner closure's code, which has none of its own) keeps its code too.
        let mut diff = Diff::default();
        let mut o = model(&old, 0, &mut diff);
        let instance = |linkage: &str, generic: &str| crate::layout::model::FnRec {
            linkage: linkage.into(),
            path: "app::apply".into(),
            params: vec![],
            ret: None,
            locals: vec![],
            main: false,
            generics: vec![generic.into()],
        };
        o.functions.push(instance("apply-inner", "app::f::{closure#0}::{closure_env#0}"));
        o.functions.push(instance("apply-other", "app::f::{closure#0}::{closure_env#0}<u8>"));
        let n = model(
            &[
                ("app::f::{closure#0}", "outer", 2),
                ("app::f::{closure#0}::{closure#0}", "inner", 20),
                ("app::f::{closure#1}", "outer-now", 1),
                ("app::f::{closure#1}::{closure#0}", "inner-now", 10),
            ],
            1,
            &mut diff,
        );
        let mut c = pair(&o, &n, &diff);
        keep_instances(&mut c, &o);
        assert!(c.kept["apply-inner"].contains("an instance over `app::f::{closure#0}::{closure_env#0}`"));
        assert!(!c.kept.contains_key("apply-other"));
        assert!(names_type("&app::f::{closure_env#0}", "app::f::{closure_env#0}"));
        assert!(!names_type("xapp::f::{closure_env#0}", "app::f::{closure_env#0}"));

        // Edited in place, same number of closures: compared by name, as before.
        let c = paired(
            &old,
            &[("app::f::{closure#0}", "outer", 2), ("app::f::{closure#0}::{closure#0}", "inner", 20)],
        );
        assert!(c.kept.is_empty() && c.envs.is_empty());
    }

    /// Review 4, finding 3: the closures in an earlier-added closure that is not told apart from
    /// another (or that has no counterpart) are its own, not those of the closure under its number.
    #[test]
    fn the_closures_in_an_earlier_added_closure_without_a_counterpart_keep_their_code() {
        let mut diff = Diff::default();
        let inner = "app::f::{closure#0}::{closure_env#0}";
        // Patch 1 added X (holding a closure) at #0; the new build adds Y (holding one) at #0
        // and has X's code and captures twice, at #1 and #2.
        let old = model(
            &[("app::f::{closure#0}", "x", 1), ("app::f::{closure#0}::{closure#0}", "x-in", 2)],
            0,
            &mut diff,
        );
        let new = model(
            &[
                ("app::f::{closure#0}", "y", 5),
                ("app::f::{closure#0}::{closure#0}", "y-in", 6),
                ("app::f::{closure#1}", "x1", 1),
                ("app::f::{closure#1}::{closure#0}", "x1-in", 2),
                ("app::f::{closure#2}", "x2", 1),
                ("app::f::{closure#2}::{closure#0}", "x2-in", 2),
            ],
            1,
            &mut diff,
        );
        let bodies = |m: &Model, side: usize, diff: &Diff| -> Bodies {
            m.closures
                .iter()
                .map(|c| (env_of(&c.path).unwrap(), diff.closure_bodies[side][&c.linkage]))
                .collect()
        };
        let (then_added, now_added) = (bodies(&old, 0, &diff), bodies(&new, 1, &diff));
        let none = Pairing::new();
        let s = through_base((&none, &then_added), (&none, &now_added), &old, &new);
        assert!(s.moved.contains("app::f::{closure_env#0}") && s.moved.contains(inner), "{s:?}");
        assert_eq!(s.paired.get(inner), Some(&None), "{s:?}");
        let mut pinned = pins(&old, &s.moved);
        pinned.sort();
        assert_eq!(pinned, ["x", "x-in"]);
        // X edited as Y is added before it (no counterpart): the same for its closure.
        let new = model(
            &[
                ("app::f::{closure#0}", "y", 5),
                ("app::f::{closure#0}::{closure#0}", "y-in", 6),
                ("app::f::{closure#1}", "x1", 7),
                ("app::f::{closure#1}::{closure#0}", "x1-in", 2),
            ],
            1,
            &mut diff,
        );
        let s = through_base((&none, &then_added), (&none, &bodies(&new, 1, &diff)), &old, &new);
        assert_eq!(s.paired.get("app::f::{closure_env#0}"), Some(&None), "{s:?}");
        assert_eq!(s.paired.get(inner), Some(&None), "{s:?}");
        assert!(s.moved.contains(inner), "{s:?}");
    }
}
