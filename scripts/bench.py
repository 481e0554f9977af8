#!/usr/bin/env python3
"""ipbp's benchmarks: figures P1-P8 of issue 4, in one run, written to BENCHMARKS.md.

    scripts/bench.py                 everything (~3 min warm on 2 cores; the first run also builds
                                     the apps' dependencies, web's 125 crates twice among them)
    scripts/bench.py --rounds 3      fewer rounds per figure (default 7)
    scripts/bench.py --only P3,P5    some figures (P1 and P2 need the web link capture of P1)
    scripts/bench.py --only P1b      the whole-workspace rebuild alone (its own section of
                                     BENCHMARKS.md; ~3 min with 7 rounds on 2 cores, more the
                                     first time)
    scripts/bench.py --only P11      the layout guard's cost alone (its own section of BENCHMARKS.md;
                                     builds web and scripts/gen_webscaled.py's large variant)
    scripts/bench.py --only P12      a working day: one counter patched --patches times (default
                                     1000, ~30 min on 2 cores) by real builds; its own section
    scripts/bench.py --no-write      print the table, leave BENCHMARKS.md alone
    scripts/bench.py --only P3L      P3 when the link fails after the patch went live (its own
                                     section of BENCHMARKS.md; counter only)
    scripts/bench.py --only P10      save → new output under `ipbp-ld watch` vs `cargo build` and cargo-watch
                                     (scripts/bench_watch.py; its own section of BENCHMARKS.md)

Workloads (testdata/): `counter` (the end-to-end tests' app), `web` (axum + tokio + serde, 125
crates), `scaled` (counter plus 5000 generated functions in the binary and three workspace crates,
made by scripts/gen_scaled.py) and `hotcall` (the P5 microbenchmark). Each is copied to
scripts/out/bench/<app> and built through ipbp-ld like a user's project (a `.cargo/config.toml`
naming the linker); P7's restart path builds a second copy with the plain linker. Target
directories are kept between runs, so only the first run builds dependencies.

Method: every figure is measured in rounds; the table shows medians, and every ratio is the median
of per-round ratios (the two sides measured back to back), because absolute times drift on a
shared machine and ratios hold. Times inside ipbp-ld and the app come from the patch manifests
(`target/ipbp/patches/<pid>-<start>/patch-<n>.json`); times around cargo from timestamps taken by a
RUSTC_WRAPPER and, for the plain linker, a linker wrapper. Standard library only.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_apps import (  # noqa: E402
    HOME, ROOT, App, Patcher, Process, RebuildWorkspace, app_env, generate_scaled, generate_webscaled, http_get, log,
    median, patched_line, run, settle, step, write_wrappers,
)
import bench_workday  # noqa: E402
from bench_report import (  # noqa: E402
    BENCHMARKS_MD, machine, p11_md, p1b_md, report_md, summarize, write_benchmarks_md,
)

RESULTS = os.path.join(ROOT, "scripts", "out", "bench.json")

# The edits. Each round switches between two variants that both differ from the source the process
# started with, so every round patches the same amount of code (patches are always made against
# the build a process started from; going back to it would be a revert).
COUNTER_EDIT = ("src/main.rs", 'let msg = "hello";', 'let msg = "{v}";')
WEB_EDIT = ("src/handlers.rs", 'format!("Hello, {name}!")', 'format!("{v}, {name}!")')
HUNDRED_EDIT = ("src/hundred.rs", "pub const HUNDRED_SCALE: u64 = 3;", "pub const HUNDRED_SCALE: u64 = {v};")
HOTCALL_EDIT = ("src/main.rs", "const SCALE: u64 = 3;", "const SCALE: u64 = {v};")


# P11: edits made one after another in a running server, each kept (patches are cumulative: the
# nth patch carries every unit changed since the process started). Each round applies the next edit
# of the list with a new variant.
GUARD_WEB_EDITS = [
    ("src/handlers.rs", 'format!("Hello, {name}!")', 'format!("{v}, {name}!")'),
    ("src/handlers.rs", 'format!("{n}\\n")', 'format!("{v}={n}\\n")'),
    ("src/handlers.rs", '"ok\\n"', '"{v}\\n"'),
    ("src/handlers.rs", 'format!("no route for {}\\n", uri.path())', 'format!("{v} {}\\n", uri.path())'),
]
# The large program (scripts/gen_webscaled.py): a template-like constant every page module uses
# first, as in miniserve, then the handler edits.
GUARD_WEBSCALED_EDITS = [
    ("src/pages/mod.rs", 'PAGE_FOOTER: &str = "served by web"', 'PAGE_FOOTER: &str = "served by {v}"'),
] + GUARD_WEB_EDITS


def creation_ms(m):
    """Patch creation in the shim: diff (with loading the units) + plan + emit."""
    t = m["timings"]
    return t["diff_ms"] + t["plan_ms"] + t["emit_ms"]


def apply_ms(m):
    t = m["timings"]
    return (t["load_us"] + t["install_us"]) / 1000.0


def chunk_bytes(m):
    return sum(c["size"] for c in m["chunks"])


def ipbp_breakdown(p):
    """Where the time goes from saving an edit to the process running new code (P3, P7)."""
    m, t = p["manifest"], p["manifest"]["timings"]
    called = t["called_unix"]
    rustc = p["rustc"] or (called, called)
    layouts = dict(t["steps"]).get("layouts", 0.0)  # inside diff_ms
    parts = {
        "cargo, before rustc": (rustc[0] - p["cargo_start"]) * 1e3,
        "rustc, until it calls the linker": (called - rustc[0]) * 1e3,
        "ipbp-ld, before the patch": t["started_ms"],
        "ipbp-ld: diff": t["diff_ms"] - layouts,
        "ipbp-ld: layout guard": layouts,
        "ipbp-ld: plan": t["plan_ms"],
        "ipbp-ld: emit": t["emit_ms"],
        "delivery": t["deliver_ms"] - apply_ms(m),
        "apply in the process": apply_ms(m),
    }
    return parts, (called + t["applied_ms"] / 1e3 - p["cargo_start"]) * 1e3


# Figures


def p1(args, results):
    step("P1: executable link through ipbp-ld vs the plain linker (web)")
    cmd = [os.path.join(ROOT, "scripts", "bench-link.sh"), "-n", str(args.rounds), "-m", "both"]
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit("bench: scripts/bench-link.sh failed")
    print(p.stdout, file=sys.stderr)
    with open(os.path.join(ROOT, "scripts", "out", "bench-link.json")) as f:
        rep = json.load(f)
    results["P1"] = {
        "same": rep["p1"]["same"],
        "fresh": rep["p1"]["fresh"],
        "inline_same": rep["p1_inline"]["same"],
        "cpu_same": rep["p1_cpu"]["same"],
        "plain_ms": rep["modes"]["same"]["summary"]["plain"]["median"] * 1e3,
        "ipbp_ms": rep["modes"]["same"]["summary"]["ipbp-ld"]["median"] * 1e3,
        "inline_ms": rep["modes"]["same"]["summary"]["inline"]["median"] * 1e3,
        "identical": rep["outputs_identical"],
        "map_symbols": rep["link"].get("map_symbols"),
        "output_mb": rep["link"]["output_bytes"] / 1e6,
    }


def p1b(args, results):
    """A whole incremental rebuild through ipbp-ld vs the plain linker: touch the library every
    crate of the generated workspace depends on, `cargo test --no-run --workspace`, counted until
    ipbp-ld's detached writers have exited. The two configurations alternate which goes first."""
    step("P1b: incremental workspace rebuild relinking every executable, ipbp-ld vs plain")
    ws = RebuildWorkspace()
    ws.prepare()
    settle()
    rounds = []
    for n in range(args.rounds):
        ws.touch()
        order = ("plain", "ipbp-ld") if n % 2 == 0 else ("ipbp-ld", "plain")
        r = {config: ws.rebuild(config) for config in order}
        for config in order:
            if r[config]["exit"] != 0:
                sys.exit(f"bench: P1b rebuild ({config}) failed:\n{r[config]['stderr']}")
        r["ipbp_bytes"], r["ipbp_own_bytes"] = ws.ipbp_size()
        p, i = r["plain"], r["ipbp-ld"]
        log(f"  round {n + 1}: {i['relinked']}/{i['executables']} relinked; wall {p['wall']:.2f} s plain, "
            f"{i['wall']:.2f} s ipbp-ld ({i['wall'] / p['wall']:.3f}); CPU {p['cpu']:.2f} s, {i['cpu']:.2f} s "
            f"({i['cpu'] / p['cpu']:.3f}); target/ipbp {r['ipbp_bytes'] / 1e6:.1f} MB")
        for config in order:
            r[config].pop("stderr", None)
        rounds.append(r)
    results["P1b"] = rounds


