//! The edits of the edit matrix (EDIT-MATRIX.md), as replacements in `testdata/layouts`'s
//! `src/main.rs`. Each applies to the original source.

pub type Edit = &'static [(&'static str, &'static str)];

/// `Config` (in `static CONFIG`) gains a field.
pub const CONFIG_FIELD_ADDED: Edit = &[
    ("struct Config {\n    retries: u32,", "struct Config {\n    retries: u32,\n    extra: u64,"),
    ("Config { retries: 9, scale: 2 }", "Config { retries: 9, extra: 1, scale: 2 }"),
];

/// `Config.scale` becomes an `f32`: same size, same offset.
pub const CONFIG_FIELD_RETYPED: Edit = &[
    ("    scale: u32,\n}", "    scale: f32,\n}"),
    ("Config { retries: 9, scale: 2 }", "Config { retries: 9, scale: 2.0 }"),
];

/// `Session` (in a `thread_local!`) gains a field.
pub const SESSION_FIELD_ADDED: Edit = &[
    ("    misses: u32,\n}", "    misses: u32,\n    streak: u64,\n}"),
    ("Session { hits: 0, misses: 0 }", "Session { hits: 0, misses: 0, streak: 0 }"),
];

/// `Point` (in `main`'s locals, passed `&mut` to the hot function) gains a field: the issue's
/// `sxy=0/0/8589934593` case.
pub const POINT_FIELD_ADDED: Edit = &[
    (
        "struct Point {\n    x: u32,\n    y: u32,\n}",
        "struct Point {\n    x: u32,\n    y: u32,\n    z: u64,\n}",
    ),
    ("Point { x: 0, y: 0 }", "Point { x: 0, y: 0, z: 42 }"),
    ("point.y += 2;", "point.y += 2;\n    point.z += 1;"),
];

/// `Point` (in `main`'s locals) swaps its two fields, and `step`'s message changes too: the issue's
/// field-swap case, which must never come out `Unchanged`.
pub const POINT_FIELDS_SWAPPED: Edit = &[
    ("struct Point {\n    x: u32,\n    y: u32,\n}", "struct Point {\n    y: u32,\n    x: u32,\n}"),
    ("let msg = \"hello\";", "let msg = \"swapped\";"),
];

/// `Tally` (in `main`'s locals) swaps a `String` and a `u64`: its layout stays (rustc puts the
/// field with a niche first either way), but `step`'s symbol hash changes with it.
pub const TALLY_FIELDS_SWAPPED: Edit = &[
    (
        "struct Tally {\n    name: String,\n    count: u64,\n}",
        "struct Tally {\n    count: u64,\n    name: String,\n}",
    ),
    ("let msg = \"hello\";", "let msg = \"tallied\";"),
];

/// `Item` (in a `Vec` `main` built at startup) retypes a field at the same size.
pub const ITEM_FIELD_RETYPED: Edit = &[
    ("    weight: u32,\n}", "    weight: f32,\n}"),
    ("item.weight += 1;", "item.weight += 1.0;"),
    ("Item { id, weight: 10 * id }", "Item { id, weight: 10.0 * id as f32 }"),
];

/// `Shape` (in `main`'s locals) gains a larger variant.
pub const SHAPE_VARIANT_ADDED: Edit = &[
    ("    Line(u32, u32),\n}", "    Line(u32, u32),\n    Rect(u64, u64, u64),\n}"),
    (
        "            format!(\"line:{a}:{b}\")\n        }",
        "            format!(\"line:{a}:{b}\")\n        }\n        Shape::Rect(a, _, _) => format!(\"rect:{a}\"),",
    ),
];

/// The closure `main` made at startup captures one more value.
pub const CLOSURE_CAPTURES_CHANGED: Edit = &[(
    "let label = move || format!(\"{name}\");",
    "let tag = 7u64;\n    let label = move || format!(\"{name}{tag}\");",
)];

/// The `async fn` whose future `main` holds keeps one more local across its `.await`.
pub const ASYNC_LOCALS_CHANGED: Edit = &[
    ("    let mut rounds: u32 = 0;", "    let mut rounds: u32 = 0;\n    let mut spare: u64 = 1;"),
    ("        rounds += 1;", "        rounds += 1;\n        spare += 1;"),
    ("rounds={rounds}\");", "rounds={rounds} spare={spare}\");"),
];

/// `Scratch`, made and dropped inside `step` alone, gains a field: no old value can meet new code.
pub const SCRATCH_FIELD_ADDED: Edit = &[
    ("struct Scratch {\n    a: u32,", "struct Scratch {\n    a: u32,\n    c: u64,"),
    ("Scratch { a: n as u32, b: 7 }", "Scratch { a: n as u32, c: 100, b: 7 }"),
    ("scratch.a + scratch.b", "scratch.a + scratch.b + scratch.c as u32"),
];

