//! The recorded symbol map of fullapp, checked against the binary itself (parsed here with the
//! `object` crate), against rustc-demangle, against the running program, and against the files
//! that were linked.

use super::support::{self, elf_build_id, load_map, read_bytes, run_program};
use super::{plain_debug, recorded_map_path, shim_debug};
use ipbp_ld::map::schema::{Binding, InputKind, Symbol, SymbolKind, SymbolMap};
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{elf, Endianness, Object, ObjectSection, ObjectSymbol, ObjectSymbolTable};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The app binary of the shim configuration and its recorded map.
fn app() -> (PathBuf, PathBuf, SymbolMap) {
    let build = shim_debug();
    let binary = build.binary();
    let path = recorded_map_path(&build.project, &binary);
    let map = load_map(&path);
    (binary, path, map)
}

#[test]
fn map_is_recorded_per_output_and_build_id_and_found_by_ipbp_ld_map() {
    let build = shim_debug();
    let (binary, path, map) = app();
    let build_id = elf_build_id(&binary);
    assert_eq!(map.build_id, build_id, "the map's build_id is not the binary's .note.gnu.build-id");
    assert_eq!(map.schema, 1);
    assert_eq!(map.arch, "x86_64");

    // <target>/ipbp/maps/<output file name>/<build-id>.json, where the output is the file the
    // linker wrote (target/debug/fullapp is cargo's hard link of it).
    let output = map.output.clone();
    let deps = build.target().join("debug/deps");
    assert_eq!(output.parent(), Some(deps.as_path()), "map.output = {}", output.display());
    assert_eq!(read_bytes(&output), read_bytes(&binary), "map.output is not the app binary");
    let out_name = output.file_name().unwrap();
    let dir = build.target().join("ipbp/maps").join(out_name);
    assert_eq!(path, dir.join(format!("{build_id}.json")), "the map is not where the layout says");
    let latest = std::fs::read_link(dir.join("latest.json")).expect("latest.json is not a symlink");
    assert_eq!(latest, Path::new(&format!("{build_id}.json")), "latest.json points elsewhere");
    assert!(dir.join(format!("{build_id}.inputs")).is_file(), "no .inputs list beside the map");

    // fullapp does not link the ipbp runtime, so it can never register and no patch can follow:
    // the registry is not told about it, and no link index is written.
    let record = build.project.home.join("builds").join(&build_id);
    assert!(!record.exists(), "a build that cannot register was noted in the registry: {}", record.display());
    let index = dir.join(format!("{build_id}.index"));
    assert!(!index.exists(), "a build that cannot be patched got a link index: {}", index.display());
    // The map is found next to the binary, also with another registry.
    let empty_home = build.project.root().join("empty-home");
    let run = support::ipbp_ld(&empty_home, &[support::arg("map"), support::arg(&binary)]);
    run.assert_success();
    assert_eq!(run.stdout.trim_end(), path.display().to_string(), "{run}");

    // A binary that was not linked through ipbp-ld has no map: exit 1 and a message.
    let plain = plain_debug().binary();
    let run = build.project.ipbp_ld(&[support::arg("map"), support::arg(&plain)]);
    run.assert_code(1);
    assert!(run.stdout.is_empty(), "{run}");
    assert!(run.stderr.contains(&plain.display().to_string()), "the message does not name the file: {run}");
}

/// A symbol as the map should describe it: (name, addr, size, kind, binding, section).
type Key = (String, u64, u64, SymbolKind, Binding, Option<String>);

fn key(s: &Symbol) -> Key {
    (s.name.clone(), s.addr, s.size, s.kind, s.binding, s.section.clone())
}

