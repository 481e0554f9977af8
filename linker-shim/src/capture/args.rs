//! Understanding a link command line, and what the real linker must get.
//!
//! rustc picks its linker *flavor* from the linker's file name, and a name ending in `-ld` means
//! "a bare GNU ld". So with `linker = "ipbp-ld"` rustc passes ld-style arguments (`--as-needed`,
//! `-Bstatic`, `--eh-frame-hdr`, no `-Wl,`) and leaves out what its default `cc` + bundled lld
//! link adds (`-m64`, `-nodefaultlibs`, `-B<sysroot>/…/gcc-ld -fuse-ld=lld`). Such a command is
//! rebuilt into exactly the `cc` command rustc would have run ([`Flavor::Ld`]). A command that is
//! already `cc`-style (e.g. with `-C linker-flavor=gcc`) is forwarded byte for byte
//! ([`Flavor::Cc`]). Response files (`@path`) are read to understand the command and, for `cc`
//! commands, forwarded intact.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// What the link produces. Only executables are recorded and patched; the rest pass straight through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Executable,
    SharedLibrary,
    Relocatable,
}

/// One link input, in command-line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputArg {
    /// A file named directly: an object, an archive (`.rlib`, `.a`) or a shared library.
    File(PathBuf),
    /// `-lname` / `-l name`, with whether `-Bstatic` was in force at that point.
    Library { name: String, static_only: bool },
}

/// How rustc spoke to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `cc`-style: forwarded unchanged.
    Cc,
    /// GNU-ld-style: translated to the `cc` command rustc runs by default.
    Ld,
}

/// The parts of a link command the shim needs to know about.
#[derive(Debug, Clone)]
pub struct LinkCommand {
    /// The arguments exactly as received.
    pub original: Vec<OsString>,
    pub flavor: Flavor,
    /// What the real linker (a `cc` driver) gets: `original` for [`Flavor::Cc`].
    pub forward: Vec<OsString>,
    /// The arguments with every `@file` expanded (for reading only).
    pub expanded: Vec<OsString>,
    pub output: Option<PathBuf>,
    pub kind: OutputKind,
    pub inputs: Vec<InputArg>,
    /// `-L` directories in order.
    pub search_dirs: Vec<PathBuf>,
}

/// `cc` options whose value is the next argument (`-o out`, `-L dir`, ...).
const CC_TAKES_VALUE: &[&str] = &[
    "-o",
    "-L",
    "-l",
    "-B",
    "-x",
    "-z",
    "-T",
    "-u",
    "-e",
    "-I",
    "-Xlinker",
    "-Xassembler",
    "-Xpreprocessor",
    "-include",
    "-imacros",
    "-isystem",
    "-idirafter",
    "-iprefix",
    "-MF",
    "-MT",
    "-MQ",
    "-dumpbase",
    "-dumpdir",
    "-aux-info",
    "--sysroot",
    "-target",
    "--target",
];

/// Why a command line could not be understood. The link still goes ahead unchanged.
#[derive(Debug)]
pub enum ArgsError {
    ResponseFile { path: PathBuf, error: std::io::Error },
    ResponseFileNesting(PathBuf),
}

impl std::fmt::Display for ArgsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgsError::ResponseFile { path, error } => {
                write!(f, "cannot read response file {}: {error}", path.display())
            }
            ArgsError::ResponseFileNesting(path) => {
                write!(f, "response file {} nests too deeply", path.display())
            }
        }
    }
}

impl std::error::Error for ArgsError {}

impl LinkCommand {
    /// Reads a command line. Fails only when a response file cannot be read.
    pub fn parse(original: Vec<OsString>) -> Result<Self, ArgsError> {
        let mut expanded = Vec::with_capacity(original.len());
        expand_response_files(&original, &mut expanded, 0)?;
        let flavor =
            if expanded.iter().any(|a| is_bare_ld_flag(a.as_bytes())) { Flavor::Ld } else { Flavor::Cc };
        let forward = match flavor {
            Flavor::Cc => original.clone(),
            Flavor::Ld => ld_to_cc(&expanded),
        };
        let mut cmd = LinkCommand {
            original,
            flavor,
            forward,
            expanded: Vec::new(),
            output: None,
            kind: OutputKind::Executable,
            inputs: Vec::new(),
            search_dirs: Vec::new(),
        };
        cmd.scan(&expanded);
        cmd.expanded = expanded;
        Ok(cmd)
    }

