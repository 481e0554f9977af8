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
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

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
    /// Captures types (old name) of old closures that are not where they were: renumbered, or
    /// without a counterpart in a function that gained or lost closures ([`Closures::kept`]'s).
    pub moved: HashSet<String>,
    /// The new build's closures that are no base closure (added, or edited), whose code is known:
    /// captures type → what the code means (with its own closures', [`deepen`]). Kept in the
    /// patch's record, so that the next patch pairs them with its build's by what they are
    /// ([`through_base`]): the base build knows nothing of them.
    pub added: Bodies,
}

/// Closures known by their code: captures type → what the code means ([`Closures::added`]).
pub type Bodies = HashMap<String, u128>;

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

/// The closures of one function (`app::main`, or a closure: `app::main::{closure#1}`) of one kind
/// (`closure`, `async_block`), in one instance of it: the generic arguments the DWARF names a
/// generic function's closures with (`<u32>` of `app::make::{closure#0}<u32>`; empty when the
/// function is not generic).
type Key = (String, &'static str, String);

/// The path of a type or function without the generic arguments it ends with, nor the `::` of a
/// v0 turbofish before them: `app::Pair<u32>` and `app::Pair::<u32>` → `app::Pair`.
pub fn without_args(path: &str) -> &str {
    split_args(path).0.trim_end_matches("::")
}

/// `path` without the generic arguments it ends with, and those (`app::make::{closure#0}<u32>` →
/// `app::make::{closure#0}`, `<u32>`); the arguments may name closures themselves.
pub fn split_args(path: &str) -> (&str, &str) {
    if !path.ends_with('>') {
        return (path, "");
    }
    let mut depth = 0usize;
    for (at, c) in path.char_indices().rev() {
        match c {
            '>' => depth += 1,
            '<' => {
                depth -= 1;
                if depth == 0 {
                    return (&path[..at], &path[at..]);
                }
            }
            _ => {}
        }
    }
    (path, "")
}

/// How [`numbered`] finds closures' paths and their captures types' names.
const CLOSURES: [&str; 2] = ["::{closure#", "::{async_block#"];
const ENVS: [&str; 2] = ["::{closure_env#", "::{async_block_env#"];

/// `app::main::{closure#2}` → (`app::main`, 2, ``); also `{async_block#N}`, and a generic
/// function's `app::make::{closure#0}<u32>` → (`app::make`, 0, `<u32>`).
fn numbered(path: &str, kinds: &[&str]) -> Option<(String, &'static str, u32, String)> {
    // Most type names have no number at all: a quick no before reading their arguments.
    if !path.as_bytes().contains(&b'#') {
        return None;
    }
    // A pointer or reference to a captures type (`*mut app::f::{closure_env#0}`, as DWARF names
    // the pointer types it describes) is no closure's: no family of `*mut app::f` (review 4,
    // finding 7: it made a record's pairing never empty, so the next check never took the
    // digests' shortcut, and put the pointer type among the moved ones).
    if path.starts_with(['*', '&']) {
        return None;
    }
    let (path, args) = split_args(path);
    // Every numbered path ends with its number's `}` (most type names do not: a quick no).
    if !path.ends_with('}') {
        return None;
    }
    // The last segment's kind: an async block in a closure is `f::{closure#0}::{async_block#0}`.
    let (at, kind, tag) = kinds
        .iter()
        .zip(["closure", "async_block"])
        .filter_map(|(kind, tag)| Some((path.rfind(kind)?, kind, tag)))
        .max_by_key(|&(at, _, _)| at)?;
    let n = path[at + kind.len()..].strip_suffix('}')?.parse().ok()?;
    Some((path[..at].to_string(), tag, n, args.to_string()))
}

fn side<'a, 'm>(out: &'a mut HashMap<Key, Family<'m>>, key: Key, n: u32) -> &'a mut Side<'m> {
    out.entry(key).or_default().entry(n).or_insert(Side { body: None, env: None, linkage: None })
}

fn families<'m>(model: &'m Model, bodies: &HashMap<String, u128>) -> HashMap<Key, Family<'m>> {
    let mut out: HashMap<Key, Family<'m>> = HashMap::new();
    for c in &model.closures {
        if let Some((owner, tag, n, args)) = numbered(&c.path, &CLOSURES) {
            let s = side(&mut out, (owner, tag, args), n);
            s.body = bodies.get(names::canonical(&c.linkage)).copied();
            s.linkage = Some(&c.linkage);
        }
    }
    // Most types are no closure's: a quick no (a captures type's name ends with its number's
    // `}`, or with the generic arguments of its function; a substring search per type name costs
    // more than the rest of the pairing on a unit of a thousand types).
    let maybe_env = |name: &str| {
        name.ends_with('}')
            || (name.ends_with('>') && name.as_bytes().contains(&b'#') && name.contains("_env#"))
    };
    for (name, rec) in model.types.iter().filter(|(name, _)| maybe_env(name)) {
        if let Some((owner, tag, n, args)) = numbered(name, &ENVS) {
            side(&mut out, (owner, tag, args), n).env = Some(rec);
        }
    }
    deepen(&mut out);
    out
}

