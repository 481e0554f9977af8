//! The layouts app of ipbp's edit-matrix tests (`linker-shim/tests/layouts`): one value of each
//! kind of type in each place an old value can live while the program runs, and a hot function
//! that reads them all.
//!
//! Each line: `step n=<n> msg=<..> config=<..> session=<..> point=<..> items=<..> shape=<..>
//! tally=<..> label=<..> scratch=<..> form=<..> pos=<..> checked=<..> handled=<..> flat=<..> mode=<..>
//! shown=<..> described=<..> at=<..> recent=<..> counts=<..>`, and `task total=<..> rounds=<..>` from
//! an async fn. `n` counts steps in `main`; every other number keeps growing as long as old and new code
//! agree on where each value's fields are.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Lives in a static.
struct Config {
    retries: u32,
    scale: u32,
}

static CONFIG: Mutex<Config> = Mutex::new(Config { retries: 9, scale: 2 });

/// Lives in a thread-local.
struct Session {
    hits: u32,
    misses: u32,
}

thread_local! {
    static SESSION: RefCell<Session> = const { RefCell::new(Session { hits: 0, misses: 0 }) };
    /// Initialised lazily, on each thread's first use; an edit changes its initializer.
    static VISITS: std::cell::Cell<u64> = std::cell::Cell::new(1);
}

/// Lives in `main`'s locals.
struct Point {
    x: u32,
    y: u32,
}

/// Lives in heap data `main` builds at startup.
struct Item {
    id: u32,
    weight: u32,
}

/// An enum in `main`'s locals.
#[allow(dead_code)] // `Dot` is never made: the edits add variants
enum Shape {
    Dot(u32),
    Line(u32, u32),
}

/// In `main`'s locals; swapping its fields does not change its layout (rustc puts the field with
/// a niche first either way), but does change `step`'s symbol hash.
struct Tally {
    name: String,
    count: u64,
}

/// Made and dropped inside `step` alone (its derived `Clone` and `Default` compile the same for
/// a same-size retype, and hold a value only for the moment of a call).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Scratch {
    a: u32,
    b: u32,
}

/// Collected into a `Vec` and sorted inside `step` alone: with v0 symbol names the instances over it
/// (`extend_trusted`, the `map_fold` closure writing each element, the sort) keep their names when
/// it gains a field (review 5, finding 5).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Flat {
    a: u32,
    b: u32,
}

/// Two types parsed from text inside `step` alone, each implementing `Parse` the way serde's derive
/// implements `Deserialize`: inside an anonymous `const _` block, with a `__Field` enum of its own.
/// Both enums have the path `layouts::forms::_::{impl#0}::parse::__Field` (rustc even describes
/// them under one namespace entry), yet are distinct types.
mod forms {
    pub trait Parse: Sized {
        fn parse(text: &str) -> Self;
    }

    pub struct Query {
        pub path: u32,
        pub sort: u32,
    }

    pub struct Upload {
        pub name: u32,
        pub size: u64,
    }

    /// `key=value,…` pairs, numbers only.
    fn pairs(text: &str) -> impl Iterator<Item = (&str, u64)> {
        text.split(',').map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, "0"));
            (k, v.parse().unwrap_or(0))
        })
    }

    #[allow(non_camel_case_types)]
    const _: () = {
        impl Parse for Query {
            fn parse(text: &str) -> Self {
                enum __Field {
                    __field0,
                    __field1,
                    __ignore,
                }
                fn field(key: &str) -> __Field {
                    match key {
                        "path" => __Field::__field0,
                        "sort" => __Field::__field1,
                        _ => __Field::__ignore,
                    }
                }
                let mut query = Query { path: 0, sort: 0 };
                for (key, value) in pairs(text) {
                    let which = field(key);
                    match which {
                        __Field::__field0 => query.path = value as u32,
                        __Field::__field1 => query.sort = value as u32,
                        __Field::__ignore => {}
                    }
                }
                query
            }
        }
    };

    #[allow(non_camel_case_types)]
    const _: () = {
        impl Parse for Upload {
            fn parse(text: &str) -> Self {
                enum __Field {
                    __field0,
                    __field1,
                    __ignore,
                }
                fn field(key: &str) -> __Field {
                    match key {
                        "name" => __Field::__field0,
                        "size" => __Field::__field1,
                        _ => __Field::__ignore,
                    }
                }
                let mut upload = Upload { name: 0, size: 0 };
                for (key, value) in pairs(text) {
                    let which = field(key);
                    match which {
                        __Field::__field0 => upload.name = value as u32,
                        __Field::__field1 => upload.size = value,
                        __Field::__ignore => {}
                    }
                }
                upload
            }
        }
    };
}

/// Lives only as bytes in type-erased storage that `main` fills at startup (`store::Store`: a
/// `Vec<u8>`, a `Layout` and a drop function): no type of the program's frames or statics names it.
#[derive(Clone, Copy)]
struct Pos {
    x: f32,
}