/// Every `.symtab` symbol the map must hold, read with `object` (counted, since names repeat).
fn elf_symbols(data: &[u8]) -> HashMap<Key, usize> {
    let file = ElfFile64::<Endianness>::parse(data).expect("the app binary is ELF");
    let table = file.symbol_table().expect("the app binary has a .symtab");
    let mut out = HashMap::new();
    for sym in table.symbols() {
        let kind = match sym.kind() {
            object::SymbolKind::File => continue,
            object::SymbolKind::Text => SymbolKind::Function,
            object::SymbolKind::Data => SymbolKind::Object,
            object::SymbolKind::Tls => SymbolKind::Tls,
            object::SymbolKind::Section => SymbolKind::Section,
            _ => SymbolKind::Other,
        };
        let section = sym.section_index().map(|i| {
            file.section_by_index(i).and_then(|s| s.name().map(str::to_string)).expect("a named section")
        });
        // A section symbol is named after its section.
        let name = match kind {
            SymbolKind::Section => section.clone().unwrap_or_default(),
            _ => sym.name().expect("a UTF-8 symbol name").to_string(),
        };
        if name.is_empty() {
            continue;
        }
        let binding = match sym.elf_symbol().st_bind() {
            elf::STB_GLOBAL | elf::STB_GNU_UNIQUE => Binding::Global,
            elf::STB_WEAK => Binding::Weak,
            _ => Binding::Local,
        };
        *out.entry((name, sym.address(), sym.size(), kind, binding, section)).or_default() += 1;
    }
    out
}

#[test]
fn map_symbols_segments_and_sections_match_the_elf_file() {
    let (binary, _, map) = app();
    let data = read_bytes(&binary);
    let expected = elf_symbols(&data);
    let defined: usize = expected.iter().filter(|(k, _)| k.5.is_some()).map(|(_, n)| n).sum();
    assert!(defined > 1000, "only {defined} defined symbols in fullapp's .symtab?");

    let mut recorded: HashMap<Key, usize> = HashMap::new();
    for s in &map.symbols {
        *recorded.entry(key(s)).or_default() += 1;
    }
    let missing: Vec<_> = expected.iter().filter(|(k, n)| recorded.get(*k) != Some(n)).take(10).collect();
    assert!(
        missing.is_empty(),
        "symbols of .symtab missing from the map (or counted differently): {missing:#?}"
    );
    let extra: Vec<_> = recorded.iter().filter(|(k, n)| expected.get(*k) != Some(n)).take(10).collect();
    assert!(extra.is_empty(), "map symbols that are not in .symtab: {extra:#?}");
    assert_eq!(map.symbols.len(), expected.values().sum::<usize>());

    // Known symbols of each kind, from each part of the app.
    let find = |demangled: &str, kind: SymbolKind| {
        map.symbols.iter().any(|s| s.demangled == demangled && s.kind == kind && s.section.is_some())
    };
    assert!(find("fullapp::checksum", SymbolKind::Function), "no fullapp::checksum function");
    assert!(find("fullapp::main", SymbolKind::Function), "no fullapp::main function");
    assert!(find("fullapp_c_mix", SymbolKind::Function), "no C function fullapp_c_mix");
    assert!(find("fullapp::EVENTS", SymbolKind::Object), "no static fullapp::EVENTS");
    assert!(find("calls", SymbolKind::Object), "no C static `calls`");

    // Header data, read with object's low-level ELF API.
    let elf = ElfFile64::<Endianness>::parse(&*data).unwrap();
    let e = elf.endian();
    assert_eq!(map.entry, elf.elf_header().e_entry(e), "entry point");
    assert_eq!(map.pie, elf.elf_header().e_type(e) == elf::ET_DYN, "PIE");
    let loads: Vec<_> = elf
        .elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(e) == elf::PT_LOAD)
        .map(|ph| {
            let f = ph.p_flags(e);
            let flags: String = [(elf::PF_R, 'r'), (elf::PF_W, 'w'), (elf::PF_X, 'x')]
                .iter()
                .map(|&(bit, c)| if f.0 & bit.0 != 0 { c } else { '-' })
                .collect();
            (ph.p_vaddr(e), ph.p_memsz(e), ph.p_offset(e), ph.p_filesz(e), flags, ph.p_align(e))
        })
        .collect();
    let recorded_loads: Vec<_> = map
        .segments
        .iter()
        .map(|s| (s.vaddr, s.memsz, s.offset, s.filesz, s.flags.clone(), s.align))
        .collect();
    assert_eq!(recorded_loads, loads, "PT_LOAD segments");
    let text = elf.section_by_name(".text").expect(".text");
    let recorded_text = map.sections.iter().find(|s| s.name == ".text").expect("no .text in the map");
    assert_eq!((recorded_text.addr, recorded_text.size), (text.address(), text.size()), ".text");
    let alloc_sections = elf
        .sections()
        .filter(|s| matches!(s.flags(), object::SectionFlags::Elf { sh_flags, .. } if sh_flags.0 & elf::SHF_ALLOC.0 != 0))
        .count();
    assert_eq!(map.sections.len(), alloc_sections, "the map should list every SHF_ALLOC section");
}