def relink_command():
    """The plain `cc` link of web captured by bench-link.sh, to replay (P2's denominator)."""
    cap = os.path.join(ROOT, "scripts", "out", "bench-link", "capture")
    if not os.path.exists(os.path.join(cap, "cc.args")):
        return None
    args = [os.fsdecode(a) for a in open(os.path.join(cap, "cc.args"), "rb").read().split(b"\0")[:-1]]
    cwd = open(os.path.join(cap, "cwd")).read()
    i = args.index("-o")
    args[i + 1] = os.path.join(os.path.dirname(os.path.join(cwd, args[i + 1])), "ipbp-bench-relink")
    return ["cc"] + args, cwd


def web_rounds(args, results, web, web_plain):
    """P2, P3 (web), P7 (web), P8 (web): edit a handler's helper in the running server."""
    step("web: patching a running server (P2, P3, P7, P8), and the restart path for P7")
    relink = relink_command()
    if relink is None:
        log("  (no link capture from P1: P2 is skipped; run with P1 first)")
    server = Process(web.program(), web.dir, app_env({"PORT": "0"}))
    _, line = server.wait_for(lambda l: l.startswith("listening on"))
    port = int(line.rsplit(":", 1)[1])
    server.wait_registered()
    patcher = Patcher(web, server, WEB_EDIT, ("Hi", "Hey"))
    rows = []
    try:
        for r in range(args.rounds):
            p = patcher.once(r)
            answer = http_get(port, "/hello")
            if not answer.startswith(p["variant"] + ","):
                sys.exit(f"bench: the server answered {answer!r} after patching in {p['variant']!r}")
            parts, total = ipbp_breakdown(p)
            relink_ms = None
            if relink:
                t = time.perf_counter()
                run(relink[0], cwd=relink[1])
                relink_ms = (time.perf_counter() - t) * 1e3
            restart = restart_web(web_plain, p["variant"])
            row = {"creation_ms": creation_ms(p["manifest"]), "relink_ms": relink_ms,
                   "applied_ms": p["manifest"]["timings"]["applied_ms"], "parts": parts, "total_ms": total,
                   "restart": restart, "file_size": p["manifest"]["file_size"],
                   "chunk_bytes": chunk_bytes(p["manifest"]), "status": p["status"]}
            rows.append(row)
            log(f"  round {r + 1}/{args.rounds}: patch {row['creation_ms']:.1f} ms"
                + (f" vs relink {relink_ms:.0f} ms" if relink_ms else "")
                + f"; new code {row['applied_ms']:.0f} ms after rustc called ipbp-ld, "
                f"{total:.0f} ms after the edit; restart path {restart['total_ms']:.0f} ms")
    finally:
        server.stop()
    results["web"] = rows


