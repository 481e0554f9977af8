#!/usr/bin/env python3
"""Generates the large web program of P11 (the layout guard's cost) for the benchmarks.

    scripts/gen_webscaled.py OUT_DIR [--pages N]

OUT_DIR gets a copy of testdata/web plus N page modules (default 80) under `src/pages/`, each with
two serde-derived types (so every module has serde's `__Field` helper types, which share one path
per module), an axum handler (an async fn: a state machine, futures, tokio and tower types in
every unit's debug info), routes under `/pages/<n>`, and a footer constant all of them use.
Editing `PAGE_FOOTER` changes the code of every page module at once, as a template edit in
miniserve (a file server with maud templates, 487 workspace units, ~84 of them changed after a
few edits) does: the case where patches, which are cumulative, carry many changed units.
"""

import argparse
import os
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def page(i):
    return f'''//! Generated page {i}.

use axum::extract::Query;
use axum::Json;
use serde::{{Deserialize, Serialize}};

#[derive(Debug, Deserialize)]
pub struct Params {{
    pub name: Option<String>,
    pub count: Option<u32>,
    #[serde(default)]
    pub verbose: bool,
}}

#[derive(Debug, Serialize)]
pub struct Page {{
    pub title: String,
    pub items: Vec<String>,
    pub footer: String,
    pub number: u64,
}}

fn items(params: &Params) -> Vec<String> {{
    let n = params.count.unwrap_or(3).min(64);
    (0..n).map(|k| if params.verbose {{ format!("item {{k}} of page {i}") }} else {{ k.to_string() }}).collect()
}}

pub async fn page(Query(params): Query<Params>) -> Json<Page> {{
    let title = format!("page {i} for {{}}", params.name.as_deref().unwrap_or("anyone"));
    tokio::task::yield_now().await;
    Json(Page {{ title, items: items(&params), footer: super::PAGE_FOOTER.to_string(), number: {i} }})
}}
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--pages", type=int, default=80)
    args = ap.parse_args()
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    src = os.path.join(ROOT, "testdata", "web")
    shutil.copytree(src, args.out, ignore=shutil.ignore_patterns("target"))
    pages = os.path.join(args.out, "src", "pages")
    os.makedirs(pages)
    mods = [f"pub mod p{i};" for i in range(args.pages)]
    routes = "".join(f'\n        .route("/{i}", get(p{i}::page))' for i in range(args.pages))
    with open(os.path.join(pages, "mod.rs"), "w") as f:
        f.write("//! Generated pages (scripts/gen_webscaled.py).\n\n" + "\n".join(mods) + "\n\n")
        f.write("use axum::routing::get;\nuse axum::Router;\n\n")
        f.write('/// Every page ends with it.\npub const PAGE_FOOTER: &str = "served by web";\n\n')
        f.write("pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {\n    Router::new()")
        f.write(routes + "\n}\n")
    for i in range(args.pages):
        with open(os.path.join(pages, f"p{i}.rs"), "w") as f:
            f.write(page(i))
    main_rs = os.path.join(args.out, "src", "main.rs")
    text = open(main_rs).read()
    for old, new in (("mod handlers;", "mod handlers;\nmod pages;"),
                     ('.fallback(handlers::not_found)', '.nest("/pages", pages::routes())\n        .fallback(handlers::not_found)')):
        if old not in text:
            raise SystemExit(f"gen_webscaled: testdata/web/src/main.rs no longer contains {old!r}")
        text = text.replace(old, new, 1)
    open(main_rs, "w").write(text)


if __name__ == "__main__":
    main()