/// `Scratch` swaps its fields, and `step`'s message changes: its derived `Clone` and `Default`
/// (which return a `Scratch` by value) compile the same, and hold one only for a call.
pub const SCRATCH_FIELDS_SWAPPED: Edit = &[
    ("struct Scratch {\n    a: u32,\n    b: u32,\n}", "struct Scratch {\n    b: u32,\n    a: u32,\n}"),
    ("let msg = \"hello\";", "let msg = \"scratched\";"),
];

/// A new struct, used only inside `step`.
pub const NEW_STRUCT: Edit = &[
    (
        "/// Made and dropped inside",
        "struct Fresh {\n    v: u32,\n    w: u64,\n}\n\n/// Made and dropped inside",
    ),
    ("    let scratch = Scratch", "    let fresh = Fresh { v: 1000, w: 2000 };\n    let scratch = Scratch"),
    ("scratch.a + scratch.b", "scratch.a + scratch.b + fresh.v + fresh.w as u32"),
];

/// `Flat`, collected into a `Vec` and sorted inside `step` alone, gains a field, and the closure
/// making each one sets `b` to 8 (`step` prints the first one's: `flat=8`); `step`'s code stays
/// the same.
pub const FLAT_FIELD_ADDED: Edit = &[
    ("struct Flat {\n    a: u32,\n    b: u32,\n}", "struct Flat {\n    a: u32,\n    b: u32,\n    c: u32,\n}"),
    ("Flat { a: i, b: 7 }", "Flat { a: i, b: 8, c: 1 }"),
];

/// Three lines inserted at the top: every panic location below moves, no code changes.
pub const LINES_SHIFTED: Edit = &[("use std::cell::RefCell;", "use std::cell::RefCell;\n\n\n")];

/// `Query` (parsed and dropped inside `step`) gains a field, and its `__Field` enum a variant; the
/// `__Field` of `Upload`, in another anonymous block of the same module with the same path, is
/// untouched and held by `Upload::parse`'s unchanged locals. The types share a path, not an
/// identity: comparing one with the other refused this edit (issue 15, miniserve's serde types).
pub const QUERY_FIELD_ADDED: Edit = &[
    ("        pub sort: u32,\n    }", "        pub sort: u32,\n        pub order: u32,\n    }"),
    ("                    __field1,\n                    __ignore,\n                }\n                fn field(key: &str) -> __Field {\n                    match key {\n                        \"path\"",
     "                    __field1,\n                    __field2,\n                    __ignore,\n                }\n                fn field(key: &str) -> __Field {\n                    match key {\n                        \"order\" => __Field::__field2,\n                        \"path\""),
    ("Query { path: 0, sort: 0 }", "Query { path: 0, sort: 0, order: 0 }"),
    ("__Field::__field1 => query.sort = value as u32,", "__Field::__field1 => query.sort = value as u32,\n                        __Field::__field2 => query.order = value as u32,"),
    ("query.path + query.sort,", "query.path + query.sort + query.order,"),
];

/// A closure added before `main`'s others (the `map` one and `label`, made at startup and called
/// by `step` each step): they become `{closure#1}` and `{closure#2}`. With `step`'s message.
pub const CLOSURE_ADDED_BEFORE: Edit = &[
    (
        "    let mut point = Point { x: 0, y: 0 };",
        "    let origin = || Point { x: 0, y: 0 };\n    let mut point = origin();",
    ),
    ("let msg = \"hello\";", "let msg = \"added\";"),
];

/// The `map` closure before `label` removed: `label` becomes `{closure#0}`.
pub const CLOSURE_REMOVED_BEFORE: Edit = &[
    (
        "(1..=2).map(|id| Item { id, weight: 10 * id }).collect();",
        "vec![Item { id: 1, weight: 10 }, Item { id: 2, weight: 20 }];",
    ),
    ("let msg = \"hello\";", "let msg = \"removed\";"),
];

/// `label` moved above the `map` closure: the two swap numbers.
pub const CLOSURES_MOVED: Edit = &[
    ("    let name = String::from(\"lbl\");\n    let label = move || format!(\"{name}\");\n", ""),
    (
        "    let mut items: Vec<Item>",
        "    let name = String::from(\"lbl\");\n    let label = move || format!(\"{name}\");\n    let mut items: Vec<Item>",
    ),
    ("let msg = \"hello\";", "let msg = \"moved\";"),
];

