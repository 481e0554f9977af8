//! Pulling definitions from archives the workspace does not own (std, dependencies): a function
//! new code uses that the running image never linked, such as a std function used for the first
//! time, is copied into the patch from its archive member.
//!
//! Invariants: each archive is mapped at most once, each member parsed at most once (pulled
//! objects keep their index in the arena for the whole plan), and the index of every archive's
//! symbols is built only when the archive the symbol's crate names does not have it.

use crate::error::{Context, Result};
use crate::objects::load::{archive_index, archive_member_at, parse, Arena, ObjectArena};
use crate::objects::{Object, SecIdx};
use crate::store::inputs::{Input, InputKind};
use std::collections::HashMap;

/// A definition found in a pulled member: the member's index in the arena, section, value.
pub type Found = (usize, SecIdx, u64);

pub struct Archives<'p, 'a> {
    /// The current link's inputs (the archives among them are searched).
    inputs: &'p [Input],
    arena: &'a Arena,
    /// Pulled members, parsed.
    members: &'p ObjectArena<'a>,
    /// Global symbol → (archive input index, member offset), built on first use.
    symbols: Option<HashMap<&'a [u8], (usize, u64)>>,
    /// Archive input index → mapped bytes.
    data: HashMap<usize, &'a [u8]>,
    /// (archive input index, member offset) → index in `members`.
    loaded: HashMap<(usize, u64), usize>,
    /// Demangled names of what was pulled, for the report.
    names: Vec<String>,
}

impl<'p, 'a> Archives<'p, 'a> {
    pub fn new(inputs: &'p [Input], arena: &'a Arena, members: &'p ObjectArena<'a>) -> Self {
        Archives {
            inputs,
            arena,
            members,
            symbols: None,
            data: HashMap::new(),
            loaded: HashMap::new(),
            names: Vec::new(),
        }
    }

    /// A pulled member.
    pub fn object(&self, index: usize) -> &'p Object<'a> {
        self.members.get(index)
    }

    /// Finds `name` in an archive outside the workspace and loads that member. The archive of the
    /// crate the symbol names is searched first; the index of every archive is built only if that
    /// fails. `Err` when the member holding it cannot be read (naming the member).
    pub fn pull(&mut self, name: &str) -> Result<Option<Found>> {
        if let Some(found) = self.in_named_crate(name) {
            return self.load_member(name, found);
        }
        if self.symbols.is_none() {
            let mut index = HashMap::new();
            for (i, input) in self.inputs.iter().enumerate() {
                if !matches!(input.kind, InputKind::Archive | InputKind::SysrootArchive) {
                    continue;
                }
                let Ok(data) = self.arena.map(&input.path) else { continue };
                self.data.insert(i, data);
                for (sym, offset) in archive_index(data).unwrap_or_default() {
                    index.entry(sym).or_insert((i, offset));
                }
            }
            self.symbols = Some(index);
        }
        let Some(&found) = self.symbols.as_ref().and_then(|s| s.get(name.as_bytes())) else {
            return Ok(None);
        };
        self.load_member(name, found)
    }

    /// `core::fmt::…` is most likely in `libcore-<hash>.rlib`: look there with one pass over that
    /// archive's symbol table.
    fn in_named_crate(&mut self, name: &str) -> Option<(usize, u64)> {
        let path = crate::map::read::demangle(name);
        let krate =
            path.split("::").next().filter(|c| c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))?;
        let prefix = format!("lib{krate}-");
        for (i, input) in self.inputs.iter().enumerate() {
            let file = input.path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default();
            if !matches!(input.kind, InputKind::Archive | InputKind::SysrootArchive)
                || !file.starts_with(&prefix)
            {
                continue;
            }
            let data = match self.data.get(&i) {
                Some(d) => *d,
                None => {
                    let d = self.arena.map(&input.path).ok()?;
                    self.data.insert(i, d);
                    d
                }
            };
            if let Some((_, offset)) =
                archive_index(data).unwrap_or_default().into_iter().find(|(s, _)| *s == name.as_bytes())
            {
                return Some((i, offset));
            }
        }
        None
    }

    /// Parses the member of archive `archive` at `offset` (once) and finds `name` in it.
    fn load_member(&mut self, name: &str, (archive, offset): (usize, u64)) -> Result<Option<Found>> {
        let idx = match self.loaded.get(&(archive, offset)) {
            Some(&i) => i,
            None => {
                let path = &self.inputs[archive].path;
                let Ok(member) = archive_member_at(path, self.data[&archive], offset) else {
                    return Ok(None);
                };
                let object = parse(&member).with_context(|| format!("cannot read {}", member.origin))?;
                let i = self.members.alloc(object);
                self.loaded.insert((archive, offset), i);
                i
            }
        };
        let o = self.members.get(idx);
        let Some(s) = o.symbols.iter().find(|s| s.name == name && !s.local && s.section().is_some()) else {
            return Ok(None);
        };
        let Some(sec) = s.section() else { return Ok(None) };
        self.names.push(crate::map::read::demangle(name));
        Ok(Some((idx, sec, s.value)))
    }

    /// Demangled names of everything pulled (with repeats).
    pub fn into_names(self) -> Vec<String> {
        self.names
    }
}
