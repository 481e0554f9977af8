//! Closures are known by what they are, not by their number.
//!
//! rustc numbers the closures and async blocks of a function in source order (`app::main::
//! {closure#2}`, its captures `app::main::{closure_env#2}`), and the legacy symbol of a closure's
//! code is the same for the same number. So adding, removing or moving a closure gives the ones
//! after it other numbers: by name, the captures of one would be compared with another's (a false
//! refusal), and the diff pairs a closure's old code with another closure's new code (whose entry
//! must not receive the old closure's calls).
//!
//! Here the closures of each function are paired by what they are: the same code
//! (`Diff::closure_bodies`) and the same captures. A function whose closures all keep their
//! numbers is left to the comparison by name — which then also sees a closure whose captures or
//! code changed in place. In a function whose closures were renumbered, the captures are compared
//! only between closures paired here (so never with another closure's), and a closure's old code
//! whose number now names another closure is not redirected: closures made before the patch keep
//! running the code they were made with, which for a closure paired here is the same code.

use super::compare::same_layout;
use super::model::{Model, TypeRec};
use crate::diff::{names, Diff};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The closures of the changed units, paired across builds.
#[derive(Debug, Default)]
pub struct Closures {
    /// Captures types whose closures were renumbered: old name → the new name of the same
    /// closure (`None`: it was removed or edited, and has no counterpart to be compared with).
    pub envs: HashMap<String, Option<String>>,
    /// The old code of closures whose symbol now names another closure (canonical old symbol →
    /// why its entry keeps its code).
    pub kept: HashMap<String, String>,
    /// Renumbered captures types (old name) whose number the new build gives to another closure
    /// under the same symbol: the instances of generic code over the two share their symbols too
    /// (a closure's symbol hash covers its captures' types but not an async block's state across
    /// `.await`s), so the diff takes one's old instances for the other's new ones. Types named
    /// after them (`tokio::…::Cell<f::{async_block_env#0}, S>`) are compared by name, as they are
    /// named: where the two differ, the old values are refused rather than met by that code.
    pub shared_symbols: HashSet<String>,
}

impl Closures {
    /// The renumbered captures types whose name other types may be read under
    /// ([`super::compare::changed_types_paired`]): all but [`Closures::shared_symbols`].
    pub fn renames(&self) -> HashMap<String, Option<String>> {
        self.envs
            .iter()
            .filter(|(old, _)| !self.shared_symbols.contains(*old))
            .map(|(o, n)| (o.clone(), n.clone()))
            .collect()
    }
}

/// One closure: its code's meaning and its captures' layout.
struct Side<'m> {
    body: Option<u128>,
    env: Option<&'m TypeRec>,
    linkage: Option<&'m str>,
}

type Family<'m> = BTreeMap<u32, Side<'m>>;

/// `app::main::{closure#2}` → (`app::main`, 2); also `{async_block#N}`.
fn numbered(path: &str, kinds: &[&str]) -> Option<(String, &'static str, u32)> {
    // Every numbered path ends with its number's `}` (most type names do not: a quick no).
    if !path.ends_with('}') {
        return None;
    }
    for (kind, tag) in kinds.iter().zip(["closure", "async_block"]) {
        if let Some(at) = path.rfind(kind) {
            let rest = &path[at + kind.len()..];
            let n = rest.strip_suffix('}')?.parse().ok()?;
            return Some((path[..at].to_string(), tag, n));
        }
    }
    None
}

fn side<'a, 'm>(
    out: &'a mut HashMap<(String, &'static str), Family<'m>>,
    owner: String,
    tag: &'static str,
    n: u32,
) -> &'a mut Side<'m> {
    out.entry((owner, tag)).or_default().entry(n).or_insert(Side { body: None, env: None, linkage: None })
}

