//! Capturing the counter's real link: a `cargo build` through ipbp-ld whose real linker is a
//! script that records rustc's command line (its parent ipbp-ld's argv), the `cc` command ipbp-ld
//! forwarded, the working directory and a copy of every object (rustc deletes its objects after
//! the link), then links with `cc`. Tests replay or mutate the captured link.

use super::live::CONFIG;
use super::{Linker, Project};
use std::path::{Path, PathBuf};

/// The counter's link as captured in `dir`.
pub struct CapturedLink {
    /// The linker's working directory.
    pub cwd: PathBuf,
    /// rustc's ld-style arguments to ipbp-ld (without ipbp-ld's own path).
    pub ld: Vec<String>,
    /// The `cc` command ipbp-ld forwarded for them: the plain link.
    pub cc: Vec<String>,
    /// Where the copies of the link's objects are (`dir/objects`).
    pub objects: PathBuf,
}

/// Builds the project as it is now, capturing the counter's link into `dir`; the build notes
/// itself in the registry `home`.
pub fn counter_link(project: &Project, dir: &Path, home: &Path) -> CapturedLink {
    use std::os::unix::fs::PermissionsExt;
    let objects = dir.join("objects");
    std::fs::create_dir_all(&objects).unwrap();
    let script = dir.join("capture-cc");
    let text = format!(
        "#!/bin/sh\n\
         # Test helper: records the counter's link, then links with cc.\n\
         out=; prev=\n\
         for a in \"$@\"; do [ \"$prev\" = -o ] && out=$a; prev=$a; done\n\
         case \"${{out##*/}}\" in\n\
         counter-*)\n\
         \x20 cat /proc/$PPID/cmdline > '{d}/ld.args'\n\
         \x20 printf '%s\\0' \"$@\" > '{d}/cc.args'\n\
         \x20 pwd > '{d}/cwd'\n\
         \x20 for a in \"$@\"; do case \"$a\" in *.o) [ -f \"$a\" ] && cp \"$a\" '{d}/objects/';; esac; done\n\
         \x20 ;;\n\
         esac\n\
         exec cc \"$@\"\n",
        d = dir.display()
    );
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = project
        .cargo(Linker::Shim, CONFIG, &["build"])
        .env("IPBP_LINKER", &script)
        .env("IPBP_HOME", home)
        .run();
    assert!(run.success(), "the capturing build failed: {run}");

    let split = |name: &str| -> Vec<String> {
        let bytes =
            std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("the link was not captured: {e}"));
        bytes
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8(a.to_vec()).unwrap())
            .collect()
    };
    let mut ld = split("ld.args");
    ld.remove(0); // ipbp-ld's own path
    let cc = split("cc.args");
    let cwd = PathBuf::from(std::fs::read_to_string(dir.join("cwd")).unwrap().trim_end());
    CapturedLink { cwd, ld, cc, objects }
}
