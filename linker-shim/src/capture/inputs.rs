//! The link inputs of one executable: what they are, a content fingerprint of each, and a kept copy
//! of those that may change or vanish before a later patch diff needs them.
//!
//! Fingerprints are cached by (device, inode, size, mtime), so inputs that did not change since the
//! last link (the sysroot, dependencies from the registry) are never read again. Copies are
//! hardlinks into a content-addressed store: rustc writes a rebuilt file as a new inode and deletes
//! its `*.rcgu.o` after the link, so a hardlink keeps exactly the content that was linked.

use super::args::{InputArg, LinkCommand};
use crate::store::inputs::{is_sysroot, Input, InputKind};
use crate::store::{write_atomically, IpbpDir};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Directories gcc searches after the `-L` ones, for `-l` inputs.
const SYSTEM_LIB_DIRS: &[&str] = &[
    "/usr/local/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib",
];

/// Resolves the command's inputs to files and kinds, in link order.
pub fn resolve(cmd: &LinkCommand, cwd: &Path) -> Vec<Input> {
    cmd.inputs
        .iter()
        .map(|arg| match arg {
            InputArg::File(path) => {
                let path = cwd.join(path);
                Input { kind: classify(&path), path, fingerprint: None, stored: None }
            }
            InputArg::Library { name, static_only } => {
                match find_library(name, *static_only, &cmd.search_dirs, cwd) {
                    Some(path) => Input { kind: classify(&path), path, fingerprint: None, stored: None },
                    None => Input {
                        path: PathBuf::from(format!("-l{name}")),
                        kind: InputKind::Library,
                        fingerprint: None,
                        stored: None,
                    },
                }
            }
        })
        .collect()
}

fn find_library(name: &str, static_only: bool, dirs: &[PathBuf], cwd: &Path) -> Option<PathBuf> {
    let mut names = Vec::with_capacity(2);
    if !static_only {
        names.push(format!("lib{name}.so"));
    }
    names.push(format!("lib{name}.a"));
    let dirs = dirs.iter().map(|d| cwd.join(d)).chain(SYSTEM_LIB_DIRS.iter().map(PathBuf::from));
    for dir in dirs {
        for n in &names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn classify(path: &Path) -> InputKind {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    if name.ends_with(".o") {
        return InputKind::Object;
    }
    if name.ends_with(".rlib") || name.ends_with(".a") {
        return archive_kind(path);
    }
    if name.ends_with(".so") || name.contains(".so.") {
        return InputKind::Shared;
    }
    let mut magic = [0u8; 18];
    let n = std::fs::File::open(path).and_then(|mut f| std::io::Read::read(&mut f, &mut magic)).unwrap_or(0);
    if n >= 8 && &magic[..8] == b"!<arch>\n" {
        archive_kind(path)
    } else if n >= 18 && &magic[..4] == b"\x7fELF" && u16::from_le_bytes([magic[16], magic[17]]) == 1 {
        InputKind::Object
    } else {
        InputKind::Shared
    }
}

fn archive_kind(path: &Path) -> InputKind {
    if is_sysroot(path) {
        InputKind::SysrootArchive
    } else {
        InputKind::Archive
    }
}

/// A fingerprint cache entry: identity of the file version and its content hash.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// `fingerprints.tsv`: `dev ino size mtime_ns fingerprint path` per line.
pub struct FingerprintCache {
    path: PathBuf,
    entries: HashMap<(u64, u64), (FileStamp, String, PathBuf)>,
    /// Files looked at by this link: their stamps are current, `save` need not check them again.
    seen: std::collections::HashSet<(u64, u64)>,
    dirty: bool,
}

impl FingerprintCache {
    pub fn load(dir: &IpbpDir) -> Self {
        let path = dir.fingerprints();
        let mut entries = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                let f: Vec<&str> = line.splitn(6, '\t').collect();
                if let [dev, ino, size, mtime, fp, path] = f[..] {
                    if let (Ok(dev), Ok(ino), Ok(size), Ok(mtime_ns)) =
                        (dev.parse(), ino.parse(), size.parse(), mtime.parse())
                    {
                        let stamp = FileStamp { dev, ino, size, mtime_ns };
                        entries.insert((dev, ino), (stamp, fp.to_string(), PathBuf::from(path)));
                    }
                }
            }
        }
        FingerprintCache { path, entries, seen: Default::default(), dirty: false }
    }

    /// The content fingerprint of `path`, read from the cache when the file is unchanged, and the
    /// file's metadata (one `stat`, which `keep` reuses).
    pub fn fingerprint(&mut self, path: &Path) -> std::io::Result<(String, std::fs::Metadata)> {
        let meta = std::fs::metadata(path)?;
        let stamp = FileStamp::of(&meta);
        self.seen.insert((stamp.dev, stamp.ino));
        if let Some((cached, fp, known_as)) = self.entries.get_mut(&(stamp.dev, stamp.ino)) {
            if *cached == stamp {
                // The same file under another name (rustc links a reused object of an incremental
                // session under a new name each build): the entry follows the name, or `save`
                // would drop it as gone and the next link would hash the file again.
                if known_as != path {
                    *known_as = path.to_path_buf();
                    self.dirty = true;
                }
                return Ok((fp.clone(), meta));
            }
        }
        let fp = fingerprint_file(path)?;
        self.entries.insert((stamp.dev, stamp.ino), (stamp, fp.clone(), path.to_path_buf()));
        self.dirty = true;
        Ok((fp, meta))
    }

    /// Writes the cache back if anything new was hashed, without entries for files that are gone
    /// (rustc's temporary objects, replaced builds). Concurrent links may overwrite each other's
    /// additions; that only costs a re-hash later.
    pub fn save(&self) -> std::io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        write_atomically(&self.path, |out| {
            for (key, (stamp, fp, path)) in &self.entries {
                // A file this link looked at was just `stat`ed; only the others are checked.
                let current = || std::fs::metadata(path).map(|m| FileStamp::of(&m));
                if self.seen.contains(key) || current().is_ok_and(|c| c == *stamp) {
                    let (d, i, s, m) = (stamp.dev, stamp.ino, stamp.size, stamp.mtime_ns);
                    writeln!(out, "{d}\t{i}\t{s}\t{m}\t{fp}\t{}", path.display())?;
                }
            }
            Ok(())
        })
    }
}

