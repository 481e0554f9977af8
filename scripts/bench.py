#!/usr/bin/env python3
"""ipbp's benchmarks: figures P1-P8 of issue 4, in one run, written to BENCHMARKS.md.

    scripts/bench.py                 everything (~3 min warm on 2 cores; the first run also builds
                                     the apps' dependencies, web's 125 crates twice among them)
    scripts/bench.py --rounds 3      fewer rounds per figure (default 7)
    scripts/bench.py --only P3,P5    some figures (P1 and P2 need the web link capture of P1)
    scripts/bench.py --no-write      print the table, leave BENCHMARKS.md alone

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
import fcntl
import glob
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "scripts", "out", "bench")
SHIM = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "ipbp-ld")
HOME = os.path.join(OUT, "home")  # IPBP_HOME of every benchmarked process
BIN = os.path.join(OUT, "bin")
RESULTS = os.path.join(ROOT, "scripts", "out", "bench.json")
BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

TARGETS = {"P1": 1.10, "P2": 0.05, "P3": 50.0, "P4": 1.5, "P5": 2.0, "P6": 5.0, "P8": 3.0}

# The edits. Each round switches between two variants that both differ from the source the process
# started with, so every round patches the same amount of code (patches are always made against
# the build a process started from; going back to it would be a revert).
COUNTER_EDIT = ("src/main.rs", 'let msg = "hello";', 'let msg = "{v}";')
WEB_EDIT = ("src/handlers.rs", 'format!("Hello, {name}!")', 'format!("{v}, {name}!")')
HUNDRED_EDIT = ("src/hundred.rs", "pub const HUNDRED_SCALE: u64 = 3;", "pub const HUNDRED_SCALE: u64 = {v};")
HOTCALL_EDIT = ("src/main.rs", "fn bump_hot(x: u64) -> u64 {\n    x.wrapping_mul(3)", "fn bump_hot(x: u64) -> u64 {\n    x.wrapping_mul({v})")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def step(msg):
    log(f"\n==> {msg}")


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def run(cmd, cwd=None, env=None, check=True, quiet=False):
    p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        sys.exit(f"bench: `{' '.join(cmd)}` failed with exit code {p.returncode} (in {cwd or os.getcwd()})")
    return p


# ----------------------------------------------------------------------------------------------
# Apps


class App:
    """A copy of a test app under scripts/out/bench, built through ipbp-ld (or the plain linker)."""

    def __init__(self, name, source, binary, plain=False):
        self.name = name
        self.dir = os.path.join(OUT, name)
        self.source = source
        self.binary = binary
        self.plain = plain
        self.rustc_log = os.path.join(self.dir, "rustc-times.log")
        self.link_log = os.path.join(self.dir, "link-times.log")
        self.edited = {}  # file -> the text an edit last put there

    def prepare(self):
        """Fresh sources (the target directory is kept: dependencies build once)."""
        os.makedirs(self.dir, exist_ok=True)
        for entry in os.listdir(self.dir):
            if entry not in ("target",):
                path = os.path.join(self.dir, entry)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        self.edited = {}
        if callable(self.source):
            self.source(self.dir)
        else:
            copy_tree(self.source, self.dir)
        toml = os.path.join(self.dir, "Cargo.toml")
        text = open(toml).read().replace('"../../patch-runtime"', json.dumps(os.path.join(ROOT, "patch-runtime")))
        open(toml, "w").write(text)
        os.makedirs(os.path.join(self.dir, ".cargo"), exist_ok=True)
        linker = os.path.join(BIN, "timed-cc") if self.plain else SHIM
        with open(os.path.join(self.dir, ".cargo", "config.toml"), "w") as f:
            f.write(f'[target.x86_64-unknown-linux-gnu]\nlinker = "{linker}"\n')

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IPBP_", "CARGO_TARGET_"))}
        env["IPBP_HOME"] = HOME
        env["RUSTC_WRAPPER"] = os.path.join(BIN, "timed-rustc")
        env["BENCH_RUSTC_LOG"] = self.rustc_log
        env["BENCH_CRATE"] = self.binary
        env["BENCH_LINK_LOG"] = self.link_log
        return env

    def build(self):
        """`cargo build`; returns (start, end, stderr)."""
        for f in (self.rustc_log, self.link_log):
            if os.path.exists(f):
                os.remove(f)
        t0 = time.time()
        p = run(["cargo", "build"], cwd=self.dir, env=self.env(), check=False)
        t1 = time.time()
        if p.returncode != 0:
            sys.stderr.write(p.stderr)
            sys.exit(f"bench: cargo build of {self.dir} failed")
        return t0, t1, p.stderr

    def wait_for_recording(self):
        """Waits until ipbp-ld's detached writers (link index and JSON map, written after the link
        returns) are done, so they do not compete with the next measurement: they hold each map
        directory's lock while writing."""
        for lock in glob.glob(os.path.join(self.dir, "target", "ipbp", "maps", "*", ".lock")):
            with open(lock) as f:
                fcntl.flock(f, fcntl.LOCK_SH)

    def rustc_times(self):
        """(start, end) of the last rustc run for the app's binary crate."""
        return last_times(self.rustc_log)

    def link_times(self):
        return last_times(self.link_log)

    def edit(self, edit, variant):
        """Puts `variant` into the edit's template, in place of the original or the last variant."""
        path, original, template = edit
        full = os.path.join(self.dir, path)
        text = open(full).read()
        current = self.edited.get(path, original)
        if current not in text:
            sys.exit(f"bench: {full} does not contain {current!r}: update the edit in scripts/bench.py")
        new = template.replace("{v}", variant)
        open(full, "w").write(text.replace(current, new, 1))
        self.edited[path] = new

    def program(self):
        return os.path.join(self.dir, "target", "debug", self.binary)

    def patches_of(self, pid):
        root = os.path.join(self.dir, "target", "ipbp", "patches")
        for d in os.listdir(root) if os.path.isdir(root) else []:
            if d.startswith(f"{pid}-"):
                return os.path.join(root, d)
        return None

    def manifest(self, pid, generation):
        d = self.patches_of(pid)
        path = d and os.path.join(d, f"patch-{generation}.json")
        if not path or not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)