/// Made by `mode_of` (not hot) and formatted by `step`: directly, through a generic helper of the
/// workspace, and through std (`Vec<Mode>::sort`, `HashMap<Mode, _>`, `Debug` of a `Vec` and of a
/// tuple). The edits add a variant that new code makes and that must meet only new code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Mode {
    Idle,
    Busy,
}

/// Handed by `step` to the handlers `main` registered at startup, behind `dyn Handler` in a
/// static whose type does not name it; the edits add a variant that new code makes.
#[derive(Clone, Copy, Debug)]
enum Signal {
    Low,
    High,
}

fn signal_of(n: u64) -> Signal {
    if n % 2 == 0 {
        Signal::Low
    } else {
        Signal::High
    }
}

/// Called through the vtables of the handlers `main` made at startup: its method receives a
/// `Signal` from its caller. `name` gives the vtables a second method, which an edit moves below
/// `handle` (the vtables keep their length; the slots change).
trait Handler: Send {
    fn name(&self) -> String {
        "handler".into()
    }
    fn handle(&self, signal: &Signal) -> String;
}

/// Owns a `String`: its vtables start with drop glue (`drop_in_place::<Printer>` under v0 names).
struct Printer {
    prefix: String,
}

impl Handler for Printer {
    fn handle(&self, signal: &Signal) -> String {
        format!("{}{signal:?}", self.prefix)
    }
}

static HANDLERS: Mutex<Vec<Box<dyn Handler>>> = Mutex::new(Vec::new());

/// Two supertraits: the vtable of `dyn Layered` holds `Base`'s methods, `Extra`'s, then a pointer
/// to `Extra`'s own vtable (for upcasting); an edit swaps `Base`'s methods, which no vtable of
/// `Base` alone shows.
trait Base {
    fn low(&self) -> u64;
    fn high(&self) -> u64;
}

trait Extra {
    fn more(&self) -> u64;
}

trait Layered: Base + Extra {}

struct Levels;

impl Base for Levels {
    fn low(&self) -> u64 {
        1
    }
    fn high(&self) -> u64 {
        2
    }
}

impl Extra for Levels {
    fn more(&self) -> u64 {
        3
    }
}

impl Layered for Levels {}

static LAYERED: Mutex<Option<Box<dyn Layered + Send>>> = Mutex::new(None);

/// A key with a hand-written `Hash`, in a table `main` fills at startup and `step` looks up; an
/// edit changes the hash, which the table's live entries were placed by.
#[derive(PartialEq, Eq)]
struct Tag(u32);

impl std::hash::Hash for Tag {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.hash(h);
    }
}

static TAGS: Mutex<Option<HashMap<Tag, u32>>> = Mutex::new(None);

/// An error `step` gets from `check` behind `Box<dyn Error>` and drops in the same step: no value
/// of it outlives a step. An edit overrides `Error::source`, which its vtable then calls.
#[derive(Debug)]
struct StepError(u64);

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "e{}", self.0)
    }
}

impl std::error::Error for StepError {}

fn check(n: u64) -> Result<u64, Box<dyn std::error::Error>> {
    if n % 2 == 0 {
        Ok(n)
    } else {
        Err(Box::new(StepError(n)))
    }
}

fn mode_of(n: u64) -> Mode {
    if n % 2 == 0 {
        Mode::Idle
    } else {
        Mode::Busy
    }
}

/// Formats any value; the edits leave it as it is.
fn shown<T: std::fmt::Debug>(value: &T) -> String {
    format!("<{value:?}>")
}

/// Formats a `Mode`; the edits leave it as it is (its symbol's name changes with `Mode`, which its
/// signature names).
fn described(mode: &Mode) -> String {
    format!("[{mode:?}]")
}

/// The mode of step `n`, formatted. The edits leave it as it is, and its symbol's name too (its
/// signature does not name `Mode`): its code in the image calls the old `mode_of` and formats with
/// the old `<Mode as Debug>::fmt`, so new code must call a copy that calls the new ones.
fn mode_at(n: u64) -> String {
    format!("{:?}", mode_of(n))
}