/// Gives each closure's code the meaning of its own closures' too, in order: the diff knows the
/// generic code a closure hands its own closures to only a few references deep
/// ([`crate::diff::Diff::closure_bodies`]: `apply::<f::{closure#0}::{closure#0}>`'s symbol
/// follows the number), so two closures that differ only in the closures they hand on could look
/// the same. A closure whose own closures' code is not known has none either; one with no code
/// of its own (inlined wherever it is called, as optimised builds do) is known through the code
/// it was inlined into.
fn deepen(families: &mut HashMap<Key, Family<'_>>) {
    let mut keys: Vec<Key> = families.keys().cloned().collect();
    // The innermost first: a family's owner is a closure of a family with a shorter owner.
    keys.sort_by(|a, b| (b.0.len(), b).cmp(&(a.0.len(), a)));
    for key in keys {
        let (owner, tag, args) = &key;
        let Some((up, up_tag, n, _)) = numbered(owner, &CLOSURES) else { continue };
        // A closure without code of its own (inlined wherever it is called, as optimised builds
        // do) is known through the code it was inlined into, which the diff reads by content.
        let inner: Vec<Option<u128>> =
            families[&key].values().filter(|s| s.linkage.is_some()).map(|s| s.body).collect();
        let Some(closure) = families.get_mut(&(up, up_tag, args.clone())).and_then(|f| f.get_mut(&n)) else {
            continue;
        };
        closure.body =
            closure.body.zip(inner.into_iter().collect::<Option<Vec<u128>>>()).map(|(body, inner)| {
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                h.update(&body.to_le_bytes());
                h.update(tag.as_bytes());
                for b in inner {
                    h.update(&b.to_le_bytes());
                }
                h.digest128()
            });
    }
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

fn env_name(owner: &str, tag: &str, n: u32, args: &str) -> String {
    format!("{owner}::{{{tag}_env#{n}}}{args}")
}

fn closure_name(owner: &str, tag: &str, n: u32) -> String {
    format!("{owner}::{{{tag}#{n}}}")
}

/// The captures type of the closure at `path`: only its last segment is the closure's own
/// (`app::f::{closure#0}::{closure#1}<u8>` → `app::f::{closure#0}::{closure_env#1}<u8>`).
fn env_of(path: &str) -> Option<String> {
    let (owner, tag, n, args) = numbered(path, &CLOSURES)?;
    Some(env_name(&owner, tag, n, &args))
}

/// The closure whose captures type is `env` ([`env_of`] the other way).
fn closure_of(env: &str) -> Option<String> {
    let (owner, tag, n, args) = numbered(env, &ENVS)?;
    Some(closure_name(&owner, tag, n) + &args)
}

/// The function and kind of closure a captures type is of, with the function's generic
/// arguments: two captures types of one family differ only in their number.
fn family_of(env: &str) -> Option<(String, &'static str, String)> {
    numbered(env, &ENVS).map(|(owner, tag, _, args)| (owner, tag, args))
}

/// Adds to [`Closures::kept`] the old generic instances over moved closures' types
/// ([`Closures::moved`]): `apply::<f::{closure#0}::{closure_env#0}>`, whose symbol the instance
/// over the closure that took that number shares. In an optimised build they hold the closure's
/// code inlined (the closure has no code of its own), and their new version is the other
/// closure's: old code calling them must keep reaching the old closure's.
pub fn keep_instances(closures: &mut Closures, old: &Model) {
    if closures.moved.is_empty() {
        return;
    }
    let names =
        |ty: &str| -> Option<String> { closures.moved.iter().find(|env| names_type(ty, env)).cloned() };
    let mut found = Vec::new();
    for f in &old.functions {
        let canonical = names::canonical(&f.linkage);
        if closures.kept.contains_key(canonical)
            || !f.generics.iter().chain(&f.params).any(|t| t.contains("_env#"))
        {
            continue;
        }
        if let Some(env) = f.generics.iter().chain(&f.params).find_map(|t| names(t)) {
            found.push((canonical.to_string(), format!(
                "it is an instance over `{env}`, a closure that is not where it was (renumbered, or edited in a function that gained or lost closures): under this symbol the new build may have another closure's instance, so old code keeps reaching this one"
            )));
        }
    }
    closures.kept.extend(found);
}

/// Whether type name `ty` names type `name` (`&app::f::{closure_env#0}` does; `app::f::
/// {closure_env#0}<u8>` and `xapp::f::{closure_env#0}` do not).
fn names_type(ty: &str, name: &str) -> bool {
    ty.match_indices(name).any(|(at, _)| {
        let before = ty[..at].chars().next_back();
        let after = ty[at + name.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') && after.is_none_or(|c| c != '<')
    })
}

/// Pairs the closures of the changed units (see the module's doc).
///
/// A renumbered closure's own closures are named after it (`app::f::{closure#0}::{closure#0}`),
/// so they are renumbered with it: their counterparts are those of its counterpart, and their old
/// symbols may name the closures of the closure that took its number (`thread::spawn(move || …)`
/// added before another, each with a closure inside: the running thread's old closure would call
/// the added one's). Functions are taken before the closures in them for that.
pub fn pair(old: &Model, new: &Model, diff: &Diff) -> Closures {
    let mut out = Closures::default();
    let olds = families(old, &diff.closure_bodies[0]);
    let news = families(new, &diff.closure_bodies[1]);
    let none = Family::new();
    let mut keys: Vec<&Key> = olds.keys().collect();
    keys.sort_by(|a, b| (a.0.len(), a).cmp(&(b.0.len(), b)));
    // Old closures (path, generic arguments) now under another path: the path of the same
    // closure in the new build (`None`: it was edited or removed).
    let mut moved: HashMap<(String, String), Option<String>> = HashMap::new();
    // Old closures (path, generic arguments) in a function that gained or lost closures, or in
    // such a closure: their own closures' code may look the same as other closures' (see
    // `counted` below), so none of those without a counterpart is taken as edited in place.
    let mut suspect: HashSet<(String, String)> = HashSet::new();
    // The new closures paired with a base closure (family, number): the others were added.
    let mut from_base: HashSet<(Key, u32)> = HashSet::new();
    for key in keys {
        let (owner, tag, args) = key;
        let o = &olds[key];
        // Where this family is now: under its owner's counterpart when the owner is a renumbered
        // closure (no counterpart: nowhere).
        let (now_owner, owner_moved) = match moved.get(&(owner.clone(), args.clone())) {
            Some(to) => (to.clone(), true),
            None => (Some(owner.clone()), false),
        };
        let n = match &now_owner {
            Some(no) => news.get(&(no.clone(), *tag, args.clone())).unwrap_or(&none),
            None => &none,
        };
        if !owner_moved && n.is_empty() {
            continue;
        }
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
        if let Some(no) = &now_owner {
            let family = (no.clone(), *tag, args.clone());
            from_base.extend(pairs.values().flatten().map(|&j| (family.clone(), j)));
        }
        // A closure without a counterpart in a family that gained or lost closures may be edited
        // in place or replaced by another under its number: the two cannot be told apart (a
        // closure passing one of its own closures to generic code, `iter().map(|x| …)`, refers to
        // an instance whose symbol follows that closure's number, so its code differs when
        // renumbered), and its old values must not meet another closure's code.
        let shifted = pairs.iter().any(|(k, j)| j.is_some_and(|j| j != *k));
        // The same in a closure of such a family, though it kept its number: an outer closure
        // spawning `async move { … }` compiles to the same code as the one that took its number
        // (they call `tokio::spawn` over their own blocks, whose symbols follow the numbers), and
        // is paired with it; its block is not the other's.
        let changed_number = !o.keys().eq(n.keys());
        let owner_suspect = suspect.contains(&(owner.clone(), args.clone()));
        if changed_number || owner_suspect || owner_moved {
            suspect.extend(o.keys().map(|&k| (closure_name(owner, tag, k), args.clone())));
        }
        let counted = pairs.values().any(Option::is_none) && (changed_number || owner_suspect);
        if !(owner_moved || shifted || counted) {
            continue;
        }
        let what = if *tag == "closure" { "closures" } else { "async blocks" };
        // The closures under the old path in the new build: other closures, when it moved.
        let at_old_path = news.get(key).unwrap_or(&none);
        for (&k, &j) in &pairs {
            let old_path = closure_name(owner, tag, k);
            let now_path = j.zip(now_owner.as_deref()).map(|(j, no)| closure_name(no, tag, j));
            let now_env = j.zip(now_owner.as_deref()).map(|(j, no)| env_name(no, tag, j, args));
            out.envs.insert(env_name(owner, tag, k, args), now_env);
            if now_path.as_deref() == Some(old_path.as_str()) {
                continue;
            }
            moved.insert((old_path.clone(), args.clone()), now_path.clone());
            out.moved.insert(env_name(owner, tag, k, args));
            let now = at_old_path.get(&k).and_then(|t| t.linkage).map(names::canonical);
            if now.is_some() && now == o[&k].linkage.map(names::canonical) {
                out.shared_symbols.insert(env_name(owner, tag, k, args));
            }
            let Some(linkage) = o[&k].linkage else { continue };
            let now = match &now_path {
                Some(p) => format!("is `{p}{args}` now"),
                None => "was edited or removed".to_string(),
            };
            let whose = match (owner_moved, &now_owner) {
                (false, _) if shifted => format!("the {what} of `{owner}` were renumbered"),
                (false, _) if changed_number => format!("`{owner}` gained or lost {what}"),
                (false, _) => format!("a function holding `{owner}` gained or lost closures"),
                (true, Some(no)) => format!("`{owner}` was renumbered to `{no}`, and with it its {what}"),
                (true, None) => format!("`{owner}` was edited or removed, and with it its {what}"),
            };
            out.kept.insert(
                names::canonical(linkage).to_string(),
                format!("{whose} and `{old_path}{args}` {now}: those made before the patch keep their code"),
            );
        }
    }
    for (key, family) in &news {
        let (owner, tag, args) = key;
        for (&j, side) in family {
            if let (Some(body), false) = (side.body, from_base.contains(&(key.clone(), j))) {
                out.added.insert(env_name(owner, tag, j, args), body);
            }
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
/// The closures that patch added (or edited), which no base closure is, are paired by what they
/// are instead ([`by_content`]): `then_added` and `now_added` are [`Closures::added`] of that
/// patch's guard (kept in its record) and of this one.
///
/// Also returns the closures of that patch's build whose symbol the new build may give to
/// another closure ([`Since::moved`]).
pub fn through_base(
    (then, then_added): (&Pairing, &Bodies),
    (now, now_added): (&Pairing, &Bodies),
    old: &Model,
    new: &Model,
) -> Since {
    let mut paired = HashMap::new();
    let mut shared = HashSet::new();
    let content = by_content(then_added, now_added, old, new);
    // Closures that patch added whose code the new build has nowhere (edited, or removed).
    let unmatched: Vec<&String> = then_added
        .iter()
        .filter(|(p, b)| !content.contains_key(*p) && now_added.get(*p) != Some(b))
        .map(|(p, _)| p)
        .collect();
    if then.is_empty() && now.is_empty() && content.is_empty() && unmatched.is_empty() {
        return Since::default();
    }
    // A base closure's name in each build: its counterpart where its family was renumbered,
    // else its own (`None`: removed or edited there).
    let in_then = |b: &String| then.get(b).cloned().unwrap_or_else(|| Some(b.clone()));
    let in_now = |b: &String| now.get(b).cloned().unwrap_or_else(|| Some(b.clone()));
    let bases: HashSet<&String> = then.keys().chain(now.keys()).collect();
    let mut from_base_then = HashSet::new();
    // A new build's closure that is a base closure → that closure's name in that patch's build.
    let mut from_base_now: HashMap<String, Option<String>> = HashMap::new();
    for b in &bases {
        let (p, n) = (in_then(b), in_now(b));
        if let Some(p) = &p {
            from_base_then.insert(p.clone());
        }
        if let Some(n) = &n {
            from_base_now.insert(n.clone(), p.clone());
        }
        if let (Some(p), Some(n)) = (p, n) {
            if p != n {
                paired.insert(p, Some(n));
            }
        }
    }
    // A closure that patch added is no base closure, whatever the base closure of its name
    // became: its code tells which it is.
    for (p, found) in &content {
        match found {
            Found::Is(c) if c != p => paired.insert(p.clone(), Some(c.clone())),
            _ => paired.remove(p),
        };
    }
    // A closure that patch added, with no counterpart by content, in a function that gained or
    // lost closures (or some of whose closures are under other numbers): edited in place or
    // replaced by another under its number, the two cannot be told apart, and its old values
    // must not meet another closure's code — as `pair` rules for a base closure. It has no
    // counterpart, and keeps its code (`moved`, below). In a function whose closures all kept
    // their numbers it is edited in place, compared by name as any edit.
    let unpaired: Vec<&String> = {
        let families: HashSet<_> = unmatched.iter().filter_map(|p| family_of(p)).collect();
        let (then_numbers, now_numbers) = (numbers(old, &families), numbers(new, &families));
        let elsewhere =
            content.iter().filter(|(p, found)| **found != Found::Is((*p).clone())).map(|(p, _)| p);
        let renumbered: HashSet<_> =
            then.keys().chain(now.keys()).chain(elsewhere).filter_map(|p| family_of(p)).collect();
        unmatched
            .into_iter()
            .filter(|p| {
                family_of(p)
                    .is_none_or(|f| renumbered.contains(&f) || then_numbers.get(&f) != now_numbers.get(&f))
            })
            .collect()
    };
    for &p in &unpaired {
        paired.insert(p.clone(), None);
    }
    // The closures in a closure without a counterpart (or not told apart from another) have none
    // either, unless found by content: they are its, not those of the closure under its number.
    let no_owner: HashSet<&String> = unpaired
        .iter()
        .copied()
        .chain(content.iter().filter(|(_, f)| **f == Found::Ambiguous).map(|(p, _)| p))
        .collect();
    let nested: Vec<String> = match no_owner.is_empty() {
        true => Vec::new(),
        false => envs_in(old)
            .filter(|e| !content.contains_key(e) && ancestors(e).any(|a| no_owner.contains(&a)))
            .collect(),
    };
    for e in &nested {
        paired.entry(e.clone()).or_insert(None);
    }
    // Whether the closure whose captures type is `env` has the same symbol in both builds.
    let shares_symbol = |env: &str| {
        let linkage = |model: &Model| {
            let path = closure_of(env)?;
            model.closures.iter().find(|c| c.path == path).map(|c| names::canonical(&c.linkage).to_string())
        };
        linkage(old).is_some_and(|l| linkage(new) == Some(l))
    };
    // The captures types of that patch's build in the families the pairings cover.
    let base_families: HashSet<_> = bases.iter().filter_map(|b| family_of(b)).collect();
    let in_families: Vec<&String> =
        old.types.keys().filter(|t| family_of(t).is_some_and(|f| base_families.contains(&f))).collect();
    // Closures that patch added: gone when their number now names a base closure it knew
    // under another number.
    for &p in in_families.iter().filter(|p| !from_base_then.contains(**p)) {
        // (A base closure that patch edited or removed, `None`, may be this one, edited.)
        let Some(Some(known_as)) = from_base_now.get(p) else { continue };
        if known_as == p || paired.contains_key(p) || content.contains_key(p) {
            continue;
        }
        if shares_symbol(p) {
            shared.insert(p.clone());
            continue;
        }
        paired.insert(p.clone(), None);
    }
    // A closure's symbol that the new build gives to another closure: types named after it are
    // compared by name.
    for (p, n) in &paired {
        if n.as_ref().is_some_and(|n| n != p) && shares_symbol(p) {
            shared.insert(p.clone());
        }
    }
    for p in unpaired.iter().copied().chain(&nested) {
        if shares_symbol(p) {
            shared.insert(p.clone());
        }
    }
    let renames =
        paired.iter().filter(|(p, _)| !shared.contains(*p)).map(|(p, n)| (p.clone(), n.clone())).collect();
    // That patch's closures that are not the new build's closure of the same name: the same
    // closure only when both builds have it from the same base closure, or both added it.
    let same: HashSet<String> =
        bases.iter().filter_map(|b| Some(in_then(b)?).filter(|p| in_now(b).as_ref() == Some(p))).collect();
    let mut moved: HashSet<String> = in_families
        .into_iter()
        .chain(from_base_then.iter())
        .filter(|p| {
            let added_in_both = !from_base_then.contains(*p) && !from_base_now.contains_key(*p);
            !same.contains(*p) && !added_in_both
        })
        .cloned()
        .collect();
    // Paired by content: the same closure under the same name is where it was; under another
    // name, or not told apart from another closure of the same code, it is not.
    for (p, found) in content {
        match found {
            Found::Is(c) if c == p => moved.remove(&p),
            _ => moved.insert(p),
        };
    }
    moved.extend(unpaired.into_iter().cloned());
    // The closures in a closure that is not where it was are not either (their names follow
    // its number).
    if !moved.is_empty() {
        let nested_moved: Vec<String> =
            envs_in(old).filter(|e| !moved.contains(e) && ancestors(e).any(|a| moved.contains(&a))).collect();
        moved.extend(nested_moved);
    }
    Since { paired, renames, moved }
}

/// The numbers of the closures of each of `families` in `model` (its closures' paths and its
/// captures types).
fn numbers(model: &Model, families: &HashSet<Key>) -> HashMap<Key, BTreeSet<u32>> {
    let mut out: HashMap<Key, BTreeSet<u32>> = HashMap::new();
    if families.is_empty() {
        return out;
    }
    let mut add = |(owner, tag, n, args): (String, &'static str, u32, String)| {
        let key = (owner, tag, args);
        if families.contains(&key) {
            out.entry(key).or_default().insert(n);
        }
    };
    model.closures.iter().filter_map(|c| numbered(&c.path, &CLOSURES)).for_each(&mut add);
    model.types.keys().filter(|t| t.contains("_env#")).filter_map(|t| numbered(t, &ENVS)).for_each(&mut add);
    out
}

/// The captures types of the closures `model` knows: its captures types, and those of its
/// closures' paths.
fn envs_in(model: &Model) -> impl Iterator<Item = String> + '_ {
    let envs: HashSet<String> = (model.types.keys())
        .filter(|t| t.contains("_env#") && numbered(t, &ENVS).is_some())
        .cloned()
        .chain(model.closures.iter().filter_map(|c| env_of(&c.path)))
        .collect();
    envs.into_iter()
}

/// The captures types of the closures `env`'s closure is in, innermost first
/// (`f::{closure#0}::{closure_env#1}` → `f::{closure_env#0}`).
fn ancestors(env: &str) -> impl Iterator<Item = String> {
    let first = numbered(env, &ENVS).and_then(|(owner, _, _, args)| env_of(&format!("{owner}{args}")));
    std::iter::successors(first, |e| {
        numbered(e, &ENVS).and_then(|(owner, _, _, args)| env_of(&format!("{owner}{args}")))
    })
}

/// What [`by_content`] found for a closure an earlier patch added.
#[derive(Debug, PartialEq)]
enum Found {
    /// The new build's closure of the same code and captures (its captures type).
    Is(String),
    /// More than one: which one it is cannot be told, and its values keep that patch's code
    /// ([`Since::moved`]), their captures compared by name, as before.
    Ambiguous,
}

/// The closures an earlier patch added (`then_added`, of that patch's build `old`) that the new
/// build (`new`) added too (`now_added`): the same code ([`Closures::added`], compared as
/// [`pair`] compares), the same captures' layout, in the same function (or the closure paired
/// with the one it is in). A closure found under its own name when it is among several is that
/// one. A closure not found (edited or removed) has no counterpart in [`through_base`] when its
/// function gained or lost closures or some of them moved (its copy pinned), and is compared by
/// name (edited in place) when they all kept their numbers.
///
/// The two patches' hashes are comparable: a closure that is no base closure is in a function
/// whose closures differ from the base build's, which each patch's diff hashes alike, with
/// references among its closures by content ([`crate::diff::Diff::closure_bodies`]). Where they
/// are not (a cycle of references hashed from another entry), nothing is found: the closure is
/// taken as edited, as above.
fn by_content(then_added: &Bodies, now_added: &Bodies, old: &Model, new: &Model) -> HashMap<String, Found> {
    let mut out = HashMap::new();
    // Most patches move no closure that the patch before added: a quick no.
    if then_added.iter().all(|(p, b)| now_added.get(p) == Some(b)) {
        return out;
    }
    let mut by_body: HashMap<u128, Vec<&String>> = HashMap::new();
    for (c, b) in now_added {
        by_body.entry(*b).or_default().push(c);
    }
    let same_captures = |p: &str, c: &str| match (old.types.get(p), new.types.get(c)) {
        (Some(x), Some(y)) => same_layout(x, y),
        (None, None) => true,
        _ => false,
    };
    // Outer closures first: the closures in a paired closure are looked for in its counterpart.
    let mut ps: Vec<(&String, &u128)> = then_added.iter().collect();
    ps.sort_by(|a, b| (a.0.len(), a.0).cmp(&(b.0.len(), b.0)));
    let mut taken: HashSet<&String> = HashSet::new();
    for (p, body) in ps {
        let Some((owner, tag, n, args)) = numbered(p, &ENVS) else { continue };
        // The function it is in, in the new build: a closure's counterpart, when that closure
        // was found elsewhere.
        let owner = match env_of(&format!("{owner}{args}")).and_then(|e| out.get(&e)) {
            Some(Found::Is(c)) => closure_of(c).map(|c| split_args(&c).0.to_string()),
            Some(Found::Ambiguous) => None,
            None => Some(owner),
        };
        let Some(owner) = owner else { continue };
        let family = (owner.clone(), tag, args.clone());
        let candidates: Vec<&String> = (by_body.get(body).into_iter().flatten())
            .filter(|c| !taken.contains(*c) && family_of(c).as_ref() == Some(&family) && same_captures(p, c))
            .copied()
            .collect();
        let own = env_name(&owner, tag, n, &args);
        let found = match candidates.iter().find(|c| ***c == own).or(candidates.first()) {
            Some(&c) if candidates.len() == 1 || *c == own => {
                taken.insert(c);
                Found::Is(c.clone())
            }
            Some(_) => Found::Ambiguous,
            None => continue,
        };
        out.insert(p.clone(), found);
    }
    out
}

/// How an earlier patch's closures meet the new build's ([`through_base`]).
#[derive(Debug, Default)]
pub struct Since {
    /// Captures types of that patch's build → the new build's name of the same closure, as
    /// [`super::compare::changed_types_paired`] takes them (`None`: no counterpart).
    pub paired: Pairing,
    /// The part of `paired` other types may be read under (not the closures whose symbol the
    /// new build gives to another closure).
    pub renames: Pairing,
    /// Captures types of that patch's closures that are not the new build's closure of the same
    /// name: that patch's copies of their code, and of generic code over them, must keep it
    /// ([`pins`]), since under the same symbol the new build may have another closure's.
    pub moved: HashSet<String>,
}

/// The functions of an earlier patch's build (`old`) whose copies in that patch must keep their
/// code: the closures in `moved` ([`Since::moved`]) and the generic instances over them (their
/// described generics or parameters name one), by canonical symbol.
pub fn pins(old: &Model, moved: &HashSet<String>) -> Vec<String> {
    if moved.is_empty() {
        return Vec::new();
    }
    let closures = old
        .closures
        .iter()
        .filter(|c| env_of(&c.path).is_some_and(|e| moved.contains(&e)))
        .map(|c| &c.linkage);
    let instances = old
        .functions
        .iter()
        .filter(|f| f.generics.iter().chain(&f.params).any(|t| moved.iter().any(|env| names_type(t, env))))
        .map(|f| &f.linkage);
    closures.chain(instances).map(|l| names::canonical(l).to_string()).collect()
}

#[cfg(test)]
mod tests;