def last_times(path):
    try:
        lines = open(path).read().split()
    except FileNotFoundError:
        return None
    if len(lines) < 2:
        return None
    return float(lines[-2]), float(lines[-1])


def write_wrappers():
    os.makedirs(BIN, exist_ok=True)
    # Timestamps around rustc for the benchmarked crate. bash's EPOCHREALTIME reads the clock
    # without starting a process, so the wrapper adds about a millisecond.
    with open(os.path.join(BIN, "timed-rustc"), "w") as f:
        f.write("""#!/usr/bin/env bash
start=$EPOCHREALTIME
"$@"
rc=$?
end=$EPOCHREALTIME
for a in "$@"; do
    if [ "${prev:-}" = --crate-name ] && [ "$a" = "${BENCH_CRATE:-}" ] && [ -n "${BENCH_RUSTC_LOG:-}" ]; then
        echo "$start $end" >>"$BENCH_RUSTC_LOG"
    fi
    prev=$a
done
exit $rc
""")
    # The plain linker (rustc's default `cc`), with timestamps.
    with open(os.path.join(BIN, "timed-cc"), "w") as f:
        f.write("""#!/usr/bin/env bash
start=$EPOCHREALTIME
cc "$@"
rc=$?
[ -n "${BENCH_LINK_LOG:-}" ] && echo "$start $EPOCHREALTIME" >>"$BENCH_LINK_LOG"
exit $rc
""")
    for w in ("timed-rustc", "timed-cc"):
        os.chmod(os.path.join(BIN, w), 0o755)


# ----------------------------------------------------------------------------------------------
# Running programs