def restart_web(app, variant):
    """The alternative to patching: the same edit, `cargo build` with the plain linker, restart,
    first answer from the new code."""
    app.edit(WEB_EDIT, variant)
    t0, t1, _ = app.build()
    server = Process(app.program(), app.dir, app_env({"PORT": "0"}))
    try:
        t_listen, line = server.wait_for(lambda l: l.startswith("listening on"))
        port = int(line.rsplit(":", 1)[1])
        answer = http_get(port, "/hello")
        t_answer = time.time()
    finally:
        server.stop()
    if not answer.startswith(variant + ","):
        sys.exit(f"bench: the restarted server answered {answer!r}")
    return restart_parts(app, t0, t1, t_answer, "start to first answer")


def restart_parts(app, t0, t1, t_ready, ready_label):
    rustc = app.rustc_times() or (t0, t1)
    link = app.link_times() or (rustc[1], rustc[1])
    parts = {
        "cargo, before rustc": (rustc[0] - t0) * 1e3,
        "rustc, until it calls the linker": (link[0] - rustc[0]) * 1e3,
        "link (plain cc)": (link[1] - link[0]) * 1e3,
        "rustc and cargo, after the link": (t1 - link[1]) * 1e3,
        f"app: {ready_label}": (t_ready - t1) * 1e3,
    }
    return {"parts": parts, "total_ms": (t_ready - t0) * 1e3}


