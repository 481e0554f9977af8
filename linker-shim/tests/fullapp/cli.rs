//! The inspection CLI on fullapp: `ipbp-ld symbols` (table, filters, JSON, address resolution),
//! `ipbp-ld diff` between two builds, `--help` and `--version`.

use super::support::{arg, load_map, Run};
use super::{edited_build, recorded_map_path, shim_debug, EDIT};
use ipbp_ld::map::schema::{Symbol, SymbolKind};
use std::path::{Path, PathBuf};

fn ipbp_ld(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Run {
    let args: Vec<_> = args.iter().map(arg).collect();
    shim_debug().project.ipbp_ld(&args)
}

/// The app binary and its map path.
fn app() -> (PathBuf, PathBuf) {
    let build = shim_debug();
    let binary = build.binary();
    let map = recorded_map_path(&build.project, &binary);
    (binary, map)
}

/// The table rows (without the header) of `ipbp-ld symbols` output.
fn rows(run: &Run) -> Vec<&str> {
    let mut lines = run.stdout.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("ADDRESS") && header.ends_with("NAME"), "no table header: {run}");
    lines.collect()
}

/// One table row: (address, size, kind, binding, demangled name).
fn parse_row(row: &str) -> (u64, u64, &str, &str, &str) {
    let mut rest = row;
    let mut fields = Vec::new();
    for _ in 0..4 {
        rest = rest.trim_start();
        let end = rest.find(' ').unwrap_or_else(|| panic!("bad row {row:?}"));
        fields.push(&rest[..end]);
        rest = &rest[end..];
    }
    let addr = u64::from_str_radix(fields[0].trim_start_matches("0x"), 16).unwrap();
    let size = fields[1].parse().unwrap_or_else(|_| panic!("bad size in {row:?}"));
    (addr, size, fields[2], fields[3], rest.trim_start())
}

#[test]
fn symbols_lists_the_app_from_the_binary_and_from_the_map() {
    let (binary, map_path) = app();
    let map = load_map(&map_path);
    let checksum = map.symbols.iter().find(|s| s.demangled == "fullapp::checksum").expect("checksum");
    for file in [&binary, &map_path] {
        let run = ipbp_ld(&[&"symbols", file]);
        run.assert_success();
        let rows = rows(&run);
        assert_eq!(rows.len(), map.symbols.len(), "one row per symbol: {run}");
        let row = rows
            .iter()
            .map(|r| parse_row(r))
            .find(|r| r.4 == "fullapp::checksum")
            .unwrap_or_else(|| panic!("fullapp::checksum is not in the table of {}", file.display()));
        assert_eq!(row, (checksum.addr, checksum.size, "function", "global", "fullapp::checksum"));
        // Sorted by address.
        let addrs: Vec<u64> = rows.iter().map(|r| parse_row(r).0).collect();
        assert!(addrs.windows(2).all(|w| w[0] <= w[1]), "the table is not sorted by address");
    }
}

#[test]
fn symbols_filters_by_grep_and_kind() {
    let (binary, map_path) = app();
    let map = load_map(&map_path);

    let run = ipbp_ld(&[&"symbols", &binary, &"--grep", &"fullapp::"]);
    run.assert_success();
    let expected =
        map.symbols.iter().filter(|s| s.demangled.contains("fullapp::") || s.name.contains("fullapp::"));
    let names: Vec<&str> = rows(&run).iter().map(|r| parse_row(r).4).collect();
    assert_eq!(names.len(), expected.count(), "--grep fullapp:: selected the wrong rows: {run}");
    assert!(names.iter().all(|n| n.contains("fullapp::")), "{run}");
    assert!(names.contains(&"fullapp::checksum") && names.contains(&"fullapp::main"), "{run}");
    // Mangled names match too.
    let mangled = &map.symbols.iter().find(|s| s.demangled == "fullapp::checksum").unwrap().name;
    let run = ipbp_ld(&[&"symbols", &map_path, &"--grep", mangled]);
    run.assert_success();
    assert_eq!(rows(&run).len(), 1, "--grep on a mangled name: {run}");

    let run = ipbp_ld(&[&"symbols", &binary, &"--grep", &"no_such_symbol_in_fullapp"]);
    run.assert_code(1);
    assert!(rows(&run).is_empty(), "{run}");

    let run = ipbp_ld(&[&"symbols", &binary, &"--kind", &"tls"]);
    run.assert_success();
    let tls: Vec<_> = rows(&run).iter().map(|r| parse_row(r)).collect();
    assert!(tls.iter().all(|r| r.2 == "tls"), "--kind tls listed other kinds: {run}");
    assert_eq!(tls.len(), map.symbols.iter().filter(|s| s.kind == SymbolKind::Tls).count(), "{run}");
    for name in ["fullapp::TLS_COUNTER::", "fullapp::TLS_NAME::"] {
        assert!(tls.iter().any(|r| r.4.starts_with(name)), "--kind tls does not list {name}: {run}");
    }

    let run = ipbp_ld(&[&"symbols", &binary, &"--kind", &"object", &"--grep", &"EVENTS"]);
    run.assert_success();
    assert!(rows(&run).iter().any(|r| parse_row(r).4 == "fullapp::EVENTS"), "{run}");
    let run = ipbp_ld(&[&"symbols", &binary, &"--kind", &"function", &"--grep", &"fullapp::EVENTS"]);
    run.assert_code(1);
}

