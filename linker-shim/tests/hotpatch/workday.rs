//! A working day in one process: the counter patched 300 times in a row.
//!
//! 300 `cargo build`s take several minutes on a CI machine, so the rebuilds are real links of two
//! real builds instead: each edit is built once by cargo (through ipbp-ld, with a real linker that
//! records rustc's command line and keeps its objects), and the two links are then replayed in
//! turn through ipbp-ld against the running process — the shim's whole path (fingerprints, diff,
//! plan, emit, deliver, apply) on every link. Both edits add a function (`fresh`) that `tick`
//! calls, so every patch sends the previous patch's copies on with live jumps and settles the
//! copies of the one before, of a changed function (on the image's entry) and of an added one (on
//! its home).

use super::support::live::Running;
use super::support::{capture, shim, Cmd, Project};
use std::path::{Path, PathBuf};

const PATCHES: usize = 300;

/// One edit's link as rustc asked for it, with copies of its objects (rustc deletes them).
struct Captured {
    cwd: PathBuf,
    ld: Vec<String>,
}

/// Builds the project as it is now, capturing its link with copies of its objects. The build
/// registers in a registry of its own (`dir/home`), so it patches nothing.
fn capture(project: &Project, dir: &Path) -> Captured {
    let link = capture::counter_link(project, dir, &dir.join("home"));
    let mut ld = link.ld;
    for arg in ld.iter_mut().filter(|a| a.ends_with(".o")) {
        let copy = link.objects.join(Path::new(arg.as_str()).file_name().unwrap());
        assert!(copy.is_file(), "object {arg} was not captured");
        *arg = copy.display().to_string();
    }
    Captured { cwd: link.cwd, ld }
}

/// Replays a captured link through ipbp-ld with the project's registry: the running counter is
/// patched. Three `timeout`s deep, so ipbp-ld's status lines come to this test's pipe rather than
/// the stderr of the cargo running the tests (it writes to a cargo among its nearest ancestors).
fn relink(c: &Captured, home: &Path) -> String {
    let mut all: Vec<String> =
        ["-s", "KILL", "120", "timeout", "125", "timeout", "130"].map(String::from).to_vec();
    all.push(shim().display().to_string());
    all.extend(c.ld.iter().cloned());
    let mut cmd = Cmd::new("timeout", &all).env("IPBP_HOME", home).into_command();
    let out = cmd.current_dir(&c.cwd).output().expect("cannot run ipbp-ld");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the relink failed: {stderr}");
    stderr
}

/// `(open descriptors, mappings, RSS in KiB)` of a process.
fn resources(pid: u32) -> (usize, usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap().lines().count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    (fds, maps, rss)
}

/// The installs a patch sent (the whole live set and the settled jumps), from its manifest.
fn installs(project: &Project, pid: u32, generation: u64) -> (usize, u64) {
    let m = project.manifest(pid, generation);
    (m["installs"].as_array().map_or(0, Vec::len), m["span"].as_u64().unwrap_or(0))
}

/// The counter patched 300 times in a row, alternating two edits: every patch is live (each
/// thread prints the new text before the next link), the install set stays as small as the edit
/// (the same after the 300th patch as after the 10th), the program keeps the descriptors it had,
/// gains at most three mappings per patch (its three segments), and its resident memory grows by
/// no more than the patches' own pages and 4 KiB of bookkeeping per patch (plus 2 MiB of slack for
/// the allocator and the output the test collects). `ipbp-ld status` says what it holds.
#[test]
fn three_hundred_patches_in_one_process_stay_live_and_flat() {
    let (project, app) = super::running_counter();
    let scratch = project.root().join("workday");
    let fresh = |v: &str| format!("fn fresh() -> &'static str {{\n    \"{v}\"\n}}\n\n#[ipbp::hot]\nfn tick(");
    project.edit(super::MAIN, "let msg = \"hello\";", "let msg = fresh();");
    project.edit(super::MAIN, "#[ipbp::hot]\nfn tick(", &fresh("day-a"));
    let a = capture(&project, &scratch.join("a"));
    project.edit(super::MAIN, "\"day-a\"", "\"day-b\"");
    let b = capture(&project, &scratch.join("b"));

    let (fds_before, maps_before, rss_before) = resources(app.pid);
    let mut at_ten = None;
    let mut spans = 0u64;
    for i in 1..=PATCHES {
        let (link, msg) = if i % 2 == 1 { (&a, "day-a") } else { (&b, "day-b") };
        let mark = app.mark();
        let stderr = relink(link, &project.home);
        let line = status_for_text(&stderr, app.pid);
        assert!(line.starts_with("Patched counter "), "patch {i} was not applied: {stderr}");
        app.wait_for_ticks(mark, &super::THREADS, &format!("patch {i} live"), |t| t.get("msg") == msg);
        let (sent, span) = installs(&project, app.pid, i as u64);
        spans += span;
        if i == 10 {
            at_ten = Some((sent, resources(app.pid)));
        }
    }
    let (sent_ten, (fds_ten, maps_ten, _)) = at_ten.unwrap();
    let (sent_last, _) = installs(&project, app.pid, PATCHES as u64);
    assert_eq!(sent_last, sent_ten, "the install set grew from patch 10 to patch {PATCHES}");

    let (fds, maps, rss) = settled_resources(&app, fds_ten);
    let patches = PATCHES as u64;
    let bound = spans / 1024 + 4 * patches + 2048;
    eprintln!(
        "{PATCHES} patches: descriptors {fds_before} -> {fds_ten} (10) -> {fds}, mappings {maps_before} -> {maps_ten} (10) -> {maps}, RSS {rss_before} -> {rss} KiB (bound +{bound} KiB; the patches span {} KiB); {sent_last} installs per patch",
        spans / 1024
    );
    assert!(
        fds <= fds_ten && fds_ten <= fds_before + 1,
        "descriptors: {fds_before} before, {fds_ten} after 10 patches, {fds} after {PATCHES}"
    );
    // Three per patch (its segments), and a few more once for the runtime's own threads and
    // allocator arenas.
    assert!(
        maps <= maps_ten + 3 * (PATCHES - 10) + 8 && maps_ten <= maps_before + 3 * 10 + 16,
        "mappings: {maps_before} before, {maps_ten} after 10 patches, {maps} after {PATCHES}: more than three per patch"
    );
    assert!(
        rss <= rss_before + bound,
        "RSS grew from {rss_before} KiB to {rss} KiB, more than the patches' {} KiB and 4 KiB each",
        spans / 1024
    );

    let status = project.ipbp_ld(&["status", &app.pid.to_string()]);
    assert!(status.success(), "{status}");
    assert!(
        status.stdout.contains(&format!("patches: {PATCHES} applied, {PATCHES} loaded")),
        "`ipbp-ld status` does not count the patches: {status}"
    );
    assert!(status.stdout.contains("open descriptors"), "{status}");
}

/// A process's resources once a connection that just ended has closed its descriptor.
fn settled_resources(app: &Running, expected_fds: usize) -> (usize, usize, u64) {
    for _ in 0..50 {
        let r = resources(app.pid);
        if r.0 <= expected_fds {
            return r;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    resources(app.pid)
}

/// The status line for `pid` in ipbp-ld's output.
fn status_for_text(stderr: &str, pid: u32) -> String {
    let needle = format!("(pid {pid})");
    stderr
        .lines()
        .map(str::trim)
        .find(|l| l.contains(&needle) && !l.starts_with("Note"))
        .unwrap_or_default()
        .to_string()
}
