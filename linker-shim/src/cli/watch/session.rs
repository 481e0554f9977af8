//! One `watch` session: the first build, the program, and a build per save (direct or cargo),
//! until the program exits or a signal ends it all.

use super::cargo::{Cargo, Executable};
use super::direct::{self, Built};
use super::inotify::Watcher;
use super::runner::{stop_requested, wait_readable, Interrupted, Program};
use super::say;
use super::units::{build_script_inputs, Units};
use super::workspace::Workspace;
use crate::error::Error;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct Session {
    ws: Workspace,
    cargo: Cargo,
    bin: Option<String>,
    program_args: Vec<String>,
    program: Option<Program>,
    exe: Option<PathBuf>,
    units: Option<Units>,
    watcher: Watcher,
    /// Crates a failed direct build left out of date (built with the next save).
    pending: BTreeSet<String>,
    /// Why the next build must be cargo's (its last build failed).
    cargo_needed: Option<String>,
    build_script_inputs: Vec<PathBuf>,
    /// Files found in directories that were watched only after they were made.
    late_files: Vec<PathBuf>,
}

/// How a build ended, for the loop.
enum Next {
    Continue,
    Exit(i32),
}

impl Session {
    pub fn new(
        ws: Workspace,
        cargo: Cargo,
        bin: Option<String>,
        program_args: Vec<String>,
    ) -> Result<Session, Error> {
        Ok(Session {
            ws,
            cargo,
            bin,
            program_args,
            program: None,
            exe: None,
            units: None,
            watcher: Watcher::new()?,
            pending: BTreeSet::new(),
            cargo_needed: None,
            build_script_inputs: Vec::new(),
            late_files: Vec::new(),
        })
    }

    pub fn run(mut self) -> Result<i32, Error> {
        if let Next::Exit(code) = self.with_cargo(&BTreeSet::new(), "the first build", Instant::now())? {
            return Ok(code);
        }
        loop {
            if let Some(sig) = stop_requested() {
                return Ok(self.end_by_signal(sig));
            }
            if let Some(status) = self.program.as_mut().and_then(Program::exited) {
                return Ok(self.end_with(status));
            }
            wait_readable(self.watcher.fd(), Duration::from_millis(100));
            let events = self.watcher.drain();
            let saved_at = Instant::now();
            self.watch_new_dirs(&events.new_dirs);
            let late = std::mem::take(&mut self.late_files);
            let changed: BTreeSet<PathBuf> =
                events.paths.into_iter().chain(late).filter(|p| self.matters(p)).collect();
            let next = if events.overflow {
                self.with_cargo(&changed, "file events were lost", saved_at)?
            } else if changed.is_empty() {
                Next::Continue
            } else {
                self.rebuild(&changed, saved_at)?
            };
            if let Next::Exit(code) = next {
                return Ok(code);
            }
        }
    }

