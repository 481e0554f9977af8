//! Larger edits to the counter app, written out here so the tests read as what they check.

use crate::support::Project;
use crate::MAIN;

/// `extra()` starts using new code: a new function, a new static, a new lazily initialised
/// `thread_local!`, a new generic instance (`Vec<NewThing>`) and a std API the program never
/// called (parsing an `Ipv6Addr`).
pub fn new_code(project: &Project) {
    project.edit(
        MAIN,
        "fn extra() -> String {\n    String::from(\"none\")\n}",
        r#"fn extra() -> String {
    let n = NEW_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    let len = NEW_CACHE.with(|c| {
        c.borrow_mut().push(n);
        c.borrow().len()
    });
    let things: Vec<NewThing> = vec![NewThing(n as u32), NewThing(2)];
    let ip: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
    format!("{}-{}-{}-{}", new_helper(n), len, things.iter().map(|t| t.0).sum::<u32>(), ip.segments()[0])
}

static NEW_CALLS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static NEW_CACHE: std::cell::RefCell<Vec<usize>> = std::cell::RefCell::new(Vec::new());
}

struct NewThing(u32);

fn new_helper(n: usize) -> String {
    format!("new{n}")
}"#,
    );
}
