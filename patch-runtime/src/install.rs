//! Switching the running program to a loaded patch: detours, hot slots and the redirect table —
//! now, or at the application's next safe point — and telling the application afterwards.
//!
//! [`crate::apply`] checks and loads a patch; what to switch is handed here as a [`Desired`] set.
//! Without safe points it is installed at once on the listener thread. With safe points
//! ([`crate::init_with_safe_points`]) it waits until a thread of the application calls
//! [`crate::safe_point`]; a newer patch arriving first replaces it (every set is whole), so no
//! thread ever runs new code before the application reached the point it chose.

use crate::detour::{Detours, Installed};
use crate::dispatch::{self, HotSlot};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Everything a patch wants switched, as whole sets (what is not named returns to its original).
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub slots: Vec<(u64, u64)>,
    pub redirects: Vec<(u64, u64)>,
    pub detours: Vec<(u64, u64)>,
    /// Jumps for good from functions of earlier patches to their anchors (never in a later set).
    pub settle: Vec<(u64, u64)>,
}

/// What a patch changed, as the application's [`crate::on_patch`] callbacks see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatchInfo {
    /// How many patches this process has installed, this one included.
    pub generation: u64,
    /// Changed functions now running their new code (demangled).
    pub changed: Vec<String>,
    /// Functions and statics the patch added.
    pub added: Vec<String>,
    /// Changed functions whose callers that did not change keep the old version.
    pub not_redirected: Vec<String>,
    /// The build's one-line summary.
    pub summary: String,
}

struct Installer {
    /// Slot address → the value it held before the first patch touched it.
    originals: HashMap<u64, u64>,
    /// Slot address → value stored by the latest install.
    slots: HashMap<u64, u64>,
    detours: Detours,
    /// A set waiting for the next safe point.
    pending: Option<(Desired, PatchInfo)>,
}

static INSTALLER: Mutex<Option<Installer>> = Mutex::new(None);
static SAFE_POINTS: AtomicBool = AtomicBool::new(false);
/// Whether a set waits for a safe point: the one load [`crate::safe_point`] costs otherwise.
static PENDING: AtomicBool = AtomicBool::new(false);

type Hook = Arc<dyn Fn(&PatchInfo) + Send + Sync>;
static HOOKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());

fn with_installer<R>(f: impl FnOnce(&mut Installer) -> R) -> R {
    let mut guard = INSTALLER.lock().unwrap_or_else(|p| p.into_inner());
    let installer = guard.get_or_insert_with(|| Installer {
        originals: HashMap::new(),
        slots: HashMap::new(),
        detours: Detours::default(),
        pending: None,
    });
    f(installer)
}

/// Whether the application asked for safe points.
pub fn safe_points() -> bool {
    SAFE_POINTS.load(Ordering::Acquire)
}

pub fn enable_safe_points() {
    SAFE_POINTS.store(true, Ordering::Release);
}

pub fn add_hook(hook: Hook) {
    HOOKS.lock().unwrap_or_else(|p| p.into_inner()).push(hook);
}

/// What became of a set handed over.
pub enum Outcome {
    Installed(Installed),
    /// Waits for the application's next safe point.
    Deferred,
}

/// Installs `desired` now, or keeps it for the next safe point when the application asked for
/// safe points. An error leaves everything as it was (though calls made while a breakpoint install
/// was being attempted may have run the new code: it is loaded and whole).
pub fn now_or_at_safe_point(desired: Desired, info: PatchInfo) -> Result<Outcome, String> {
    if SAFE_POINTS.load(Ordering::Acquire) {
        with_installer(|i| {
            // A set still waiting is replaced, but its settled jumps are for good: they carry over.
            let mut desired = desired;
            if let Some((waiting, _)) = i.pending.take() {
                let named: std::collections::HashSet<u64> = desired.settle.iter().map(|s| s.0).collect();
                let carried = waiting.settle.into_iter().filter(|s| !named.contains(&s.0));
                desired.settle.extend(carried.collect::<Vec<_>>());
            }
            i.pending = Some((desired, info))
        });
        PENDING.store(true, Ordering::Release);
        return Ok(Outcome::Deferred);
    }
    let installed = with_installer(|i| i.install(&desired))?;
    run_hooks(&info);
    Ok(Outcome::Installed(installed))
}

/// Installs the set waiting for a safe point, if any (called by [`crate::safe_point`]).
pub fn at_safe_point() {
    if !PENDING.swap(false, Ordering::AcqRel) {
        return;
    }
    let Some((desired, info)) = with_installer(|i| i.pending.take()) else { return };
    match with_installer(|i| i.install(&desired)) {
        Ok(_) => run_hooks(&info),
        Err(e) => eprintln!("ipbp: patch {} could not be installed at the safe point: {e}", info.generation),
    }
}

/// Whether a detour is written at `entry` now.
pub fn is_detoured(entry: u64) -> bool {
    with_installer(|i| i.detours.is_written(entry))
}

/// Whether `entry` holds a jump for good.
pub fn is_settled(entry: u64) -> bool {
    with_installer(|i| i.detours.is_settled(entry))
}

/// How many jumps are settled for good (functions of earlier patches sent on to their anchors).
pub fn settled() -> usize {
    with_installer(|i| i.detours.settled_len())
}

/// Slot → value and entry → target pairs.
pub type Pairs = Vec<(u64, u64)>;

/// Slots and detours as installed or waiting, for the `hello` reply (the next patch is planned
/// against them).
pub fn current() -> (Pairs, Pairs) {
    with_installer(|i| match &i.pending {
        Some((d, _)) => (d.slots.clone(), d.detours.clone()),
        None => {
            let mut slots: Pairs = i.slots.iter().map(|(&a, &b)| (a, b)).collect();
            slots.sort_unstable();
            (slots, i.detours.current())
        }
    })
}

fn run_hooks(info: &PatchInfo) {
    let hooks: Vec<Hook> = HOOKS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for hook in hooks {
        // A panicking callback is the application's bug; it must not stop the others or ipbp.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(info)));
    }
}

impl Installer {
    fn install(&mut self, desired: &Desired) -> Result<Installed, String> {
        // Detours first: they are the step that can still fail (a thread that cannot be stopped),
        // and then no slot or table has changed yet.
        let installed = self.detours.install(&desired.detours, &desired.settle)?;
        let wanted: HashMap<u64, u64> = desired.slots.iter().copied().collect();
        for (&slot, &original) in &self.originals {
            if !wanted.contains_key(&slot) {
                // SAFETY: `slot` was validated as a hot slot when first written; `original` is the
                // value it was linked with.
                unsafe { slot_at(slot).store(original as *const ()) };
            }
        }
        for (&slot, &value) in &wanted {
            let s = slot_at(slot);
            self.originals.entry(slot).or_insert_with(|| s.get() as u64);
            // SAFETY: validated by `apply`; ipbp-ld pairs each slot with a version of its own
            // function.
            unsafe { s.store(value as *const ()) };
        }
        dispatch::publish(desired.redirects.iter().map(|&(a, b)| (a as usize, b as usize)).collect());
        self.slots = wanted;
        Ok(installed)
    }
}

fn slot_at(addr: u64) -> &'static HotSlot {
    // SAFETY: `apply` validated that `addr` is an aligned address in the executable's data.
    unsafe { &*(addr as *const HotSlot) }
}
