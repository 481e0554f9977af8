//! Serialising every core that runs a thread of this process, without waiting for the threads:
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)` (Linux ≥ 4.16 on x86-64). The kernel
//! interrupts each CPU currently running one of our threads and has it execute a core-serialising
//! instruction before the call returns; a thread not running at that moment serialises before it
//! next returns to user space. This is the `text_poke_sync` step of the kernel's own
//! `text_poke_bp`, between rewriting the bytes of an instruction other CPUs may execute.
//!
//! The process must register once; registering in a process that already has several threads
//! waits for an RCU grace period, so [`register`] runs when the runtime starts.

use std::sync::OnceLock;

const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_long = 1 << 5;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_long = 1 << 6;

static REGISTERED: OnceLock<bool> = OnceLock::new();

fn membarrier(cmd: libc::c_long) -> libc::c_long {
    // SAFETY: membarrier takes a command and two integer arguments and touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_long, 0 as libc::c_long) }
}

/// Registers the process for core serialisation (once); whether it is available.
pub fn register() -> bool {
    *REGISTERED.get_or_init(|| {
        let supported = membarrier(MEMBARRIER_CMD_QUERY);
        supported >= 0
            && supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE != 0
            && membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE) == 0
    })
}

/// Serialises every core running a thread of this process (see the module's doc); whether the
/// kernel did. One system call.
pub fn all_cores() -> bool {
    register() && membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE) == 0
}
