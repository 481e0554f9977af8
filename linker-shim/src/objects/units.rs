//! The code of one build that a patch can change: the binary crate's objects and the objects of
//! the workspace's rlibs, as [`Unit`]s paired across builds by a stable key.
//!
//! Dependencies from a registry or git, C archives and the Rust sysroot are not units: their code
//! does not change between two builds of one program (when it does, the build is refused — see
//! [`toolchain_changed`]), and only generic code instantiated in the workspace can call workspace
//! code, which lands in workspace objects.
//!
//! A leaf beside the object model: diff, layout and plan read units, and so does building the
//! link index (whose format, [`crate::index`], lists them).

use crate::error::{Context, Result};
use crate::index::LinkIndex;
use crate::objects::load::{archive_members, parse, Arena, Unit};
use crate::objects::{Object, Origin};
use crate::store::inputs::{is_sysroot, Input, InputKind};
use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// One object of the workspace in one build. Known by key and content hash without being read:
/// the file is mapped and parsed only when something asks for its object. Building the list is
/// on every patch's path and grows with the program, so units borrow their names from the link
/// index where they can and share their input's paths.
pub struct WorkUnit<'a> {
    /// Pairs this unit with its counterpart in another build (see [`unit_key`]).
    pub key: Cow<'a, str>,
    /// xxh3-128 of the unit's bytes.
    pub hash: u128,
    /// The archive member, or `None` for an object file.
    member: Option<Cow<'a, str>>,
    /// Its number in the build's input list.
    pub input: u32,
    source: Rc<Source>,
    arena: &'a Arena,
    object: OnceCell<Result<Object<'a>>>,
}

/// Where the units of one input come from.
struct Source {
    /// The input as linked (an object, or the archive holding the unit).
    path: PathBuf,
    /// The file to read: the input itself, or its kept copy.
    file: PathBuf,
}

impl<'a> WorkUnit<'a> {
    /// The input as linked (object, or archive and member).
    pub fn origin(&self) -> Origin {
        Origin { path: self.source.path.clone(), member: self.member().map(str::to_string) }
    }

    pub fn member(&self) -> Option<&str> {
        self.member.as_deref()
    }

    /// The object if it was parsed already.
    pub fn parsed(&self) -> Option<&Object<'a>> {
        self.object.get().and_then(|r| r.as_ref().ok())
    }

    /// The parsed object (mapped and parsed on first use).
    pub fn object(&self) -> Result<&Object<'a>> {
        // A unit that cannot be read says so to every caller (the cached error is not `Clone`).
        self.object.get_or_init(|| self.read()).as_ref().map_err(|e| crate::err!("{e}"))
    }

    fn read(&self) -> Result<Object<'a>> {
        parse(&Unit { origin: self.origin(), data: self.bytes()? })
    }

    /// The unit's bytes (its file, or its member of an archive), mapped for the arena's lifetime.
    pub fn bytes(&self) -> Result<&'a [u8]> {
        let Source { path, file } = &*self.source;
        let data = self.arena.map(file).with_context(|| {
            format!("cannot read link input {} (kept for {})", file.display(), path.display())
        })?;
        match self.member() {
            None => Ok(data),
            Some(member) => Ok(archive_members(path, data)?
                .into_iter()
                .find(|m| m.origin.member.as_deref() == Some(member))
                .with_context(|| format!("{} has no member {member} any more", file.display()))?
                .data),
        }
    }

    /// The crate the unit was compiled from: `app` for `app-1f2e….cgu.rcgu.o` (and for a member
    /// of `libapp-1f2e….rlib`).
    pub fn crate_name(&self) -> &str {
        let file = match self.member() {
            Some(m) => m,
            None => self.key.as_ref(),
        };
        file.split(['-', '.']).next().unwrap_or(file)
    }
}

crate::objects::position_id!(
    /// A workspace unit of one build: its position in [`Build::units`] (link order). Crosses from
    /// the units model to diff, layout, the planner's graph and the link index builder.
    UnitId,
    "unit",
    "each is a file or archive member"
);

