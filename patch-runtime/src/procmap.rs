//! A process's mappings, asked of the kernel one address at a time (`PROCMAP_QUERY`, Linux 6.11)
//! instead of read whole from `/proc/<pid>/maps`.
//!
//! Every patch a process holds adds three mappings, and `/proc/<pid>/maps` is generated whole on
//! every read (about 1 µs per line): after a working day of patches, reading it would cost each
//! new patch milliseconds that grow with every patch before it. The query answers for one
//! address — the mapping holding it, or the next one above — in time that does not depend on how
//! many mappings there are, so callers ask only about the addresses they need and step over the
//! ranges they know (the patches). Where the kernel does not know the query, [`Maps::open`] says
//! so and callers read the file as before.
//!
//! `ioctl` is a plain system call: [`Maps::query`] allocates nothing and is async-signal-safe.

use std::fs::File;
use std::os::fd::AsRawFd;

/// One mapping: `[start, end)` and its protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
}

/// `struct procmap_query` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Default)]
struct Query {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: u64 =
    (3 << 30) | ((std::mem::size_of::<Query>() as u64) << 16) | ((b'f' as u64) << 8) | 17;
const COVERING_OR_NEXT_VMA: u64 = 0x10;
const VMA_READABLE: u64 = 0x1;
const VMA_WRITABLE: u64 = 0x2;
const VMA_EXECUTABLE: u64 = 0x4;

/// `/proc/<pid>/maps`, opened for queries.
pub struct Maps {
    file: File,
}

impl Maps {
    /// Opens the maps of `pid` (`None`: this process) — `None` when the kernel cannot answer
    /// queries (older than 6.11) or the file cannot be opened.
    pub fn open(pid: Option<u32>) -> Option<Maps> {
        let path = match pid {
            Some(pid) => format!("/proc/{pid}/maps"),
            None => "/proc/self/maps".to_string(),
        };
        let maps = Maps { file: File::open(path).ok()? };
        // A query at address 0 answers (the first mapping) on kernels that know it; ENOTTY or
        // EINVAL on those that do not.
        match maps.query(0) {
            Ok(_) => Some(maps),
            Err(_) => None,
        }
    }

    /// The mapping holding `addr`, or else the lowest one above it; `Ok(None)` when there is none.
    pub fn query(&self, addr: u64) -> Result<Option<Vma>, i32> {
        let mut q = Query {
            size: std::mem::size_of::<Query>() as u64,
            query_flags: COVERING_OR_NEXT_VMA,
            query_addr: addr,
            ..Query::default()
        };
        // SAFETY: PROCMAP_QUERY reads and writes a `struct procmap_query` of the size it is told;
        // no name or build id buffer is given (their sizes are 0).
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), PROCMAP_QUERY as _, &mut q as *mut Query) };
        if rc != 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            return if errno == libc::ENOENT { Ok(None) } else { Err(errno) };
        }
        Ok(Some(Vma {
            start: q.vma_start,
            end: q.vma_end,
            readable: q.vma_flags & VMA_READABLE != 0,
            writable: q.vma_flags & VMA_WRITABLE != 0,
            executable: q.vma_flags & VMA_EXECUTABLE != 0,
        }))
    }

    /// Every mapping, except those lying wholly inside one of `skip` (sorted, disjoint ranges the
    /// caller knows: the patches), stepped over in one query each. `Err` when a query fails.
    pub fn all_but(&self, skip: &[(u64, u64)]) -> Result<Vec<Vma>, i32> {
        let mut out = Vec::new();
        let mut addr = 0u64;
        while let Some(v) = self.query(addr)? {
            let i = skip.partition_point(|&(s, _)| s <= v.start);
            match skip[..i].last() {
                Some(&(_, end)) if v.end <= end => addr = end,
                _ => {
                    out.push(v);
                    addr = v.end;
                }
            }
            if addr == 0 || addr <= v.start {
                break; // the top of the address space
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_agree_with_the_maps_file() {
        let Some(maps) = Maps::open(None) else {
            eprintln!("this kernel has no PROCMAP_QUERY; nothing to compare");
            return;
        };
        let here = queries_agree_with_the_maps_file as fn() as usize as u64;
        let code = maps.query(here).unwrap().unwrap();
        assert!(code.start <= here && here < code.end && code.executable && !code.writable, "{code:?}");
        let all = maps.all_but(&[]).unwrap();
        assert!(all.windows(2).all(|w| w[0].end <= w[1].start));
        assert!(all.contains(&code));
        // Stepping over the code mapping leaves it (and only it, or what lies inside it) out.
        let without = maps.all_but(&[(code.start, code.end)]).unwrap();
        assert!(!without.contains(&code) && without.len() < all.len());
        let file = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(file.lines().count() >= all.len() - 2, "the file and the queries list the same mappings");
    }
}
