//! Writing the map of a freshly linked executable, and collecting old ones.

use super::read::{map_from_bytes, Mapped};
use super::schema::SymbolMap;
use crate::error::{Context, Result};
use crate::store::inputs::{Input, InputKind};
use crate::store::{output_name, replace_symlink, write_atomically, IpbpDir};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// How many maps (and kept inputs) of one output survive collection, besides those of running
/// processes.
pub const KEEP_PER_OUTPUT: usize = 3;

pub struct Recorded {
    pub map_path: PathBuf,
    pub build_id: String,
}

/// The part of recording done before the link returns: the build id and the list of inputs
/// (`kind \t fingerprint \t stored \t path`, after a `# output` line). Holds the output's map
/// lock until dropped, so readers (`ipbp-ld map`, a patch wanting the link index) wait for the
/// detached writer that carries it on.
pub struct Pending {
    pub build_id: String,
    pub map_path: PathBuf,
    pub inputs_path: PathBuf,
    /// The same build was recorded before with other kept inputs (a rebuild that changed an
    /// input but not the output, so not the build id): the store holds entries nobody needs.
    pub replaced_kept_inputs: bool,
    _lock: std::fs::File,
}

pub fn begin(output: &Path, inputs: &[Input], dir: &IpbpDir) -> Result<Pending> {
    let build_id = super::read::read_build_id(output)?;
    let name = output_name(output);
    let map_dir = dir.map_dir(&name);
    fs_err::create_dir_all(&map_dir).context("cannot create the map directory")?;
    let lock = lock(&map_dir, libc::LOCK_EX)?;
    let inputs_path = dir.inputs_path(&name, &build_id);
    let kept = |list: &[Input]| list.iter().filter_map(|i| i.stored.clone()).collect::<HashSet<_>>();
    let replaced_kept_inputs = inputs_path.is_file()
        && read_inputs_list(&inputs_path).is_ok_and(|old| !kept(&old).is_subset(&kept(inputs)));
    write_inputs_list(&inputs_path, output, inputs)?;
    keep_executable(output, dir, &build_id);
    // A map of an earlier link of the same build id may name other kept inputs: it is written
    // again, on demand.
    let map_path = dir.map_path(&name, &build_id);
    let _ = std::fs::remove_file(&map_path);
    Ok(Pending { map_path, build_id, inputs_path, replaced_kept_inputs, _lock: lock })
}

/// Keeps the executable under its build id (a hardlink: free, and the inode outlives cargo's
/// replacing `target/debug/<name>`), so the build a process started from stays findable by
/// debuggers and people for as long as the build is recorded — at least while a process runs it
/// (collection spares those). Quietly does nothing where it cannot link (another filesystem).
fn keep_executable(output: &Path, dir: &IpbpDir, build_id: &str) {
    super::started::write_debugger_scripts(dir);
    let kept = dir.executable(build_id);
    if kept.exists() {
        return;
    }
    if let Some(parent) = kept.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::hard_link(output, &kept);
}

/// Writes the JSON map of a build recorded by [`begin`] (whose lock `pending` holds), for
/// `IPBP_MAP_INLINE=1`.
pub fn write_map_now(
    pending: &Pending,
    output: &Path,
    inputs: Vec<Input>,
    dir: &IpbpDir,
) -> Result<Recorded> {
    let recorded = record(output, output, inputs, dir)?;
    if recorded.build_id != pending.build_id {
        crate::bail!("{} changed while its map was being written", output.display());
    }
    Ok(recorded)
}

/// The JSON map of the build whose input list is `inputs_path`, written now if no map was written
/// yet (maps are written on demand: only people and tools read them). `binary` is a file with the
/// build's content (the output itself, or cargo's copy of it in `target/debug/`).
pub fn ensure_map(inputs_path: &Path, binary: &Path) -> Result<PathBuf> {
    let map_path = inputs_path.with_extension("json");
    if map_path.is_file() {
        return Ok(map_path);
    }
    let map_dir = inputs_path.parent().unwrap_or(Path::new("."));
    let _lock = lock(map_dir, libc::LOCK_EX)?;
    if map_path.is_file() {
        return Ok(map_path);
    }
    let (output, inputs) = read_recorded_inputs(inputs_path)?;
    let output = output.unwrap_or_else(|| binary.to_path_buf());
    let dir =
        IpbpDir { root: map_dir.parent().and_then(Path::parent).unwrap_or(Path::new(".")).to_path_buf() };
    let recorded = record(binary, &output, inputs, &dir)?;
    if recorded.map_path != map_path {
        let _ = std::fs::remove_file(&recorded.map_path);
        crate::bail!(
            "{} is build {}, not the build recorded in {}",
            binary.display(),
            recorded.build_id,
            inputs_path.display()
        );
    }
    Ok(map_path)
}