fn families<'m>(
    model: &'m Model,
    bodies: &HashMap<String, u128>,
) -> HashMap<(String, &'static str), Family<'m>> {
    let mut out: HashMap<(String, &'static str), Family<'m>> = HashMap::new();
    for c in &model.closures {
        if let Some((owner, tag, n)) = numbered(&c.path, &["::{closure#", "::{async_block#"]) {
            let s = side(&mut out, owner, tag, n);
            s.body = bodies.get(names::canonical(&c.linkage)).copied();
            s.linkage = Some(&c.linkage);
        }
    }
    for (name, rec) in &model.types {
        if let Some((owner, tag, n)) = numbered(name, &["::{closure_env#", "::{async_block_env#"]) {
            side(&mut out, owner, tag, n).env = Some(rec);
        }
    }
    out
}

/// Whether two closures are the same one: the same code and the same captures.
fn same(a: &Side, b: &Side) -> bool {
    let envs = match (a.env, b.env) {
        (Some(x), Some(y)) => same_layout(x, y),
        (None, None) => true,
        _ => false,
    };
    a.body.is_some() && a.body == b.body && envs
}

fn env_name(owner: &str, tag: &str, n: u32) -> String {
    format!("{owner}::{{{tag}_env#{n}}}")
}

/// Pairs the closures of the changed units (see the module's doc).
pub fn pair(old: &Model, new: &Model, diff: &Diff) -> Closures {
    let mut out = Closures::default();
    let olds = families(old, &diff.closure_bodies[0]);
    let news = families(new, &diff.closure_bodies[1]);
    for ((owner, tag), o) in &olds {
        let Some(n) = news.get(&(owner.clone(), *tag)) else { continue };
        // Each old closure's counterpart: itself under its own number if unchanged there, else
        // the same closure under the nearest other number not taken yet.
        let mut taken: Vec<u32> =
            o.iter().filter(|(k, s)| n.get(k).is_some_and(|t| same(s, t))).map(|(k, _)| *k).collect();
        let mut pairs: BTreeMap<u32, Option<u32>> = BTreeMap::new();
        for (&k, s) in o {
            if n.get(&k).is_some_and(|t| same(s, t)) {
                pairs.insert(k, Some(k));
                continue;
            }
            let found = n
                .iter()
                .filter(|(j, t)| !taken.contains(j) && same(s, t))
                .min_by_key(|(j, _)| j.abs_diff(k))
                .map(|(j, _)| *j);
            if let Some(j) = found {
                taken.push(j);
            }
            pairs.insert(k, found);
        }
        let renumbered = pairs.iter().any(|(k, j)| j.is_some_and(|j| j != *k));
        if !renumbered {
            continue;
        }
        let what = if *tag == "closure" { "closures" } else { "async blocks" };
        for (&k, &j) in &pairs {
            out.envs.insert(env_name(owner, tag, k), j.map(|j| env_name(owner, tag, j)));
            if j == Some(k) {
                continue;
            }
            let now = n.get(&k).and_then(|t| t.linkage).map(names::canonical);
            if now.is_some() && now == o[&k].linkage.map(names::canonical) {
                out.shared_symbols.insert(env_name(owner, tag, k));
            }
            let Some(linkage) = o[&k].linkage else { continue };
            let now = match j {
                Some(j) => format!("is `{owner}::{{{tag}#{j}}}` now"),
                None => "was edited or removed".to_string(),
            };
            out.kept.insert(
                names::canonical(linkage).to_string(),
                format!(
                    "the {what} of `{owner}` were renumbered and `{owner}::{{{tag}#{k}}}` {now}: those made before the patch keep their code"
                ),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
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
            m.closures
                .push(ClosureFn { path: format!("app::main::{{closure#{n}}}"), linkage: linkage.clone() });
            diff.closure_bodies[side].insert(linkage, *body);
        }
        m
    }

    fn paired(old: &[(&[(&str, &str)], u128)], new: &[(&[(&str, &str)], u128)]) -> Closures {
        let mut diff = Diff::default();
        let (o, n) = (build(old, 0, &mut diff), build(new, 1, &mut diff));
        pair(&o, &n, &diff)
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
        assert!(
            c.kept["main-closure-0-1"].contains("`app::main::{closure#1}` is `app::main::{closure#2}` now")
        );

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
}
