//! How calls find the newest code: hot slots and the redirect table.
//!
//! **Hot slots.** `#[ipbp::hot]` gives every non-generic hot function a static [`HotSlot`] named
//! `__IPBP_SLOT`, null until a patch stores the address of a newer version; the function's body
//! stays in place (so `self` and `Self` work) and a call is one atomic load and one test, plus an
//! indirect call once patched. ipbp-ld finds each slot's function from the object files: the one
//! function whose path declares the slot (`path::__IPBP_SLOT`) and reads it — others read it too
//! when the optimiser inlined the hot function into them, which is why hot functions are never
//! inlined while hot and their slots are `#[used]`. Patched copies read a private null slot, so
//! they run their own body.
//!
//! **Redirect table.** Generic hot functions and [`crate::call`] closures have no static of their
//! own per instance (a `static` inside a generic function is shared by all instances). They look
//! themselves up by address in [`REDIRECTS`], an immutable sorted table that a patch replaces as a
//! whole. Until a patch redirects one of them the table is null and the lookup is one atomic load.
//!
//! Either way a call runs either the old function or the new one, never part of each: a slot or
//! table pointer changes in one atomic store, and new code only calls new code.

use std::sync::atomic::{AtomicPtr, Ordering};

/// A hot function's current implementation, and a hash of its signature as written.
///
/// `#[repr(C)]` because ipbp-ld reads both fields from object files: `target` at offset 0 (with
/// the relocation that names the initial function, if any) and `signature` at offset 8.
#[repr(C)]
pub struct HotSlot {
    target: AtomicPtr<()>,
    signature: u64,
}

impl HotSlot {
    /// `initial` is the function to call, or null for "run the body in place".
    pub const fn new(initial: *const (), signature: u64) -> Self {
        HotSlot { target: AtomicPtr::new(initial as *mut ()), signature }
    }

    #[inline(always)]
    pub fn get(&self) -> *const () {
        self.target.load(Ordering::Acquire)
    }

    /// # Safety
    /// `target` must be a function with the exact signature of the slot's owner.
    pub(crate) unsafe fn store(&self, target: *const ()) {
        self.target.store(target as *mut (), Ordering::Release)
    }

    pub fn signature(&self) -> u64 {
        self.signature
    }
}

/// The newer version of the generic hot function instance identified by `key` (the address of
/// the `__ipbp_key::<(Self, T…)>` function `#[ipbp::hot]` nests in it), if a patch installed one. `slot` is the function's (shared) slot, passed so that its signature stays
/// linked in and ipbp-ld can check it.
#[inline(always)]
pub fn lookup(key: *const (), slot: &HotSlot) -> Option<*const ()> {
    let _ = slot;
    let table = REDIRECTS.load(Ordering::Acquire);
    if table.is_null() {
        None
    } else {
        find(table, key)
    }
}

/// Sorted `(original, newest)` function addresses.
pub struct RedirectTable {
    pairs: Box<[(usize, usize)]>,
}

/// Null until a patch redirects a generic hot function or an `ipbp::call` closure. Replaced
/// whole; old tables are leaked on purpose, a thread may still be searching one.
#[doc(hidden)]
pub static REDIRECTS: AtomicPtr<RedirectTable> = AtomicPtr::new(std::ptr::null_mut());

/// The newest version of the function at `me` (see [`crate::call`]), or `me` itself.
#[inline(always)]
pub fn redirect(me: *const ()) -> *const () {
    let table = REDIRECTS.load(Ordering::Acquire);
    if table.is_null() {
        me
    } else {
        find(table, me).unwrap_or(me)
    }
}

#[inline(never)]
fn find(table: *const RedirectTable, key: *const ()) -> Option<*const ()> {
    // SAFETY: tables are published fully built and never freed.
    let pairs = unsafe { &(*table).pairs };
    pairs.binary_search_by_key(&(key as usize), |p| p.0).ok().map(|i| pairs[i].1 as *const ())
}

/// Publishes a new table (empty means "no redirects").
pub(crate) fn publish(mut pairs: Vec<(usize, usize)>) {
    pairs.sort_unstable();
    pairs.dedup_by_key(|p| p.0);
    let new = if pairs.is_empty() {
        std::ptr::null_mut()
    } else {
        Box::into_raw(Box::new(RedirectTable { pairs: pairs.into_boxed_slice() }))
    };
    REDIRECTS.store(new, Ordering::Release);
}

/// The current table, for the `hello` reply.
pub(crate) fn current() -> Vec<(u64, u64)> {
    let table = REDIRECTS.load(Ordering::Acquire);
    if table.is_null() {
        return Vec::new();
    }
    // SAFETY: as in `lookup`.
    unsafe { (*table).pairs.iter().map(|&(a, b)| (a as u64, b as u64)).collect() }
}
