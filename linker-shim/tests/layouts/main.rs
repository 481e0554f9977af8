//! The edit matrix (EDIT-MATRIX.md at the repository root): `testdata/layouts` built through
//! ipbp-ld, started, and edited while it runs — each kind of layout change to a type whose values
//! live in each kind of place, and the changes no old value can meet.
//!
//! The app prints a `step` line per step whose numbers are consistent only while every value's
//! layout is the one its code expects (`point=x/y` with y = 2x, `config=r/2`, `items=1:w,2:w+10`,
//! `shape=line:n:5`, `tally=t:n`, `handled=p:Low` on even steps, `p:High` on odd ones); a patch
//! that let new code read old values would break them.

#[path = "../support/mod.rs"]
mod support;

mod edits;
mod renumber;
mod twice;

use edits::Edit;
use std::collections::HashMap;
use support::live::{scenario, status_for, status_lines, Running};
use support::Project;

const MAIN: &str = "src/main.rs";

/// A fresh copy of the layouts app, built and running, with its first step seen.
fn running_layouts() -> (Project, Running) {
    let project = scenario("layouts");
    project.build();
    let app = project.start("layouts", &[("LAYOUTS_PERIOD_MS", "40")]);
    app.wait_for(0, "a first step", |l| l.starts_with("step "));
    (project, app)
}

/// The `key=value` fields of a `step` line.
fn fields(line: &str) -> Option<HashMap<String, String>> {
    let rest = line.strip_prefix("step ")?;
    Some(rest.split(' ').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect())
}

