//! `ipbp-ld diff`: how the symbols of two builds differ.
//!
//! Symbols are matched by mangled name; a name defined several times (local copies of one generic
//! instance, C statics of different files) is matched occurrence by occurrence in address order.
//! Exit code 0 when something differs, 1 when the two are the same.

use super::{load_any, print_json, Outcome};
use crate::error::Error;
use crate::map::schema::{Symbol, SymbolKind, SymbolMap};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The older binary or map.
    old: PathBuf,
    /// The newer binary or map.
    new: PathBuf,
    /// Print JSON instead of a summary.
    #[arg(long)]
    json: bool,
    /// Compare code instead of symbol addresses: which functions and statics of the workspace
    /// differ, from the link inputs kept for both builds (what a patch between them would hold).
    #[arg(long)]
    code: bool,
    /// With --code: show why the definition with this mangled name differs.
    #[arg(long, value_name = "SYMBOL", requires = "code")]
    explain: Option<String>,
}

#[derive(Serialize, Default)]
pub struct SymbolDiff<'a> {
    pub added: Vec<&'a Symbol>,
    pub removed: Vec<&'a Symbol>,
    pub moved: Vec<Change<'a>>,
    pub resized: Vec<Change<'a>>,
}

#[derive(Serialize)]
pub struct Change<'a> {
    pub name: &'a str,
    pub demangled: &'a str,
    pub kind: SymbolKind,
    pub old_addr: u64,
    pub new_addr: u64,
    pub old_size: u64,
    pub new_size: u64,
}

pub fn run(args: Args) -> Result<Outcome, Error> {
    let old = load_any(&args.old)?;
    let new = load_any(&args.new)?;
    if args.code {
        return code_diff(&args, &old, &new);
    }
    let d = diff(&old, &new);
    if args.json {
        print_json(&d)?;
    } else {
        print_summary(&args, &d);
    }
    let same = d.added.is_empty() && d.removed.is_empty() && d.moved.is_empty() && d.resized.is_empty();
    Ok(if same { Outcome::NothingFound } else { Outcome::Found })
}

fn by_name(map: &SymbolMap) -> HashMap<&str, Vec<&Symbol>> {
    let mut m: HashMap<&str, Vec<&Symbol>> = HashMap::new();
    for s in map.symbols.iter().filter(|s| s.kind != SymbolKind::Section && s.section.is_some()) {
        m.entry(s.name.as_str()).or_default().push(s);
    }
    for v in m.values_mut() {
        v.sort_by_key(|s| s.addr);
    }
    m
}

pub fn diff<'a>(old: &'a SymbolMap, new: &'a SymbolMap) -> SymbolDiff<'a> {
    let old_names = by_name(old);
    let new_names = by_name(new);
    let mut d = SymbolDiff::default();
    for (name, olds) in &old_names {
        let news = new_names.get(name).map(Vec::as_slice).unwrap_or(&[]);
        for (i, o) in olds.iter().enumerate() {
            match news.get(i) {
                None => d.removed.push(o),
                Some(n) => {
                    let change = Change {
                        name: &n.name,
                        demangled: &n.demangled,
                        kind: n.kind,
                        old_addr: o.addr,
                        new_addr: n.addr,
                        old_size: o.size,
                        new_size: n.size,
                    };
                    if o.size != n.size {
                        d.resized.push(change);
                    } else if o.addr != n.addr {
                        d.moved.push(change);
                    }
                }
            }
        }
        d.added.extend(news.iter().skip(olds.len()));
    }
    for (name, news) in &new_names {
        if !old_names.contains_key(name) {
            d.added.extend(news.iter());
        }
    }
    d.added.sort_by_key(|s| (s.addr, &s.name));
    d.removed.sort_by_key(|s| (s.addr, &s.name));
    d.moved.sort_by_key(|c| (c.new_addr, c.name));
    d.resized.sort_by_key(|c| (c.new_addr, c.name));
    d
}