/// `maps/<output>/.lock`: held exclusively while a map is written, shared by readers.
fn lock(map_dir: &Path, how: i32) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = map_dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), how) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot lock {}", path.display()));
    }
    Ok(file)
}

/// Waits (up to a minute) for a map being written into `map_dir` to be complete.
pub fn wait_for_writer(map_dir: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(map_dir.join(".lock")) else { return };
    for _ in 0..600 {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Reads `binary` (the linked `output` or a copy of it), writes its map with `inputs`, points
/// `latest.json` at it.
pub fn record(binary: &Path, output: &Path, inputs: Vec<Input>, dir: &IpbpDir) -> Result<Recorded> {
    let mapped = Mapped::open(binary)?;
    let mut map = map_from_bytes(output, mapped.bytes())
        .with_context(|| format!("cannot read the linked output {}", binary.display()))?;
    map.inputs = inputs;
    let name = output_name(output);
    let map_path = dir.map_path(&name, &map.build_id);
    write_atomically(&map_path, |out| {
        serde_json::to_writer(&mut *out, &map).map_err(std::io::Error::other)?;
        out.write_all(b"\n")
    })
    .with_context(|| format!("cannot write the symbol map {}", map_path.display()))?;
    replace_symlink(&format!("{}.json", map.build_id), &dir.latest(&name))
        .with_context(|| format!("cannot update {}", dir.latest(&name).display()))?;
    Ok(Recorded { map_path, build_id: map.build_id })
}

/// The compact list of a build's inputs: a `# output <path>` line, then `kind \t fingerprint \t
/// stored \t path` per input. What a patch diff, the collector and an on-demand map read.
fn write_inputs_list(path: &Path, output: &Path, inputs: &[Input]) -> Result<()> {
    write_atomically(path, |out| {
        writeln!(out, "{OUTPUT_LINE}{}", output.display())?;
        for i in inputs {
            let kind = serde_json::to_value(i.kind).map_err(std::io::Error::other)?;
            writeln!(
                out,
                "{}\t{}\t{}\t{}",
                kind.as_str().unwrap_or("object"),
                i.fingerprint.as_deref().unwrap_or("-"),
                i.stored.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "-".into()),
                i.path.display()
            )?;
        }
        Ok(())
    })
    .with_context(|| format!("cannot write {}", path.display()))
}

const OUTPUT_LINE: &str = "# output ";

/// Reads a list written by [`write_inputs_list`].
pub fn read_inputs_list(path: &Path) -> Result<Vec<Input>> {
    read_recorded_inputs(path).map(|(_, inputs)| inputs)
}

/// The output a list was written for (lists of older ipbp-ld versions do not say) and its inputs.
fn read_recorded_inputs(path: &Path) -> Result<(Option<PathBuf>, Vec<Input>)> {
    let text = fs_err::read_to_string(path).context("cannot read the recorded link inputs")?;
    let mut output = None;
    let mut inputs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            if let Some(o) = line.strip_prefix(OUTPUT_LINE) {
                output = Some(PathBuf::from(o));
            }
            continue;
        }
        let f: Vec<&str> = line.splitn(4, '\t').collect();
        let [kind, fp, stored, p] = f[..] else {
            crate::bail!("{}:{}: malformed line", path.display(), n + 1);
        };
        let kind: InputKind = serde_json::from_value(serde_json::Value::String(kind.into()))
            .with_context(|| format!("{}:{}: unknown input kind `{kind}`", path.display(), n + 1))?;
        let opt = |s: &str| (s != "-").then(|| s.to_string());
        inputs.push(Input {
            path: PathBuf::from(p),
            kind,
            fingerprint: opt(fp),
            stored: opt(stored).map(PathBuf::from),
        });
    }
    Ok((output, inputs))
}

/// Removes all but the newest [`KEEP_PER_OUTPUT`] builds of `output_name`, sparing `in_use` build
/// ids, then drops stored inputs no remaining build refers to when that can have freed any (a
/// removed build kept inputs, `sweep` asks for it, or an earlier sweep had to be put off).
pub fn collect(dir: &IpbpDir, output_name: &str, in_use: &HashSet<String>, sweep: bool) -> Result<usize> {
    let map_dir = dir.map_dir(output_name);
    let mut maps: Vec<(std::time::SystemTime, String)> = Vec::new();
    for entry in fs_err::read_dir(&map_dir).context("cannot list maps")? {
        let entry = entry.context("cannot list maps")?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".inputs") else { continue };
        let mtime = entry.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
        maps.push((mtime, id.to_string()));
    }
    maps.sort_by_key(|m| std::cmp::Reverse(m.0));
    let mut removed = 0;
    let mut freed_kept_inputs = false;
    for (_, id) in maps.iter().skip(KEEP_PER_OUTPUT) {
        if in_use.contains(id) {
            continue;
        }
        let list = dir.inputs_path(output_name, id);
        freed_kept_inputs |= read_inputs_list(&list).map_or(true, |l| l.iter().any(|i| i.stored.is_some()));
        let _ = std::fs::remove_file(dir.map_path(output_name, id));
        let _ = std::fs::remove_file(&list);
        let _ = std::fs::remove_file(dir.index_path(output_name, id));
        let _ = std::fs::remove_file(dir.executable(id));
        removed += 1;
    }
    let latest = dir.latest(output_name);
    if removed > 0 && std::fs::symlink_metadata(&latest).is_ok() && !latest.exists() {
        let _ = std::fs::remove_file(&latest);
    }
    freed_kept_inputs |= drop_outputs_gone(dir, output_name, in_use);
    let put_off = dir.sweep_wanted();
    if sweep || freed_kept_inputs || put_off.exists() {
        match lock_store_for_sweep(dir) {
            Some(_lock) => {
                sweep_store(dir)?;
                let _ = std::fs::remove_file(&put_off);
            }
            // A link is between keeping its inputs and listing them: the next collection sweeps.
            None => {
                let _ = std::fs::File::create(&put_off);
            }
        }
    }
    Ok(removed)
}

