//! What each unit's debug info describes, kept on disk by the unit's content hash, so the guard
//! reads DWARF only of units it has not seen before.
//!
//! Patches are made against the build a process started from, so the changed units of the tenth
//! patch are those of every edit since then: without this, each patch re-read all of them (on a
//! program with 487 units, after a few edits of a template, 82 units on each side: most of a
//! second). A unit's content hash ([`crate::objects::units::WorkUnit::hash`]) names exactly the
//! bytes its model was read from, so a model kept under it is the model the DWARF would give; the
//! guard's cost then follows the units this edit changed.
//!
//! The files live in `<target>/ipbp/layouts/<hash>.model`, one per unit, in a compact binary form
//! (a string table, then the records by string number; a few tens of KiB a unit). The directory
//! is bounded: when it grows past [`MAX_FILES`] files or [`MAX_BYTES`], the least recently used
//! files go (reading a model marks it used). A file that cannot be read or decoded is ignored and
//! the unit's DWARF read again; writing is best effort (a temporary file renamed into place), so a
//! full disk costs time, never a wrong answer.

use super::model::{ClosureFn, Field, FnRec, Kind, Model, StaticRec, TypeRec, Variant};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// At most this many unit models are kept.
pub const MAX_FILES: usize = 4096;
/// At most this many bytes of unit models are kept.
pub const MAX_BYTES: u64 = 256 << 20;

/// The encoding and what a model holds: change it with either.
const MAGIC: &[u8; 8] = b"ipbplay4";

/// The unit model directory of a target directory's ipbp state (`None`: no cache).
#[derive(Debug, Clone, Default)]
pub struct Cache {
    dir: Option<PathBuf>,
    /// A hash of the encoding, ipbp-ld's version and the workspace's crate names.
    crates: u64,
}

impl Cache {
    pub fn at(dir: PathBuf) -> Cache {
        Cache { dir: Some(dir), crates: 0 }
    }

    pub fn none() -> Cache {
        Cache { dir: None, crates: 0 }
    }

    /// The same cache, for models kept for a workspace of these crates by this version of
    /// ipbp-ld (a model's content follows `dwarf` and `model`: [`MAGIC`] names the encoding and
    /// changes with what a model holds).
    pub fn for_crates<S: AsRef<str>>(&self, crates: &[S]) -> Cache {
        let names: Vec<&str> = crates.iter().map(AsRef::as_ref).collect();
        let key = format!(
            "{}\n{}\n{}",
            String::from_utf8_lossy(MAGIC),
            env!("CARGO_PKG_VERSION"),
            names.join("\n")
        );
        let crates = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
        Cache { dir: self.dir.clone(), crates }
    }

