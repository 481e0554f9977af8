//! What the plan tells: the [`Report`] for the status line and the manifest, the [`Refusal`]s, and
//! the end of planning, where the planner's chunks become the [`Plan`] with where each is
//! installed and the notes phrased for the user.

use super::graph::{Dispatch, HotPoints, Loc};
use super::planner::Planner;
use super::{detours, ChunkId, Install, Mode, Obj, Plan};
use crate::objects::SectionKind;
use std::collections::HashSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub symbol: String,
    pub reason: String,
    /// About a path a new value could take to old code (`pointers`): listed after the layout
    /// guard's refusals, which name where old values live.
    pub secondary: bool,
}

/// What the plan decided, for the status line and the manifest.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    /// Functions changed by the edit that the patch carries.
    pub changed: Vec<String>,
    /// Definitions the running image does not have (new functions, statics, generic instances).
    pub added: Vec<String>,
    /// Unchanged functions and constants carried because they lead to changed code.
    pub carried: Vec<String>,
    /// Definitions pulled from archives the workspace does not own (std, dependencies).
    pub pulled: Vec<String>,
    /// Symbols left to the dynamic loader.
    pub imports: Vec<String>,
    /// Changed functions whose entry in the image cannot hold a jump (in place): old callers keep
    /// their old code, new code calls the new version. Demangled name and why.
    pub not_redirected: Vec<(String, String)>,
    /// Things the user should know that do not stop the patch.
    pub notes: Vec<String>,
    /// Changed functions that are running and never called again (`main`): only a restart runs
    /// their new code.
    pub running: Vec<String>,
    /// In place: mangled names (now, and in the image) of the changed functions kept on old code
    /// for a layout change, and of the unchanged code carried because it leads to them. An earlier
    /// patch's copies of them are called with values of that patch's layout: they keep their code
    /// (`deliver::chain`), never sent on to this patch's versions.
    pub kept_for_layout: Vec<String>,
}

/// One line for every changed function no hot point reaches (often code of `main`, or code that
/// compiled differently only because a dependency now provides a generic instance itself).
pub(super) fn unreached_note(functions: &[String]) -> String {
    const SHOWN: usize = 3;
    let names: Vec<String> = functions.iter().take(SHOWN).map(|f| format!("`{f}`")).collect();
    let more = match functions.len().saturating_sub(SHOWN) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    let pronoun = if functions.len() == 1 { "it" } else { "them" };
    format!(
        "{}{more} changed but no hot point reaches {pronoun}; the running process keeps the old code there",
        names.join(", ")
    )
}

/// Functions not redirected that get a note each; the others share one.
const NOTED: usize = 3;

/// Whether a function is the program's (or a library's) own code, not an instance of the standard
/// library's generic code: `app::f`, `<app::Mode as core::fmt::Debug>::fmt`; not
/// `alloc::vec::Vec<T,A>::extend_trusted` nor `<(U,T) as core::fmt::Debug>::fmt`.
pub(super) fn is_own_path(path: &str) -> bool {
    let path = path.strip_prefix('<').unwrap_or(path);
    let first = path.split("::").next().unwrap_or("");
    let crate_name = !first.is_empty() && first.chars().all(|c| c.is_alphanumeric() || c == '_');
    crate_name && !matches!(first, "core" | "alloc" | "std" | "hashbrown")
}

/// Up to three names in backquotes, and how many more.
fn shown_list(names: &[String]) -> String {
    const SHOWN: usize = 3;
    let shown: Vec<String> = names.iter().take(SHOWN).map(|f| format!("`{f}`")).collect();
    match names.len().saturating_sub(SHOWN) {
        0 => shown.join(", "),
        n => format!("{} and {n} more", shown.join(", ")),
    }
}