/// `Mode` gains a variant that the unchanged-signature-but-changed `mode_of` (not hot) makes every
/// third step, and `step`'s message changes: `<Mode as Debug>::fmt` and `mode_of` receive or
/// return the changed type, so their old entries are not redirected, and the new value must still
/// meet only new code — also through unchanged generic instances (`Argument::new_debug::<Mode>`,
/// the helper `shown::<Mode>`, `<Vec<Mode> as Debug>::fmt`, sorting, `HashMap<Mode, u32>`).
pub const MODE_VARIANT_ADDED: Edit = &[
    ("    Busy,\n}", "    Busy,\n    Sleep,\n}"),
    (
        "    if n % 2 == 0 {\n        Mode::Idle",
        "    if n % 3 == 0 {\n        Mode::Sleep\n    } else if n % 2 == 0 {\n        Mode::Idle",
    ),
    ("let msg = \"hello\";", "let msg = \"slept\";"),
];

/// `Signal` gains `Surge`, which the edited `signal_of` makes every third step; `step` hands it to
/// `<Printer as Handler>::handle` through the vtable of the `Box<dyn Handler>` that `main` pushed
/// into `HANDLERS` at startup, which leads to the old `handle`.
pub const SIGNAL_VARIANT_ADDED: Edit = &[
    ("    High,\n}", "    High,\n    Surge,\n}"),
    (
        "    if n % 2 == 0 {\n        Signal::Low",
        "    if n % 3 == 0 {\n        Signal::Surge\n    } else if n % 2 == 0 {\n        Signal::Low",
    ),
    ("let msg = \"hello\";", "let msg = \"surged\";"),
];

/// `Handler`'s two methods (behind `dyn Handler` in `static HANDLERS`, vtables made at startup)
/// swap places: the vtables keep their length, `handle` moves from slot 4 to slot 3, where the old
/// vtables hold `name`.
pub const HANDLER_METHODS_SWAPPED: Edit = &[(
    "    fn name(&self) -> String {\n        \"handler\".into()\n    }\n    fn handle(&self, signal: &Signal) -> String;\n",
    "    fn handle(&self, signal: &Signal) -> String;\n    fn name(&self) -> String {\n        \"handler\".into()\n    }\n",
)];

/// `Printer` overrides `Handler::name`, whose default its vtables (made at startup, kept behind
/// `dyn Handler` in `static HANDLERS`) point at: the old vtables would go on calling the default.
pub const PRINTER_OVERRIDES_NAME: Edit = &[(
    "impl Handler for Printer {\n",
    "impl Handler for Printer {\n    fn name(&self) -> String {\n        \"printer\".into()\n    }\n",
)];

/// `Base`'s two methods swap places; `dyn Layered` (`Layered: Base + Extra`, a box made at startup
/// in `static LAYERED`) is the only vtable holding them, next to a pointer to `Extra`'s vtable.
pub const BASE_METHODS_SWAPPED: Edit = &[(
    "    fn low(&self) -> u64;\n    fn high(&self) -> u64;\n",
    "    fn high(&self) -> u64;\n    fn low(&self) -> u64;\n",
)];

/// `Tag`'s hand-written `Hash` changes; a `HashMap<Tag, u32>` `main` filled at startup holds
/// entries placed by the old hash (`step`'s lookups by the new one would miss: `tag 2 lost`).
pub const TAG_HASH_CHANGED: Edit = &[("        self.0.hash(h);", "        (self.0 + 1).hash(h);")];

/// The lazy thread-local `VISITS` gets another initializer (`step`'s message changes too).
pub const VISITS_INIT_CHANGED: Edit = &[
    ("std::cell::Cell::new(1);", "std::cell::Cell::new(1000);"),
    ("let msg = \"hello\";", "let msg = \"visited\";"),
];

/// `Pos`, which lives only as bytes in the type-erased `store::Store` that `main` filled at
/// startup, gains a field (and its `x` moves: rustc puts the larger field first).
pub const POS_FIELD_ADDED: Edit = &[
    ("struct Pos {\n    x: f32,\n}", "struct Pos {\n    x: f32,\n    y: f64,\n}"),
    ("Pos { x: i as f32 }", "Pos { x: i as f32, y: 0.5 }"),
];

/// `StepError`, made by `check` and dropped by `step` in the same step behind `Box<dyn Error>`,
/// overrides `Error::source` (the review's shape): its vtable's slot calls the override now, and
/// no old box outlives a step.
pub const STEP_ERROR_OVERRIDES_SOURCE: Edit = &[(
    "impl std::error::Error for StepError {}",
    "impl std::error::Error for StepError {\n    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {\n        Some(&StepError(0))\n    }\n}",
)];