    fn scan(&mut self, args: &[OsString]) {
        let mut static_only = false;
        let takes_value = match self.flavor {
            Flavor::Cc => CC_TAKES_VALUE,
            Flavor::Ld => LD_TAKES_VALUE,
        };
        let mut i = 0;
        while i < args.len() {
            let arg = args[i].as_bytes();
            let next = args.get(i + 1).map(|a| a.as_os_str());
            i += 1;
            if self.flavor == Flavor::Ld && arg.starts_with(b"-") {
                self.linker_flag(arg, &mut static_only);
            }
            if arg.is_empty() || arg[0] != b'-' || arg == b"-" {
                if !arg.is_empty() && arg != b"-" {
                    self.inputs.push(InputArg::File(PathBuf::from(OsStr::from_bytes(arg))));
                }
                continue;
            }
            match arg {
                b"-shared" => self.kind = OutputKind::SharedLibrary,
                b"-r" | b"--relocatable" => self.kind = OutputKind::Relocatable,
                _ => {}
            }
            if let Some(flags) = arg.strip_prefix(b"-Wl,") {
                for flag in flags.split(|&b| b == b',') {
                    self.linker_flag(flag, &mut static_only);
                }
                continue;
            }
            if arg == b"-Xlinker" {
                if let Some(v) = next {
                    self.linker_flag(v.as_bytes(), &mut static_only);
                }
                i += 1;
                continue;
            }
            if let Some(v) = value_of(arg, b"-o", next, &mut i) {
                self.output = Some(PathBuf::from(v));
            } else if let Some(v) = value_of(arg, b"-L", next, &mut i) {
                self.search_dirs.push(PathBuf::from(v));
            } else if let Some(v) = value_of(arg, b"-l", next, &mut i) {
                let name = v.to_string_lossy().into_owned();
                self.inputs.push(InputArg::Library { name, static_only });
            } else if takes_value.iter().any(|o| o.as_bytes() == arg) {
                i += 1;
            }
        }
    }

    /// A flag the driver hands to the linker itself (`-Wl,x` or `-Xlinker x`).
    fn linker_flag(&mut self, flag: &[u8], static_only: &mut bool) {
        match flag {
            b"-Bstatic" | b"-static" | b"-dn" | b"-non_shared" => *static_only = true,
            b"-Bdynamic" | b"-dy" | b"-call_shared" => *static_only = false,
            b"-shared" | b"-Bshareable" => self.kind = OutputKind::SharedLibrary,
            b"-r" | b"--relocatable" | b"-i" => self.kind = OutputKind::Relocatable,
            _ => {}
        }
    }

    /// For an ld-style command that came in a response file (rustc uses one when the command line
    /// is too long): writes the translated command to a response file beside rustc's (in rustc's
    /// temporary directory, removed after the link) and forwards that instead.
    pub fn forward_through_response_file(&mut self) -> std::io::Result<()> {
        let Some(original) = self.original.iter().find_map(|a| a.as_bytes().strip_prefix(b"@")) else {
            return Ok(());
        };
        if self.flavor != Flavor::Ld {
            return Ok(());
        }
        let path = PathBuf::from(OsStr::from_bytes(original)).with_extension("ipbp-cc");
        let mut text = Vec::new();
        for arg in &self.forward {
            for &b in arg.as_bytes() {
                if b.is_ascii_whitespace() || matches!(b, b'\\' | b'\'' | b'"') {
                    text.push(b'\\');
                }
                text.push(b);
            }
            text.push(b'\n');
        }
        std::fs::write(&path, text)?;
        let mut at = OsString::from("@");
        at.push(path.as_os_str());
        self.forward = vec![at];
        Ok(())
    }
}

/// GNU ld options whose value is the next argument.
const LD_TAKES_VALUE: &[&str] = &[
    "-o",
    "-L",
    "-l",
    "-z",
    "-m",
    "-T",
    "-e",
    "-u",
    "-h",
    "-y",
    "-Y",
    "-R",
    "-F",
    "-f",
    "-a",
    "-A",
    "-b",
    "-c",
    "-G",
    "-I",
    "-soname",
    "-rpath",
    "-rpath-link",
    "-dynamic-linker",
    "-plugin",
    "-plugin-opt",
    "-Map",
    "-dT",
    "--script",
    "--entry",
    "--undefined",
    "--defsym",
    "--wrap",
    "--version-script",
    "--dynamic-list",
    "--exclude-libs",
    "--section-start",
    "--sysroot",
];