/// `xxh3:<128-bit hex>` of the file's content.
pub fn fingerprint_file(path: &Path) -> std::io::Result<String> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let hash = if len == 0 {
        xxhash_rust::xxh3::xxh3_128(&[])
    } else {
        // SAFETY: read-only map of a file we only read.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        xxhash_rust::xxh3::xxh3_128(&map)
    };
    Ok(format!("xxh3:{hash:032x}"))
}

/// Inputs fingerprinted, waiting to be kept ([`keep_copies`]): what a patch needs now, and what
/// only a later patch needs, after it.
pub struct Fingerprinted {
    cache: FingerprintCache,
    /// Per input, the metadata read while fingerprinting (`None`: not fingerprinted).
    metas: Vec<Option<std::fs::Metadata>>,
    first_error: Option<String>,
}

/// Fingerprints every input (a patch of a running process diffs by them). Keeping copies is left
/// to [`keep_copies`], which the caller runs once patches are delivered: only a later patch,
/// against this build, reads the copies.
pub fn fingerprint(inputs: &mut [Input], dir: &IpbpDir) -> Fingerprinted {
    let mut cache = FingerprintCache::load(dir);
    let mut first_error = None;
    let mut metas = Vec::with_capacity(inputs.len());
    for input in inputs.iter_mut() {
        let mut meta = None;
        if input.kind != InputKind::Library {
            match cache.fingerprint(&input.path) {
                Ok((fp, m)) => {
                    input.fingerprint = Some(fp);
                    meta = Some(m);
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| {
                        format!("cannot read link input {}: {e}", input.path.display())
                    });
                }
            }
        }
        metas.push(meta);
    }
    Fingerprinted { cache, metas, first_error }
}

/// Keeps a copy of every fingerprinted input that can change under us (objects and archives) and
/// saves the fingerprint cache. Returns the first problem met, fingerprinting's included (the
/// caller turns it into one warning); inputs already handled keep their copies.
pub fn keep_copies(inputs: &mut [Input], fingerprinted: Fingerprinted, dir: &IpbpDir) -> Result<(), String> {
    let Fingerprinted { cache, metas, mut first_error } = fingerprinted;
    let store = dir.store();
    let mut store_ready = false;
    for (input, meta) in inputs.iter_mut().zip(&metas) {
        let (Some(fp), Some(meta)) = (&input.fingerprint, meta) else { continue };
        if !matches!(input.kind, InputKind::Object | InputKind::Archive) {
            continue;
        }
        if !store_ready {
            if let Err(e) = fs_err::create_dir_all(&store) {
                first_error.get_or_insert_with(|| e.to_string());
            }
            store_ready = true;
        }
        match keep(&input.path, meta, fp, &store) {
            Ok(kept) => input.stored = Some(kept),
            Err(e) => {
                first_error
                    .get_or_insert_with(|| format!("cannot keep a copy of {}: {e}", input.path.display()));
            }
        }
    }
    if let Err(e) = cache.save() {
        first_error.get_or_insert_with(|| format!("cannot write {}: {e}", dir.fingerprints().display()));
    }
    first_error.map_or(Ok(()), Err)
}

