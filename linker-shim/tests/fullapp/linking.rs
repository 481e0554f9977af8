//! Transparent linking: fullapp behaves the same with and without ipbp-ld, in debug and release,
//! its test suite passes under both, every kind of link goes through the shim, and the shim's
//! output is the plain linker's, byte for byte.

use super::support::{
    both, elf_build_id, load_map, read_bytes, run_program, shim_warnings, testdata, Linker, Project, Run,
};
use super::{edited_build, plain_debug, recorded_map_path, shim_debug};
use std::path::{Path, PathBuf};

/// What `fullapp` must print, computed here independently of the program (from the C source, with
/// the same hash and formulas), so a mislinked C object or a wrong build-script output shows up.
fn expected_report() -> String {
    let c_source = read_bytes(&testdata("fullapp").join("csrc/mix.c"));
    let c_lines = c_source.iter().filter(|&&b| b == b'\n').count();
    let c_checksum: u64 = c_source.iter().map(|&b| u64::from(b)).sum();
    let fnv = b"fullapp"
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    let c_mix = |a: u32, b: u32| {
        let x = a.wrapping_mul(2_654_435_761)
            ^ b.wrapping_add(0x9e37_79b9).wrapping_add(a << 6).wrapping_add(a >> 2);
        x ^ (x >> 15)
    };
    let checksum = b"ipbp hot patching"
        .iter()
        .enumerate()
        .fold(0x1234u32, |sum, (i, &b)| sum.rotate_left(5) ^ u32::from(b).wrapping_mul(i as u32 + 1));
    let lines = [
        format!("build script: C source has {c_lines} lines, checksum {c_checksum}"),
        format!("proc-macro: fnv1a(\"fullapp\") = {fnv:#018x}"),
        "proc-macro: Config { name, level, tags }".to_string(),
        format!("c: fullapp_c_mix(7, 11) = {}", c_mix(7, 11)),
        format!("c: fullapp_c_mix(1, 2) = {}", c_mix(1, 2)),
        "c: calls = 2".to_string(),
        "generic: largest i32 = 42".to_string(),
        "generic: largest f64 = 2.25".to_string(),
        "generic: largest &str = zucchini".to_string(),
        format!("checksum: {checksum:#010x}"),
        "panic: 84 / 2 = Ok(42)".to_string(),
        "panic: 1 / 0 = Err(\"division of 1 by zero\")".to_string(),
        "thread_local: main counted 2, worker counted 1".to_string(),
        "thread_local: main name \"main\", worker name \"unnamed\"".to_string(),
        "static: 3 events, log [\"main:first\", \"main:second\", \"worker\"]".to_string(),
    ];
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[track_caller]
fn report_of(binary: &Path) -> String {
    let run = run_program::<&str>(binary, &[]);
    run.assert_success();
    assert!(run.stderr.is_empty(), "fullapp wrote to stderr (the caught panic must stay quiet): {run}");
    run.stdout
}

#[test]
fn fullapp_prints_the_same_in_debug_and_release_with_and_without_ipbp_ld() {
    let expected = expected_report();
    let shim = report_of(&shim_debug().binary());
    let plain = report_of(&plain_debug().binary());
    assert_eq!(plain, expected, "the plain-linked debug fullapp printed something unexpected");
    assert_eq!(shim, plain, "the ipbp-ld-linked debug fullapp differs from the plain-linked one");

    let project = Project::copy_of("fullapp");
    let release = |linker: Linker, config: &str| {
        let run = project.cargo(linker, config, &["build", "--release", "--locked"]).run();
        run.assert_success();
        project.target(config).join("release/fullapp")
    };
    let (shim_bin, plain_bin) =
        both(|| release(Linker::ShimConfig, "release-shim"), || release(Linker::Plain, "release-plain"));
    assert_eq!(
        report_of(&plain_bin),
        expected,
        "the plain-linked release fullapp printed something unexpected"
    );
    assert_eq!(
        report_of(&shim_bin),
        expected,
        "the ipbp-ld-linked release fullapp printed something unexpected"
    );

    // Built from the same sources (only the target dirs differ), the two release binaries are
    // identical, so the map recorded for the shim's link describes the plain one too.
    let (shim_bytes, plain_bytes) = (read_bytes(&shim_bin), read_bytes(&plain_bin));
    assert!(shim_bytes == plain_bytes, "the ipbp-ld-linked release binary differs from the plain-linked one");
    let map = recorded_map_path(&project, &shim_bin);
    assert!(
        map.starts_with(project.target("release-shim").join("ipbp/maps")),
        "the release map {} is not under the release target dir",
        map.display()
    );
    assert_eq!(load_map(&map).build_id, elf_build_id(&plain_bin));
    assert!(!project.target("release-plain").join("ipbp").exists(), "the plain build wrote ipbp files");
}

/// `test result: ok. N passed; ...` lines without their timings, in order.
fn test_results(run: &Run) -> Vec<String> {
    run.stdout
        .lines()
        .filter(|l| l.starts_with("test result:"))
        .map(|l| l.split("; finished in").next().unwrap_or(l).to_string())
        .collect()
}

#[test]
fn fullapp_test_suite_passes_with_and_without_ipbp_ld() {
    let shim = &shim_debug().test;
    let plain = &plain_debug().test;
    plain.assert_success();
    shim.assert_success();
    let ok =
        |n: usize| format!("test result: ok. {n} passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
    // Unit tests of the lib, of the bin (none), the integration test, and the doctest, in cargo's order.
    assert_eq!(test_results(plain), vec![ok(6), ok(0), ok(3), ok(1)], "unexpected test results: {plain}");
    assert_eq!(test_results(shim), test_results(plain), "test results differ through ipbp-ld: {shim}");
    assert!(shim.stderr.contains("Doc-tests fullapp"), "the doctests did not run: {shim}");
}

/// The links the logging `IPBP_LINKER` saw: (is `-shared`, output path).
fn logged_links(build: &super::DebugBuild) -> Vec<(bool, PathBuf)> {
    let log = build.link_log.as_ref().expect("the shim configuration logs its links");
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("no link log {}: {e}", log.display()));
    text.lines()
        .map(|l| {
            let (shared, out) = l.split_once(' ').unwrap_or_else(|| panic!("bad log line {l:?}"));
            (shared == "shared=yes", PathBuf::from(out))
        })
        .collect()
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[test]
fn every_kind_of_link_goes_through_ipbp_ld_and_executables_are_recorded() {
    let build = shim_debug();
    build.build.assert_success();
    build.test.assert_success();
    let links = logged_links(build);
    let all = format!("{links:#?}");
    let target = build.target();
    let deps = target.join("debug/deps");

    let proc_macro: Vec<_> =
        links.iter().filter(|(_, o)| file_name(o).starts_with("libfullapp_macros-")).collect();
    assert!(
        proc_macro.len() == 1 && proc_macro[0].0 && file_name(&proc_macro[0].1).ends_with(".so"),
        "the proc-macro was not linked once with -shared through ipbp-ld: {all}"
    );
    let build_script = links
        .iter()
        .find(|(shared, o)| {
            !shared
                && file_name(o).starts_with("build_script_build-")
                && o.starts_with(target.join("debug/build"))
        })
        .unwrap_or_else(|| panic!("the build script was not linked through ipbp-ld: {all}"));
    let in_deps = |prefix: &str| {
        links
            .iter()
            .filter(|(s, o)| !s && o.parent() == Some(&deps) && file_name(o).starts_with(prefix))
            .count()
    };
    // The binary, the lib's unit tests and the bin's unit tests.
    assert_eq!(in_deps("fullapp-"), 3, "fullapp's executables were not all linked through ipbp-ld: {all}");
    assert_eq!(in_deps("integration-"), 1, "the integration test was not linked through ipbp-ld: {all}");
    assert!(
        links.iter().any(|(s, o)| !s && file_name(o) == "rust_out"),
        "the doctest (rustdoc's rust_out) was not linked through ipbp-ld: {all}"
    );
    // ... and left nothing behind: rustdoc's temporary directory is gone, no `ipbp/` was made in
    // it (before or after rustdoc removed it), no build of it is in the registry.
    let tmp = super::temp_dir_of(&build.project);
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "left behind in TMPDIR after the doctests: {left:?}");
    for record in std::fs::read_dir(build.project.home.join("builds")).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(record.path()).unwrap_or_default();
        assert!(!text.contains("rustdoctest"), "a doctest was registered: {text}");
    }

    // Every executable in the target dir has a map (tests included), found by `ipbp-ld map`
    // (which waits for a map still being written after the link). Build scripts, which run
    // once on the host, and the proc-macro, a shared library, have none.
    let maps = target.join("ipbp/maps");
    for (shared, out) in links.iter().filter(|(_, o)| o.starts_with(&target)) {
        let build_script = file_name(out).starts_with("build_script_");
        if *shared || build_script {
            assert!(!maps.join(file_name(out)).exists(), "{} was recorded: {all}", out.display());
        } else {
            let map = recorded_map_path(&build.project, out);
            assert_eq!(map.parent().map(|d| maps.join(file_name(out)) == d), Some(true), "{}", map.display());
            assert!(map.with_file_name("latest.json").exists(), "no latest.json beside {}", map.display());
        }
    }
    assert!(!maps.join(file_name(&build_script.1)).exists(), "the build script was recorded");

    // Quiet on success: not one line from the shim.
    for run in [&build.build, &build.test] {
        assert!(shim_warnings(&run.stderr).is_empty(), "ipbp-ld warned during a good build: {run}");
        assert!(!run.stderr.contains("ipbp-ld"), "ipbp-ld spoke during a good build: {run}");
    }
    // The plain configuration really did without the shim.
    let plain = plain_debug();
    plain.build.assert_success();
    assert!(!plain.target().join("ipbp").exists(), "the plain build wrote ipbp files");
    assert!(!plain.project.home.join("builds").exists(), "the plain build registered builds");
}

#[test]
fn shim_linked_binary_is_byte_identical_to_the_plain_linked_one() {
    let b = edited_build();
    b.plain.assert_success();
    b.shim.assert_success();
    // The second build really was relinked, by ipbp-ld: it recorded a map of this very binary.
    let map = recorded_map_path(&b.project, &b.v1_bin);
    assert!(map.starts_with(b.project.target("edit").join("ipbp/maps")), "map at {}", map.display());
    assert!(b.shim.stderr.contains("Compiling fullapp"), "nothing was rebuilt: {}", b.shim);
    let plain = read_bytes(&b.plain_bin);
    let shim = read_bytes(&b.v1_bin);
    assert_eq!(plain.len(), shim.len(), "the ipbp-ld-linked binary differs in size from the plain one");
    let first = plain.iter().zip(&shim).position(|(a, b)| a != b);
    assert!(first.is_none(), "the ipbp-ld-linked binary differs from the plain one at byte {first:?}");
}
