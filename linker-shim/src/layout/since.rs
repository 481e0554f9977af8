//! Layouts since the newest patch: a type edited twice, and values made by a patch's code.
//!
//! The rest of the guard compares the build the process started from with the new one. But a
//! process that took patches also runs *their* code: a frame entered after patch 1 (a thread it
//! spawned, a loop it called) runs patch 1's code with values of patch 1's layout, and patch 1's
//! statics (`static LOG: Mutex<Vec<Mode>>`, bound by later patches through the ledger) hold
//! them. When the next edit changes such a type again, those values must not meet the new code
//! either — and the base build's description shows neither patch 1's frames nor its statics.
//!
//! So each patch leaves beside its file the units of the build it was made from (key and content
//! hash) and a layout digest of each workspace type they describe ([`record`], written before
//! the apply), and the next patch compares that build with the new one on the units that differ
//! between them (a type's layout change changes every unit describing it, as for the base
//! comparison). Most patches change no type: the digests of what the new side describes (read
//! by the base comparison already) equal the recorded ones, and nothing more is read. Otherwise
//! the patch's unit models come from the guard's cache (the patch's own guard kept them); a model
//! no longer kept, or a patch without a record (or with one of an older ipbp-ld, which does not
//! say which closures it added, or one that does not parse), makes the check impossible, and the
//! patch is refused saying so rather than risk a wrong one. For each type changed since that
//! patch:
//!
//! - every function of that build that receives or returns one (its receiver included) is
//!   **kept**: the patch's copies of it keep their code, for good (`deliver/chain.rs` pins
//!   them), because that patch's code calls them with values of that patch's layout. So a frame
//!   of that patch's code (a thread it started, a loop it entered) goes on with its values and
//!   its own copies, consistent; new code calls only new copies or the image's entries;
//! - what outlives a frame is judged from the patch's own description, as [`super::live`]
//!   judges the base build's: its statics and thread-locals (those it added, which later
//!   patches bind through the ledger, included), type-erased storage, futures in flight —
//!   refused, naming them. (Its `main` never runs, and its frames are consistent, above.)
//!
//! Induction covers older patches: each patch is checked against the one before it, and what
//! it kept stays kept.

use super::closures::{Bodies, Pairing};
use super::compare::changed_types_paired;
use super::model::Model;
use super::{live, Cache, Layouts};
use crate::diff::{names, Diff};
use crate::objects::units::Build;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The record beside a patch file: `patch-3.so` → `patch-3.units`.
pub fn record_path(patch_file: &Path) -> PathBuf {
    patch_file.with_extension("units")
}

/// What a patch leaves beside its file about the build it was made from.
#[derive(Debug, Default, PartialEq)]
pub struct Record {
    /// Each workspace unit that differs from the build the process started from: key → content
    /// hash.
    pub units: BTreeMap<String, u128>,
    /// The layout digest of each type naming a workspace crate that those units describe, by
    /// the hash of its name ([`digests`]): most patches change no type, and this tells so
    /// without reading a model.
    pub types: HashMap<u64, u64>,
    /// The workspace's crates in that build: the name its unit models are kept under in the
    /// cache depends on them ([`Cache::for_crates`]).
    pub crates: Vec<String>,
    /// How that patch's guard paired the base build's renumbered closures with its build's
    /// ([`super::closures::Closures::envs`]): the next check pairs through them.
    pub closures: Pairing,
    /// The closures of that build that are no base closure, by what their code means
    /// ([`super::closures::Closures::added`]): the next check pairs them by content.
    pub added: Bodies,
}

/// The first line of a record, naming its format: the records of an older ipbp-ld, without it,
/// do not say which closures their patch added (`A` lines), and are not read.
const VERSION: &str = "V 2";

/// Why a patch's record is not read ([`read_record`]).
#[derive(Debug, PartialEq)]
pub enum Unread {
    /// There is none (or it cannot be opened).
    Missing,
    /// It has no version line, or another one: written by another ipbp-ld.
    Version(Option<String>),
    /// A line that does not parse (1-based number, text).
    Line(usize, String),
}