/// Hardlinks (or, across filesystems, copies) `path` into the store under its fingerprint. In the
/// common case — the entry is this very file, kept by an earlier link — one `stat` of the entry,
/// against the input's metadata `meta` the caller already has. An existing entry has the same
/// content by construction.
fn keep(path: &Path, meta: &std::fs::Metadata, fingerprint: &str, store: &Path) -> std::io::Result<PathBuf> {
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let key = fingerprint.trim_start_matches("xxh3:");
    let dest = store.join(format!("{key}{ext}"));
    match std::fs::symlink_metadata(&dest) {
        Ok(kept) => {
            share_blocks(path, meta, &dest, &kept, store, key);
            return Ok(dest);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match std::fs::hard_link(path, &dest) {
        // AlreadyExists: another link kept it meanwhile; same content.
        Ok(()) => return Ok(dest),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(dest),
        Err(_) => {}
    }
    // Another filesystem (or no hard links): copy, and publish the copy whole.
    let tmp = store.join(format!(".{key}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::fs::copy(path, &tmp)?;
    std::fs::rename(&tmp, &dest)?;
    Ok(dest)
}

/// An entry with this content exists: nothing to do when it is the input itself. Otherwise the
/// input was written again with the same bytes (cargo rebuilt an rlib, identical), and the entry
/// is replaced by a link to the input, so the store shares the target directory's blocks instead
/// of holding a second copy of them once the old file is gone. Only an entry the store alone holds
/// (one link) is replaced: while the old file is still linked elsewhere, replacing frees nothing,
/// and inputs with equal bytes (the empty `libdl.a`, `librt.a`, ...) would take the entry from each
/// other at every link. Best effort: the old entry is as good for a patch.
fn share_blocks(
    path: &Path,
    input: &std::fs::Metadata,
    entry: &Path,
    kept: &std::fs::Metadata,
    store: &Path,
    key: &str,
) {
    use std::os::unix::fs::MetadataExt;
    if (input.dev(), input.ino()) == (kept.dev(), kept.ino()) || input.dev() != kept.dev() || kept.nlink() > 1
    {
        return;
    }
    let tmp = store.join(format!(".{key}.{}.link", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(path, &tmp).is_ok() && std::fs::rename(&tmp, entry).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ipbp-inputs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Rewrites `path` in place with `bytes` (same length) and puts its mtime back: the file has
    /// the stamp the cache knows and other content, so a fingerprint of the old content proves the
    /// file was not read.
    fn change_behind_the_stamp(path: &Path, bytes: &[u8]) {
        let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
        std::fs::write(path, bytes).unwrap();
        std::fs::File::options().write(true).open(path).unwrap().set_modified(mtime).unwrap();
    }

    /// rustc links an object an incremental session reused under a new name each build (same
    /// inode); a cache that kept the first name dropped the entry at the next save, and every other
    /// link hashed all those objects again.
    #[test]
    fn an_unchanged_file_linked_under_a_new_name_each_build_is_never_read_again() {
        let tmp = scratch("renamed");
        let dir = IpbpDir { root: tmp.join("ipbp") };
        let session = |n: u32| tmp.join(format!("app.cgu.s{n}.rcgu.o"));
        std::fs::write(session(1), b"object one").unwrap();
        let mut cache = FingerprintCache::load(&dir);
        let first = cache.fingerprint(&session(1)).unwrap().0;
        cache.save().unwrap();
        for n in 2..=4 {
            std::fs::hard_link(session(n - 1), session(n)).unwrap();
            std::fs::remove_file(session(n - 1)).unwrap();
            // A changed object beside it: this link hashes something, so it saves the cache.
            let changed = tmp.join(format!("changed.s{n}.rcgu.o"));
            std::fs::write(&changed, format!("changed {n}")).unwrap();
            change_behind_the_stamp(&session(n), b"OBJECT ONE");
            let mut cache = FingerprintCache::load(&dir);
            assert_eq!(
                cache.fingerprint(&session(n)).unwrap().0,
                first,
                "link {n} read the unchanged object"
            );
            assert_ne!(cache.fingerprint(&changed).unwrap().0, first);
            cache.save().unwrap();
        }
        let _ = std::fs::remove_dir_all(&tmp);
    }

    /// An input written again with the same bytes takes the store entry over once the old file is
    /// gone (the store then holds no blocks of its own), not while the old file is still linked.
    #[test]
    fn a_store_entry_becomes_a_link_to_an_equal_input_only_when_the_store_alone_holds_it() {
        let tmp = scratch("share");
        let store = tmp.join("store");
        std::fs::create_dir_all(&store).unwrap();
        let (old, new) = (tmp.join("old/libx.rlib"), tmp.join("new/libx.rlib"));
        for p in [&old, &new] {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"same bytes").unwrap();
        }
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let fp = fingerprint_file(&old).unwrap();
        let keep = |p: &Path| keep(p, &std::fs::metadata(p).unwrap(), &fp, &store).unwrap();
        let entry = keep(&old);
        assert_eq!(ino(&entry), ino(&old));
        assert_eq!(keep(&old), entry, "kept again: nothing changes");
        assert_eq!(ino(&entry), ino(&old));
        assert_eq!(keep(&new), entry);
        assert_eq!(ino(&entry), ino(&old), "an entry still linked elsewhere was replaced");
        std::fs::remove_file(&old).unwrap();
        assert_eq!(keep(&new), entry);
        assert_eq!(ino(&entry), ino(&new), "the store kept blocks of its own");
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