/// Arguments rustc passes bare only when it takes us for a GNU ld; as a `cc` flag each would be
/// an error (or, for `-B`, mean something else).
fn is_bare_ld_flag(arg: &[u8]) -> bool {
    matches!(
        arg,
        b"--eh-frame-hdr"
            | b"--as-needed"
            | b"--no-as-needed"
            | b"-Bstatic"
            | b"-Bdynamic"
            | b"--gc-sections"
            | b"--whole-archive"
            | b"--no-whole-archive"
            | b"--strip-debug"
            | b"--strip-all"
            | b"--build-id"
            | b"-z"
    )
}

/// Options a `cc` driver must see itself (they choose crt files or the output kind), and options
/// that can only be meant for a driver (a user's `-C link-arg=-Wl,…` or `-fuse-ld=mold`).
fn is_cc_native(arg: &[u8]) -> bool {
    matches!(arg, b"-pie" | b"-no-pie" | b"-shared" | b"-static" | b"-static-pie" | b"-r")
        || arg.starts_with(b"-Wl,")
        || arg.starts_with(b"-fuse-ld=")
        || (arg.starts_with(b"-B")
            && arg.len() > 2
            && arg != b"-Bstatic"
            && arg != b"-Bdynamic"
            && arg != b"-Bsymbolic")
}

/// Rebuilds an ld-style command as the `cc` command rustc runs by default for this target:
/// linker options behind `-Xlinker` (in order), inputs and `-o`/`-L`/`-l` as they are, plus the
/// driver flags rustc adds for `gnu-lld-cc`: `-m64`, `-nodefaultlibs` and the bundled lld
/// (`-B<sysroot>/lib/rustlib/<target>/bin/gcc-ld -fuse-ld=lld`).
fn ld_to_cc(args: &[OsString]) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::with_capacity(args.len() * 2 + 6);
    let rustlib = args.iter().find_map(|a| rustlib_target_dir(a.as_bytes()));
    let target = rustlib.as_ref().and_then(|d| d.file_name()).map(|t| t.to_string_lossy().into_owned());
    match target.as_deref().and_then(|t| t.split('-').next()) {
        Some("x86_64") | None => out.push("-m64".into()),
        Some("i686" | "i586" | "i386") => out.push("-m32".into()),
        Some(_) => {}
    }
    // The bundled lld, first: a user's own `-B`/`-fuse-ld=` later on the line still wins, as it
    // does in rustc's command.
    let user_picks_linker = args.iter().any(|a| a.as_bytes().starts_with(b"-fuse-ld="));
    if let (Some(dir), false) = (&rustlib, user_picks_linker) {
        let gcc_ld = dir.join("bin").join("gcc-ld");
        if gcc_ld.join("ld.lld").exists() {
            let mut b = OsString::from("-B");
            b.push(gcc_ld.as_os_str());
            out.push(b);
            out.push("-fuse-ld=lld".into());
        }
    }
    // What kind of executable: rustc tells an ld the flags, a cc driver the mode.
    let has = |flag: &[u8]| args.iter().any(|a| a.as_bytes() == flag);
    let static_pie = has(b"-static") && has(b"-pie");
    if !has(b"-shared") && !has(b"-r") && !has(b"-pie") && !has(b"-static-pie") {
        out.push("-no-pie".into());
    }
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_bytes();
        i += 1;
        let is_option = arg.len() > 1 && arg[0] == b'-';
        if static_pie && (arg == b"-static" || arg == b"-pie") {
            if arg == b"-static" {
                out.push("-static-pie".into());
            }
            continue;
        }
        if arg == b"-Xlinker" {
            out.push(OsStr::from_bytes(arg).into());
            if let Some(v) = args.get(i) {
                out.push(v.clone());
                i += 1;
            }
            continue;
        }
        if !is_option || is_cc_native(arg) {
            out.push(OsStr::from_bytes(arg).into());
            continue;
        }
        const DRIVER_OPTIONS: [&[u8]; 3] = [b"-o", b"-L", b"-l"];
        if let Some(opt) = DRIVER_OPTIONS.iter().find(|o| arg.starts_with(o)) {
            out.push(OsStr::from_bytes(arg).into());
            if arg.len() == opt.len() {
                if let Some(v) = args.get(i) {
                    out.push(v.clone());
                    i += 1;
                }
            }
            continue;
        }
        out.push("-Xlinker".into());
        out.push(OsStr::from_bytes(arg).into());
        if LD_TAKES_VALUE.iter().any(|o| o.as_bytes() == arg) {
            if let Some(v) = args.get(i) {
                out.push("-Xlinker".into());
                out.push(v.clone());
                i += 1;
            }
        }
    }
    out.push("-nodefaultlibs".into());
    out
}