/// Writes the record of the build a patch was made from. Best effort: a missing record makes the
/// next patch refused, never wrong.
pub fn record(
    patch_file: &Path,
    units: &[(&str, u128)],
    (types, (closures, added)): (&HashMap<u64, u64>, (&Pairing, &Bodies)),
    crates: &[String],
) -> std::io::Result<()> {
    let mut text = format!("{VERSION}\n");
    // Type names may hold spaces (`<T as Trait>`), never tabs.
    for (old, new) in closures {
        text.push_str(&format!("E {old}\t{}\n", new.as_deref().unwrap_or("")));
    }
    for (env, body) in added {
        text.push_str(&format!("A {body:032x} {env}\n"));
    }
    for c in crates {
        text.push_str(&format!("C {c}\n"));
    }
    for (key, hash) in units {
        text.push_str(&format!("{hash:032x} {key}\n"));
    }
    for (name, digest) in types {
        text.push_str(&format!("T {name:016x} {digest:016x}\n"));
    }
    let path = record_path(patch_file);
    let tmp = path.with_extension("units.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

/// The record of `patch_file`; an error when there is none, it was written by another ipbp-ld
/// (another format), or a line does not parse. Each makes the next patch refused, never wrong.
pub fn read_record(patch_file: &Path) -> Result<Record, Unread> {
    let text = std::fs::read_to_string(record_path(patch_file)).map_err(|_| Unread::Missing)?;
    let mut lines = text.lines();
    match lines.next() {
        Some(VERSION) => {}
        Some(v) if v.starts_with("V ") => return Err(Unread::Version(Some(v[2..].to_string()))),
        _ => return Err(Unread::Version(None)),
    }
    let mut record = Record::default();
    for (at, l) in lines.enumerate() {
        read_line(l, &mut record).ok_or_else(|| Unread::Line(at + 2, l.to_string()))?;
    }
    Ok(record)
}

/// Adds one line of a record to `record`; `None` when it does not parse.
fn read_line(l: &str, record: &mut Record) -> Option<()> {
    if let Some(e) = l.strip_prefix("E ") {
        let (old, new) = e.split_once('\t')?;
        record.closures.insert(old.to_string(), (!new.is_empty()).then(|| new.to_string()));
    } else if let Some(a) = l.strip_prefix("A ") {
        let (body, env) = a.split_once(' ')?;
        record.added.insert(env.to_string(), u128::from_str_radix(body, 16).ok()?);
    } else if let Some(c) = l.strip_prefix("C ") {
        record.crates.push(c.to_string());
    } else if let Some(t) = l.strip_prefix("T ") {
        let (name, digest) = t.split_once(' ')?;
        let hex = |h: &str| u64::from_str_radix(h, 16).ok();
        record.types.insert(hex(name)?, hex(digest)?);
    } else {
        let (hash, key) = l.split_once(' ')?;
        record.units.insert(key.to_string(), u128::from_str_radix(hash, 16).ok()?);
    }
    Some(())
}

/// The layout digest of every type of `model` that [`super::compare`] compares (structs, enums,
/// unions) whose name mentions one of the workspace's `crates` (`app::Mode`,
/// `alloc::vec::Vec<app::Mode>`, `app::main::{closure_env#0}`), by the hash of its name: what
/// `compare` looks at — kind, size, alignment, fields, tag, variants. A type of another crate
/// changes layout between two builds of one workspace only with a workspace type it holds, whose
/// name it then mentions.
pub fn digests(model: &Model, crates: &[String]) -> HashMap<u64, u64> {
    let mut buf = Vec::with_capacity(256);
    ours(model, crates).map(|(n, rec)| (name_hash(n), digest(rec, &mut buf))).collect()
}

/// The types of `model` [`digests`] covers.
fn ours<'m>(
    model: &'m Model,
    crates: &[String],
) -> impl Iterator<Item = (&'m str, &'m super::model::TypeRec)> + 'm {
    let needles: Vec<String> = crates.iter().map(|c| format!("{c}::")).collect();
    model.types.iter().filter_map(move |(n, rec)| {
        let compared = rec.kind != super::model::Kind::Other
            && needles.iter().any(|c| n.contains(c.as_str()))
            && !model.variant_types.contains(n);
        compared.then_some((n.as_str(), rec))
    })
}