def counter_rounds(args, results, counter, counter_plain, scaled):
    """P3 and P7 (counter), P4 (scaled vs counter, same edit), P8 (counter)."""
    step("counter and scaled: the same one-function edit in both running programs (P3, P4, P7, P8)")
    small = Process(counter.program(), counter.dir, app_env({"COUNTER_PERIOD_MS": "50"}))
    big = Process(scaled.program(), scaled.dir, app_env({"COUNTER_PERIOD_MS": "50"}))
    rows = []
    try:
        for proc in (small, big):
            proc.wait_for(lambda l: l.startswith("tick "))
            proc.wait_registered()
        ps = Patcher(counter, small, COUNTER_EDIT, ("v1", "v2"))
        pb = Patcher(scaled, big, COUNTER_EDIT, ("v1", "v2"))
        for r in range(args.rounds):
            # Alternate which goes first, so neither always runs on a warmer machine.
            first, second = (ps, pb) if r % 2 == 0 else (pb, ps)
            marks = (small.mark(), big.mark())
            a = first.once(r)
            b = second.once(r)
            s, g = (a, b) if first is ps else (b, a)
            small.wait_for(lambda l: f"msg={s['variant']} " in l, since=marks[0])
            big.wait_for(lambda l: f"msg={g['variant']} " in l, since=marks[1])
            parts, total = ipbp_breakdown(s)
            restart = restart_counter(counter_plain, s["variant"])
            row = {"small_ms": creation_ms(s["manifest"]), "scaled_ms": creation_ms(g["manifest"]),
                   "applied_ms": s["manifest"]["timings"]["applied_ms"],
                   "scaled_applied_ms": g["manifest"]["timings"]["applied_ms"],
                   "parts": parts, "total_ms": total, "restart": restart,
                   "file_size": s["manifest"]["file_size"], "chunk_bytes": chunk_bytes(s["manifest"]),
                   "status": s["status"], "scaled_status": g["status"],
                   "scaled_steps": g["manifest"]["timings"]["steps"], "small_steps": s["manifest"]["timings"]["steps"]}
            rows.append(row)
            log(f"  round {r + 1}/{args.rounds}: patch creation counter {row['small_ms']:.1f} ms, scaled "
                f"{row['scaled_ms']:.1f} ms; counter runs new code {row['applied_ms']:.0f} ms after rustc "
                f"called ipbp-ld, {total:.0f} ms after the edit; restart path {restart['total_ms']:.0f} ms")
    finally:
        small.stop()
        big.stop()
    results["counter"] = rows