/// `<sysroot>/lib/rustlib/<target>` from an argument naming something inside it (an rlib of the
/// sysroot, or rustc's `-L <sysroot>/lib/rustlib/<target>/lib`).
fn rustlib_target_dir(arg: &[u8]) -> Option<PathBuf> {
    let text = std::str::from_utf8(arg).ok()?;
    let text = text.strip_prefix("-L").unwrap_or(text);
    let (sysroot, after) = text.split_once("/lib/rustlib/")?;
    let target = after.split('/').next().filter(|t| !t.is_empty())?;
    Some(Path::new(sysroot).join("lib/rustlib").join(target))
}

/// `-oX`, `-o X`: returns the value and advances past a separate value argument.
fn value_of<'a>(arg: &'a [u8], opt: &[u8], next: Option<&'a OsStr>, i: &mut usize) -> Option<&'a OsStr> {
    let rest = arg.strip_prefix(opt)?;
    if rest.is_empty() {
        *i += 1;
        next
    } else {
        Some(OsStr::from_bytes(rest))
    }
}

fn expand_response_files(args: &[OsString], out: &mut Vec<OsString>, depth: usize) -> Result<(), ArgsError> {
    for arg in args {
        let bytes = arg.as_bytes();
        match bytes.strip_prefix(b"@") {
            Some(path) if !path.is_empty() => {
                let path = PathBuf::from(OsStr::from_bytes(path));
                if depth > 16 {
                    return Err(ArgsError::ResponseFileNesting(path));
                }
                let text = match std::fs::read(&path) {
                    Ok(text) => text,
                    // gcc leaves an unreadable `@x` as a plain argument; so do we.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        out.push(arg.clone());
                        continue;
                    }
                    Err(error) => return Err(ArgsError::ResponseFile { path, error }),
                };
                let inner = split_response_file(&text);
                expand_response_files(&inner, out, depth + 1)?;
            }
            _ => out.push(arg.clone()),
        }
    }
    Ok(())
}