/// The workspace units of one build, in link order.
pub struct Build<'a> {
    pub units: Vec<WorkUnit<'a>>,
    by_key: HashMap<Cow<'a, str>, usize, BuildHasherDefault<KeyHasher>>,
}

/// Hashes unit keys with one-shot xxh3, several times faster than the default SipHash on keys this
/// long (an archive's path and a member name). Every patch looks each key up several times
/// (pairing the two builds, diffing, indexing), so this is per-unit cost on the patch path. Keys
/// come from our own files: hash flooding is not a concern.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = self.0.rotate_left(5) ^ xxhash_rust::xxh3::xxh3_64(bytes);
    }
}

/// Makes the units of one input.
struct Maker<'a> {
    arena: &'a Arena,
    input: u32,
    source: Rc<Source>,
}

impl<'a> Maker<'a> {
    fn new(arena: &'a Arena, number: usize, input: &Input, stored: bool) -> Result<Self> {
        let source = Source { path: input.path.clone(), file: file_of(input, stored)? };
        Ok(Maker { arena, input: number as u32, source: Rc::new(source) })
    }

    fn unit(&self, key: Cow<'a, str>, hash: u128, member: Option<Cow<'a, str>>) -> WorkUnit<'a> {
        WorkUnit {
            key,
            hash,
            member,
            input: self.input,
            source: Rc::clone(&self.source),
            arena: self.arena,
            object: OnceCell::new(),
        }
    }

    /// Every unit of the input: an object by the content fingerprint capture computed (the
    /// same xxh3-128 of its bytes; the file is read only without one), an archive's members each
    /// hashed from their bytes.
    fn units(&self, input: &Input, units: &mut Vec<WorkUnit<'a>>) -> Result<()> {
        let Source { path, file } = &*self.source;
        if input.kind == InputKind::Object {
            let hash = match input.fingerprint.as_deref().and_then(fingerprint_hash) {
                Some(hash) => hash,
                None => xxhash_rust::xxh3::xxh3_128(self.arena.map(file)?),
            };
            units.push(self.unit(unit_key(path, None).into(), hash, None));
            return Ok(());
        }
        for member in archive_members(path, self.arena.map(file)?)? {
            let name = member.origin.member.clone();
            let key = unit_key(path, name.as_deref());
            let hash = xxhash_rust::xxh3::xxh3_128(member.data);
            // Most of a member is never read again (debug info): hashing need not keep it resident.
            self.arena.release(member.data);
            units.push(self.unit(key.into(), hash, name.map(Cow::Owned)));
        }
        Ok(())
    }
}