class Process:
    """A started app; stdout lines are collected with the time they arrived."""

    def __init__(self, program, cwd, env, stdin=False):
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [program],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.pid = self.proc.pid
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append((time.time(), line.rstrip("\n")))
                self.cond.notify_all()

    def mark(self):
        with self.cond:
            return len(self.lines)

    def wait_for(self, pred, since=0, timeout=60):
        """The first line after `since` matching `pred`: (time, line)."""
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for t, line in self.lines[since:]:
                    if pred(line):
                        return t, line
                since = len(self.lines)
                left = deadline - time.time()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "\n".join(l for _, l in self.lines[-10:])
                    sys.exit(f"bench: pid {self.pid} did not print what was expected in {timeout} s:\n{tail}")
                self.cond.wait(left)

    def send(self, text):
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def wait_registered(self):
        path = os.path.join(HOME, f"{self.pid}.process")
        for _ in range(400):
            if os.path.exists(path):
                return
            time.sleep(0.025)
        sys.exit(f"bench: pid {self.pid} never registered in {HOME} (was it built through ipbp-ld?)")


def settle(limit=90):
    """Waits (up to `limit` seconds) for the machine to calm down after building: until the
    1-minute load average is below 1."""
    t = time.time()
    while os.getloadavg()[0] >= 1.0 and time.time() - t < limit:
        time.sleep(2)
    log(f"  load average {os.getloadavg()[0]:.2f} (waited {time.time() - t:.0f} s for it to settle)")


def app_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPBP_")}
    env["IPBP_HOME"] = HOME
    env.update(extra or {})
    return env


def http_get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode()


def patched_line(stderr, pid):
    """cargo's `Patched <prog> (pid N): …` line for `pid`, or exit with what cargo printed."""
    for line in stderr.splitlines():
        line = line.strip()
        if f"(pid {pid})" in line and line.split()[0] in ("Patched", "Skipped", "Unchanged"):
            if line.startswith("Patched"):
                return line
            sys.exit(f"bench: the process was not patched:\n{stderr}")
    sys.exit(f"bench: no status line for pid {pid} in cargo's output:\n{stderr}")


class Patcher:
    """Edits an app whose process runs, rebuilds, and returns the patch's manifest and timeline."""

    def __init__(self, app, proc, edit, variants):
        self.app, self.proc, self.edit, self.variants = app, proc, edit, variants
        self.generation = 0

    def once(self, round_no):
        variant = self.variants[round_no % 2]
        self.app.edit(self.edit, variant)
        t0, t1, stderr = self.app.build()
        self.app.wait_for_recording()
        line = patched_line(stderr, self.proc.pid)
        self.generation += 1
        m = self.app.manifest(self.proc.pid, self.generation)
        if m is None:
            sys.exit(f"bench: no manifest for patch {self.generation} of pid {self.proc.pid}")
        return {"variant": variant, "cargo_start": t0, "cargo_end": t1, "status": line,
                "manifest": m, "rustc": self.app.rustc_times()}


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
    parts = {
        "cargo, before rustc": (rustc[0] - p["cargo_start"]) * 1e3,
        "rustc, until it calls the linker": (called - rustc[0]) * 1e3,
        "ipbp-ld, before the patch": t["started_ms"],
        "ipbp-ld: diff": t["diff_ms"],
        "ipbp-ld: plan": t["plan_ms"],
        "ipbp-ld: emit": t["emit_ms"],
        "delivery": t["deliver_ms"] - apply_ms(m),
        "apply in the process": apply_ms(m),
    }
    return parts, (called + t["applied_ms"] / 1e3 - p["cargo_start"]) * 1e3


# ----------------------------------------------------------------------------------------------
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