fn number(s: &str) -> u64 {
    s.parse().unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// Whether a step line's numbers agree with each other (see the module's doc).
fn consistent(line: &str) -> bool {
    let Some(f) = fields(line) else { return false };
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    let n = number(get("n"));
    let point: Vec<u64> = get("point").split('/').map(number).collect();
    let items: Vec<u64> =
        get("items").split(',').map(|i| number(i.split(':').nth(1).unwrap_or(""))).collect();
    point == [n, 2 * n]
        && get("config").ends_with("/2")
        && items.len() == 2
        && items[1] == items[0] + 10
        && get("shape") == format!("line:{n}:5")
        && get("tally") == format!("t:{n}")
        && get("pos") == n.to_string()
        && get("handled") == if n.is_multiple_of(2) { "p:Low" } else { "p:High" }
}

/// Waits for a step after `mark` with message `msg` and checks every step since `mark` is
/// consistent; returns the step.
#[track_caller]
fn healthy_step(app: &Running, mark: usize, msg: &str) -> String {
    let line = app.wait_for(mark, &format!("a step with msg={msg}"), |l| {
        fields(l).is_some_and(|f| f.get("msg").is_some_and(|m| m == msg))
    });
    for l in app.lines_since(mark).iter().filter(|l| l.starts_with("step ")) {
        assert!(consistent(l), "a step is inconsistent: {l}\n{}", app.dump());
    }
    line
}

/// `ipbp-ld diff --code` from the build `app` runs to the one just built.
fn code_diff(project: &Project, app: &Running) -> String {
    let map_of = |binary: &std::path::Path| -> String {
        let run = project.ipbp_ld(&[std::ffi::OsStr::new("map"), binary.as_os_str()]);
        assert!(run.success(), "{run}");
        run.stdout.trim().to_string()
    };
    let base = map_of(&std::path::PathBuf::from(format!("/proc/{}/exe", app.pid)));
    let new = map_of(&project.program("layouts"));
    let run = project.ipbp_ld(&["diff", "--code", base.as_str(), new.as_str()]);
    assert_eq!(run.code, Some(0), "{run}");
    run.stdout
}

fn apply(project: &Project, original: &str, edit: Edit) {
    project.write(MAIN, original);
    for (from, to) in edit {
        project.edit(MAIN, from, to);
    }
}

/// Every layout change to a type with live old values is refused, naming the type, what changed
/// and where old values live; the process keeps running its code, unharmed, and the next good edit
/// is patched.
#[test]
fn layout_changes_with_live_old_values_are_refused() {
    let (project, mut app) = running_layouts();
    let original = project.read(MAIN);
    // (edit, what the reason must name)
    let cells: [(&str, Edit, &[&str]); 15] = [
        (
            "field added, static",
            edits::CONFIG_FIELD_ADDED,
            &[
                "struct `layouts::Config`",
                "field `extra: u64` added",
                "8 -> 16 bytes",
                "static `layouts::CONFIG`",
            ],
        ),
        (
            "field retyped at the same size, static",
            edits::CONFIG_FIELD_RETYPED,
            &["struct `layouts::Config`", "field `scale` retyped u32 -> f32", "static `layouts::CONFIG`"],
        ),
        (
            "field added, thread-local",
            edits::SESSION_FIELD_ADDED,
            &["struct `layouts::Session`", "field `streak: u64` added", "thread-local `layouts::SESSION`"],
        ),
        (
            "field added, main's locals",
            edits::POINT_FIELD_ADDED,
            &["struct `layouts::Point`", "field `z: u64` added", "8 -> 16 bytes", "`layouts::main`'s locals"],
        ),
        (
            "fields reordered, main's locals",
            edits::POINT_FIELDS_SWAPPED,
            &["struct `layouts::Point`", "field `x` moved (offset 0 -> 4)", "`layouts::main`'s locals"],
        ),
        (
            "field retyped, heap data built at startup",
            edits::ITEM_FIELD_RETYPED,
            &["struct `layouts::Item`", "field `weight` retyped u32 -> f32", "`layouts::main`'s locals"],
        ),
        (
            "enum variant added, main's locals",
            edits::SHAPE_VARIANT_ADDED,
            &[
                "enum `layouts::Shape`",
                "variant `Rect(u64, u64, u64)` added",
                "12 -> 32 bytes",
                "`layouts::main`'s locals",
            ],
        ),
        (
            "closure captures changed, closure made at startup",
            edits::CLOSURE_CAPTURES_CHANGED,
            &["closure `layouts::main::{closure#2}`", "field `tag: u64` added", "`layouts::main`'s locals"],
        ),
        (
            "async fn locals across .await changed, future held by main",
            edits::ASYNC_LOCALS_CHANGED,
            &["async fn `layouts::task`", "field `spare: u64` added", "`layouts::main`'s locals"],
        ),
        (
            "field added, type-erased storage (bytes, a Layout and a drop fn) filled at startup",
            edits::POS_FIELD_ADDED,
            &[
                "struct `layouts::Pos`",
                "field `y: f64` added",
                "(values of `layouts::Pos` may live in storage of `store`, which keeps them as bytes by their `Layout`",
            ],
        ),
        (
            "enum variant added, handed to a method through a vtable made at startup and kept",
            edits::SIGNAL_VARIANT_ADDED,
            &[
                "`<layouts::Printer as layouts::Handler>::handle` receives `&layouts::Signal`",
                "enum `layouts::Signal` changed layout",
                "the address of `<layouts::Printer as layouts::Handler>::handle`",
                "is taken by a vtable or table used by `layouts::main`",
            ],
        ),
        (
            "trait methods swapped, vtables made at startup kept behind `dyn` in a static",
            edits::HANDLER_METHODS_SWAPPED,
            &[
                "the methods of trait `layouts::Handler` moved between vtable slots (name, handle -> handle, name)",
                "static `layouts::HANDLERS`",
            ],
        ),
        (
            "a supertrait's methods swapped, seen only in the vtable of a trait with two supertraits",
            edits::BASE_METHODS_SWAPPED,
            &[
                "the methods of trait `layouts::Base` moved between vtable slots (low, high, more, _ -> high, low, more, _)",
                "static `layouts::LAYERED`",
            ],
        ),
        (
            "an impl overrides a default method, vtables made at startup kept behind `dyn` in a static",
            edits::PRINTER_OVERRIDES_NAME,
            &[
                "the vtable of `layouts::Printer` for `layouts::Handler` calls `<layouts::Printer as layouts::Handler>::name` for `name` now, `layouts::Handler::name` before",
                "static `layouts::HANDLERS`",
            ],
        ),
        (
            "a key type's `Hash` changed, a hash table filled at startup kept in a static",
            edits::TAG_HASH_CHANGED,
            &["`<layouts::Tag as core::hash::Hash>::hash` changed", "lookups by the new one would miss"],
        ),
    ];
    for (cell, edit, names) in cells {
        apply(&project, &original, edit);
        let run = project.build();
        let line = status_for(&run, app.pid);
        assert!(line.starts_with("Skipped layouts"), "{cell}: expected a refusal: {run}");
        for name in names {
            assert!(line.contains(name), "{cell}: the reason does not name {name:?}: {line}");
        }
        assert!(line.contains("restart to use it"), "{cell}: {line}");
        assert!(
            status_lines(&run).iter().all(|l| !l.contains("initial value")),
            "{cell}: a static whose type changed is reported as a changed initial value: {run}"
        );
        if edit == edits::POINT_FIELDS_SWAPPED {
            // `ipbp-ld diff --code` between the running build and this one says the same.
            let out = code_diff(&project, &app);
            for needle in
                ["~ function layouts::step", "! struct `layouts::Point` changed layout", "refused: "]
            {
                assert!(out.contains(needle), "`diff --code` does not show {needle:?}:\n{out}");
            }
        }
        let mark = app.mark();
        healthy_step(&app, mark, "hello");
    }
    assert!(app.alive(), "the app died: {}", app.dump());

    // A good edit afterwards is patched, and the state carries on.
    apply(&project, &original, &[("let msg = \"hello\";", "let msg = \"recovered\";")]);
    let mark = app.mark();
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Patched layouts") && line.contains("1 changed"), "{run}");
    healthy_step(&app, mark, "recovered");
}

/// Layout changes no old value can meet are applied: a struct made and dropped inside the changed
/// function alone (a field added; its fields swapped while its derived `Clone` and `Default`
/// compile the same), a new struct; a field added to one of two types whose helper types share a
/// path in anonymous blocks (serde's derive); fields swapped without a layout change, although the hot
/// function's symbol hash changes with them (paired by path, never `Unchanged`); an impl that
/// starts overriding a default method of a trait whose values live behind `dyn` for a step only;
/// and an edit that only moves lines changes nothing.
#[test]
fn layout_changes_no_old_value_can_meet_are_applied() {
    let (project, app) = running_layouts();
    let original = project.read(MAIN);
    let scratch = |line: &str| -> (u64, u64) {
        let f = fields(line).expect("a step");
        (number(&f["n"]), number(&f["scratch"]))
    };

    apply(&project, &original, edits::SCRATCH_FIELD_ADDED);
    let mark = app.mark();
    let run = project.build();
    assert!(status_for(&run, app.pid).starts_with("Patched layouts"), "{run}");
    let step = app
        .wait_for(mark, "the new Scratch", |l| fields(l).is_some_and(|_| scratch(l).1 == scratch(l).0 + 107));
    assert!(consistent(&step), "{step}");

    apply(&project, &original, edits::SCRATCH_FIELDS_SWAPPED);
    let mark = app.mark();
    let run = project.build();
    assert!(status_for(&run, app.pid).starts_with("Patched layouts"), "{run}");
    let step = healthy_step(&app, mark, "scratched");
    assert_eq!(scratch(&step).1, scratch(&step).0 + 7, "{step}");

    apply(&project, &original, edits::NEW_STRUCT);
    let mark = app.mark();
    let run = project.build();
    assert!(status_for(&run, app.pid).starts_with("Patched layouts"), "{run}");
    let step = app
        .wait_for(mark, "the new struct", |l| fields(l).is_some_and(|_| scratch(l).1 == scratch(l).0 + 3007));
    assert!(consistent(&step), "{step}");

    // Two types of one module share the path `…::_::{impl#0}::parse::__Field` (serde's derive
    // shape); an edit of one is no change of the other, whose unchanged code holds one.
    apply(&project, &original, edits::QUERY_FIELD_ADDED);
    let mark = app.mark();
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Patched layouts"), "{run}");
    assert!(!line.contains("__Field"), "{line}");
    let step = app.wait_for(mark, "the new Query", |l| l.contains(" form=107/3"));
    assert!(consistent(&step), "{step}");

    apply(&project, &original, edits::TALLY_FIELDS_SWAPPED);
    let mark = app.mark();
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Patched layouts") && line.contains("1 changed"), "{run}");
    healthy_step(&app, mark, "tallied");

    new_enum_variant_meets_only_new_code(&project, &app, &original, false);

    // A lazy thread-local's initializer: patched, and the note says the running thread keeps its
    // value (as for a static's initial value).
    apply(&project, &original, edits::VISITS_INIT_CHANGED);
    let mark = app.mark();
    let run = project.build();
    assert!(status_for(&run, app.pid).starts_with("Patched layouts"), "{run}");
    assert!(
        status_lines(&run).iter().any(|l| l.starts_with("Note the initializer of thread-local `layouts::VISITS` changed; threads that used it keep their value")),
        "{run}"
    );
    healthy_step(&app, mark, "visited");

    // An impl overrides a default method of a trait whose values live only for a step behind
    // `dyn` (an error made by `check`, dropped by `step`): no old vtable can be met, so patched,
    // and the new boxes call the override (`e<n>/true` on odd steps).
    apply(&project, &original, edits::STEP_ERROR_OVERRIDES_SOURCE);
    let mark = app.mark();
    let run = project.build();
    assert!(status_for(&run, app.pid).starts_with("Patched layouts"), "{run}");
    let step = app.wait_for(mark, "an error whose source is the override", |l| {
        fields(l).is_some_and(|f| f.get("checked").is_some_and(|c| c.ends_with("/true")))
    });
    assert!(consistent(&step), "{step}");
    for l in app.lines_since(mark).iter().filter(|l| l.starts_with("step ")) {
        assert!(consistent(l), "a step is inconsistent: {l}\n{}", app.dump());
    }

    // Back to the original, then only lines moved: nothing to patch, nothing to note.
    project.write(MAIN, &original);
    project.build();
    apply(&project, &original, edits::LINES_SHIFTED);
    let run = project.build();
    let lines = status_lines(&run);
    let line = status_for(&run, app.pid);
    assert!(
        line.starts_with("Unchanged layouts") || line.contains("back to the code it started with"),
        "{run}"
    );
    assert!(lines.iter().all(|l| !l.starts_with("Note ")), "moving lines reported a change: {run}");
    let mark = app.mark();
    healthy_step(&app, mark, "hello");
}

/// Closures are numbered in source order: adding one before `main`'s closures, removing one, or
/// moving one renumbers the others, among them `label`, made at startup and called by `step`
/// every step. Neither is a change of their captures: the edits are patched (`step`'s new message
/// shows), and `label` goes on answering from the closure made at startup.
#[test]
fn added_removed_and_moved_closures_are_not_taken_for_each_other() {
    let (project, app) = running_layouts();
    let original = project.read(MAIN);
    for (edit, msg) in [
        (edits::CLOSURE_ADDED_BEFORE, "added"),
        (edits::CLOSURE_REMOVED_BEFORE, "removed"),
        (edits::CLOSURES_MOVED, "moved"),
    ] {
        apply(&project, &original, edit);
        let mark = app.mark();
        let run = project.build();
        let line = status_for(&run, app.pid);
        assert!(line.starts_with("Patched layouts"), "{msg}: {run}");
        assert!(!line.contains("captures"), "{msg}: {line}");
        let step = healthy_step(&app, mark, msg);
        assert!(step.contains(" label=lbl "), "{msg}: {step}");
    }
}

/// The same edit in a build with v0 symbol names (`-C symbol-mangling-version=v0`), which do not
/// change with `Mode`'s definition: the generic instances over `Mode` that new code calls keep
/// their names and code (`<&Mode as Debug>::fmt`, the `Map` iterator calling `mode_of`, sorting
/// and hashing), and in the image they lead to the old `mode_of` and `<Mode as Debug>::fmt`, which
/// are not redirected. The patch carries them (without, `recent=[Idle,Idle,Busy]` where the new
/// code's `mode_of` says `Sleep`). Before it, a trait's methods swapped behind `dyn` (vtables of a
/// type with drop glue, which v0 names `drop_in_place::<T>`) are refused as with legacy names.
#[test]
fn with_v0_symbol_names_a_new_enum_variant_meets_only_new_code_through_carried_code() {
    let project = scenario("layouts");
    project.write(".cargo/config.toml", "[build]\nrustflags = [\"-C\", \"symbol-mangling-version=v0\"]\n");
    project.build();
    let app = project.start("layouts", &[("LAYOUTS_PERIOD_MS", "40")]);
    app.wait_for(0, "a first step", |l| l.starts_with("step "));
    let original = project.read(MAIN);
    // v0 names drop glue `drop_in_place::<layouts::Printer>`: the vtables of `dyn Handler` (of a
    // type with drop glue) are read, and methods moving between their slots are refused.
    apply(&project, &original, edits::HANDLER_METHODS_SWAPPED);
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Skipped layouts"), "expected a refusal: {run}");
    let reason =
        "the methods of trait `layouts::Handler` moved between vtable slots (name, handle -> handle, name)";
    assert!(line.contains(reason), "{line}");
    new_enum_variant_meets_only_new_code(&project, &app, &original, true);
    flat_field_added_meets_only_new_code(&project, &app, &original);
}

/// `Flat` gains a field and its maker sets `b: 8` (review 5, finding 5); `step`, which collects
/// three into a `Vec`, sorts them and prints the first's `b`, compiles the same. Under v0 names
/// every instance over `Flat` keeps its name, so the diff finds `step`, `extend_trusted` (which
/// sizes the buffer) and the sort unchanged. The closure nested in `map_fold::<u32, Flat, …>` that
/// writes each element receives only its captures, so its signature shows no `Flat`: redirected,
/// it wrote 12-byte `Flat`s into the old 8-byte slots (`malloc(): unaligned tcache chunk
/// detected`, abort). Without `step` taken as changed (as legacy names make it, `plan/renamed.rs`),
/// the old `step` kept the old closure: `flat=7` after `Patched`.
fn flat_field_added_meets_only_new_code(project: &Project, app: &Running, original: &str) {
    apply(project, original, edits::FLAT_FIELD_ADDED);
    let mark = app.mark();
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Patched layouts"), "{run}");
    let step = healthy_step(app, mark, "hello");
    let n = number(&fields(&step).unwrap()["n"]);
    let later = app.mark();
    app.wait_for(later, "three more steps after the patch", |l| {
        fields(l).is_some_and(|f| f.get("n").is_some_and(|m| number(m) >= n + 3))
    });
    // Steps begun before the patch ran patch 1's code (`msg=slept`); each since runs the original.
    let hello = |l: &&String| fields(l).is_some_and(|f| f.get("msg").is_some_and(|m| m == "hello"));
    for l in app.lines_since(mark).iter().filter(hello) {
        assert_eq!(fields(l).unwrap()["flat"], "8", "the new code must make each Flat: {l}\n{}", app.dump());
        assert_eq!(
            modes_of(l),
            expected_modes(number(&fields(l).unwrap()["n"]), false),
            "{l}\n{}",
            app.dump()
        );
    }
}

/// What `step` prints about `Mode` for step `n`, by the original rule (`Idle` on even steps, `Busy`
/// on odd ones) or, with `sleep`, the edited one (`Sleep` every third step): `mode=… shown=<…>
/// described=[…] at=… recent=[…] counts=[…]`, as derived `Debug` writes them.
fn expected_modes(n: u64, sleep: bool) -> String {
    const NAMES: [&str; 3] = ["Idle", "Busy", "Sleep"];
    let mode = |k: u64| {
        if sleep && k.is_multiple_of(3) {
            2
        } else if k.is_multiple_of(2) {
            0
        } else {
            1
        }
    };
    let mut recent: Vec<usize> = (n.saturating_sub(2)..=n).map(mode).collect();
    recent.sort();
    let mut counts: Vec<(usize, u32)> = Vec::new();
    for &m in &recent {
        match counts.iter_mut().find(|(k, _)| *k == m) {
            Some((_, c)) => *c += 1,
            None => counts.push((m, 1)),
        }
    }
    let recent: Vec<&str> = recent.iter().map(|&m| NAMES[m]).collect();
    let counts: Vec<String> = counts.iter().map(|&(m, c)| format!("({},{c})", NAMES[m])).collect();
    let m = NAMES[mode(n)];
    format!(
        "mode={m} shown=<{m}> described=[{m}] at={m} recent=[{}] counts=[{}]",
        recent.join(","),
        counts.join(",")
    )
}

/// The `Mode` part of a step line.
fn modes_of(line: &str) -> &str {
    line.find(" mode=").map_or("", |at| &line[at + 1..])
}

/// `Mode` gains `Sleep`, which the edited `mode_of` makes every third step. `mode_of` and `<Mode as
/// Debug>::fmt` take or return the changed type, so their old entries stay for old callers; every
/// value the new code makes must still be printed by new code: where new code takes the address of
/// `<Mode as Debug>::fmt` (the case: `format_args!` inlines `Argument::new_debug`), where
/// it passes through the workspace's generic `shown::<Mode>`, `described(&Mode)` and std's
/// `<Vec<Mode> as Debug>::fmt`, sorting and `HashMap<Mode, u32>` (all renamed with `Mode`, whose
/// definition their symbol hashes cover, so new code calls new copies), and through the unchanged
/// `mode_at(u64)`, whose name and code stay: the patch carries it, and its copy calls the new
/// `mode_of` and `Debug::fmt`. Never `Sleep` printed as an old variant (the issue's `mode=Idle`),
/// never an old mode where the new code's is due. With `carried`, the status line must say that
/// unchanged code was carried.
fn new_enum_variant_meets_only_new_code(project: &Project, app: &Running, original: &str, carried: bool) {
    apply(project, original, edits::MODE_VARIANT_ADDED);
    let mark = app.mark();
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Patched layouts"), "{run}");
    let slept = |l: &str| fields(l).is_some_and(|f| f.get("msg").is_some_and(|m| m == "slept"));
    assert!(line.contains(" carried") || !carried, "unchanged code must be carried: {run}");
    let after = format!("a step of the new code making Sleep, after: {line}");
    app.wait_for(mark, &after, |l| slept(l) && l.contains(" mode=Sleep "));
    let mark_after = app.mark();
    app.wait_for(mark_after, "three more steps of the new code", |l| {
        slept(l) && fields(l).is_some_and(|f| f.get("mode").is_some_and(|m| m == "Sleep"))
    });
    let mut new_steps = 0;
    for l in app.lines_since(mark).iter().filter(|l| l.starts_with("step ")) {
        let n = number(&fields(l).unwrap()["n"]);
        let sleep = slept(l);
        new_steps += sleep as usize;
        assert_eq!(modes_of(l), expected_modes(n, sleep), "a value met the wrong code: {l}\n{}", app.dump());
    }
    assert!(new_steps >= 4, "{}", app.dump());
}