impl<'a> Build<'a> {
    pub fn get(&self, key: &str) -> Option<&WorkUnit<'a>> {
        self.by_key.get(key).map(|&i| &self.units[i])
    }

    pub fn position(&self, key: &str) -> Option<UnitId> {
        self.by_key.get(key).map(|&i| UnitId::at(i))
    }

    /// Every unit with its id, in link order.
    pub fn enumerate(&self) -> impl Iterator<Item = (UnitId, &WorkUnit<'a>)> {
        self.units.iter().enumerate().map(|(i, u)| (UnitId::at(i), u))
    }

    fn new(units: Vec<WorkUnit<'a>>) -> Self {
        let by_key = units.iter().enumerate().map(|(i, u)| (u.key.clone(), i)).collect();
        Build { units, by_key }
    }

    /// The units of a build as its link index lists them. `inputs` is the build's input list
    /// (the index refers to inputs by number); `stored` reads the kept copies.
    pub fn from_index(
        arena: &'a Arena,
        index: &LinkIndex<'a>,
        inputs: &[Input],
        stored: bool,
    ) -> Result<Self> {
        let mut units = Vec::new();
        let mut maker: Option<Maker<'a>> = None;
        for u in index.units() {
            if maker.as_ref().is_none_or(|m| m.input != u.input) {
                let input = inputs.get(u.input as usize).with_context(|| {
                    format!("the link index names input {} of {} inputs", u.input, inputs.len())
                })?;
                maker = Some(Maker::new(arena, u.input as usize, input, stored)?);
            }
            let member = (!u.member.is_empty()).then_some(Cow::Borrowed(u.member));
            units.push(maker.as_ref().expect("set just above for this input").unit(
                Cow::Borrowed(u.key),
                u.hash,
                member,
            ));
        }
        Ok(Build::new(units))
    }

    /// The units of the build being linked now. Objects are known by the fingerprints capture
    /// computed; an archive unchanged since the base build has the members the base's index lists;
    /// only an archive that changed is listed and its members hashed.
    pub fn current(
        arena: &'a Arena,
        inputs: &[Input],
        base_inputs: &[Input],
        base_index: &LinkIndex<'a>,
        workspace: &Workspace,
    ) -> Result<Self> {
        let base_fp: HashMap<&Path, (usize, Option<&str>)> = base_inputs
            .iter()
            .enumerate()
            .map(|(i, b)| (b.path.as_path(), (i, b.fingerprint.as_deref())))
            .collect();
        let mut base_members: HashMap<u32, Vec<crate::index::Unit<'a>>> = HashMap::new();
        for u in base_index.units() {
            base_members.entry(u.input).or_default().push(u);
        }
        let mut units = Vec::new();
        for (number, input) in inputs.iter().enumerate() {
            if !is_unit_input(input, workspace) {
                continue;
            }
            let maker = Maker::new(arena, number, input, false)?;
            if input.kind == InputKind::Object {
                maker.units(input, &mut units)?;
                continue;
            }
            let same =
                base_fp.get(input.path.as_path()).filter(|(_, fp)| *fp == input.fingerprint.as_deref());
            match same.and_then(|(i, _)| base_members.get(&(*i as u32))) {
                Some(members) => units.extend(
                    members
                        .iter()
                        .map(|m| maker.unit(Cow::Borrowed(m.key), m.hash, Some(Cow::Borrowed(m.member)))),
                ),
                None => maker.units(input, &mut units)?,
            }
        }
        Ok(Build::new(units))
    }

    /// Every unit of a build, with its content hash: what a link index records.
    pub fn all(arena: &'a Arena, inputs: &[Input], workspace: &Workspace, stored: bool) -> Result<Self> {
        let mut units = Vec::new();
        for (number, input) in inputs.iter().enumerate() {
            if is_unit_input(input, workspace) {
                Maker::new(arena, number, input, stored)?.units(input, &mut units)?;
            }
        }
        Ok(Build::new(units))
    }
}

/// The file a unit of `input` is read from.
fn file_of(input: &Input, stored: bool) -> Result<PathBuf> {
    match (stored, &input.stored) {
        (true, Some(kept)) => Ok(kept.clone()),
        (true, None) => crate::bail!(
            "the running build's copy of {} was not kept (see the warning of that build)",
            input.path.display()
        ),
        (false, _) => Ok(input.path.clone()),
    }
}

/// Whether an input holds workspace units: an object (other than rustc's `symbols.o`) or a
/// workspace rlib.
pub fn is_unit_input(input: &Input, workspace: &Workspace) -> bool {
    match input.kind {
        InputKind::Object => !is_rustc_symbols_object(&input.path),
        InputKind::Archive => workspace.contains_archive(&input.path),
        _ => false,
    }
}

/// `xxh3:<hex>` → the 128-bit value.
fn fingerprint_hash(fp: &str) -> Option<u128> {
    u128::from_str_radix(fp.strip_prefix("xxh3:")?, 16).ok()
}

/// `<dir>/app-1a2b.cgu-name.session.rcgu.o` → `app-1a2b.cgu-name.rcgu.o`: codegen-unit names are
/// stable across incremental rebuilds, the session part is not. Archive members are keyed under
/// the archive's path (an rlib keeps its path across rebuilds).
pub fn unit_key(path: &Path, member: Option<&str>) -> String {
    let strip = |name: &str| -> String {
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() >= 5 && name.ends_with(".rcgu.o") {
            let mut kept = parts.clone();
            kept.remove(parts.len() - 3);
            kept.join(".")
        } else {
            name.to_string()
        }
    };
    match member {
        Some(m) => format!("{}({})", path.display(), strip(m)),
        None => strip(&path.file_name().unwrap_or_default().to_string_lossy()),
    }
}

