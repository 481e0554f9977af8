//! In place: new code reaches only new code, also through code that did not change.
//!
//! A changed function that is not redirected ([`super::detours`]: its signature or a type it
//! receives or returns changed layout, or its entry cannot hold a jump) keeps its old code at its
//! old entry, for the callers that did not change. Its new code is in the patch and changed callers
//! call it. But new code also reaches it through code that did not change: a generic instance
//! such as `core::fmt::rt::Argument::new_debug::<app::Mode>` that takes its address, a helper of the
//! workspace that calls it, a vtable (`<&app::Mode as Debug>::{vtable}`) that holds it, and chains
//! of those (`<Vec<Mode> as Debug>::fmt` → `<[Mode] as Debug>::fmt` → `DebugList::entries` → a
//! vtable → `<&Mode as Debug>::fmt` → `<Mode as Debug>::fmt`). In the image every link of such a
//! chain leads to the old version: a value the new code made (a new variant) would be read by
//! code compiled for the old layout — printed as another variant.
//!
//! So the patch carries the chain: walking up from each function that is not redirected through
//! its referrers (the link index answers for the units that did not change, as for hot points),
//! every unchanged function and constant found is *carried when the patch's code refers to it*:
//! its copy refers to the new versions (and to further carried links), while old code keeps the old
//! chain with its old values. Only what the patch's code actually reaches is copied.
//!
//! What cannot be copied is writable state: a static whose initial value points into a chain
//! (a `fn` pointer or a vtable stored at build time) is read by new code as the process holds it,
//! and leads to the old code. When that chain ends in a function that is not redirected because
//! of a layout change, new code referring to the static is refused, naming the static, the
//! function and the type ([`Chains::state`]). Unless what the static points at is a function
//! whose callers hand it no value of a changed type and get none back (its parameters, receiver
//! and return type hold none: `static mut ON_TICK: fn() = print_all;`): it makes its own values,
//! old ones in old code, and hands them to old code, which is consistent; no new value can go
//! through the static's pointer to old code (review G4).

use super::graph::{Index, Loc};
use crate::objects::SectionKind;
use std::collections::{HashMap, HashSet, VecDeque};

/// The unchanged code and data that lead to functions that are not redirected.
#[derive(Default)]
pub struct Chains {
    /// Unchanged functions and constants from which one is reached → the one they lead to.
    pub carry: HashMap<Loc, Loc>,
    /// Writable statics whose data points into a chain → the function it leads to.
    pub state: HashMap<Loc, Loc>,
}

impl Chains {
    /// Walks up from `stale` (changed functions that are not redirected) through referrers, not
    /// through changed code (which the patch replaces, or redirects to code that calls the new
    /// versions) and not through writable statics (recorded in [`Chains::state`] when the code
    /// they point at is `forwards`: it may be handed or return a value of a changed type).
    pub fn find(
        index: &Index,
        stale: &HashSet<Loc>,
        changed: &HashSet<Loc>,
        forwards: &dyn Fn(Loc) -> crate::error::Result<bool>,
    ) -> crate::error::Result<Chains> {
        let mut chains = Chains::default();
        let mut queue: VecDeque<(Loc, Loc)> = stale.iter().map(|&s| (s, s)).collect();
        let mut seen: HashSet<Loc> = stale.clone();
        while let Some((v, origin)) = queue.pop_front() {
            for u in index.referrers(v)? {
                if changed.contains(&u) {
                    continue;
                }
                let kind = index.kind(u)?;
                if kind.is_writable_state() {
                    // Decided per pointer: a static may point at several links.
                    let forwarded = || -> crate::error::Result<bool> {
                        Ok(index.kind(v)? != SectionKind::Text || stale.contains(&v) || forwards(v)?)
                    };
                    if !chains.state.contains_key(&u) && forwarded()? {
                        chains.state.insert(u, origin);
                    }
                    continue;
                }
                if !seen.insert(u) {
                    continue;
                }
                if matches!(kind, SectionKind::Text | SectionKind::ReadOnly | SectionKind::ReadOnlyAfterReloc)
                {
                    chains.carry.insert(u, origin);
                    queue.push_back((u, origin));
                }
            }
        }
        Ok(chains)
    }
}