#[test]
fn symbols_json_parses_back_to_the_map_symbols() {
    let (binary, map_path) = app();
    let map = load_map(&map_path);
    let mut expected: Vec<&Symbol> = map.symbols.iter().collect();
    expected.sort_by(|a, b| (a.addr, &a.name).cmp(&(b.addr, &b.name)));
    for file in [&binary, &map_path] {
        let run = ipbp_ld(&[&"symbols", file, &"--json"]);
        run.assert_success();
        let parsed: Vec<Symbol> = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("--json output does not parse: {e}: {run}"));
        assert_eq!(parsed.len(), expected.len());
        // Same symbols; among equal (addr, name) the order is free.
        let mut a: Vec<String> = parsed.iter().map(|s| format!("{s:?}")).collect();
        let mut b: Vec<String> = expected.iter().map(|s| format!("{s:?}")).collect();
        a.sort();
        b.sort();
        assert!(a == b, "--json of {} differs from the map's symbols", file.display());
        assert!(parsed.windows(2).all(|w| (w[0].addr, &w[0].name) <= (w[1].addr, &w[1].name)), "not sorted");
    }
    let run = ipbp_ld(&[&"symbols", &binary, &"--json", &"--kind", &"tls"]);
    let parsed: Vec<Symbol> = serde_json::from_str(&run.stdout).expect("--json --kind tls parses");
    assert!(!parsed.is_empty() && parsed.iter().all(|s| s.kind == SymbolKind::Tls), "{run}");
}

/// The line range of `fullapp::checksum` in the project's src/lib.rs.
fn checksum_lines(dir: &Path) -> (u32, u32) {
    let text = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
    let line_of = |needle: &str| {
        text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle:?} not in lib.rs"))
            as u32
            + 1
    };
    (line_of("pub fn checksum("), line_of("} // end of checksum"))
}

#[test]
fn symbols_addr_resolves_inside_a_known_function_to_its_source_line() {
    let (binary, map_path) = app();
    let map = load_map(&map_path);
    let checksum = map.symbols.iter().find(|s| s.demangled == "fullapp::checksum").expect("checksum");
    let addr = format!("{:#x}", checksum.addr + 3);
    let (first, last) = checksum_lines(&shim_debug().project.dir);
    let lib_rs = shim_debug().project.dir.join("src/lib.rs").display().to_string();

    for file in [&binary, &map_path] {
        let run = ipbp_ld(&[&"symbols", file, &"--addr", &addr]);
        run.assert_success();
        let out = run.stdout.trim_end();
        assert!(out.starts_with(&format!("{addr} fullapp::checksum+0x3 at ")), "--addr output: {run}");
        let location = out.rsplit(" at ").next().unwrap();
        let mut parts = location.rsplitn(3, ':');
        let (_column, line, path) = (parts.next(), parts.next(), parts.next());
        assert_eq!(path, Some(lib_rs.as_str()), "--addr names the wrong file: {run}");
        let line: u32 = line.and_then(|l| l.parse().ok()).unwrap_or_else(|| panic!("no line: {run}"));
        assert!((first..=last).contains(&line), "line {line} is outside checksum ({first}..={last}): {run}");
    }

    let run = ipbp_ld(&[&"symbols", &binary, &"--addr", &addr, &"--json"]);
    run.assert_success();
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("--addr --json parses");
    assert_eq!(v["demangled"], "fullapp::checksum", "{run}");
    assert_eq!(v["symbol"], checksum.name.as_str(), "{run}");
    assert_eq!(v["offset"], 3, "{run}");
    assert_eq!(v["inside"], true, "{run}");
    assert_eq!(v["file"], lib_rs.as_str(), "{run}");
    // Past the end of the last symbol: still the nearest one below, flagged.
    let end = map.symbols.iter().filter(|s| s.section.is_some()).map(|s| s.addr + s.size).max().unwrap();
    let run = ipbp_ld(&[&"symbols", &binary, &"--addr", &format!("{:#x}", end + 0x100000)]);
    run.assert_success();
    assert!(run.stdout.contains("(past its end)"), "{run}");
    // Below every symbol: nothing found.
    let run = ipbp_ld(&[&"symbols", &binary, &"--addr", &"0x0"]);
    run.assert_code(1);
}

