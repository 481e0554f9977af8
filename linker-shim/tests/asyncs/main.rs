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
    let run = project.build();
    let line = status_for(&run, app.pid);
    assert!(line.starts_with("Patched asyncapp"), "{run}");
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