impl<'p, 'g, 'a> Planner<'p, 'g, 'a> {
    pub(super) fn finish(
        self,
        hot: &HotPoints,
        copy: &HashSet<Loc>,
        changed: &HashSet<Loc>,
        detours: Vec<detours::Detour>,
    ) -> crate::error::Result<Plan<'a>> {
        let index = self.index;
        let base = self.input.base;
        let bias = base.load_bias;
        let mut installs = Vec::new();
        let mut chained = Vec::new();
        let refusals = self.refusals;
        let mut report = Report::default();
        for (&(obj, sec, piece), &id) in self.work.included() {
            let Obj::Unit(u) = obj else { continue };
            let node = (u, sec);
            if piece.is_some() {
                continue;
            }
            let mangled = index.name(node)?;
            let name = mangled.map(crate::map::read::demangle);
            if changed.contains(&node) {
                report.changed.extend(name.clone());
            } else if copy.contains(&node) {
                report.carried.extend(name.clone());
            } else if self.chains.carry.contains_key(&node) && mangled.is_some_and(|m| base.contains(m)) {
                // Leads to code that is not redirected, and the image has it: a copy, not new code.
                report.carried.extend(name.clone());
                if index.kind(node)? == SectionKind::Text {
                    chained.extend(name.clone());
                }
            }
            // In place only a hot `async fn`'s entry is switched (through its slot).
            if self.input.mode == Mode::InPlace
                && !matches!(hot.roots.get(&node), Some(Dispatch::Entry { .. }))
            {
                continue;
            }
            if let Some(dispatch) = hot.roots.get(&node) {
                let original = |n: Loc| -> crate::error::Result<_> {
                    Ok(index.name(n)?.and_then(|s| base.lookup(s)).map(|(s, _)| s))
                };
                let install = match *dispatch {
                    Dispatch::Slot { slot } | Dispatch::Entry { slot } => {
                        original(slot)?.map(|s| Install::Slot(s.addr + bias))
                    }
                    Dispatch::Key { key } => original(key)?.map(|s| Install::Redirect(s.addr + bias)),
                    Dispatch::Call => original(node)?.map(|s| Install::Redirect(s.addr + bias)),
                };
                if let Some(install) = install {
                    installs.push((id, install));
                }
            }
        }
        for detours::Detour { at, mangled, entries, .. } in detours {
            let Some(id) = self.work.find(&(Obj::Unit(at.0), at.1, None)) else { continue };
            match entries {
                Ok(entries) => {
                    installs.extend(entries.into_iter().map(|at| (id, Install::Detour(at + bias))))
                }
                // Not fatal: the function's new code is in the patch, and every changed caller
                // calls it; callers that did not change keep the old version, which the status
                // line counts and a note names.
                Err(reason) => {
                    let symbol = crate::map::read::demangle(mangled);
                    // One entry per chunk; another function with the same path may have moved.
                    if let Some(i) = report.changed.iter().position(|c| *c == symbol) {
                        report.changed.remove(i);
                    }
                    report.not_redirected.push((symbol, reason.to_string()));
                }
            }
        }
        let mut new_data = Vec::new();
        for (id, chunk) in self.work.chunks().iter().enumerate() {
            for (name, _, _, _) in &chunk.symbols {
                let known = base.contains(name) || self.input.hello.data.iter().any(|e| &e.name == name);
                if !known {
                    report.added.push(crate::map::read::demangle(name));
                    if chunk.kind.is_writable_state() {
                        new_data.push((name.clone(), ChunkId::at(id)));
                    }
                }
            }
        }
        let new_tls = self.tls.into_entries();
        for t in &new_tls {
            report.added.push(crate::map::read::demangle(&t.name));
        }
        report.pulled = self.archives.into_names();
        let imports = self.imports.into_names();
        report.imports = imports.iter().map(|i| crate::map::read::demangle(i)).collect();
        let (eh_records, no_unwind) = self.unwind.finish();
        report.not_redirected.sort();
        report.not_redirected.dedup();
        // One note each for the first few, the program's own first; an edit of a type renames and
        // changes dozens of the standard library's instances over it: one line for the rest.
        let mut listed: Vec<&(String, String)> = report.not_redirected.iter().collect();
        listed.sort_by_key(|(f, _)| (!is_own_path(f), f.contains(" as "), f.as_str()));
        for (f, why) in listed.iter().take(NOTED) {
            report.notes.push(format!(
                "`{f}` changed but its entry cannot be redirected ({why}); code that did not change keeps calling its old version"
            ));
        }
        if listed.len() > NOTED {
            let rest: Vec<String> = listed[NOTED..].iter().map(|(f, _)| f.clone()).collect();
            report.notes.push(format!(
                "{} more changed functions cannot be redirected either ({}; the manifest gives each one's reason); code that did not change keeps calling their old versions",
                rest.len(),
                shown_list(&rest)
            ));
        }
        if !chained.is_empty() {
            chained.sort();
            chained.dedup();
            report.notes.push(format!(
                "new code reaches the new versions of what is not redirected through {} unchanged function{} carried into the patch ({})",
                chained.len(),
                if chained.len() == 1 { "" } else { "s" },
                shown_list(&chained)
            ));
        }
        for f in &no_unwind {
            report.notes.push(format!(
                "`{}` has no unwind info; a panic inside it aborts",
                crate::map::read::demangle(f)
            ));
        }
        for list in [&mut report.changed, &mut report.added, &mut report.carried, &mut report.pulled] {
            list.sort();
            list.dedup();
        }
        installs.sort_by_key(|&(id, i)| (i, id));
        let sources = (0..self.work.chunks().len())
            .map(|i| match self.work.source(ChunkId::at(i)) {
                Some((Obj::Unit(u), sec, None)) => Some((u, sec)),
                _ => None,
            })
            .collect();
        Ok(Plan {
            steps: Vec::new(),
            stats: Vec::new(),
            sources,
            chunks: self.work.into_chunks(),
            eh_records,
            imports,
            installs,
            new_data,
            new_tls,
            report,
            refusals,
        })
    }
}