    /// Whether a file event needs a build: a source file a crate read, a `Cargo.toml`, a build
    /// script's input, or a new `.rs` file in a member (editors' temporary files are not).
    fn matters(&self, path: &Path) -> bool {
        if path.starts_with(&self.ws.target_dir) {
            return false;
        }
        if self.units.as_ref().is_some_and(|u| u.sources.contains_key(path))
            || self.build_script_inputs.iter().any(|i| path.starts_with(i))
        {
            return true;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let plain = !name.starts_with('.') && !name.contains('~');
        plain && self.ws.owns(path) && (name == "Cargo.toml" || name.ends_with(".rs"))
    }

    fn rebuild(&mut self, changed: &BTreeSet<PathBuf>, saved_at: Instant) -> Result<Next, Error> {
        let plan = match (&self.cargo_needed, &self.units) {
            (Some(why), _) => Err(why.clone()),
            (None, None) => Err("no program is running yet".to_string()),
            (None, Some(units)) => units.plan(changed, &self.pending),
        };
        match plan {
            Ok(stems) => self.direct(changed, &stems, saved_at),
            Err(why) => self.with_cargo(changed, &why, saved_at),
        }
    }

    /// The direct path; see [`direct`].
    fn direct(
        &mut self,
        changed: &BTreeSet<PathBuf>,
        stems: &[String],
        saved_at: Instant,
    ) -> Result<Next, Error> {
        let what = self.describe(changed);
        let log = self.ws.status_log();
        let log_start = std::fs::metadata(&log).map_or(0, |m| m.len());
        // From reading the save's event to starting rustc: watch's own share.
        let planned = saved_at.elapsed();
        let mut steps = Vec::new();
        for (i, stem) in stems.iter().enumerate() {
            let rec = self.units.as_ref().expect("planned from units").records[stem].clone();
            let name = rec.crate_name().unwrap_or("?").to_string();
            let built = match direct::build(&rec, &mut self.program) {
                Ok(Ok(built)) => built,
                Ok(Err(why)) => return Ok(self.interrupted(why)),
                Err(e) => {
                    self.pending.extend(stems[i..].iter().cloned());
                    return self.with_cargo(
                        changed,
                        &format!("the direct build of {name} failed: {e}"),
                        saved_at,
                    );
                }
            };
            match built {
                Built::Ok(took) => {
                    self.pending.remove(stem);
                    steps.push(format!("{name} {}", secs(took)));
                }
                Built::Failed(took) => {
                    self.pending.extend(stems[i..].iter().cloned());
                    steps.push(format!("{name} failed after {}", secs(took)));
                    // A link that failed after its patch went live says `Reverted`.
                    show_status_lines(&log, log_start);
                    say(
                        "Failed",
                        &format!(
                            "{what} → rustc directly: {}; the program keeps its current code",
                            steps.join(", ")
                        ),
                    );
                    return Ok(Next::Continue);
                }
                Built::NeedsCargo(took, why) => {
                    steps.push(format!("{name} {}", secs(took)));
                    show_status_lines(&log, log_start);
                    say(
                        "Rebuilt",
                        &format!("{what} → rustc directly: {}; cargo must record it", steps.join(", ")),
                    );
                    return self.with_cargo(changed, &why, saved_at);
                }
            }
        }
        show_status_lines(&log, log_start);
        say(
            "Rebuilt",
            &format!(
                "{what} → rustc directly: {}; rustc started {:.1} ms after the save, done {} after it",
                steps.join(", "),
                planned.as_secs_f64() * 1e3,
                secs(saved_at.elapsed())
            ),
        );
        Ok(Next::Continue)
    }

    /// The cargo path: builds, starts the program when none runs, learns the crates again.
    fn with_cargo(
        &mut self,
        changed: &BTreeSet<PathBuf>,
        why: &str,
        saved_at: Instant,
    ) -> Result<Next, Error> {
        let what = self.describe(changed);
        let start = Instant::now();
        let exes = match self.cargo.build(&self.ws, &mut self.program)? {
            Ok(exes) => exes,
            Err(why) => return Ok(self.interrupted(why)),
        };
        let took = secs(start.elapsed());
        let Some(exes) = exes else {
            self.cargo_needed = Some("the last cargo build failed".into());
            say(
                "Failed",
                &format!("{what} → cargo ({why}): failed after {took}; the program keeps its current code"),
            );
            return Ok(Next::Continue);
        };
        self.cargo_needed = None;
        self.pending.clear();
        if self.program.is_none() {
            let exe = self.pick(&exes)?;
            let program = Program::start(&exe, &self.program_args)?;
            say(
                "Running",
                &format!("`{} {}` (pid {})", exe.display(), self.program_args.join(" "), program.pid()),
            );
            self.program = Some(program);
            self.exe = Some(exe);
        }
        self.learn()?;
        if changed.is_empty() {
            say("Built", &format!("→ cargo ({why}): {took}; watching for saves"));
        } else {
            say(
                "Rebuilt",
                &format!("{what} → cargo ({why}): {took}; {} after the save", secs(saved_at.elapsed())),
            );
        }
        Ok(Next::Continue)
    }

    /// The executable to run from what cargo built.
    fn pick(&self, exes: &[Executable]) -> Result<PathBuf, Error> {
        let names = || exes.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ");
        let found: Vec<&Executable> = match &self.bin {
            Some(bin) => exes.iter().filter(|e| &e.name == bin).collect(),
            None => exes.iter().collect(),
        };
        match found.as_slice() {
            [one] => Ok(one.path.clone()),
            [] => crate::bail!(
                "the build made no executable{} to run",
                self.bin.as_ref().map(|b| format!(" named {b}")).unwrap_or_default()
            ),
            _ => crate::bail!("the build made several executables ({}): pick one with --bin", names()),
        }
    }

    /// Reads the recorded commands again and watches every directory that matters.
    fn learn(&mut self) -> Result<(), Error> {
        let Some(exe) = &self.exe else { return Ok(()) };
        let units = Units::load(&self.ws, exe);
        if self.units.is_none() && units.unusable.is_none() && !units.links_runtime() {
            say("Note", "the program does not depend on the `ipbp` crate: builds go on, but the running program keeps its code (see README: `ipbp::init()`)");
        }
        self.build_script_inputs = build_script_inputs(&units);
        let mut dirs: BTreeSet<PathBuf> = self.ws.member_dirs.iter().cloned().collect();
        dirs.insert(self.ws.root.clone());
        for member in &self.ws.member_dirs {
            subdirs(&member.join("src"), &mut dirs);
        }
        let owned = units.sources.keys().chain(&self.build_script_inputs).filter(|p| self.ws.owns(p));
        dirs.extend(owned.filter_map(|p| {
            if p.is_dir() {
                Some(p.clone())
            } else {
                p.parent().map(Path::to_path_buf)
            }
        }));
        for dir in dirs.iter().filter(|d| d.is_dir()) {
            self.watcher.watch_dir(dir)?;
        }
        self.units = Some(units);
        Ok(())
    }

    /// A directory made in the workspace during the session (a new module's folder) is watched at
    /// once, with what it holds already: files written there before the watch count as saved.
    fn watch_new_dirs(&mut self, new_dirs: &[PathBuf]) {
        let mut found = BTreeSet::new();
        let plain = |d: &&PathBuf| {
            d.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.') && n != "target")
        };
        for dir in new_dirs.iter().filter(|d| self.ws.owns(d)).filter(plain) {
            subdirs(dir, &mut found);
        }
        for dir in found {
            if self.watcher.watch_dir(&dir).is_ok() {
                // Files written between the directory's creation and its watch.
                let files = std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path());
                self.late_files.extend(files.filter(|p| p.is_file()));
            }
        }
    }