/// Drops every build of the other outputs whose executable is gone (`cargo clean -p`, a deleted
/// example): no process can start from it again, so nothing of it is needed unless a process
/// still runs it. Outputs that are being recorded (their lock is held) are left alone. Returns
/// whether anything dropped had kept inputs.
fn drop_outputs_gone(dir: &IpbpDir, current: &str, in_use: &HashSet<String>) -> bool {
    use std::os::fd::AsRawFd;
    let mut freed = false;
    for out in std::fs::read_dir(dir.root.join("maps")).into_iter().flatten().flatten() {
        let name = out.file_name().to_string_lossy().into_owned();
        if name == current {
            continue;
        }
        let lists: Vec<PathBuf> = std::fs::read_dir(out.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "inputs"))
            .collect();
        let recorded_output = lists.first().and_then(|l| read_recorded_output(l));
        if recorded_output.is_none_or(|o| o.exists()) {
            continue;
        }
        let Ok(lock) = std::fs::File::open(out.path().join(".lock")) else { continue };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        for list in &lists {
            let id = list.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            if in_use.contains(&id) {
                continue;
            }
            freed |= read_inputs_list(list).map_or(true, |l| l.iter().any(|i| i.stored.is_some()));
            let _ = std::fs::remove_file(list.with_extension("json"));
            let _ = std::fs::remove_file(dir.index_path(&name, &id));
            let _ = std::fs::remove_file(dir.executable(&id));
            let _ = std::fs::remove_file(list);
        }
        let _ = std::fs::remove_file(out.path().join("latest.json"));
    }
    freed
}

/// The `# output` line of an input list (its first line), without reading the rest.
fn read_recorded_output(list: &Path) -> Option<PathBuf> {
    use std::io::BufRead;
    let mut first = String::new();
    std::io::BufReader::new(std::fs::File::open(list).ok()?).read_line(&mut first).ok()?;
    first.trim_end_matches('\n').strip_prefix(OUTPUT_LINE).map(PathBuf::from)
}

/// `store/.lock` held exclusively, if no link holds it (see [`crate::store::StoreLease`]).
fn lock_store_for_sweep(dir: &IpbpDir) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.store_lock()).ok()?;
    // SAFETY: flock on a descriptor we own.
    (unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0).then_some(file)
}

/// Deletes stored inputs that no `.inputs` list mentions. Runs holding the store lock exclusively,
/// so no link is between keeping an input and listing it.
fn sweep_store(dir: &IpbpDir) -> Result<()> {
    let mut referenced = HashSet::new();
    let maps = dir.root.join("maps");
    for out in fs_err::read_dir(&maps).context("cannot list maps")?.flatten() {
        for f in std::fs::read_dir(out.path()).into_iter().flatten().flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "inputs") {
                for input in read_inputs_list(&p).unwrap_or_default() {
                    if let Some(s) = input.stored {
                        referenced.insert(s);
                    }
                }
            }
        }
    }
    for entry in std::fs::read_dir(dir.store()).into_iter().flatten().flatten() {
        let p = entry.path();
        // Dot files are the store's lock and marker, and copies being written.
        if !entry.file_name().to_string_lossy().starts_with('.') && !referenced.contains(&p) {
            let _ = std::fs::remove_file(&p);
        }
    }
    Ok(())
}

/// Loads a full map from disk.
pub fn load_map(path: &Path) -> Result<SymbolMap> {
    let text = fs_err::read(path).context("cannot read the map")?;
    let map: SymbolMap = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a valid ipbp symbol map", path.display()))?;
    if map.schema != super::schema::SCHEMA_VERSION {
        crate::bail!(
            "{} has map schema {}, this ipbp-ld reads schema {}",
            path.display(),
            map.schema,
            super::schema::SCHEMA_VERSION
        );
    }
    Ok(map)
}