fn name_hash(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

fn digest(rec: &super::model::TypeRec, b: &mut Vec<u8>) -> u64 {
    b.clear();
    let field = |b: &mut Vec<u8>, f: &super::model::Field| {
        b.extend_from_slice(f.name.as_bytes());
        b.push(0);
        b.extend_from_slice(&f.offset.to_le_bytes());
        b.extend_from_slice(f.ty.as_bytes());
        b.push(0);
    };
    b.push(rec.kind as u8);
    b.extend_from_slice(&rec.size.unwrap_or(u64::MAX).to_le_bytes());
    b.extend_from_slice(&rec.align.unwrap_or(u64::MAX).to_le_bytes());
    for f in &rec.fields {
        field(b, f);
    }
    b.push(1);
    if let Some(t) = &rec.tag {
        field(b, t);
    }
    for v in &rec.variants {
        b.push(2);
        b.extend_from_slice(v.name.as_bytes());
        b.push(0);
        b.extend_from_slice(&v.discr.unwrap_or(u64::MAX).to_le_bytes());
        for f in &v.fields {
            field(b, f);
        }
    }
    xxhash_rust::xxh3::xxh3_64(b)
}

/// What the comparison with the newest patch's build decided.
#[derive(Debug, Default)]
pub struct Since {
    /// One reason per type changed since that patch whose values of its layout are live.
    pub refusals: Vec<String>,
    /// The statics and thread-locals named in them (paths).
    pub statics: Vec<String>,
    /// Mangled names of the functions whose copies in earlier patches keep their code.
    pub kept: HashSet<String>,
    /// The new side's digests ([`digests`]), when computed: the record of this patch.
    pub digests: Option<HashMap<u64, u64>>,
}

/// The newest patch the process holds, as the driver found it.
pub struct Previous<'p> {
    /// `patch 3`: how the reasons name it.
    pub label: String,
    /// Its record ([`read_record`]), or why it is not read.
    pub record: Result<Record, Unread>,
    /// Its file, for the reason when the record is missing.
    pub file: &'p Path,
}

