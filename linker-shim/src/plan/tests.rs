//! The planner's resolution on facts made in memory: a workspace unit written with
//! `objects::testing`, the running image's symbols and the base build's units in a link index built
//! with its writer, the process's `hello` and a diff as values. No cargo build and no process: the
//! image's program headers are the test binary's own (`/proc/self/exe`), whose code lies nowhere
//! near the addresses given to the image's symbols here.
//!
//! Each relocation of the changed function `f` checks one row of ARCHITECTURE.md's table of what a
//! reference becomes.

use super::report::is_own_path;
use super::*;
use crate::diff::Change;
use crate::index::{BaseKind, LinkIndex, Symbol, Writer};
use crate::map::schema::InputKind;
use crate::objects::testing::{ElfObject, Kind};
use ipbp::protocol::LedgerEntry;
use object::elf::{R_X86_64_64, R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_TPOFF32};
use std::path::Path;

const BIAS: u64 = 0x5555_0000_0000;
/// Where the image's symbols are (unbiased): far from the test binary's own segments.
const IMAGE: u64 = 0x10_0000_0000;
/// Module offset and size of ipbp's TLS reserve.
const RESERVE: (u64, u64) = (0x100, 8192);

fn function(addr: u64) -> Symbol {
    Symbol { addr, size: 16, kind: BaseKind::Function, local: false }
}

fn data(addr: u64, size: u64) -> Symbol {
    Symbol { addr, size, kind: BaseKind::Data, local: false }
}

/// Every reference `f` makes: symbol name → relocation kind. Each name says what it is.
const REFS: &[(&str, object::elf::RelocationType)] = &[
    ("h", R_X86_64_PLT32),              // a call to another changed function
    ("g", R_X86_64_PLT32),              // a call to an unchanged function of the same unit
    ("k", R_X86_64_PLT32),              // an unchanged function that calls `h`, not redirected
    ("TABLE", R_X86_64_PC32),           // unchanged constant data holding `h`'s address
    ("lib_fn", R_X86_64_PLT32),         // an unchanged unit's function
    ("COUNTER", R_X86_64_PC32),         // a static of the image
    ("WIDE", R_X86_64_PC32),            // a static whose size changed
    ("ADDED_BEFORE", R_X86_64_PC32),    // a static an earlier patch added
    ("NEW_STATIC", R_X86_64_PC32),      // a static the image does not have
    ("IMAGE_TLS", R_X86_64_TPOFF32),    // a thread-local of the image
    ("NEW_TLS", R_X86_64_TPOFF32),      // a new thread-local, zero-initialised
    ("NEW_TLS_INIT", R_X86_64_TPOFF32), // a new thread-local with a constant value
    ("MISSING_TLS", R_X86_64_TPOFF32),  // a thread-local nothing defines
    ("write", R_X86_64_PLT32),          // what the image takes from libc
    ("nowhere", R_X86_64_PLT32),        // what nothing defines
    ("maybe", R_X86_64_PLT32),          // a weak reference nothing defines
    (".rodata..Lanon.fad58de7366495db.3", R_X86_64_PC32), // anonymous data
];

