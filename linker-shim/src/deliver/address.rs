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
    fn refuses_when_nothing_is_within_reach() {
        let image = (0x8000_0000, 0x8010_0000);
        let wall = [(0, 0x7fff_8000), image];
        assert!(choose(&wall, image, 0x10000).is_err());
    }
}