/// Where glibc's `_dl_determine_tlsoffset` (TLS_TCB_AT_TP, as on x86-64) places the first module's
/// block, written out again from glibc's source: `firstbyte = -l_tls_firstbyte_offset & (align-1)`
/// with `l_tls_firstbyte_offset = p_vaddr & (align-1)`, then
/// `off = roundup(0 + blocksize - firstbyte, align) + firstbyte` and the block is at `tp - off`.
fn glibc_tp_offset(vaddr: u64, memsz: u64, align: u64) -> i64 {
    let align = align.max(1);
    let l_tls_firstbyte_offset = vaddr & (align - 1);
    let firstbyte = l_tls_firstbyte_offset.wrapping_neg() & (align - 1);
    let off = (memsz - firstbyte).div_ceil(align) * align + firstbyte;
    -i64::try_from(off).unwrap()
}

fn hex(text: &str) -> u64 {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("not hex: {text}"))
}

#[test]
fn tls_layout_matches_the_headers_and_the_running_program() {
    let (binary, _, map) = app();
    let data = read_bytes(&binary);
    let elf = ElfFile64::<Endianness>::parse(&*data).unwrap();
    let e = elf.endian();
    let pt_tls = elf
        .elf_program_headers()
        .iter()
        .find(|ph| ph.p_type(e) == elf::PT_TLS)
        .expect("fullapp has thread-locals, so a PT_TLS header");
    let tls = map.tls.as_ref().expect("the map has no TLS layout");
    assert_eq!(
        (tls.vaddr, tls.filesz, tls.memsz, tls.align),
        (pt_tls.p_vaddr(e), pt_tls.p_filesz(e), pt_tls.p_memsz(e), pt_tls.p_align(e)),
        "TLS layout (vaddr, filesz, memsz, align) differs from PT_TLS"
    );
    assert_eq!(tls.tp_offset, glibc_tp_offset(tls.vaddr, tls.memsz, tls.align), "tp_offset");
    // The formula itself, on blocks whose start is not aligned.
    assert_eq!(glibc_tp_offset(0x1008, 0x10, 16), -0x18);
    assert_eq!(glibc_tp_offset(0x1000, 0x81, 16), -0x90);

    let counter: Vec<&Symbol> = map
        .symbols
        .iter()
        .filter(|s| s.kind == SymbolKind::Tls && s.demangled.starts_with("fullapp::TLS_COUNTER::"))
        .collect();
    assert_eq!(counter.len(), 1, "expected one TLS symbol for fullapp::TLS_COUNTER: {counter:#?}");
    let counter = counter[0];
    assert!(counter.demangled.contains("__RUST_STD_INTERNAL_VAL"), "{counter:?}");
    assert_eq!(counter.size, 8, "TLS_COUNTER is a Cell<u64>");
    assert!(counter.addr + counter.size <= tls.memsz, "the TLS symbol lies outside the TLS block");

    // Reality: the running program prints where TLS_COUNTER is in two threads and their thread
    // pointers, and where a function and a static are.
    let run = run_program(&binary, &["--tls-probe"]);
    run.assert_success();
    let lines = run.lines();
    assert_eq!(lines.len(), 4, "unexpected --tls-probe output: {run}");
    let word = |line: usize, n: usize| hex(lines[line].split(' ').nth(n).expect("a field"));
    let anchor = map
        .symbols
        .iter()
        .find(|s| s.demangled == "fullapp::tls_probe_anchor" && s.kind == SymbolKind::Function)
        .expect("no fullapp::tls_probe_anchor in the map");
    let bias = word(0, 1).wrapping_sub(anchor.addr);
    assert_eq!(bias % 4096, 0, "load bias {bias:#x} is not page-aligned: the function address is off");
    let events = map.symbols.iter().find(|s| s.demangled == "fullapp::EVENTS").expect("no fullapp::EVENTS");
    assert_eq!(word(1, 1), bias.wrapping_add(events.addr), "static EVENTS is not at bias + its map address");
    let mut thread_pointers = Vec::new();
    for (line, thread) in [(2, "main"), (3, "worker")] {
        assert_eq!(lines[line].split(' ').nth(1), Some(thread), "{run}");
        let (addr, tp) = (word(line, 2), word(line, 3));
        let predicted = tp.wrapping_add_signed(tls.tp_offset).wrapping_add(counter.addr);
        assert_eq!(
            addr, predicted,
            "{thread} thread: TLS_COUNTER at {addr:#x}, but tp {tp:#x} + tp_offset {} + symbol {:#x} = {predicted:#x}",
            tls.tp_offset, counter.addr
        );
        thread_pointers.push(tp);
    }
    assert_ne!(thread_pointers[0], thread_pointers[1], "two threads, one thread pointer? {run}");
}

