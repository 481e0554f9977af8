//! Room in the executable's static TLS block for thread-locals that patches add.
//!
//! Code of the binary crate reaches its thread-locals *local-exec*: a constant offset from the
//! thread pointer, fixed at link time, the same in every thread. A patch cannot grow the block, so
//! a `thread_local!` added by an edit gets its storage here, inside the block every thread already
//! has. ipbp-ld allocates from this reserve (zero-initialised, as `.tbss` is) and resolves the new
//! variable's accesses to `reserve + offset`. Its size bounds what edits can add per process.

use std::cell::UnsafeCell;

pub const RESERVE_SIZE: usize = 8192;

#[repr(C, align(64))]
pub struct Reserve(UnsafeCell<[u8; RESERVE_SIZE]>);

thread_local! {
    static RESERVE: Reserve = const { Reserve(UnsafeCell::new([0; RESERVE_SIZE])) };
}

/// `&RESERVE - thread pointer`: the same value in every thread of the process.
pub fn reserve_tp_offset() -> i64 {
    let addr = RESERVE.with(|r| r as *const Reserve as usize);
    addr as i64 - thread_pointer() as i64
}

#[cfg(target_arch = "x86_64")]
pub fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: on x86-64 Linux `fs:0` holds the thread control block's own address (TLS ABI).
    unsafe { std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags)) };
    tp
}

#[cfg(target_arch = "aarch64")]
pub fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: reading the thread pointer register has no side effects.
    unsafe { std::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nostack, nomem, preserves_flags)) };
    tp
}
