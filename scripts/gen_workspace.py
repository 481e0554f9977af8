#!/usr/bin/env python3
"""Generates the workspace of benchmark P1b: a whole incremental rebuild that relinks many
executables, as `cargo test` does after an edit in a library crate everything depends on.

    scripts/gen_workspace.py OUT_DIR [--functions N]

OUT_DIR gets a cargo workspace of six crates:

- `shared`, the library the benchmark touches, which every other crate depends on;
- `alpha`, `beta`, `gamma`: libraries using `shared`, serde, serde_json and anyhow, with N
  generated functions each (default 600), unit tests and two integration-test files;
- `app`: a program (clap for its arguments) that links the ipbp runtime (`ipbp::init()`, a
  `#[ipbp::hot]` function) and calls into all the libraries, with unit tests and an integration
  test that runs it (so cargo builds the program itself too);
- `tool`: a second program (clap) that does not use ipbp: no patch can ever follow it.

The libraries depend on `ipbp` too, for their own hot functions, as a workspace using ipbp would.
`cargo test --no-run --workspace` links 14 executables: 11 link the runtime (the program `app`
and ten test harnesses), 3 do not (`tool`'s and `shared`'s tests, `tool` is not built by it);
touching `shared/src/lib.rs` relinks all of them.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBS = ["alpha", "beta", "gamma"]
# Dependencies from crates.io (their versions come from the local registry cache when offline).
REGISTRY = {
    "serde": '{ version = "1", features = ["derive"] }',
    "serde_json": '"1"',
    "anyhow": '"1"',
    "clap": '{ version = "4", features = ["derive"] }',
}


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def toml(name, deps, lib=True):
    lines = [f'[package]\nname = "{name}"\nversion = "0.1.0"\nedition = "2021"\npublish = false\n',
             "[dependencies]"]
    for d in deps:
        if d == "ipbp":
            lines.append(f"ipbp = {{ path = {json.dumps(os.path.join(ROOT, 'patch-runtime'))} }}")
        elif d in REGISTRY:
            lines.append(f"{d} = {REGISTRY[d]}")
        else:
            lines.append(f'{d} = {{ path = "../{d}" }}')
    return "\n".join(lines) + "\n"


def shared():
    return """//! The crate the benchmark touches: everything depends on it.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: u64,
    pub name: String,
    pub tags: Vec<String>,
}