#[test]
fn demangled_names_match_rustc_demangle() {
    let (_, _, map) = app();
    let mut legacy = 0;
    let mut v0 = 0;
    for s in &map.symbols {
        let expected = format!("{:#}", rustc_demangle::demangle(&s.name));
        assert_eq!(s.demangled, expected, "demangled name of {}", s.name);
        if s.demangled != s.name {
            if s.name.starts_with("_ZN") {
                legacy += 1;
            } else if s.name.starts_with("_R") {
                v0 += 1;
            }
        }
    }
    // Both manglings occur: fullapp's own (legacy) and the standard library's (v0).
    assert!(legacy > 100 && v0 > 100, "demangled {legacy} legacy and {v0} v0 names");
}

#[test]
fn inputs_are_listed_in_link_order_and_nothing_is_kept_without_the_runtime() {
    let build = shim_debug();
    let (_, path, map) = app();
    let inputs = &map.inputs;
    let all = format!("{inputs:#?}");
    let deps = build.target().join("debug/deps");
    let out_name = map.output.file_name().unwrap().to_string_lossy().into_owned();

    // The same list, in the same order, in the compact `.inputs` file beside the map.
    let list = std::fs::read_to_string(path.with_extension("inputs")).expect("the .inputs list");
    let listed: Vec<&str> =
        list.lines().filter(|l| !l.starts_with('#')).map(|l| l.rsplit('\t').next().unwrap()).collect();
    let paths: Vec<String> = inputs.iter().map(|i| i.path.display().to_string()).collect();
    assert_eq!(listed, paths, "the .inputs list differs from the map's inputs");

    // rustc's order: the app's objects, then its crates' rlibs, then the sysroot, then libraries.
    let position = |what: &str, pred: &dyn Fn(&Path) -> bool| {
        inputs
            .iter()
            .position(|i| pred(&i.path))
            .unwrap_or_else(|| panic!("no {what} among the inputs: {all}"))
    };
    let objects: Vec<usize> = (0..inputs.len())
        .filter(|&i| {
            let name = inputs[i].path.file_name().unwrap().to_string_lossy().into_owned();
            inputs[i].path.parent() == Some(&deps)
                && name.starts_with(&format!("{out_name}."))
                && name.ends_with(".rcgu.o")
        })
        .collect();
    assert!(!objects.is_empty(), "none of fullapp's *.rcgu.o among the inputs: {all}");
    assert!(objects.windows(2).all(|w| w[1] == w[0] + 1), "fullapp's objects are not together: {all}");
    let lib = position("libfullapp rlib", &|p| {
        p.parent() == Some(&deps) && p.file_name().unwrap().to_string_lossy().starts_with("libfullapp-")
    });
    let std = position("libstd", &|p| p.file_name().unwrap().to_string_lossy().starts_with("libstd-"));
    let libc = position("libc", &|p| p.to_string_lossy().ends_with("libc.so"));
    assert!(*objects.last().unwrap() < lib && lib < std && std < libc, "inputs out of link order: {all}");
    assert!(inputs.iter().take(objects[0]).all(|i| i.kind == InputKind::Object), "{all}");
    assert_eq!(inputs[lib].kind, InputKind::Archive);
    assert_eq!(inputs[std].kind, InputKind::SysrootArchive);

    // No patch can follow a program without the runtime: nothing was fingerprinted or kept, for
    // any executable of the build (its tests included).
    assert!(inputs.iter().all(|i| i.fingerprint.is_none() && i.stored.is_none()), "{all}");
    let store = build.target().join("ipbp/store");
    let kept = std::fs::read_dir(&store).map(|d| d.count()).unwrap_or(0);
    assert_eq!(kept, 0, "{} holds {kept} kept inputs of a build without the runtime", store.display());
}