/// Splits a response file the way gcc's `libiberty` does: whitespace separates arguments,
/// single and double quotes group, a backslash escapes the next byte.
pub fn split_response_file(text: &[u8]) -> Vec<OsString> {
    let mut args = Vec::new();
    let mut cur = Vec::new();
    let mut in_arg = false;
    let mut quote: Option<u8> = None;
    let mut bytes = text.iter().copied();
    while let Some(b) = bytes.next() {
        match (quote, b) {
            (_, b'\\') => {
                if let Some(escaped) = bytes.next() {
                    cur.push(escaped);
                }
                in_arg = true;
            }
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => cur.push(b),
            (None, b'\'' | b'"') => {
                quote = Some(b);
                in_arg = true;
            }
            (None, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) => {
                if in_arg {
                    args.push(OsString::from_vec(std::mem::take(&mut cur)));
                    in_arg = false;
                }
            }
            (None, _) => {
                cur.push(b);
                in_arg = true;
            }
        }
    }
    if in_arg {
        args.push(OsString::from_vec(cur));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn reads_a_rustc_style_executable_link() {
        let cmd = LinkCommand::parse(os(&[
            "-m64",
            "/t/deps/rustcX/symbols.o",
            "/t/deps/app-1.a.rcgu.o",
            "-Wl,--as-needed",
            "-Wl,-Bstatic",
            "/t/deps/libdep-2.rlib",
            "-Wl,-Bdynamic",
            "-lgcc_s",
            "-lc",
            "-L",
            "/t/deps/rustcX/raw-dylibs",
            "-B/sysroot/bin/gcc-ld",
            "-fuse-ld=lld",
            "-o",
            "/t/deps/app-1",
            "-pie",
            "-Wl,-z,relro,-z,now",
        ]))
        .unwrap();
        assert_eq!(cmd.kind, OutputKind::Executable);
        assert_eq!(cmd.output.as_deref(), Some(Path::new("/t/deps/app-1")));
        assert_eq!(cmd.search_dirs, vec![PathBuf::from("/t/deps/rustcX/raw-dylibs")]);
        assert_eq!(
            cmd.inputs,
            vec![
                InputArg::File("/t/deps/rustcX/symbols.o".into()),
                InputArg::File("/t/deps/app-1.a.rcgu.o".into()),
                InputArg::File("/t/deps/libdep-2.rlib".into()),
                InputArg::Library { name: "gcc_s".into(), static_only: false },
                InputArg::Library { name: "c".into(), static_only: false },
            ]
        );
    }

    #[test]
    fn an_ld_style_command_becomes_rustcs_default_cc_command() {
        let sysroot = tempfile::tempdir().unwrap();
        let rustlib = sysroot.path().join("lib/rustlib/x86_64-unknown-linux-gnu");
        std::fs::create_dir_all(rustlib.join("bin/gcc-ld")).unwrap();
        std::fs::write(rustlib.join("bin/gcc-ld/ld.lld"), b"").unwrap();
        let std_rlib = rustlib.join("lib/libstd-1.rlib").display().to_string();
        let sys_lib = rustlib.join("lib").display().to_string();
        let cmd = LinkCommand::parse(os(&[
            "/t/symbols.o",
            "/t/app.rcgu.o",
            "--as-needed",
            "-Bstatic",
            &std_rlib,
            "-Bdynamic",
            "-lgcc_s",
            "-L",
            &sys_lib,
            "--eh-frame-hdr",
            "-z",
            "noexecstack",
            "-o",
            "/t/app",
            "--gc-sections",
            "-pie",
            "-z",
            "relro",
            "-z",
            "now",
        ]))
        .unwrap();
        assert_eq!(cmd.flavor, Flavor::Ld);
        let gcc_ld = format!("-B{}", rustlib.join("bin/gcc-ld").display());
        assert_eq!(
            cmd.forward,
            os(&[
                "-m64",
                &gcc_ld,
                "-fuse-ld=lld",
                "/t/symbols.o",
                "/t/app.rcgu.o",
                "-Xlinker",
                "--as-needed",
                "-Xlinker",
                "-Bstatic",
                &std_rlib,
                "-Xlinker",
                "-Bdynamic",
                "-lgcc_s",
                "-L",
                &sys_lib,
                "-Xlinker",
                "--eh-frame-hdr",
                "-Xlinker",
                "-z",
                "-Xlinker",
                "noexecstack",
                "-o",
                "/t/app",
                "-Xlinker",
                "--gc-sections",
                "-pie",
                "-Xlinker",
                "-z",
                "-Xlinker",
                "relro",
                "-Xlinker",
                "-z",
                "-Xlinker",
                "now",
                "-nodefaultlibs",
            ])
        );
        assert_eq!(cmd.output.as_deref(), Some(Path::new("/t/app")));
        assert_eq!(
            cmd.inputs,
            vec![
                InputArg::File("/t/symbols.o".into()),
                InputArg::File("/t/app.rcgu.o".into()),
                InputArg::File(std_rlib.clone().into()),
                InputArg::Library { name: "gcc_s".into(), static_only: false },
            ]
        );
    }

    #[test]
    fn executable_kinds_and_user_driver_options_survive_translation() {
        let fwd = |args: &[&str]| LinkCommand::parse(os(args)).unwrap().forward;
        // -C relocation-model=static: no -pie from rustc, so the driver must be told -no-pie.
        assert!(fwd(&["--eh-frame-hdr", "a.o", "-o", "app"]).contains(&"-no-pie".into()));
        assert!(!fwd(&["--eh-frame-hdr", "a.o", "-pie", "-o", "app"]).contains(&"-no-pie".into()));
        assert!(!fwd(&["--eh-frame-hdr", "a.o", "-shared", "-o", "a.so"]).contains(&"-no-pie".into()));
        // +crt-static: rustc's `-static -pie` is a driver's `-static-pie`.
        let static_pie =
            fwd(&["--eh-frame-hdr", "-static", "-pie", "--no-dynamic-linker", "a.o", "-o", "app"]);
        assert!(static_pie.contains(&"-static-pie".into()));
        assert!(!static_pie.contains(&"-static".into()) && !static_pie.contains(&"-pie".into()));
        // -C link-arg=-Wl,-O1 / -fuse-ld=mold: driver options pass unchanged; the user's linker wins.
        let user = fwd(&["--eh-frame-hdr", "a.o", "-o", "app", "-Wl,-O1", "-fuse-ld=mold"]);
        assert!(user.contains(&"-Wl,-O1".into()) && user.contains(&"-fuse-ld=mold".into()));
        assert!(!user.contains(&"-fuse-ld=lld".into()));
    }

    #[test]
    fn a_cc_style_command_is_forwarded_unchanged() {
        let args = os(&["-m64", "a.o", "-Wl,--as-needed", "-o", "app", "-fuse-ld=lld", "-nodefaultlibs"]);
        let cmd = LinkCommand::parse(args.clone()).unwrap();
        assert_eq!(cmd.flavor, Flavor::Cc);
        assert_eq!(cmd.forward, args);
    }

    #[test]
    fn recognises_shared_and_relocatable_outputs() {
        let shared = LinkCommand::parse(os(&["a.o", "-shared", "-o", "liba.so"])).unwrap();
        assert_eq!(shared.kind, OutputKind::SharedLibrary);
        let wl = LinkCommand::parse(os(&["a.o", "-Wl,-shared", "-o", "liba.so"])).unwrap();
        assert_eq!(wl.kind, OutputKind::SharedLibrary);
        let rel = LinkCommand::parse(os(&["a.o", "-r", "-oall.o"])).unwrap();
        assert_eq!(rel.kind, OutputKind::Relocatable);
        assert_eq!(rel.output.as_deref(), Some(Path::new("all.o")));
    }

    #[test]
    fn static_libraries_follow_bstatic() {
        let cmd =
            LinkCommand::parse(os(&["-Wl,-Bstatic", "-lfoo", "-Xlinker", "-Bdynamic", "-l", "bar"])).unwrap();
        assert_eq!(
            cmd.inputs,
            vec![
                InputArg::Library { name: "foo".into(), static_only: true },
                InputArg::Library { name: "bar".into(), static_only: false },
            ]
        );
    }

    #[test]
    fn response_files_are_expanded_for_reading_and_kept_for_forwarding() {
        let dir = tempfile::tempdir().unwrap();
        let rsp = dir.path().join("link.rsp");
        std::fs::write(&rsp, b"my\\ obj.o \"quoted arg.o\"\n-o\n'out bin'\n-lm").unwrap();
        let at = format!("@{}", rsp.display());
        let cmd = LinkCommand::parse(os(&["-m64", &at])).unwrap();
        assert_eq!(cmd.original, os(&["-m64", &at]));
        assert_eq!(cmd.expanded, os(&["-m64", "my obj.o", "quoted arg.o", "-o", "out bin", "-lm"]));
        assert_eq!(cmd.output.as_deref(), Some(Path::new("out bin")));
        assert_eq!(cmd.inputs.len(), 3);
    }

    #[test]
    fn an_ld_style_response_file_is_forwarded_as_a_cc_response_file() {
        let dir = tempfile::tempdir().unwrap();
        let rsp = dir.path().join("linker-arguments");
        std::fs::write(&rsp, "/t/a\\ b.o\n--as-needed\n-o\n/t/app\n").unwrap();
        let mut cmd = LinkCommand::parse(os(&[&format!("@{}", rsp.display())])).unwrap();
        assert_eq!(cmd.flavor, Flavor::Ld);
        let translated = cmd.forward.clone();
        cmd.forward_through_response_file().unwrap();
        assert_eq!(cmd.forward.len(), 1);
        let written = std::fs::read(&cmd.forward[0].to_string_lossy()[1..]).unwrap();
        assert_eq!(split_response_file(&written), translated);
        assert!(translated.contains(&OsString::from("/t/a b.o")));
    }

    #[test]
    fn a_missing_response_file_stays_a_plain_argument() {
        let cmd = LinkCommand::parse(os(&["@/nonexistent/ipbp.rsp"])).unwrap();
        assert_eq!(cmd.expanded, os(&["@/nonexistent/ipbp.rsp"]));
    }
}