def restart_counter(app, variant):
    app.edit(COUNTER_EDIT, variant)
    t0, t1, _ = app.build()
    proc = Process(app.program(), app.dir, app_env({"COUNTER_PERIOD_MS": "50"}))
    try:
        t_tick, _ = proc.wait_for(lambda l: f"msg={variant} " in l)
    finally:
        proc.stop()
    return restart_parts(app, t0, t1, t_tick, "start to first tick")


# An edit that compiles but cannot link: the program asks for a library that does not exist.
LINK_FAILURE = ("static TICKS", '#[link(name = "ipbp_bench_missing_library")]\nextern "C" {}\n\nstatic TICKS')


def status_ms(line):
    """`N` of a status line's `…, N ms after rustc called ipbp-ld`."""
    head = line.split(" ms after rustc called ipbp-ld")[0]
    return float(head.rsplit(" ", 1)[1])


def link_failure_rounds(args, results, counter, counter_plain):
    """P3L: ipbp-ld applies a patch while the real linker runs, and returns the program to its last
    good build if the link fails. Each round: a good edit (P3 as usual), then an edit whose link
    fails (the patch goes live, then the `Reverted` line), then the same link with the plain
    linker: what waiting for the link before applying would add to P3."""
    step("P3L: apply at once, revert when the link fails (counter)")
    proc = Process(counter.program(), counter.dir, app_env({"COUNTER_PERIOD_MS": "50"}))
    main_rs = os.path.join(counter.dir, "src", "main.rs")
    rows = []
    try:
        proc.wait_for(lambda l: l.startswith("tick "))
        proc.wait_registered()
        patcher = Patcher(counter, proc, COUNTER_EDIT, ("good1", "good2"))
        for r in range(args.rounds):
            good = patcher.once(r)
            proc.wait_for(lambda l: f"msg={good['variant']} " in l)
            counter.edit(COUNTER_EDIT, "unlinked")
            text = open(main_rs).read()
            open(main_rs, "w").write(text.replace(*LINK_FAILURE, 1))
            p = run(["cargo", "build"], cwd=counter.dir, env=counter.env(), check=False)
            open(main_rs, "w").write(text)
            counter.edit(COUNTER_EDIT, good["variant"])
            counter.wait_for_recording()
            lines = [l.strip() for l in p.stderr.splitlines() if f"(pid {proc.pid})" in l]
            patched = [l for l in lines if l.startswith("Patched")]
            reverted = [l for l in lines if l.startswith("Reverted")]
            if p.returncode == 0 or not patched or not reverted:
                sys.exit(f"bench: expected a failed link, `Patched`, then `Reverted`:\n{p.stderr}")
            patcher.generation += 2  # the patch, and the request that undid it
            mark = proc.mark()
            proc.wait_for(lambda l: f"msg={good['variant']} " in l, since=mark)
            restart = restart_counter(counter_plain, f"plain{r}")
            row = {"applied_ms": good["manifest"]["timings"]["applied_ms"],
                   "failing_applied_ms": status_ms(patched[0]), "reverted_ms": status_ms(reverted[0]),
                   "link_ms": restart["parts"]["link (plain cc)"]}
            rows.append(row)
            log(f"  round {r + 1}/{args.rounds}: good edit live {row['applied_ms']:.0f} ms after rustc called "
                f"ipbp-ld; failing link: live after {row['failing_applied_ms']:.0f} ms, reverted after "
                f"{row['reverted_ms']:.0f} ms; the plain link takes {row['link_ms']:.0f} ms")
    finally:
        proc.stop()
    results["P3L"] = rows


