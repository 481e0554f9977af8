//! Whether a function's entry can hold a detour: the jump the runtime writes over its first bytes.
//!
//! Overwriting the first [`JUMP_LEN`] bytes is safe for every thread that enters the function
//! from its entry. It is not when code can arrive *inside* those bytes, which the running image's
//! own bytes tell (the runtime separately checks, with every thread parked, that no program
//! counter and no stack word points inside them at the moment of writing):
//! - a call among the first bytes whose return address lies inside them;
//! - a branch of the function to a byte inside them, or to the entry itself (a loop whose header
//!   is the entry: its registers are not a fresh call's, so it must not continue in new code);
//! - a function shorter than the jump, unless what follows it up to the jump's end is padding
//!   (`int3`, which lld fills between functions and nothing executes).
//!
//! x86-64 specific: the decoder, `jmp rel32`'s length and the padding byte. An aarch64 port
//! checks one 4-byte `B` instead.

use iced_x86::{Decoder, DecoderOptions, FlowControl};

/// Bytes a detour overwrites (`jmp rel32`), as the runtime writes them.
pub const JUMP_LEN: u64 = ipbp::DETOUR_JUMP_LEN as u64;

/// What lld fills gaps between functions with.
const PADDING: u8 = 0xCC;

/// Why an entry cannot hold a detour, for a message naming the function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfit {
    TooSmall { size: u64 },
    CallInside { at: u64 },
    BranchInside { from: u64, to: u64 },
    LoopsToEntry { from: u64 },
    Undecodable { at: u64 },
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfit::TooSmall { size } => {
                write!(f, "it is {size} bytes long, too short to hold a {JUMP_LEN}-byte jump")
            }
            Unfit::CallInside { at } => {
                write!(f, "a call at +{at:#x} returns into the bytes a jump would overwrite")
            }
            Unfit::BranchInside { from, to } => {
                write!(f, "a branch at +{from:#x} lands at +{to:#x}, inside the bytes a jump would overwrite")
            }
            Unfit::LoopsToEntry { from } => write!(f, "a branch at +{from:#x} loops back to its entry"),
            Unfit::Undecodable { at } => write!(f, "its code cannot be decoded at +{at:#x}"),
        }
    }
}

/// Checks the function whose code is `code` (its symbol's size), followed in the image by
/// `after` (the bytes up to at least the jump's end, or fewer at the end of a segment).
pub fn check(code: &[u8], after: &[u8]) -> Result<(), Unfit> {
    let size = code.len() as u64;
    if size < JUMP_LEN {
        let needed = (JUMP_LEN - size) as usize;
        if after.len() < needed || after[..needed].iter().any(|&b| b != PADDING) {
            return Err(Unfit::TooSmall { size });
        }
    }
    // Decoded at address 0, so every address below is an offset from the entry.
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    for ins in &mut decoder {
        if ins.is_invalid() {
            return Err(Unfit::Undecodable { at: ins.ip() });
        }
        let (at, next) = (ins.ip(), ins.next_ip());
        match ins.flow_control() {
            FlowControl::Call | FlowControl::IndirectCall if next < JUMP_LEN => {
                return Err(Unfit::CallInside { at });
            }
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
                let to = ins.near_branch_target();
                if to == 0 {
                    return Err(Unfit::LoopsToEntry { from: at });
                }
                if to < JUMP_LEN {
                    return Err(Unfit::BranchInside { from: at, to });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usual_prologue_fits() {
        // sub rsp, 0x48; mov [rsp+8], rdi; ret
        let code = [0x48, 0x83, 0xEC, 0x48, 0x48, 0x89, 0x7C, 0x24, 0x08, 0xC3];
        assert_eq!(check(&code, &[]), Ok(()));
    }

    #[test]
    fn short_functions_fit_only_before_padding() {
        assert_eq!(check(&[0xC3], &[0xCC; 15]), Ok(()));
        assert_eq!(check(&[0xC3], &[0xCC, 0xCC, 0x55, 0xCC]), Err(Unfit::TooSmall { size: 1 }));
        assert_eq!(check(&[0x31, 0xC0, 0xC3], &[0xCC]), Err(Unfit::TooSmall { size: 3 }));
    }

    #[test]
    fn calls_and_branches_into_the_first_bytes_are_found() {
        // call rax; ret — returns to +2
        assert_eq!(check(&[0xFF, 0xD0, 0xC3, 0x90, 0x90, 0xC3], &[]), Err(Unfit::CallInside { at: 0 }));
        // call rel32 ends exactly at +5: the return lands after the jump, in old code
        assert_eq!(check(&[0xE8, 0, 0, 0, 0, 0xC3], &[]), Ok(()));
        // inc eax; inc eax; nop; nop; nop; jne +1 (loop into the middle)
        assert_eq!(
            check(&[0xFF, 0xC0, 0xFF, 0xC0, 0x90, 0x75, 0xFA, 0xC3], &[]),
            Err(Unfit::BranchInside { from: 5, to: 1 })
        );
        // dec edi; nop; nop; nop; jne 0 (the entry is a loop header)
        assert_eq!(
            check(&[0xFF, 0xCF, 0x90, 0x90, 0x90, 0x75, 0xF9, 0xC3], &[]),
            Err(Unfit::LoopsToEntry { from: 5 })
        );
    }
}
