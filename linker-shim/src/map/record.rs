//! Writing the map of a freshly linked executable, and collecting old ones.

use super::read::{map_from_bytes, Mapped};
use super::schema::{Input, InputKind, SymbolMap};
use super::store::{output_name, replace_symlink, write_atomically, IpbpDir};
use crate::error::{Context, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// How many maps (and kept inputs) of one output survive collection, besides those of running
/// processes.
pub const KEEP_PER_OUTPUT: usize = 3;

pub struct Recorded {
    pub map_path: PathBuf,
    pub build_id: String,
    pub symbols: usize,
    pub bytes: u64,
}

/// The part of recording a patch needs, done before the link returns: the build id and the list
/// of kept inputs. Holds the output's map lock until [`finish`] is done with the JSON map.
pub struct Pending {
    pub build_id: String,
    pub map_path: PathBuf,
    pub inputs_path: PathBuf,
    _lock: std::fs::File,
}

pub fn begin(output: &Path, inputs: &[Input], dir: &IpbpDir) -> Result<Pending> {
    let build_id = super::read::read_build_id(output)?;
    let name = output_name(output);
    let map_dir = dir.map_dir(&name);
    fs_err::create_dir_all(&map_dir).context("cannot create the map directory")?;
    let lock = lock(&map_dir, libc::LOCK_EX)?;
    let inputs_path = dir.inputs_path(&name, &build_id);
    write_inputs_list(&inputs_path, inputs)?;
    Ok(Pending { map_path: dir.map_path(&name, &build_id), build_id, inputs_path, _lock: lock })
}

/// Writes the JSON map and points `latest.json` at it, then releases the lock (by dropping
/// `pending`).
pub fn finish(pending: Pending, output: &Path, inputs: Vec<Input>, dir: &IpbpDir) -> Result<Recorded> {
    let recorded = record(output, inputs, dir)?;
    if recorded.build_id != pending.build_id {
        crate::bail!("{} changed while its map was being written", output.display());
    }
    Ok(recorded)
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

/// Reads `output`, writes its map with `inputs`, points `latest.json` at it.
pub fn record(output: &Path, inputs: Vec<Input>, dir: &IpbpDir) -> Result<Recorded> {
    let mapped = Mapped::open(output)?;
    let mut map = map_from_bytes(output, mapped.bytes())
        .with_context(|| format!("cannot read the linked output {}", output.display()))?;
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
    let bytes = std::fs::metadata(&map_path).map(|m| m.len()).unwrap_or(0);
    Ok(Recorded { map_path, build_id: map.build_id, symbols: map.symbols.len(), bytes })
}

/// The compact list of a build's inputs (`kind \t fingerprint \t stored \t path` per line): what a
/// patch diff and the collector read instead of the full JSON map.
fn write_inputs_list(path: &Path, inputs: &[Input]) -> Result<()> {
    write_atomically(path, |out| {
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

/// Reads a list written by [`write_inputs_list`].
pub fn read_inputs_list(path: &Path) -> Result<Vec<Input>> {
    let text = fs_err::read_to_string(path).context("cannot read the recorded link inputs")?;
    let mut inputs = Vec::new();
    for (n, line) in text.lines().enumerate() {
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
    Ok(inputs)
}

/// Removes all but the newest [`KEEP_PER_OUTPUT`] maps of `output_name`, sparing `in_use` build ids,
/// then drops stored inputs no remaining map refers to.
pub fn collect(dir: &IpbpDir, output_name: &str, in_use: &HashSet<String>) -> Result<usize> {
    let map_dir = dir.map_dir(output_name);
    let mut maps: Vec<(std::time::SystemTime, String)> = Vec::new();
    for entry in fs_err::read_dir(&map_dir).context("cannot list maps")? {
        let entry = entry.context("cannot list maps")?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".inputs") else { continue };
        let mtime = entry.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
        maps.push((mtime, id.to_string()));
    }
    if maps.len() <= KEEP_PER_OUTPUT {
        return Ok(0);
    }
    maps.sort_by_key(|m| std::cmp::Reverse(m.0));
    let mut removed = 0;
    for (_, id) in maps.iter().skip(KEEP_PER_OUTPUT) {
        if in_use.contains(id) {
            continue;
        }
        let _ = std::fs::remove_file(dir.map_path(output_name, id));
        let _ = std::fs::remove_file(dir.inputs_path(output_name, id));
        let _ = std::fs::remove_file(crate::index::path_for(&map_dir, id));
        removed += 1;
    }
    if removed > 0 {
        sweep_store(dir)?;
    }
    Ok(removed)
}

/// Deletes stored inputs that no `.inputs` list mentions. Entries younger than a minute are left
/// alone: a concurrent link may have stored them and not yet written its list.
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
    use std::os::unix::fs::MetadataExt;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
        as i64;
    for entry in std::fs::read_dir(dir.store()).into_iter().flatten().flatten() {
        let p = entry.path();
        // ctime, not mtime: a hardlink keeps the source's mtime but linking it updates ctime.
        let young = entry.metadata().map(|m| now - m.ctime() < 60).unwrap_or(true);
        if !young && !referenced.contains(&p) {
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
