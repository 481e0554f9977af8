//! The workspace being watched: its members and target directory (`cargo metadata`), whether
//! cargo already links through ipbp-ld, and the source files each crate was built from (the
//! dep-info files rustc writes, which list every file a crate read).

use crate::error::{Context, Error};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The target whose linker setting `watch` looks for and sets.
pub const TRIPLE: &str = "x86_64-unknown-linux-gnu";
pub const LINKER_ENV: &str = "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER";

pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
    /// Each member package's directory (holding its `Cargo.toml`).
    pub member_dirs: Vec<PathBuf>,
    /// The crate names of the members' libraries (`my_lib` for `my-lib`).
    pub member_libs: BTreeSet<String>,
}

impl Workspace {
    /// `cargo metadata --no-deps` run in `dir` (with the caller's cargo arguments that pick the
    /// manifest).
    pub fn load(cargo: &Path, manifest: Option<&Path>) -> Result<Workspace, Error> {
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["metadata", "--format-version", "1", "--no-deps"]);
        if let Some(m) = manifest {
            cmd.arg("--manifest-path").arg(m);
        }
        let out = cmd.stderr(std::process::Stdio::inherit()).output().context("cannot run cargo metadata")?;
        if !out.status.success() {
            crate::bail!("cargo metadata failed ({})", out.status);
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("cargo metadata's output")?;
        let path =
            |key: &str| meta[key].as_str().map(PathBuf::from).context(format!("cargo metadata: no {key}"));
        let members: BTreeSet<&str> =
            meta["workspace_members"].as_array().into_iter().flatten().filter_map(|m| m.as_str()).collect();
        let packages: Vec<&serde_json::Value> = meta["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["id"].as_str().is_some_and(|id| members.contains(id)))
            .collect();
        let member_dirs = packages
            .iter()
            .filter_map(|p| Path::new(p["manifest_path"].as_str()?).parent().map(Path::to_path_buf))
            .collect();
        let member_libs = packages
            .iter()
            .flat_map(|p| p["targets"].as_array().into_iter().flatten())
            .filter(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k != "bin" && k != "test")))
            .filter_map(|t| Some(t["name"].as_str()?.replace('-', "_")))
            .collect();
        Ok(Workspace {
            root: path("workspace_root")?,
            target_dir: path("target_directory")?,
            member_dirs,
            member_libs,
        })
    }

    pub fn is_member_dir(&self, dir: &Path) -> bool {
        self.member_dirs.iter().any(|d| d == dir)
    }

    /// Whether `path` lies in a member package (and not in the target directory).
    pub fn owns(&self, path: &Path) -> bool {
        !path.starts_with(&self.target_dir) && self.member_dirs.iter().any(|d| path.starts_with(d))
    }

    /// Where `watch` keeps the rustc commands it recorded.
    pub fn record_dir(&self) -> PathBuf {
        self.target_dir.join("ipbp").join("watch")
    }

    /// The log every status line of the shim is appended to.
    pub fn status_log(&self) -> PathBuf {
        self.target_dir.join("ipbp").join("ipbp.log")
    }
}

/// Whether cargo's configuration (the environment, or a `[target.x86_64-unknown-linux-gnu]`
/// `linker` in a `.cargo/config.toml` from `dir` up, or in `$CARGO_HOME`) already names a linker.
pub fn linker_configured(dir: &Path) -> bool {
    if std::env::var_os(LINKER_ENV).is_some() {
        return true;
    }
    let mut files = Vec::new();
    for d in dir.ancestors() {
        files.push(d.join(".cargo/config.toml"));
        files.push(d.join(".cargo/config"));
    }
    if let Some(home) = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
    {
        files.push(home.join("config.toml"));
        files.push(home.join("config"));
    }
    files.iter().filter_map(|f| std::fs::read_to_string(f).ok()).any(|text| names_linker(&text))
}

/// A small reading of TOML, enough for `[target.<triple>]` + `linker = …` and the dotted
/// `target.<triple>.linker = …`.
fn names_linker(text: &str) -> bool {
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').replace(['"', '\'', ' '], "");
            continue;
        }
        let Some((key, _)) = line.split_once('=') else { continue };
        let key = format!("{section}.{}", key.trim().replace(['"', '\''], ""));
        if key.trim_start_matches('.') == format!("target.{TRIPLE}.linker") {
            return true;
        }
    }
    false
}

/// The files a dep-info file (`<crate>.d`) lists as the crate's inputs, absolute.
pub fn dep_info_sources(dep_info: &Path, cwd: &Path) -> Option<Vec<PathBuf>> {
    let text = std::fs::read_to_string(dep_info).ok()?;
    let first = text.lines().find(|l| !l.starts_with('#') && l.contains(": "))?;
    let (_, deps) = first.split_once(": ")?;
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = deps.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => {
                current.push(' ');
                chars.next();
            }
            ' ' => {
                if !current.is_empty() {
                    out.push(cwd.join(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(cwd.join(current));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_linker_setting() {
        assert!(names_linker("[target.x86_64-unknown-linux-gnu]\nlinker = \"ipbp-ld\"\n"));
        assert!(names_linker("[target.\"x86_64-unknown-linux-gnu\"]\nlinker=\"/x/ipbp-ld\"\n"));
        assert!(names_linker("target.x86_64-unknown-linux-gnu.linker = \"ipbp-ld\"\n"));
        assert!(!names_linker("[target.aarch64-unknown-linux-gnu]\nlinker = \"x\"\n"));
        assert!(!names_linker("[build]\nrustflags = []\n"));
    }

    #[test]
    fn reads_dep_info() {
        let dir = std::env::temp_dir().join(format!("ipbp-depinfo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.join("a.d");
        std::fs::write(&d, "/t/deps/a-1.d: src/main.rs src/my\\ mod.rs /abs/x.rs\n\nsrc/main.rs:\n").unwrap();
        let got = dep_info_sources(&d, Path::new("/ws")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(got, [PathBuf::from("/ws/src/main.rs"), "/ws/src/my mod.rs".into(), "/abs/x.rs".into()]);
    }
}
