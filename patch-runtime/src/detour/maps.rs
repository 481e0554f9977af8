//! This process's memory mappings (`/proc/self/maps`), read before threads are parked: where each
//! thread's stack ends (for the return-address scan) and which protection a code page must get
//! back after it was rewritten.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
}

impl Mapping {
    /// The `mprotect` flags of this mapping.
    pub fn prot(&self) -> i32 {
        let mut p = libc::PROT_NONE;
        if self.readable {
            p |= libc::PROT_READ;
        }
        if self.writable {
            p |= libc::PROT_WRITE;
        }
        if self.executable {
            p |= libc::PROT_EXEC;
        }
        p
    }
}

/// The mappings an install needs, sorted by address, without reading all of `/proc/self/maps`
/// when the kernel answers queries ([`crate::procmap`]): every mapping outside ipbp's patch
/// region (stacks live there), and the mapping of each address of `entries` (the code pages to
/// write, in the image or in a patch). Patches hold no stack, so stepping over their region
/// loses nothing the stack scan needs — and should the program have mapped a stack into a gap
/// between two patches, the thread on it answers "unknown stack" and the round is retried with
/// every mapping read. So the cost does not grow with the number of patches loaded.
pub fn read_around(entries: &[u64]) -> Result<Vec<Mapping>, String> {
    let Some(maps) = crate::procmap::Maps::open(None) else { return read() };
    let skip: Vec<(u64, u64)> = crate::symbols::patch_span().into_iter().collect();
    let failed =
        |e: i32| format!("cannot query this process's mappings: {}", std::io::Error::from_raw_os_error(e));
    let mut vmas = maps.all_but(&skip).map_err(failed)?;
    for &at in entries {
        if let Some(v) = maps.query(at).map_err(failed)?.filter(|v| v.start <= at) {
            vmas.push(v);
        }
    }
    let mut out: Vec<Mapping> = vmas
        .into_iter()
        .map(|v| Mapping {
            start: v.start,
            end: v.end,
            readable: v.readable,
            writable: v.writable,
            executable: v.executable,
        })
        .collect();
    out.sort_unstable_by_key(|m| m.start);
    out.dedup_by_key(|m| m.start);
    Ok(out)
}

/// Every mapping, sorted by address.
pub fn read() -> Result<Vec<Mapping>, String> {
    let text = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("cannot read /proc/self/maps: {e}"))?;
    Ok(parse(&text))
}

fn parse(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_ascii_whitespace();
            let (a, b) = it.next()?.split_once('-')?;
            let perms = it.next()?.as_bytes();
            Some(Mapping {
                start: u64::from_str_radix(a, 16).ok()?,
                end: u64::from_str_radix(b, 16).ok()?,
                readable: perms.first() == Some(&b'r'),
                writable: perms.get(1) == Some(&b'w'),
                executable: perms.get(2) == Some(&b'x'),
            })
        })
        .collect();
    out.sort_unstable_by_key(|m| m.start);
    out
}

/// The mapping holding `addr` (no allocation: safe while threads are parked).
pub fn containing(maps: &[Mapping], addr: u64) -> Option<&Mapping> {
    let i = maps.partition_point(|m| m.start <= addr);
    maps[..i].last().filter(|m| addr < m.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_finds() {
        let maps = parse(
            "55d1c0a00000-55d1c0a3b000 r--p 00000000 fd:01 1 /app\n\
             55d1c0a3b000-55d1c0c00000 r-xp 0003b000 fd:01 1 /app\n\
             7ffd1000-7ffd3000 rw-p 00000000 00:00 0 [stack]\n",
        );
        assert_eq!(maps.len(), 3);
        let code = containing(&maps, 0x55d1c0a3b010).unwrap();
        assert!(code.executable && code.readable && !code.writable);
        assert_eq!(code.prot(), libc::PROT_READ | libc::PROT_EXEC);
        assert_eq!(containing(&maps, 0x7ffd2ff8).unwrap().end, 0x7ffd3000);
        assert!(containing(&maps, 0x7ffd3000).is_none());
        assert!(containing(&maps, 0x10).is_none());
    }
}