/// The current build's changed unit: `f` (refers to everything in `refs`, then takes `h`'s
/// address with a `lea`), `h`, `g`, `k` (calls `h`), `HOOK` (a static holding `h`'s address), `d`
/// (reads `HOOK`),
/// `TABLE` (a constant table holding it: a vtable) and the data they use.
fn changed_unit(refs: &[(&str, object::elf::RelocationType)]) -> Vec<u8> {
    let mut o = ElfObject::new();
    let f = o.section(".text.f", Kind::Text, &[0x90; 96], 16);
    let h = o.section(".text.h", Kind::Text, &[0xc3], 16);
    let g = o.section(".text.g", Kind::Text, &[0xc3], 16);
    o.global("f", f);
    let h_sym = o.global("h", h);
    let mut defined = HashMap::new();
    defined.insert("h", h_sym);
    defined.insert("g", o.global("g", g));
    let k = o.section(".text.k", Kind::Text, &[0xe8, 0, 0, 0, 0, 0xc3], 16);
    defined.insert("k", o.global("k", k));
    o.reloc(k, 1, R_X86_64_PLT32, h_sym, -4);
    let hook = o.section(".data.HOOK", Kind::Data, &[0; 8], 8);
    let hook_sym = o.global("HOOK", hook);
    defined.insert("HOOK", hook_sym);
    o.reloc(hook, 0, R_X86_64_64, h_sym, 0);
    let d = o.section(".text.d", Kind::Text, &[0x48, 0x8b, 0x05, 0, 0, 0, 0, 0xc3], 16);
    defined.insert("d", o.global("d", d));
    o.reloc(d, 3, R_X86_64_PC32, hook_sym, -4);
    let table = o.section(".data.rel.ro.TABLE", Kind::Data, &[0; 8], 8);
    defined.insert("TABLE", o.global("TABLE", table));
    o.reloc(table, 0, R_X86_64_64, h_sym, 0);
    let counter = o.section(".data.COUNTER", Kind::Data, &[0; 8], 8);
    defined.insert("COUNTER", o.global("COUNTER", counter));
    let wide = o.section(".data.WIDE", Kind::Data, &[0; 16], 8);
    defined.insert("WIDE", o.global("WIDE", wide));
    let new_static = o.zeroed(".bss.NEW_STATIC", Kind::Bss, 8, 8);
    defined.insert("NEW_STATIC", o.global("NEW_STATIC", new_static));
    let new_tls = o.zeroed(".tbss.NEW_TLS", Kind::Tbss, 8, 8);
    defined.insert("NEW_TLS", o.global("NEW_TLS", new_tls));
    let new_tls_init = o.section(".tdata.NEW_TLS_INIT", Kind::Tdata, &[1, 0, 0, 0], 4);
    defined.insert("NEW_TLS_INIT", o.global("NEW_TLS_INIT", new_tls_init));
    let anon = o.section(".rodata..Lanon.fad58de7366495db.3", Kind::ReadOnly, b"hello", 1);
    defined.insert(".rodata..Lanon.fad58de7366495db.3", o.section_symbol(anon));
    for (i, &(name, kind)) in refs.iter().enumerate() {
        let sym = match defined.get(name) {
            Some(&s) => s,
            None if name == "maybe" => o.weak_undefined(name),
            None if name.ends_with("_TLS") => o.undefined_tls(name),
            None => o.undefined(name),
        };
        o.reloc(f, 1 + 5 * i as u64, kind, sym, -4);
    }
    o.reloc(f, 1 + 5 * refs.len() as u64, R_X86_64_PC32, h_sym, -4); // lea h(%rip): h's address
    o.bytes()
}

/// The running image and the base build: `f`, `h`, `g` and `lib_fn` (defined by the unchanged
/// unit `lib.o`), the statics, a thread-local, libc's `write`; units `app.o` and `lib.o`. `lib.o`
/// also defines `lib_inlined`, which the image does not have (inlined into every caller): only
/// reading `lib.o` can tell what it is.
fn base_index() -> Vec<u8> {
    let mut w = Writer::default();
    w.symbol("f", function(IMAGE));
    w.symbol("h", function(IMAGE + 0x100));
    w.symbol("g", function(IMAGE + 0x200));
    w.symbol("k", function(IMAGE + 0x400));
    w.symbol("d", function(IMAGE + 0x500));
    w.symbol("lib_fn", function(IMAGE + 0x300));
    w.symbol("COUNTER", data(IMAGE + 0x10_000, 8));
    w.symbol("WIDE", data(IMAGE + 0x10_100, 8));
    w.symbol("HOOK", data(IMAGE + 0x10_200, 8));
    w.symbol("TABLE", data(IMAGE + 0x10_300, 8));
    w.symbol("IMAGE_TLS", Symbol { addr: 0x40, size: 8, kind: BaseKind::Tls, local: false });
    w.import("write");
    w.unit("app.o", "", 0, 1, 0);
    let lib = w.unit("lib.o", "", 1, 2, 0);
    w.global("lib_fn", lib, 1);
    w.global("lib_inlined", lib, 2);
    w.finish()
}

/// The current build: `app.o` changed (another hash), `lib.o` did not.
fn current_index() -> Vec<u8> {
    let mut w = Writer::default();
    w.unit("app.o", "", 0, 10, 0);
    w.unit("lib.o", "", 1, 2, 0);
    w.finish()
}

fn change(name: &str) -> (String, Change) {
    let c = Change {
        name: name.into(),
        base_name: name.into(),
        kind: DefKind::Function,
        old_size: 16,
        new_size: 96,
    };
    (name.to_string(), c)
}

/// Plans the patch of `f` and `h`, in place; `lib.o` does not exist on disk (reading it fails).
fn plan_in_place(dir: &Path) -> (Plan<'static>, Vec<UnitId>) {
    let (plan, read) = plan_refs(dir, REFS, crate::layout::Layouts::default());
    (plan.unwrap(), read)
}