#[ipbp::hot]
fn step(
    n: u64,
    point: &mut Point,
    items: &mut [Item],
    shape: &mut Shape,
    tally: &mut Tally,
    label: &dyn Fn() -> String,
    positions: &mut store::Store,
) -> String {
    let msg = "hello";
    VISITS.with(|v| v.set(v.get() + 1));
    tally.count += 1;
    point.x += 1;
    point.y += 2;
    let config = {
        let mut c = CONFIG.lock().unwrap();
        c.retries += 1;
        format!("{}/{}", c.retries, c.scale)
    };
    let session = SESSION.with(|s| {
        let mut s = s.borrow_mut();
        s.hits += 1;
        format!("{}/{}", s.hits, s.misses)
    });
    for item in items.iter_mut() {
        item.weight += 1;
    }
    let items = items.iter().map(|i| format!("{}:{}", i.id, i.weight)).collect::<Vec<_>>().join(",");
    let shape = match shape {
        Shape::Dot(a) => {
            *a += 1;
            format!("dot:{a}")
        }
        Shape::Line(a, b) => {
            *a += 1;
            format!("line:{a}:{b}")
        }
    };
    let form = {
        use forms::Parse;
        let query = forms::Query::parse("path=3,sort=4,order=100");
        let upload = forms::Upload::parse("name=1,size=2");
        format!("{}/{}", query.path + query.sort, upload.name as u64 + upload.size)
    };
    let mode = mode_of(n);
    let mut recent: Vec<Mode> = (n.saturating_sub(2)..=n).map(mode_of).collect();
    recent.sort();
    let mut counts: HashMap<Mode, u32> = HashMap::new();
    for m in &recent {
        *counts.entry(*m).or_default() += 1;
    }
    let mut counts: Vec<(Mode, u32)> = counts.into_iter().collect();
    counts.sort();
    let modes = format!(
        "mode={mode:?} shown={} described={} at={} recent={} counts={}",
        shown(&mode),
        described(&mode),
        mode_at(n),
        format!("{recent:?}").replace(' ', ""),
        format!("{counts:?}").replace(' ', "")
    );
    let signal = signal_of(n);
    let mut handled = Vec::new();
    for handler in HANDLERS.lock().unwrap().iter() {
        if n == u64::MAX {
            handled.push(handler.name());
        }
        handled.push(handler.handle(&signal));
    }
    if let Some(l) = LAYERED.lock().unwrap().as_ref() {
        if (l.low(), l.high(), l.more()) != (1, 2, 3) {
            println!("layered methods mixed up");
        }
    }
    if TAGS.lock().unwrap().as_ref().and_then(|t| t.get(&Tag(2))) != Some(&2) {
        println!("tag 2 lost");
    }
    let checked = match check(n) {
        Ok(v) => format!("ok{v}"),
        Err(e) => format!("{e}/{}", std::error::Error::source(&*e).is_some()),
    };
    let handled = handled.join(",");
    let pos = positions.update(0, |p: &mut Pos| {
        p.x += 1.0;
        p.x
    });
    let mut flats: Vec<Flat> = (0..3).rev().map(|i| Flat { a: i, b: 7 }).collect();
    flats.sort();
    assert!(flats.iter().map(|f| f.a).eq(0..3), "{flats:?}");
    let flat = flats[0].b;
    let scratch = Scratch { a: n as u32, b: 7 }.clone();
    assert!(scratch != Scratch::default(), "{scratch:?}");
    format!(
        "step n={n} msg={msg} config={config} session={session} point={}/{} items={items} shape={shape} tally={}:{} label={} scratch={} form={form} pos={pos} checked={checked} handled={handled} flat={flat} {modes}",
        point.x,
        point.y,
        tally.name,
        tally.count,
        label(),
        scratch.a + scratch.b
    )
}

/// An `async fn` whose state machine `main` holds across steps: each poll runs to the next
/// `.await`, keeping `total` and `rounds` in the future between polls.
async fn task() {
    let mut total: u64 = 0;
    let mut rounds: u32 = 0;
    loop {
        total += 3;
        rounds += 1;
        println!("task total={total} rounds={rounds}");
        Yield(false).await;
    }
}

/// Suspends once.
struct Yield(bool);

impl Future for Yield {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            Poll::Pending
        }
    }
}

fn main() {
    ipbp::init();
    let period = std::env::var("LAYOUTS_PERIOD_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    println!("started pid={}", std::process::id());
    let mut point = Point { x: 0, y: 0 };
    let mut items: Vec<Item> = (1..=2).map(|id| Item { id, weight: 10 * id }).collect();
    let mut shape = Shape::Line(0, 5);
    let mut tally = Tally { name: String::from("t"), count: 0 };
    let name = String::from("lbl");
    let label = move || format!("{name}");
    let mut positions = store::Store::new::<Pos>();
    for i in 0..4 {
        positions.push(Pos { x: i as f32 });
    }
    HANDLERS.lock().unwrap().push(Box::new(Printer { prefix: String::from("p:") }));
    *TAGS.lock().unwrap() = Some((0..4).map(|i| (Tag(i), i)).collect());
    *LAYERED.lock().unwrap() = Some(Box::new(Levels));
    let mut task = Box::pin(task());
    let mut cx = Context::from_waker(Waker::noop());
    for n in 1.. {
        let line = step(n, &mut point, &mut items, &mut shape, &mut tally, &label, &mut positions);
        println!("{line}");
        let _ = task.as_mut().poll(&mut cx);
        std::thread::sleep(Duration::from_millis(period));
    }
}
