//! In place: pointers to old code made at run time, which no relocation of the patch shows.
//!
//! A changed function that is not redirected for a layout change keeps its old code at its old
//! entry ([`super::detours`]), and [`super::chain`] carries the unchanged code that leads to it
//! where the patch's code refers to it. But a pointer to the function (or to unchanged code leading
//! to it) may have been *made at run time* and kept where no type names the changed type: a
//! `Box<dyn Handler>` pushed into `static HANDLERS: Mutex<Vec<Box<dyn Handler>>>` at startup, whose
//! vtable holds `<Printer as Handler>::handle(&self, &Mode)`; a `fn(&Mode)` field of a plugin list;
//! a static whose initial value is such a pointer, read by an unchanged `dispatch(&Mode)`. New code
//! calling through it (`h.handle(&Mode::New)`) hands a new value to the old code; and a pointer new
//! code makes (a copy of the vtable) may be kept where old code calls it with old values. Neither
//! side's code names the other: the patch cannot carry its way out.
//!
//! So the patch is refused, naming the type, the function and who takes its address, when a
//! function that is not redirected for a layout change — or unchanged code of a chain leading to
//! one — has its address taken (a vtable entry or other data holding it, a `fn` pointer taken by
//! code: anything but a call), in the running build or the new one, *and* its callers hand it
//! values of a changed type ([`crate::layout::Signatures::forwards`]). A method whose only such
//! value is its receiver is not refused: a `dyn` vtable is paired with its receiver when the
//! pointer is made, and so is `core::fmt`'s argument (`format_args!` takes `<Mode as
//! Debug>::fmt`'s address next to `&mode`, for the moment of one call) — old code pairs old values
//! with old methods, new code new values with new ones. A function whose callers hand it no value
//! of a changed type makes its own values (old code, old values) and is consistent either way.
//!
//! This also covers readers of a writable static that points into a chain (review G2): the static's
//! initial value is data taking the address of the function it points at.
//!
//! A bare `fn` pointer to a trait method (`let f: fn(&Mode) -> String = <Mode as
//! Describe>::describe;`, kept in a struct or a static) pairs it with no receiver: the method's
//! receiver counts when code or a named static takes its address — anything but a vtable and
//! `core::fmt`'s own code (formatting methods are left out: `format_args!` takes their address
//! next to their receiver, in the caller's code once inlined).

use super::chain::Chains;
use super::graph::{Index, Loc};
use super::{Inputs, Refusal};
use crate::layout::Signatures;
use crate::objects::{Object, Reloc, SectionKind, SymbolKind};
use object::elf;
use std::collections::HashMap;

/// Whether relocation `r` (in a section of kind `from`) takes the address of the start of what
/// it names (`value`: the symbol's offset in its section) rather than calling it or pointing into
/// its body (a jump table's entries).
fn takes_address(r: &Reloc, value: u64, from: SectionKind) -> bool {
    let at_start = |bias: i64| (value as i64).checked_add(r.addend) == Some(bias);
    match r.kind {
        elf::R_X86_64_GOTPCREL | elf::R_X86_64_GOTPCRELX | elf::R_X86_64_REX_GOTPCRELX => true,
        elf::R_X86_64_64 => at_start(0),
        elf::R_X86_64_PC32 => from == SectionKind::Text && at_start(-4),
        _ => false,
    }
}

/// A function whose old code must not be reached through a pointer made at run time.
struct Candidate {
    at: Loc,
    /// Its demangled path, and why its callers hand it values of a changed type.
    path: String,
    forwards: String,
    /// The function not redirected it leads to, when it is unchanged code of a chain.
    leads_to: Option<String>,
    /// Only its receiver is of a changed type: a vtable taking its address pairs the two, a bare
    /// `fn` pointer does not (see the module's doc).
    receiver_only: bool,
}

/// Whether code or data named `taker` (demangled; `None`: without a name, a vtable or table)
/// takes the address of a method whose receiver alone is of a changed type as a bare `fn`
/// pointer, rather than as `core::fmt` does, next to its receiver.
fn takes_bare(taker: Option<&str>) -> bool {
    taker.is_some_and(|t| !t.starts_with("core::fmt::") && !t.starts_with("<core::fmt::"))
}

