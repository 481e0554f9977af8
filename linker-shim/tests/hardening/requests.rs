//! Requests from a client of the right user that are wrong, hostile or slow: each gets an `error`
//! answer, the program runs on unharmed, and stays patchable.

use super::*;
use std::fmt::Write as _;

/// A shared library with a constructor that prints, and a `DT_NEEDED` entry (libm): loading it
/// would run code in the program.
fn evil_library(project: &Project) -> std::path::PathBuf {
    let dir = project.root().join("evil");
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join("evil.c");
    std::fs::write(
        &c,
        "#include <stdio.h>\n#include <math.h>\n\
         __attribute__((constructor)) static void evil(void) { puts(\"EVIL CONSTRUCTOR RAN\"); fflush(stdout); }\n\
         double use_libm(double x) { return cos(x); }\n",
    )
    .unwrap();
    let so = dir.join("evil.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&c)
        .args(["-Wl,--no-as-needed", "-lm"])
        .status()
        .expect("cannot run cc");
    assert!(status.success(), "cc failed to build the test library");
    so
}

/// The head of an `apply` request that passes the identity checks.
fn head(h: &ipbp::protocol::Hello) -> String {
    format!(
        "ipbp-patch 1\nop apply\nbuild-id {}\nload-bias {:#x}\ngeneration {}\n",
        h.build_id, h.load_bias, h.generation
    )
}

#[track_caller]
fn expect_error(answer: &str, containing: &str, what: &str) {
    assert!(
        answer.starts_with("error ") && answer.contains(containing),
        "{what}: expected an error about {containing:?}, got: {answer}"
    );
}

/// Every hostile request kind the review found: each is refused with an `error`, none writes to
/// the program, loads a library, panics or prints; slow and surplus clients hold no one up;
/// afterwards the program is patched as usual.
#[test]
fn hostile_requests_are_refused_and_the_program_runs_on() {
    let (project, app) = running_counter(&[]);
    let h = hello(&project, app.pid);
    let bias = h.load_bias;
    let at = Addresses::of(&project.program("counter"));
    let ticks_static = bias + at.symbol("7counter5TICKS");
    let tick = bias + at.symbol("7counter4tick17h");
    let tick_slot = bias + at.symbol("7counter4tick11__IPBP_SLOT");
    let relro = bias + at.section(".data.rel.ro").next_multiple_of(8);
    let evil = evil_library(&project);
    let evil_hash = xxhash_rust::xxh3::xxh3_128(&std::fs::read(&evil).unwrap());
    let mark = app.mark();
    let global_before = app.ticks_since(0).iter().map(|t| t.global).max().unwrap_or(0);
    let head = head(&h);

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "a slot at a plain static",
            format!("{head}slot {ticks_static:#x} {tick:#x}\nend\n"),
            "not a hot slot",
        ),
        ("a slot in RELRO", format!("{head}slot {relro:#x} {tick:#x}\nend\n"), "slot"),
        (
            "a slot pointing into a function",
            format!("{head}slot {tick_slot:#x} {:#x}\nend\n", tick + 7),
            "not the entry",
        ),
        (
            "a slot pointing at the program's own function",
            format!("{head}slot {tick_slot:#x} {tick:#x}\nend\n"),
            "of a patch",
        ),
        (
            "a redirect into a function",
            format!("{head}redirect {tick:#x} {:#x}\nend\n", tick + 7),
            "redirect",
        ),
        ("a redirect from data", format!("{head}redirect {ticks_static:#x} {tick:#x}\nend\n"), "redirect"),
        (
            "a detour written over a static",
            format!("{head}detour {ticks_static:#x} {tick:#x}\nend\n"),
            "not the entry of a function of this program",
        ),
        (
            "a detour in the middle of a function",
            format!("{head}detour {:#x} {tick:#x}\nend\n", tick + 7),
            "not the entry of a function of this program",
        ),
        (
            "a detour to the program's own code",
            format!("{head}detour {tick:#x} {:#x}\nend\n", tick + 16),
            "not the entry of a function of a patch",
        ),
        (
            "a settled jump from the program's own function",
            format!("{head}settle {tick:#x} {:#x}\nend\n", tick + 16),
            "not the entry of a function of an earlier patch",
        ),
        (
            "overlapping detours",
            format!("{head}detour {tick:#x} {tick:#x}\ndetour {:#x} {tick:#x}\nend\n", tick + 2),
            "overlap",
        ),
        (
            "a range near u64::MAX",
            format!(
                "{head}file {}\nrange 0xfffffffffffff000 0x2000\nhash {evil_hash:032x}\nend\n",
                evil.display()
            ),
            "range",
        ),
        (
            "a library with DT_NEEDED and a constructor",
            format!("{head}file {}\nrange 0x0 0x100000\nhash {evil_hash:032x}\nend\n", evil.display()),
            "DT_NEEDED",
        ),
        (
            "a library with the wrong hash",
            format!("{head}file {}\nrange 0x0 0x100000\nhash {:032x}\nend\n", evil.display(), evil_hash ^ 1),
            "hash",
        ),
        (
            "a library without hash",
            format!("{head}file {}\nrange 0x0 0x100000\nend\n", evil.display()),
            "hash",
        ),
        (
            "a static outside any patch",
            format!("{head}data {ticks_static:#x} 8 _ZN3app3NEW17h0E\nend\n"),
            "not inside",
        ),
        (
            "a thread-local outside the reserve",
            format!("{head}tls 0x10000 8 _ZN3app3TLS17h0E\nend\n"),
            "reserve",
        ),
        ("a bad number", format!("{head}slot 0xzz 0x1\nend\n"), "bad `slot`"),
        (
            "a stale generation",
            head.replace(&format!("generation {}", h.generation), "generation 99") + "end\n",
            "generation",
        ),
        ("another build", head.replace(&h.build_id, "00ff") + "end\n", "build"),
        ("garbage", "GET / HTTP/1.1\r\n\r\n".into(), "not an ipbp-patch 1 request"),
        ("an unknown op", "ipbp-patch 1\nop format-disk\nend\n".into(), "unknown op"),
    ];
    for (what, request, containing) in &cases {
        expect_error(&ask(&project, app.pid, request.as_bytes()), containing, what);
    }
    // 250,000 ledger entries: refused as a whole, so `hello` stays small and the process patchable.
    let mut flood = head.clone();
    for i in 0..250_000u32 {
        let _ = writeln!(flood, "tls {:#x} 8 _ZN3app4FLOOD{i}E", (i % 1000) * 8);
    }
    flood.push_str("end\n");
    expect_error(&ask(&project, app.pid, flood.as_bytes()), "restart it", "a ledger flood");
    // Not UTF-8, and larger than any request may be.
    expect_error(
        &ask(&project, app.pid, b"ipbp-patch 1\nop \xff\xfe\nend\n"),
        "UTF-8",
        "bytes that are not text",
    );
    let huge = vec![b'x'; ipbp::protocol::MAX_MESSAGE + 10];
    expect_error(&ask(&project, app.pid, &huge), "too large", "a huge request");

    let after = hello(&project, app.pid);
    assert_eq!(after.generation, 0, "a hostile request was applied");
    assert!(
        after.slots.is_empty() && after.data.is_empty() && after.tls.is_empty() && after.patches.is_empty()
    );
    assert_unharmed(&app, mark, "hello", global_before);

    // A client that sends a byte now and then holds no one up and is cut off at its deadline;
    // clients beyond the limit are told to come back.
    let socket = project.home.join(format!("{}.sock", app.pid));
    let slow = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let mut stream = UnixStream::connect(&socket).unwrap();
            stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut answer = Vec::new();
            for b in b"ipbp-patch 1\nop hello\n".iter().cycle().take(400) {
                if stream.write_all(&[*b]).is_err() {
                    break;
                }
                let mut buf = [0u8; 4096];
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                    Err(_) => {} // nothing yet
                }
                if answer.ends_with(b"end\n") {
                    break;
                }
            }
            String::from_utf8(answer).unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // Answered while the slow client is still connected.
    assert_eq!(hello(&project, app.pid).generation, 0);
    assert!(!slow.is_finished(), "the slow client was cut off before its deadline");

    let answer = slow.join().unwrap();
    assert!(answer.starts_with("error ") && answer.contains("not complete"), "the slow client got: {answer}");

    // Idle connections up to the limit, then one more: that one is told the program is busy. (Once
    // the slow client is cut off: if its deadline passed between the idle connections and the
    // surplus one, as on a loaded machine, a place would free up for the surplus client.)
    let idle: Vec<UnixStream> = (0..8).map(|_| UnixStream::connect(&socket).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let answer = ask(&project, app.pid, ipbp::protocol::Request::Hello.encode().as_bytes());
    assert!(answer.starts_with("error busy"), "the surplus client was not told to come back: {answer}");
    drop(idle);

    // Still patchable as usual.
    let mark = app.mark();
    project.edit(MAIN, "let msg = \"hello\";", "let msg = \"still\";");
    build_and_expect_patched(&project, &app);
    app.wait_for_ticks(mark, &THREADS, "the edit", |t| t.get("msg") == "still");
}

