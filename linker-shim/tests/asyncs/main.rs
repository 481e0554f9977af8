//! In-place patching of async code: `testdata/asyncapp`, a tokio program without hot points,
//! patched while its futures are in flight. A future's state machine is a value laid out by the
//! old build: new code may resume it only when the layout did not change.

#[path = "../support/mod.rs"]
mod support;

use support::live::{scenario, status_for, Running};
use support::Project;

const MAIN: &str = "src/main.rs";

fn number(line: &str, key: &str) -> u64 {
    line.split(' ')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no number `{key}` in {line}"))
}

fn running() -> (Project, Running) {
    let project = scenario("asyncapp");
    project.build();
    let app = project.start("asyncapp", &[]);
    app.wait_for(0, "a first request", |l| l.starts_with("request "));
    app.wait_for(0, "a first tick", |l| l.starts_with("ticker "));
    (project, app)
}

/// Body edits that keep every state machine's layout: the future that has been in flight since
/// startup resumes in its new code with its counter intact, new futures run new code, and a
/// `#[ipbp::hot]` async fn switches through its slot.
#[test]
fn same_layout_edits_of_async_fns_are_live_in_futures_in_flight() {
    let (project, app) = running();
    let before = app.wait_for(0, "a tick", |l| l.starts_with("ticker "));
    let mark = app.mark();
    project.edit(MAIN, r#"let msg = "steady";"#, r#"let msg = "edited";"#);
    project.edit(MAIN, r#"format!("answer{}", n % 3)"#, r#"format!("response{}", n % 3)"#);
    project.edit(MAIN, r#"format!("hot{}", n % 3)"#, r#"format!("warm{}", n % 3)"#);
    project.build_and_expect_patched(&app, "asyncapp");
    let tick = app.wait_for(mark, "the running future's new code", |l| {
        l.starts_with("ticker ") && l.ends_with("msg=edited")
    });
    assert!(number(&tick, "n") > number(&before, "n"), "the in-flight future restarted: {tick}");
    app.wait_for(mark, "new futures' new code", |l| {
        l.starts_with("request ") && l.contains("reply=response") && l.contains("hot=warm")
    });
}

/// An edit that changes what an `async fn` keeps across an `.await` changes its state machine's
/// layout: the future in flight since startup would be resumed by code reading another layout. The
/// patch is refused, naming the state machine, and the program runs on untouched.
#[test]
fn an_async_fn_whose_state_machine_changed_is_refused_by_name() {
    let (project, app) = running();
    project.edit(
        MAIN,
        "        tokio::time::sleep(Duration::from_millis(40)).await;\n    }\n}",
        "        let kept = n * 2;\n        tokio::time::sleep(Duration::from_millis(40)).await;\n        assert!(kept == n * 2);\n    }\n}",
    );
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Skipped asyncapp"), "{run}");
    assert!(line.contains("asyncapp::ticker"), "the refusal does not name the async fn: {run}");
    let mark = app.mark();
    let tick = app
        .wait_for(mark, "ticks after the refusal", |l| l.starts_with("ticker ") && l.ends_with("msg=steady"));
    app.wait_for(mark, "the next tick", |l| {
        l.starts_with("ticker ") && number(l, "n") == number(&tick, "n") + 1
    });
}

/// `job <kind> id=<id> …` lines of the gated jobs: (kind, id, the rest).
fn job_line(line: &str) -> Option<(&str, u64, &str)> {
    let rest = line.strip_prefix("job ")?;
    let (kind, rest) = rest.split_once(' ')?;
    let (id, rest) = rest.strip_prefix("id=")?.split_once(' ')?;
    Some((kind, id.parse().ok()?, rest))
}

/// The body of `hot_job` or `plain_job` as written, and with a local kept across its `.await`.
fn job_bodies(kind: &str) -> (String, String) {
    let wait =
        "    while !gate_open() {\n        tokio::time::sleep(Duration::from_millis(10)).await;\n    }\n";
    let old = format!(
        "    println!(\"job {kind} id={{id}} parked v=old on={{}}\", thread_tag());\n{wait}    \"v=old\".to_string()"
    );
    let new = format!(
        "    let kept = id * 7;\n    println!(\"job {kind} id={{id}} parked v=new on={{}}\", thread_tag());\n{wait}    format!(\"v=new kept={{kept}}\")"
    );
    (old, new)
}

/// The edit README promises a `#[ipbp::hot] async fn` takes: a local kept across an `.await`,
/// which changes the body's state machine. Futures in flight (parked on tokio's worker threads)
/// finish in the old code they were made for; new calls get new futures through the slot. The
/// same edit of a plain `async fn`, whose futures in flight would be resumed by new code, is
/// refused.
#[test]
fn a_hot_async_fn_whose_state_machine_changed_switches_new_calls_and_lets_old_futures_finish() {
    let project = scenario("asyncapp");
    project.build();
    let gate = project.root().join("gate");
    let app = project.start("asyncapp", &[("ASYNCAPP_GATE", &gate.display().to_string())]);
    let parked = |kind: &str, id: u64, v: &str| {
        let prefix = format!("parked v={v} ");
        app.wait_for(0, &format!("{kind} job {id} parked in v={v}"), |l| {
            job_line(l).is_some_and(|(k, i, rest)| k == kind && i == id && rest.starts_with(&prefix))
        })
    };
    let thread = |line: &str| line.rsplit_once(" on=").map(|(_, t)| t.to_string()).unwrap_or_default();
    let mut threads = std::collections::HashSet::new();
    for kind in ["hot", "plain"] {
        for id in 0..8 {
            threads.insert(thread(&parked(kind, id, "old")));
        }
    }

    // A plain async fn: its sixteen futures in flight would meet the new layout.
    let (old, new) = job_bodies("plain");
    project.edit(MAIN, &old, &new);
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Skipped asyncapp"), "{run}");
    assert!(line.contains("async fn `asyncapp::plain_job`"), "the refusal does not name plain_job: {run}");
    project.edit(MAIN, &new, &old);

    // The same edit of the hot one.
    let (old, new) = job_bodies("hot");
    project.edit(MAIN, &old, &new);
    project.build_and_expect_patched(&app, "asyncapp");
    // A new call, made by the program's loop after the patch, runs new code while the old
    // futures are still parked.
    let fresh = app.wait_for(0, "a hot job started in new code", |l| {
        job_line(l).is_some_and(|(k, _, rest)| k == "hot" && rest.starts_with("parked v=new"))
    });
    let fresh = job_line(&fresh).expect("a job line").1;
    std::fs::write(&gate, "").expect("cannot open the gate");

    // Every future parked before the patch finishes in old code; the new one in new code.
    let done = |kind: &str, id: u64| {
        app.wait_for(0, &format!("{kind} job {id} done"), |l| {
            job_line(l).is_some_and(|(k, i, rest)| k == kind && i == id && rest.starts_with("done "))
        })
    };
    for kind in ["hot", "plain"] {
        for id in 0..8 {
            let line = done(kind, id);
            assert!(line.contains(" done v=old "), "a future in flight did not finish in old code: {line}");
            threads.insert(thread(&line));
        }
    }
    let line = done("hot", fresh);
    assert!(line.contains(&format!(" done v=new kept={} ", fresh * 7)), "{line}");
    // And each job finished in the version it started in, whichever thread resumed it.
    let mark = app.mark();
    app.wait_for(mark, "a hot job made after the gate opened", |l| {
        job_line(l).is_some_and(|(k, _, rest)| k == "hot" && rest.starts_with("done v=new kept="))
    });
    let lines = app.lines_since(0);
    let mut started = std::collections::HashMap::new();
    for l in &lines {
        let Some((kind, id, rest)) = job_line(l) else { continue };
        if let Some(v) = rest.strip_prefix("parked ") {
            started.insert((kind, id), v.split(' ').next().unwrap_or_default());
        } else if let Some(v) = rest.strip_prefix("done ") {
            let began = started.get(&(kind, id)).unwrap_or_else(|| panic!("{l} never parked"));
            assert_eq!(*began, v.split(' ').next().unwrap_or_default(), "{kind} job {id} changed version");
        }
    }
    assert!(threads.len() > 1, "the old futures ran on one worker thread only: {}", app.dump());
}

/// An async block added before another in the same function renumbers it (`{async_block#0}`
/// becomes `#1`), and its code names its own drop glue, whose symbol follows the number. The
/// blocks are paired by what their code does: the existing block's futures in flight, parked on
/// the gate since before the patch, finish in their own code, and new calls run both blocks —
/// unless the added block takes the other's symbols (below).
#[test]
fn an_async_block_added_before_another_leaves_the_others_futures_in_flight_running() {
    let project = scenario("asyncapp");
    project.build();
    let gate = project.root().join("gate");
    let mut app = project.start("asyncapp", &[("ASYNCAPP_GATE", &gate.display().to_string())]);
    for kind in ["hot", "plain"] {
        for id in 0..8 {
            app.wait_for(0, &format!("{kind} job {id} parked"), |l| {
                job_line(l)
                    .is_some_and(|(k, i, rest)| k == kind && i == id && rest.starts_with("parked v=old "))
            });
        }
    }
    let existing = "fn spawn_job(hot: bool, id: u64) {\n    tokio::spawn(async move {\n";
    let added = |captures: &str| {
        format!("{existing}        {captures}println!(\"job extra id={{id}} spawned first\");\n    }});\n    tokio::spawn(async move {{\n")
    };
    // Capturing what the other captures (`hot` and `id`), the added block gets the other's old
    // symbol and so do tokio's instances over it, with another state layout: the old futures
    // would be run by the new block's instances. Refused, as a layout change of live values.
    project.edit(MAIN, existing, &added("let _hot = hot; "));
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Skipped asyncapp") && line.contains("asyncapp::spawn_job"), "{run}");
    project.edit(MAIN, &added("let _hot = hot; "), existing);
    // Capturing only `id`: its own symbols.
    project.edit(MAIN, existing, &added(""));
    project.build_and_expect_patched(&app, "asyncapp");
    let mark = app.mark();
    let extra = app.wait_for(mark, "the added block's line", |l| l.starts_with("job extra id="));
    std::fs::write(&gate, "").expect("cannot open the gate");
    for kind in ["hot", "plain"] {
        for id in 0..8 {
            let done = app.wait_for(0, &format!("{kind} job {id} done"), |l| {
                job_line(l).is_some_and(|(k, i, rest)| k == kind && i == id && rest.starts_with("done "))
            });
            assert!(done.contains(" done v=old "), "a future in flight lost its code: {done}");
        }
    }
    // The job spawned beside the added block's line runs the existing block's new code.
    let id = number(&extra, "id");
    app.wait_for(mark, "the job spawned with the added block", |l| {
        job_line(l).is_some_and(|(k, i, rest)| k == "hot" && i == id && rest.starts_with("done "))
    });

    // Jobs the patched code spawns park again; the block is taken out (back to the source the
    // program started from): the parked futures, made by the patch's code, finish in it, and new
    // jobs come without the added block's line.
    std::fs::remove_file(&gate).expect("cannot close the gate");
    let mark = app.mark();
    let parked = app.wait_for(mark, "a job spawned by the patch, parked", |l| {
        job_line(l).is_some_and(|(k, _, rest)| k == "hot" && rest.starts_with("parked "))
    });
    let parked = job_line(&parked).expect("a job line").1;
    project.edit(MAIN, &added(""), existing);
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Patched asyncapp") || line.starts_with("Reverted asyncapp"), "{run}");
    let after = app.mark();
    std::fs::write(&gate, "").expect("cannot open the gate");
    let done = app.wait_for(mark, "the job parked by the patch's code, done", |l| {
        job_line(l).is_some_and(|(k, i, rest)| k == "hot" && i == parked && rest.starts_with("done "))
    });
    assert!(done.contains(" done v=old "), "{done}");
    // The second job to start after the patch (the first might have been spawned just before).
    let first = app.wait_for(after, "a job started after the block was taken out", |l| {
        job_line(l).is_some_and(|(k, _, rest)| k == "hot" && rest.starts_with("parked "))
    });
    let first = job_line(&first).expect("a job line").1;
    let next = app.wait_for(after, "another job started after the block was taken out", |l| {
        job_line(l).is_some_and(|(k, i, rest)| k == "hot" && i > first && rest.starts_with("parked "))
    });
    let next = job_line(&next).expect("a job line").1;
    app.wait_for(after, "that job done", |l| {
        job_line(l).is_some_and(|(k, i, rest)| k == "hot" && i == next && rest.starts_with("done "))
    });
    let extra = format!("job extra id={next} spawned first");
    assert!(!app.lines_since(0).contains(&extra), "the block taken out still runs: {}", app.dump());
    assert!(app.alive(), "{}", app.dump());
}