    fn describe(&self, changed: &BTreeSet<PathBuf>) -> String {
        if changed.is_empty() {
            return "start".to_string();
        }
        let mut names: Vec<String> = changed
            .iter()
            .take(3)
            .map(|p| p.strip_prefix(&self.ws.root).unwrap_or(p).display().to_string())
            .collect();
        if changed.len() > 3 {
            names.push(format!("{} more", changed.len() - 3));
        }
        names.join(", ")
    }

    fn interrupted(&mut self, why: Interrupted) -> Next {
        match why {
            Interrupted::Stop(sig) => Next::Exit(self.end_by_signal(sig)),
            Interrupted::ProgramExited(status) => Next::Exit(self.end_with(status)),
        }
    }

    fn end_by_signal(&mut self, sig: i32) -> i32 {
        if let Some(p) = self.program.take() {
            p.stop();
        }
        say("Stopped", &format!("the program and the watch (signal {sig})"));
        128 + sig
    }

    fn end_with(&mut self, status: std::process::ExitStatus) -> i32 {
        self.program = None;
        say("Exited", &format!("the program ended ({status}); watch stops with it"));
        use std::os::unix::process::ExitStatusExt;
        status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// `dir` and every directory below it.
fn subdirs(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    if !dir.is_dir() || !out.insert(dir.to_path_buf()) {
        return;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            subdirs(&entry.path(), out);
        }
    }
}

/// The shim's status lines (`Patched …`) written to its log since `from`: rustc hides a linker's
/// output, and no cargo runs to pass them on, so `watch` shows them.
fn show_status_lines(log: &Path, from: u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(log) else { return };
    let mut text = String::new();
    if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_string(&mut text).is_err() {
        return;
    }
    for line in text.lines() {
        let line = line.split_once(' ').map_or(line, |(_, rest)| rest);
        eprintln!("{line}");
    }
}