/// Compares the build of the newest patch (`prev`) with the new one. `base_refusals` are the
/// base comparison's: a type already refused is not named twice.
///
/// `described` is what the new build's changed units describe, when the base comparison read
/// them (it does not when no definition changed): the new side of every unit that differs from
/// the base build. Only the other units that differ from the patch's build (an edit undone) are
/// read for the new side here.
///
/// `base_described` is the base comparison's old side, `crates` the workspace's crates.
pub fn check<'a>(
    prev: &Previous<'_>,
    (base, current): (&Build<'a>, &Build<'a>),
    diff: &Diff,
    (described, base_described, base_refusals, (now_closures, now_added)): (
        Option<&Model>,
        &Model,
        &[String],
        (&Pairing, &Bodies),
    ),
    ((prev_cache, cache), crates): ((&Cache, &Cache), &[String]),
) -> Since {
    let mut since = Since::default();
    let units = record_path(prev.file);
    let (units, file) = (units.display(), prev.file.display());
    let (recorded, digested, then_crates, then_closures, added) = match &prev.record {
        Ok(Record { units, types, crates, closures, added }) => (units, types, crates, closures, added),
        Err(why) => {
            let why = match why {
                Unread::Missing => format!("{file} has no record of its units"),
                Unread::Version(None) => format!("its record {units} was written by an older ipbp-ld"),
                Unread::Version(Some(v)) => {
                    format!("its record {units} was written by another ipbp-ld (format {v})")
                }
                Unread::Line(n, l) => format!("its record {units} cannot be read: line {n} `{l}`"),
            };
            since.refusals.push(format!(
                "the types of the build {} was made from are not known ({why}); values of its layout may be live, restart to use this build",
                prev.label,
            ));
            return since;
        }
    };
    let key_hash = |b: &Build<'a>, ids: &[crate::objects::units::UnitId]| -> HashMap<String, u128> {
        ids.iter().map(|&u| (b.units[u].key.to_string(), b.units[u].hash)).collect()
    };
    let now = key_hash(current, &diff.changed_units_current);
    if let Some(described) = described {
        let digests = digests(described, crates);
        let unchanged =
            unchanged_since(digested, recorded, (&now, described, base_described), (&digests, crates));
        since.digests = Some(digests);
        // Renumbered closures are judged with the models even when no layout changed (below), and
        // so are closures that patch added whose code is not under their own name in the new
        // build (elsewhere, or nowhere: edited or removed, perhaps while another took their
        // number, whose code their values must not meet).
        let added_moved = added.iter().any(|(p, b)| now_added.get(p) != Some(b));
        if unchanged && then_closures.is_empty() && now_closures.is_empty() && !added_moved {
            return since;
        }
    }
    // The units that differ between that patch's build and this one: a unit not in a record is
    // the base build's, on either side.
    let keys: std::collections::BTreeSet<&str> =
        recorded.keys().map(String::as_str).chain(now.keys().map(String::as_str)).collect();
    let mut old = Model::default();
    let mut undone = Model::default();
    let mut any_undone = false;
    let mut missing = Vec::new();
    let mut crates = HashSet::new();
    for key in keys {
        let then = recorded.get(key).copied().or_else(|| base.get(key).map(|u| u.hash));
        let next = now.get(key).copied().or_else(|| current.get(key).map(|u| u.hash));
        if then == next {
            continue;
        }
        if let Some(u) = current.get(key).or_else(|| base.get(key)) {
            crates.insert(u.crate_name().to_string());
        }
        if let Some(hash) = then {
            // The patch's own unit is kept only as a model; the base build's can be read again.
            let loaded = match recorded.contains_key(key) {
                true => {
                    // Kept under the name the patch's own workspace gave it.
                    let kept = prev_cache.for_crates(then_crates);
                    load(&kept, hash, None, &mut old) || load(prev_cache, hash, None, &mut old)
                }
                false => load(cache, hash, base.get(key).and_then(|u| u.bytes().ok()), &mut old),
            };
            if !loaded {
                missing.push(format!("its {key}"));
            }
        }
        match next {
            Some(hash) if described.is_none() || !now.contains_key(key) => {
                any_undone = true;
                let bytes = current.get(key).and_then(|u| u.bytes().ok());
                if !load(cache, hash, bytes, &mut undone) {
                    missing.push(format!("this build's {key}"));
                }
            }
            _ => {} // in `described`, or gone
        }
    }
    if let Some(first) = missing.first() {
        since.refusals.push(format!(
            "the type descriptions of the build {} was made from are no longer kept ({first}); values of its layout may be live, restart to use this build",
            prev.label
        ));
        return since;
    }
    let new = match described {
        Some(described) if any_undone => {
            let mut all = described.clone();
            all.absorb(undone);
            std::borrow::Cow::Owned(all)
        }
        Some(described) => std::borrow::Cow::Borrowed(described),
        None => std::borrow::Cow::Owned(undone),
    };
    let closures =
        super::closures::through_base((then_closures, added), (now_closures, now_added), &old, &new);
    // That patch's closures whose symbol the new build may give to another closure keep their
    // code there, changed types or not (a closure that patch removed put back: its copy of the
    // symbol is the other closure's code, and closures that patch made hold it).
    since.kept.extend(super::closures::pins(&old, &closures.moved));
    let changes = changed_types_paired(&old, &new, &closures.paired, &closures.renames);
    if changes.is_empty() {
        return since;
    }
    let reach = live::Reach::new(&old);
    for change in &changes {
        let holders = reach.holders(&change.name, false);
        for f in &old.functions {
            if f.params.iter().chain(f.ret.iter()).any(|t| holders.contains(t.as_str())) {
                since.kept.insert(names::canonical(&f.linkage).to_string());
            }
        }
    }
    let already: Vec<String> = changes
        .iter()
        .map(|c| c.subject())
        .filter(|s| base_refusals.iter().any(|r| r.starts_with(&format!("{s} changed layout"))))
        .collect();
    // `live` reads only the old side.
    let layouts = Layouts { old, changes, crates, units_with_types: 1, ..Default::default() };
    let (reasons, statics) = live::refusals_in(&layouts, diff, false);
    since.statics = statics;
    since.refusals = reasons
        .into_iter()
        .filter(|r| !already.iter().any(|s| r.starts_with(&format!("{s} changed layout"))))
        .map(|r| {
            r.replacen(
                " and old values are live (",
                &format!(" since {}, and values of that patch's layout are live (", prev.label),
                1,
            )
        })
        .collect();
    since
}