def hundred_rounds(args, results, scaled):
    """P6 and P8: the 100-function patch in the scaled program."""
    step("P6: applying a 100-function patch (scaled)")
    proc = Process(scaled.program(), scaled.dir, app_env({"COUNTER_PERIOD_MS": "1000", "COUNTER_HUNDRED": "1"}))
    rows = []
    try:
        proc.wait_for(lambda l: l.startswith("hundred="))
        proc.wait_registered()
        patcher = Patcher(scaled, proc, HUNDRED_EDIT, ("4", "5"))
        for r in range(args.rounds):
            mark = proc.mark()
            p = patcher.once(r)
            scale = int(p["variant"])
            want = sum(7 * scale + i for i in range(100))
            proc.wait_for(lambda l: l == f"hundred={want}", since=mark)
            m = p["manifest"]
            changed = len(m["report"]["changed"])
            if changed < 100:
                sys.exit(f"bench: the 100-function edit changed only {changed} functions: {p['status']}")
            rows.append({"apply_ms": apply_ms(m), "load_us": m["timings"]["load_us"],
                         "install_us": m["timings"]["install_us"], "changed": changed,
                         "file_size": m["file_size"], "chunk_bytes": chunk_bytes(m), "status": p["status"],
                         "creation_ms": creation_ms(m), "applied_ms": m["timings"]["applied_ms"]})
            log(f"  round {r + 1}/{args.rounds}: {changed} functions, load {rows[-1]['load_us']} us + "
                f"install {rows[-1]['install_us']} us")
    finally:
        proc.stop()
    results["hundred"] = rows


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
                out[kind].append({"hot_ns": float(f["hot_ns"]), "direct_ns": float(f["direct_ns"])})
        measure("unpatched", 4)
        Patcher(hotcall, proc, HOTCALL_EDIT, ("5", "5")).once(0)
        measure("patched", 6)
    finally:
        proc.stop()
    results["hotcall"] = out


# ----------------------------------------------------------------------------------------------
# Report


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    ver = lambda cmd: subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_gb": round(mem / 1e6, 1), "kernel": platform.release(),
            "rustc": ver(["rustc", "-V"]), "load_average": os.getloadavg()[0],
            "date": time.strftime("%Y-%m-%d %H:%M")}


def summarize(results):
    """Figures from the rounds: {id: (value text, target text, met or None, detail)}."""
    fig = {}
    if "P1" in results:
        r = results["P1"]
        fig["P1"] = (r["same"], f"{r['same']:.3f}", "≤ 1.10",
                     f"web ({r['output_mb']:.0f} MB, {r['map_symbols']} symbols): plain {r['plain_ms']:.0f} ms, ipbp-ld "
                     f"{r['ipbp_ms']:.0f} ms; rebuilt inputs {r['fresh']:.3f}; map written before returning "
                     f"{r['inline_same']:.3f}; outputs identical: {'yes' if r['identical'] else 'NO'}")
    web = results.get("web")
    if web:
        ratios = [w["creation_ms"] / w["relink_ms"] for w in web if w["relink_ms"]]
        if ratios:
            v = median(ratios)
            fig["P2"] = (v, f"{v:.3f}", "≤ 0.05",
                         f"web: patch {median([w['creation_ms'] for w in web]):.1f} ms vs relink "
                         f"{median([w['relink_ms'] for w in web if w['relink_ms']]):.0f} ms")
    counter = results.get("counter")
    if counter:
        v = median([c["applied_ms"] for c in counter])
        web_txt = f"; web {median([w['applied_ms'] for w in web]):.0f} ms" if web else ""
        fig["P3"] = (v, f"{v:.0f} ms", "≤ 50 ms", f"counter{web_txt}; scaled {median([c['scaled_applied_ms'] for c in counter]):.0f} ms")
        v = median([c["scaled_ms"] / c["small_ms"] for c in counter])
        fig["P4"] = (v, f"{v:.2f}", "≤ 1.5", f"counter {median([c['small_ms'] for c in counter]):.1f} ms, scaled "
                     f"{median([c['scaled_ms'] for c in counter]):.1f} ms (diff + plan + emit)")
    hc = results.get("hotcall")
    if hc:
        d = lambda k: median([x["hot_ns"] - x["direct_ns"] for x in hc[k]])
        v = max(d("unpatched"), d("patched"))
        fig["P5"] = (v, f"{d('unpatched'):+.2f} ns / {d('patched'):+.2f} ns", "≤ 2 ns",
                     f"unpatched / patched; direct call {median([x['direct_ns'] for x in hc['unpatched']]):.2f} ns per call")
    hundred = results.get("hundred")
    if hundred:
        v = median([h["apply_ms"] for h in hundred])
        fig["P6"] = (v, f"{v:.2f} ms", "≤ 5 ms", f"{hundred[0]['changed']} functions: load "
                     f"{median([h['load_us'] for h in hundred]):.0f} us + install {median([h['install_us'] for h in hundred]):.0f} us")
    if counter:
        v = median([c["total_ms"] / c["restart"]["total_ms"] for c in counter])
        extra = ""
        if web:
            extra = f"; web {median([w['total_ms'] / w['restart']['total_ms'] for w in web]):.3f}"
        fig["P7"] = (v, f"{v:.3f}", "report", f"counter{extra} (edit → new code running, ÷ cargo build + restart)")
    p8 = []
    for name, rows in (("counter", counter), ("web", web), ("scaled, 100 functions", hundred)):
        if rows:
            p8.append((name, median([r["file_size"] / r["chunk_bytes"] for r in rows]),
                       median([r["file_size"] for r in rows]), median([r["chunk_bytes"] for r in rows])))
    if p8:
        v = p8[0][1]
        fig["P8"] = (v, f"{v:.1f}", "report, aim ≤ 3",
                     "; ".join(f"{n} {r:.1f} ({f / 1e3:.1f} KB for {c / 1e3:.1f} KB of code and data)" for n, r, f, c in p8))
    return fig