pub fn mix(a: u64, b: u64) -> u64 {
    (a ^ b.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

pub fn tally(words: &[&str]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for w in words {
        *m.entry(w.to_string()).or_insert(0) += 1;
    }
    m
}

pub fn record(id: u64) -> Record {
    Record { id, name: format!("r{id}"), tags: (0..id % 4).map(|t| format!("t{t}")).collect() }
}
"""


def library(name, n):
    out = [f"//! Generated library `{name}` of the P1b workspace.\n",
           "use serde::{Deserialize, Serialize};\n",
           "#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]",
           f"pub struct Item {{\n    pub id: u64,\n    pub label: String,\n    pub weight: f64,\n}}\n"]
    for i in range(n):
        body = [f"pub fn {name}_{i}(x: u64) -> u64 {{",
                f"    let mut acc = shared::mix(x, {i});",
                "    for k in 0..(x % 5) {",
                f"        acc = acc.wrapping_add(k * {i + 3});",
                "    }"]
        if i % 6 == 0:
            body.append(f"    let item = Item {{ id: acc, label: format!(\"{name}{i}-{{acc}}\"), weight: {i}.5 }};")
            body.append("    acc ^= serde_json::to_string(&item).map(|s| s.len() as u64).unwrap_or(0);")
        if i % 10 == 0:
            body.append(f"    acc ^= shared::record(x).tags.len() as u64;")
        body += ["    acc", "}\n"]
        out += body
    out.append("#[ipbp::hot]")
    out.append(f"pub fn {name}_all(x: u64) -> u64 {{")
    out.append("    let mut s = 0u64;")
    for i in range(n):
        out.append(f"    s = s.wrapping_add({name}_{i}(x));")
    out += ["    s", "}\n"]
    out.append(f"pub fn parse(text: &str) -> Option<Item> {{\n    serde_json::from_str(text).ok()\n}}\n")
    out.append("pub fn load(text: &str) -> anyhow::Result<Item> {\n"
               "    let item: Item = serde_json::from_str(text)?;\n"
               "    anyhow::ensure!(item.weight >= 0.0, \"negative weight in {text}\");\n    Ok(item)\n}\n")
    out.append("#[cfg(test)]\nmod tests {\n    use super::*;\n")
    for t in range(4):
        out.append(f"    #[test]\n    fn t{t}() {{\n        assert_eq!({name}_{t}({t}), {name}_{t}({t}));\n    }}\n")
    out.append("    #[test]\n    fn roundtrip() {\n"
               "        let item = Item { id: 1, label: \"x\".into(), weight: 0.5 };\n"
               "        let text = serde_json::to_string(&item).unwrap();\n"
               "        assert_eq!(parse(&text), Some(item));\n    }\n}\n")
    return "\n".join(out)


def integration(name, k):
    return (f"#[test]\nfn all_{k}() {{\n    assert_eq!({name}::{name}_all({k}), {name}::{name}_all({k}));\n}}\n\n"
            f"#[test]\nfn parse_{k}() {{\n    assert!({name}::parse(\"{{}}\").is_none());\n}}\n")


def app():
    calls = "\n".join(f"    total = total.wrapping_add({lib}::{lib}_all(n));" for lib in LIBS)
    return f"""//! The program of the P1b workspace: it links the ipbp runtime.

#[ipbp::hot]
fn step(n: u64) -> u64 {{
    let mut total = shared::mix(n, 7);
{calls}
    total
}}

#[derive(clap::Parser)]
struct Args {{
    /// How far to step.
    #[arg(long, default_value_t = 1)]
    n: u64,
}}

fn main() {{
    ipbp::init();
    let args: Args = clap::Parser::parse();
    println!("{{}}", step(args.n));
}}

#[cfg(test)]
mod tests {{
    #[test]
    fn step_is_stable() {{
        assert_eq!(super::step(3), super::step(3));
    }}
}}
"""


def tool():
    return """//! A program of the workspace that does not use ipbp.

#[derive(clap::Parser)]
struct Args {
    words: Vec<String>,
}

fn main() {
    let args: Args = clap::Parser::parse();
    let refs: Vec<&str> = args.words.iter().map(String::as_str).collect();
    println!("{:?} {}", shared::tally(&refs), shared::mix(refs.len() as u64, 1));
}

#[cfg(test)]
mod tests {
    #[test]
    fn tally() {
        assert_eq!(shared::tally(&["a", "a"]).get("a"), Some(&2));
    }
}
"""


def generate(out, functions=600):
    members = ["shared"] + LIBS + ["app", "tool"]
    write(os.path.join(out, "Cargo.toml"),
          "[workspace]\nresolver = \"2\"\nmembers = [" + ", ".join(f'"{m}"' for m in members) + "]\n")
    write(os.path.join(out, "shared", "Cargo.toml"), toml("shared", []))
    write(os.path.join(out, "shared", "src", "lib.rs"), shared())
    for lib in LIBS:
        write(os.path.join(out, lib, "Cargo.toml"), toml(lib, ["shared", "ipbp", "serde", "serde_json", "anyhow"]))
        write(os.path.join(out, lib, "src", "lib.rs"), library(lib, functions))
        for k in range(2):
            write(os.path.join(out, lib, "tests", f"it{k}.rs"), integration(lib, k))
    write(os.path.join(out, "app", "Cargo.toml"), toml("app", ["shared", "ipbp", "clap"] + LIBS))
    write(os.path.join(out, "app", "src", "main.rs"), app())
    # An integration test of a program makes cargo build the program itself for the tests.
    write(os.path.join(out, "app", "tests", "cli.rs"),
          "#[test]\nfn runs() {\n    let out = std::process::Command::new(env!(\"CARGO_BIN_EXE_app\"))"
          ".output().unwrap();\n    assert!(out.status.success());\n}\n")
    write(os.path.join(out, "tool", "Cargo.toml"), toml("tool", ["shared", "clap"]))
    write(os.path.join(out, "tool", "src", "main.rs"), tool())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--functions", type=int, default=600)
    a = ap.parse_args()
    generate(a.out, a.functions)
    print(a.out, file=sys.stderr)


if __name__ == "__main__":
    main()
