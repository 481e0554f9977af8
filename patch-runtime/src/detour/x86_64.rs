//! Everything about in-place patching that depends on x86-64: the jump written over a function's
//! entry, how a core is serialised after code changed under it, and where a signal handler finds
//! the interrupted thread's program counter and stack pointer. An aarch64 port replaces this file
//! (a `B` needs ±128 MiB and 4 bytes; `ISB` serialises; `pc`/`sp` live in `uc_mcontext`).

/// Bytes a detour overwrites at a function's entry: `jmp rel32`.
pub const JUMP_LEN: usize = 5;

/// `jmp rel32` at `from` to `to`, or `None` when `to` is beyond ±2 GiB of `from`.
pub fn encode_jump(from: u64, to: u64) -> Option<[u8; JUMP_LEN]> {
    let rel = (to as i128) - (from as i128 + JUMP_LEN as i128);
    let rel = i32::try_from(rel).ok()?;
    let r = rel.to_le_bytes();
    Some([0xE9, r[0], r[1], r[2], r[3]])
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
