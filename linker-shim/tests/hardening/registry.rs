//! The registry directory as another user could leave it: owned by them, or (in the user's own
//! directory) records that name other files. Nothing named in a file is opened, connected to,
//! created or deleted.

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// A process that stays alive for the test (its pid and start time make a live registration).
struct Sleeper(std::process::Child);

impl Sleeper {
    fn start() -> Sleeper {
        Sleeper(std::process::Command::new("sleep").arg("60").spawn().expect("cannot run sleep"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn registration(&self, build_id: &str, socket: &Path) -> String {
        let start = ipbp::registry::process_start_time(self.pid()).expect("sleep is running");
        format!(
            "pid {}\nstart-time {start}\nexe /bin/sleep\nbuild-id {build_id}\nload-bias 0x0\nsocket {}\nruntime 0.1.0\n",
            self.pid(),
            socket.display()
        )
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A FIFO: opening it for reading would block until a writer comes. A thread waits as the writer,
/// so [`Fifo::was_opened`] tells whether anybody opened it.
struct Fifo {
    path: std::path::PathBuf,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Fifo {
    fn new(path: std::path::PathBuf) -> Fifo {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "cannot make a FIFO");
        let p = path.clone();
        let writer = std::thread::spawn(move || {
            let _ = std::fs::OpenOptions::new().write(true).open(&p);
        });
        Fifo { path, writer: Some(writer) }
    }

    fn was_opened(&mut self) -> bool {
        std::thread::sleep(Duration::from_millis(100));
        let opened = self.writer.as_ref().is_some_and(|w| w.is_finished());
        // Release the writer thread either way.
        let _ = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&self.path);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        opened
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// The build id of the counter as built.
fn build_id(project: &Project) -> String {
    use object::Object;
    let data = std::fs::read(project.program("counter")).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let id = file.build_id().unwrap().expect("the counter has a build id");
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Root without `XDG_RUNTIME_DIR` registers in `/tmp/ipbp-0`, which another user may create first.
/// Such a directory is refused by ipbp-ld (one warning naming it) and by the program (one line on
/// stderr), and nothing it holds is followed: not the planted socket, lock or build record.
#[test]
fn a_registry_of_another_user_is_refused_by_ipbp_ld_and_by_the_program() {
    if !is_root() {
        eprintln!("skipped: only root can give a directory to another user (`nobody`) to plant it");
        return;
    }
    // The copied template's program is enough to know a build id to plant; the one build below
    // (of the copy, with the planted registry) links the program that is then started.
    let project = scenario("counter");
    let id = build_id(&project);
    let planted = project.root().join("planted");
    let victim = project.root().join("victim");
    std::fs::write(&victim, "root's file\n").unwrap();
    std::fs::create_dir_all(planted.join("builds")).unwrap();
    let sleeper = Sleeper::start();
    std::fs::write(planted.join(format!("{}.process", sleeper.pid())), sleeper.registration(&id, &victim))
        .unwrap();
    std::fs::write(
        planted.join("4000000.process"),
        sleeper.registration(&id, &victim).replace(&format!("pid {}", sleeper.pid()), "pid 4000000"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        project.root().join("created-through-lock"),
        planted.join(format!("{}.lock", sleeper.pid())),
    )
    .unwrap();
    std::fs::write(
        planted.join("builds").join(&id),
        format!("build-id {id}\noutput /x\nmap {}\ninputs {}\n", victim.display(), victim.display()),
    )
    .unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o700)).unwrap();
    let status = std::process::Command::new("chown").args(["-R", "nobody"]).arg(&planted).status().unwrap();
    assert!(status.success(), "cannot chown the planted registry to nobody");

    project.touch(MAIN);
    let run = project
        .cargo(support::Linker::Shim, support::live::CONFIG, &["build"])
        .env("IPBP_HOME", &planted)
        .run();
    run.assert_success();
    let warnings: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with("warning: ipbp-ld")).collect();
    assert_eq!(warnings.len(), 1, "expected one warning about the registry: {run}");
    assert!(
        warnings[0].contains(&planted.display().to_string()) && warnings[0].contains("owned by uid"),
        "the warning does not say what is wrong with {}: {run}",
        planted.display()
    );
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "root's file\n",
        "the planted socket's file was touched"
    );
    assert!(
        !project.root().join("created-through-lock").exists(),
        "a file was created through the planted lock"
    );
    assert!(planted.join("4000000.process").exists(), "a planted record was deleted");

    let app = Running::spawn(&project.program("counter"), &planted, &[("COUNTER_PERIOD_MS", "40")]);
    let line = app.wait_for(0, "a line about the registry", |l| l.starts_with("stderr: ipbp:"));
    assert!(line.contains("owned by uid") && line.contains(&planted.display().to_string()), "{line}");
    app.wait_for_ticks(0, &THREADS, "ticks", |_| true);
    let said = app.lines_since(0).iter().filter(|l| l.starts_with("stderr:")).count();
    assert_eq!(said, 1, "the program should say it once: {}", app.dump());
    assert!(!planted.join(format!("{}.process", app.pid)).exists());
}

/// In the user's own registry, records that name other files are not followed: a registration's
/// `socket` line (neither connected to nor deleted), a symlinked lock (no file created through
/// it) or socket (not connected to), a build record naming its map and inputs elsewhere (never
/// opened).
#[test]
fn records_naming_other_files_are_not_followed() {
    let project = scenario("counter");
    project.build();
    let id = build_id(&project);
    let home = &project.home;

    // A live "process" whose registration names a socket the test listens on.
    let listening = project.root().join("bait.sock");
    let bait = std::os::unix::net::UnixListener::bind(&listening).unwrap();
    bait.set_nonblocking(true).unwrap();
    let talker = Sleeper::start();
    std::fs::write(home.join(format!("{}.process", talker.pid())), talker.registration(&id, &listening))
        .unwrap();
    // A live one whose lock is a symlink to a file that does not exist yet.
    let locked = Sleeper::start();
    std::fs::write(home.join(format!("{}.process", locked.pid())), locked.registration(&id, &listening))
        .unwrap();
    let through = project.root().join("created-through-lock");
    std::os::unix::fs::symlink(&through, home.join(format!("{}.lock", locked.pid()))).unwrap();
    // A live one whose `<pid>.sock` is a symlink to the bait socket.
    let linked = Sleeper::start();
    std::fs::write(home.join(format!("{}.process", linked.pid())), linked.registration(&id, &listening))
        .unwrap();
    std::os::unix::fs::symlink(&listening, home.join(format!("{}.sock", linked.pid()))).unwrap();
    // A dead one whose socket line names a file of the user.
    let victim = project.root().join("victim");
    std::fs::write(&victim, "keep me\n").unwrap();
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    std::fs::write(
        home.join(format!("{dead_pid}.process")),
        format!(
            "pid {dead_pid}\nstart-time 1\nexe /x\nbuild-id {id}\nload-bias 0x0\nsocket {}\n",
            victim.display()
        ),
    )
    .unwrap();
    // The build record names its map and inputs as FIFOs: opening either would be noticed.
    let mut map = Fifo::new(project.root().join("map.fifo"));
    let mut inputs = Fifo::new(project.root().join("inputs.fifo"));
    std::fs::write(
        home.join("builds").join(&id),
        format!(
            "build-id {id}\noutput {}\nmap {}\ninputs {}\n",
            project.program("counter").display(),
            map.path.display(),
            inputs.path.display()
        ),
    )
    .unwrap();

    project.touch(MAIN);
    let run = project.build();
    let talker_line = status_for(&run, talker.pid());
    assert!(talker_line.contains("cannot reach the program"), "{run}");
    let locked_line = status_for(&run, locked.pid());
    assert!(locked_line.contains("cannot lock"), "{run}");
    let linked_line = status_for(&run, linked.pid());
    assert!(linked_line.contains("not a socket of this user"), "{run}");
    assert!(bait.accept().is_err(), "ipbp-ld connected to the bait socket");
    assert!(!through.exists(), "ipbp-ld created a file through a symlinked lock");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
    assert!(!home.join(format!("{dead_pid}.process")).exists(), "the dead registration was not removed");
    assert!(!map.was_opened(), "ipbp-ld opened the map a build record named");
    assert!(!inputs.was_opened(), "ipbp-ld opened the inputs a build record named");

    // `ipbp-ld map` finds the map without opening the one a record names.
    let mut named = Fifo::new(project.root().join("named-map.fifo"));
    std::fs::write(
        home.join("builds").join(&id),
        format!("build-id {id}\noutput /x\nmap {}\ninputs /x\n", named.path.display()),
    )
    .unwrap();
    let run = project.ipbp_ld(&["map", &project.program("counter").display().to_string()]);
    assert!(!named.was_opened(), "`ipbp-ld map` opened the map a record named: {run}");
    assert!(
        run.stdout.contains(".json"),
        "`ipbp-ld map` did not find the map in the target directory: {run}"
    );
}
