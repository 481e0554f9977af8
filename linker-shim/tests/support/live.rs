//! Running programs for the end-to-end tests: a scenario is a copy of an app built through the
//! shim, started as a real process, edited and rebuilt while it runs.
//!
//! Building an app's dependencies (ipbp, syn, …) is most of the cost, so each app is built once
//! into a template target directory and every scenario starts from a copy of it: only the app's
//! own crates compile again.

use super::{Linker, Project, Run};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a running program gets to show what a test waits for. Generous: CI machines are slow
/// and busy; a test that passes only waits as long as it takes.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The build configuration name every scenario uses (its target directory).
pub const CONFIG: &str = "live";

/// A copy of `testdata/<app>` whose path dependency on the runtime points at this repository,
/// with a target directory copied from the app's template (built once per test run).
pub fn scenario(app: &str) -> Project {
    let template = template(app);
    let project = Project::copy_of(app);
    point_runtime_at_repo(&project);
    let status = Command::new("cp")
        .arg("-a")
        .arg(template.target(CONFIG))
        .arg(project.target(CONFIG))
        .status()
        .expect("cannot run cp");
    assert!(status.success(), "cannot copy the template target directory of {app}");
    project
}

/// Builds `app` once through the shim, as the starting point of every scenario.
fn template(app: &str) -> &'static Project {
    static TEMPLATES: OnceLock<Mutex<HashMap<String, &'static Project>>> = OnceLock::new();
    let mut all = TEMPLATES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = all.get(app) {
        return p;
    }
    let project: &'static Project = Box::leak(Box::new(Project::copy_of(app)));
    point_runtime_at_repo(project);
    let run = project.cargo(Linker::Shim, CONFIG, &["build"]).run();
    assert!(run.success(), "the template build of {app} failed: {run}");
    all.insert(app.to_string(), project);
    project
}

/// `path = "../../patch-runtime"` only works inside the repository.
fn point_runtime_at_repo(project: &Project) {
    let runtime = Path::new(env!("CARGO_MANIFEST_DIR")).join("../patch-runtime");
    let runtime = runtime.canonicalize().expect("patch-runtime exists");
    let toml = project.read("Cargo.toml");
    let fixed = toml.replace("\"../../patch-runtime\"", &format!("{:?}", runtime.display().to_string()));
    assert_ne!(toml, fixed, "the app does not depend on ../../patch-runtime");
    project.write("Cargo.toml", &fixed);
}

impl Project {
    /// `cargo build` through the shim in the scenario's target directory.
    pub fn build(&self) -> Run {
        let run = self.cargo(Linker::Shim, CONFIG, &["build"]).run();
        assert!(run.success(), "the build failed: {run}");
        run
    }

    /// `cargo build` through the shim with patches made for hot points only
    /// (`IPBP_MODE=hot-points`) instead of in place.
    pub fn build_for_hot_points(&self) -> Run {
        let run = self.cargo(Linker::Shim, CONFIG, &["build"]).env("IPBP_MODE", "hot-points").run();
        assert!(run.success(), "the build failed: {run}");
        run
    }

    /// Builds after an edit; the build must succeed and report `Patched <program>` for `app`.
    #[track_caller]
    pub fn build_and_expect_patched(&self, app: &Running, program: &str) -> String {
        let run = self.build();
        let line = status_for(&run, app.pid);
        assert!(
            line.starts_with(&format!("Patched {program} ")),
            "expected the process to be patched: {run}"
        );
        line
    }

    /// Replaces `from` by `to` in a source file; the text must be there.
    #[track_caller]
    pub fn edit(&self, path: &str, from: &str, to: &str) {
        let text = self.read(path);
        assert!(text.contains(from), "{path} does not contain {from:?}");
        self.write(path, &text.replacen(from, to, 1));
    }

    /// The program cargo built (`<target>/debug/<name>`).
    pub fn program(&self, name: &str) -> PathBuf {
        self.target(CONFIG).join("debug").join(name)
    }

    /// Starts the built program with this scenario's registry.
    pub fn start(&self, name: &str, env: &[(&str, &str)]) -> Running {
        Running::start(&self.program(name), &self.home, env)
    }

    /// The manifest ipbp-ld wrote for patch `generation` of process `pid`.
    pub fn manifest(&self, pid: u32, generation: u64) -> serde_json::Value {
        let patches = self.target(CONFIG).join("ipbp/patches");
        let dir = std::fs::read_dir(&patches)
            .unwrap_or_else(|e| panic!("no patches in {}: {e}", patches.display()))
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pid}-"))))
            .unwrap_or_else(|| panic!("no patch directory for pid {pid} in {}", patches.display()));
        let path = dir.join(format!("patch-{generation}.json"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
    }
}

/// A program running under test; killed when dropped.
pub struct Running {
    child: Child,
    pub pid: u32,
    /// stdout lines, then stderr lines tagged `stderr: `, as they come.
    output: Arc<(Mutex<Vec<String>>, Condvar)>,
    home: PathBuf,
}

impl Running {
    pub fn start(program: &Path, home: &Path, env: &[(&str, &str)]) -> Running {
        let running = Running::spawn(program, home, env);
        running.wait_until_registered();
        running
    }