/// [`plan_in_place`] with `f` referring to `refs`: the plan, and the units the index read.
fn plan_refs(
    dir: &Path,
    refs: &[(&str, object::elf::RelocationType)],
    layouts: crate::layout::Layouts,
) -> (crate::error::Result<Plan<'static>>, Vec<UnitId>) {
    let arena: &'static Arena = Box::leak(Box::default());
    let app = dir.join("app.o");
    std::fs::write(&app, changed_unit(refs)).unwrap();
    let input = |path: &Path| Input {
        path: path.to_path_buf(),
        kind: InputKind::Object,
        fingerprint: None,
        stored: None,
    };
    let inputs = vec![input(&app), input(&dir.join("lib.o"))];
    let base_units = LinkIndex::parse(arena.keep(base_index()).unwrap()).unwrap();
    let current_index = LinkIndex::parse(arena.keep(current_index()).unwrap()).unwrap();
    let current = Build::from_index(arena, &current_index, &inputs, false).unwrap();
    let base_build = Build::from_index(
        arena,
        &LinkIndex::parse(arena.keep(Writer::default().finish()).unwrap()).unwrap(),
        &[],
        false,
    )
    .unwrap();
    let diff = Diff { changed: [change("f"), change("h")].into_iter().collect(), ..Default::default() };
    let image_index = LinkIndex::parse(arena.keep(base_index()).unwrap()).unwrap();
    let base = BaseImage::read(arena, Path::new("/proc/self/exe"), BIAS, image_index).unwrap();
    let hello = Hello {
        data: vec![LedgerEntry { addr: 0x7000_0000, size: 8, name: "ADDED_BEFORE".into() }],
        ..Default::default()
    };
    let plan_inputs = Inputs {
        current: &current,
        base_build: &base_build,
        diff: &diff,
        base: &base,
        hello: &hello,
        tls: TlsInfo { reserve: Some(RESERVE) },
        mode: Mode::InPlace,
        layouts: &layouts,
        link_inputs: &inputs,
        arena,
    };
    let index = Index::new(&current, Some(&base_units)).unwrap();
    let read = index.units_read().to_vec();
    (plan(&plan_inputs, &index), read)
}

#[test]
fn each_reference_of_a_changed_function_resolves_as_the_table_says() {
    let dir = tempfile::tempdir().unwrap();
    let (plan, units_read) = plan_in_place(dir.path());
    assert_eq!(units_read, [UnitId(0)], "the unchanged unit is answered by the link index, never read");

    let chunk = |name: &str| plan.chunks.iter().position(|c| c.name == name).map(ChunkId::at);
    let f = &plan.chunks[chunk("f").expect("the changed function is carried")];
    let target = |name: &str| -> Target {
        let r =
            f.relocs.iter().find(|r| r.symbol == name).unwrap_or_else(|| panic!("no relocation to {name}"));
        r.target
    };
    let h = chunk("h").expect("the other changed function is carried");
    assert_eq!(target("h"), Target::Chunk(h, 0), "a call to a changed function goes to its new copy");
    // `h`'s entry in the image cannot be checked here (its address is not in this test binary's
    // code), so `h` is not redirected: its image entry keeps the old code, and new code must reach
    // the new copy also when it takes the address (for a redirected function that is the image's
    // entry, which the detour leads on: `inplace`'s `fp_same=true`), and through the unchanged `k`.
    assert!(plan.report.not_redirected.iter().any(|(n, _)| n == "h"), "{:?}", plan.report.not_redirected);
    let lea = f.relocs.last().unwrap();
    assert_eq!((lea.symbol.as_str(), lea.target), ("h", Target::Chunk(h, 0)), "the address of `h`");
    let k = chunk("k").expect("`k`, unchanged, leads to `h`: carried");
    assert_eq!(target("k"), Target::Chunk(k, 0));
    assert_eq!(plan.chunks[k].relocs[0].target, Target::Chunk(h, 0), "the copy of `k` calls the new `h`");
    let table = chunk("TABLE").expect("`TABLE`, unchanged, holds `h`: carried");
    assert_eq!(target("TABLE"), Target::Chunk(table, 0));
    assert_eq!(plan.chunks[table].relocs[0].target, Target::Chunk(h, 0), "the copy holds the new `h`");
    assert_eq!(plan.report.carried, ["TABLE", "k"]);
    assert_eq!(target("g"), Target::Absolute(BIAS + IMAGE + 0x200), "unchanged: the running image's");
    assert_eq!(target("lib_fn"), Target::Absolute(BIAS + IMAGE + 0x300), "an unchanged unit's: the image's");
    assert_eq!(target("COUNTER"), Target::Absolute(BIAS + IMAGE + 0x10_000), "a static keeps its state");
    assert_eq!(target("ADDED_BEFORE"), Target::Absolute(0x7000_0000), "from the process's ledger");
    let new_static = chunk("NEW_STATIC").expect("a new static is part of the patch");
    assert_eq!(target("NEW_STATIC"), Target::Chunk(new_static, 0));
    assert_eq!(target("IMAGE_TLS"), Target::Tls(0x40), "the image's thread-local: its TLS offset");
    assert_eq!(target("NEW_TLS"), Target::Tls(RESERVE.0), "a new thread-local: room in the reserve");
    assert_eq!(target("write"), Target::Import(plan.imports.iter().position(|i| i == "write").unwrap()));
    assert_eq!(target("maybe"), Target::Zero, "a weak reference nothing defines is null");
    let anon = chunk(".rodata..Lanon.fad58de7366495db.3").expect("anonymous data is part of the patch");
    assert_eq!(target(".rodata..Lanon.fad58de7366495db.3"), Target::Chunk(anon, 0));
    assert_eq!(plan.chunks[anon].data.as_ref(), b"hello");
    assert!(chunk("g").is_none(), "nothing unchanged is carried in place unless it leads to `h`");

    assert_eq!(plan.new_data, [("NEW_STATIC".to_string(), new_static)]);
    let new_tls: Vec<(&str, u64, u64)> =
        plan.new_tls.iter().map(|t| (t.name.as_str(), t.addr, t.size)).collect();
    assert_eq!(new_tls, [("NEW_TLS", 0, 8)], "placed at the start of the reserve, for the ledger");
    for added in ["NEW_STATIC", "NEW_TLS"] {
        assert!(plan.report.added.iter().any(|a| a == added), "{added} is reported as added");
    }
}