#[test]
fn diff_shows_the_edited_function_resized() {
    let b = edited_build();
    b.shim.assert_success();
    b.edited.assert_success();
    let v1_map = recorded_map_path(&b.project, &b.v1_bin);
    let v2_map = recorded_map_path(&b.project, &b.v2_bin);
    assert_ne!(v1_map, v2_map, "the edited build has the same map");
    assert!(b.project.read("src/lib.rs").contains(EDIT));
    let diff = |x: &Path, y: &Path, json: bool| {
        let mut args = vec![arg("diff"), arg(x), arg(y)];
        if json {
            args.push(arg("--json"));
        }
        b.project.ipbp_ld(&args)
    };

    let text = diff(&b.v1_bin, &b.v2_bin, false);
    text.assert_success();
    let resized_line = text
        .stdout
        .lines()
        .find(|l| l.starts_with("~ ") && l.ends_with(" fullapp::checksum"))
        .unwrap_or_else(|| panic!("fullapp::checksum is not shown resized: {text}"));
    assert!(resized_line.contains("function"), "{resized_line}");

    let json = diff(&b.v1_bin, &b.v2_bin, true);
    json.assert_success();
    let v: serde_json::Value = serde_json::from_str(&json.stdout)
        .unwrap_or_else(|e| panic!("diff --json does not parse: {e}: {json}"));
    let resized = v["resized"].as_array().expect("a resized list");
    let change = resized
        .iter()
        .find(|c| c["demangled"] == "fullapp::checksum")
        .unwrap_or_else(|| panic!("checksum not resized in --json: {json}"));
    let (old_size, new_size) = (change["old_size"].as_u64().unwrap(), change["new_size"].as_u64().unwrap());
    assert!(new_size > old_size, "code was added to checksum, yet {old_size} -> {new_size}");
    let v1 = load_map(&v1_map);
    let old = v1.symbols.iter().find(|s| s.demangled == "fullapp::checksum").unwrap();
    assert_eq!((change["old_addr"].as_u64(), old_size), (Some(old.addr), old.size), "old checksum");
    // The summary line counts what --json lists.
    let count = |k: &str| v[k].as_array().map_or(0, Vec::len);
    let summary = format!(
        "{} added, {} removed, {} resized, {} moved",
        count("added"),
        count("removed"),
        count("resized"),
        count("moved")
    );
    assert!(text.stdout.lines().any(|l| l == summary), "summary {summary:?} not in: {text}");

    // Maps give the same answer as binaries.
    let from_maps = diff(&v1_map, &v2_map, true);
    from_maps.assert_success();
    let w: serde_json::Value = serde_json::from_str(&from_maps.stdout).unwrap();
    assert_eq!(v, w, "diff of the maps differs from diff of the binaries");
}

#[test]
fn diff_of_identical_builds_finds_nothing() {
    let (binary, map_path) = app();
    for (a, b) in [(&binary, &binary), (&binary, &map_path), (&map_path, &binary)] {
        let run = ipbp_ld(&[&"diff", a, b]);
        run.assert_code(1);
        assert!(run.stdout.contains("0 added, 0 removed, 0 resized, 0 moved"), "{run}");
        let run = ipbp_ld(&[&"diff", a, b, &"--json"]);
        run.assert_code(1);
        let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("--json parses");
        for k in ["added", "removed", "resized", "moved"] {
            assert_eq!(v[k], serde_json::json!([]), "{k}: {run}");
        }
    }
}

#[test]
fn help_and_version() {
    for flag in ["--help", "-h", "help"] {
        let run = ipbp_ld(&[&flag]);
        run.assert_success();
        for word in ["symbols", "map", "diff", "Usage"] {
            assert!(run.stdout.contains(word), "{flag} does not mention {word}: {run}");
        }
    }
    for flag in ["--version", "-V"] {
        let run = ipbp_ld(&[&flag]);
        run.assert_success();
        assert_eq!(run.stdout.trim_end(), format!("ipbp-ld {}", env!("CARGO_PKG_VERSION")), "{run}");
    }
    let run = ipbp_ld(&[&"symbols", &"--help"]);
    run.assert_success();
    assert!(run.stdout.contains("--addr") && run.stdout.contains("--grep"), "{run}");
}