    /// Starts the program without waiting for it to register (it may not). A build that cannot
    /// be patched into it leaves it running (`Skipped`) unless `env` sets `IPBP_RESTART`: the
    /// restart suite tests restarts.
    pub fn spawn(program: &Path, home: &Path, env: &[(&str, &str)]) -> Running {
        Running::spawn_command(super::Cmd::new(program, &[] as &[&str]), home, env)
    }

    /// Starts `command` (a debugger's command line ending with the program), waits for the
    /// program's `started pid=<pid>` line, then for its registration; `pid` is the program's.
    pub fn start_under(command: super::Cmd, home: &Path) -> Running {
        let mut running = Running::spawn_command(command, home, &[]);
        let line = running.wait_for(0, "the program's pid", |l| l.starts_with("started pid="));
        running.pid = line["started pid=".len()..].trim().parse().expect("a pid");
        running.wait_until_registered();
        running
    }

    fn spawn_command(cmd: super::Cmd, home: &Path, env: &[(&str, &str)]) -> Running {
        let mut cmd = cmd.env("IPBP_HOME", home).env("IPBP_RESTART", "never");
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let mut command = cmd.into_command();
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let output: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for (stream, tag) in
            [(Box::new(stdout) as Box<dyn std::io::Read + Send>, ""), (Box::new(stderr), "stderr: ")]
        {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let (lines, cond) = &*output;
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{tag}{line}"));
                    cond.notify_all();
                }
            });
        }
        Running { pid: child.id(), child, output, home: home.to_path_buf() }
    }

    /// Waits for the program's registration (written by `ipbp::init`), so a build right after
    /// this finds it.
    fn wait_until_registered(&self) {
        let file = self.home.join(format!("{}.process", self.pid));
        let deadline = Instant::now() + PATIENCE;
        while !file.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never registered in {}: {}",
                self.pid,
                self.home.display(),
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many lines the program has printed so far.
    pub fn mark(&self) -> usize {
        self.output.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// All lines printed since `mark`.
    pub fn lines_since(&self, mark: usize) -> Vec<String> {
        self.output.0.lock().unwrap_or_else(|p| p.into_inner())[mark..].to_vec()
    }

    /// Waits for the first line after `mark` satisfying `what`; panics with everything the
    /// program printed when it does not come.
    #[track_caller]
    pub fn wait_for(&self, mark: usize, description: &str, what: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let (lines, cond) = &*self.output;
        let mut guard = lines.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(l) = guard[mark.min(guard.len())..].iter().find(|l| what(l)) {
                return l.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                drop(guard);
                panic!("the program (pid {}) never printed {description}: {}", self.pid, self.dump());
            }
            guard = cond.wait_timeout(guard, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Waits until every one of `threads` printed a tick after `mark` satisfying `what`, and
    /// returns the first such tick of each.
    #[track_caller]
    pub fn wait_for_ticks(
        &self,
        mark: usize,
        threads: &[u32],
        description: &str,
        what: impl Fn(&Tick) -> bool,
    ) -> Vec<Tick> {
        threads
            .iter()
            .map(|&t| {
                let line = self.wait_for(mark, &format!("{description} from thread {t}"), |l| {
                    Tick::parse(l).is_some_and(|tick| tick.thread == t && what(&tick))
                });
                Tick::parse(&line).expect("parsed above")
            })
            .collect()
    }

    /// Ticks printed since `mark`.
    pub fn ticks_since(&self, mark: usize) -> Vec<Tick> {
        self.lines_since(mark).iter().filter_map(|l| Tick::parse(l)).collect()
    }

    /// Kills the process (SIGKILL: it cannot clean up) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything printed so far, for failure messages.
    pub fn dump(&self) -> String {
        let lines = self.output.0.lock().unwrap_or_else(|p| p.into_inner());
        let from = lines.len().saturating_sub(80);
        format!("last {} of {} lines:\n{}", lines.len() - from, lines.len(), lines[from..].join("\n"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One line of the counter app:
/// `tick thread=<t> msg=<..> greet=<..> deep=<..> extra=<..> global=<n> local=<n>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    pub thread: u32,
    pub fields: HashMap<String, String>,
    pub global: u64,
    pub local: u64,
}

impl Tick {
    pub fn parse(line: &str) -> Option<Tick> {
        let rest = line.strip_prefix("tick ")?;
        let fields: HashMap<String, String> = rest
            .split(' ')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Tick {
            thread: fields.get("thread")?.parse().ok()?,
            global: fields.get("global")?.parse().ok()?,
            local: fields.get("local")?.parse().ok()?,
            fields,
        })
    }

    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map_or("", String::as_str)
    }
}

/// The shim's status lines in a build's stderr (`Patched`, `Skipped`, `Unchanged`, `Note`).
pub fn status_lines(run: &Run) -> Vec<String> {
    run.stderr
        .lines()
        .map(str::trim)
        .filter(|l| {
            ["Patched ", "Skipped ", "Unchanged ", "Restarted ", "Note "].iter().any(|v| l.starts_with(v))
        })
        .map(str::to_string)
        .collect()
}

/// The status line about process `pid`, which must be there.
#[track_caller]
pub fn status_for(run: &Run, pid: u32) -> String {
    let needle = format!("(pid {pid})");
    status_lines(run)
        .into_iter()
        .find(|l| l.contains(&needle) && !l.starts_with("Note "))
        .unwrap_or_else(|| panic!("no status line for pid {pid} in the build: {run}"))
}