def met(fid, value):
    t = TARGETS.get(fid)
    if t is None or value != value:
        return "—"
    return "✅" if value <= t else "❌"


NAMES = {
    "P1": "link through ipbp-ld ÷ plain link",
    "P2": "patch creation ÷ full relink (web)",
    "P3": "rustc calls ipbp-ld → new code running",
    "P4": "patch creation, 10× program ÷ small",
    "P5": "hot call − direct call",
    "P6": "apply a 100-function patch",
    "P7": "edit → new code: ipbp ÷ build + restart",
    "P8": "patch size ÷ code and data patched",
}


def breakdown_table(rows, label):
    if not rows:
        return []
    keys = list(rows[0]["parts"])
    rkeys = list(rows[0]["restart"]["parts"])
    out = [f"**{label}** (medians over {len(rows)} rounds, ms)", "",
           "| ipbp: edit → new code running | ms | | cargo build + restart | ms |", "|---|---:|---|---|---:|"]
    n = max(len(keys), len(rkeys))
    for i in range(n):
        a = f"| {keys[i]} | {median([r['parts'][keys[i]] for r in rows]):.1f} |" if i < len(keys) else "| | |"
        b = f" | {rkeys[i]} | {median([r['restart']['parts'][rkeys[i]] for r in rows]):.0f} |" if i < len(rkeys) else " | | |"
        out.append(a + b)
    out.append(f"| **total** | **{median([r['total_ms'] for r in rows]):.0f}** | | **total** | "
               f"**{median([r['restart']['total_ms'] for r in rows]):.0f}** |")
    out.append("")
    return out