    fn path(&self, hash: u128) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{hash:032x}-{:08x}.model", self.crates as u32)))
    }

    /// The model kept for the unit with content hash `hash`, and how many types it describes.
    #[cfg(test)]
    pub fn load(&self, hash: u128) -> Option<(Model, usize)> {
        let mut m = Model::default();
        let described = self.load_into(hash, &mut m)?;
        Some((m, described))
    }

    /// Adds the model kept for the unit with content hash `hash` to `model` ([`decode_into`]);
    /// returns how many types the unit describes. `None`: nothing usable is kept, and `model` may
    /// have received part of a damaged file's records, each whole.
    pub fn load_into(&self, hash: u128, model: &mut Model) -> Option<usize> {
        let path = self.path(hash)?;
        use std::io::Read as _;
        let mut file = std::fs::File::open(&path).ok()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok()?;
        // Marks it used, for the bound; failing to is harmless.
        let _ = file.set_modified(std::time::SystemTime::now());
        decode_into(&bytes, model)
    }

    /// Keeps `model` (what the unit with content hash `hash` describes) at once. Best effort.
    pub fn save(&self, hash: u128, model: &Model, described: usize) {
        self.write(hash, &encode(model, described));
        self.bound();
    }

    /// Writes an encoded unit model ([`encode`]). Best effort: a temporary file, named for this
    /// process, renamed into place, so a reader (another ipbp-ld patching another process) finds
    /// no file or a whole one.
    fn write(&self, hash: u128, bytes: &[u8]) {
        let (Some(dir), Some(path)) = (self.dir.as_ref(), self.path(hash)) else { return };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let tmp = dir.join(format!(".{hash:032x}.{}.tmp", std::process::id()));
        if std::fs::write(&tmp, bytes).is_err() || std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// Keeps unit models, encoded by the caller ([`encode`]: `(content hash, bytes)`), then bounds
    /// the directory — on a thread of its own, because creating files waits on the file system
    /// (a millisecond on a busy disk) while nothing in this patch reads them: the patch goes on,
    /// and the returned [`Writes`] waits for the thread when dropped, so the process never leaves
    /// a file half written. Written here when no thread can be started.
    pub fn write_later(&self, models: Vec<(u128, Vec<u8>)>) -> Writes {
        if models.is_empty() || self.dir.is_none() {
            return Writes::default();
        }
        let cache = self.clone();
        let models = std::sync::Arc::new(models);
        let work = {
            let (cache, models) = (cache.clone(), models.clone());
            move || {
                for (hash, bytes) in models.iter() {
                    cache.write(*hash, bytes);
                }
                cache.bound();
            }
        };
        match std::thread::Builder::new().name("ipbp-layouts".into()).spawn(work) {
            Ok(thread) => Writes { thread: Some(thread) },
            Err(_) => {
                for (hash, bytes) in models.iter() {
                    cache.write(*hash, bytes);
                }
                cache.bound();
                Writes::default()
            }
        }
    }

    /// Removes the least recently used models while the directory holds more than the bounds.
    /// Called once per patch that wrote models.
    pub fn bound(&self) {
        let Some(dir) = &self.dir else { return };
        bound(dir, MAX_FILES, MAX_BYTES);
    }
}

/// Unit models being written ([`Cache::write_later`]): dropping it waits until they are.
#[derive(Debug, Default)]
pub struct Writes {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writes {
    /// Waits until the models are written.
    pub fn wait(&mut self) {
        if let Some(thread) = self.thread.take() {
            // The thread only writes files; a panic there leaves at most a temporary file.
            let _ = thread.join();
        }
    }
}

impl Drop for Writes {
    fn drop(&mut self) {
        self.wait();
    }
}

fn bound(dir: &Path, max_files: usize, max_bytes: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".model"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    let mut bytes: u64 = files.iter().map(|f| f.1).sum();
    if files.len() <= max_files && bytes <= max_bytes {
        return;
    }
    files.sort();
    let mut left = files.len();
    for (_, len, path) in files {
        if left <= max_files && bytes <= max_bytes {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            left -= 1;
            bytes -= len;
        }
    }
}

// The encoding: little-endian integers; strings by number in a table written first.

/// Strings are numbered by a map of the model's own strings (nothing copied), hashed with xxh3.
struct Writer<'m> {
    strings: HashMap<&'m str, u32, super::model::Names>,
    table: Vec<u8>,
    body: Vec<u8>,
}

impl<'m> Writer<'m> {
    fn u8(&mut self, v: u8) {
        self.body.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.body.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.body.extend_from_slice(&v.to_le_bytes());
    }
    fn opt(&mut self, v: Option<u64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
            None => self.u8(0),
        }
    }
    fn str(&mut self, s: &'m str) {
        let next = self.strings.len() as u32;
        let id = *self.strings.entry(s).or_insert_with(|| {
            self.table.extend_from_slice(&(s.len() as u32).to_le_bytes());
            self.table.extend_from_slice(s.as_bytes());
            next
        });
        self.u32(id);
    }
    fn strs(&mut self, v: &'m [String]) {
        self.u32(v.len() as u32);
        for s in v {
            self.str(s);
        }
    }
    fn field(&mut self, f: &'m Field) {
        self.str(&f.name);
        self.u64(f.offset);
        self.str(&f.ty);
    }
    fn fields(&mut self, v: &'m [Field]) {
        self.u32(v.len() as u32);
        for f in v {
            self.field(f);
        }
    }
}

fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::Struct => 0,
        Kind::Enum => 1,
        Kind::CEnum => 2,
        Kind::Union => 3,
        Kind::Other => 4,
    }
}

/// The bytes of a unit model file.
pub fn encode(m: &Model, described: usize) -> Vec<u8> {
    // About two distinct strings a type, three a function (their names, field names, paths).
    let strings = HashMap::with_capacity_and_hasher(
        2 * m.types.len() + 3 * m.functions.len(),
        super::model::Names::default(),
    );
    let mut w = Writer { strings, table: Vec::new(), body: Vec::with_capacity(64 << 10) };
    w.u64(described as u64);
    w.u32(m.types.len() as u32);
    for (name, t) in &m.types {
        w.str(name);
        w.u8(kind_code(t.kind));
        w.opt(t.size);
        w.opt(t.align);
        w.fields(&t.fields);
        match &t.tag {
            Some(f) => {
                w.u8(1);
                w.field(f);
            }
            None => w.u8(0),
        }
        w.u32(t.variants.len() as u32);
        for v in &t.variants {
            w.str(&v.name);
            w.opt(v.discr);
            w.fields(&v.fields);
        }
        w.u32(t.edges.len() as u32);
        for (to, owned) in &t.edges {
            w.str(to);
            w.u8(*owned as u8);
        }
    }
    w.u32(m.statics.len() as u32);
    for s in &m.statics {
        w.str(&s.path);
        w.str(&s.ty);
        w.u8(s.tls as u8);
    }
    w.u32(m.functions.len() as u32);
    for f in &m.functions {
        w.str(&f.linkage);
        w.str(&f.path);
        w.strs(&f.params);
        match &f.ret {
            Some(r) => {
                w.u8(1);
                w.str(r);
            }
            None => w.u8(0),
        }
        w.strs(&f.locals);
        w.u8(f.main as u8);
        w.strs(&f.generics);
    }
    w.u32(m.variant_types.len() as u32);
    for s in &m.variant_types {
        w.str(s);
    }
    w.u32(m.vtables.len() as u32);
    for (ty, tr) in &m.vtables {
        w.str(ty);
        w.str(tr);
    }
    w.u32(m.closures.len() as u32);
    for c in &m.closures {
        w.str(&c.path);
        w.str(&c.linkage);
    }
    let mut out = Vec::with_capacity(16 + w.table.len() + w.body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(w.strings.len() as u32).to_le_bytes());
    out.extend_from_slice(&w.table);
    out.extend_from_slice(&w.body);
    out
}

struct Reader<'b> {
    bytes: &'b [u8],
    at: usize,
    /// Each string's bytes, checked as UTF-8 when first used (most belong to skipped types).
    strings: Vec<&'b [u8]>,
    /// Each string once checked (`None`: not yet).
    checked: Vec<Option<&'b str>>,
}

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn opt(&mut self) -> Option<Option<u64>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.u64()?)),
            _ => None,
        }
    }
    fn flag(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    fn string(&mut self, id: usize) -> Option<&'b str> {
        let slot = self.checked.get_mut(id)?;
        if slot.is_none() {
            *slot = Some(std::str::from_utf8(self.strings[id]).ok()?);
        }
        *slot
    }
    fn str(&mut self) -> Option<String> {
        let id = self.u32()? as usize;
        self.string(id).map(str::to_string)
    }
    /// A count, checked against what is left (each item takes at least one byte).
    fn count(&mut self) -> Option<usize> {
        let n = self.u32()? as usize;
        (n <= self.bytes.len() - self.at).then_some(n)
    }
    /// A list of `n` items, allocated once (collecting into an `Option<Vec>` would grow it).
    fn list<T>(&mut self, item: impl Fn(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let n = self.count()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(item(self)?);
        }
        Some(out)
    }
    fn strs(&mut self) -> Option<Vec<String>> {
        self.list(Self::str)
    }
    fn field(&mut self) -> Option<Field> {
        Some(Field { name: self.str()?, offset: self.u64()?, ty: self.str()? })
    }
    /// Past one type's record (after its name), building nothing.
    fn skip_type(&mut self) -> Option<()> {
        self.u8()?;
        self.opt()?;
        self.opt()?;
        let skip_fields = |r: &mut Self| -> Option<()> {
            let n = r.count()?;
            r.take(n.checked_mul(16)?).map(|_| ())
        };
        skip_fields(self)?;
        if self.flag()? {
            self.take(16)?;
        }
        for _ in 0..self.count()? {
            self.u32()?;
            self.opt()?;
            skip_fields(self)?;
        }
        let n = self.count()?;
        self.take(n.checked_mul(5)?).map(|_| ())
    }

    fn fields(&mut self) -> Option<Vec<Field>> {
        self.list(Self::field)
    }
}

