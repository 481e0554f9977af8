use super::peer::connect_within;
use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ipbp-registry-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn reg(pid: u32) -> Registration {
    Registration {
        pid,
        start_time: 12345,
        exe: "/a b/app".into(),
        build_id: "abcd".into(),
        load_bias: 0x5555_0000_0000,
        runtime_version: "0.1.0".into(),
    }
}

#[test]
fn registration_round_trips() {
    assert_eq!(Registration::parse(&reg(42).to_text()), Some(reg(42)));
}

#[test]
fn own_process_is_alive_and_a_changed_start_time_is_not() {
    let pid = std::process::id();
    let mut reg = Registration { pid, start_time: process_start_time(pid).unwrap(), ..reg(pid) };
    assert!(reg.is_alive());
    assert!(!is_stopped(pid));
    reg.start_time += 1;
    assert!(!reg.is_alive());
}

#[test]
fn a_fresh_registry_is_private_and_round_trips_records() {
    let base = scratch("fresh");
    let root = base.join("home");
    assert!(matches!(Registry::open(&root, false), Err(OpenError::Missing)));
    let r = Registry::open(&root, true).unwrap();
    assert_eq!(std::fs::metadata(&root).unwrap().permissions().mode() & 0o777, 0o700);
    let build = BuildRecord {
        build_id: "00ff".into(),
        output: "/t/app".into(),
        map: "/t/m.json".into(),
        inputs: "/t/m.inputs".into(),
    };
    r.write_build(&build).unwrap();
    assert_eq!(r.build("00ff"), Some(build));
    assert_eq!(std::fs::metadata(root.join("builds")).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(root.join("builds/00ff")).unwrap().permissions().mode() & 0o777, 0o600);
    r.register(&reg(7)).unwrap();
    assert_eq!(std::fs::metadata(root.join("7.process")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(r.list(), vec![reg(7)]);
    r.unregister(7);
    assert!(r.list().is_empty());
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn names_come_from_pids_and_build_ids_only() {
    let base = scratch("names");
    let r = Registry::open(&base.join("home"), true).unwrap();
    for bad in ["../../etc/shadow", "ABCD", "", "a/b", "x"] {
        assert!(check_build_id(bad).is_err(), "{bad:?} accepted");
        assert_eq!(r.build(bad), None);
    }
    // A registration whose pid disagrees with its file name, or with a bad build id, is ignored.
    std::fs::write(base.join("home/8.process"), reg(9).to_text()).unwrap();
    let evil = Registration { build_id: "../x".into(), ..reg(10) };
    std::fs::write(base.join("home/10.process"), evil.to_text()).unwrap();
    assert!(r.list().is_empty());
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn symlinks_and_loose_directories_are_refused() {
    let base = scratch("unsafe");
    let real = base.join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = base.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = Registry::open(&link, true).unwrap_err();
    assert!(matches!(e, OpenError::Unsafe(_)) && e.to_string().contains("symbolic link"), "{e}");

    let open = base.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = Registry::open(&open, true).unwrap_err();
    assert!(e.to_string().contains("writable by other users") && e.to_string().contains("chmod 700"), "{e}");

    // Only readable by others: nothing could be planted; tightened to 0700.
    let readable = base.join("readable");
    std::fs::create_dir(&readable).unwrap();
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o755)).unwrap();
    Registry::open(&readable, false).unwrap();
    assert_eq!(std::fs::metadata(&readable).unwrap().mode() & 0o777, 0o700);

    // A symlinked lock is not followed (and nothing is created at its target).
    let r = Registry::open(&real, false).unwrap();
    std::os::unix::fs::symlink(base.join("victim"), real.join("5.lock")).unwrap();
    assert!(r.lock(5).is_err());
    assert!(!base.join("victim").exists());
    // A symlinked socket is not connected to.
    std::os::unix::fs::symlink("/dev/null", real.join("5.sock")).unwrap();
    let e = r.connect(5).unwrap_err();
    assert!(e.to_string().contains("not a socket"), "{e}");
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn connecting_to_a_program_that_does_not_accept_gives_up() {
    let base = scratch("backlog");
    let path = base.join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // SAFETY: lowers the backlog of our own listening socket.
    unsafe { libc::listen(listener.as_raw_fd(), 0) };
    let mut held = Vec::new();
    let failed = (0..16).find_map(|_| match connect_within(&path, std::time::Duration::from_millis(200)) {
        Ok(s) => {
            held.push(s);
            None
        }
        Err(e) => Some(e),
    });
    let e = failed.expect("a full backlog should make connect give up");
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn a_directory_of_another_user_is_refused() {
    if uid() != 0 {
        eprintln!("skipped: only root can hand a directory to another user");
        return;
    }
    let base = scratch("owner");
    let planted = base.join("planted");
    std::fs::create_dir(&planted).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    let e = Registry::open(&planted, true).unwrap_err();
    assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    let _ = std::fs::remove_dir_all(base);
}