/// rustc's `symbols.o` only keeps exported symbols alive; it has no code of its own.
fn is_rustc_symbols_object(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "symbols.o")
        && path.parent().and_then(|p| p.file_name()).is_some_and(|d| d.to_string_lossy().starts_with("rustc"))
}

/// Which rlibs belong to the workspace (path dependencies included): those whose sources are not
/// in cargo's registry or git checkouts, per the dep-info file cargo leaves next to each rlib.
pub struct Workspace {
    cargo_home: PathBuf,
    cache: std::cell::RefCell<HashMap<PathBuf, bool>>,
}

impl Workspace {
    pub fn new() -> Self {
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
            .unwrap_or_default();
        Workspace { cargo_home, cache: Default::default() }
    }

    pub fn contains_archive(&self, rlib: &Path) -> bool {
        if let Some(&known) = self.cache.borrow().get(rlib) {
            return known;
        }
        let answer = self.classify(rlib);
        self.cache.borrow_mut().insert(rlib.to_path_buf(), answer);
        answer
    }

    fn classify(&self, rlib: &Path) -> bool {
        if is_sysroot(rlib) || rlib.extension().is_none_or(|e| e != "rlib") {
            return false;
        }
        // deps/libfoo-1a2b.rlib  ->  deps/foo-1a2b.d
        let Some(stem) = rlib.file_stem().and_then(|s| s.to_str()).and_then(|s| s.strip_prefix("lib")) else {
            return false;
        };
        let dep_info = rlib.with_file_name(format!("{stem}.d"));
        let Ok(file) = std::fs::File::open(&dep_info) else { return false };
        let mut first = String::new();
        if std::io::BufRead::read_line(&mut std::io::BufReader::new(file), &mut first).is_err() {
            return false;
        }
        // First rule: `<output>: <source> <source> ...`; the crate root comes first.
        let first_source = Some(first.as_str())
            .and_then(|l| l.split_once(": "))
            .and_then(|(_, srcs)| srcs.split_whitespace().next())
            .map(PathBuf::from);
        match first_source {
            Some(src) => {
                !(src.starts_with(self.cargo_home.join("registry"))
                    || src.starts_with(self.cargo_home.join("git")))
            }
            None => false,
        }
    }
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

/// The Rust standard library differs between the two builds: patching across toolchains is not
/// safe. Returns the first sysroot input whose content changed.
pub fn toolchain_changed<'i>(base: &'i [Input], current: &'i [Input]) -> Option<&'i Path> {
    let base_fps: HashMap<&Path, &Option<String>> = base
        .iter()
        .filter(|i| i.kind == InputKind::SysrootArchive)
        .map(|i| (i.path.as_path(), &i.fingerprint))
        .collect();
    current
        .iter()
        .filter(|i| i.kind == InputKind::SysrootArchive)
        .find(|i| base_fps.get(i.path.as_path()).is_none_or(|fp| **fp != i.fingerprint))
        .map(|i| i.path.as_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_keys_drop_the_session_part() {
        assert_eq!(
            unit_key(Path::new("/t/deps/app-1.02p6zf.0pnh2lv.rcgu.o"), None),
            unit_key(Path::new("/t/deps/app-1.02p6zf.0hesrag.rcgu.o"), None)
        );
        assert_eq!(unit_key(Path::new("/t/x.o"), None), "x.o");
        assert_eq!(
            unit_key(Path::new("/t/libw-1.rlib"), Some("w-1.abc.s1.rcgu.o")),
            unit_key(Path::new("/t/libw-1.rlib"), Some("w-1.abc.s2.rcgu.o"))
        );
    }
}