/// Whether no type the differing units describe changed layout since the patch's build, told
/// from digests alone: each type naming a workspace crate that the new side describes
/// (`described`, when every differing unit is among `now`, the units that differ from the base
/// build) has the digest the patch recorded — or, for a type the patch's own units did not
/// describe, the digest of the base build's description (a unit the patch did not change is the
/// base build's, and the base comparison read it when it differs from the new one). `false`
/// sends the check to the models.
fn unchanged_since(
    digested: &HashMap<u64, u64>,
    recorded: &BTreeMap<String, u128>,
    (now, described, base_described): (&HashMap<String, u128>, &Model, &Model),
    (digests, crates): (&HashMap<u64, u64>, &[String]),
) -> bool {
    if recorded.keys().any(|k| !now.contains_key(k)) {
        return false; // an edit undone: its new side is not in `described`
    }
    // Most patches: the patch recorded a digest of every type (`digests` has one per type, by
    // the same name hash), and no name is needed to compare them.
    if digests.keys().all(|h| digested.contains_key(h)) {
        return digests.iter().all(|(h, d)| digested.get(h) == Some(d));
    }
    let mut buf = Vec::new();
    ours(described, crates).all(|(name, _)| {
        let hash = name_hash(name);
        let then = digested
            .get(&hash)
            .copied()
            .or_else(|| base_described.types.get(name).map(|r| digest(r, &mut buf)));
        then.is_none_or(|t| Some(t) == digests.get(&hash).copied())
    })
}