#[test]
fn what_cannot_be_bound_safely_is_refused_by_name_and_what_nothing_defines_is_left_to_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let (plan, _) = plan_in_place(dir.path());
    let refused = |symbol: &str| plan.refusals.iter().find(|r| r.symbol == symbol).map(|r| r.reason.as_str());
    assert_eq!(refused("WIDE"), Some("the running static `WIDE` is 8 bytes, the new code expects 16"));
    assert_eq!(refused("MISSING_TLS"), Some("thread-local not found in any link input"));
    assert!(
        refused("NEW_TLS_INIT")
            .is_some_and(|r| r.starts_with("a new thread-local with a non-zero constant initial value")),
        "{:?}",
        plan.refusals
    );
    assert_eq!(plan.refusals.len(), 3, "{:?}", plan.refusals);
    // A function nothing defines (no workspace unit, not the image, no archive of the link) is
    // left to the dynamic loader under its name, as libc's are: loading the patch fails there,
    // naming it, and the process keeps its code.
    let f = plan.chunks.iter().find(|c| c.name == "f").unwrap();
    let nowhere = f.relocs.iter().find(|r| r.symbol == "nowhere").unwrap();
    assert_eq!(nowhere.target, Target::Import(plan.imports.iter().position(|i| i == "nowhere").unwrap()));
    assert_eq!(plan.report.imports, ["write", "nowhere"], "in order of first use");
}

/// A unit of the build being linked is read only when the planner needs it; if it is gone by then
/// (removed during the link, say by a concurrent `cargo clean`), the patch ends with an error
/// naming the file, not a panic, and the driver skips that process.
#[test]
fn a_unit_removed_during_the_link_fails_the_plan_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // `lib_inlined` is defined by the unchanged `lib.o` and absent from the image: resolving it
    // means reading `lib.o`, which does not exist.
    let (plan, units_read) =
        plan_refs(dir.path(), &[("lib_inlined", R_X86_64_PLT32)], crate::layout::Layouts::default());
    assert_eq!(units_read, [UnitId(0)], "the index itself did not need `lib.o`");
    let Err(e) = plan else { panic!("planning with `lib.o` missing succeeded") };
    let message = e.to_string();
    let lib = dir.path().join("lib.o");
    assert!(message.contains(&lib.display().to_string()), "names the file: {message}");
    assert!(message.contains("removed or rewritten while it was being linked"), "{message}");
}

