//! Where a thread must not be while an entry's first bytes change: executing strictly inside them,
//! or about to return (or `sigreturn`) there. One check, run by the patching thread over parked
//! threads ([`super::park`]) and by each thread over itself in its signal handler
//! ([`super::check`]), so it allocates nothing and takes no lock.

use super::maps::{self, Mapping};

/// A thread found where bytes are about to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hazard {
    /// Its program counter is inside rewritten bytes.
    Running { tid: i32, pc: u64 },
    /// A word of its stack points inside rewritten bytes (a return address, a saved context).
    Returning { tid: i32, addr: u64 },
    /// Its stack is in no mapping read before the install (created since).
    UnknownStack { tid: i32 },
}

impl Hazard {
    /// As a (kind, address) pair a signal handler can store in atomics.
    pub fn encode(self) -> (u32, u64) {
        match self {
            Hazard::Running { pc, .. } => (1, pc),
            Hazard::Returning { addr, .. } => (2, addr),
            Hazard::UnknownStack { .. } => (3, 0),
        }
    }

    /// The inverse of [`Hazard::encode`]; kind 0 is no hazard.
    pub fn decode(tid: i32, kind: u32, addr: u64) -> Option<Hazard> {
        match kind {
            0 => None,
            1 => Some(Hazard::Running { tid, pc: addr }),
            2 => Some(Hazard::Returning { tid, addr }),
            _ => Some(Hazard::UnknownStack { tid }),
        }
    }

    /// A message naming the thread (allocates: call only once no thread is parked).
    pub fn describe(self, attempts: usize) -> String {
        match self {
            Hazard::Running { tid, pc } => format!(
                "thread {} kept executing the first bytes of a changed function (at {pc:#x}) in {attempts} attempts",
                super::threads::thread_name(tid)
            ),
            Hazard::Returning { tid, addr } => format!(
                "thread {} holds a return address inside the first bytes of a changed function ({addr:#x}); \
                 the function cannot be redirected while that frame is live",
                super::threads::thread_name(tid)
            ),
            Hazard::UnknownStack { tid } => {
                format!("the stack of thread {} could not be located", super::threads::thread_name(tid))
            }
        }
    }
}

/// Address ranges `[start, end)` strictly inside the bytes to rewrite, sorted, not overlapping.
pub type Inside = [(u64, u64)];

fn is_inside(inside: &Inside, addr: u64) -> bool {
    // Most words of a stack are no code address at all: one comparison with the whole span
    // rejects them before the binary search.
    let (Some(first), Some(last)) = (inside.first(), inside.last()) else { return false };
    if addr < first.0 || addr >= last.1 {
        return false;
    }
    let i = inside.partition_point(|&(start, _)| start <= addr);
    i > 0 && addr < inside[i - 1].1
}

/// The hazard of a thread stopped at `pc` with stack pointer `sp`, if any.
///
/// # Safety
/// The words of the stack from `sp` to the end of its mapping must not change during the call:
/// the thread is parked, or the caller is that thread.
pub unsafe fn of(tid: i32, pc: u64, sp: u64, inside: &Inside, mappings: &[Mapping]) -> Option<Hazard> {
    if is_inside(inside, pc) {
        return Some(Hazard::Running { tid, pc });
    }
    let Some(stack) = maps::containing(mappings, sp) else {
        return Some(Hazard::UnknownStack { tid });
    };
    if !stack.readable {
        return Some(Hazard::UnknownStack { tid });
    }
    // `[sp, stack.end)` is mapped readable memory that does not change meanwhile (the contract);
    // words are read with volatile loads.
    let mut at = sp & !7;
    while at + 8 <= stack.end {
        // SAFETY: see above.
        let word = unsafe { std::ptr::read_volatile(at as *const u64) };
        if is_inside(inside, word) {
            return Some(Hazard::Returning { tid, addr: word });
        }
        at += 8;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pc_or_a_stack_word_inside_is_a_hazard() {
        let stack = [0u64, 0x1003, 0];
        let start = stack.as_ptr() as u64;
        let maps = [Mapping { start, end: start + 24, readable: true, writable: true, executable: false }];
        let inside = [(0x1001, 0x1005), (0x2001, 0x2005)];
        // SAFETY: `stack` is ours and does not change.
        unsafe {
            assert_eq!(
                of(7, 0x2002, start + 16, &inside, &maps),
                Some(Hazard::Running { tid: 7, pc: 0x2002 })
            );
            assert_eq!(
                of(7, 0x2000, start, &inside, &maps),
                Some(Hazard::Returning { tid: 7, addr: 0x1003 })
            );
            // Above the word: nothing of it is scanned; the entry itself is no hazard.
            assert_eq!(of(7, 0x2000, start + 16, &inside, &maps), None);
            assert_eq!(of(7, 0x1005, 0x10, &inside, &maps), Some(Hazard::UnknownStack { tid: 7 }));
        }
        for h in [Hazard::Running { tid: 3, pc: 9 }, Hazard::Returning { tid: 3, addr: 8 }] {
            let (k, a) = h.encode();
            assert_eq!(Hazard::decode(3, k, a), Some(h));
        }
        assert_eq!(Hazard::decode(3, 0, 0), None);
    }
}
