//! What ipbp-ld keeps of a build of the counter app, and that it stays bounded: the inputs of a
//! program that links the runtime are fingerprinted and kept, executables that can never register
//! get no index and no registry note, a test harness gets no index after its link, and rebuilding
//! keeps the store the same size.

use super::support::live::CONFIG;
use super::support::{arg, fingerprint, load_map, read_bytes, Linker, Project};
use ipbp_ld::map::schema::{InputKind, SymbolKind};
use std::path::{Path, PathBuf};

/// `ipbp-ld map <binary>`: waits for the build's detached writer, writes the map if needed.
#[track_caller]
fn map_of(project: &Project, binary: &Path) -> PathBuf {
    let run = project.ipbp_ld(&[arg("map"), arg(binary)]);
    run.assert_success();
    PathBuf::from(run.stdout.trim_end())
}

/// Number of entries and total bytes in `<target>/ipbp/store` (the lock and markers aside).
fn store_size(project: &Project) -> (usize, u64) {
    let store = project.target(CONFIG).join("ipbp/store");
    let mut size = (0, 0);
    for e in std::fs::read_dir(&store).expect("no store").flatten() {
        if !e.file_name().to_string_lossy().starts_with('.') {
            size.0 += 1;
            size.1 += e.metadata().unwrap().len();
        }
    }
    size
}

/// Rebuilding after an edit that changes a library's rlib but not the program (a comment at the
/// end of `words`) keeps the build id; every such rebuild used to add the new rlib to the store,
/// which was only swept when an old build was collected.
#[test]
fn ten_rebuilds_with_the_same_build_id_keep_the_store_size_constant() {
    let project = super::support::live::scenario("counter");
    // The copy's first build relinks the program at its new path.
    project.build();
    let binary = project.program("counter");
    let first_map = map_of(&project, &binary);
    let build_id = load_map(&first_map).build_id;
    let words_rlib = |map: &Path| {
        let list = std::fs::read_to_string(map.with_extension("inputs")).unwrap();
        list.lines().find(|l| l.contains("/libwords-")).expect("no words rlib among the inputs").to_string()
    };
    let mut rlibs = vec![words_rlib(&first_map)];
    let mut sizes = Vec::new();
    for n in 0..10 {
        let text = project.read("words/src/lib.rs");
        project.write("words/src/lib.rs", &format!("{text}// rebuild {n}\n"));
        project.build();
        let map = map_of(&project, &binary);
        assert_eq!(load_map(&map).build_id, build_id, "the comment changed the program (rebuild {n})");
        rlibs.push(words_rlib(&map));
        sizes.push(store_size(&project));
    }
    // The premise: each rebuild linked another words rlib (so kept another file).
    rlibs.dedup();
    assert_eq!(rlibs.len(), 11, "the words rlib did not change with every rebuild: {rlibs:#?}");
    assert!(sizes.iter().all(|s| *s == sizes[0]), "the store changed size over ten rebuilds: {sizes:?}");
}

/// The inputs of a program linking the runtime are listed in link order, fingerprinted, and kept in
/// the store with exactly the content that was linked (rustc deletes its objects after the link).
#[test]
fn inputs_of_a_program_linking_the_runtime_are_fingerprinted_and_kept() {
    let project = super::support::live::scenario("counter");
    // The copy's first build links the program again, at its new path, with this registry.
    project.build();
    let target = project.target(CONFIG);
    let binary = project.program("counter");
    let path = map_of(&project, &binary);
    let map = load_map(&path);
    let inputs = &map.inputs;
    let all = format!("{inputs:#?}");
    // A program that can register: noted in the registry, with its link index beside the map.
    let record = project.home.join("builds").join(&map.build_id);
    let text = std::fs::read_to_string(&record).unwrap_or_else(|e| panic!("no {}: {e}", record.display()));
    assert!(
        text.lines().any(|l| l == format!("inputs {}", path.with_extension("inputs").display())),
        "{text}"
    );
    assert!(path.with_extension("index").is_file(), "no link index beside {}", path.display());

    for input in inputs {
        if input.kind == InputKind::Library {
            assert!(input.fingerprint.is_none() && input.stored.is_none(), "{input:?}");
            continue;
        }
        let fp = input.fingerprint.as_deref().unwrap_or_else(|| panic!("no fingerprint: {input:?}"));
        let kept = matches!(input.kind, InputKind::Object | InputKind::Archive);
        assert_eq!(input.stored.is_some(), kept, "stored copy of {input:?}");
        let content = match &input.stored {
            Some(stored) => {
                assert!(
                    stored.starts_with(target.join("ipbp/store")),
                    "{} is not in the store",
                    stored.display()
                );
                read_bytes(stored)
            }
            None => read_bytes(&input.path),
        };
        assert_eq!(fingerprint(&content), fp, "content of {input:?}");
    }
    assert!(
        inputs.iter().any(|i| i.kind == InputKind::Archive
            && i.path.file_name().unwrap().to_string_lossy().starts_with("libipbp-")),
        "the runtime's rlib is not among the inputs: {all}"
    );

    // The kept objects really are counter's code: together they define `counter::main`.
    let objects: Vec<&PathBuf> =
        inputs.iter().filter(|i| i.kind == InputKind::Object).filter_map(|i| i.stored.as_ref()).collect();
    let main = map
        .symbols
        .iter()
        .find(|s| s.demangled == "counter::main" && s.kind == SymbolKind::Function)
        .expect("counter::main");
    let defined = objects.iter().any(|p| {
        use object::{Object, ObjectSymbol};
        let data = read_bytes(p);
        let obj = object::File::parse(&*data).expect("a kept object is ELF");
        let found = obj.symbols().any(|s| s.is_definition() && s.name() == Ok(main.name.as_str()));
        found
    });
    assert!(defined, "no kept object defines {}", main.name);

    // With incremental compilation rustc keeps each object of the binary in its session dir as
    // `<cgu>.o`: the kept copy has the same bytes as the newest session's (the copy of the app
    // still holds the template's older session too).
    let mut compared = 0;
    for crate_dir in
        std::fs::read_dir(target.join("debug/incremental")).expect("no incremental dir").flatten()
    {
        let newest = std::fs::read_dir(crate_dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|s| s.file_type().is_ok_and(|t| t.is_dir()))
            .max_by_key(|s| s.metadata().and_then(|m| m.modified()).ok());
        if let Some(session) = newest {
            for file in std::fs::read_dir(session.path()).into_iter().flatten().flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                let Some(cgu) = name.strip_suffix(".o") else { continue };
                let Some(input) = inputs.iter().find(|i| {
                    i.kind == InputKind::Object
                        && i.path.file_name().unwrap().to_string_lossy().contains(&format!(".{cgu}."))
                }) else {
                    continue;
                };
                let kept = read_bytes(input.stored.as_ref().unwrap());
                assert!(kept == read_bytes(&file.path()), "kept copy of {} differs", input.path.display());
                compared += 1;
            }
        }
    }
    assert!(compared * 2 > objects.len(), "only {compared} of {} objects compared", objects.len());
}