fn print_summary(args: &Args, d: &SymbolDiff) {
    println!("--- {}", args.old.display());
    println!("+++ {}", args.new.display());
    println!(
        "{} added, {} removed, {} resized, {} moved",
        d.added.len(),
        d.removed.len(),
        d.resized.len(),
        d.moved.len()
    );
    for s in &d.added {
        println!("+ {:<8} {:#018x} {:>7}  {}", s.kind.as_str(), s.addr, s.size, s.demangled);
    }
    for s in &d.removed {
        println!("- {:<8} {:#018x} {:>7}  {}", s.kind.as_str(), s.addr, s.size, s.demangled);
    }
    for c in &d.resized {
        println!(
            "~ {:<8} {:#018x} {:>7} -> {:#018x} {:>7}  {}",
            c.kind.as_str(),
            c.old_addr,
            c.old_size,
            c.new_addr,
            c.new_size,
            c.demangled
        );
    }
    for c in &d.moved {
        println!(
            "> {:<8} {:#018x} -> {:#018x} {:>7}  {}",
            c.kind.as_str(),
            c.old_addr,
            c.new_addr,
            c.new_size,
            c.demangled
        );
    }
}

/// `--code`: the stage-3 diff between two recorded builds, with the types whose layout changed
/// (`!`) and what the layout guard would refuse.
fn code_diff(args: &Args, old: &SymbolMap, new: &SymbolMap) -> Result<Outcome, Error> {
    use crate::hotpatch::link_index::build;
    use crate::index::LinkIndex;
    use crate::objects::units::{Build, Workspace};
    let inputs = |m: &SymbolMap, path: &std::path::Path| -> Result<Vec<crate::store::inputs::Input>, Error> {
        if m.inputs.is_empty() {
            let found = super::map::find_inputs(path, &m.build_id).ok_or_else(|| {
                crate::err!("no recorded link inputs for {} (not linked through ipbp-ld?)", path.display())
            })?;
            Ok(crate::map::record::read_inputs_list(&found)?)
        } else {
            Ok(m.inputs.clone())
        }
    };
    let (old_inputs, new_inputs) = (inputs(old, &args.old)?, inputs(new, &args.new)?);
    let arena = crate::objects::load::Arena::default();
    let ws = Workspace::new();
    let old_index = arena.keep(build(&arena, None, &old_inputs, &ws, true)?)?;
    let new_index = arena.keep(build(&arena, None, &new_inputs, &ws, true)?)?;
    let base = Build::from_index(&arena, &LinkIndex::parse(old_index)?, &old_inputs, true)?;
    let current = Build::from_index(&arena, &LinkIndex::parse(new_index)?, &new_inputs, true)?;
    if let Some(name) = &args.explain {
        for line in crate::diff::explain(&base, &current, name)? {
            println!("{line}");
        }
        return Ok(Outcome::Found);
    }
    let d = crate::diff::diff(&base, &current, &|_| true)?;
    let verdict = crate::layout::guard(&base, &current, &d, &crate::layout::Cache::none())?;
    let layouts: Vec<String> = verdict.layouts.changes.iter().map(|c| c.describe()).collect();
    if args.json {
        #[derive(Serialize)]
        struct Out<'a> {
            changed: Vec<&'a crate::diff::Change>,
            removed: &'a [String],
            units_total: usize,
            units_changed: usize,
            layouts: &'a [String],
            refusals: &'a [String],
        }
        print_json(&Out {
            changed: d.changed.values().collect(),
            removed: &d.removed,
            units_total: d.units_total,
            units_changed: d.units_changed,
            layouts: &layouts,
            refusals: &verdict.refusals,
        })?;
    } else {
        println!(
            "{} of {} workspace objects differ; {} definitions compared, {} changed, {} removed",
            d.units_changed,
            d.units_total,
            d.compared,
            d.changed.len(),
            d.removed.len()
        );
        for c in d.changed.values() {
            let size = if c.old_size == c.new_size {
                format!("{} bytes", c.new_size)
            } else {
                format!("{} -> {} bytes", c.old_size, c.new_size)
            };
            println!(
                "~ {:<8} {}  ({size})",
                format!("{:?}", c.kind).to_lowercase(),
                crate::map::read::demangle(&c.name)
            );
        }
        for r in &d.removed {
            println!("- {}", crate::map::read::demangle(r));
        }
        for l in &layouts {
            println!("! {l}");
        }
        for r in &verdict.refusals {
            println!("refused: {r}");
        }
    }
    let same = d.changed.is_empty() && d.removed.is_empty() && layouts.is_empty();
    Ok(if same { Outcome::NothingFound } else { Outcome::Found })
}