def report_md(results, fig, args):
    m = results["machine"]
    lines = [
        f"Measured {m['date']} by `scripts/bench.py --rounds {args.rounds}` on {m['cpu']} "
        f"({m['cpus']} CPUs, {m['memory_gb']} GB), Linux {m['kernel']}, {m['rustc']}; load average "
        f"{m['load_average']:.2f} at the start.",
        "",
        "| id | figure | result | target | | details |",
        "|---|---|---|---|---|---|",
    ]
    for fid in sorted(NAMES):
        if fid in fig:
            v, text, target, detail = fig[fid]
            lines.append(f"| {fid} | {NAMES[fid]} | **{text}** | {target} | {met(fid, v)} | {detail} |")
    lines.append("")
    lines += breakdown_table(results.get("counter"), "P3 / P7 on counter: where the time goes")
    lines += breakdown_table(results.get("web"), "P3 / P7 on web: where the time goes")
    counter = results.get("counter")
    if counter:
        lines.append("**P4: patch creation steps** (ms, median; `load units` maps the build's objects, "
                     "`index` reads the changed units)")
        lines.append("")
        lines.append("| step | counter | scaled |")
        lines.append("|---|---:|---:|")
        for i, (name, _) in enumerate(counter[0]["small_steps"]):
            s = median([c["small_steps"][i][1] for c in counter])
            g = median([c["scaled_steps"][i][1] for c in counter])
            lines.append(f"| {name} | {s:.2f} | {g:.2f} |")
        lines.append("")
    return "\n".join(lines)


def write_benchmarks_md(section):
    text = open(BENCHMARKS_MD).read() if os.path.exists(BENCHMARKS_MD) else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        sys.exit(f"bench: {BENCHMARKS_MD} lacks the {BEGIN} … {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(BENCHMARKS_MD, "w") as f:
        f.write(f"{head}{BEGIN}\n{section}\n{END}{tail}")


# ----------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="rounds per figure (default 7)")
    ap.add_argument("--only", default="P1,P2,P3,P4,P5,P6,P7,P8", help="comma-separated figures")
    ap.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
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
    }
    needed = set()
    if only & {"P3", "P4", "P7", "P8"}:
        needed |= {"counter", "counter-plain", "scaled"}
    if only & {"P2", "P3", "P7", "P8"}:
        needed |= {"web", "web-plain"}
    if "P6" in only or "P8" in only:
        needed.add("scaled")
    if "P5" in only:
        needed.add("hotcall")
    for name in sorted(needed):
        app = apps[name]
        step(f"preparing {name} ({'plain linker' if app.plain else 'through ipbp-ld'})")
        app.prepare()
        t0, t1, _ = app.build()
        app.wait_for_recording()
        log(f"  built in {t1 - t0:.1f} s")
    settle()

    if "P1" in only or "P2" in only:
        p1(args, results)
    if needed & {"web"}:
        web_rounds(args, results, apps["web"], apps["web-plain"])
    if needed & {"counter"}:
        counter_rounds(args, results, apps["counter"], apps["counter-plain"], apps["scaled"])
    if "P6" in only or "P8" in only:
        hundred_rounds(args, results, apps["scaled"])
    if "P5" in only:
        hotcall_rounds(args, results, apps["hotcall"])

    fig = summarize(results)
    results["figures"] = {k: {"value": v[0], "text": v[1], "target": v[2], "detail": v[3]} for k, v in fig.items()}
    results["seconds"] = time.time() - started
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1)
    section = report_md(results, fig, args)
    print("\n" + section)
    if not args.no_write:
        write_benchmarks_md(section)
        log(f"\nwrote {BENCHMARKS_MD} (raw results: {RESULTS}); {results['seconds'] / 60:.1f} min")


def copy_tree(src, dst):
    """Copies the entries of `src` into `dst`, leaving out build output. The copies get new
    modification times, so cargo rebuilds what a previous run's edits left in the target directory."""
    for entry in os.listdir(src):
        if entry == "target":
            continue
        s, d = os.path.join(src, entry), os.path.join(dst, entry)
        shutil.copytree(s, d, copy_function=shutil.copy) if os.path.isdir(s) else shutil.copy(s, d)


def generate_scaled(dst):
    """The scaled variant of counter (scripts/gen_scaled.py), generated next to `dst` and copied
    in (the generator replaces its output directory, and `dst` keeps its target directory)."""
    tmp = dst + ".generated"
    run([sys.executable, os.path.join(ROOT, "scripts", "gen_scaled.py"), tmp])
    copy_tree(tmp, dst)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
