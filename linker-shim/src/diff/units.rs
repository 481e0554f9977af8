//! The code of one build that a patch can change: the binary crate's objects and the objects of
//! the workspace's rlibs, as [`Unit`]s paired across builds by a stable key.
//!
//! Dependencies from a registry or git, C archives and the Rust sysroot are not units: their code
//! does not change between two builds of one program (when it does, the build is refused — see
//! [`toolchain_changed`]), and only generic code instantiated in the workspace can call workspace
//! code, which lands in workspace objects.

use crate::error::{Context, Result};
use crate::map::schema::{Input, InputKind};
use crate::objects::load::{archive_members, parse, Arena, Unit};
use crate::objects::Object;
use std::cell::OnceCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One object of the workspace in one build.
pub struct WorkUnit<'a> {
    /// Pairs this unit with its counterpart in another build (see [`unit_key`]).
    pub key: String,
    pub hash: u128,
    pub unit: Unit<'a>,
    object: OnceCell<Result<Object<'a>, String>>,
}

impl<'a> WorkUnit<'a> {
    /// The object if it was parsed already.
    pub fn parsed(&self) -> Option<&Object<'a>> {
        self.object.get().and_then(|r| r.as_ref().ok())
    }

    /// The parsed object (parsed on first use).
    pub fn object(&self) -> Result<&Object<'a>> {
        self.object
            .get_or_init(|| parse(&self.unit).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| crate::err!("{e}"))
    }
}

/// The workspace units of one build, in link order.
pub struct Build<'a> {
    pub units: Vec<WorkUnit<'a>>,
    by_key: HashMap<String, usize>,
}

impl<'a> Build<'a> {
    pub fn get(&self, key: &str) -> Option<&WorkUnit<'a>> {
        self.by_key.get(key).map(|&i| &self.units[i])
    }
}

/// Loads the workspace units of a build. `stored` says whether to read inputs from the kept copies
/// (a base build, whose files rustc has since replaced or deleted) or from their paths (the build
/// being linked now). `other` is the other build's inputs: units are identified by the content
/// fingerprints capture already computed, so nothing is hashed again, except the members of an
/// archive that differs between the two builds.
pub fn load<'a>(
    arena: &'a Arena,
    inputs: &[Input],
    other: &[Input],
    workspace: &Workspace,
    stored: bool,
) -> Result<Build<'a>> {
    let other_fp: HashMap<&Path, Option<&str>> =
        other.iter().map(|i| (i.path.as_path(), i.fingerprint.as_deref())).collect();
    let mut units = Vec::new();
    for input in inputs {
        let is_unit = match input.kind {
            InputKind::Object => !is_rustc_symbols_object(&input.path),
            InputKind::Archive => workspace.contains_archive(&input.path),
            _ => false,
        };
        if !is_unit {
            continue;
        }
        let path = match (stored, &input.stored) {
            (true, Some(kept)) => kept.clone(),
            (true, None) => crate::bail!(
                "the running build's copy of {} was not kept (see the warning of that build)",
                input.path.display()
            ),
            (false, _) => input.path.clone(),
        };
        let data = arena.map(&path).with_context(|| {
            format!("cannot read link input {} (kept for {})", path.display(), input.path.display())
        })?;
        let fingerprint = input.fingerprint.as_deref().and_then(fingerprint_hash);
        if input.kind == InputKind::Object {
            let unit =
                Unit { origin: crate::objects::Origin { path: input.path.clone(), member: None }, data };
            let hash = fingerprint.unwrap_or_else(|| xxhash_rust::xxh3::xxh3_128(data));
            units.push(work_unit(unit_key(&input.path, None), hash, unit));
            continue;
        }
        let unchanged = other_fp.get(input.path.as_path()) == Some(&input.fingerprint.as_deref());
        for member in archive_members(&input.path, data)? {
            let key = unit_key(&input.path, member.origin.member.as_deref());
            let hash = match (unchanged, fingerprint) {
                // The same archive in both builds: its members are the same too.
                (true, Some(fp)) => xxhash_rust::xxh3::xxh3_128_with_seed(key.as_bytes(), fp as u64),
                _ => xxhash_rust::xxh3::xxh3_128(member.data),
            };
            units.push(work_unit(key, hash, member));
        }
    }
    let by_key = units.iter().enumerate().map(|(i, u)| (u.key.clone(), i)).collect();
    Ok(Build { units, by_key })
}

fn work_unit(key: String, hash: u128, unit: Unit<'_>) -> WorkUnit<'_> {
    WorkUnit { key, hash, unit, object: OnceCell::new() }
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
        if crate::capture::inputs::is_sysroot(rlib) || rlib.extension().is_none_or(|e| e != "rlib") {
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