/// Adds the model of the unit with content hash `hash` to `model`: from the cache, or read from
/// `bytes` (and kept). `false` when neither has it.
fn load(cache: &Cache, hash: u128, bytes: Option<&[u8]>, model: &mut Model) -> bool {
    if cache.load_into(hash, model).is_some() {
        return true;
    }
    let Some(bytes) = bytes else { return false };
    let mut one = Model::default();
    match super::dwarf::read(bytes, &mut one) {
        Ok(described) => {
            cache.save(hash, &one, described);
            model.absorb(one);
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_beside_its_patch() {
        let dir = tempfile::tempdir().unwrap();
        let so = dir.path().join("patch-3.so");
        let types = HashMap::from([(name_hash("app::Mode"), 5u64), (7, u64::MAX)]);
        let closures = HashMap::from([
            (
                "<T as app::Run>::go::{closure_env#0}".to_string(),
                Some("<T as app::Run>::go::{closure_env#1}".to_string()),
            ),
            ("app::main::{closure_env#2}".to_string(), None),
        ]);
        let added = HashMap::from([("<T as app::Run>::go::{closure_env#0}".to_string(), u128::MAX - 5)]);
        record(
            &so,
            &[("app.a.rcgu.o", 0xabc), ("libw.rlib(w.o)", 7)],
            (&types, (&closures, &added)),
            &["app".into(), "w".into()],
        )
        .unwrap();
        assert_eq!(record_path(&so), dir.path().join("patch-3.units"));
        let back = read_record(&so).unwrap();
        assert_eq!(back.units.get("app.a.rcgu.o"), Some(&0xabc));
        assert_eq!(back.units.get("libw.rlib(w.o)"), Some(&7));
        assert_eq!(back.types.get(&7), Some(&u64::MAX));
        assert_eq!(back.types.len(), 2);
        assert_eq!(back.crates, ["app", "w"]);
        assert_eq!(back.closures, closures);
        assert_eq!(back.added, added);
        assert_eq!(read_record(&dir.path().join("patch-4.so")), Err(Unread::Missing));
        // An older ipbp-ld's record (no version line, no `A` lines) is not read: which closures
        // that patch added is not known.
        let text = std::fs::read_to_string(record_path(&so)).unwrap();
        let older: String =
            text.lines().skip(1).filter(|l| !l.starts_with("A ")).map(|l| format!("{l}\n")).collect();
        std::fs::write(record_path(&so), &older).unwrap();
        assert_eq!(read_record(&so), Err(Unread::Version(None)));
        std::fs::write(record_path(&so), format!("V 3\n{older}")).unwrap();
        assert_eq!(read_record(&so), Err(Unread::Version(Some("3".into()))));
        // A line that does not parse names itself.
        std::fs::write(record_path(&so), format!("{VERSION}\nA zz app::main::{{closure_env#0}}\n")).unwrap();
        assert_eq!(read_record(&so), Err(Unread::Line(2, "A zz app::main::{closure_env#0}".into())));
    }

    /// Digests tell a changed layout from an unchanged one, for the workspace's types alone.
    #[test]
    fn digests_follow_layouts_of_the_workspaces_types() {
        use crate::layout::model::{Field, Kind, TypeRec};
        let strukt = |fields: &[(&str, u64)]| TypeRec {
            kind: Kind::Struct,
            size: Some(8 * fields.len() as u64),
            align: Some(8),
            fields: fields
                .iter()
                .map(|&(n, o)| Field { name: n.into(), offset: o, ty: "u64".into() })
                .collect(),
            tag: None,
            variants: vec![],
            edges: vec![],
        };
        let model = |fields: &[(&str, u64)]| {
            let mut m = Model::default();
            m.types.insert("app::Mode".into(), strukt(fields));
            m.types.insert("core::time::Duration".into(), strukt(&[("secs", 0)]));
            m
        };
        let crates = ["app".to_string()];
        let (one, again) = (model(&[("id", 0)]), model(&[("id", 0)]));
        let (swapped, grown) = (model(&[("id", 8), ("level", 0)]), model(&[("id", 0), ("level", 8)]));
        let d = |m: &Model| digests(m, &crates).get(&name_hash("app::Mode")).copied();
        assert_eq!(d(&one), d(&again));
        assert_ne!(d(&one), d(&grown));
        assert_ne!(d(&grown), d(&swapped));
        assert_eq!(digests(&one, &crates).len(), 1, "another crate's type is not recorded");

        let recorded = BTreeMap::from([("u".to_string(), 1u128)]);
        let now = HashMap::from([("u".to_string(), 2u128)]);
        let digested = digests(&grown, &crates);
        let base = Model::default();
        let same =
            |m: &Model, recorded_types: &HashMap<u64, u64>, now: &HashMap<String, u128>, base: &Model| {
                unchanged_since(recorded_types, &recorded, (now, m, base), (&digests(m, &crates), &crates))
            };
        assert!(same(&grown, &digested, &now, &base));
        assert!(!same(&swapped, &digested, &now, &base));
        assert!(!same(&grown, &digested, &HashMap::new(), &base), "undone");
        // Not described by the patch's units: the base build's description is the patch's.
        assert!(same(&grown, &HashMap::new(), &now, &grown));
        assert!(!same(&grown, &HashMap::new(), &now, &one));
    }
}
