//! ipbp-ld on a real application: `testdata/fullapp` (build script, proc-macro, C code through the
//! `cc` crate, tests, release profile) built with cargo through the shim and with the plain linker.
//!
//! Builds are the expensive part, so each configuration is built once per run and shared by the
//! tests that look at it (the fixtures below). A fixture never panics on a failed build: it keeps
//! the run, and every test that needs it fails with cargo's full output.
//!
//! - [`linking`]: the programs and test suites behave the same with and without ipbp-ld, every kind
//!   of link goes through it, and its output is byte-identical to the plain linker's.
//! - [`maps`]: the recorded map against the binary itself and against the running program.
//! - [`cli`]: `ipbp-ld symbols`, `map`, `diff`, `--help` and `--version`.

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod linking;
mod maps;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use support::{both, copy_file, logging_linker, Linker, Project, Run};

/// A debug build of fullapp followed by `cargo test`, in one configuration.
pub struct DebugBuild {
    pub project: Project,
    pub linker: Linker,
    pub build: Run,
    pub test: Run,
    /// The log of the logging `IPBP_LINKER` (shim configuration only).
    pub link_log: Option<PathBuf>,
}

impl DebugBuild {
    pub fn target(&self) -> PathBuf {
        self.project.target(config_name(self.linker))
    }

    /// `target/debug/fullapp`, after checking that the build succeeded.
    #[track_caller]
    pub fn binary(&self) -> PathBuf {
        self.build.assert_success();
        self.target().join("debug/fullapp")
    }
}

/// The TMPDIR of a debug build's `cargo test`.
pub fn temp_dir_of(project: &Project) -> PathBuf {
    project.root().join("tmp")
}

fn config_name(linker: Linker) -> &'static str {
    match linker {
        Linker::Plain => "plain",
        Linker::Shim => "shim",
        Linker::ShimConfig => "shim-config",
    }
}

fn debug_build(linker: Linker) -> DebugBuild {
    let project = Project::copy_of("fullapp");
    let config = config_name(linker);
    // Through the shim, the real linker logs every link, to show which ones went through ipbp-ld.
    let logging = (linker == Linker::Shim).then(|| logging_linker(project.root()));
    let cargo = |args: &[&str]| {
        let cmd = project.cargo(linker, config, args);
        match &logging {
            Some((script, _)) => cmd.env("IPBP_LINKER", script),
            None => cmd,
        }
    };
    let build = cargo(&["build", "--locked"]).run();
    // rustdoc links each doctest in a temporary directory of its own under TMPDIR, and deletes it.
    let tmp = temp_dir_of(&project);
    std::fs::create_dir_all(&tmp).unwrap();
    let test = cargo(&["test", "--locked", "--no-fail-fast"]).env("TMPDIR", &tmp).run();
    let link_log = logging.map(|(_, log)| log);
    DebugBuild { project, linker, build, test, link_log }
}

/// fullapp in the debug profile, built and tested through ipbp-ld and with the plain linker
/// (both at once, on separate target dirs).
pub fn debug_builds() -> &'static (DebugBuild, DebugBuild) {
    static BUILDS: OnceLock<(DebugBuild, DebugBuild)> = OnceLock::new();
    BUILDS.get_or_init(|| both(|| debug_build(Linker::Shim), || debug_build(Linker::Plain)))
}

pub fn shim_debug() -> &'static DebugBuild {
    &debug_builds().0
}

pub fn plain_debug() -> &'static DebugBuild {
    &debug_builds().1
}

/// One project built first with the plain linker, then (same sources, same target dir) through
/// ipbp-ld, then through ipbp-ld again after `fullapp::checksum` was edited.
pub struct EditedBuild {
    pub project: Project,
    pub plain: Run,
    pub shim: Run,
    pub edited: Run,
    /// Copies of `target/debug/fullapp` after each build, in the target directory (where
    /// `ipbp-ld map` finds the builds of a program that is not in the registry).
    pub plain_bin: PathBuf,
    pub v1_bin: PathBuf,
    pub v2_bin: PathBuf,
}

/// The line in `fullapp::checksum` that the edit replaces, and what it becomes.
pub const EDIT_MARKER: &str = "// ipbp-test: edit here";
pub const EDIT: &str = "sum = sum.wrapping_mul(31).wrapping_add(data.len() as u32) ^ 0x5a5a_5a5a;";

pub fn edited_build() -> &'static EditedBuild {
    static BUILD: OnceLock<EditedBuild> = OnceLock::new();
    BUILD.get_or_init(|| {
        let project = Project::copy_of("fullapp");
        let bin = project.target("edit").join("debug/fullapp");
        let keep = |run: &Run, name: &str| {
            let copy = project.target("edit").join(name);
            if run.success() {
                copy_file(&bin, &copy);
            }
            copy
        };
        let plain = project.cargo(Linker::Plain, "edit", &["build", "--locked"]).run();
        let plain_bin = keep(&plain, "fullapp.plain");
        project.touch("src/main.rs");
        let shim = project.cargo(Linker::Shim, "edit", &["build", "--locked"]).run();
        let v1_bin = keep(&shim, "fullapp.v1");
        let lib = project.read("src/lib.rs");
        assert!(lib.contains(EDIT_MARKER), "testdata/fullapp/src/lib.rs lost its edit marker");
        project.write("src/lib.rs", &lib.replace(EDIT_MARKER, EDIT));
        let edited = project.cargo(Linker::Shim, "edit", &["build", "--locked"]).run();
        let v2_bin = keep(&edited, "fullapp.v2");
        EditedBuild { project, plain, shim, edited, plain_bin, v1_bin, v2_bin }
    })
}

/// The recorded map of a binary, found with `ipbp-ld map` (which must succeed).
#[track_caller]
pub fn recorded_map_path(project: &Project, binary: &Path) -> PathBuf {
    let run = project.ipbp_ld(&[support::arg("map"), support::arg(binary)]);
    run.assert_success();
    let path = PathBuf::from(run.stdout.trim_end());
    assert!(path.is_file(), "`ipbp-ld map` printed {}, which is not a file: {run}", path.display());
    path
}
