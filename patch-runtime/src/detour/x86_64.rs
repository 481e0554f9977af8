//! Everything about in-place patching that depends on x86-64: the jump written over a function's
//! entry, the breakpoint written first and how its trap is recognised and resumed, how a core is
//! serialised after code changed under it, and where a signal handler finds and sets the
//! interrupted thread's program counter and stack pointer. An aarch64 port replaces this file (a
//! `B` needs ±128 MiB and 4 bytes and is written with one aligned store, so no breakpoint step;
//! `ISB` serialises; `pc`/`sp` live in `uc_mcontext`; `BRK` traps with `TRAP_BRKPT` at its own
//! address).

/// Bytes a detour overwrites at a function's entry: `jmp rel32`.
pub const JUMP_LEN: usize = 5;

/// `jmp rel32` at `from` to `to`, or `None` when `to` is beyond ±2 GiB of `from`.
pub fn encode_jump(from: u64, to: u64) -> Option<[u8; JUMP_LEN]> {
    let rel = (to as i128) - (from as i128 + JUMP_LEN as i128);
    let rel = i32::try_from(rel).ok()?;
    let r = rel.to_le_bytes();
    Some([0xE9, r[0], r[1], r[2], r[3]])
}

/// `int3`: the one-byte breakpoint written over an entry's first byte while the rest changes.
/// Intel and AMD allow replacing the first byte of an instruction other cores may execute with
/// it (the kernel's `text_poke_bp` relies on this).
pub const BREAKPOINT: u8 = 0xCC;

/// Whether a SIGTRAP came from executing `int3` (the kernel reports it as `SI_KERNEL`).
pub fn is_breakpoint_trap(info: &libc::siginfo_t) -> bool {
    info.si_code == libc::SI_KERNEL
}

/// The address of the breakpoint a trapped thread executed: `int3` reports the next byte.
pub fn breakpoint_site(pc: u64) -> u64 {
    pc.wrapping_sub(1)
}

/// Makes the interrupted thread resume at `pc` when its signal handler returns.
///
/// # Safety
/// `ctx` must be the third argument the kernel passed to an `SA_SIGINFO` handler.
pub unsafe fn set_pc(ctx: *mut libc::c_void, pc: u64) {
    // SAFETY: per the contract, `ctx` points at the kernel-written `ucontext_t`, which the kernel
    // reads back on `sigreturn`.
    let uc = unsafe { &mut *(ctx as *mut libc::ucontext_t) };
    uc.uc_mcontext.gregs[libc::REG_RIP as usize] = pc as i64;
}

/// Overwrites the stack just below the caller's frame with zeros: the frames a signal handler's
/// work used, which held the interrupted program counter. Without this a later frame that does
/// not write all of its slots would leave that address above the thread's stack pointer, where
/// the stack scan of a check round ([`super::hazard`]) would take it for a saved context.
/// 4 KiB covers the handlers' frames many times over and stays small beside any thread's stack.
#[inline(never)]
pub fn scrub_stack() {
    let mut zeros = [0u64; 512];
    std::hint::black_box(&mut zeros);
}

/// Serialises the executing core: instructions fetched after this see every byte written to code
/// before it (Intel SDM vol. 3, 8.1.3 "Handling Self- and Cross-Modifying Code": the executing
/// processor must run a serialising instruction; `cpuid` is one, and allowed in user mode).
#[inline(always)]
pub fn serialize_core() {
    // cpuid has no side effects besides its outputs (and serialising).
    let _ = std::arch::x86_64::__cpuid(0);
}

/// The interrupted program counter and stack pointer from a signal handler's context.
///
/// # Safety
/// `ctx` must be the third argument the kernel passed to an `SA_SIGINFO` handler.
pub unsafe fn interrupted_pc_sp(ctx: *const libc::c_void) -> (u64, u64) {
    // SAFETY: per the contract, `ctx` points at the kernel-written `ucontext_t`.
    let uc = unsafe { &*(ctx as *const libc::ucontext_t) };
    let regs = &uc.uc_mcontext.gregs;
    (regs[libc::REG_RIP as usize] as u64, regs[libc::REG_RSP as usize] as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_are_relative_to_the_next_instruction() {
        assert_eq!(encode_jump(0x1000, 0x1005), Some([0xE9, 0, 0, 0, 0]));
        assert_eq!(encode_jump(0x1000, 0x1000), Some([0xE9, 0xFB, 0xFF, 0xFF, 0xFF]));
        assert_eq!(encode_jump(0x5555_0000_0000, 0x5554_f000_0000), Some([0xE9, 0xFB, 0xFF, 0xFF, 0xEF]));
        assert_eq!(encode_jump(0x1000, 0x1000 + (1 << 31) + 5), None);
        assert_eq!(encode_jump(0x1000 + (1 << 31), 0x1000 + 5), Some([0xE9, 0, 0, 0, 0x80]));
    }
}
