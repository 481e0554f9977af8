//! Where values of a changed type can still exist in the running program, judged from the running
//! build's own description of its code (the old side of the changed units):
//!
//! - a **static or thread-local** whose type holds the type — by value, or behind a pointer,
//!   `Box`, `Vec` or any generic argument (conservative: what a pointer leads to may be old);
//! - a **running frame**: the program's `main` and every closure and async block nested in it
//!   (thread bodies, callbacks made at startup) — their parameters and locals, however indirect,
//!   since such frames may never return. A closure's captures or an async fn's state changed while
//!   its maker is `main` counts too: the value was made before the patch;
//! - an **unchanged function** of the workspace that holds the type by value (parameter, local,
//!   return value, or owned through a field, `Box`, `Vec`): its old code keeps making and keeping
//!   values of the old shape. Unchanged code that only borrows one reads it as it did, and code of
//!   other crates (`Vec<T>::push`) moves the bytes without knowing the fields.
//!
//! Everything else was made and dropped inside changed code, which the patch replaces as a whole.

use super::compare::mentions;
use super::model::Model;
use super::Layouts;
use crate::diff::Diff;
use std::collections::{HashMap, HashSet};

/// Which types lead to which, backwards.
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
        let mut todo: Vec<&str> = seen.iter().copied().collect();
        while let Some(t) = todo.pop() {
            for &(from, is_owned) in self.into.get(t).into_iter().flatten() {
                if (is_owned || !owned) && seen.insert(from) {
                    todo.push(from);
                }
            }
        }
        seen
    }
}

/// One reason per changed type with live old values.
pub fn refusals(layouts: &Layouts, diff: &Diff) -> Vec<String> {
    if layouts.changes.is_empty() {
        return Vec::new();
    }
    let old = &layouts.old;
    let reach = Reach::new(old);
    let mains: Vec<&str> = old.functions.iter().filter(|f| f.main).map(|f| f.path.as_str()).collect();
    let running = |path: &str| mains.iter().any(|m| path == *m || path.starts_with(&format!("{m}::")));
    let own_crate = |path: &str| {
        let first = path.trim_start_matches('<').split("::").next().unwrap_or("");
        layouts.crates.contains(first)
    };
    let mut out = Vec::new();
    for change in &layouts.changes {
        let mut places: Vec<String> = Vec::new();
        let mut add = |p: String| {
            if !places.contains(&p) {
                places.push(p);
            }
        };
        let any = reach.holders(&change.name, false);
        let owned = reach.holders(&change.name, true);
        for s in &old.statics {
            if any.contains(s.ty.as_str()) {
                add(format!("{} `{}`", if s.tls { "thread-local" } else { "static" }, s.path));
            }
        }
        if let Some(maker) = maker(&change.name) {
            if running(maker) {
                // Made by a frame that never returned: kept in its locals or moved on from there.
                add(format!("`{maker}`'s locals"));
            }
        }
        for f in &old.functions {
            let holds = |set: &HashSet<&str>| {
                f.params.iter().chain(&f.locals).chain(f.ret.iter()).any(|t| set.contains(t.as_str()))
            };
            if running(&f.path) {
                if holds(&any) {
                    add(format!("`{}`'s locals", f.path));
                }
            } else if own_crate(&f.path) && diff.unchanged.contains(&f.linkage) && holds(&owned) {
                add(format!("`{}`, unchanged, holds them", f.path));
            }
        }
        if places.is_empty() {
            continue;
        }
        const SHOWN: usize = 4;
        let more = places.len().saturating_sub(SHOWN);
        places.truncate(SHOWN);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        out.push(format!(
            "{} and old values are live ({}{more}); restart to use it",
            change.describe(),
            places.join(", ")
        ));
    }
    out
}

/// The function that makes values of a closure's captures or an async fn's state:
/// `app::main` for `app::main::{closure_env#2}`.
fn maker(type_name: &str) -> Option<&str> {
    ["::{closure_env#", "::{async_fn_env#", "::{async_block_env#"]
        .iter()
        .find_map(|m| type_name.find(m).map(|at| &type_name[..at]))
}