def p3l_md(results, args):
    rows = results["P3L"]
    med = {k: median([r[k] for r in rows]) for k in rows[0]}
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    return "\n".join([
        f"Measured {when} by `scripts/bench.py --only P3L --rounds {args.rounds}` (counter; medians; load "
        f"average {os.getloadavg()[0]:.2f} at the end).",
        "",
        "| | ms after rustc called ipbp-ld |",
        "|---|---:|",
        f"| P3, a good edit: applied at once, while the real linker runs | {med['applied_ms']:.1f} |",
        f"| P3 if ipbp-ld waited for the link first: at least the link itself (plain `cc`, same edit) | ≥ {med['link_ms']:.1f} |",
        f"| an edit whose link fails: its patch live | {med['failing_applied_ms']:.1f} |",
        f"| … and the program back on the last good build (`Reverted`) | {med['reverted_ms']:.1f} |",
    ])


# Threads calling the 100 functions while P6 installs them in place.
BUSY_THREADS = 8


def hundred_rounds(args, results, scaled):
    """P6, P8 and P9: the 100-function patch in the scaled program, with 8 threads calling those
    functions. Each round starts the program, patches it (the first detour of each entry: the
    breakpoint sequence needs its check round) and patches it again (each jump retargeted: no
    round), once with the usual install and once with every thread parked (`IPBP_INSTALL=park`),
    side by side."""
    step("P6/P9: applying a 100-function patch (scaled) while 8 threads call those functions")
    k = 0
    for method in ("breakpoint", "park"):
        env = {"COUNTER_PERIOD_MS": "1000", "COUNTER_HUNDRED": "1", "COUNTER_BUSY": str(BUSY_THREADS)}
        if method == "park":
            env["IPBP_INSTALL"] = "park"
        rows = {"first": [], "again": []}
        for r in range(args.rounds):
            proc = Process(scaled.program(), scaled.dir, app_env(env))
            try:
                proc.wait_for(lambda l: l.startswith("hundred="))
                proc.wait_registered()
                # Three values in turn: the second patch of a round never goes back to the code the
                # process started with (which would be a revert, not 100 changed functions).
                patcher = Patcher(scaled, proc, HUNDRED_EDIT, ("4", "5", "6"))
                for when in ("first", "again"):
                    mark = proc.mark()
                    p = patcher.once(k)
                    k += 1
                    scale = int(p["variant"])
                    want = sum(7 * scale + i for i in range(100))
                    proc.wait_for(lambda l: l == f"hundred={want}", since=mark)
                    m = p["manifest"]
                    changed = len(m["report"]["changed"])
                    if changed < 100:
                        sys.exit(f"bench: the 100-function edit changed only {changed} functions: {p['status']}")
                    rows[when].append({
                        "apply_ms": apply_ms(m), "load_us": m["timings"]["load_us"],
                        "install_us": m["timings"]["install_us"], "changed": changed,
                        "pause_us": m["timings"].get("pause_us", 0), "live_us": m["timings"].get("live_us", 0),
                        "detours": sum(1 for i in m["installs"] if i["kind"] == "detour"),
                        "file_size": m["file_size"], "chunk_bytes": chunk_bytes(m), "status": p["status"],
                        "creation_ms": creation_ms(m), "applied_ms": m["timings"]["applied_ms"]})
                    x = rows[when][-1]
                    log(f"  {method} round {r + 1}/{args.rounds} ({when}): {changed} functions, load "
                        f"{x['load_us']} us + install {x['install_us']} us (new code in effect after {x['live_us']} us), "
                        f"longest pause {x['pause_us']} us")
            finally:
                proc.stop()
        key = "hundred" if method == "breakpoint" else "hundred_park"
        results[key] = rows["first"]
        results[key + "_again"] = rows["again"]