/// A unit model file's model and count of described types; `None` if it is not one.
#[cfg(test)]
pub fn decode(bytes: &[u8]) -> Option<(Model, usize)> {
    let mut m = Model::default();
    let described = decode_into(bytes, &mut m)?;
    Some((m, described))
}

/// Adds a unit model file's model to `m` as [`Model::absorb`] would, without building the
/// records of types `m` has already (most of a unit's types are described by the others too).
/// Returns the count of described types; `None` if it is not a unit model file (then `m` may have
/// part of it: the caller reads the unit's DWARF into a fresh model instead).
pub fn decode_into(bytes: &[u8], m: &mut Model) -> Option<usize> {
    let mut r = Reader {
        bytes: bytes.strip_prefix(MAGIC.as_slice())?,
        at: 0,
        strings: Vec::new(),
        checked: Vec::new(),
    };
    let n = r.count()?;
    r.strings.reserve(n);
    for _ in 0..n {
        let len = r.u32()? as usize;
        let s = r.take(len)?;
        r.strings.push(s);
    }
    r.checked = vec![None; n];
    let described = r.u64()? as usize;
    let n = r.count()?;
    // The table at its final size at once when it is this unit's alone (a side's first unit):
    // grown by doubling, each larger table is new memory and every record is moved again.
    if m.types.is_empty() {
        m.types.reserve(n);
    }
    for _ in 0..n {
        let id = r.u32()? as usize;
        let name = r.string(id)?;
        if m.types.contains_key(name) {
            r.skip_type()?;
            continue;
        }
        let name = name.to_string();
        let kind = match r.u8()? {
            0 => Kind::Struct,
            1 => Kind::Enum,
            2 => Kind::CEnum,
            3 => Kind::Union,
            4 => Kind::Other,
            _ => return None,
        };
        let (size, align, fields) = (r.opt()?, r.opt()?, r.fields()?);
        let tag = if r.flag()? { Some(r.field()?) } else { None };
        let variants = r.list(|r| Some(Variant { name: r.str()?, discr: r.opt()?, fields: r.fields()? }))?;
        let edges = r.list(|r| Some((r.str()?, r.flag()?)))?;
        m.types.insert(name, TypeRec { kind, size, align, fields, tag, variants, edges });
    }
    let n = r.count()?;
    for _ in 0..n {
        m.statics.push(StaticRec { path: r.str()?, ty: r.str()?, tls: r.flag()? });
    }
    let n = r.count()?;
    for _ in 0..n {
        let (linkage, path, params) = (r.str()?, r.str()?, r.strs()?);
        let ret = if r.flag()? { Some(r.str()?) } else { None };
        let (locals, main, generics) = (r.strs()?, r.flag()?, r.strs()?);
        m.functions.push(FnRec { linkage, path, params, ret, locals, main, generics });
    }
    m.variant_types.extend(r.strs()?);
    let n = r.count()?;
    for _ in 0..n {
        m.vtables.push((r.str()?, r.str()?));
    }
    let n = r.count()?;
    for _ in 0..n {
        m.closures.push(ClosureFn { path: r.str()?, linkage: r.str()? });
    }
    (r.at == r.bytes.len()).then_some(described)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Model {
        let mut m = Model::default();
        let f = |n: &str, o, t: &str| Field { name: n.into(), offset: o, ty: t.into() };
        m.types.insert(
            "app::Shape".into(),
            TypeRec {
                kind: Kind::Enum,
                size: Some(12),
                align: None,
                fields: vec![],
                tag: Some(f("tag", 0, "u32")),
                variants: vec![Variant {
                    name: "Line".into(),
                    discr: Some(1),
                    fields: vec![f("__0", 4, "u32")],
                }],
                edges: vec![("u32".into(), true), ("&app::Shape".into(), false)],
            },
        );
        m.statics.push(StaticRec { path: "app::S".into(), ty: "app::Shape".into(), tls: true });
        m.functions.push(FnRec {
            linkage: "_ZN3app4main17hE".into(),
            path: "app::main".into(),
            params: vec![],
            ret: Some("u32".into()),
            locals: vec!["app::Shape".into(), "u32".into()],
            main: true,
            generics: vec!["app::Shape".into()],
        });
        m.variant_types.insert("app::Shape::Line".into());
        m.vtables.push(("app::Shape".into(), "core::fmt::Debug".into()));
        m.closures
            .push(ClosureFn { path: "app::main::{closure#0}".into(), linkage: "_ZN3app4main28_c".into() });
        m
    }

    #[test]
    fn a_unit_model_survives_the_round_trip_and_garbage_is_refused() {
        let m = sample();
        let bytes = encode(&m, 3);
        let (back, described) = decode(&bytes).expect("decodes");
        assert_eq!(described, 3);
        assert_eq!(format!("{:?}", back.types["app::Shape"]), format!("{:?}", m.types["app::Shape"]));
        assert_eq!(back.functions[0].locals, m.functions[0].locals);
        assert_eq!(back.functions[0].generics, m.functions[0].generics);
        assert_eq!(back.functions[0].ret, m.functions[0].ret);
        assert!(back.functions[0].main && back.statics[0].tls);
        assert_eq!(
            (back.variant_types, back.vtables, back.closures),
            (m.variant_types, m.vtables, m.closures)
        );
        for cut in [0, 8, 20, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_none(), "a file cut at {cut} decoded");
        }
        let mut bad = bytes.clone();
        bad[12] ^= 0xff;
        let _ = decode(&bad); // must not panic
    }

    #[test]
    fn the_cache_keeps_models_by_hash_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path().join("layouts"));
        assert!(cache.load(7).is_none());
        cache.save(7, &sample(), 1);
        assert!(cache.load(7).is_some_and(|(m, _)| m.types.contains_key("app::Shape")));
        for h in 0..5u128 {
            cache.save(100 + h, &sample(), 1);
        }
        // The model read last is kept; the oldest others go first.
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(cache.load(7).is_some());
        bound(&dir.path().join("layouts"), 3, u64::MAX);
        let left = std::fs::read_dir(dir.path().join("layouts")).unwrap().count();
        assert_eq!(left, 3);
        assert!(cache.load(7).is_some());
        assert!(Cache::none().load(7).is_none());
        // Written on their own thread: there once the writes are dropped, with nothing left over.
        let writes = cache.write_later(vec![(200, encode(&sample(), 2)), (201, encode(&sample(), 3))]);
        drop(writes);
        assert_eq!(cache.load(201).map(|(_, described)| described), Some(3));
        assert!(cache.load(200).is_some());
        let names: Vec<String> = std::fs::read_dir(dir.path().join("layouts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| n.ends_with(".model")), "{names:?}");
    }
}