/// `cargo test --no-run --workspace` links `words`' unit tests, which do not link the runtime, and
/// counter's, which do (a test harness). Neither gets a link index after the link (a patch of a
/// running test harness builds it, as for a build whose index was lost); only the one that could
/// register is in the registry and has its inputs kept.
#[test]
fn executables_without_the_runtime_are_not_registered_and_test_harnesses_get_no_index_after_the_link() {
    let project = super::support::live::scenario("counter");
    let run = project.cargo(Linker::Shim, CONFIG, &["test", "--no-run", "--workspace"]).run();
    run.assert_success();
    let maps = project.target(CONFIG).join("ipbp/maps");
    let program = load_map(&map_of(&project, &project.program("counter"))).output;
    let mut seen = Vec::new();
    for out in std::fs::read_dir(&maps).unwrap().flatten() {
        let name = out.file_name().to_string_lossy().into_owned();
        let deps = project.target(CONFIG).join("debug/deps").join(&name);
        if Some(out.file_name().as_os_str()) == program.file_name() {
            continue;
        }
        let map = map_of(&project, &deps);
        let recorded = load_map(&map);
        let index = map.with_extension("index");
        assert!(!index.exists(), "{name} got a link index after its link: {}", index.display());
        let registered = project.home.join("builds").join(&recorded.build_id).exists();
        let kept = recorded.inputs.iter().any(|i| i.stored.is_some());
        if name.starts_with("words-") {
            assert!(!registered && !kept, "{name} cannot register, yet registered {registered}, kept {kept}");
        } else {
            assert!(name.starts_with("counter-"), "unexpected executable {name}: {run}");
            assert!(registered && kept, "{name} may be patched, yet registered {registered}, kept {kept}");
        }
        seen.push(name);
    }
    seen.sort();
    assert_eq!(seen.len(), 2, "expected words' and counter's test executables, recorded: {seen:?}: {run}");

    // An executable that is gone (`cargo clean -p`, say) cannot be started again: the next
    // collection drops its builds, and the store what only they kept.
    let harness = seen.iter().find(|n| n.starts_with("counter-")).unwrap();
    std::fs::remove_file(project.target(CONFIG).join("debug/deps").join(harness)).unwrap();
    project.touch("src/main.rs");
    project.build();
    map_of(&project, &project.program("counter"));
    let left: Vec<_> = std::fs::read_dir(maps.join(harness))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "the builds of the deleted {harness} were kept: {left:?}");
    let kept = std::fs::read_dir(project.target(CONFIG).join("ipbp/store")).unwrap().flatten();
    let lists: String = std::fs::read_dir(&maps)
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "inputs"))
        .map(|f| std::fs::read_to_string(f.path()).unwrap())
        .collect();
    for entry in kept {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(name.starts_with('.') || lists.contains(&name), "{name} is kept for no build");
    }
}

/// A doctest of a crate linking the runtime (here a stand-in crate named `ipbp`, whose doctests
/// link its rlib) is linked by rustdoc into a temporary directory it deletes after running it:
/// ipbp-ld records nothing of it, there or in the registry.
#[test]
fn doctests_of_a_crate_linking_the_runtime_leave_nothing_behind() {
    let lib = "/// ```\n/// assert_eq!(ipbp::answer(), 42);\n/// ```\npub fn answer() -> u32 {\n    42\n}\n";
    let project = Project::with_files(
        "doctest",
        &[
            (
                "Cargo.toml",
                "[package]\nname = \"ipbp\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
            ),
            ("Cargo.lock", "version = 4\n\n[[package]]\nname = \"ipbp\"\nversion = \"0.1.0\"\n"),
            ("src/lib.rs", lib),
        ],
    );
    let tmp = project.root().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let (script, log) = super::support::logging_linker(project.root());
    let run = project
        .cargo(Linker::Shim, "doc", &["test", "--doc"])
        .env("TMPDIR", &tmp)
        .env("IPBP_LINKER", &script)
        .run();
    run.assert_success();
    assert!(run.stdout.contains("1 passed"), "the doctest did not run: {run}");
    let links = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        links.lines().any(|l| l.ends_with("/rust_out")),
        "the doctest was not linked through ipbp-ld: {links}"
    );
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "left behind in TMPDIR after the doctest: {left:?}");
    let registered = std::fs::read_dir(project.home.join("builds")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(registered, 0, "the doctest was noted in the registry");
}
