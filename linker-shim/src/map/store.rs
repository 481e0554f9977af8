//! Where ipbp keeps what it records, under the build's target directory:
//!
//! ```text
//! <target>/ipbp/
//!   maps/<output-name>/<build-id>.json    the symbol map of one link
//!   maps/<output-name>/<build-id>.inputs  its link inputs, one per line (for patch diffs and GC)
//!   maps/<output-name>/latest.json        symlink to the newest map of that output
//!   store/<fingerprint>.<ext>             kept link inputs, content-addressed (hardlinks)
//!   fingerprints.tsv                      content-hash cache keyed by inode, size and mtime
//!   patches/<pid>-<start>/                patches built for one running process
//!   ipbp.log                              every status line the shim printed
//! ```
//!
//! `<target>` is the nearest ancestor of the output holding cargo's `CACHEDIR.TAG`; outputs outside a
//! cargo target directory use `<output dir>/.ipbp/`.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpbpDir {
    pub root: PathBuf,
}

impl IpbpDir {
    pub fn for_output(output: &Path) -> IpbpDir {
        let dir = output.parent().unwrap_or(Path::new("."));
        let target = dir.ancestors().take(6).find(|d| d.join("CACHEDIR.TAG").is_file());
        match target {
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

    pub fn latest(&self, output_name: &str) -> PathBuf {
        self.map_dir(output_name).join("latest.json")
    }

    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    pub fn fingerprints(&self) -> PathBuf {
        self.root.join("fingerprints.tsv")
    }

    pub fn patches(&self) -> PathBuf {
        self.root.join("patches")
    }

    pub fn log(&self) -> PathBuf {
        self.root.join("ipbp.log")
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
