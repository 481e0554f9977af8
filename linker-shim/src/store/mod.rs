//! Where ipbp keeps what it records, under the build's target directory — a leaf that capture,
//! map and the drivers share, so that none of them reaches into another for a path:
//!
//! ```text
//! <target>/ipbp/
//!   maps/<output-name>/<build-id>.inputs  the output and its link inputs, one per line (for patch
//!                                         diffs, GC and maps)
//!   maps/<output-name>/<build-id>.index   the link index (programs linking the runtime)
//!   maps/<output-name>/<build-id>.json    the symbol map, written when first asked for
//!   maps/<output-name>/latest.json        symlink to the newest map written of that output
//!   maps/<output-name>/.lock              held while a build of that output is being recorded
//!   store/<fingerprint>.<ext>             kept link inputs, content-addressed (hardlinks)
//!   store/.lock                           shared by links keeping inputs, exclusive for a sweep
//!   store/.sweep                          a sweep was put off while links were keeping inputs
//!   fingerprints.tsv                      content-hash cache keyed by inode, size and mtime
//!   patches/<pid>-<start>/                patches built for one running process
//!   debug/.build-id/<xx>/<rest>.debug     each recorded build's executable, by build id (a hardlink:
//!                                         debuggers find the build a process started from after
//!                                         cargo replaced it; collected with the build)
//!   ipbp.log                              every status line the shim printed
//! ```
//!
//! `<target>` is the nearest ancestor of the output holding cargo's `CACHEDIR.TAG`; programs linking
//! the runtime outside a cargo target directory use `<output dir>/.ipbp/` (other outputs there are
//! not recorded at all).

pub mod inputs;

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpbpDir {
    pub root: PathBuf,
}

impl IpbpDir {
    pub fn for_output(output: &Path) -> IpbpDir {
        let dir = output.parent().unwrap_or(Path::new("."));
        match cargo_target_of(output) {
            Some(t) => IpbpDir { root: t.join("ipbp") },
            None => IpbpDir { root: dir.join(".ipbp") },
        }
    }

    pub fn map_dir(&self, output_name: &str) -> PathBuf {
        self.root.join("maps").join(output_name)
    }

    pub fn map_path(&self, output_name: &str, build_id: &str) -> PathBuf {
        self.map_dir(output_name).join(format!("{build_id}.json"))
    }

    pub fn inputs_path(&self, output_name: &str, build_id: &str) -> PathBuf {
        self.map_dir(output_name).join(format!("{build_id}.inputs"))
    }

    pub fn index_path(&self, output_name: &str, build_id: &str) -> PathBuf {
        index_path_in(&self.map_dir(output_name), build_id)
    }

    pub fn latest(&self, output_name: &str) -> PathBuf {
        self.map_dir(output_name).join("latest.json")
    }

    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    pub fn store_lock(&self) -> PathBuf {
        self.store().join(".lock")
    }

    pub fn sweep_wanted(&self) -> PathBuf {
        self.store().join(".sweep")
    }

    pub fn fingerprints(&self) -> PathBuf {
        self.root.join("fingerprints.tsv")
    }

    /// What each unit's debug info describes, by the unit's content hash (`layout::cache`).
    pub fn layouts(&self) -> PathBuf {
        self.root.join("layouts")
    }

    pub fn patches(&self) -> PathBuf {
        self.root.join("patches")
    }

    /// The patches of one process and what is recorded about them (`<pid>-<start time>`: a pid
    /// reused by another process names another directory).
    pub fn process_patches(&self, pid: u32, start_time: u64) -> PathBuf {
        self.patches().join(format!("{pid}-{start_time}"))
    }

    /// A debug-file directory (gdb's `debug-file-directory`) holding [`IpbpDir::executable`].
    pub fn debug_files(&self) -> PathBuf {
        self.root.join("debug")
    }

    /// gdb's command file for stepping into patched functions (`map::started::GDB_SCRIPT`).
    pub fn gdb_script(&self) -> PathBuf {
        self.debug_files().join("ipbp.gdb")
    }

    /// lldb's Python module for the same (`map::started::LLDB_SCRIPT`).
    pub fn lldb_script(&self) -> PathBuf {
        self.debug_files().join("ipbp_lldb.py")
    }

    /// The executable of build `build_id`, kept by its build id as debuggers look files up.
    pub fn executable(&self, build_id: &str) -> PathBuf {
        let (head, rest) = build_id.split_at(build_id.len().min(2));
        self.debug_files().join(".build-id").join(head).join(format!("{rest}.debug"))
    }

    pub fn log(&self) -> PathBuf {
        self.root.join("ipbp.log")
    }
}

/// `maps/<output>/<build-id>.index`: the link index beside the build's input list.
pub fn index_path_in(map_dir: &Path, build_id: &str) -> PathBuf {
    map_dir.join(format!("{build_id}.index"))
}

/// The cargo target directory holding `output`: its nearest ancestor with cargo's `CACHEDIR.TAG`.
pub fn cargo_target_of(output: &Path) -> Option<&Path> {
    let dir = output.parent()?;
    dir.ancestors().take(6).find(|d| d.join("CACHEDIR.TAG").is_file())
}

/// A link's share of `store/.lock`, held from before it keeps its first input until its input list
/// is written: the collector only deletes unlisted store entries while no link holds a share, so
/// an entry just kept (or found already there) is never swept before its list names it.
pub struct StoreLease {
    _file: Option<std::fs::File>,
}

impl StoreLease {
    /// Takes a share (waiting for a sweep in progress). Without one — the store cannot be created,
    /// which keeping inputs reports — the link goes on.
    pub fn take(dir: &IpbpDir) -> StoreLease {
        use std::os::fd::AsRawFd;
        let file = std::fs::create_dir_all(dir.store()).ok().and_then(|()| {
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.store_lock()).ok()
        });
        // SAFETY: flock on a descriptor we own.
        let file = file.filter(|f| unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH) } == 0);
        StoreLease { _file: file }
    }
}

/// The file name that keys an output's maps (`app-1f2e3d4c5b6a7980`).
pub fn output_name(output: &Path) -> String {
    output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "a.out".into())
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see half a file.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs_err::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let file = fs_err::File::create(&tmp)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
        write(&mut out)?;
        std::io::Write::flush(&mut out)?;
        fs_err::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Points `link` at `target` (a name in the same directory), replacing any older link atomically.
pub fn replace_symlink(target: &str, link: &Path) -> std::io::Result<()> {
    let tmp = link.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}