/// Layouts in which `h` takes a `u16` where it took a `u8`: a signature change, so `h` is not
/// redirected (its old entry keeps its code).
fn h_changes_signature() -> crate::layout::Layouts {
    use crate::layout::model::{FnRec, Model};
    let h = |param: &str| {
        let mut m = Model::default();
        m.functions.push(FnRec {
            linkage: "h".into(),
            path: "h".into(),
            params: vec![param.into()],
            ret: None,
            locals: vec![],
            main: false,
            generics: vec![],
        });
        m
    };
    crate::layout::Layouts { old: h("u8"), new: h("u16"), ..Default::default() }
}

/// New code reading a writable static that holds the address of a function not redirected for a
/// layout change (its signature changed) would call the old code with values of the new shape
/// through the pointer the process holds: refused, naming the static, the function and the change.
/// Without a layout change (`h` is not redirected only because its entry cannot be checked here),
/// the same static is read as it is.
#[test]
fn new_code_reading_a_static_that_leads_to_old_code_of_a_changed_shape_is_refused() {
    let layouts = h_changes_signature();
    let dir = tempfile::tempdir().unwrap();
    let (plan, _) = plan_refs(dir.path(), &[("HOOK", R_X86_64_PC32)], layouts);
    let plan = plan.unwrap();
    let reason = plan.refusals.iter().find(|r| r.symbol == "HOOK").map(|r| r.reason.as_str());
    assert!(
        reason.is_some_and(|r| r
            .starts_with("new code reads static `HOOK`, which points to code leading to the old `h`")
            && r.contains("the signature of `h` changed (fn(u8) -> fn(u16))")),
        "{:?}",
        plan.refusals
    );

    let dir = tempfile::tempdir().unwrap();
    let (plan, _) = plan_refs(dir.path(), &[("HOOK", R_X86_64_PC32)], crate::layout::Layouts::default());
    let plan = plan.unwrap();
    assert!(plan.refusals.is_empty(), "{:?}", plan.refusals);
    let f = plan.chunks.iter().find(|c| c.name == "f").unwrap();
    assert_eq!(f.relocs[0].target, Target::Absolute(BIAS + IMAGE + 0x10_200), "the running static");
}

/// A function not redirected for a layout change whose address is taken — by constant data (a
/// vtable: `TABLE`), by a static's initial value (`HOOK`) and by code (`f`'s `lea`) — may be
/// called through a pointer made at run time, which no relocation of the patch shows: new code
/// calling the unchanged `d`, which calls through `HOOK`, hands new values to the old `h` (review
/// G1 and G2). Refused, naming the function, the change and who takes its address; without a
/// layout change the same references are planned as they are.
#[test]
fn a_function_kept_on_old_code_whose_address_is_taken_is_refused() {
    let layouts = h_changes_signature();
    let dir = tempfile::tempdir().unwrap();
    let (plan, _) = plan_refs(dir.path(), &[("d", R_X86_64_PLT32)], layouts);
    let plan = plan.unwrap();
    let reason = plan.refusals.iter().find(|r| r.symbol == "h").map(|r| r.reason.as_str());
    let reason = reason.unwrap_or_else(|| panic!("`h` is not refused: {:?}", plan.refusals));
    assert!(reason.starts_with("the signature of `h` changed; the address of `h` is taken by "), "{reason}");
    for taker in ["data `HOOK`", "data `TABLE`", "`f`"] {
        assert!(reason.contains(taker), "does not name {taker}: {reason}");
    }
    assert!(reason.ends_with("(restart to use it)"), "{reason}");
    // An earlier patch's copies of `h` and of `k` (unchanged, calls `h`) keep their code: they are
    // called with values of that patch's layout (`deliver::chain`, review G3).
    assert_eq!(plan.report.kept_for_layout, ["h", "k"]);

    let dir = tempfile::tempdir().unwrap();
    let (plan, _) = plan_refs(dir.path(), &[("d", R_X86_64_PLT32)], crate::layout::Layouts::default());
    let plan = plan.unwrap();
    assert!(plan.refusals.is_empty(), "{:?}", plan.refusals);
    assert!(plan.report.kept_for_layout.is_empty(), "not redirected, but not for a layout change");
}

#[test]
fn the_programs_own_functions_are_told_from_instances_of_std() {
    for own in ["app::f", "<app::Mode as core::fmt::Debug>::fmt", "lib::g::{{closure}}"] {
        assert!(is_own_path(own), "{own}");
    }
    for std in [
        "alloc::vec::Vec<T,A>::extend_trusted",
        "<(U,T) as core::fmt::Debug>::fmt",
        "<&T as core::fmt::Debug>::fmt",
    ] {
        assert!(!is_own_path(std), "{std}");
    }
}