/// Thousands of generated and mutated requests against a live program: every answer is `ok` or
/// `error`, the program never crashes, its output stays what it was, and a real patch still
/// applies afterwards.
#[test]
fn generated_requests_get_ok_or_error_and_never_harm_the_program() {
    const REQUESTS: usize = 3000;
    let seed =
        std::env::var("IPBP_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x9e37_79b9_7f4a_7c15);
    let (project, app) = running_counter(&[]);
    let h = hello(&project, app.pid);
    let at = Addresses::of(&project.program("counter"));
    let bias = h.load_bias;
    let tick = bias + at.symbol("7counter4tick17h");
    let slot = bias + at.symbol("7counter4tick11__IPBP_SLOT");
    let greet = bias + at.symbol("7Greeter5greet17h");
    let evil = evil_library(&project);
    let evil_hash = xxhash_rust::xxh3::xxh3_128(&std::fs::read(&evil).unwrap());
    let mark = app.mark();
    let global_before = app.ticks_since(0).iter().map(|t| t.global).max().unwrap_or(0);

    // Numbers a mutation puts in place of another: edges, and addresses near real ones — never
    // the exact entry of a function a slot could legitimately take (none is loaded: every slot
    // and redirect target must then be refused).
    let numbers: Vec<String> =
        [0, 1, 7, 8, 4096, u64::MAX, u64::MAX - 4095, i64::MAX as u64, bias, tick, slot, greet]
            .iter()
            .flat_map(|&n| [n, n.wrapping_add(1), n.wrapping_sub(8), n.wrapping_add(4096)])
            .map(|n| format!("{n:#x}"))
            .collect();
    let keys = [
        "op",
        "build-id",
        "load-bias",
        "generation",
        "file",
        "range",
        "hash",
        "slot",
        "redirect",
        "detour",
        "settle",
        "changed",
        "data",
        "tls",
        "summary",
        "end",
        "ipbp-patch",
    ];
    let mut rng = Rng(seed);
    let mut generation = h.generation;
    let (mut oks, mut errors) = (0, 0);
    for i in 0..REQUESTS {
        let base = format!(
            "ipbp-patch 1\nop apply\nbuild-id {}\nload-bias {bias:#x}\ngeneration {generation}\n",
            h.build_id
        );
        let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
        match rng.below(7) {
            0 => lines = vec!["ipbp-patch 1".into(), "op hello".into()],
            1 => lines.push(format!("slot {slot:#x} {tick:#x}")),
            2 => lines.push(format!("redirect {greet:#x} {:#x}", tick + 16)),
            6 => lines.push(format!("detour {greet:#x} {tick:#x}")),
            3 => lines.extend([
                format!("file {}", evil.display()),
                "range 0x0 0x100000".into(),
                format!("hash {evil_hash:032x}"),
            ]),
            4 => lines.push(format!("tls {:#x} 8 _ZN3app3TLS{i}E", rng.below(9000))),
            _ => lines.push(format!("summary fuzz {i}")),
        }
        lines.push("end".into());
        for _ in 0..1 + rng.below(3) {
            let n = lines.len();
            if n == 0 {
                break;
            }
            match rng.below(8) {
                0 => {
                    lines.remove(rng.below(n));
                }
                1 => {
                    let l = lines[rng.below(n)].clone();
                    lines.insert(rng.below(n + 1), l);
                }
                2 => lines.swap(rng.below(n), rng.below(n)),
                3 => {
                    // Replace a value by an interesting number.
                    let j = rng.below(n);
                    let mut words: Vec<String> = lines[j].split(' ').map(str::to_string).collect();
                    let w = rng.below(words.len());
                    if w > 0 {
                        words[w] = rng.pick(&numbers).clone();
                    }
                    lines[j] = words.join(" ");
                }
                4 => {
                    let key = rng.pick(&keys);
                    lines.insert(rng.below(n + 1), format!("{key} {}", rng.pick(&numbers)));
                }
                5 => {
                    // Flip a byte (kept printable so the line structure survives more often).
                    let j = rng.below(n);
                    let mut bytes = lines[j].clone().into_bytes();
                    if !bytes.is_empty() {
                        let k = rng.below(bytes.len());
                        bytes[k] = b' ' + (rng.below(95) as u8);
                    }
                    lines[j] = String::from_utf8(bytes).unwrap();
                }
                6 => lines.truncate(rng.below(n + 1)),
                _ => {
                    let j = rng.below(n);
                    lines[j].push_str(&" 0x41".repeat(rng.below(4)));
                }
            }
        }
        let mut request = lines.join("\n");
        request.push('\n');
        let answer = ask(&project, app.pid, request.as_bytes());
        if answer.starts_with("ok\n") {
            oks += 1;
            if let Some(g) = answer.lines().find_map(|l| l.strip_prefix("generation ")) {
                if !answer.contains("\npid ") {
                    generation = g.parse().unwrap();
                }
            }
        } else {
            assert!(
                answer.starts_with("error ") && answer.ends_with("end\n"),
                "request {i} (seed {seed}) got neither ok nor error: {answer:?}\nrequest:\n{request}"
            );
            errors += 1;
        }
    }
    assert!(
        oks > 0 && errors > 0,
        "the generator exercised only one kind of answer: {oks} ok, {errors} errors"
    );
    let after = hello(&project, app.pid);
    assert!(after.slots.is_empty() && after.redirects.is_empty() && after.patches.is_empty(), "{after:?}");
    assert_unharmed(&app, mark, "hello", global_before);

    let mark = app.mark();
    project.edit(MAIN, "let msg = \"hello\";", "let msg = \"fuzzed\";");
    build_and_expect_patched(&project, &app);
    app.wait_for_ticks(mark, &THREADS, "the edit", |t| t.get("msg") == "fuzzed");
}
