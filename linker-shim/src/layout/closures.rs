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

/// Captures types paired across builds: old name → the new name of the same closure (`None`:
/// it has no counterpart to be compared with).
pub type Pairing = HashMap<String, Option<String>>;

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

/// The closures of an earlier patch's build paired with the new build's, for the check against
/// that build ([`super::since`]), through the build the process started from: `then` is how
/// that patch's guard paired the base build's closures with its build's ([`Closures::envs`], kept
/// in its record), `now` how this guard pairs them with the new build's. A closure both pair
/// with the same base closure is the same closure (same code, same captures). A closure that
/// patch added (paired with no base closure), whose number the new build gives to a base
/// closure that patch knew under another number, is gone (the edit was undone): it has no
/// counterpart — unless its symbol is that other closure's too (generic code over the two would
/// share symbols, see [`Closures::shared_symbols`]), when it stays compared by name. Closures
/// left out of both pairings are compared by name, as before.
///
/// Returns `(paired, renames)`, as [`super::compare::changed_types_paired`] takes them: the
/// closures' own captures types old name → new, and those other types may be read under.
pub fn through_base(
    then: &HashMap<String, Option<String>>,
    now: &HashMap<String, Option<String>>,
    old: &Model,
    new: &Model,
) -> (HashMap<String, Option<String>>, HashMap<String, Option<String>>) {
    let mut paired = HashMap::new();
    let mut shared = HashSet::new();
    if then.is_empty() && now.is_empty() {
        return (paired.clone(), paired);
    }
    // A base closure's name in each build: its counterpart where its family was renumbered,
    // else its own (`None`: removed or edited there).
    let in_then = |b: &String| then.get(b).cloned().unwrap_or_else(|| Some(b.clone()));
    let in_now = |b: &String| now.get(b).cloned().unwrap_or_else(|| Some(b.clone()));
    let bases: HashSet<&String> = then.keys().chain(now.keys()).collect();
    let mut from_base_then = HashSet::new();
    let mut from_base_now: HashMap<String, String> = HashMap::new();
    for b in &bases {
        let (p, n) = (in_then(b), in_now(b));
        if let Some(p) = &p {
            from_base_then.insert(p.clone());
        }
        if let Some(n) = &n {
            from_base_now.insert(n.clone(), p.clone().unwrap_or_default());
        }
        if let (Some(p), Some(n)) = (p, n) {
            if p != n {
                paired.insert(p, Some(n));
            }
        }
    }
    let linkage = |model: &Model, env: &str| -> Option<String> {
        let path = env.replace("{closure_env#", "{closure#").replace("{async_block_env#", "{async_block#");
        model.closures.iter().find(|c| c.path == path).map(|c| names::canonical(&c.linkage).to_string())
    };
    // Closures that patch added: gone when their number now names a base closure it knew
    // under another number.
    let added_then: Vec<&String> = old
        .types
        .keys()
        .filter(|t| t.contains("_env#") && t.ends_with('}') && !from_base_then.contains(*t))
        .filter(|t| bases.iter().any(|b| same_family(b, t)))
        .collect();
    for p in added_then {
        // (A base closure that patch edited or removed, `""`, may be this one, edited.)
        let Some(known_as) = from_base_now.get(p) else { continue };
        if known_as.is_empty() || known_as == p || paired.contains_key(p) {
            continue;
        }
        let (l_then, l_now) = (linkage(old, p), linkage(new, p));
        if l_then.is_some() && l_then == l_now {
            shared.insert(p.clone());
            continue;
        }
        paired.insert(p.clone(), None);
    }
    // A closure's symbol that the new build gives to another closure: types named after it are
    // compared by name.
    for (p, n) in &paired {
        if n.as_ref().is_some_and(|n| n != p) {
            let (l_then, l_now) = (linkage(old, p), linkage(new, p));
            if l_then.is_some() && l_then == l_now {
                shared.insert(p.clone());
            }
        }
    }
    let renames =
        paired.iter().filter(|(p, _)| !shared.contains(*p)).map(|(p, n)| (p.clone(), n.clone())).collect();
    (paired, renames)
}

/// Whether two captures types are of the same function's closures of one kind
/// (`app::main::{closure_env#0}`, `app::main::{closure_env#3}`).
fn same_family(a: &str, b: &str) -> bool {
    fn family(t: &str) -> Option<&str> {
        t.rfind('#').map(|at| &t[..at])
    }
    family(a).is_some() && family(a) == family(b)
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
        let (paired, renames) =
            through_base(&then, &now, &blocks(&[(0, "added"), (1, "real")]), &blocks(&[(0, "real")]));
        assert_eq!(paired, HashMap::from([(env(1), Some(env(0))), (env(0), None)]));
        assert_eq!(renames, paired);
        // The added block had the other's symbol (same captures): types named after it are
        // compared by name.
        let (paired, renames) =
            through_base(&then, &now, &blocks(&[(0, "real"), (1, "real1")]), &blocks(&[(0, "real")]));
        assert_eq!(paired, HashMap::from([(env(1), Some(env(0)))]));
        assert_eq!(renames, paired);
        // Kept in the new build too (another edit): paired by name, as before.
        let now = then.clone();
        let (paired, _) = through_base(
            &then,
            &now,
            &blocks(&[(0, "added"), (1, "real")]),
            &blocks(&[(0, "added"), (1, "real")]),
        );
        assert!(paired.is_empty(), "{paired:?}");
        // Nothing renumbered anywhere: nothing to say.
        assert!(through_base(&HashMap::new(), &HashMap::new(), &Model::default(), &Model::default())
            .0
            .is_empty());
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
