//! Where a patch goes in the running program: free address space just below its executable.
//!
//! The patch's code reaches the image through 32-bit PC-relative references, so every byte of
//! the patch must lie within ±2 GiB of every byte of the image. PIE executables load around
//! 0x55…/0x56…, and the range below them is normally free (the heap grows above, mmap allocations
//! come from the top of the address space). Patches stack downwards, one below the other.

use crate::error::{Context, Result};

/// Keep patches this far inside the ±2 GiB window.
const REACH: u64 = (1 << 31) - (64 << 20);
const GRANULE: u64 = 0x1_0000;

/// Where a patch of `span` bytes goes in process `pid`: [`choose`]'s answer, found by asking the
/// kernel about the candidate ranges one at a time ([`ipbp::procmap`]) instead of reading every
/// mapping — a process holds three per patch, so reading them all would make each patch slower
/// than the one before. The search starts below `lowest`, the lowest patch the process reports
/// (patches stack downwards, so everything between it and the image is taken). On a kernel
/// without the query, the maps file is read.
pub fn place(pid: u32, image: (u64, u64), span: u64, lowest: Option<u64>) -> Result<u64> {
    let Some(maps) = ipbp::procmap::Maps::open(Some(pid)) else {
        return choose(&mappings(pid)?, image, span);
    };
    let mut end = lowest.map_or(image.0, |l| l.min(image.0));
    loop {
        let start = candidate(end, image, span)?;
        // The mapping holding `start` or the next one above: the one that overlaps, if any does.
        let next = maps.query(start).map_err(|e| {
            crate::err!(
                "cannot query the mappings of process {pid}: {}",
                std::io::Error::from_raw_os_error(e)
            )
        })?;
        match next {
            Some(v) if v.start < start + span => end = v.start,
            _ => return Ok(start),
        }
    }
}

/// The highest `GRANULE`-aligned start for `span` bytes ending at or below `end`, if it is within
/// reach of the image.
fn candidate(end: u64, image: (u64, u64), span: u64) -> Result<u64> {
    let Some(start) = end.checked_sub(span).map(|s| s & !(GRANULE - 1)) else {
        crate::bail!("no free address space below the program image");
    };
    if image.1 - start > REACH {
        crate::bail!(
            "no free address range of {span:#x} bytes within reach of the program image at {:#x}..{:#x}",
            image.0,
            image.1
        );
    }
    Ok(start)
}

/// The mapped ranges of a process, sorted.
pub fn mappings(pid: u32) -> Result<Vec<(u64, u64)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("cannot read /proc/{pid}/maps"))?;
    let mut ranges: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split(' ').next()?.split_once('-')?;
            Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
        })
        .collect();
    ranges.sort_unstable();
    Ok(ranges)
}

/// The highest `GRANULE`-aligned start below `image.0` where `span` bytes are free and the whole
/// patch stays within reach of the whole image.
pub fn choose(maps: &[(u64, u64)], image: (u64, u64), span: u64) -> Result<u64> {
    let mut end = image.0;
    loop {
        let start = candidate(end, image, span)?;
        match maps.iter().rev().find(|&&(a, b)| a < start + span && start < b) {
            None => return Ok(start),
            Some(&(a, _)) => end = a,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_go_right_below_the_image_and_skip_taken_ranges() {
        let image = (0x5555_0000_0000, 0x5555_0010_0000);
        assert_eq!(choose(&[image], image, 0x3000).unwrap(), 0x5554_ffff_0000);
        let taken = [(0x5554_ffff_0000, 0x5554_ffff_4000), image];
        assert_eq!(choose(&taken, image, 0x3000).unwrap(), 0x5554_fffe_0000);
    }

    #[test]
    fn placing_by_queries_finds_free_space_below_what_is_mapped() {
        if ipbp::procmap::Maps::open(None).is_none() {
            return; // no PROCMAP_QUERY on this kernel: `place` reads the file (tested above)
        }
        let pid = std::process::id();
        let here = placing_by_queries_finds_free_space_below_what_is_mapped as fn() as usize as u64;
        let maps = mappings(pid).unwrap();
        let image = *maps.iter().find(|&&(a, b)| a <= here && here < b).unwrap();
        let at = place(pid, image, 0x3000, None).unwrap();
        assert_eq!(at, choose(&mappings(pid).unwrap(), image, 0x3000).unwrap());
        // Asked to start below a lower point, it stays below it.
        let lower = at - 0x10_0000;
        let below = place(pid, image, 0x3000, Some(lower)).unwrap();
        assert!(below + 0x3000 <= lower);
    }

    #[test]
    fn refuses_when_nothing_is_within_reach() {
        let image = (0x8000_0000, 0x8010_0000);
        let wall = [(0, 0x7fff_8000), image];
        assert!(choose(&wall, image, 0x10000).is_err());
    }
}
