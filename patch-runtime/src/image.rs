//! Facts about the running executable, read from the loader (`dl_iterate_phdr`): its build id,
//! where it was loaded, and which address ranges are its code and its writable data.

use std::ffi::c_void;
use std::path::PathBuf;

pub struct Image {
    pub build_id: String,
    pub load_bias: u64,
    pub exe: PathBuf,
    /// Absolute `[start, end)` ranges of the executable's PT_LOAD segments by permission.
    pub code: Vec<(u64, u64)>,
    pub writable: Vec<(u64, u64)>,
}

impl Image {
    pub fn contains_code(&self, addr: u64) -> bool {
        self.code.iter().any(|&(s, e)| s <= addr && addr < e)
    }

    pub fn contains_writable(&self, addr: u64, len: u64) -> bool {
        self.writable.iter().any(|&(s, e)| s <= addr && addr.saturating_add(len) <= e)
    }
}

/// The main program, or `None` when it has no GNU build id (ipbp needs one to match builds).
pub fn main_program() -> Option<Image> {
    let mut found: Option<Image> = None;
    // SAFETY: the callback only reads the loader's phdr array during the call.
    unsafe { libc::dl_iterate_phdr(Some(first_object), &mut found as *mut _ as *mut c_void) };
    let mut image = found?;
    image.exe = std::fs::read_link("/proc/self/exe").unwrap_or_default();
    Some(image)
}

unsafe extern "C" fn first_object(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> i32 {
    // SAFETY: called by dl_iterate_phdr with a valid info for the first object (the executable).
    let info = unsafe { &*info };
    let found = unsafe { &mut *(data as *mut Option<Image>) };
    let bias = info.dlpi_addr;
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    let mut image = Image {
        build_id: String::new(),
        load_bias: bias,
        exe: PathBuf::new(),
        code: vec![],
        writable: vec![],
    };
    for ph in phdrs {
        let start = bias + ph.p_vaddr;
        let end = start + ph.p_memsz;
        match ph.p_type {
            libc::PT_LOAD => {
                if ph.p_flags & libc::PF_X != 0 {
                    image.code.push((start, end));
                }
                if ph.p_flags & libc::PF_W != 0 {
                    image.writable.push((start, end));
                }
            }
            libc::PT_NOTE => {
                // SAFETY: PT_NOTE segments are mapped (they lie inside a PT_LOAD).
                let notes = unsafe { std::slice::from_raw_parts(start as *const u8, ph.p_memsz as usize) };
                if let Some(id) = gnu_build_id(notes) {
                    image.build_id = id;
                }
            }
            _ => {}
        }
    }
    if !image.build_id.is_empty() {
        *found = Some(image);
    }
    1 // stop after the first object
}

/// The `NT_GNU_BUILD_ID` note in a note segment, as hex.
pub(crate) fn gnu_build_id(mut notes: &[u8]) -> Option<String> {
    let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
    while notes.len() >= 12 {
        let (namesz, descsz, kind) = (word(notes), word(&notes[4..]), word(&notes[8..]));
        let name_end = 12 + namesz.next_multiple_of(4);
        let desc_end = name_end + descsz.next_multiple_of(4);
        if desc_end > notes.len() {
            return None;
        }
        if kind == 3 && &notes[12..12 + namesz.min(4)] == b"GNU\0" {
            let desc = &notes[name_end..name_end + descsz];
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        notes = &notes[desc_end..];
    }
    None
}