/// The refusals: one per function whose address is taken and whose callers hand it values of a
/// changed type (see the module's doc).
pub(super) fn refusals(
    input: &Inputs,
    index: &Index,
    stale: &HashMap<Loc, Option<String>>,
    chains: &Chains,
    signatures: &Signatures,
) -> crate::error::Result<Vec<Refusal>> {
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut by_base_name: HashMap<&str, usize> = HashMap::new();
    let origins = stale.iter().filter(|(_, why)| why.is_some()).map(|(&at, _)| (at, None));
    let links = chains.carry.iter().filter(|(_, o)| matches!(stale.get(o), Some(Some(_))));
    let mut all: Vec<(Loc, Option<Loc>)> = origins.chain(links.map(|(&at, &o)| (at, Some(o)))).collect();
    all.sort_unstable();
    for (at, origin) in all {
        if index.kind(at)? != SectionKind::Text {
            continue;
        }
        let Some(mangled) = index.name(at)? else { continue };
        let base_name = input.diff.base_name(mangled);
        let path = crate::map::read::demangle(base_name);
        let formatting = path.starts_with('<') && path.contains(" as core::fmt::");
        let (forwards, receiver_only) = match signatures.forwards(&path, (base_name, mangled)) {
            Some(f) => (f, false),
            None if formatting => continue,
            None => match signatures.forwards_with_receiver(&path, (base_name, mangled)) {
                Some(f) => (f, true),
                None => continue,
            },
        };
        let leads_to = match origin {
            Some(o) => index.name(o)?.map(crate::map::read::demangle),
            None => None,
        };
        by_base_name.insert(base_name, candidates.len());
        candidates.push(Candidate { at, path, forwards, leads_to, receiver_only });
    }
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    // Who takes each one's address: the new build's code and data (the units read here and the
    // unchanged ones, per the link index), and the running build's changed units, whose old code
    // ran before the patch and may have stored a pointer the new build no longer makes.
    let mut takers: Vec<Vec<String>> = vec![Vec::new(); candidates.len()];
    let mut takers_before: Vec<Vec<String>> = vec![Vec::new(); candidates.len()];
    for (i, c) in candidates.iter().enumerate() {
        for r in index.referrers(c.at)? {
            let obj = index.object(r.0)?;
            let sec = &obj.sections[r.1];
            let takes = sec.relocs().iter().any(|rel| {
                index.resolve_symbol(r.0, rel.symbol).ok().flatten() == Some(c.at)
                    && takes_address(rel, obj.symbols[rel.symbol].value, sec.kind)
            });
            let bare = || -> crate::error::Result<bool> {
                Ok(takes_bare(index.name(r)?.map(crate::map::read::demangle).as_deref()))
            };
            if takes && (!c.receiver_only || bare()?) {
                takers[i].push(who(index, r)?);
            }
        }
    }
    for &u in &input.diff.changed_units_base {
        let Ok(obj) = input.base_build.units[u].object() else { continue };
        for (s, sec) in obj.sections.iter().enumerate() {
            if !sec.kind.is_alloc() || sec.kind == SectionKind::EhFrame {
                continue;
            }
            for rel in sec.relocs() {
                let Some(target) = target_name(obj, rel.symbol) else { continue };
                let Some(&i) = by_base_name.get(crate::diff::names::canonical(target)) else { continue };
                let bare = || {
                    let name = obj.primary_symbol(s).map(|p| crate::map::read::demangle(p.name));
                    takes_bare(name.as_deref())
                };
                if takes_address(rel, obj.symbols[rel.symbol].value, sec.kind)
                    && (!candidates[i].receiver_only || bare())
                {
                    takers_before[i].push(described(obj, s, "running"));
                }
            }
        }
    }
    let mut out = Vec::new();
    for ((c, takers), before) in candidates.into_iter().zip(takers).zip(takers_before) {
        // Named as the new build has them; what only the running build had, as it had it.
        let mut takers = if takers.is_empty() { before } else { takers };
        takers.sort();
        takers.dedup();
        if takers.is_empty() {
            continue;
        }
        let leads = c.leads_to.map(|f| format!(", which leads to the old `{f}`,")).unwrap_or_default();
        let shown: Vec<&str> = takers.iter().take(3).map(String::as_str).collect();
        let more = match takers.len().saturating_sub(3) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        out.push(Refusal {
            symbol: c.path.clone(),
            reason: format!(
                "{}; the address of `{}`{leads} is taken by {}{more}: pointers to its old code made at run time (a `dyn` vtable, a `fn` pointer) may be kept and called with values of the new shape, or new pointers called by old code with old values (restart to use it)",
                c.forwards,
                c.path,
                shown.join(", ")
            ),
            secondary: true,
        });
    }
    Ok(out)
}

/// The name of what symbol `sym` of `obj` stands for: its own, or for a section symbol the
/// section's first named symbol.
fn target_name<'a>(obj: &Object<'a>, sym: usize) -> Option<&'a str> {
    let s = &obj.symbols[sym];
    if s.kind == SymbolKind::Section {
        obj.primary_symbol(s.section()?).map(|p| p.name)
    } else {
        s.is_named().then_some(s.name)
    }
}

/// A section that takes an address, for a reason: `layouts::main`, or for data without a name (a
/// vtable) what it is and the code that uses it.
fn who(index: &Index, at: Loc) -> crate::error::Result<String> {
    if let Some(name) = index.name(at)? {
        let kind = if index.kind(at)? == SectionKind::Text { "" } else { "data " };
        return Ok(format!("{kind}`{}`", crate::map::read::demangle(name)));
    }
    let mut users: Vec<String> = Vec::new();
    for r in index.referrers(at)? {
        users.extend(index.name(r)?.map(|n| format!("`{}`", crate::map::read::demangle(n))));
    }
    users.sort();
    users.dedup();
    users.truncate(3);
    Ok(match users.as_slice() {
        [] => format!("constant data (`{}`, a vtable or table)", index.section(at)?.name),
        _ => format!("a vtable or table used by {}", users.join(", ")),
    })
}

/// [`who`] for a section of the running build's changed unit `obj`.
fn described(obj: &Object, s: usize, build: &str) -> String {
    match obj.primary_symbol(s) {
        Some(p) if obj.sections[s].kind == SectionKind::Text => {
            format!("`{}` in the {build} build", crate::map::read::demangle(p.name))
        }
        Some(p) => format!("data `{}` in the {build} build", crate::map::read::demangle(p.name)),
        None => format!("a vtable or table of the {build} build"),
    }
}