def hotcall_rounds(args, results, hotcall):
    """P5: a call through #[ipbp::hot] minus a direct call, before and after a patch."""
    step("P5: cost of a call through #[ipbp::hot] (hotcall, opt-level 3)")
    proc = Process(hotcall.program(), hotcall.dir, app_env(), stdin=True)
    out = {"unpatched": [], "patched": []}
    try:
        proc.wait_for(lambda l: l.startswith("started"))
        proc.wait_registered()

        def measure(kind, value):
            for _ in range(args.rounds):
                mark = proc.mark()
                proc.send("\n")
                _, line = proc.wait_for(lambda l: l.startswith("measure "), since=mark)
                f = dict(kv.split("=") for kv in line.split()[1:])
                if int(f["value"]) != value:
                    sys.exit(f"bench: hotcall runs the wrong version: {line}")
                out[kind].append({"hot_ns": float(f["hot_ns"]), "direct_ns": float(f["direct_ns"]),
                                  "plain_ns": float(f["plain_ns"])})
        measure("unpatched", 4)
        Patcher(hotcall, proc, HOTCALL_EDIT, ("5", "5")).once(0)
        measure("patched", 6)
    finally:
        proc.stop()
    results["hotcall"] = out


def guard_rounds(args, results, app, edits, key):
    """P11: the layout guard's share of each patch (the manifest's `layouts` step) while edits
    accumulate in a running server. The unit model cache starts empty: the first patch reads the
    DWARF of every changed unit, later ones only of the units their edit changed."""
    step(f"P11: the layout guard on {app.name}, {args.rounds + 1} edits kept one after another")
    shutil.rmtree(os.path.join(app.dir, "target", "ipbp", "layouts"), ignore_errors=True)
    server = Process(app.program(), app.dir, app_env({"PORT": "0"}))
    server.wait_for(lambda l: l.startswith("listening on"))
    server.wait_registered()
    current = {}
    rows = []
    try:
        for r in range(args.rounds + 1):
            path, original, template = edits[r % len(edits)]
            full = os.path.join(app.dir, path)
            text = open(full).read()
            before = current.get((path, original), original)
            if before not in text:
                sys.exit(f"bench: {full} does not contain {before!r}: update the P11 edits in scripts/bench.py")
            after = template.replace("{v}", f"v{r}")
            open(full, "w").write(text.replace(before, after, 1))
            current[(path, original)] = after
            _, _, stderr = app.build()
            app.wait_for_recording()
            status = patched_line(stderr, server.pid)
            m = app.manifest(server.pid, r + 1)
            if m is None:
                sys.exit(f"bench: no manifest for patch {r + 1} of pid {server.pid}")
            steps = dict(m["timings"]["steps"])
            row = {"layouts_ms": steps.get("layouts", 0.0), "cpu_ms": m["timings"].get("guard_cpu_ms", float("nan")),
                   "changed_objects": m["changed_objects"], "plan_ms": m["timings"]["plan_ms"], "status": status}
            rows.append(row)
            log(f"  patch {r + 1}: layouts {row['layouts_ms']:.1f} ms (CPU {row['cpu_ms']:.1f} ms), "
                f"{row['changed_objects']} changed units, plan {row['plan_ms']:.1f} ms")
    finally:
        server.stop()
    results[key] = rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="rounds per figure (default 7)")
    ap.add_argument("--only", default="P1,P1b,P2,P3,P4,P5,P6,P7,P8,P9,P10,P11",
                    help="comma-separated figures (P9 comes with P6)")
    ap.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    ap.add_argument("--p11-before", metavar="JSON",
                    help="P11: the results (scripts/out/bench.json) of an earlier build's run, shown beside")
    ap.add_argument("--p11-before-label", default="an earlier build", help="P11: what --p11-before measured")
    ap.add_argument("--patches", type=int, default=1000, help="patches in a row for P12 (default 1000)")
    args = ap.parse_args()
    if args.rounds < 1:
        sys.exit("bench: --rounds must be at least 1")
    only = set(args.only.upper().split(","))
    started = time.time()
    results = {"machine": machine(), "rounds": args.rounds}

    step("building ipbp-ld (release)")
    run(["cargo", "build", "--release", "-q", "-p", "ipbp-ld"], cwd=ROOT)
    write_wrappers()
    os.makedirs(HOME, mode=0o700, exist_ok=True)

    apps = {
        "counter": App("counter", os.path.join(ROOT, "testdata", "counter"), "counter"),
        "counter-plain": App("counter-plain", os.path.join(ROOT, "testdata", "counter"), "counter", plain=True),
        "scaled": App("scaled", generate_scaled, "counter"),
        "web": App("web", os.path.join(ROOT, "testdata", "web"), "web"),
        "web-plain": App("web-plain", os.path.join(ROOT, "testdata", "web"), "web", plain=True),
        "hotcall": App("hotcall", os.path.join(ROOT, "testdata", "hotcall"), "hotcall"),
        "webscaled": App("webscaled", generate_webscaled, "web"),
    }
    needed = set()
    if only & {"P3", "P4", "P7", "P8"}:
        needed |= {"counter", "counter-plain", "scaled"}
    if "P3L" in only:
        needed |= {"counter", "counter-plain"}
    if only & {"P2", "P3", "P7", "P8"}:
        needed |= {"web", "web-plain"}
    if only & {"P6", "P8", "P9"}:
        needed.add("scaled")
    if "P5" in only:
        needed.add("hotcall")
    if "P11" in only:
        needed |= {"web", "webscaled"}
    if "P12" in only:
        needed.add("counter")
    for name in sorted(needed):
        app = apps[name]
        step(f"preparing {name} ({'plain linker' if app.plain else 'through ipbp-ld'})")
        app.prepare()
        t0, t1, _ = app.build()
        app.wait_for_recording()
        log(f"  built in {t1 - t0:.1f} s")
    settle()

    if "P1B" in only:
        p1b(args, results)
    if "P1" in only or "P2" in only:
        p1(args, results)
    if only & {"P2", "P3", "P7", "P8"}:
        web_rounds(args, results, apps["web"], apps["web-plain"])
    if "P12" in only:
        bench_workday.run(args, results, apps["counter"])
    if needed & {"counter"} and only & {"P3", "P4", "P7", "P8"}:
        counter_rounds(args, results, apps["counter"], apps["counter-plain"], apps["scaled"])
    if "P3L" in only:
        link_failure_rounds(args, results, apps["counter"], apps["counter-plain"])
    if only & {"P6", "P8", "P9"}:
        hundred_rounds(args, results, apps["scaled"])
    if "P5" in only:
        hotcall_rounds(args, results, apps["hotcall"])
    if "P11" in only:
        guard_rounds(args, results, apps["web"], GUARD_WEB_EDITS, "guard_web")
        guard_rounds(args, results, apps["webscaled"], GUARD_WEBSCALED_EDITS, "guard_webscaled")

    if "P10" in only:
        import bench_watch
        results["watch"] = bench_watch.measure(args.rounds)

    fig = summarize(results)
    results["figures"] = {k: {"value": v[0], "text": v[1], "target": v[2], "detail": v[3]} for k, v in fig.items()}
    results["seconds"] = time.time() - started
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1)
    sections = {}
    if only - {"P1B", "P3L", "P10", "P11", "P12"}:
        sections["bench"] = report_md(results, fig, args)
    if "P3L" in results:
        sections["bench:p3l"] = p3l_md(results, args)
    if "watch" in results:
        import bench_watch
        sections["bench:watch"] = bench_watch.section(results["watch"], args.rounds, "scripts/bench.py --only P10")
    if "P12" in results:
        sections["bench:p12"] = bench_workday.md(results, args)
    if "P1b" in results:
        sections["bench:p1b"] = p1b_md(results, args)
    if "guard_web" in results:
        before = None
        if args.p11_before:
            with open(args.p11_before) as f:
                before = json.load(f)
            before["label"] = args.p11_before_label
        sections["bench:p11"] = p11_md(results, args, before)
    for section in sections.values():
        print("\n" + section)
    if not args.no_write:
        for name, section in sections.items():
            write_benchmarks_md(section, name)
        log(f"\nwrote {BENCHMARKS_MD} (raw results: {RESULTS}); {results['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
